"""A PBFT instance's checkpoints driven message by message: when a checkpoint becomes
stable, what proves one, the log and payloads it collects, what is persisted of it and
recovered after a restart, and the repair of a replica whose state diverged.

n=4, f=1 (quorums of 3), a checkpoint every 4 slots and a window of 8, the simulator's
symbolic signatures (unforgeable by construction). The instance under test is backup 1
unless a test says otherwise."""

from __future__ import annotations

import random
from typing import Any

import msgspec
import pytest

from phalanx.core.effects import Broadcast, Dropped, Persist, Send, SetTimer
from phalanx.core.hashing import digest
from phalanx.core.quorum import Quorums
from phalanx.protocols.pbft.config import PbftConfig
from phalanx.protocols.pbft.instance import (
    GENESIS_DIGEST,
    MAX_FETCH,
    Decided,
    NeedState,
    PbftInstance,
    StableCheckpoint,
)
from phalanx.protocols.pbft.messages import (
    Checkpoint,
    Commit,
    FetchCommitted,
    FetchPayload,
    Prepare,
    PrePrepare,
)
from phalanx.sim.crypto import SymbolicOracle

Q = Quorums(4, 1)
CONFIG = PbftConfig(checkpoint_interval=4, window=8, view_change_timeout=1.0)
ORACLE = SymbolicOracle(random.Random(11), 4)
STATE = digest(b"state after 4")  # the state digest every correct replica reaches at 4
OTHER = digest(b"another state after 4")


def instance(me: int = 1, inst: int = 0) -> PbftInstance:
    return PbftInstance(inst, me, Q, ORACLE.node_crypto(me), CONFIG, lambda p: True)


def checkpoint(replica: int, seq: int = 4, state: bytes = STATE, inst: int = 0) -> Checkpoint:
    cp = Checkpoint(inst, seq, state, replica)
    return msgspec.structs.replace(cp, sig=ORACLE.node_crypto(replica).sign(cp.signed_bytes()))


def payload(seq: int) -> bytes:
    return f"batch {seq}".encode()


def decide(inst: PbftInstance, seqs: range, payloads=payload) -> list[Any]:
    """Backup ``inst`` decides each slot in view 0: primary 0's PRE-PREPARE, replica 2's
    PREPARE (with ours, 2f), COMMITs of 2 and 3 (with ours, 2f+1)."""
    out: list[Any] = []
    for seq in seqs:
        data = payloads(seq)
        d = digest(data)
        out += inst.on_message(0, PrePrepare(0, 0, seq, d, data))
        out += inst.on_message(2, Prepare(0, 0, seq, d))
        out += inst.on_message(2, Commit(0, 0, seq, d))
        out += inst.on_message(3, Commit(0, 0, seq, d))
    return out


def of(effects: list[Any], kind: type) -> list[Any]:
    return [e for e in effects if isinstance(e, kind)]


def dropped(effects: list[Any]) -> list[str]:
    return [e.reason for e in of(effects, Dropped)]


def sent(effects: list[Any], kind: type) -> list[Any]:
    return [e.msg for e in of(effects, Broadcast) if isinstance(e.msg, kind)]


def decided_seqs(effects: list[Any]) -> list[int]:
    return [e.seq for e in of(effects, Decided)]


class Disk:
    """Every Persist effect applied in order (a write of None deletes): what a replica
    finds after a clean restart."""

    def __init__(self) -> None:
        self.records: dict[bytes, bytes] = {}

    def apply(self, effects: list[Any]) -> list[Any]:
        for e in of(effects, Persist):
            if e.value is None:
                self.records.pop(e.key, None)
            else:
                self.records[e.key] = e.value
        return effects

    def restart(self, me: int = 1, state_seq: int | None = None) -> PbftInstance:
        inst = instance(me)
        inst.recover(sorted(self.records.items()), state_seq)
        return inst


