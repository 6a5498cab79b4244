"""Targeted PBFT attacks: what a Byzantine replica that knows the view-change rules does.

Random messages rarely line up 2f+1 forged claims for one future view, or a commit that
only one correct replica saw; these two strategies aim at exactly those corners. They
sign only with Byzantine keys, so correct PBFT must shrug them off (the fuzzer's sweeps
check that), while a core that skips a check is caught quickly (the planted-bug test).

- :class:`ForgeNewView` (``forge_view``): jumps ahead to the next view it would lead and
  sends a NEW-VIEW whose 2f+1 VIEW-CHANGEs it made up in the other replicas' names
  (signed with its own key, since it holds no other): they claim that a slot the
  cluster already committed was prepared with a different batch. A replica that checks
  VIEW-CHANGE signatures drops the NEW-VIEW; one that does not re-proposes the slot.
- :class:`HideCommit` (``hide_commit``): a backup that gives every backup the PREPARE and
  COMMIT they need but never votes to the primary, so that while another correct backup
  is away (crashed, cut off, already changing view) one correct replica can commit a slot
  that no other correct replica prepared. It keeps quiet about that commit (no
  CHECKPOINT, no CommittedSlot claim), lies in its own VIEW-CHANGE (nothing prepared),
  and when it leads the next view it picks the 2f VIEW-CHANGEs that omit that slot —
  real, signed ones — and proposes the null request in its place. With a commit
  quorum of 2f+1 the one replica cannot have committed alone (2f+1 commits need f+1
  correct replicas that prepared, and every 2f+1 VIEW-CHANGEs include one of them).
- :class:`SpliceNewView` (``splice_new_view``): a backup that, once the new primary's
  NEW-VIEW is out, picks another quorum of the same genuine, signed VIEW-CHANGEs (and
  its own) whose decision differs in some slot, and hands that NEW-VIEW to replicas still
  in an older view — directly and in its answers to their catch-up requests — with its
  PREPARE for the slot's other digest. A replica that accepts a NEW-VIEW it cannot tell
  came from the primary installs another O set than the others; two correct replicas
  then prepare different digests in one view and slot, and no later view change can
  decide that slot (the cluster changes view forever). The new primary's signature on
  NEW-VIEW stops it.
"""

from __future__ import annotations

import itertools
import random
from typing import Any

import msgspec

from phalanx.byzantine.behaviours import ActionBehaviour, Log, Switches
from phalanx.core.hashing import digest as sha256
from phalanx.core.messages import decode_batch, encode_batch
from phalanx.core.quorum import Quorums
from phalanx.protocols.pbft.instance import GENESIS_DIGEST, MAX_Q_ENTRIES, PbftInstance
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
from phalanx.protocols.pbft.viewchange import NULL_DIGEST, decide_new_view
from phalanx.sim.simulator import NodeId, Simulation

_Checkpoint = tuple[int, bytes, list[Checkpoint]]
MAX_CHECKPOINTS = 4
"""Stable checkpoints (with proofs) the commit-hiding replica remembers."""
MAX_SPLICES = 4
"""Spliced NEW-VIEWs the splicing replica keeps handing out (the latest views)."""
LAG_S = 0.5
"""Simulated seconds of silence after which the splicing replica deems a replica lagging
(two of the fuzzer's view-change timeouts)."""


def _instance(sim: Simulation, replica: int) -> PbftInstance | None:
    """The (honest) PBFT instance of Byzantine ``replica``'s own core."""
    core = sim.replica(replica)
    return getattr(core, "instance", None)


def _in_window(vc: ViewChange, window: int) -> bool:
    """Are ``vc``'s P and Q entries in the window above its checkpoint, at views below the
    new one, as correct replicas require? (decide_new_view walks every slot up to the
    highest entry: a colluder's entry at a far slot would keep it walking for good.)"""
    high = vc.checkpoint_seq + window
    return all(
        vc.checkpoint_seq < e.seq <= high and 0 <= e.view < vc.new_view
        for e in (*vc.prepared, *vc.preprepared)
    )


def _genuine(sim: Simulation, me: int, src: int, vc: ViewChange) -> bool:
    """A VIEW-CHANGE its sender signed itself and that correct replicas accept (only
    those can go into a NEW-VIEW that replicas checking signatures accept)."""
    inst = _instance(sim, me)
    return (
        inst is not None
        and vc.replica == src != me
        and 0 <= vc.new_view < 1 << 32
        and _in_window(vc, inst.window)
        and sim.byzantine_crypto(me).verify(src, vc.signed_bytes(), vc.sig)
        and inst.checkpoint_proof_valid(vc.checkpoint_seq, vc.checkpoint_digest,
                                        vc.checkpoint_proof)
    )


