"""A PBFT state-machine-replication replica: one ordering instance plus clients,
batching, execution, exactly-once semantics, checkpoints and state transfer.

Implements ``phalanx.core.node.ReplicaCore``. The ordering lives in
:class:`~phalanx.protocols.pbft.instance.PbftInstance`; this class is its host: it turns
client requests into batch payloads, validates other primaries' batches, executes decided
batches against a :class:`~phalanx.statemachine.StateMachine`, and answers clients.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from phalanx.core.certificates import (
    CERT_TICK,
    BlockCertifier,
    BlockSig,
    Certificates,
    FetchCertificates,
)
from phalanx.core.crypto import NodeCrypto
from phalanx.core.effects import (
    Broadcast,
    CancelTimer,
    Dropped,
    Executed,
    Persist,
    Send,
    SetTimer,
    ToClient,
)
from phalanx.core.hashing import digest as sha256
from phalanx.core.hashing import digest_parts
from phalanx.core.messages import (
    Error,
    Refusal,
    Reply,
    Request,
    decode_batch,
    encode_batch,
)
from phalanx.core.quorum import Quorums
from phalanx.protocols.pbft.config import PbftConfig
from phalanx.protocols.pbft.instance import (
    Decided,
    NeedState,
    PbftInstance,
    StableCheckpoint,
    ViewInstalled,
)
from phalanx.protocols.pbft.messages import FetchState, StateData
from phalanx.statemachine.base import StateMachine

MAX_PENDING_REQUESTS = 100_000
"""Requests waiting to be ordered; beyond this new clients are refused (bounded memory)."""
REQUEST_OVERHEAD = 256
"""Bytes a request adds to a batch besides its op (ids, timestamp, authenticator)."""

REQUEST_REFUSALS = {
    # Functions of the request's bytes and the cluster config (max_request_bytes): every
    # correct replica refuses the request, and _validate_batch refuses a batch holding it.
    "request_too_large": Refusal.FINAL,
    "malformed_request": Refusal.FINAL,
    # A replica checks only its own authenticator entry, under its own pairwise key with
    # the client: it will always refuse these bytes, but the others' entries may be valid.
    "bad_authenticator": Refusal.LOCAL,
}
"""How far each of _request_error's refusals reaches; any other refusal (overloaded, the
app's state-dependent admission) is TRANSIENT."""

_SNAPSHOT_KEY = b"Rsnap"
BATCH_TIMER = "pbft.batch"
FILL_TIMER = "pbft.fill"
FILL_GAPS = 5
"""Most fill-wait gaps in a row: a wait for a batch to fill lasts at most this many
``fill_wait`` periods, each granted only if requests came in during the previous one."""
CERT_TIMER = "ledger.certificates"


class ClientRecord(msgspec.Struct, array_like=True, gc=False):
    """Exactly-once state of one client: its last executed request and the reply."""

    timestamp: int
    result: bytes


class Snapshot(msgspec.Struct, array_like=True, gc=False):
    """Everything a checkpoint's digest covers: application state and client table."""

    seq: int
    app: bytes
    clients: list[tuple[bytes, int, bytes]]


def checkpoint_digest(state_root: bytes, clients: list[tuple[bytes, int, bytes]]) -> bytes:
    return digest_parts(state_root, msgspec.msgpack.encode(clients))