def stable_at_4(inst: PbftInstance, disk: Disk | None = None) -> list[Any]:
    """Decide 1..4, take checkpoint 4 and receive replicas 2's and 3's: stable."""
    disk = disk or Disk()
    out = disk.apply(decide(inst, range(1, 5)))
    out += disk.apply(inst.make_checkpoint(4, STATE))
    for replica in (2, 3):
        out += disk.apply(inst.on_message(replica, checkpoint(replica)))
    assert inst.low == 4
    return out


# -- when a checkpoint is stable -------------------------------------------------------


def test_two_checkpoints_out_of_four_are_not_a_stable_checkpoint_the_third_makes_one():
    inst = instance()
    decide(inst, range(1, 5))
    out = inst.make_checkpoint(4, STATE)
    assert of(out, Broadcast)[0].msg == checkpoint(1)  # signed, ours
    out += inst.on_message(2, checkpoint(2))
    assert inst.low == 0 and not of(out, StableCheckpoint)  # 2 of 4: f+1, not 2f+1
    out = inst.on_message(3, checkpoint(3))
    assert of(out, StableCheckpoint) == [StableCheckpoint(4, STATE)]
    assert (inst.low, inst.stable_digest, inst.high) == (4, STATE, 12)
    assert [c.replica for c in inst.stable_proof] == [1, 2, 3]


def test_checkpoints_that_sign_different_states_do_not_add_up():
    inst = instance()
    decide(inst, range(1, 5))
    inst.make_checkpoint(4, STATE)
    inst.on_message(2, checkpoint(2))
    out = inst.on_message(3, checkpoint(3, state=OTHER))
    assert inst.low == 0 and not of(out, StableCheckpoint)
    out = inst.on_message(0, checkpoint(0))
    assert of(out, StableCheckpoint) == [StableCheckpoint(4, STATE)]
    assert [c.replica for c in inst.stable_proof] == [0, 1, 2]


def test_a_checkpoint_with_a_forged_signature_or_from_no_replica_is_dropped_and_not_counted():
    inst = instance()
    decide(inst, range(1, 5))
    inst.make_checkpoint(4, STATE)
    forged = msgspec.structs.replace(checkpoint(3), replica=2)  # 3's signature, 2's name
    assert dropped(inst.on_message(3, forged)) == ["bad_signature"]
    nobody = msgspec.structs.replace(checkpoint(3), replica=4)
    assert dropped(inst.on_message(3, nobody)) == ["bad_signature"]
    assert dropped(inst.on_message(3, checkpoint(3))) == []
    assert inst.low == 0  # ours and 3's: the forged one counted for nobody
    inst.on_message(2, checkpoint(2))
    assert inst.low == 4


def test_a_stable_checkpoint_at_or_below_the_low_watermark_is_ignored():
    inst = instance()
    stable_at_4(inst)
    out = inst.on_message(0, checkpoint(0))
    assert out == [] and inst.stable_proof == [checkpoint(r) for r in (1, 2, 3)]


# -- what proves a stable checkpoint ------------------------------------------------------


PROOF = [checkpoint(r) for r in (0, 2, 3)]


@pytest.mark.parametrize(
    ("case", "proof"),
    [
        ("one entry for another state", [*PROOF[:2], checkpoint(3, state=OTHER)]),
        ("one entry for another seq", [*PROOF[:2], checkpoint(3, seq=8)]),
        ("one entry of another instance", [*PROOF[:2], checkpoint(3, inst=1)]),
        ("a duplicated signer", [PROOF[0], PROOF[1], PROOF[1]]),
        ("a duplicated signer among 2f+1 others", [*PROOF, PROOF[0]]),
        ("a forged signature", [*PROOF[:2], msgspec.structs.replace(PROOF[2], sig=b"x")]),
        ("a signer that is no replica", [*PROOF[:2], msgspec.structs.replace(PROOF[2], replica=4)]),
        ("only f+1 signers", PROOF[:2]),
        ("no signer", []),
    ],
)
def test_a_checkpoint_proof_is_refused_with(case, proof):
    assert not instance().checkpoint_proof_valid(4, STATE, proof), case


