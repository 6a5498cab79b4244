"""The reliability campaign (issue 13): three harnesses on real replica processes.

- :mod:`~phalanx.reliability.crash`: crash torture — random SIGKILL/restart cycles (and
  kills inside the store's durability windows) under a ledger load whose acknowledged
  transfers are all checked at the end;
- :mod:`~phalanx.reliability.hostile`: hostile input — malformed and adversarial frames
  and HTTP requests against a live, loaded cluster; every drop must be counted;
- :mod:`~phalanx.reliability.soak`: soak — a long open-loop load at a fraction of the
  measured saturation, view changes on a schedule, memory, disk and latency sampled.

``phalanx reliability crash|hostile|soak`` runs them; docs/reliability.md explains the
method and what each check does and does not prove.
"""
