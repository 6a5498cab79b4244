"""The interfaces between protocol cores and their drivers.

Both drivers — the asyncio runtime (``phalanx.runtime``) and the deterministic simulator
(``phalanx.sim``) — know protocols only through these two classes. Replica ids
are ``0..n-1``; a replica runs as one process or several, each at an
:class:`~phalanx.core.address.Address` (replica, role, partition); clients are named by
their public key (bytes).

Driver obligations:
- Call ``recover(records)`` with every persisted record (key order) before ``start()``
  when a replica restarts from its data dir; a fresh replica gets no records.
- Carry out each call's effects in order, except that every ``Persist`` of a call is made
  durable before any message of that call is sent.
- ``Send`` and ``Broadcast`` are routed by address (:mod:`phalanx.core.effects`): from a
  single-process replica, ``Broadcast`` goes to every *other* replica; from a client, to
  every replica's front process.
- A replica core learns each message's sender as the :class:`Address` of the process
  that sent it (authenticated by the link); a client core learns the replica's id.
- Timers are named; ``SetTimer`` re-arms (replaces) a timer of the same name.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from phalanx.core.address import Address
from phalanx.core.effects import ClientEffect, Effect


class ReplicaCore(Protocol):
    replica_id: int

    def recover(self, records: Iterable[tuple[bytes, bytes]]) -> None:
        """Rebuild in-memory state from persisted records (before ``start``)."""
        ...

    def start(self) -> list[Effect]:
        ...

    def on_message(self, src: Address, msg: Any) -> list[Effect]:
        """A message from the process at ``src`` (already authenticated by the link: it
        is one of replica ``src.replica``'s processes)."""
        ...

    def on_client_message(self, client: bytes, msg: Any) -> list[Effect]:
        """A message from the client with public key ``client`` (authenticated link)."""
        ...

    def on_timer(self, name: str) -> list[Effect]:
        ...

    def state_digest(self) -> bytes:
        """Commitment to the executed state (for checkers and status)."""
        ...


class ClientCore(Protocol):
    client_id: bytes
    next_timestamp: int
    """The timestamp of the next request: drivers start it at the wall clock in
    microseconds, so a client that reuses its key keeps its timestamps increasing."""
    endpoint: bytes
    """The identity of the shared connection its replies go to (b"": its own)."""
    multicast: bool
    """Whether each request goes to every replica at once."""

    def submit(self, op: bytes) -> tuple[int, list[ClientEffect]]:
        """Start a request; returns its timestamp and the effects."""
        ...

    def on_message(self, src: int, msg: Any) -> list[ClientEffect]:
        """A message from replica ``src`` (authenticated by the link)."""
        ...

    def on_timer(self, name: str) -> list[ClientEffect]:
        ...

    def abandon(self) -> list[ClientEffect]:
        """Give up the outstanding request (the caller stopped waiting); a later answer
        to it is ignored and a new request may be submitted."""
        ...