def test_a_checkpoint_proof_of_2f_plus_1_distinct_signers_is_valid_in_any_order():
    inst = instance()
    assert inst.checkpoint_proof_valid(4, STATE, PROOF)
    assert inst.checkpoint_proof_valid(4, STATE, PROOF[::-1])
    assert inst.checkpoint_proof_valid(4, STATE, [*PROOF, checkpoint(1)])
    # The same signatures prove nothing about another digest, seq or instance.
    assert not inst.checkpoint_proof_valid(4, OTHER, PROOF)
    assert not inst.checkpoint_proof_valid(8, STATE, PROOF)
    assert not instance(inst=1).checkpoint_proof_valid(4, STATE, PROOF)


def test_checkpoint_zero_needs_no_proof_but_must_be_the_genesis_state():
    inst = instance()
    assert inst.checkpoint_proof_valid(0, GENESIS_DIGEST, [])
    assert not inst.checkpoint_proof_valid(0, STATE, PROOF)


# -- what a Byzantine replica's checkpoints can push out ---------------------------------


def test_made_up_far_future_checkpoints_do_not_evict_a_replicas_real_one():
    """Replica 3 sends its real checkpoint 4, then four made-up ones ahead (more than the
    four kept per replica): the made-up ones, which nobody else vouches for, go first,
    so 3's real checkpoint still completes the proof when replica 0's arrives."""
    inst = instance()
    decide(inst, range(1, 5))  # executed up to 4, no checkpoint of our own yet
    inst.on_message(2, checkpoint(2))
    inst.on_message(3, checkpoint(3))
    for seq in (8, 12, 16, 20):
        inst.on_message(3, checkpoint(3, seq=seq, state=digest(b"made up %d" % seq)))
    assert sorted(inst.checkpoints[3]) == [4, 12, 16, 20]  # bounded: four per replica
    out = inst.on_message(0, checkpoint(0))
    assert of(out, StableCheckpoint) == [StableCheckpoint(4, STATE)]
    assert [c.replica for c in inst.stable_proof] == [0, 2, 3]


def test_once_every_checkpoint_of_a_replica_is_vouched_for_the_oldest_goes():
    inst = instance()
    seqs = (4, 8, 12, 16, 20)
    for seq in seqs:
        vouching = 0 if seq == 20 else 2
        inst.on_message(vouching, checkpoint(vouching, seq=seq, state=digest(b"%d" % seq)))
    for seq in seqs:
        inst.on_message(3, checkpoint(3, seq=seq, state=digest(b"%d" % seq)))
    assert sorted(inst.checkpoints[3]) == [8, 12, 16, 20]


# -- a replica whose state diverged ---------------------------------------------------------


def test_a_replica_whose_checkpoint_contradicts_2f_plus_1_others_fetches_their_state():
    inst = instance()
    decide(inst, range(1, 7))
    inst.make_checkpoint(4, OTHER)  # our state went wrong before 4
    out = []
    for replica in (0, 2, 3):
        out += inst.on_message(replica, checkpoint(replica))
    assert of(out, Dropped) == [Dropped("state_divergence", 1)]  # an alarm, counted
    assert (inst.low, inst.stable_digest) == (4, STATE)  # the certified state, not ours
    assert of(out, NeedState) == [NeedState(4, STATE, [0, 2, 3])]
    assert inst.repairing and inst.state_target == (4, STATE)