class PbftReplica:
    """One PBFT replica (instance 0) serving clients over a replicated state machine."""

    INSTANCE = 0

    def __init__(
        self,
        replica_id: int,
        quorums: Quorums,
        crypto: NodeCrypto,
        make_state_machine: Callable[[], StateMachine],
        config: PbftConfig | None = None,
    ) -> None:
        self.replica_id = replica_id
        self.q = quorums
        self.crypto = crypto
        self.config = config or PbftConfig()
        self.make_state_machine = make_state_machine
        self.app = make_state_machine()
        self.clients: dict[bytes, ClientRecord] = {}
        self.pending: dict[bytes, Request] = {}  # client -> newest unexecuted request
        # Of those, the ones not yet in a batch of this view (the primary's queue, kept on
        # every replica so that a new primary has it), in arrival order.
        self.unproposed: dict[bytes, Request] = {}
        self.proposed: set[tuple[bytes, int]] = set()  # (client, timestamp) in flight
        # The last decided slot when this backup last gave the primary a grace timeout
        # for the multicast requests it holds (see _relay).
        self.grace_at = -1
        self.validated: dict[bytes, list[Request]] = {}  # digest -> decoded batch
        # Own checkpoints not yet stable, with their state digests.
        self.snapshots: dict[int, tuple[Snapshot, bytes]] = {}
        self.stable_snapshot: Snapshot | None = None
        self.batch_timer_armed = False
        self.batch_timer_expired = False
        # Fill wait (see _batch_wait): clients of the last two batches, requests queued
        # so far, and the state of the current wait.
        self.demand = 0
        self._last_batch_clients: set[bytes] = set()
        self.arrivals = 0
        self.fill_arrivals = 0
        self.fill_gaps = 0
        self.fill_timer_armed = False
        self.fill_expired = False
        self.instance = PbftInstance(
            self.INSTANCE, replica_id, quorums, crypto, self.config, self._validate_batch
        )
        # A state machine that makes blocks (the ledger) gets admission checks, atomic
        # block records and commit certificates; for any other (the KV store) this stays
        # None and costs one test per batch.
        self.certifier: BlockCertifier | None = (
            BlockCertifier(replica_id, quorums, crypto) if hasattr(self.app, "seal_block")
            else None
        )
        self.cert_timer_armed = False

    # -- ReplicaCore ---------------------------------------------------------------------

    def recover(self, records: Iterable[tuple[bytes, bytes]]) -> None:
        records = list(records)
        if self.certifier is not None:
            self.certifier.recover(records)
        state_seq = 0
        for key, value in records:
            if key == _SNAPSHOT_KEY:
                snapshot = msgspec.msgpack.decode(value, type=Snapshot)
                self._install_snapshot(snapshot)
                self._expect_snapshot_block()  # nothing to persist: no votes yet
                state_seq = snapshot.seq
        self.instance.recover(records, state_seq=state_seq)

    def start(self) -> list[Any]:
        return self._host(self.instance.start()) + self._arm_cert_timer()

    @property
    def recovery_skip(self) -> tuple[bytes, ...]:
        """Store key prefixes :meth:`recover` does not need (the driver skips them)."""
        return tuple(getattr(self.app, "recovery_skip", ()))

    def on_message(self, src: int, msg: Any) -> list[Any]:
        if isinstance(msg, Request):
            # A backup forwards a client's request to the primary.
            return self._on_request(msg, None, src)
        if isinstance(msg, FetchState):
            return self._on_fetch_state(src, msg)
        if isinstance(msg, (BlockSig, FetchCertificates, Certificates)):
            return self._on_certificate_message(src, msg)
        if isinstance(msg, StateData):
            return self._on_state_data(src, msg)
        return self._host(self.instance.on_message(src, msg))

    def on_client_message(self, client: bytes, msg: Any) -> list[Any]:
        """``client`` is the connection's identity: the request's client itself, or the
        endpoint it named (a process multiplexing many clients over one connection)."""
        if not isinstance(msg, Request):
            return [Dropped("unexpected_message", -1)]
        if client != msg.reply_to:
            return [Dropped("client_mismatch", -1)]
        return self._on_request(msg, client, None)

    def on_timer(self, name: str) -> list[Any]:
        if name == CERT_TIMER and self.certifier is not None:
            self.cert_timer_armed = False
            return self.certifier.tick() + self._arm_cert_timer()
        if name == BATCH_TIMER:
            self.batch_timer_armed, self.batch_timer_expired = False, True
            out = self._host([])
            self.batch_timer_expired = False
            return out
        if name == FILL_TIMER:
            return self._on_fill_timer()
        if name == self.instance.progress_timer:
            return self._on_progress_timeout(name)
        return self._host(self.instance.on_timer(name))

    def state_root(self) -> bytes:
        return self.app.state_root()

    @property
    def view(self) -> int:
        return self.instance.view

    @property
    def last_executed(self) -> int:
        return self.instance.last_decided

    # -- block certificates (state machines that make blocks) --------------------------

    def _on_certificate_message(self, src: int, msg: Any) -> list[Any]:
        certifier = self.certifier
        if certifier is None:
            return [Dropped("unexpected_message", src)]
        if isinstance(msg, BlockSig):
            return certifier.on_block_sig(src, msg)
        if isinstance(msg, FetchCertificates):
            return certifier.on_fetch(src, msg)
        return certifier.on_certificates(src, msg)

    def _arm_cert_timer(self) -> list[Any]:
        """Tick while blocks wait for certificates: missed signatures are fetched."""
        if self.certifier is None or self.cert_timer_armed or not self.certifier.waiting():
            return []
        self.cert_timer_armed = True
        return [SetTimer(CERT_TIMER, CERT_TICK)]

    def _expect_snapshot_block(self) -> list[Any]:
        """After installing a snapshot: its last block is known (proven by the checkpoint)
        but was not executed here; have it certified so that proofs can use it."""
        if self.certifier is None:
            return []
        height, block_hash = self.app.last_block()  # type: ignore[attr-defined]
        return self.certifier.expect(height, block_hash)

    # -- requests and batching ---------------------------------------------------------

    def _on_request(self, req: Request, client: bytes | None, forwarder: int | None) -> list[Any]:
        out: list[Any] = []
        src = -1 if forwarder is None else forwarder
        record = self.clients.get(req.client)
        if record is not None and req.timestamp < record.timestamp:
            out.append(Dropped("stale_request", src))
            return out
        # Authenticated before anything is answered, the cached reply included: otherwise
        # anyone could read a client's last result by replaying its id and timestamp.
        reason = self._request_error(req)
        if reason is None and record is not None and req.timestamp == record.timestamp:
            if client is not None:
                # A retransmission: the reply may have been lost.
                out.append(ToClient(client, self._reply(req.client, req.timestamp, record.result)))
            else:
                out.append(Dropped("stale_request", src))
            return out
        refusal = REQUEST_REFUSALS.get(reason or "", Refusal.TRANSIENT)
        if reason is None and self.certifier is not None:
            reason = self.app.admit(req.op)  # type: ignore[attr-defined]
            # An app that does not say which of its reasons are final has none: a client
            # then never reports its refusals as more than "not accepted yet".
            if reason in getattr(self.app, "final_refusals", ()):
                refusal = Refusal.FINAL
        if reason is not None:
            out.append(Dropped(reason, src))
            if client is not None:
                error = Error(req.client, req.timestamp, self.replica_id, reason, refusal)
                out.append(ToClient(client, error))
            return out
        waiting = self.pending.get(req.client)
        if waiting is not None and waiting.timestamp >= req.timestamp:
            # A client retransmits to everyone: make sure the primary has it too.
            out.extend(self._relay(req, forwarder))
            return self._host(out)
        if waiting is None and len(self.pending) >= MAX_PENDING_REQUESTS:
            if client is not None:
                error = Error(req.client, req.timestamp, self.replica_id, "overloaded")
                out.append(ToClient(client, error))
            out.append(Dropped("overloaded", src))
            return out
        self.pending[req.client] = req
        self.unproposed.pop(req.client, None)  # keep arrival order for the newest one
        self.unproposed[req.client] = req
        self.arrivals += 1
        out.extend(self._relay(req, forwarder))
        out.extend(self.instance.set_waiting(True))
        return self._host(out)

    def _relay(self, req: Request, forwarder: int | None) -> list[Any]:
        """Backups pass requests that clients sent them straight to the primary. A
        multicast request is held instead — the client sent the primary its own copy,
        and three forwarded copies would triple what the primary parses — and forwarded
        only if the progress timer runs out first (_on_progress_timeout): a client that
        marks a request multicast but withholds it from the primary costs a timeout, not
        a view change."""
        if forwarder is not None or self.instance.primary == self.replica_id:
            return []
        if req.multicast:
            return []  # held: it stays in self.pending
        return [Send(self.instance.primary, req)]

    def _on_progress_timeout(self, name: str) -> list[Any]:
        """No progress for a timeout: a backup holding multicast requests forwards them
        to the primary, which may never have had them, and gives it one more timeout —
        once per decided slot, so a primary that decides nothing is still suspected on
        the next expiry."""
        inst = self.instance
        out: list[Any] = []
        if inst.primary != self.replica_id:
            out = [Send(inst.primary, req) for req in self.pending.values() if req.multicast]
        grace = inst.timer_armed and not inst.in_view_change and self.grace_at != inst.last_decided
        if out and grace:
            self.grace_at = inst.last_decided
            return self._host(out + inst.extend_progress_timer())
        return self._host(out + inst.on_timer(name))

    def _request_error(self, req: Request) -> str | None:
        if len(req.op) > self.config.max_request_bytes:
            return "request_too_large"
        if (
            len(req.client) != 32
            or not 0 < req.timestamp < 1 << 63
            or len(req.endpoint) not in (0, 32)
        ):
            return "malformed_request"
        if (
            not self.crypto.check_request(req)
            and self.config.planted_bug != "request_authenticator"
        ):
            return "bad_authenticator"
        return None

    def _propose(self) -> list[Any]:
        out: list[Any] = []
        while self.unproposed and self.instance.can_propose():
            batch: list[Request] = []
            size = 0
            for client in list(itertools.islice(self.unproposed, self.config.max_batch)):
                req = self.unproposed[client]
                size += len(req.op) + REQUEST_OVERHEAD
                if batch and size > self.config.max_batch_bytes:
                    break  # a pre-prepare must fit in one frame
                del self.unproposed[client]
                batch.append(req)
                self.proposed.add((req.client, req.timestamp))
            payload = encode_batch(batch)
            self.validated[sha256(payload)] = batch
            if self.fill_timer_armed:
                self.fill_timer_armed = False
                out.append(CancelTimer(FILL_TIMER))
            out.extend(self.instance.propose(payload))
        return out

    def _validate_batch(self, payload: bytes) -> bool:
        """External validity of a pre-prepared payload: a well-formed batch of requests
        whose authenticator entry for this replica is valid. A primary cannot make us
        execute requests that clients did not send."""
        if payload == b"":
            return True  # the null request
        try:
            batch = decode_batch(payload)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return False
        if not batch or len(batch) > self.config.max_batch:
            return False
        if any(self._request_error(req) is not None for req in batch):
            return False
        if self.certifier is not None and not all(
            self.app.check_op(req.op) for req in batch  # type: ignore[attr-defined]
        ):
            return False
        self.validated[sha256(payload)] = batch
        return True

    # -- execution ----------------------------------------------------------------------

    def _host(self, effects: list[Any]) -> list[Any]:
        """Consume the instance's host events (recursively: executing may checkpoint),
        pass every other effect through, then propose if we are the primary."""
        out: list[Any] = []
        queue = list(effects)
        i = 0
        while i < len(queue):
            e = queue[i]
            i += 1
            if isinstance(e, Decided):
                # Appended, not spliced in: effects must reach the driver in the order the
                # instance produced them, or a later timer update could be overtaken by an
                # earlier one (and the driver's timers would disagree with the instance).
                queue.extend(self._execute(e))
            elif isinstance(e, StableCheckpoint):
                out.extend(self._on_stable(e))
            elif isinstance(e, NeedState):
                out.extend(self._need_state(e))
            elif isinstance(e, ViewInstalled):
                # Requests proposed by a failed primary may never commit: offer them again.
                self.proposed.clear()
                self.unproposed = dict(self.pending)
                if e.primary != self.replica_id:
                    for req in self.pending.values():
                        out.append(Send(e.primary, req))
            else:
                out.append(e)
        if self.instance.is_primary and self.unproposed and self.instance.can_propose():
            wait = self._batch_wait()
            if wait == "delay":
                if not self.batch_timer_armed:
                    self.batch_timer_armed = True
                    out.append(SetTimer(BATCH_TIMER, self.config.batch_delay))
            elif wait == "fill":
                if not self.fill_timer_armed:
                    self.fill_timer_armed = True
                    self.fill_gaps, self.fill_arrivals = 1, self.arrivals
                    out.append(SetTimer(FILL_TIMER, self.config.fill_wait))
            elif wait is None:
                proposed = self._propose()
                if proposed:
                    out.extend(self._host(proposed))
        return out

    def _on_fill_timer(self) -> list[Any]:
        self.fill_timer_armed = False
        if self.arrivals != self.fill_arrivals and self.fill_gaps < FILL_GAPS:
            # Requests are still coming in: give the rest of the demand another gap.
            self.fill_gaps += 1
            self.fill_arrivals = self.arrivals
            self.fill_timer_armed = True
            return [SetTimer(FILL_TIMER, self.config.fill_wait)]
        self.fill_expired = True
        out = self._host([])
        self.fill_expired = False
        return out

    def _batch_wait(self) -> str | None:
        """Adaptive batching: None to propose now, "share" to wait for more requests (no
        timer: every arrival and every decision asks again), "delay" to wait for the
        batch timer, "fill" to wait for the fill timer.

        With nothing in flight, wait for the demand — the distinct clients of the last
        two batches — to be back, while requests keep coming (``fill_wait`` per gap, at
        most FILL_GAPS gaps; see _on_fill_timer). Closed-loop clients otherwise split
        into two cohorts that alternate in half-size batches: each slot costs every
        replica a round of messages, system calls and a durable write, so one full
        batch per round costs far less CPU per request (measured: about a quarter
        less) and, on a CPU-bound host, less latency too. A lone client, or clients
        that stopped, cost at most one gap of waiting. While a slot is
        in flight, open another only for a batch worth it: at least a quarter of a full
        batch, and a fair share of the outstanding requests — (in flight + queued) /
        max_inflight — so that the pipeline carries balanced batches instead of one
        large batch trailed by crumbs. Every slot costs each replica a round of messages
        and syscalls, so when CPU binds, fewer and larger batches win; when latency binds
        (many clients, slow links), queues grow and the pipeline deepens by itself. With
        a batch delay, also wait until the delay passed or the batch is full."""
        inst = self.instance
        queued = len(self.unproposed)
        if inst.next_seq - 1 == inst.last_decided:
            demand = min(self.demand, self.config.max_batch)
            if self.config.fill_wait > 0 and queued < demand and not self.fill_expired:
                return "fill"
            return None
        if self.batch_timer_expired:
            return None
        max_batch = self.config.max_batch
        fair_share = (len(self.proposed) + queued) // self.config.max_inflight
        if queued < min(max(fair_share, max_batch // 4), max_batch):
            return "share"
        if self.config.batch_delay > 0 and queued < self.config.max_batch:
            return "delay"
        return None

    def _execute(self, decided: Decided) -> list[Any]:
        batch = self.validated.pop(decided.digest, None)
        if batch is None and decided.payload:
            try:
                batch = decode_batch(decided.payload)
            except (msgspec.DecodeError, msgspec.ValidationError):
                batch = []  # cannot happen for a validated payload; never crash on it
        batch = batch or []
        fresh: list[Request] = []
        latest: dict[bytes, int] = {}
        for req in batch:
            # Exactly once at execution time: a request may be ordered twice (e.g. proposed
            # again after a view change), but only its first ordering executes.
            last = latest.get(req.client)
            if last is None:
                record = self.clients.get(req.client)
                last = 0 if record is None else record.timestamp
            if req.timestamp > last:
                fresh.append(req)
                latest[req.client] = req.timestamp
        results = self.app.apply([req.op for req in fresh]) if fresh else []
        out: list[Any] = []
        if self.certifier is not None:
            sealed = self.app.seal_block(decided.seq)  # type: ignore[attr-defined]
            if sealed is not None:
                # Gating (not lazy): the replies below leave only once the block, its
                # tx index and state changes are durable with the log that ordered them.
                out.extend(Persist(key, value) for key, value in sealed.records)
                out.extend(self.certifier.sealed(sealed.height, sealed.digest))
                out.extend(self._arm_cert_timer())
        batch_clients = {req.client for req in batch}
        self.demand = len(batch_clients | self._last_batch_clients)
        self._last_batch_clients = batch_clients
        for req, result in zip(fresh, results, strict=True):
            self.clients[req.client] = ClientRecord(req.timestamp, result)
            waiting = self.pending.get(req.client)
            if waiting is not None and waiting.timestamp <= req.timestamp:
                del self.pending[req.client]
                self.unproposed.pop(req.client, None)
            self.proposed.discard((req.client, req.timestamp))
            out.append(ToClient(req.reply_to, self._reply(req.client, req.timestamp, result)))
        seq = decided.seq
        is_checkpoint = seq % self.config.checkpoint_interval == 0
        root = self.app.state_root() if is_checkpoint or self.config.state_root_every_batch else b""
        out.append(
            Executed(
                self.INSTANCE,
                seq,
                decided.digest,
                [(r.client, r.timestamp) for r in fresh],
                root,
            )
        )
        if not self.pending:
            out.extend(self.instance.set_waiting(False))
        if is_checkpoint and not self.config.single_shot:
            snapshot = self._snapshot(seq)
            state_digest = checkpoint_digest(root, snapshot.clients)
            self.snapshots[seq] = (snapshot, state_digest)
            out.extend(self.instance.make_checkpoint(seq, state_digest))
        return out

    def _reply(self, client: bytes, timestamp: int, result: bytes) -> Reply:
        return Reply(client, self.instance.view, timestamp, self.replica_id, result)

    # -- checkpoints and state transfer -------------------------------------------------

    def _snapshot(self, seq: int) -> Snapshot:
        clients = [(c, r.timestamp, r.result) for c, r in sorted(self.clients.items())]
        return Snapshot(seq, self.app.snapshot(), clients)

    def _on_stable(self, stable: StableCheckpoint) -> list[Any]:
        own = self.snapshots.pop(stable.seq, None)
        for seq in [s for s in self.snapshots if s < stable.seq]:
            del self.snapshots[seq]
        # Batches validated but never decided (a faulty primary's, or ones a view change
        # replaced) would otherwise accumulate.
        for digest in [d for d in self.validated if d not in self.instance.payloads]:
            del self.validated[digest]
        if own is None or own[1] != stable.digest:
            # We are behind, or our state diverged from the certified one: either way
            # the snapshot comes by state transfer (never serve or keep a wrong one).
            return []
        snapshot = own[0]
        self.stable_snapshot = snapshot
        # Lazy, like the stable-checkpoint record written in the same batch: until both
        # are durable, a restart simply recovers from the previous checkpoint.
        return [Persist(_SNAPSHOT_KEY, msgspec.msgpack.encode(snapshot), lazy=True)]

    def _need_state(self, need: NeedState) -> list[Any]:
        if need.seq <= self.instance.last_decided and not self.instance.repairing:
            return []
        fetch = FetchState(self.INSTANCE, need.seq)
        holders = [r for r in need.holders if r != self.replica_id]
        if not holders:
            return [Broadcast(fetch)]
        return [Send(r, fetch) for r in holders]

    def _on_fetch_state(self, src: int, msg: FetchState) -> list[Any]:
        snap = self.stable_snapshot
        if snap is None or snap.seq < msg.seq or snap.seq != self.instance.low:
            return [Dropped("state_unavailable", src)]
        data = StateData(
            self.INSTANCE, snap.seq, msgspec.msgpack.encode(snap), self.instance.stable_proof
        )
        return [Send(src, data)]

    def _on_state_data(self, src: int, msg: StateData) -> list[Any]:
        inst = self.instance
        target = inst.state_target  # the stable checkpoint we are fetching
        # Never install a snapshot at or below what we executed (a roll-back), unless
        # our own state there diverged from the certified one (a repair).
        if target is None or msg.seq < target[0] or (
            msg.seq <= inst.last_decided and not inst.repairing
        ):
            return [Dropped("unwanted_state", src)]
        try:
            snap = msgspec.msgpack.decode(msg.snapshot, type=Snapshot)
            app = self.make_state_machine()
            app.restore(snap.app)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError):
            return [Dropped("bad_state", src)]
        digest = checkpoint_digest(app.state_root(), snap.clients)
        if snap.seq != msg.seq or not self.instance.checkpoint_proof_valid(
            msg.seq, digest, msg.proof
        ):
            return [Dropped("bad_state", src)]
        self._install_snapshot(snap, app)
        out: list[Any] = [Persist(_SNAPSHOT_KEY, msgspec.msgpack.encode(snap), lazy=True)]
        out.extend(self._expect_snapshot_block())
        out.extend(self._arm_cert_timer())
        out.extend(self.instance.state_transferred(snap.seq, digest, msg.proof))
        if not self.pending:  # the snapshot may have answered everything we waited for
            out.extend(self.instance.set_waiting(False))
        return self._host(out)

    def _install_snapshot(self, snap: Snapshot, app: StateMachine | None = None) -> None:
        if app is None:
            app = self.make_state_machine()
            app.restore(snap.app)
        self.app = app
        self.clients = {c: ClientRecord(ts, result) for c, ts, result in snap.clients}
        self.stable_snapshot = snap
        self.snapshots.clear()  # of states we no longer hold (recomputed as we execute)
        for client, req in list(self.pending.items()):
            record = self.clients.get(client)
            if record is not None and record.timestamp >= req.timestamp:
                del self.pending[client]
                self.unproposed.pop(client, None)
