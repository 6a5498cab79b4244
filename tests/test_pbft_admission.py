"""What a PBFT instance lets in: the admission of normal-case messages (views, watermarks,
senders), of VIEW-CHANGEs (bounds, one parked per replica, validity) and of NEW-VIEWs
(whose signature, which VIEW-CHANGEs, which view). Every refusal is a ``Dropped`` effect
that names the reason and the sender it is counted against.

n=4, f=1 (quorums of 3), a window of 8, the simulator's symbolic signatures. The
instance under test is replica 1 unless a test says otherwise."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import msgspec
import pytest

from phalanx.byzantine.pbft_planted import PLANTED_BUGS
from phalanx.core.effects import Broadcast, Dropped, Send
from phalanx.core.hashing import digest
from phalanx.core.quorum import Quorums
from phalanx.protocols.pbft.config import PbftConfig
from phalanx.protocols.pbft.instance import PbftInstance
from phalanx.protocols.pbft.messages import (
    Checkpoint,
    Commit,
    FetchCommitted,
    NewView,
    Prepare,
    PrePrepare,
    SlotSummary,
    ViewChange,
)
from phalanx.sim.crypto import SymbolicOracle

Q = Quorums(4, 1)
CONFIG = PbftConfig(checkpoint_interval=4, window=8, view_change_timeout=1.0)
ORACLE = SymbolicOracle(random.Random(5), 4)
X = digest(b"x")
Y = digest(b"y")


def instance(me: int = 1, config: PbftConfig = CONFIG, bug: str | None = None) -> PbftInstance:
    """Replica ``me``'s instance, with the planted ``bug`` if given."""
    cls = PbftInstance if bug is None else PLANTED_BUGS[bug].replica_class.instance_class
    return cls(0, me, Q, ORACLE.node_crypto(me), config, lambda p: True)


def of(effects: list[Any], kind: type) -> list[Any]:
    return [e for e in effects if isinstance(e, kind)]


def sent(effects: list[Any], kind: type) -> list[Any]:
    return [e.msg for e in of(effects, Broadcast) if isinstance(e.msg, kind)]


def pre_prepare(seq: int = 1, view: int = 0, data: bytes = b"x") -> PrePrepare:
    return PrePrepare(0, view, seq, digest(data), data)


def view_change(
    replica: int,
    new_view: int,
    prepared: Sequence[SlotSummary] = (),
    preprepared: Sequence[SlotSummary] = (),
    checkpoint: tuple[int, bytes, list[Checkpoint]] = (0, b"", []),
    instance_id: int = 0,
) -> ViewChange:
    vc = ViewChange(instance_id, new_view, replica, *checkpoint, list(prepared), list(preprepared))
    return msgspec.structs.replace(vc, sig=ORACLE.node_crypto(replica).sign(vc.signed_bytes()))


def new_view(view: int, vcs: list[ViewChange], signer: int | None = None) -> NewView:
    nv = NewView(0, view, vcs)
    signer = Q.primary(view) if signer is None else signer
    return msgspec.structs.replace(nv, sig=ORACLE.node_crypto(signer).sign(nv.signed_bytes()))


def in_view(inst: PbftInstance, view: int) -> PbftInstance:
    """Install ``view`` at ``inst`` with an empty NEW-VIEW of replicas other than it."""
    others = [r for r in range(4) if r != inst.me][:3]
    nv = new_view(view, [view_change(r, view) for r in others])
    inst.on_message(others[0], nv)
    assert inst.view == view and not inst.in_view_change
    return inst


def checkpoint(replica: int, seq: int = 4, state: bytes = digest(b"state at 4")) -> Checkpoint:
    cp = Checkpoint(0, seq, state, replica)
    return msgspec.structs.replace(cp, sig=ORACLE.node_crypto(replica).sign(cp.signed_bytes()))


def time_out(inst: PbftInstance) -> list[Any]:
    inst.timer_armed = True  # as if work had been pending
    return inst.on_timer(inst.progress_timer)