def test_a_repair_rolls_back_to_the_certified_state_and_decides_the_batches_after_it_again():
    inst = instance()
    decide(inst, range(1, 9))
    inst.make_checkpoint(4, OTHER)
    inst.make_checkpoint(8, digest(b"wrong state at 8"))
    for replica in (0, 2, 3):
        inst.on_message(replica, checkpoint(replica))
    assert decided_seqs(decide(inst, range(9, 10))) == []  # nothing runs on a wrong state
    out = inst.state_transferred(4, STATE, inst.stable_proof)
    assert decided_seqs(out) == [5, 6, 7, 8, 9]  # again, on the certified state
    assert not inst.repairing and inst.state_target is None and inst.last_decided == 9
    # Our checkpoint of the wrong state at 8 is gone: the others' 8 is not a divergence.
    out = []
    for replica in (0, 2, 3):
        out += inst.on_message(replica, checkpoint(replica, seq=8, state=digest(b"right 8")))
    assert dropped(out) == [] and inst.low == 8 and not of(out, NeedState)


def test_a_replica_that_diverged_exactly_at_its_last_decided_slot_is_repairing():
    inst = instance()
    decide(inst, range(1, 5))
    inst.make_checkpoint(4, OTHER)
    for replica in (0, 2, 3):
        inst.on_message(replica, checkpoint(replica))
    assert inst.repairing  # at 4 = what we executed: the host must fetch, not skip
    inst.state_transferred(4, STATE, inst.stable_proof)
    assert not inst.repairing and inst.last_decided == 4


def test_a_replica_merely_behind_a_stable_checkpoint_is_not_repairing():
    inst = instance()
    out = []
    for replica in (0, 2, 3):
        out += inst.on_message(replica, checkpoint(replica, seq=8, state=digest(b"8")))
    out += inst.on_timer(inst._t_sync)
    assert not of(out, NeedState)  # first, a chance to catch up by the log
    out += inst.on_timer(inst._t_sync)  # which brought nothing: adopt the checkpoint
    assert NeedState(8, digest(b"8"), [0, 2, 3]) in out
    assert inst.state_target == (8, digest(b"8")) and not inst.repairing


def behind_stable_8(inst: PbftInstance, seen: int = 0) -> list[Any]:
    """``inst`` executed nothing, saw a COMMIT for slot ``seen`` (if any), and adopts the
    others' stable checkpoint 8 once catch-up brings nothing."""
    if seen:
        inst.on_message(2, Commit(0, 0, seen, digest(b"x")))
    for replica in (0, 2, 3):
        inst.on_message(replica, checkpoint(replica, seq=8, state=digest(b"8")))
    inst.on_timer(inst._t_sync)
    out = inst.on_timer(inst._t_sync)
    assert inst.state_target == (8, digest(b"8"))
    return out


def test_a_state_transfer_counts_as_progress_the_primary_gets_a_fresh_timeout():
    inst = instance()
    inst.set_waiting(True)  # the host has requests: the progress timer runs
    behind_stable_8(inst)
    out = inst.state_transferred(8, digest(b"8"), inst.stable_proof)
    assert [e.name for e in of(out, SetTimer)] == [inst.progress_timer]
    assert inst.last_decided == 8 and inst.low == 8


@pytest.mark.parametrize(("seen", "asks"), [(8, False), (10, True)])
def test_after_a_state_transfer_a_replica_asks_for_the_slots_it_knows_were_decided_since(
    seen, asks
):
    inst = instance()
    behind_stable_8(inst, seen)
    out = inst.state_transferred(8, digest(b"8"), inst.stable_proof)
    fetches = sent(out, FetchCommitted)
    assert fetches == ([FetchCommitted(0, 9, 9 + MAX_FETCH - 1)] if asks else [])


def test_a_stable_checkpoint_reached_by_catching_up_leaves_nothing_pending():
    inst = instance()
    for replica in (0, 2, 3):
        inst.on_message(replica, checkpoint(replica))
    assert inst.low == 0 and inst.pending_stable is not None  # not executed up to 4 yet
    decide(inst, range(1, 5))
    inst.make_checkpoint(4, STATE)
    assert inst.low == 4 and inst.pending_stable is None