def _view_of(msg: Any) -> int | None:
    if isinstance(msg, PrePrepare | Prepare | Commit | NewView):
        return msg.view
    if isinstance(msg, ViewChange):
        return msg.new_view
    return None


def _signed(vc: ViewChange, sig: bytes) -> ViewChange:
    return msgspec.structs.replace(vc, sig=sig)


def _signed_new_view(sim: Simulation, replica: int, nv: NewView) -> NewView:
    """``nv`` signed by Byzantine ``replica`` (valid where it is the view's primary)."""
    return msgspec.structs.replace(nv, sig=sim.byzantine_crypto(replica).sign(nv.signed_bytes()))


class ForgeNewView(ActionBehaviour):
    """An honest core plus, every ``tick``, a forged NEW-VIEW for the next view it leads
    that re-assigns a committed slot (see the module docstring)."""

    name = "forge_view"

    def __init__(
        self, replica: int, seed: int, *, tick: float = 0.1, chance: float = 0.5,
        disabled: Switches = frozenset(), log: Log | None = None,
    ) -> None:
        super().__init__(replica, seed, disabled=disabled, log=log)
        self.tick = tick
        self.chance = chance
        self.max_view = 0  # highest view seen in any message: the forged one must be above
        self.forged_payloads: dict[bytes, bytes] = {}

    def attach(self, sim: Simulation) -> None:
        super().attach(sim)
        sim.call_at(sim.now + self.tick, self._on_tick)

    def on_deliver(self, sim: Simulation, src: NodeId, msg: Any) -> bool | None:
        view = _view_of(msg)
        if view is not None and view < 1 << 32:
            self.max_view = max(self.max_view, view)
        if isinstance(msg, FetchPayload) and isinstance(src, int):
            payload = self.forged_payloads.get(msg.digest)
            if payload is not None:  # the batch our forged NEW-VIEW put in a slot
                self._send(src, PayloadData(msg.instance, payload))
        return None

    def _on_tick(self, sim: Simulation) -> None:
        self._forge(sim)
        sim.call_at(sim.now + self.tick, self._on_tick)

    def _forge(self, sim: Simulation) -> None:
        inst = _instance(sim, self.replica)
        if inst is None:
            return
        committed = [
            s for s in range(inst.low + 1, inst.last_decided + 1)
            if (slot := inst.slots.get(s)) is not None and slot.committed
        ]
        if not committed:
            return  # nothing above the stable checkpoint to contradict yet
        rng = self._action()
        if rng is None or rng.random() >= self.chance:
            return
        quorums = inst.q
        view = max(inst.view, self.max_view) + 1
        while quorums.primary(view) != self.replica:
            view += 1
        seq = rng.choice(committed)
        claims = self._claims(inst, seq, rng)
        entries = [SlotSummary(s, d, view - 1) for s, d in sorted(claims.items())]
        crypto = sim.byzantine_crypto(self.replica)
        forged = []
        for r in range(quorums.n):
            vc = ViewChange(
                inst.instance, view, r, inst.low, inst.stable_digest, inst.stable_proof,
                entries, entries,
            )
            # Only colluders' keys sign; in a correct replica's name the signature is our
            # own, which a replica that checks signatures rejects.
            signer = r if r in crypto.colluders else self.replica
            forged.append(_signed(vc, crypto.sign_as(signer, vc.signed_bytes())))
        decision = decide_new_view(forged, quorums)
        if decision is None or decision.slots.get(seq) != claims[seq]:
            return
        nv = _signed_new_view(sim, self.replica, NewView(inst.instance, view, forged))
        self._note(f"forges NEW-VIEW {view}: slot {seq} -> {claims[seq].hex()[:12]} "
                   f"(committed {inst.slots[seq].committed_digest.hex()[:12]})")
        for dest in range(quorums.n):
            if dest != self.replica:
                self._send(dest, nv)

    def _claims(self, inst: PbftInstance, seq: int, rng: random.Random) -> dict[int, bytes]:
        """Slot -> digest the forged VIEW-CHANGEs claim prepared: at ``seq`` a batch other
        than the committed one (another known batch, the same requests reordered, or the
        null request with the real batch moved one slot up, so that it is not a trailing
        null the new view drops)."""
        committed = inst.slots[seq].committed_digest
        others = sorted(d for d in inst.payloads if d not in (committed, NULL_DIGEST))
        if others and rng.random() < 0.5:
            other = rng.choice(others)
            self.forged_payloads[other] = inst.payloads[other]
            return {seq: other}
        payload = inst.payloads.get(committed, b"")
        batch = decode_batch(payload) if payload else []
        if len(batch) > 1:
            reordered = encode_batch(batch[::-1])
            if sha256(reordered) != committed:
                self.forged_payloads[sha256(reordered)] = reordered
                return {seq: sha256(reordered)}
        claims = {seq: NULL_DIGEST}
        if seq + 1 <= inst.low + inst.window and payload:
            self.forged_payloads[committed] = payload
            claims[seq + 1] = committed
        return claims