# -- normal-case messages -------------------------------------------------------------------


def test_a_pre_prepare_two_views_ahead_waits_for_its_new_view_three_views_ahead_is_dropped():
    inst = instance()
    early = pre_prepare(view=2)
    out = inst.on_message(2, early)  # primary of view 2, which may overtake its NEW-VIEW
    assert of(out, Dropped) == [] and not sent(out, Prepare)
    assert of(inst.on_message(3, pre_prepare(view=3)), Dropped) == [Dropped("future_view", 3)]
    vcs = [view_change(r, 2) for r in (0, 2, 3)]
    out = inst.on_message(2, new_view(2, vcs))
    assert inst.view == 2
    assert sent(out, Prepare) == [Prepare(0, 2, 1, X)]  # the early pre-prepare, now


def test_normal_case_messages_of_an_earlier_view_are_stale():
    inst = in_view(instance(), 1)
    for msg in (pre_prepare(view=0), Prepare(0, 0, 1, X), Commit(0, 0, 1, X)):
        assert of(inst.on_message(0, msg), Dropped) == [Dropped("stale_view", 0)]


def test_the_watermarks_admit_slots_above_the_stable_checkpoint_up_to_the_window():
    inst = instance()
    assert of(inst.on_message(0, pre_prepare(seq=8)), Dropped) == []  # the high mark
    assert of(inst.on_message(0, pre_prepare(seq=9)), Dropped) == [
        Dropped("outside_watermarks", 0)
    ]
    assert of(inst.on_message(2, Commit(0, 0, 0, X)), Dropped) == [Dropped("stale_slot", 2)]
    assert inst.max_seen == 9  # a slot beyond the window still says we may be behind


def test_only_the_primary_of_the_message_view_pre_prepares_and_it_never_prepares():
    inst = in_view(instance(me=2), 1)  # primary 1
    assert of(inst.on_message(0, pre_prepare(view=1)), Dropped) == [
        Dropped("preprepare_not_from_primary", 0)
    ]
    assert of(inst.on_message(1, Prepare(0, 1, 1, X)), Dropped) == [
        Dropped("prepare_from_primary", 1)
    ]
    assert sent(inst.on_message(1, pre_prepare(view=1)), Prepare) == [Prepare(0, 1, 1, X)]


@pytest.mark.parametrize("src", [-1, 4, 9, 1])
def test_a_message_from_no_other_replica_is_dropped_as_an_unknown_sender(src):
    assert instance().on_message(src, pre_prepare()) == [Dropped("unknown_sender", src)]


def test_a_message_of_no_pbft_kind_is_dropped_against_its_sender():
    assert instance().on_message(2, "hello") == [Dropped("unexpected_message", 2)]


@pytest.mark.parametrize(
    ("messages", "refusal"),
    [
        ([pre_prepare(), pre_prepare()], Dropped("duplicate", 0)),
        ([pre_prepare(), pre_prepare(data=b"other")], Dropped("equivocation", 0)),
        ([PrePrepare(0, 0, 1, digest(b"other"), b"x")], Dropped("bad_digest", 0)),
        ([pre_prepare(data=b"evil")], Dropped("invalid_payload", 0)),
    ],
)
def test_a_refused_pre_prepare_is_counted_against_the_primary(messages, refusal):
    inst = PbftInstance(0, 1, Q, ORACLE.node_crypto(1), CONFIG, lambda p: p != b"evil")
    out = [e for m in messages for e in inst.on_message(0, m)]
    assert of(out, Dropped) == [refusal]


def test_with_the_planted_digest_bug_a_pre_prepare_whose_digest_lies_is_prepared():
    lying = PrePrepare(0, 0, 1, digest(b"other"), b"x")
    assert sent(instance(bug="preprepare_digest").on_message(0, lying), Prepare)
    assert not sent(instance().on_message(0, lying), Prepare)