def test_a_pending_stable_checkpoint_keeps_the_proof_that_completed_first():
    """n=7 (quorums of 5): the sixth CHECKPOINT for it changes neither the proof nor
    the replicas asked for the state."""
    oracle = SymbolicOracle(random.Random(3), 7)
    inst = PbftInstance(0, 1, Quorums(7, 2), oracle.node_crypto(1), CONFIG, lambda p: True)

    def signed(replica: int) -> Checkpoint:
        cp = Checkpoint(0, 4, STATE, replica)
        return msgspec.structs.replace(cp, sig=oracle.node_crypto(replica).sign(cp.signed_bytes()))

    for replica in (0, 2, 3, 4, 5, 6):
        inst.on_message(replica, signed(replica))
    inst.on_timer(inst._t_sync)
    out = inst.on_timer(inst._t_sync)
    assert NeedState(4, STATE, [0, 2, 3, 4, 5]) in out
    assert [c.replica for c in inst.stable_proof] == [0, 2, 3, 4, 5]


def test_a_primary_repaired_at_its_last_proposal_proposes_at_the_next_slot():
    primary = instance(me=0)
    for seq in range(1, 5):
        primary.propose(payload(seq))
        d = digest(payload(seq))
        for replica in (1, 2):
            primary.on_message(replica, Prepare(0, 0, seq, d))
        for replica in (1, 2):
            primary.on_message(replica, Commit(0, 0, seq, d))
    assert primary.last_decided == 4
    primary.make_checkpoint(4, OTHER)
    for replica in (1, 2, 3):
        primary.on_message(replica, checkpoint(replica))
    primary.state_transferred(4, STATE, primary.stable_proof)
    assert primary.can_propose()
    out = primary.propose(payload(5))
    assert [(m.msg.seq, m.msg.digest) for m in of(out, Broadcast)] == [(5, digest(payload(5)))]


# -- garbage collection and persistence -------------------------------------------------------


def slot_key(inst: PbftInstance, seq: int) -> bytes:
    return inst._key(b"l", seq.to_bytes(8, "big"))


def payload_key(inst: PbftInstance, data: bytes) -> bytes:
    return inst._key(b"d", digest(data))


def test_a_stable_checkpoint_deletes_the_log_and_the_payloads_below_it_on_disk_too():
    """Slot 6 holds the same batch as slot 3 (proposed again): that payload stays."""
    disk, inst = Disk(), instance()
    again = {6: payload(3)}
    disk.apply(decide(inst, range(5, 7), payloads=lambda s: again.get(s, payload(s))))
    out = stable_at_4(inst, disk)
    deletions = [e for e in of(out, Persist) if e.value is None]
    assert all(e.lazy for e in deletions)  # the stable record alone says what is gone
    assert {e.key for e in deletions} == (
        {slot_key(inst, s) for s in range(1, 5)}
        | {payload_key(inst, payload(s)) for s in (1, 2, 4)}
    )
    assert sorted(inst.slots) == [5, 6]
    assert set(inst.payloads) >= {digest(payload(3)), digest(payload(5))}
    assert not {digest(payload(s)) for s in (1, 2, 4)} & set(inst.payloads)
    # Lazy too, like the host's snapshot record: until both are durable, a restart
    # simply recovers from the previous stable checkpoint.
    (record,) = [e for e in of(out, Persist) if e.key == inst._key(b"s")]
    assert record.lazy is True
    stable = msgspec.msgpack.decode(record.value)
    assert stable[:2] == [4, STATE] and len(stable[2]) == 3


def restarted_without_the_payload_of(seq: int) -> PbftInstance:
    """Decided 1..6, then restarted with slot ``seq``'s payload lost (a lazy record)."""
    disk, inst = Disk(), instance()
    disk.apply(decide(inst, range(1, 7)))
    del disk.records[payload_key(inst, payload(seq))]
    restarted = disk.restart()
    out = restarted.start()
    assert restarted.last_decided == seq - 1 and sent(out, FetchPayload)
    return restarted