class HideCommit(ActionBehaviour):
    """A backup that votes to every backup but never to the primary, lies in its
    VIEW-CHANGE, and as the next primary builds NEW-VIEW from the 2f VIEW-CHANGEs that
    omit a slot it voted for (see the module docstring)."""

    name = "hide_commit"

    def __init__(
        self, replica: int, seed: int, *, disabled: Switches = frozenset(),
        log: Log | None = None,
    ) -> None:
        super().__init__(replica, seed, disabled=disabled, log=log)
        self.quorums: Quorums | None = None
        self.voted: dict[int, tuple[int, bytes]] = {}  # seq -> (view, digest) we voted for
        self.view_changes: dict[int, dict[int, ViewChange]] = {}  # view -> replica -> vc
        self.hijacked: set[int] = set()  # views whose NEW-VIEW we built ourselves
        self.instance_id = 0
        # Stable checkpoints our core went through (oldest first), with their proofs.
        self.checkpoints: list[_Checkpoint] = [(0, GENESIS_DIGEST, [])]

    def attach(self, sim: Simulation) -> None:
        super().attach(sim)
        inst = _instance(sim, self.replica)
        self.quorums = inst.q if inst is not None else Quorums.for_n(sim.n)

    # -- incoming ---------------------------------------------------------------------

    def on_deliver(self, sim: Simulation, src: NodeId, msg: Any) -> bool | None:
        q = self.quorums
        if q is None or not isinstance(src, int):
            return None
        inst = _instance(sim, self.replica)
        if inst is not None:
            self.instance_id = inst.instance
            self._remember_checkpoint(inst)
        if (
            isinstance(msg, PrePrepare) and src == q.primary(msg.view) != self.replica
            and inst is not None and inst.low < msg.seq <= inst.high
        ):
            # Only inside the watermarks: correct backups drop the rest, so it cannot
            # commit, and hiding a far slot (seed 83139: the Borgesian primary's) would
            # mean a null PRE-PREPARE for every slot up to it.
            self._vote(msg, src)
        elif isinstance(msg, ViewChange) and _genuine(sim, self.replica, src, msg):
            self.view_changes.setdefault(msg.new_view, {})[src] = msg
            for old in [v for v in self.view_changes if v < msg.new_view - q.n]:
                del self.view_changes[old]
            if q.primary(msg.new_view) == self.replica:
                self._hijack(sim, msg.new_view)
        return None

    def _vote(self, pp: PrePrepare, primary: int) -> None:
        """PREPARE and COMMIT at once to every other backup: with ours, a backup needs
        only 2f-1 more of each (the primary does not get them: it stays unprepared)."""
        rng = self._action()
        if rng is None or self.quorums is None:
            return
        self.voted[pp.seq] = (pp.view, pp.digest)
        for dest in range(self.quorums.n):
            if dest not in (self.replica, primary):
                self._send(dest, Prepare(pp.instance, pp.view, pp.seq, pp.digest))
                self._send(dest, Commit(pp.instance, pp.view, pp.seq, pp.digest))

    def _hijack(self, sim: Simulation, view: int) -> None:
        """As primary of ``view``: NEW-VIEW from our lie and 2f real VIEW-CHANGEs that
        leave out a slot we voted for, then the null request in that slot."""
        q = self.quorums
        inst = _instance(sim, self.replica)
        others = self.view_changes.get(view, {})
        if q is None or inst is None or view in self.hijacked or len(others) < q.strong - 1:
            return
        # Our lie may start from any checkpoint we can prove, the oldest included: a
        # newer one (2f+1 signatures, ours among them) may already cover the slot.
        lies = [self._lie(sim, view, checkpoint) for checkpoint in self.checkpoints]
        for own, combo in itertools.product(
            lies, itertools.combinations(sorted(others), q.strong - 1)
        ):
            chosen = [own, *(others[r] for r in combo)]
            decision = decide_new_view(chosen, q)
            if decision is None:
                continue
            hidden = sorted(
                s for s, (v, d) in self.voted.items()
                if v < view and s > decision.checkpoint_seq
                and decision.slots.get(s, NULL_DIGEST) != d
            )
            if hidden:
                break
        else:
            return
        rng = self._action()
        if rng is None:
            return
        self.hijacked.add(view)
        self._note(f"NEW-VIEW {view} from {[vc.replica for vc in chosen]} hides slots {hidden}")
        top = max(decision.slots, default=decision.checkpoint_seq)
        proposals = [
            PrePrepare(inst.instance, view, s, NULL_DIGEST, b"")
            for s in range(top + 1, hidden[-1] + 1)
        ]
        for dest in range(q.n):
            if dest != self.replica:
                self._send(dest, _signed_new_view(sim, self.replica,
                                                  NewView(inst.instance, view, chosen)))
                for pp in proposals:
                    self._send(dest, pp)

    def _remember_checkpoint(self, inst: PbftInstance) -> None:
        if inst.low != self.checkpoints[-1][0]:
            self.checkpoints.append((inst.low, inst.stable_digest, inst.stable_proof))
            del self.checkpoints[:-MAX_CHECKPOINTS]
            oldest = self.checkpoints[0][0]
            for seq in [s for s in self.voted if s <= oldest]:
                del self.voted[seq]

    def _lie(self, sim: Simulation, view: int, checkpoint: _Checkpoint) -> ViewChange:
        """Our VIEW-CHANGE for ``view`` from ``checkpoint``, claiming nothing prepared or
        pre-prepared."""
        vc = ViewChange(self.instance_id, view, self.replica, *checkpoint, [], [])
        return _signed(vc, sim.byzantine_crypto(self.replica).sign(vc.signed_bytes()))

    # -- outgoing ---------------------------------------------------------------------

    def filter(self, dest: NodeId, msg: Any) -> list[Any]:
        q = self.quorums
        if q is None:
            return [msg]
        if isinstance(msg, Prepare | Commit) and dest == q.primary(msg.view):
            return []  # the primary must not prepare what we help a backup commit
        if isinstance(msg, CommittedSlot) and msg.seq in self.voted:
            return []  # f+1 claims of the commit, ours among them, would reveal it
        if isinstance(msg, Checkpoint):
            return []  # nor may a stable checkpoint above it, signed by us, cover it
        if isinstance(msg, ViewChange) and msg.replica == self.replica and self.sim is not None:
            checkpoint = (msg.checkpoint_seq, msg.checkpoint_digest, msg.checkpoint_proof)
            return [self._lie(self.sim, msg.new_view, checkpoint)]
        if isinstance(msg, NewView) and (
            msg.view in self.hijacked
            or any(v == msg.view - 1 for v, _ in self.voted.values())
        ):
            # Our core's honest NEW-VIEW would contradict the one we sent; and while a
            # slot of the last view may still be hidden, we wait for VIEW-CHANGEs that
            # let us hide it (a primary that never completes its view is allowed: the
            # others time out and move on).
            return []
        return [msg]


