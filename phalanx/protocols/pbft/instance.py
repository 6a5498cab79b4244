"""One PBFT ordering instance: a sans-I/O state machine that agrees on a sequence of
opaque payloads.

It knows nothing of clients or execution. A host (``replica.PbftReplica`` for SMR, or a
later protocol that runs several instances) feeds it messages and timer firings, proposes
payloads when it is the primary, and receives, in order, the decided payloads as
:class:`Decided` host events. The host answers with the state digest of each checkpoint
(:meth:`PbftInstance.make_checkpoint`) and performs state transfer when asked
(:class:`NeedState`).

Phases are separate methods (pre-prepare, prepare, commit, checkpoint, view change,
catch-up) with explicit inputs, so that they can later be split into the roles of
ScalablePBFT. Legal inputs are checked in one place, :meth:`_admit`, before any handler
runs: wrong instance, views outside the accepted range and slots outside the watermarks
are rejected there, and every rejection is reported as a :class:`Dropped` effect.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from phalanx.core.crypto import NodeCrypto
from phalanx.core.effects import Broadcast, CancelTimer, Dropped, Persist, Send, SetTimer
from phalanx.core.hashing import digest as sha256
from phalanx.core.quorum import Quorums
from phalanx.protocols.pbft.config import PbftConfig
from phalanx.protocols.pbft.messages import (
    Checkpoint,
    Commit,
    CommittedSlot,
    FetchCommitted,
    FetchPayload,
    NewView,
    PayloadData,
    Prepare,
    PrePrepare,
    SlotSummary,
    ViewChange,
)
from phalanx.protocols.pbft.viewchange import NULL_DIGEST, NewViewDecision, decide_new_view

# -- host events (consumed by the host, never by a driver) ---------------------------


class Decided(msgspec.Struct, frozen=True):
    """``payload`` is decided at ``seq``; delivered in seq order without gaps."""

    seq: int
    digest: bytes
    payload: bytes


class StableCheckpoint(msgspec.Struct, frozen=True):
    """Checkpoint ``seq`` became stable: the log below it is gone."""

    seq: int
    digest: bytes


class NeedState(msgspec.Struct, frozen=True):
    """This replica is behind a stable checkpoint and must fetch its snapshot."""

    seq: int
    digest: bytes
    holders: list[int]


class ViewInstalled(msgspec.Struct, frozen=True):
    view: int
    primary: int


HostEvent = Decided | StableCheckpoint | NeedState | ViewInstalled

GENESIS_DIGEST = b""
"""Digest of the checkpoint at seq 0, before anything executed (no proof needed)."""

FUTURE_VIEWS = 2
"""How many views ahead normal-case messages are kept (they may overtake NEW-VIEW)."""
MAX_FETCH = 64
"""Slots asked for or answered in one catch-up round."""
MAX_Q_ENTRIES = 4
"""Pre-prepared digests remembered per slot (each from a different view)."""
MAX_POLL_INTERVAL = 32
"""Most sync ticks between two catch-up polls that keep bringing nothing."""
MAX_BACKOFF_EXPONENT = 4
"""View-change timeouts double per failed view change, up to 16 times the base."""
CHECKPOINTS_PER_REPLICA = 4
"""Unstable checkpoints kept per sender: bounds what a Byzantine replica can make us hold."""


_StableRecord = tuple[int, bytes, list[Checkpoint]]
_SlotRecord = tuple[tuple[bytes, int] | None, list[tuple[bytes, int]], bytes | None]
"""Persisted slot: (P entry, Q entries, committed digest or None)."""


@dataclass(slots=True)
class Slot:
    """What this replica knows about one sequence number."""

    pp_view: int = -1  # view of the pre-prepare accepted for the current view, -1 if none
    digest: bytes = b""
    prepare_votes: dict[int, dict[int, bytes]] = field(default_factory=dict)  # view -> sender -> d
    commit_votes: dict[int, dict[int, bytes]] = field(default_factory=dict)
    prepared_view: int = -1  # view in which this replica sent COMMIT
    committed: bool = False
    committed_digest: bytes = b""
    # P and Q summaries (survive view changes, persisted): highest-view prepared digest, and
    # the latest view in which each digest was pre-prepared here.
    p_entry: tuple[bytes, int] | None = None
    q_entries: dict[bytes, int] = field(default_factory=dict)
    # Catch-up claims: replica -> the digest it says it committed (one per replica, so a
    # Byzantine replica cannot grow this with made-up payloads).
    claims: dict[int, bytes] = field(default_factory=dict)
    echoed: dict[int, int] = field(default_factory=dict)  # peer -> sync tick of last answer


def _digests(slot: Slot) -> set[bytes]:
    return {slot.digest, slot.committed_digest, *slot.q_entries}


def _count(votes: dict[int, bytes], digest: bytes) -> int:
    return sum(1 for d in votes.values() if d == digest)


class PbftInstance:
    """PBFT agreement on payloads for one instance id."""

    def __init__(
        self,
        instance: int,
        replica_id: int,
        quorums: Quorums,
        crypto: NodeCrypto,
        config: PbftConfig,
        validate: Callable[[bytes], bool],
    ) -> None:
        self.instance = instance
        self.me = replica_id
        self.q = quorums
        self.crypto = crypto
        self.config = config
        self.validate = validate
        self.window = 1 if config.single_shot else config.window
        # PBFT's quorums are all strong ones (see core/quorum.py): a slot is prepared with
        # the pre-prepare and strong-1 PREPAREs of backups, committed with strong
        # COMMITs; a checkpoint is stable, a view change decidable, with strong messages.
        self.prepare_quorum = quorums.strong - 1
        self.commit_quorum = quorums.strong

        self.view = 0
        self.in_view_change = False
        self.low = 0  # last stable checkpoint (low watermark)
        self.stable_digest = GENESIS_DIGEST
        self.stable_proof: list[Checkpoint] = []
        self.last_decided = 0
        self.next_seq = 1  # primary only: next slot to propose
        # The primary's PRE-PREPARE does not wait for the disk (its record rides with the
        # prepared record, durable before COMMIT), so a restarted primary may not know
        # every slot it used in its view: in that view it proposes nothing more.
        self.fenced_view = -1
        self.slots: dict[int, Slot] = {}
        self.payloads: dict[bytes, bytes] = {NULL_DIGEST: b""}
        self.wanted_payloads: set[bytes] = set()
        self.checkpoints: dict[int, dict[int, Checkpoint]] = {}  # sender -> seq -> msg
        self.own_checkpoints: dict[int, bytes] = {}
        self.view_changes: dict[int, dict[int, ViewChange]] = {}  # new view -> replica -> vc
        self.last_new_view: NewView | None = None
        self.future_preprepares: dict[tuple[int, int], tuple[int, PrePrepare]] = {}
        self.views_seen: dict[int, int] = {}  # replica -> highest view seen in its messages
        self.state_target: tuple[int, bytes] | None = None  # stable checkpoint to fetch
        # A stable checkpoint above what we executed: adopted (with state transfer) only if
        # normal catch-up makes no progress, so a replica that is merely slow never pays.
        self.pending_stable: tuple[int, bytes, list[Checkpoint]] | None = None
        self.max_seen = 0  # highest seq any message mentioned
        self.max_accepted = 0  # highest seq with an accepted pre-prepare
        self.progressed = False
        self.sync_armed = False
        # Set when catch-up made progress: poll again until a round brings nothing new,
        # so a replica back from a crash converges even if the cluster goes idle.
        self.catching_up = False
        # Last seq of the latest FetchCommitted: once everything up to it is decided and
        # the replica is still behind, the next range is asked for at once (a replica
        # that waited for the sync tick would fall further behind a busy cluster).
        self.fetch_until = 0
        self.sync_ticks = 0
        self.helped: dict[int, int] = {}  # replica behind in views -> sync tick we helped it
        self.poll_interval = 1  # sync ticks between polls while they bring nothing
        self.ticks_to_poll = 0

        self.waiting = False  # the host has work it expects to be ordered
        self.timer_armed = False
        self.failed_view_changes = 0
        self.sync_mark = -1  # last_decided at the previous catch-up tick

        self.out: list[Any] = []  # effects and host events of the current input
        self._t_progress = f"pbft{instance}.progress"
        self._t_sync = f"pbft{instance}.sync"

    # -- public entry points ---------------------------------------------------------

    @property
    def primary(self) -> int:
        return self.q.primary(self.view)

    @property
    def is_primary(self) -> bool:
        return self.primary == self.me and not self.in_view_change

    @property
    def high(self) -> int:
        return self.low + self.window

    def can_propose(self) -> bool:
        inflight = self.next_seq - 1 - self.last_decided
        return (
            self.is_primary
            and self.view != self.fenced_view
            and self.next_seq <= self.high
            and inflight < self.config.max_inflight
            and not (self.config.single_shot and self.next_seq > 1)
        )

    def propose(self, payload: bytes) -> list[Any]:
        """Primary: pre-prepare ``payload`` at the next free slot (caller checked
        :meth:`can_propose`)."""
        seq = self.next_seq
        self.next_seq += 1
        digest = sha256(payload)
        self.payloads[digest] = payload
        pp = PrePrepare(self.instance, self.view, seq, digest, payload)
        # Lazy: the PRE-PREPARE leaves before its record is durable (one fsync less on
        # every slot's critical path). The record is durable before our COMMIT leaves
        # (it is part of the prepared record), and a restarted primary proposes nothing
        # more in the view it recovered (fenced_view). A backup's record stays gating:
        # its Q entry, durable before its PREPARE, is what vouches for the batch in a
        # view change (decide_new_view's f+1 pre-prepared rule) however many crash.
        self._accept_preprepare(seq, self.view, digest, payload, lazy=True)
        self.out.append(Broadcast(pp))
        self._check_prepared(seq, self.view)
        return self._finish()

    def start(self) -> list[Any]:
        """After construction or :meth:`recover`: re-deliver decided slots above the
        stable checkpoint and ask the others what we missed while down."""
        # Durable before any message of this incarnation leaves: a replica killed later
        # restarts from a non-empty store, so it recovers (and fences its view).
        self._persist_view()
        self._deliver()
        if self.state_target is not None:
            seq, digest = self.state_target
            self.out.append(NeedState(seq, digest, [c.replica for c in self.stable_proof]))
        if self.in_view_change:
            self._broadcast_view_change()
        self._ask_for_missing()
        self.catching_up = True
        return self._finish()

    def set_waiting(self, waiting: bool) -> list[Any]:
        """The host has (or no longer has) requests it expects this instance to order."""
        if waiting == self.waiting:
            return []  # nothing changed since the last input's _finish: same timers
        self.waiting = waiting
        return self._finish()

    def on_message(self, src: int, msg: Any) -> list[Any]:
        handler = self._handlers.get(type(msg))
        if handler is None:
            self._drop("unexpected_message", src)
        elif (reason := self._admit(src, msg)) is not None:
            self._drop(reason, src)
        else:
            handler(self, src, msg)
        return self._finish()

    @property
    def progress_timer(self) -> str:
        """The timer whose expiry makes this replica suspect the primary."""
        return self._t_progress

    def extend_progress_timer(self) -> list[Any]:
        """Give the primary one more timeout before suspecting it (the host just passed it
        requests it may never have had)."""
        self._arm_progress_timer(restart=True)
        return self._finish()

    def on_timer(self, name: str) -> list[Any]:
        if name == self._t_progress and self.timer_armed:  # else a stale, cancelled timer
            self.timer_armed = False
            if self.in_view_change:
                self.failed_view_changes += 1
            self._start_view_change(self.view + 1)
        elif name == self._t_sync:
            self._on_sync_tick()
        return self._finish()

    def make_checkpoint(self, seq: int, state_digest: bytes) -> list[Any]:
        """The host executed up to ``seq`` (a checkpoint seq) with this state digest."""
        self.own_checkpoints[seq] = state_digest
        cp = Checkpoint(self.instance, seq, state_digest, self.me)
        cp = msgspec.structs.replace(cp, sig=self.crypto.sign(cp.signed_bytes()))
        self.out.append(Broadcast(cp))
        self._record_checkpoint(cp)
        return self._finish()

    @property
    def repairing(self) -> bool:
        """Fetching a stable checkpoint's state at or below what we executed: our own
        state there diverged from the certified one (see :meth:`_make_stable`), and the
        snapshot replaces it (a roll-back, unlike any other state transfer)."""
        return self.state_target is not None and self.state_target[0] <= self.last_decided

    def checkpoint_proof_valid(self, seq: int, digest: bytes, proof: list[Checkpoint]) -> bool:
        """2f+1 distinct valid signatures on CHECKPOINT(seq, digest) (nothing for seq 0)."""
        if seq == 0:
            return digest == GENESIS_DIGEST
        signers = set()
        for cp in proof:
            if cp.seq != seq or cp.state_digest != digest or cp.instance != self.instance:
                return False
            if cp.replica in signers or not self._checkpoint_valid(cp):
                return False
            signers.add(cp.replica)
        return len(signers) >= self.q.strong

    def state_transferred(self, seq: int, digest: bytes, proof: list[Checkpoint]) -> list[Any]:
        """The host installed the snapshot of the proven stable checkpoint ``seq``
        (checked with :meth:`checkpoint_proof_valid`)."""
        # Advance first: making the checkpoint stable must not ask for this state again.
        if seq > self.last_decided or self.repairing:
            if self.repairing:
                # Back to the certified state: the decided batches after it run again,
                # and the checkpoints we took of the wrong state are worthless.
                self.own_checkpoints.clear()
            self.last_decided = seq
            self.next_seq = max(self.next_seq, seq + 1)
            self.progressed = True
        self.state_target = None
        self.catching_up = True
        if seq > self.low:
            self._make_stable(seq, digest, proof)
        self._deliver()
        if self.max_seen > self.last_decided:
            self._ask_for_missing()  # the slots decided since that checkpoint, now
        return self._finish()

    # -- admission: the one place where illegal inputs are rejected -------------------

    def _admit(self, src: int, msg: Any) -> str | None:
        if not 0 <= src < self.q.n or src == self.me:
            return "unknown_sender"
        if msg.instance != self.instance:
            return "wrong_instance"
        if isinstance(msg, PrePrepare | Prepare | Commit):
            self._note_view(src, msg.view)
            # Even a slot we cannot accept (an older view, beyond the window) tells us we
            # may be behind: catch up on it (polls back off while they bring nothing, so
            # a made-up seq costs little; see _on_sync_tick).
            self.max_seen = max(self.max_seen, msg.seq)
            if msg.view < self.view:
                return "stale_view"
            if msg.view > self.view + FUTURE_VIEWS:
                return "future_view"
            if msg.seq <= self.low:
                return "stale_slot"  # already garbage-collected: a late vote, harmless
            if msg.seq > self.high:
                return "outside_watermarks"
            if isinstance(msg, PrePrepare) and src != self.q.primary(msg.view):
                return "preprepare_not_from_primary"
            if isinstance(msg, Prepare) and src == self.q.primary(msg.view):
                return "prepare_from_primary"
        return None

    # -- normal case -------------------------------------------------------------------

    def _on_preprepare(self, src: int, pp: PrePrepare) -> None:
        if pp.view > self.view or self.in_view_change:
            if len(self.future_preprepares) < self.window * FUTURE_VIEWS:
                self.future_preprepares[(pp.view, pp.seq)] = (src, pp)
            return
        slot = self._slot(pp.seq)
        if slot.pp_view == pp.view:
            self._drop("equivocation" if slot.digest != pp.digest else "duplicate", src)
            return
        if not self._digest_matches(pp):
            self._drop("bad_digest", src)
            return
        if not self.validate(pp.payload):
            self._drop("invalid_payload", src)
            return
        self.payloads[pp.digest] = pp.payload
        self._accept_preprepare(pp.seq, pp.view, pp.digest, pp.payload)
        self.out.append(Broadcast(Prepare(self.instance, pp.view, pp.seq, pp.digest)))
        self._check_prepared(pp.seq, pp.view)

    def _digest_matches(self, pp: PrePrepare) -> bool:
        return sha256(pp.payload) == pp.digest

    def _accept_preprepare(
        self, seq: int, view: int, digest: bytes, payload: bytes | None, lazy: bool = False
    ) -> None:
        slot = self._slot(seq)
        slot.pp_view, slot.digest = view, digest
        self.max_accepted = max(self.max_accepted, seq)
        if self.me != self.q.primary(view):
            slot.prepare_votes.setdefault(view, {})[self.me] = digest
        if slot.q_entries.get(digest, -1) < view:
            slot.q_entries[digest] = view
            if len(slot.q_entries) > MAX_Q_ENTRIES:
                # Keep the latest views: a committed digest is re-proposed in every later
                # view, so its entry is among the newest (and VIEW-CHANGEs stay bounded).
                oldest = min(slot.q_entries, key=lambda d: (slot.q_entries[d], d))
                del slot.q_entries[oldest]
            self._persist_slot(seq, slot, lazy)
        if payload is not None and digest != NULL_DIGEST:
            self.out.append(Persist(self._key(b"d", digest), payload, lazy))

    def _on_prepare(self, src: int, msg: Prepare) -> None:
        if self._vote(msg.seq, self._slot(msg.seq).prepare_votes, msg.view, src, msg.digest):
            self._check_prepared(msg.seq, msg.view)

    def _on_commit(self, src: int, msg: Commit) -> None:
        if self._vote(msg.seq, self._slot(msg.seq).commit_votes, msg.view, src, msg.digest):
            self._check_committed(msg.seq, msg.view)

    def _vote(
        self, seq: int, votes: dict[int, dict[int, bytes]], view: int, src: int, digest: bytes
    ) -> bool:
        by_sender = votes.setdefault(view, {})
        previous = by_sender.get(src)
        if previous is None:
            by_sender[src] = digest
            return True
        if previous != digest:
            # The first vote counts; a different second vote is evidence, not a crash.
            self._drop("equivocation", src)
            return False
        self._drop("duplicate_vote", src)
        # A replica repeats a vote only when it is stuck on the slot (see _resend_votes):
        # answer with our own votes, which it may have lost.
        self._send_own_votes(seq, view, src)
        return False

    def _own_votes(self, seq: int, view: int) -> list[Any]:
        slot = self.slots.get(seq)
        if slot is None or slot.pp_view != view:
            return []
        votes: list[Any] = []
        if self.me == self.q.primary(view):
            payload = self.payloads.get(slot.digest)
            if payload is not None:
                votes.append(PrePrepare(self.instance, view, seq, slot.digest, payload))
        else:
            votes.append(Prepare(self.instance, view, seq, slot.digest))
        if slot.prepared_view == view:
            votes.append(Commit(self.instance, view, seq, slot.digest))
        return votes

    def _send_own_votes(self, seq: int, view: int, dest: int) -> None:
        slot = self.slots.get(seq)
        # At most one answer per peer and slot per sync tick, or two replicas would keep
        # answering each other's answers.
        if slot is None or slot.echoed.get(dest) == self.sync_ticks:
            return
        slot.echoed[dest] = self.sync_ticks
        for vote in self._own_votes(seq, view):
            if not isinstance(vote, PrePrepare):  # the stuck replica has the pre-prepare
                self.out.append(Send(dest, vote))

    def _resend_votes(self) -> None:
        """Stalled on undecided slots of this view: repeat our votes (messages may have
        been lost, and peers that already decided only answer repeated votes)."""
        if self.in_view_change:
            return
        first = self.last_decided + 1
        for seq in range(first, min(self.max_accepted, first + MAX_FETCH - 1) + 1):
            slot = self.slots.get(seq)
            if slot is not None and not slot.committed:
                for vote in self._own_votes(seq, self.view):
                    self.out.append(Broadcast(vote))

    def _check_prepared(self, seq: int, view: int) -> None:
        slot = self.slots.get(seq)
        if slot is None or slot.pp_view != view or view != self.view or self.in_view_change:
            return
        if slot.prepared_view == view:
            return
        if _count(slot.prepare_votes.get(view, {}), slot.digest) < self.prepare_quorum:
            return
        slot.prepared_view = view
        if slot.p_entry is None or slot.p_entry[1] < view:
            slot.p_entry = (slot.digest, view)
            self._persist_slot(seq, slot)
        slot.commit_votes.setdefault(view, {})[self.me] = slot.digest
        self.out.append(Broadcast(Commit(self.instance, view, seq, slot.digest)))
        self._check_committed(seq, view)

    def _check_committed(self, seq: int, view: int) -> None:
        slot = self.slots.get(seq)
        if slot is None or slot.committed or slot.prepared_view != view:
            return
        if _count(slot.commit_votes.get(view, {}), slot.digest) < self.commit_quorum:
            return
        self._mark_committed(seq, slot, slot.digest)

    def _mark_committed(self, seq: int, slot: Slot, digest: bytes) -> None:
        slot.committed, slot.committed_digest = True, digest
        # Lazy: replies need not wait for the commit mark. Safety rests on the prepared
        # records (written before COMMIT is sent); a replica that loses the mark in a
        # crash learns the decision again from f+1 peers.
        self._persist_slot(seq, slot, lazy=True)
        self._deliver()

    def _deliver(self) -> None:
        """Hand decided payloads to the host in seq order, fetching missing payloads."""
        while self.state_target is None:
            seq = self.last_decided + 1
            slot = self.slots.get(seq)
            if slot is None or not slot.committed:
                return
            payload = self.payloads.get(slot.committed_digest)
            if payload is None:
                self._want_payload(slot.committed_digest)
                return
            self.last_decided = seq
            self.failed_view_changes = 0
            self.progressed = True
            self.out.append(Decided(seq, slot.committed_digest, payload))

    # -- checkpoints and garbage collection -------------------------------------------

    def _on_checkpoint(self, src: int, cp: Checkpoint) -> None:
        if cp.seq <= self.low:
            return
        if not self._checkpoint_valid(cp):
            self._drop("bad_signature", src)
            return
        self._record_checkpoint(cp)

    def _checkpoint_valid(self, cp: Checkpoint) -> bool:
        return 0 <= cp.replica < self.q.n and self._signed_by(cp.replica, cp)

    def _signed_by(self, replica: int, msg: Checkpoint | ViewChange | NewView) -> bool:
        """Is ``msg`` (a CHECKPOINT, VIEW-CHANGE or NEW-VIEW) signed by ``replica``?"""
        return self.crypto.verify(replica, msg.signed_bytes(), msg.sig)

    def _record_checkpoint(self, cp: Checkpoint) -> None:
        mine = self.checkpoints.setdefault(cp.replica, {})
        mine[cp.seq] = cp
        while len(mine) > CHECKPOINTS_PER_REPLICA:
            # Evict first what no other replica vouches for: a Byzantine replica's made-up
            # far-future checkpoints must not push out its real one that a lagging
            # replica needs for a 2f+1 proof (found by the fuzzer, seed 105200).
            del mine[min(mine, key=lambda s: (self._vouched(cp.replica, mine[s]), s))]
        proof = [
            c
            for by_seq in self.checkpoints.values()
            if (c := by_seq.get(cp.seq)) is not None and c.state_digest == cp.state_digest
        ]
        if len(proof) < self.q.strong:
            return
        proof.sort(key=lambda c: c.replica)
        if cp.seq <= self.last_decided:
            self._make_stable(cp.seq, cp.state_digest, proof)
        elif self.pending_stable is None or self.pending_stable[0] < cp.seq:
            self.pending_stable = (cp.seq, cp.state_digest, proof)

    def _vouched(self, sender: int, cp: Checkpoint) -> bool:
        """Does another replica hold a checkpoint with the same seq and digest?"""
        return any(
            r != sender and (c := by_seq.get(cp.seq)) is not None
            and c.state_digest == cp.state_digest
            for r, by_seq in self.checkpoints.items()
        )

    def _make_stable(self, seq: int, digest: bytes, proof: list[Checkpoint]) -> None:
        if self.pending_stable is not None and self.pending_stable[0] <= seq:
            self.pending_stable = None
        if seq <= self.low:
            return
        own = self.own_checkpoints.get(seq)
        diverged = own is not None and own != digest
        if diverged:
            # 2f+1 replicas signed another state for this seq than ours: ours went wrong
            # (a corrupted store, a nondeterministic application). Counted as an alarm,
            # and repaired: fetch the certified state and run the batches after it again.
            self.out.append(Dropped("state_divergence", self.me))
        self.low, self.stable_digest, self.stable_proof = seq, digest, proof
        self.out.append(
            Persist(self._key(b"s"), msgspec.msgpack.encode((seq, digest, proof)), lazy=True)
        )
        self._collect_garbage()
        self.out.append(StableCheckpoint(seq, digest))
        if seq > self.last_decided or diverged:
            self.state_target = (seq, digest)
            self.next_seq = max(self.next_seq, seq + 1)
            self.out.append(NeedState(seq, digest, [c.replica for c in proof]))

    def _collect_garbage(self) -> None:
        dead: set[bytes] = set()
        for seq in [s for s in self.slots if s <= self.low]:
            slot = self.slots.pop(seq)
            self.out.append(Persist(self._key(b"l", seq.to_bytes(8, "big")), None, lazy=True))
            dead.update(_digests(slot))
        # Payloads are stored by digest, and one payload can sit in several slots (a batch
        # proposed again after a view change): keep those a live slot still refers to.
        for slot in self.slots.values():
            dead.difference_update(_digests(slot))
        for digest in dead - {b"", NULL_DIGEST}:
            if self.payloads.pop(digest, None) is not None:
                self.out.append(Persist(self._key(b"d", digest), None, lazy=True))
        self.wanted_payloads -= dead
        for by_seq in self.checkpoints.values():
            for seq in [s for s in by_seq if s <= self.low]:
                del by_seq[seq]
        for seq in [s for s in self.own_checkpoints if s <= self.low]:
            del self.own_checkpoints[seq]
        for key in [k for k in self.future_preprepares if k[1] <= self.low]:
            del self.future_preprepares[key]

    # -- view change -------------------------------------------------------------------

    def _start_view_change(self, new_view: int) -> None:
        if new_view <= self.view:
            return
        self.view, self.in_view_change = new_view, True
        for v in [v for v in self.view_changes if v < new_view]:
            del self.view_changes[v]
        if self.timer_armed:
            self.timer_armed = False
            self.out.append(CancelTimer(self._t_progress))
        self._persist_view()
        self._broadcast_view_change()

    def _broadcast_view_change(self) -> None:
        vc = self._view_change_for(self.view)
        self.view_changes.setdefault(self.view, {})[self.me] = vc
        self.out.append(Broadcast(vc))
        self._try_new_view()

    def _view_change_for(self, new_view: int) -> ViewChange:
        """Our signed VIEW-CHANGE to ``new_view``: stable checkpoint, P and Q sets."""
        prepared, preprepared = [], []
        for seq in sorted(self.slots):
            slot = self.slots[seq]
            if slot.p_entry is not None:
                prepared.append(SlotSummary(seq, slot.p_entry[0], slot.p_entry[1]))
            for digest, view in sorted(slot.q_entries.items()):
                preprepared.append(SlotSummary(seq, digest, view))
        vc = ViewChange(
            self.instance, new_view, self.me, self.low, self.stable_digest,
            self.stable_proof, prepared, preprepared,
        )
        return msgspec.structs.replace(vc, sig=self.crypto.sign(vc.signed_bytes()))

    def _on_view_change(self, src: int, vc: ViewChange) -> None:
        if vc.new_view < self.view or (vc.new_view == self.view and not self.in_view_change):
            if vc.replica == src:
                self._help_behind(src, vc.new_view)
            return
        if vc.new_view > self.view + 64 * self.q.n:
            self._drop("future_view", src)
            return
        by_replica = self.view_changes.setdefault(vc.new_view, {})
        if vc.replica in by_replica:
            return
        if not self._view_change_valid(vc):
            self._drop("bad_view_change", src)
            return
        if vc.new_view > self.view:
            # One VIEW-CHANGE per replica for the views ahead of us (its latest): that is
            # all the join rule needs, and it bounds what a Byzantine replica can park.
            for v, older in list(self.view_changes.items()):
                if self.view < v < vc.new_view:
                    older.pop(vc.replica, None)
            if any(v > vc.new_view and vc.replica in rs for v, rs in self.view_changes.items()):
                return
        by_replica[vc.replica] = vc
        self._join_higher_views()
        if vc.new_view == self.view:
            self._try_new_view()

    def _help_behind(self, src: int, view: int) -> None:
        """``src`` is still changing to ``view``, a view we have left: give it what gets
        it moving. Without this, correct replicas can wait for each other forever: one
        that lost the VIEW-CHANGEs it had collected (a crash) waits for a quorum for
        ``view`` that nobody sends any more, since the replicas that moved on repeat only
        their latest VIEW-CHANGE, and one replica ahead is not the f+1 that make it join
        (found by the fuzzer: n=4, seed 263 of the splice_new_view strategy, where
        the Byzantine replica, primary of the view they waited in, stayed silent)."""
        if self.helped.get(src) == self.sync_ticks:
            return  # once per sync tick: a replica stuck behind repeats its VIEW-CHANGE
        self.helped[src] = self.sync_ticks
        nv = self.last_new_view
        if nv is not None and nv.view >= view:
            self.out.append(Send(src, nv))  # a view we installed since: it can install it
        elif self.in_view_change:
            # We moved past ``view`` without installing it: our VIEW-CHANGE for it is
            # true (we hold no prepared entry of a later view), and counts towards the
            # quorum that starts its timer there.
            self.out.append(Send(src, self._view_change_for(view)))

    def _join_higher_views(self) -> None:
        """f+1 replicas moving past our view include a correct one: follow them to the
        smallest such view, even before our own timer fires (PBFT liveness rule)."""
        ahead = {
            r: v
            for v, by_replica in self.view_changes.items()
            if v > self.view
            for r in by_replica
        }
        if len(ahead) >= self.q.weak:
            target = sorted(ahead.values())[-self.q.weak]
            self._start_view_change(max(target, self.view + 1))

    def _view_change_signed(self, vc: ViewChange) -> bool:
        return self._signed_by(vc.replica, vc)

    def _view_change_valid(self, vc: ViewChange) -> bool:
        if not 0 <= vc.replica < self.q.n:
            return False
        if not self._view_change_signed(vc):
            return False
        if not self.checkpoint_proof_valid(
            vc.checkpoint_seq, vc.checkpoint_digest, vc.checkpoint_proof
        ):
            return False
        high = vc.checkpoint_seq + self.window
        seen: set[int] = set()
        # Entries of views below the new one, never negative: "not pre-prepared" is -1
        # inside a replica, so a claim at view -1 would count every replica as vouching
        # for it (A2) and put a made-up digest in an empty slot. The wire decoder refuses
        # negative views already; this holds for any driver.
        for e in vc.prepared:
            if e.seq in seen or not vc.checkpoint_seq < e.seq <= high or not (
                0 <= e.view < vc.new_view
            ):
                return False
            seen.add(e.seq)
        # Bounded and duplicate-free: a padded VIEW-CHANGE would make NEW-VIEW too large
        # to send, and stall every view change.
        per_slot: dict[int, set[bytes]] = {}
        for e in vc.preprepared:
            if not vc.checkpoint_seq < e.seq <= high or not 0 <= e.view < vc.new_view:
                return False
            digests = per_slot.setdefault(e.seq, set())
            if e.digest in digests or len(digests) >= MAX_Q_ENTRIES:
                return False
            digests.add(e.digest)
        return len(vc.checkpoint_proof) <= self.q.n

    def _try_new_view(self) -> None:
        if self.q.primary(self.view) != self.me or not self.in_view_change:
            return
        vcs = self.view_changes.get(self.view, {})
        if self.me not in vcs:
            return
        # The smallest set that decides (ours first): NEW-VIEW carries every VIEW-CHANGE
        # in it, so a bigger set only makes it bigger.
        ordered = [vcs[self.me]] + [vcs[r] for r in sorted(vcs) if r != self.me]
        for size in range(self.q.strong, len(ordered) + 1):
            chosen = ordered[:size]
            decision = decide_new_view(chosen, self.q)
            if decision is not None:
                break
        else:
            return
        missing = [d for d in decision.slots.values() if d not in self.payloads]
        if missing:
            for digest in missing:
                self._want_payload(digest)
            return
        nv = NewView(self.instance, self.view, chosen)
        nv = msgspec.structs.replace(nv, sig=self.crypto.sign(nv.signed_bytes()))
        self.out.append(Broadcast(nv))
        self._install_new_view(nv, decision)

    def _on_new_view(self, src: int, nv: NewView) -> None:
        if nv.view < self.view or (nv.view == self.view and not self.in_view_change):
            return
        refused = self._new_view_refused(src, nv)
        if refused is not None:
            self._drop(refused, src)
            return
        replicas = [vc.replica for vc in nv.view_changes]
        if len(set(replicas)) != len(replicas) or any(
            vc.new_view != nv.view
            or vc.instance != self.instance
            or not self._view_change_valid(vc)
            for vc in nv.view_changes
        ):
            self._drop("bad_new_view", src)
            return
        decision = decide_new_view(nv.view_changes, self.q)
        if decision is None:
            self._drop("bad_new_view", src)
            return
        self._install_new_view(nv, decision)

    def _new_view_refused(self, src: int, nv: NewView) -> str | None:
        """Why a NEW-VIEW from ``src`` is not the new primary's (None if it is). Its
        signature, not the link it came on, says the primary chose this quorum of
        VIEW-CHANGEs: so a replica that missed it may take it from anyone (e.g. in
        catch-up answers), but from nobody a NEW-VIEW assembled from another quorum of
        the same VIEW-CHANGEs."""
        if not self._signed_by(self.q.primary(nv.view), nv):
            return "bad_new_view_signature"
        return None

    def _install_new_view(self, nv: NewView, decision: NewViewDecision) -> None:
        self.view, self.in_view_change = nv.view, False
        self.last_new_view = nv
        self._persist_view()
        self.out.append(Persist(self._key(b"n"), msgspec.msgpack.encode(nv)))
        for v in [v for v in self.view_changes if v <= nv.view]:
            del self.view_changes[v]
        if decision.checkpoint_seq > self.low:
            source = decision.checkpoint_source
            self._make_stable(
                source.checkpoint_seq, source.checkpoint_digest, source.checkpoint_proof
            )
        primary = self.q.primary(nv.view)
        top = max(decision.slots, default=self.low)
        for seq, digest in decision.slots.items():
            if seq <= self.low:
                continue
            slot = self._slot(seq)
            if slot.committed and slot.committed_digest != digest:
                self._drop("new_view_conflicts_with_commit", self.me)  # impossible if f holds
            slot.pp_view, slot.digest = -1, b""
            self._accept_preprepare(seq, nv.view, digest, None)
            if digest not in self.payloads:
                self._want_payload(digest)
            if self.me != primary:
                self.out.append(Broadcast(Prepare(self.instance, nv.view, seq, digest)))
            self._check_prepared(seq, nv.view)
        self.next_seq = max(top, self.low, self.last_decided) + 1
        # Slots pre-prepared in the old view beyond what the new view kept are void: they
        # must not keep our progress timer running (we would time out alone).
        self.max_accepted = max(top, self.low, self.last_decided)
        self.out.append(ViewInstalled(nv.view, primary))
        self._arm_progress_timer(restart=True)
        for key in sorted(k for k in self.future_preprepares if k[0] == nv.view):
            src, pp = self.future_preprepares.pop(key)
            if self.low < pp.seq <= self.high:
                self._on_preprepare(src, pp)
        for key in [k for k in self.future_preprepares if k[0] < nv.view]:
            del self.future_preprepares[key]

    # -- catching up: missing payloads, committed slots, views -------------------------

    def _want_payload(self, digest: bytes) -> None:
        if digest not in self.wanted_payloads and len(self.wanted_payloads) < self.window:
            self.wanted_payloads.add(digest)
            self.out.append(Broadcast(FetchPayload(self.instance, digest)))

    def _on_fetch_payload(self, src: int, msg: FetchPayload) -> None:
        payload = self.payloads.get(msg.digest)
        if payload is not None and msg.digest != NULL_DIGEST:
            self.out.append(Send(src, PayloadData(self.instance, payload)))

    def _on_payload(self, src: int, msg: PayloadData) -> None:
        digest = sha256(msg.payload)
        if digest not in self.wanted_payloads:
            return
        self.wanted_payloads.discard(digest)
        self.payloads[digest] = msg.payload
        self.out.append(Persist(self._key(b"d", digest), msg.payload, lazy=True))
        self._deliver()
        self._try_new_view()

    def _on_fetch_committed(self, src: int, msg: FetchCommitted) -> None:
        # Our stable checkpoint's proof, always: a replica that restarted before its own
        # low watermark moved may be stuck at the edge of its window, unable to accept
        # the very slots it asks for until it adopts a newer checkpoint.
        for cp in self.stable_proof:
            self.out.append(Send(src, cp))
        if self.last_new_view is not None:
            self.out.append(Send(src, self.last_new_view))
        own_view_change = self.view_changes.get(self.view, {}).get(self.me)
        if self.in_view_change and own_view_change is not None:
            # Lets a replica that was down join the ongoing view change at once.
            self.out.append(Send(src, own_view_change))
        first = max(msg.first, self.low + 1)
        last = min(msg.last, self.last_decided, first + MAX_FETCH - 1)
        for seq in range(first, last + 1):
            slot = self.slots.get(seq)
            if slot is not None and slot.committed:
                payload = self.payloads.get(slot.committed_digest)
                if payload is not None:
                    self.out.append(
                        Send(src, CommittedSlot(self.instance, seq, slot.committed_digest, payload))
                    )

    def _on_committed_slot(self, src: int, msg: CommittedSlot) -> None:
        if msg.seq <= self.last_decided or not self.low < msg.seq <= self.high:
            return
        if sha256(msg.payload) != msg.digest:
            self._drop("bad_digest", src)
            return
        slot = self._slot(msg.seq)
        if slot.committed:
            # Decided but its payload never came (e.g. lost with a crash): take it now.
            if msg.digest == slot.committed_digest and msg.digest not in self.payloads:
                self._store_payload(msg.digest, msg.payload)
                self._deliver()
            return
        slot.claims[src] = msg.digest
        # f+1 replicas claiming the same commit include a correct one.
        if _count(slot.claims, msg.digest) >= self.q.weak:
            self.catching_up = True
            self._store_payload(msg.digest, msg.payload)
            self._mark_committed(msg.seq, slot, msg.digest)
            if self.last_decided >= self.fetch_until and self.max_seen > self.last_decided:
                self._ask_for_missing()  # the range is in: pipeline the next one

    def _store_payload(self, digest: bytes, payload: bytes) -> None:
        self.payloads[digest] = payload
        self.wanted_payloads.discard(digest)
        self.out.append(Persist(self._key(b"d", digest), payload, lazy=True))

    def _ask_for_missing(self) -> None:
        first = self.last_decided + 1
        self.fetch_until = first + MAX_FETCH - 1
        self.out.append(Broadcast(FetchCommitted(self.instance, first, self.fetch_until)))
        self.sync_mark = self.last_decided

    def _arm_sync_timer(self) -> None:
        if not self.sync_armed:
            self.sync_armed = True
            self.out.append(SetTimer(self._t_sync, self.config.view_change_timeout / 2))

    def _needs_sync(self) -> bool:
        return (
            self.in_view_change
            or self.catching_up
            or self.max_seen > self.last_decided
            or self.pending_stable is not None
            or self.state_target is not None
            or bool(self.wanted_payloads)
        )

    def _on_sync_tick(self) -> None:
        """Runs every half timeout while this replica knows of slots it has not decided."""
        self.sync_armed = False
        self.sync_ticks += 1
        if self.in_view_change:
            # VIEW-CHANGEs may have been lost (or sent while a peer was down): repeat ours.
            own = self.view_changes.get(self.view, {}).get(self.me)
            if own is not None:
                self.out.append(Broadcast(own))
        stalled = self.last_decided == self.sync_mark
        if not stalled:
            self.poll_interval, self.ticks_to_poll = 1, 0
        target = self.state_target
        if self.pending_stable is not None and (
            stalled or self.pending_stable[0] <= self.last_decided
        ):
            self._make_stable(*self.pending_stable)  # asks for a new target's state itself
        for digest in self.wanted_payloads:
            self.out.append(Broadcast(FetchPayload(self.instance, digest)))
        if self.state_target is not None and self.state_target == target:
            seq, digest = self.state_target  # still fetching it: ask again
            self.out.append(NeedState(seq, digest, [c.replica for c in self.stable_proof]))
        elif (stalled and self.max_seen > self.last_decided) or self.catching_up:
            if self.ticks_to_poll > 0:
                self.ticks_to_poll -= 1
            else:
                self.catching_up = False
                self._ask_for_missing()
                if stalled:
                    self._resend_votes()
                    # Fruitless polls space out (a made-up seq costs ever less), but never
                    # stop: the slot may simply not be decided anywhere yet.
                    self.ticks_to_poll = self.poll_interval
                    self.poll_interval = min(2 * self.poll_interval, MAX_POLL_INTERVAL)
        self.sync_mark = self.last_decided

    def _note_view(self, src: int, view: int) -> None:
        """A replica that missed a NEW-VIEW (e.g. while down) sees f+1 others in a later
        view: it asks them for their NEW-VIEW instead of waiting for a timeout."""
        if view <= self.view or self.views_seen.get(src, -1) >= view:
            return
        self.views_seen[src] = view
        if sum(1 for v in self.views_seen.values() if v > self.view) >= self.q.weak:
            self.views_seen.clear()
            self._ask_for_missing()  # the answers carry each replica's latest NEW-VIEW

    # -- timers ------------------------------------------------------------------------

    def _has_pending_work(self) -> bool:
        """Should the progress timer run? A backup suspects the primary when known work
        does not progress, and the primary when its own proposals do not commit (it never
        suspects itself for requests it has yet to propose). During a view change the
        timer (which moves on to the next view) runs only once 2f+1 replicas are in the
        same view change: a replica that timed out alone waits for the others instead of
        racing ahead into views nobody else will join (PBFT's liveness rule)."""
        if self.in_view_change:
            return len(self.view_changes.get(self.view, {})) >= self.q.strong
        if self.q.n == 1:
            return False  # nobody to suspect
        if self.primary == self.me:
            # The primary does not suspect itself for requests it has yet to propose, but
            # proposals of its own that do not commit mean this view cannot progress.
            return self.max_accepted > self.last_decided
        return self.waiting or self.max_accepted > self.last_decided

    def _arm_progress_timer(self, restart: bool = False) -> None:
        if restart or not self.timer_armed:
            backoff = 2 ** min(self.failed_view_changes, MAX_BACKOFF_EXPONENT)
            self.out.append(SetTimer(self._t_progress, self.config.view_change_timeout * backoff))
            self.timer_armed = True

    def _finish(self) -> list[Any]:
        """End of one input: keep the progress timer armed exactly while work is pending."""
        progressed, self.progressed = self.progressed, False
        if self._needs_sync():
            self._arm_sync_timer()
        if self._has_pending_work():
            self._arm_progress_timer(restart=progressed and not self.in_view_change)
        elif self.timer_armed:
            self.timer_armed = False
            self.out.append(CancelTimer(self._t_progress))
        out, self.out = self.out, []
        return out

    # -- persistence -------------------------------------------------------------------

    def _key(self, kind: bytes, suffix: bytes = b"") -> bytes:
        return b"I" + self.instance.to_bytes(4, "big") + kind + suffix

    def _persist_view(self) -> None:
        self.out.append(
            Persist(self._key(b"v"), msgspec.msgpack.encode((self.view, self.in_view_change)))
        )

    def _persist_slot(self, seq: int, slot: Slot, lazy: bool = False) -> None:
        record = (
            slot.p_entry,
            sorted(slot.q_entries.items()),
            slot.committed_digest if slot.committed else None,
        )
        self.out.append(
            Persist(
                self._key(b"l", seq.to_bytes(8, "big")), msgspec.msgpack.encode(record), lazy
            )
        )

    def recover(
        self, records: Iterable[tuple[bytes, bytes]], state_seq: int | None = None
    ) -> None:
        """Rebuild from this instance's persisted records (other keys are ignored).

        ``state_seq`` is the seq the host's restored state reflects (its snapshot); by
        default the stable checkpoint. A replica can crash after adopting a stable
        checkpoint but before its state arrived by state transfer: then the state is
        older than the checkpoint, the log below it is gone, and the transfer resumes."""
        prefix = self._key(b"")
        for key, value in records:
            if not key.startswith(prefix):
                continue
            kind, rest = key[len(prefix) : len(prefix) + 1], key[len(prefix) + 1 :]
            if kind == b"v":
                self.view, self.in_view_change = msgspec.msgpack.decode(value)
            elif kind == b"s":
                seq, digest, proof = msgspec.msgpack.decode(value, type=_StableRecord)
                self.low, self.stable_digest, self.stable_proof = seq, digest, proof
            elif kind == b"n":
                self.last_new_view = msgspec.msgpack.decode(value, type=NewView)
            elif kind == b"d":
                self.payloads[rest] = value
            elif kind == b"l":
                p_entry, q_entries, committed = msgspec.msgpack.decode(value, type=_SlotRecord)
                slot = self._slot(int.from_bytes(rest, "big"))
                slot.p_entry, slot.q_entries = p_entry, dict(q_entries)
                if committed is not None:
                    slot.committed, slot.committed_digest = True, committed
        self.last_decided = self.low if state_seq is None else state_seq
        if self.last_decided < self.low:
            self.state_target = (self.low, self.stable_digest)
        # next_seq is left alone: a restarted primary proposes nothing more in the view it
        # recovered (fenced below), and installing a later view sets it.
        for seq in [s for s in self.slots if s <= self.low]:
            del self.slots[seq]
        # Re-accept our own pre-prepares of the current view so that we never accept a
        # different one for the same slot after a restart (no equivocation by amnesia).
        for seq, slot in self.slots.items():
            self.max_seen = max(self.max_seen, seq)
            for digest, view in slot.q_entries.items():
                if view == self.view:
                    slot.pp_view, slot.digest = view, digest
                    self.max_accepted = max(self.max_accepted, seq)
                    if self.me != self.q.primary(view):
                        # Our PREPARE may be out (the record was durable before it
                        # left): it counts, as it did before the crash.
                        slot.prepare_votes.setdefault(view, {})[self.me] = digest
            if (
                slot.p_entry is not None
                and slot.p_entry == (slot.digest, self.view)
                and not self.in_view_change
            ):
                # Prepared in this view (durably): our COMMIT may have been sent, so it is
                # ours to repeat. A slot whose commit marks the whole cluster lost (they
                # are lazy) decides again this way, even with the primary fenced.
                slot.prepared_view = self.view
                slot.commit_votes.setdefault(self.view, {})[self.me] = slot.digest
        if self.q.primary(self.view) == self.me and not self.in_view_change:
            # PRE-PREPAREs sent just before the crash may not be on disk: proposing again
            # in this view could reuse their slots for other batches (equivocation by
            # amnesia). The backups move to the next view instead. Recovered in a view
            # change, it cannot have proposed in the new view: installing a view is
            # durable before any message of that view leaves. (A store with no records
            # at all cannot hide a proposal: start() writes the view durably first.)
            self.fenced_view = self.view

    # -- helpers -----------------------------------------------------------------------

    def _slot(self, seq: int) -> Slot:
        slot = self.slots.get(seq)
        if slot is None:
            slot = self.slots[seq] = Slot()
            if seq > self.max_seen:
                self.max_seen = seq
        return slot

    def _drop(self, reason: str, src: int) -> None:
        self.out.append(Dropped(reason, src))

    _handlers: dict[type, Callable[[PbftInstance, int, Any], None]] = {
        PrePrepare: _on_preprepare,
        Prepare: _on_prepare,
        Commit: _on_commit,
        Checkpoint: _on_checkpoint,
        ViewChange: _on_view_change,
        NewView: _on_new_view,
        FetchPayload: _on_fetch_payload,
        PayloadData: _on_payload,
        FetchCommitted: _on_fetch_committed,
        CommittedSlot: _on_committed_slot,
    }