def test_a_stable_checkpoint_keeps_fetching_a_missing_payload_above_it():
    inst = restarted_without_the_payload_of(5)
    inst.make_checkpoint(4, STATE)
    for replica in (2, 3):
        inst.on_message(replica, checkpoint(replica))
    assert inst.low == 4
    out = inst.on_timer(inst._t_sync)
    assert [m.digest for m in sent(out, FetchPayload)] == [digest(payload(5))]


def test_a_stable_checkpoint_stops_the_fetching_of_a_missing_payload_below_it():
    inst = restarted_without_the_payload_of(3)
    for replica in (0, 2, 3):
        inst.on_message(replica, checkpoint(replica))
    inst.on_timer(inst._t_sync)
    inst.on_timer(inst._t_sync)  # stalled at 2: the checkpoint is adopted (state transfer)
    assert inst.low == 4
    assert sent(inst.on_timer(inst._t_sync), FetchPayload) == []


def test_a_stable_checkpoint_forgets_the_checkpoints_and_early_pre_prepares_below_it():
    inst = instance()
    inst.on_message(3, checkpoint(3, seq=8, state=digest(b"8")))
    inst.on_message(2, PrePrepare(0, 2, 4, digest(b"x"), b"x"))  # view 2, ahead of us
    inst.on_message(2, PrePrepare(0, 2, 6, digest(b"y"), b"y"))
    stable_at_4(inst)
    assert inst.checkpoints[2] == {}
    assert inst.checkpoints[3] == {8: checkpoint(3, 8, digest(b"8"))}
    assert inst.own_checkpoints == {}
    assert [k[1] for k in inst.future_preprepares] == [6]


def test_a_restart_after_a_stable_checkpoint_resumes_above_it():
    disk, inst = Disk(), instance()
    stable_at_4(inst, disk)
    disk.apply(decide(inst, range(5, 7)))
    restarted = disk.restart()
    assert (restarted.low, restarted.stable_digest) == (4, STATE)
    assert restarted.stable_proof == inst.stable_proof
    assert restarted.last_decided == 4 and sorted(restarted.slots) == [5, 6]
    out = restarted.start()
    assert decided_seqs(out) == [5, 6]  # the log above it runs again
    assert restarted.state_target is None and not of(out, NeedState)  # our state is its


def test_a_restart_before_the_deletions_were_written_still_forgets_the_log_below():
    """The deletion records are lazy: a crash may keep slot records below the stable
    checkpoint, which recovery then ignores."""
    disk, inst = Disk(), instance()
    disk.apply(decide(inst, range(1, 6)))
    out = stable_at_4(inst)
    disk.apply([e for e in out if isinstance(e, Persist) and e.value is not None])
    assert slot_key(inst, 2) in disk.records
    restarted = disk.restart()
    assert sorted(restarted.slots) == [5] and restarted.low == 4


def test_a_restart_with_a_state_older_than_the_stable_checkpoint_fetches_it():
    """Crashed after adopting stable checkpoint 4 but before its state arrived."""
    disk, inst = Disk(), instance()
    stable_at_4(inst, disk)
    restarted = disk.restart(state_seq=0)
    assert restarted.state_target == (4, STATE) and not restarted.repairing
    assert of(restarted.start(), NeedState) == [NeedState(4, STATE, [1, 2, 3])]


# -- restarts ------------------------------------------------------------------------------


def test_recovery_skips_the_records_of_the_host_and_of_other_instances():
    disk, inst = Disk(), instance()
    stable_at_4(inst, disk)
    disk.records[b"A record of the host"] = b"\x00"  # sorts first
    disk.records[b"I\x00\x00\x00\x00"] = b"\x00"  # our prefix, no kind: sorts first too
    disk.records[instance(inst=3)._key(b"s")] = b"\x00"
    restarted = disk.restart()
    assert (restarted.low, restarted.stable_proof) == (4, inst.stable_proof)