class SpliceNewView(ActionBehaviour):
    """A backup that re-assembles the new primary's NEW-VIEW from another quorum of the
    same signed VIEW-CHANGEs and gives it to lagging replicas (see the module docstring)."""

    name = "splice_new_view"

    def __init__(
        self, replica: int, seed: int, *, disabled: Switches = frozenset(),
        log: Log | None = None,
    ) -> None:
        super().__init__(replica, seed, disabled=disabled, log=log)
        self.quorums: Quorums | None = None
        self.view_changes: dict[int, dict[int, ViewChange]] = {}  # view -> replica -> vc
        self.views: dict[int, int] = {}  # replica -> highest view seen in its messages
        self.heard: dict[int, float] = {}  # replica -> when we last heard from it
        self.handed: set[tuple[int, int]] = set()  # (replica, view) we gave a splice to
        # view -> (the spliced NEW-VIEW, slot -> the digest it puts where the primary's
        # decision has another one or none)
        self.spliced: dict[int, tuple[NewView, dict[int, bytes]]] = {}

    def attach(self, sim: Simulation) -> None:
        super().attach(sim)
        inst = _instance(sim, self.replica)
        self.quorums = inst.q if inst is not None else Quorums.for_n(sim.n)

    def on_deliver(self, sim: Simulation, src: NodeId, msg: Any) -> bool | None:
        q = self.quorums
        if q is None or not isinstance(src, int) or not 0 <= src < q.n:
            return None
        self.heard[src] = sim.now
        view = _view_of(msg)
        if view is not None and 0 <= view < 1 << 32 and not isinstance(msg, NewView):
            self.views[src] = max(self.views.get(src, -1), view)
        if isinstance(msg, Prepare) and self._stalling(sim, msg.view):
            return False  # our core must not prepare: its own VIEW-CHANGE then shows none
        if isinstance(msg, ViewChange) and _genuine(sim, self.replica, src, msg):
            by_replica = self.view_changes.setdefault(msg.new_view, {})
            by_replica[src] = msg
            for old in [v for v in self.view_changes if v < msg.new_view - q.n]:
                del self.view_changes[old]
        elif isinstance(msg, NewView) and src == q.primary(msg.view) != self.replica:
            self._splice(sim, msg)
        for view, (nv, _) in self.spliced.items():
            # A replica still behind the spliced view (back from a partition or a crash,
            # or asking to catch up) gets the splice before anyone's answer.
            if self.views.get(src, -1) < view and (
                isinstance(msg, FetchCommitted) or (src, view) not in self.handed
            ):
                self.handed.add((src, view))
                self._hand_over(src, nv)
        return None

    def filter(self, dest: NodeId, msg: Any) -> list[Any]:
        if isinstance(msg, NewView) and msg.view in self.spliced:
            return [self.spliced[msg.view][0]]  # our catch-up answers carry the splice
        if isinstance(msg, NewView) and any(v < msg.view for v in self.spliced):
            return []  # as a later primary, we never resolve the split slots ourselves
        if isinstance(msg, Prepare) and msg.view in self.spliced and isinstance(dest, int):
            other = self.spliced[msg.view][1].get(msg.seq)
            if other is not None and self.views.get(dest, -1) < msg.view:
                return [replace_prepare(msg, other)]
        if isinstance(msg, Commit) and msg.seq in self._split_slots(msg.view):
            return []  # neither side may commit the slot: a later view change must decide it
        if (
            isinstance(msg, Prepare | Commit) and self.sim is not None
            and self._stalling(self.sim, msg.view)
        ):
            return []
        if isinstance(msg, ViewChange) and msg.replica == self.replica and self.sim is not None:
            return [self._backing_view_change(self.sim, msg)]
        return [msg]

    def _stalling(self, sim: Simulation, view: int) -> bool:
        """While a replica lags (silent for a while, or behind in views) we vote for
        nothing in the current view: without the lagging replica's votes and ours
        nothing prepares, the others change view with the in-flight slots pre-prepared
        but unprepared — the slots two quorums of VIEW-CHANGEs then decide differently."""
        inst = _instance(sim, self.replica)
        q = self.quorums
        if inst is None or q is None or view != inst.view or inst.in_view_change:
            return False
        for r in range(q.n):
            behind = self.views.get(r, -1)
            lagging = sim.now - self.heard.get(r, 0.0) > LAG_S or behind < inst.view
            # One splice for a view the lagging replica has not reached is all we need.
            if r != self.replica and lagging and not any(v > behind for v in self.spliced):
                return True
        return False

    def _split_slots(self, view: int) -> dict[int, bytes]:
        entry = self.spliced.get(view)
        return entry[1] if entry is not None else {}

    def _backing_view_change(self, sim: Simulation, vc: ViewChange) -> ViewChange:
        """Our VIEW-CHANGE after a splice claims the spliced digests prepared, so that
        the replicas that prepared them and we outvote the others' claims: no quorum of
        VIEW-CHANGEs is then consistent with either digest."""
        claims = {
            seq: SlotSummary(seq, digest, view)
            for view, (_, differs) in self.spliced.items() if view < vc.new_view
            for seq, digest in differs.items() if seq > vc.checkpoint_seq
        }
        if not claims:
            return vc
        prepared = [e for e in vc.prepared if e.seq not in claims] + list(claims.values())
        prepared.sort(key=lambda e: e.seq)
        lie = msgspec.structs.replace(vc, prepared=prepared, sig=b"")
        return _signed(lie, sim.byzantine_crypto(self.replica).sign(lie.signed_bytes()))

    def _splice(self, sim: Simulation, nv: NewView) -> None:
        q = self.quorums
        inst = _instance(sim, self.replica)
        if q is None or inst is None or nv.view in self.spliced or not all(
            _in_window(vc, inst.window) for vc in nv.view_changes
        ):
            return  # a NEW-VIEW correct replicas refuse (or we cannot read): no splice
        honest = decide_new_view(nv.view_changes, q)
        if honest is None:
            return
        genuine = dict(self.view_changes.get(nv.view, {}))
        for vc in nv.view_changes:  # signed by their senders: usable as they are
            if vc.replica != self.replica:
                genuine.setdefault(vc.replica, vc)
        found = None
        for own in self._own_view_changes(sim, nv, genuine):
            found = self._other_decision({**genuine, self.replica: own}, honest.slots)
            if found is not None:
                break
        if found is None:
            return
        chosen, differs = found
        rng = self._action()
        if rng is None:
            return
        # Signed with our own key: the primary's cannot be had.
        spliced = _signed_new_view(sim, self.replica, NewView(nv.instance, nv.view, chosen))
        self.spliced[nv.view] = (spliced, differs)
        for old in sorted(self.spliced)[:-MAX_SPLICES]:
            del self.spliced[old]
        self._note(f"splices NEW-VIEW {nv.view} from {[vc.replica for vc in chosen]}: "
                   f"slots {sorted(differs)} differ from the primary's")
        for dest in range(q.n):
            if dest not in (self.replica, q.primary(nv.view)) and (
                self.views.get(dest, -1) < nv.view
            ):
                self._hand_over(dest, spliced)  # again when we next hear from it

    def _hand_over(self, dest: int, nv: NewView) -> None:
        self._send(dest, nv)
        for seq, digest in sorted(self.spliced.get(nv.view, (nv, {}))[1].items()):
            self._send(dest, Prepare(nv.instance, nv.view, seq, digest))

    def _own_view_changes(
        self, sim: Simulation, nv: NewView, genuine: dict[int, ViewChange]
    ) -> list[ViewChange]:
        """Our VIEW-CHANGE as sent, and lies from its checkpoint: nothing prepared or
        pre-prepared; every digest the others pre-prepared vouched for (so that one
        correct replica's prepared claim passes A2 in a quorum without the others); and
        that, with the latest of them per slot claimed prepared."""
        own = next((vc for vc in nv.view_changes if vc.replica == self.replica), None)
        if own is None:
            return []
        crypto = sim.byzantine_crypto(self.replica)
        vouched: dict[tuple[int, bytes], int] = {}
        for vc in genuine.values():
            for e in (*vc.prepared, *vc.preprepared):
                if e.seq > own.checkpoint_seq:
                    key = (e.seq, e.digest)
                    vouched[key] = max(vouched.get(key, -1), e.view)
        per_slot: dict[int, int] = {}
        entries = []
        for (seq, digest), view in sorted(vouched.items()):
            if per_slot.get(seq, 0) < MAX_Q_ENTRIES:
                per_slot[seq] = per_slot.get(seq, 0) + 1
                entries.append(SlotSummary(seq, digest, view))
        # And a claim to have prepared, per slot, the digest pre-prepared there in the
        # latest view: in-flight slots nobody prepared then get a value in our quorum.
        latest: dict[int, SlotSummary] = {}
        for e in entries:
            if e.seq not in latest or (e.view, e.digest) > (latest[e.seq].view,
                                                            latest[e.seq].digest):
                latest[e.seq] = e
        lies = []
        for prepared, preprepared in (([], []), ([], entries), (list(latest.values()), entries)):
            vc = msgspec.structs.replace(own, prepared=prepared, preprepared=preprepared, sig=b"")
            lies.append(_signed(vc, crypto.sign(vc.signed_bytes())))
        return [own, *lies]

    def _other_decision(
        self, genuine: dict[int, ViewChange], honest: dict[int, bytes]
    ) -> tuple[list[ViewChange], dict[int, bytes]] | None:
        """A quorum of ``genuine`` whose decision puts another digest in a slot than
        ``honest`` (or fills one the honest decision leaves out), with those slots."""
        q = self.quorums
        assert q is not None
        replicas = sorted(genuine)
        for size in range(q.strong, len(replicas) + 1):
            for combo in itertools.combinations(replicas, size):
                chosen = [genuine[r] for r in combo]
                decision = decide_new_view(chosen, q)
                if decision is None:
                    continue
                differs = {
                    seq: digest for seq, digest in decision.slots.items()
                    if honest.get(seq) != digest
                }
                if differs:
                    return chosen, differs
        return None


def replace_prepare(msg: Prepare, digest: bytes) -> Prepare:
    return msgspec.structs.replace(msg, digest=digest)
