"""The new-view decision (``decide_new_view``) as a pure function of VIEW-CHANGE messages:
which prepared digest a slot keeps when several pass the safety rules, when the messages
decide nothing yet, and where the new view starts. n=4, f=1: quorums of 3.

The messages are taken as already validated (signatures, proofs, bounds): the instance
checks them before they reach this function (see test_pbft_core.py)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from phalanx.core.hashing import digest
from phalanx.core.quorum import Quorums
from phalanx.protocols.pbft.messages import SlotSummary, ViewChange
from phalanx.protocols.pbft.viewchange import NULL_DIGEST, decide_new_view

Q = Quorums(4, 1)
NEW_VIEW = 2


def view_change(
    replica: int,
    prepared: Sequence[tuple[int, bytes, int]] = (),
    preprepared: Sequence[tuple[int, bytes, int]] = (),
    checkpoint: tuple[int, bytes] = (0, b""),
) -> ViewChange:
    """A VIEW-CHANGE to view 2 with (seq, digest, view) P and Q entries."""
    return ViewChange(
        0, NEW_VIEW, replica, checkpoint[0], checkpoint[1], [],
        [SlotSummary(*e) for e in prepared], [SlotSummary(*e) for e in preprepared],
    )


def every_order(view_changes: list[ViewChange]) -> set[tuple]:
    """The decisions taken on every order of the same messages, as comparable tuples."""
    decisions = set()
    for order in itertools.permutations(view_changes):
        decision = decide_new_view(list(order), Q)
        decisions.add(None if decision is None else (
            decision.checkpoint_seq, decision.checkpoint_digest, tuple(decision.slots.items())
        ))
    return decisions


def ordered_pair(tag: str) -> tuple[bytes, bytes]:
    """Two digests, the smaller first (byte order)."""
    a, b = digest(f"{tag}:a".encode()), digest(f"{tag}:b".encode())
    return (a, b) if a < b else (b, a)


def test_two_prepared_digests_that_both_pass_are_decided_for_the_one_of_the_later_view():
    """Slot 1: ``early`` prepared in view 0 at replica 0, ``late`` in view 1 at replica 1
    (view 1 started with slot 1 empty, a trailing vacant slot). Both pass A1 and A2; the
    later view's digest is the one that may have committed, whatever the byte order of
    the digests and the order of the messages."""
    for early, late in (ordered_pair("later-view"), ordered_pair("later-view")[::-1]):
        vcs = [
            view_change(0, [(1, early, 0)], [(1, early, 0)]),
            view_change(1, [(1, late, 1)], [(1, late, 1)]),
            view_change(2, [], [(1, late, 1)]),
            view_change(3, [], [(1, early, 0)]),
        ]
        assert every_order(vcs) == {(0, b"", ((1, late),))}


def test_two_digests_prepared_in_one_view_are_decided_alike_on_every_replica():
    """A Byzantine primary equivocated in view 0 and each digest is claimed prepared by one
    replica and vouched for by two: both pass the rules. Every replica must pick the same
    one (the smaller digest), not whichever a set yields first (that order changes with
    the hash seed of each process: 16 pairs make a lucky match unlikely)."""
    for i in range(16):
        low, high = ordered_pair(f"tie {i}")
        vcs = [
            view_change(0, [(1, low, 0)], [(1, low, 0)]),
            view_change(1, [(1, high, 0)], [(1, high, 0)]),
            view_change(2, [], [(1, low, 0)]),
            view_change(3, [], [(1, high, 0)]),
        ]
        assert every_order(vcs) == {(0, b"", ((1, low),))}, i


def test_three_view_changes_of_which_two_prepared_different_digests_in_one_view_wait():
    """Two of three messages prepared different digests at slot 1 in view 0: neither has
    the 2f+1 consistent messages of A1, and only one prepared nothing (no null request):
    the decision waits for the fourth message."""
    a, b = ordered_pair("three")
    vcs = [
        view_change(0, [(1, a, 0)], [(1, a, 0)]),
        view_change(1, [(1, b, 0)], [(1, b, 0)]),
        view_change(2, [], [(1, a, 0), (1, b, 0)]),
    ]
    assert every_order(vcs) == {None}
    fourth = view_change(3)
    assert every_order([*vcs, fourth]) == {(0, b"", ((1, a),))}


def test_the_new_view_starts_at_the_highest_checkpoint_in_the_set_with_its_digest():
    """Replica 2 holds stable checkpoint 4 (digest ``state``), the others checkpoint 0:
    the decision starts at 4, takes its digest and the message that proves it, and
    ignores every entry at or below 4 (those slots are decided and collected)."""
    state = digest(b"state at 4")
    d = digest(b"batch 5")
    source = view_change(2, [(5, d, 1)], [(5, d, 1)], checkpoint=(4, state))
    vcs = [
        view_change(0, [(3, digest(b"old"), 1), (5, d, 1)], [(4, digest(b"old"), 1), (5, d, 1)]),
        view_change(1, [(4, digest(b"old"), 1)], [(4, digest(b"old"), 1)]),
        source,
    ]
    decision = decide_new_view(vcs, Q)
    assert decision is not None
    assert (decision.checkpoint_seq, decision.checkpoint_digest) == (4, state)
    assert decision.checkpoint_source is source
    assert decision.slots == {5: d}


def test_a_gap_below_a_prepared_slot_is_filled_with_the_null_request():
    d = digest(b"batch 3")
    vcs = [view_change(r, [(3, d, 1)], [(3, d, 1)]) for r in (0, 1)] + [view_change(2)]
    decision = decide_new_view(vcs, Q)
    assert decision is not None and decision.slots == {1: NULL_DIGEST, 2: NULL_DIGEST, 3: d}
