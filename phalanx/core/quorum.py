"""Quorum sizes, computed in one place from n and f.

Every protocol asks this module; no quorum size is written as a literal elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Quorums:
    """Quorum sizes of a Byzantine system of ``n`` replicas tolerating ``f`` faults."""

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
        """2f+1: any two strong quorums intersect in at least one correct replica."""
        return 2 * self.f + 1

    @property
    def weak(self) -> int:
        """f+1: at least one member is correct."""
        return self.f + 1

    @property
    def prepare(self) -> int:
        """PREPAREs from distinct backups that, with the pre-prepare, make a request prepared."""
        return 2 * self.f

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

    def primary(self, view: int) -> int:
        return view % self.n
