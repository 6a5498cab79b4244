"""A PBFT state-machine-replication replica: one ordering instance on a replica host.

Implements ``phalanx.core.node.ReplicaCore``. The ordering lives in
:class:`~phalanx.protocols.pbft.instance.PbftInstance`; the client table, execution,
block certificates, checkpoint snapshots and state transfer in the protocol-independent
:class:`~phalanx.host.ReplicaHost`. What is left here is PBFT's own: how requests reach
the primary (relayed by backups, or multicast and held), how the primary cuts them into
batches, which batches a backup accepts, checkpoints every ``checkpoint_interval`` slots,
and what a new view means for requests in flight.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

import msgspec

from phalanx.core.address import REPLICA_ROLE, Address
from phalanx.core.crypto import NodeCrypto
from phalanx.core.effects import CancelTimer, Dropped, Send, SetTimer
from phalanx.core.hashing import digest as sha256
from phalanx.core.messages import Request, decode_batch, encode_batch
from phalanx.core.quorum import Quorums
from phalanx.host import HOST_MESSAGES, ReplicaHost
from phalanx.protocols.pbft.config import PbftConfig
from phalanx.protocols.pbft.instance import (
    Decided,
    NeedState,
    PbftInstance,
    StableCheckpoint,
    ViewInstalled,
)
from phalanx.protocols.pbft.messages import Checkpoint
from phalanx.statemachine.base import StateMachine, StateMachineFactory

REQUEST_OVERHEAD = 256
"""Bytes a request adds to a batch besides its op (ids, timestamp, authenticator)."""
BATCH_TIMER = "pbft.batch"
FILL_TIMER = "pbft.fill"
FILL_GAPS = 5
"""Most fill-wait gaps in a row: a wait for a batch to fill lasts at most this many
``fill_wait`` periods, each granted only if requests came in during the previous one."""

_proof_decoder = msgspec.msgpack.Decoder(list[Checkpoint])


class PbftReplica:
    """One PBFT replica (instance 0) serving clients over a replicated state machine."""

    INSTANCE = 0
    instance_class: type[PbftInstance] = PbftInstance
    """The ordering instance (a test seam: the fuzzer's planted bugs subclass it)."""

    def __init__(
        self,
        replica_id: int,
        quorums: Quorums,
        crypto: NodeCrypto,
        make_state_machine: StateMachineFactory,
        config: PbftConfig | None = None,
    ) -> None:
        self.replica_id = replica_id
        self.q = quorums
        self.crypto = crypto
        self.config = config or PbftConfig()
        self.host = ReplicaHost(
            replica_id, quorums, crypto, make_state_machine, self,
            max_request_bytes=self.config.max_request_bytes,
            check_request=self._check_request,
            track_executed_set=self.config.track_executed_set,
        )
        # Of the requests waiting to be ordered (host.pending), the ones not yet in a
        # batch of this view (the primary's queue, kept on every replica so that a new
        # primary has it), in arrival order.
        self.unproposed: dict[bytes, Request] = {}
        self.proposed: set[tuple[bytes, int]] = set()  # (client, timestamp) in flight
        # The last decided slot when this backup last gave the primary a grace timeout
        # for the multicast requests it holds (see _relay).
        self.grace_at = -1
        self.validated: dict[bytes, list[Request]] = {}  # digest -> decoded batch
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
        self.instance = self.instance_class(
            self.INSTANCE, replica_id, quorums, crypto, self.config, self._validate_batch
        )

    # -- ReplicaCore ---------------------------------------------------------------------

    def recover(self, records: Iterable[tuple[bytes, bytes]]) -> None:
        records = list(records)
        state_seq = self.host.recover(records)
        self.instance.recover(records, state_seq=state_seq)

    def start(self) -> list[Any]:
        return self._process(self.instance.start()) + self.host.start()

    @property
    def recovery_skip(self) -> tuple[bytes, ...]:
        """Store key prefixes :meth:`recover` does not need (the driver skips them)."""
        return self.host.recovery_skip

    @property
    def app(self) -> StateMachine:
        return self.host.app

    @property
    def pending(self) -> dict[bytes, Request]:
        return self.host.pending

    def on_message(self, src: Address, msg: Any) -> list[Any]:
        replica = src.replica
        if src.role != REPLICA_ROLE or src.partition:
            # A PBFT replica is one process: no other process speaks for a replica.
            return [Dropped("unknown_sender", replica)]
        if isinstance(msg, Request):
            # A backup forwards a client's request to the primary.
            return self._on_request(msg, None, replica)
        if isinstance(msg, HOST_MESSAGES):
            return self._process(self.host.on_message(replica, msg))
        return self._process(self.instance.on_message(replica, msg))

    def on_client_message(self, client: bytes, msg: Any) -> list[Any]:
        """``client`` is the connection's identity: the request's client itself, or the
        endpoint it named (a process multiplexing many clients over one connection)."""
        if not isinstance(msg, Request):
            return [Dropped("unexpected_message", -1)]
        if client != msg.reply_to:
            return [Dropped("client_mismatch", -1)]
        return self._on_request(msg, client, None)

    def on_timer(self, name: str) -> list[Any]:
        hosted = self.host.on_timer(name)
        if hosted is not None:
            return hosted
        if name == BATCH_TIMER:
            self.batch_timer_armed, self.batch_timer_expired = False, True
            out = self._process([])
            self.batch_timer_expired = False
            return out
        if name == FILL_TIMER:
            return self._on_fill_timer()
        if name == self.instance.progress_timer:
            return self._on_progress_timeout(name)
        return self._process(self.instance.on_timer(name))

    def state_digest(self) -> bytes:
        return self.host.app.state_digest()

    @property
    def view(self) -> int:
        return self.instance.view

    @property
    def last_executed(self) -> int:
        return self.instance.last_decided

    def _check_request(self, req: Request) -> bool:
        """Is this replica's entry of ``req``'s authenticator valid?"""
        return self.crypto.check_request(req)

    # -- the host's view of our checkpoints (host.StableCheckpoints) --------------------

    def stable_checkpoint(self) -> tuple[int, bytes]:
        return self.instance.low, msgspec.msgpack.encode(self.instance.stable_proof)

    def wants_state(self, position: int) -> bool:
        inst = self.instance
        target = inst.state_target  # the stable checkpoint we are fetching
        # Never install a snapshot at or below what we executed (a roll-back), unless
        # our own state there diverged from the certified one (a repair).
        return target is not None and position >= target[0] and (
            position > inst.last_decided or inst.repairing
        )

    def proof_valid(self, position: int, digest: bytes, proof: bytes) -> bool:
        try:
            checkpoints = _proof_decoder.decode(proof)
        except msgspec.DecodeError:
            return False
        return self.instance.checkpoint_proof_valid(position, digest, checkpoints)

    def state_transferred(self, position: int, digest: bytes, proof: bytes) -> list[Any]:
        out = self.instance.state_transferred(position, digest, _proof_decoder.decode(proof))
        # The snapshot may have answered requests we were waiting for.
        self.unproposed = {c: r for c, r in self.unproposed.items() if c in self.host.pending}
        if not self.host.pending:
            out.extend(self.instance.set_waiting(False))
        return out

    # -- requests and batching ---------------------------------------------------------

    def _on_request(self, req: Request, client: bytes | None, forwarder: int | None) -> list[Any]:
        src = -1 if forwarder is None else forwarder
        status, out = self.host.admit(req, client, src, self.instance.view)
        if status == "waiting":
            # A client retransmits to everyone: make sure the primary has it too.
            out.extend(self._relay(req, forwarder))
            return self._process(out)
        if status != "new":
            return out
        self.host.enqueue(req)
        self.unproposed.pop(req.client, None)  # keep arrival order for the newest one
        self.unproposed[req.client] = req
        self.arrivals += 1
        out.extend(self._relay(req, forwarder))
        out.extend(self.instance.set_waiting(True))
        return self._process(out)

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
            return self._process(out + inst.extend_progress_timer())
        return self._process(out + inst.on_timer(name))

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
        each of which this replica could have admitted (authenticator, size, and the
        application's state-independent check). A primary cannot make us execute
        requests that clients did not send."""
        if payload == b"":
            return True  # the null request
        try:
            batch = decode_batch(payload)
        except msgspec.DecodeError:
            return False
        if not batch or len(batch) > self.config.max_batch:
            return False
        if not all(self.host.valid_in_batch(req) for req in batch):
            return False
        self.validated[sha256(payload)] = batch
        return True

    # -- the instance's host events ----------------------------------------------------

    def _process(self, effects: list[Any]) -> list[Any]:
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
                    out.extend(self._process(proposed))
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
        out = self._process([])
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
            except msgspec.DecodeError:
                batch = []  # cannot happen for a validated payload; never crash on it
        batch = batch or []
        seq = decided.seq
        is_checkpoint = seq % self.config.checkpoint_interval == 0
        fresh, out = self.host.execute(
            self.INSTANCE, seq, decided.digest, batch, view=self.instance.view,
            state_digest=is_checkpoint or self.config.state_digest_every_batch,
        )
        batch_clients = {req.client for req in batch}
        self.demand = len(batch_clients | self._last_batch_clients)
        self._last_batch_clients = batch_clients
        pending = self.host.pending
        for req in fresh:
            if req.client not in pending:
                self.unproposed.pop(req.client, None)
            self.proposed.discard((req.client, req.timestamp))
        if not pending:
            out.extend(self.instance.set_waiting(False))
        if is_checkpoint and not self.config.single_shot:
            out.extend(self.instance.make_checkpoint(seq, self.host.checkpoint(seq)))
        return out

    # -- checkpoints and state transfer -------------------------------------------------

    def _on_stable(self, stable: StableCheckpoint) -> list[Any]:
        # Batches validated but never decided (a faulty primary's, or ones a view change
        # replaced) would otherwise accumulate.
        for digest in [d for d in self.validated if d not in self.instance.payloads]:
            del self.validated[digest]
        return self.host.stable(stable.seq, stable.digest)

    def _need_state(self, need: NeedState) -> list[Any]:
        if need.seq <= self.instance.last_decided and not self.instance.repairing:
            return []
        return self.host.fetch_state(need.seq, need.holders)
