"""Client requests at a replica: admission, the exactly-once client table, and the
requests waiting to be ordered.

:class:`Requests` answers the question every ordering protocol asks of a client request
before it orders it — is it new, a retransmission of the last executed one (answer from
the cache), older still (drop it), or refused (why, and how far the refusal reaches) —
and remembers, per client, the newest request not executed yet. Execution
(:mod:`phalanx.host.execution`) records each executed request's result here, so a later
retransmission is answered from the table instead of running again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import msgspec

from phalanx.core.messages import Refusal, Request
from phalanx.statemachine.base import BlockStateMachine, StateMachine

CheckRequest = Callable[[Request], bool]
"""Is this node's entry of a request's authenticator valid? (``NodeCrypto.check_request``.)"""

MAX_PENDING_REQUESTS = 100_000
"""Requests waiting to be ordered; beyond this new clients are refused (bounded memory)."""

REQUEST_REFUSALS = {
    # Functions of the request's bytes and the cluster config (max_request_bytes): every
    # correct replica refuses the request, and a backup refuses a batch holding it.
    "request_too_large": Refusal.FINAL,
    "malformed_request": Refusal.FINAL,
    # A replica checks only its own authenticator entry, under its own pairwise key with
    # the client: it will always refuse these bytes, but the others' entries may be valid.
    "bad_authenticator": Refusal.LOCAL,
}
"""How far each of the request checks' refusals reaches; any other refusal (overloaded,
the application's state-dependent admission) is TRANSIENT."""


class ClientRecord(msgspec.Struct, array_like=True, gc=False):
    """Exactly-once state of one client: its last executed request and the reply."""

    timestamp: int
    result: bytes


ClientRow = tuple[bytes, int, bytes]
"""(client, timestamp, result): one client's record as snapshots carry it."""


@dataclass(frozen=True, slots=True)
class Admission:
    """What to do with a request: ``status`` is ``"new"`` (order it), ``"waiting"`` (the
    client's newest request is already waiting: relay it, order nothing), ``"cached"``
    (executed already: ``result`` is its reply), ``"stale"`` (older than the client's
    last: drop it) or ``"refused"`` (``reason``, ``refusal`` say why and how far)."""

    status: str
    reason: str = ""
    refusal: int = Refusal.TRANSIENT
    result: bytes = b""


NEW = Admission("new")
WAITING = Admission("waiting")
STALE = Admission("stale")


class Requests:
    """The client table and the requests waiting to be ordered, of one replica."""

    def __init__(
        self, check_request: CheckRequest, app: StateMachine, max_request_bytes: int
    ) -> None:
        self._check_request = check_request
        self.app = app
        self.max_request_bytes = max_request_bytes
        self.clients: dict[bytes, ClientRecord] = {}
        self.pending: dict[bytes, Request] = {}  # client -> newest unexecuted request
        # Both answer "does this op pass the application's admission" (the ledger's
        # signature and balance checks); a plain state machine admits every op.
        self._blocks = app if isinstance(app, BlockStateMachine) else None

    # -- admission -----------------------------------------------------------------------

    def admit(self, req: Request) -> Admission:
        """Classify ``req`` (see :class:`Admission`); a new one is not queued yet (the
        caller does that with :meth:`enqueue` once it decided to order it)."""
        record = self.clients.get(req.client)
        if record is not None and req.timestamp < record.timestamp:
            return STALE
        # Authenticated before anything is answered, the cached reply included: otherwise
        # anyone could read a client's last result by replaying its id and timestamp.
        reason = self.check(req)
        if reason is not None:
            return Admission("refused", reason, REQUEST_REFUSALS.get(reason, Refusal.TRANSIENT))
        if record is not None and req.timestamp == record.timestamp:
            return Admission("cached", result=record.result)
        if self._blocks is not None:
            reason = self._blocks.admit(req.op)
            if reason is not None:
                # An app that does not say which of its reasons are final has none: a
                # client then never reports its refusals as more than "not accepted yet".
                final = reason in self._blocks.final_refusals
                return Admission("refused", reason, Refusal.FINAL if final else Refusal.TRANSIENT)
        waiting = self.pending.get(req.client)
        if waiting is not None and waiting.timestamp >= req.timestamp:
            return WAITING
        if waiting is None and len(self.pending) >= MAX_PENDING_REQUESTS:
            return Admission("refused", "overloaded")
        return NEW

    def enqueue(self, req: Request) -> None:
        """``req`` waits to be ordered (it replaces an older request of its client)."""
        self.pending[req.client] = req

    def check(self, req: Request) -> str | None:
        """Why ``req`` is malformed, too large or not authenticated for this replica."""
        if len(req.op) > self.max_request_bytes:
            return "request_too_large"
        if (
            len(req.client) != 32
            or not 0 < req.timestamp < 1 << 63
            or len(req.endpoint) not in (0, 32)
        ):
            return "malformed_request"
        if not self._check_request(req):
            return "bad_authenticator"
        return None

    def valid_in_batch(self, req: Request) -> bool:
        """The state-independent validity a replica requires of every request of a batch
        another replica proposed: it could have been admitted, and the application
        accepts its op whatever the state."""
        if self.check(req) is not None:
            return False
        return self._blocks is None or self._blocks.check_op(req.op)

    # -- execution -----------------------------------------------------------------------

    def fresh(self, batch: Iterable[Request]) -> list[Request]:
        """The requests of a decided batch that run: a request may be ordered twice (e.g.
        proposed again after a view change), but only its first ordering executes."""
        fresh: list[Request] = []
        latest: dict[bytes, int] = {}
        for req in batch:
            last = latest.get(req.client)
            if last is None:
                record = self.clients.get(req.client)
                last = 0 if record is None else record.timestamp
            if req.timestamp > last:
                fresh.append(req)
                latest[req.client] = req.timestamp
        return fresh

    def executed(self, req: Request, result: bytes) -> None:
        self.clients[req.client] = ClientRecord(req.timestamp, result)
        waiting = self.pending.get(req.client)
        if waiting is not None and waiting.timestamp <= req.timestamp:
            del self.pending[req.client]

    # -- snapshots -----------------------------------------------------------------------

    def rows(self) -> list[ClientRow]:
        """The client table in canonical (client) order, as a checkpoint covers it."""
        return [(c, r.timestamp, r.result) for c, r in sorted(self.clients.items())]

    def install(self, app: StateMachine, rows: list[ClientRow]) -> None:
        """A snapshot's application and client table replace ours; waiting requests it
        answered are no longer waiting."""
        self.app = app
        self._blocks = app if isinstance(app, BlockStateMachine) else None
        self.clients = {c: ClientRecord(ts, result) for c, ts, result in rows}
        for client, req in list(self.pending.items()):
            record = self.clients.get(client)
            if record is not None and record.timestamp >= req.timestamp:
                del self.pending[client]

