"""``phalanx bench``: a local cluster under closed-loop load, measured honestly.

- :mod:`phalanx.bench.run` starts the replicas and the load generators, takes the
  measurements over one window and checks safety afterwards (``phalanx bench``).
- :mod:`phalanx.bench.loadgen` is one load-generator process (closed-loop clients).
- :mod:`phalanx.bench.results` turns the raw measurements into the results object of
  ``DESIGN.md`` (percentiles, per-node deltas, per-transaction costs) and prints it.
"""