def test_a_replica_restarted_in_a_later_view_still_hands_out_its_new_view():
    """A replica asking what it missed gets our last NEW-VIEW, after a restart too."""
    from phalanx.protocols.pbft.messages import FetchCommitted, NewView, ViewChange

    def view_change(replica: int) -> ViewChange:
        vc = ViewChange(0, 1, replica, 0, b"", [], [], [])
        return msgspec.structs.replace(vc, sig=ORACLE.node_crypto(replica).sign(vc.signed_bytes()))

    nv = NewView(0, 1, [view_change(r) for r in (0, 2, 3)])
    nv = msgspec.structs.replace(nv, sig=ORACLE.node_crypto(1).sign(nv.signed_bytes()))
    disk, inst = Disk(), instance(me=2)
    disk.apply(inst.on_message(1, nv))
    restarted = disk.restart(me=2)
    assert (restarted.view, restarted.last_new_view) == (1, nv)
    out = restarted.on_message(3, FetchCommitted(0, 1, 64))
    assert [e.msg for e in out if isinstance(e, Send)] == [nv]


def test_a_backup_restarted_after_preparing_decides_on_two_others_commits():
    """Its COMMIT may be out (the prepared record was durable before it left): after the
    restart it counts, so COMMITs from 2 and 3 decide, as before the crash."""
    disk, inst = Disk(), instance()
    d = digest(payload(1))
    disk.apply(inst.on_message(0, PrePrepare(0, 0, 1, d, payload(1))))
    out = disk.apply(inst.on_message(2, Prepare(0, 0, 1, d)))
    assert of(out, Broadcast)[-1].msg == Commit(0, 0, 1, d)
    restarted = disk.restart()
    restarted.start()
    restarted.on_message(2, Commit(0, 0, 1, d))
    out = restarted.on_message(3, Commit(0, 0, 1, d))
    assert decided_seqs(out) == [1]


def test_a_backup_that_prepared_a_slot_only_in_an_earlier_view_needs_new_prepares_after_restart():
    """Slot 1 prepared in view 0 at replica 2, re-proposed in view 1 and not yet prepared
    there: after a restart, COMMITs of view 1 alone must not decide it at 2."""
    from phalanx.protocols.pbft.messages import NewView, SlotSummary, ViewChange

    d = digest(payload(1))
    disk, inst = Disk(), instance(me=2)
    disk.apply(inst.on_message(0, PrePrepare(0, 0, 1, d, payload(1))))
    disk.apply(inst.on_message(3, Prepare(0, 0, 1, d)))
    assert inst.slots[1].p_entry == (d, 0)

    def view_change(replica: int) -> ViewChange:
        entry = [SlotSummary(1, d, 0)]
        vc = ViewChange(0, 1, replica, 0, b"", [], entry, entry)
        return msgspec.structs.replace(vc, sig=ORACLE.node_crypto(replica).sign(vc.signed_bytes()))

    nv = NewView(0, 1, [view_change(r) for r in (0, 1, 3)])
    nv = msgspec.structs.replace(nv, sig=ORACLE.node_crypto(1).sign(nv.signed_bytes()))
    disk.apply(inst.on_message(1, nv))
    assert inst.view == 1 and inst.slots[1].prepared_view == 0  # not prepared in view 1
    restarted = disk.restart(me=2)
    restarted.start()
    out = restarted.on_message(0, Commit(0, 1, 1, d))
    out += restarted.on_message(3, Commit(0, 1, 1, d))
    assert decided_seqs(out) == [] and not sent(out, Commit)
    out = restarted.on_message(3, Prepare(0, 1, 1, d))  # now prepared in view 1
    assert sent(out, Commit) == [Commit(0, 1, 1, d)] and decided_seqs(out) == [1]
