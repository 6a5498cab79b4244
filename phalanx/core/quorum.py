"""Quorum sizes, computed in one place from n and f.

Every protocol asks this module; no quorum size is written as a literal elsewhere.

A Byzantine quorum must intersect every other quorum in at least f+1 replicas, so that
the intersection holds a correct one, and must be reachable with f replicas silent. For
n replicas tolerating f faults the smallest such size is ``ceil((n + f + 1) / 2)``: two
quorums of q share at least 2q - n >= f + 1 replicas. It is the familiar 2f+1 only when
n = 3f+1; with more replicas (n = 6, f = 1: 4 of 6) a fixed 2f+1 would let two disjoint
halves of the cluster each decide on their own. BFT-SMaRt sizes its quorums the same way.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Quorums:
    """Quorum sizes of a Byzantine system of ``n`` replicas tolerating ``f`` faults
    (``n >= 3f + 1``)."""

    n: int
    f: int

    def __post_init__(self) -> None:
        if self.f < 0 or self.n < 1:
            raise ValueError(f"invalid system n={self.n} f={self.f}")
        if self.n < 3 * self.f + 1:
            raise ValueError(f"n={self.n} cannot tolerate f={self.f} Byzantine faults (n < 3f+1)")

    @classmethod
    def for_n(cls, n: int) -> Quorums:
        """The largest f that ``n`` replicas tolerate."""
        return cls(n, (n - 1) // 3)

    @property
    def strong(self) -> int:
        """ceil((n+f+1)/2): any two strong quorums intersect in at least one correct
        replica (2f+1 when n = 3f+1)."""
        return (self.n + self.f + 2) // 2

    @property
    def weak(self) -> int:
        """f+1: at least one member is correct."""
        return self.f + 1

    @property
    def prepare(self) -> int:
        """PREPAREs from distinct backups that, with the pre-prepare, make a request
        prepared: a strong quorum counting the primary."""
        return self.strong - 1

    @property
    def commit(self) -> int:
        return self.strong

    @property
    def checkpoint(self) -> int:
        return self.strong

    @property
    def view_change(self) -> int:
        return self.strong

    @property
    def reply(self) -> int:
        """Matching replies a client needs before it accepts a result."""
        return self.weak

    @property
    def blocking(self) -> int:
        """n+f+1-strong (2f+1 when n = 3f+1, never more than n-f): a set this large meets
        every strong quorum in at least f+1 replicas, so in a correct one. If each member
        refuses a value for good (a correct one never votes for it), no strong quorum
        can form on it."""
        return self.n + self.f + 1 - self.strong

    def primary(self, view: int) -> int:
        return view % self.n