def test_a_pre_prepare_of_the_view_being_changed_to_waits_for_its_new_view():
    inst = instance(me=2)
    time_out(inst)  # to view 1, primary 1
    out = inst.on_message(1, pre_prepare(view=1))
    assert of(out, Dropped) == [] and not sent(out, Prepare)
    out = inst.on_message(1, new_view(1, [view_change(r, 1) for r in (0, 1, 3)]))
    assert Prepare(0, 1, 1, X) in sent(out, Prepare)


def test_early_pre_prepares_are_kept_up_to_two_windows():
    """In a view change to 1 a replica may see pre-prepares of views 1, 2 and 3 (24 slots
    of a window of 8): it keeps 16, what two views ahead of an installed view hold."""
    inst = instance(me=0)
    time_out(inst)  # to view 1
    for view in (1, 2, 3):
        for seq in range(1, 9):
            inst.on_message(Q.primary(view), pre_prepare(seq, view, b"%d" % seq))
    assert len(inst.future_preprepares) == 2 * CONFIG.window


@pytest.mark.parametrize("kind", [Prepare, Commit])
def test_a_repeated_or_changed_vote_is_counted_against_its_sender(kind):
    inst = instance()
    inst.on_message(2, kind(0, 0, 1, X))
    assert of(inst.on_message(2, kind(0, 0, 1, X)), Dropped) == [Dropped("duplicate_vote", 2)]
    assert of(inst.on_message(2, kind(0, 0, 1, Y)), Dropped) == [Dropped("equivocation", 2)]


def test_a_replica_that_repeats_its_vote_is_answered_with_ours():
    """It repeats a vote when stuck on the slot: it may have lost our votes."""
    inst = instance()
    inst.on_message(0, pre_prepare())
    inst.on_message(2, Prepare(0, 0, 1, X))  # prepared: our COMMIT is out
    out = inst.on_message(2, Prepare(0, 0, 1, X))
    assert [(e.dest, e.msg) for e in of(out, Send)] == [
        (2, Prepare(0, 0, 1, X)), (2, Commit(0, 0, 1, X))
    ]


def test_f_plus_one_replicas_in_a_later_view_make_a_replica_ask_what_it_missed():
    inst = instance(me=2)
    out = inst.on_message(0, Prepare(0, 2, 1, X))
    assert not sent(out, FetchCommitted)  # one replica ahead may be lying
    out = inst.on_message(3, Prepare(0, 2, 1, X))
    assert sent(out, FetchCommitted)


def test_a_checkpoint_is_counted_against_its_sender_and_ignored_at_or_below_the_low_mark():
    inst = instance()
    forged = msgspec.structs.replace(checkpoint(3), sig=b"forged")
    assert inst.on_message(3, forged) == [Dropped("bad_signature", 3)]
    for replica in (0, 2, 3):
        inst.on_message(replica, checkpoint(replica, seq=8, state=digest(b"8")))
    inst.on_timer(inst._t_sync)
    inst.on_timer(inst._t_sync)
    assert inst.low == 8
    at_low = checkpoint(2, seq=8, state=digest(b"8"))
    late = [at_low, msgspec.structs.replace(at_low, sig=b"forged"), forged]  # not counted
    assert [e for m in late for e in inst.on_message(2, m)] == []


def test_with_the_planted_checkpoint_bug_any_signature_counts_but_only_from_replicas():
    inst = instance(bug="checkpoint_signature")
    unsigned = [msgspec.structs.replace(checkpoint(0), replica=r, sig=b"") for r in (0, 2, 3, 4)]
    assert inst.checkpoint_proof_valid(4, digest(b"state at 4"), unsigned[:3])
    assert not inst.checkpoint_proof_valid(4, digest(b"state at 4"), unsigned[1:])
    assert not instance().checkpoint_proof_valid(4, digest(b"state at 4"), unsigned[:3])


# -- VIEW-CHANGEs ---------------------------------------------------------------------------


