"""The sequencer replica (see the package docstring): a sans-I/O core on a replica host."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from phalanx.core.address import Address
from phalanx.core.crypto import NodeCrypto
from phalanx.core.effects import Broadcast, CancelTimer, Dropped, Persist, Send, SetTimer
from phalanx.core.hashing import digest
from phalanx.core.messages import Request, decode_batch, encode_batch
from phalanx.core.quorum import Quorums
from phalanx.host import HOST_MESSAGES, ReplicaHost
from phalanx.statemachine.base import StateMachineFactory
from sequencer.messages import (
    Ack,
    Commit,
    Entry,
    NewView,
    Order,
    StartView,
    WitnessAck,
    Witnessed,
)
from sequencer.options import SequencerOptions

PROGRESS = "seq.progress"  # a follower that sees no progress moves to the next view
SYNC = "seq.sync"  # the leader re-sends what its followers lack
WITNESS = "seq.witness"  # a front re-sends what its witnesses lack
MAX_RESEND = 64
_VIEW, _COMMITTED, _LOG = b"Qv", b"Qc", b"Ql"


class SequencerReplica:
    def __init__(self, replica_id: int, quorums: Quorums, crypto: NodeCrypto,
                 make_state_machine: StateMachineFactory, options: SequencerOptions) -> None:
        self.replica_id, self.q, self.options = replica_id, quorums, options
        self.host = ReplicaHost(replica_id, quorums, crypto, make_state_machine, self,
                                max_request_bytes=1 << 20)
        self.view, self.changing = 0, False
        self.log: dict[int, Entry] = {}
        self.committed = self.executed = 0
        self.unproposed: dict[bytes, Request] = {}  # the leader's queue (kept everywhere)
        self.match: dict[int, int] = {}  # leader: replica -> entries it holds in order
        self.start_views: dict[int, StartView] = {}  # new leader: replica -> its log
        self.timer_armed = self.progressed = False
        k = options.witnesses
        self.witness_next = {p: p or k for p in range(k)}  # what each witness lacks

    # -- ReplicaCore ----------------------------------------------------------------------

    @property
    def leader(self) -> int:
        return self.q.primary(self.view)

    @property
    def last_executed(self) -> int:
        return self.executed

    def state_digest(self) -> bytes:
        return self.host.app.state_digest()

    def recover(self, records: Iterable[tuple[bytes, bytes]]) -> None:
        for key, value in records:
            if key == _VIEW:
                self.view, self.changing = msgspec.msgpack.decode(value)
            elif key == _COMMITTED:
                self.committed = msgspec.msgpack.decode(value)
            elif key.startswith(_LOG):
                entry = msgspec.msgpack.decode(value, type=Entry)
                self.log[entry.seq] = entry

    def start(self) -> list[Any]:
        out = self._execute()  # no checkpoints: the committed log runs again from 1
        if self.changing:
            out += self._start_view(self.view, again=True)
        elif self.leader == self.replica_id:
            out.append(SetTimer(SYNC, self.options.timeout / 2))
        if self.options.witnesses:
            out.append(SetTimer(WITNESS, self.options.timeout / 2))
        return out + self._timers()

    def on_client_message(self, client: bytes, msg: Any) -> list[Any]:
        if not isinstance(msg, Request) or client != msg.reply_to:
            return [Dropped("unexpected_message", -1)]
        return self._on_request(msg, client, -1)

    def on_message(self, sender: Address, msg: Any) -> list[Any]:
        src = sender.replica
        if sender.role != "replica":  # only our own witnesses, about what they hold
            if src != self.replica_id or not isinstance(msg, WitnessAck) \
                    or sender.partition not in self.witness_next:
                return [Dropped("unknown_sender", src)]
            p = sender.partition
            self.witness_next[p] = max(self.witness_next[p], msg.next)
            return []
        if isinstance(msg, Request):
            return self._on_request(msg, None, src)
        if isinstance(msg, HOST_MESSAGES):
            return self.host.on_message(src, msg)
        handler = {Order: self._on_order, Ack: self._on_ack, Commit: self._on_commit,
                   StartView: self._on_start_view, NewView: self._on_new_view}.get(type(msg))
        if handler is None or not 0 <= src < self.q.n:
            return [Dropped("unexpected_message", src)]
        return handler(src, msg) + self._timers()

    def on_timer(self, name: str) -> list[Any]:
        if name == PROGRESS and self.timer_armed:
            self.timer_armed = False
            return self._start_view(self.view + 1) + self._timers()
        if name == SYNC and self.leader == self.replica_id and not self.changing:
            return [*self._resend(), SetTimer(SYNC, self.options.timeout / 2)]
        if name == WITNESS:
            return [*self._resend_witnessed(), SetTimer(WITNESS, self.options.timeout / 2)]
        return self.host.on_timer(name) or []

    # -- the host's view of our checkpoints: we take none -------------------------------

    def stable_checkpoint(self) -> tuple[int, bytes]:
        return 0, b""

    def wants_state(self, position: int) -> bool:
        return False

    def proof_valid(self, position: int, digest: bytes, proof: bytes) -> bool:
        return False

    def state_transferred(self, position: int, digest: bytes, proof: bytes) -> list[Any]:
        return []

    # -- requests and ordering ----------------------------------------------------------

    def _on_request(self, req: Request, client: bytes | None, src: int) -> list[Any]:
        status, out = self.host.admit(req, client, src, self.view)
        if status == "new":
            self.host.enqueue(req)
            self.unproposed[req.client] = req
        if status in ("new", "waiting") and src < 0 and self.leader != self.replica_id:
            out.append(Send(self.leader, req))
        return out + self._propose() + self._timers()

    def _propose(self) -> list[Any]:
        if self.leader != self.replica_id or self.changing or not self.unproposed:
            return []
        batch = list(self.unproposed.values())[: self.options.max_batch]
        for req in batch:
            del self.unproposed[req.client]
        seq = max(self.log, default=0) + 1
        entry = Entry(seq, self.view, encode_batch(batch))
        return [*self._accept(entry), Broadcast(Order(self.view, seq, entry.batch))]

    def _accept(self, entry: Entry) -> list[Any]:
        self.log[entry.seq] = entry
        self.match[self.replica_id] = self._held()
        return [Persist(_LOG + entry.seq.to_bytes(8, "big"), msgspec.msgpack.encode(entry))]

    def _held(self) -> int:
        """Entries 1..k this replica holds, in order."""
        k = 0
        while k + 1 in self.log:
            k += 1
        return k

    def _on_order(self, src: int, msg: Order) -> list[Any]:
        out = self._follow(msg.view) if msg.view > self.view else []
        if msg.view != self.view or self.changing or src != self.leader:
            return [*out, Dropped("stale_view", src)]
        out += self._accept(Entry(msg.seq, msg.view, msg.batch))
        return [*out, Send(src, Ack(self.view, self._held()))]

    def _on_ack(self, src: int, msg: Ack) -> list[Any]:
        if msg.view != self.view or self.leader != self.replica_id or self.changing:
            return []
        self.match[src] = max(self.match.get(src, 0), msg.seq)
        # The highest entry a majority holds is committed (entries of this view cover
        # the earlier ones: NEW-VIEW and the resends give followers the leader's log).
        held = sorted(self.match.values(), reverse=True)
        if len(held) >= self.q.strong and held[self.q.strong - 1] > self.committed:
            out = self._commit(held[self.q.strong - 1])
            return [*out, Broadcast(Commit(self.view, self.committed))]
        return []

    def _on_commit(self, src: int, msg: Commit) -> list[Any]:
        if msg.view != self.view or self.changing:
            return self._follow(msg.view) if msg.view > self.view else []
        return self._commit(min(msg.seq, self._held()))

    def _commit(self, seq: int) -> list[Any]:
        if seq <= self.committed:
            return []
        self.committed, self.progressed = seq, True
        return [Persist(_COMMITTED, msgspec.msgpack.encode(seq), lazy=True), *self._execute()]

    def _execute(self) -> list[Any]:
        out: list[Any] = []
        while self.executed < self.committed and self.executed + 1 in self.log:
            entry = self.log[self.executed + 1]
            batch = decode_batch(entry.batch) if entry.batch else []
            batch_digest = digest(entry.batch)
            fresh, effects = self.host.execute(
                0, entry.seq, batch_digest, batch, view=self.view,
                state_digest=self.options.state_digest_every_batch)
            for req in fresh:
                if req.client not in self.host.pending:
                    self.unproposed.pop(req.client, None)
            self.executed += 1
            out += effects
            if self.options.witnesses:  # our own witness of this position's partition
                out.append(self._witnessed(entry.seq, batch_digest))
        return out

    def _witnessed(self, seq: int, batch_digest: bytes) -> Send:
        witness = Address(self.replica_id, "witness", seq % self.options.witnesses)
        return Send(witness, Witnessed(seq, batch_digest))

    def _resend_witnessed(self) -> list[Any]:
        out: list[Any] = []
        for first in self.witness_next.values():
            top = min(self.executed, first + (MAX_RESEND - 1) * self.options.witnesses)
            for seq in range(first, top + 1, self.options.witnesses):
                out.append(self._witnessed(seq, digest(self.log[seq].batch)))
        return out

    def _resend(self) -> list[Any]:
        out: list[Any] = [Broadcast(Commit(self.view, self.committed))]
        top = max(self.log, default=0)
        for replica in range(self.q.n):
            first = self.match.get(replica, 0) + 1
            for seq in range(first, min(top, first + MAX_RESEND - 1) + 1):
                if replica != self.replica_id and seq in self.log:
                    out.append(Send(replica, Order(self.view, seq, self.log[seq].batch)))
        return out

    # -- view change --------------------------------------------------------------------

    def _follow(self, view: int) -> list[Any]:
        """A replica of a later view exists (no one lies here): join that view."""
        return self._start_view(view)

    def _start_view(self, view: int, again: bool = False) -> list[Any]:
        if view < self.view or (view == self.view and not again):
            return []
        self.view, self.changing, self.start_views, self.match = view, True, {}, {}
        own = StartView(view, self.replica_id, self.committed, sorted(self.log.values(),
                                                                    key=lambda e: e.seq))
        # To everyone (Viewstamped Replication's rule): whoever hears of a later view
        # joins it, so a view change started by one replica does not strand it.
        out: list[Any] = [Persist(_VIEW, msgspec.msgpack.encode((view, True))), Broadcast(own)]
        if self.leader == self.replica_id:
            return out + self._on_start_view(self.replica_id, own)
        return out

    def _on_start_view(self, src: int, msg: StartView) -> list[Any]:
        out = self._start_view(msg.view) if msg.view > self.view else []
        if msg.view == self.view and self.leader == self.replica_id and not self.changing:
            # A replica back from a crash joins the view we lead: give it our log.
            entries = [self.log[s] for s in sorted(self.log)]
            return [*out, Send(src, NewView(self.view, self.committed, entries))]
        if msg.view != self.view or self.leader != self.replica_id or not self.changing:
            return out
        self.start_views[msg.replica] = msg
        if len(self.start_views) < self.q.strong:
            return out
        chosen: dict[int, Entry] = {}  # per seq, the entry of the highest view
        for start in self.start_views.values():
            for e in start.entries:
                if e.seq not in chosen or e.view > chosen[e.seq].view:
                    chosen[e.seq] = e
        committed = max(s.committed for s in self.start_views.values())
        top = max(chosen, default=0)
        entries = [Entry(s, self.view, chosen[s].batch if s in chosen else b"")
                   for s in range(1, top + 1)]  # a gap no majority holds never committed
        nv = NewView(self.view, committed, entries)
        return [*out, Broadcast(nv), *self._on_new_view(self.replica_id, nv)]

    def _on_new_view(self, src: int, msg: NewView) -> list[Any]:
        if msg.view < self.view or src != self.q.primary(msg.view):
            return []
        self.view, self.changing = msg.view, False
        out: list[Any] = [Persist(_VIEW, msgspec.msgpack.encode((msg.view, False)))]
        for seq in [s for s in self.log if s > len(msg.entries)]:
            del self.log[seq]
            out.append(Persist(_LOG + seq.to_bytes(8, "big"), None))
        for entry in msg.entries:
            out += self._accept(entry)
        self.unproposed = dict(self.host.pending)
        out += self._commit(min(msg.committed, self._held()))
        if self.leader != self.replica_id:
            return [*out, Send(self.leader, Ack(self.view, self._held()))]
        return out + self._propose() + [SetTimer(SYNC, self.options.timeout / 2)]

    # -- timers -------------------------------------------------------------------------

    def _timers(self) -> list[Any]:
        """A follower suspects the leader while work waits (the leader never suspects
        itself); a view change that does not complete moves on to the next view."""
        waiting = bool(self.host.pending) or self.committed < max(self.log, default=0)
        progressed, self.progressed = self.progressed, False
        if self.changing or (self.leader != self.replica_id and waiting):
            if not self.timer_armed or (progressed and not self.changing):
                self.timer_armed = True
                return [SetTimer(PROGRESS, self.options.timeout)]
            return []
        if self.timer_armed:
            self.timer_armed = False
            return [CancelTimer(PROGRESS)]
        return []
