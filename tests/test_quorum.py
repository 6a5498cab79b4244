"""Quorum sizes: intersection in a correct replica and availability, for every n >= 3f+1."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from phalanx.core.quorum import Quorums


@st.composite
def systems(draw: st.DrawFn) -> tuple[int, int]:
    f = draw(st.integers(0, 40))
    n = draw(st.integers(3 * f + 1, 3 * f + 60))
    return n, f


@given(systems())
def test_two_strong_quorums_share_a_correct_replica_and_f_silent_replicas_cannot_block(nf):
    n, f = nf
    q = Quorums(n, f)
    assert 2 * q.strong - n >= f + 1  # intersection: at least one correct member
    assert q.strong <= n - f  # the n - f correct replicas alone form a quorum
    assert 2 * (q.strong - 1) - n < f + 1  # and no smaller size intersects safely


@pytest.mark.parametrize(
    ("n", "f", "strong", "blocking"),
    [(1, 0, 1, 1), (2, 0, 2, 1), (3, 0, 2, 2), (4, 0, 3, 2), (4, 1, 3, 3), (5, 1, 4, 3),
     (6, 1, 4, 4), (7, 1, 5, 4), (7, 2, 5, 5), (8, 2, 6, 5), (10, 3, 7, 7), (100, 33, 67, 67)],
)
def test_strong_quorum_is_ceil_of_n_plus_f_plus_one_over_two(n, f, strong, blocking):
    q = Quorums(n, f)
    assert q.strong == strong
    assert q.weak == q.reply == f + 1
    assert q.blocking == blocking  # n+f+1-strong: meets every strong quorum in f+1


@pytest.mark.parametrize(
    ("n", "f", "message"),
    [(3, 1, "n=3 cannot tolerate f=1"), (6, 2, "n=6 cannot tolerate f=2"),
     (9, 3, "n=9 cannot tolerate f=3"), (0, 0, "invalid system n=0 f=0"),
     (-1, 0, "invalid system n=-1 f=0"), (4, -1, "invalid system n=4 f=-1")],
)
def test_systems_below_3f_plus_1_or_degenerate_are_refused_naming_n_and_f(n, f, message):
    with pytest.raises(ValueError, match=message):
        Quorums(n, f)


@pytest.mark.parametrize(("n", "f"), [(1, 0), (3, 0), (4, 1), (6, 1), (7, 2), (9, 2), (10, 3)])
def test_for_n_takes_the_largest_tolerated_f(n, f):
    assert Quorums.for_n(n) == Quorums(n, f)


def test_primary_rotates_through_every_replica():
    q = Quorums(5, 1)
    assert [q.primary(v) for v in range(7)] == [0, 1, 2, 3, 4, 0, 1]


@pytest.mark.parametrize("n", [7, 10, 13])
def test_byzantine_quorum_sizes_survive_a_copy_of_the_fault_model(n):
    """The quorum rule hangs on what the fault model says, not on which object it is: a
    pickled or deep-copied Quorums (a process boundary, a copied config) kept the
    Byzantine model's name and numbers but got majority quorums — n=7, f=2: 4 instead of
    5, two of which share one replica, possibly a faulty one."""
    import copy
    import pickle

    from phalanx.core.quorum import BYZANTINE, CRASH

    f = BYZANTINE.max_faults(n)
    original = Quorums(n, f)
    for q in (pickle.loads(pickle.dumps(original)), copy.deepcopy(original),
              Quorums(n, f, copy.copy(BYZANTINE))):
        assert q.strong == original.strong
        assert 2 * q.strong - n >= f + 1
    assert Quorums(n, 2, copy.deepcopy(CRASH)).strong == n // 2 + 1