def test_a_view_change_more_than_64_n_views_ahead_is_dropped_as_a_future_view():
    inst = instance(me=2)
    far = 64 * Q.n
    assert of(inst.on_message(3, view_change(3, far)), Dropped) == []
    assert of(inst.on_message(3, view_change(3, far + 1)), Dropped) == [
        Dropped("future_view", 3)
    ]


def test_a_replica_parks_only_its_latest_view_change_for_the_views_ahead():
    """A Byzantine replica that sends VIEW-CHANGEs for ten views ahead holds one slot."""
    inst = instance(me=2)
    for view in range(1, 11):
        inst.on_message(3, view_change(3, view))
    inst.on_message(3, view_change(3, 4))  # an older one, after the latest: ignored
    parked = {v: sorted(rs) for v, rs in inst.view_changes.items() if rs}
    assert parked == {10: [3]}


def test_f_plus_one_replicas_ahead_take_a_replica_to_the_lower_of_their_views():
    inst = instance(me=2)
    inst.on_message(0, view_change(0, 2))
    assert inst.view == 0
    inst.on_message(3, view_change(3, 1))  # not ignored for being below 0's view 2
    assert (inst.view, inst.in_view_change) == (1, True)


def test_a_view_change_for_the_current_view_counts_although_its_sender_is_already_ahead():
    """Replica 1, primary of view 1, changes to it. Replica 3 has moved on to view 2 but
    its VIEW-CHANGE for view 1 (sent before, arriving after) still completes the quorum
    that lets 1 start view 1: nothing it sends later takes it back out."""
    primary = instance(me=1)
    time_out(primary)  # to view 1
    primary.on_message(3, view_change(3, 2))
    out = primary.on_message(3, view_change(3, 1))
    out += primary.on_message(2, view_change(2, 1))
    assert [sorted(vc.replica for vc in nv.view_changes) for nv in sent(out, NewView)] == [
        [1, 2, 3]
    ]


def test_a_later_view_change_keeps_the_senders_one_for_the_view_being_changed_to():
    primary = instance(me=1)
    time_out(primary)  # to view 1
    primary.on_message(3, view_change(3, 1))
    primary.on_message(3, view_change(3, 2))
    out = primary.on_message(2, view_change(2, 1))
    assert [sorted(vc.replica for vc in nv.view_changes) for nv in sent(out, NewView)] == [
        [1, 2, 3]
    ]


def test_an_invalid_view_change_is_dropped_and_counted_against_its_sender():
    forged = msgspec.structs.replace(view_change(3, 1), replica=0)
    assert of(instance(me=2).on_message(3, forged), Dropped) == [Dropped("bad_view_change", 3)]


# -- NEW-VIEWs ------------------------------------------------------------------------------


def test_a_new_view_for_an_earlier_or_the_installed_view_changes_nothing():
    inst = in_view(instance(me=2), 2)
    again = new_view(2, [view_change(r, 2) for r in (0, 1, 3)])
    assert inst.on_message(0, again) == []
    older = new_view(1, [view_change(r, 1) for r in (0, 1, 3)])
    assert inst.on_message(1, older) == [] and inst.view == 2


def test_a_new_view_signed_by_another_than_its_primary_is_dropped_against_its_sender():
    inst = instance(me=2)
    nv = new_view(1, [view_change(r, 1) for r in (0, 1, 3)], signer=3)
    assert inst.on_message(3, nv) == [Dropped("bad_new_view_signature", 3)]


def test_a_new_view_built_from_view_changes_for_another_view_is_refused():
    inst = instance(me=1)
    nv = new_view(2, [view_change(r, 1) for r in (0, 2, 3)])
    assert of(inst.on_message(2, nv), Dropped) == [Dropped("bad_new_view", 2)]
    assert inst.view == 0


def test_a_new_view_with_too_few_view_changes_to_decide_is_refused():
    inst = instance(me=2)
    nv = new_view(1, [view_change(r, 1) for r in (0, 3)])
    assert of(inst.on_message(0, nv), Dropped) == [Dropped("bad_new_view", 0)]
    assert inst.view == 0


def test_with_the_planted_link_rule_only_the_primary_may_send_the_new_view_of_our_view():
    """The planted bug ``unsigned_new_view`` keeps the old rule: no signature, but a
    NEW-VIEW for the view we are changing to must come on the primary's link."""
    inst = instance(me=2, bug="unsigned_new_view")
    time_out(inst)  # to view 1
    unsigned = NewView(0, 1, [view_change(r, 1) for r in (0, 2, 3)])
    assert of(inst.on_message(3, unsigned), Dropped) == [Dropped("new_view_not_from_primary", 3)]
    inst.on_message(1, unsigned)
    assert inst.view == 1 and not inst.in_view_change



# -- what a VIEW-CHANGE may carry -------------------------------------------------------------


STABLE_4 = (4, digest(b"state at 4"), [checkpoint(r) for r in (0, 2, 3)])


def entries(*triples: tuple[int, bytes, int]) -> list[SlotSummary]:
    return [SlotSummary(*t) for t in triples]


def admitted(vc: ViewChange) -> bool:
    """Does replica 2, at view 0, take replica 3's VIEW-CHANGE?"""
    out = instance(me=2).on_message(3, vc)
    assert of(out, Dropped) in ([], [Dropped("bad_view_change", 3)])
    return not of(out, Dropped)



@pytest.mark.parametrize(
    ("case", "prepared", "preprepared", "checkpoint_"),
    [
        ("a prepared entry at the checkpoint", entries((0, X, 0)), [], (0, b"", [])),
        ("a prepared entry beyond the window", entries((9, X, 0)), [], (0, b"", [])),
        ("a prepared entry of the new view", entries((1, X, 1)), [], (0, b"", [])),
        ("two prepared entries for one slot", entries((1, X, 0), (1, Y, 0)), [], (0, b"", [])),
        ("a pre-prepared entry at the checkpoint", [], entries((4, X, 0)), STABLE_4),
        ("a pre-prepared entry beyond the window", [], entries((13, X, 0)), STABLE_4),
        ("a pre-prepared entry of the new view", [], entries((5, X, 1)), STABLE_4),
        ("a pre-prepared digest twice in one slot", [], entries((5, X, 0), (5, X, 0)), STABLE_4),
        ("five pre-prepared digests in one slot", [],
         entries(*((5, digest(b"%d" % i), 0) for i in range(5))), STABLE_4),
        ("a checkpoint proof of f+1", [], [], (4, STABLE_4[1], STABLE_4[2][:2])),
    ],
)
def test_a_view_change_is_refused_with(case, prepared, preprepared, checkpoint_):
    assert not admitted(view_change(3, 1, prepared, preprepared, checkpoint_)), case


def test_a_view_change_may_fill_its_window_up_to_the_high_mark():
    """Entries up to checkpoint + window, four pre-prepared digests per slot, a
    checkpoint proof signed by all n replicas: all within bounds."""
    q_entries = entries(*((12, digest(b"%d" % i), 0) for i in range(4)))
    everyone = (4, STABLE_4[1], [checkpoint(r) for r in range(4)])
    assert admitted(view_change(3, 1, entries((12, X, 0)), q_entries, everyone))
    assert admitted(view_change(3, 1, entries((8, X, 0)), entries((8, X, 0))))


def test_a_view_change_naming_no_replica_is_refused():
    vc = view_change(3, 1)
    for replica in (4, 9):
        assert not admitted(msgspec.structs.replace(vc, replica=replica))


def test_with_the_planted_view_change_proof_bug_an_unsigned_view_change_is_taken():
    unsigned = msgspec.structs.replace(view_change(3, 1), sig=b"")
    assert of(instance(me=2, bug="view_change_proof").on_message(3, unsigned), Dropped) == []
    assert not admitted(unsigned)
    nobody = msgspec.structs.replace(unsigned, replica=4)  # still only from replicas
    assert of(instance(me=2, bug="view_change_proof").on_message(3, nobody), Dropped) == [
        Dropped("bad_view_change", 3)
    ]
