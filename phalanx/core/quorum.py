"""Fault models and quorum sizes, computed in one place from n and f.

Every protocol asks this module; no quorum size is written as a literal elsewhere, and no
protocol computes f itself.

A Byzantine quorum must intersect every other quorum in at least f+1 replicas, so that
the intersection holds a correct one, and must be reachable with f replicas silent. For
n replicas tolerating f faults the smallest such size is ``ceil((n + f + 1) / 2)``: two
quorums of q share at least 2q - n >= f + 1 replicas. It is the familiar 2f+1 only when
n = 3f+1; with more replicas (n = 6, f = 1: 4 of 6) a fixed 2f+1 would let two disjoint
halves of the cluster each decide on their own. BFT-SMaRt sizes its quorums the same way.

A protocol whose replicas hold a trusted component that stops equivocation (a trusted
monotonic counter: Destiny's Linear Hybster) needs only n >= 2f+1 replicas, and quorums
that intersect in one replica: a majority, f+1 of 2f+1. So does a protocol that only
tolerates crashes.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Resilience:
    """A fault model: n replicas tolerate ``(n - 1) // replicas_per_fault`` faults."""

    name: str
    replicas_per_fault: int  # 3: Byzantine; 2: with a trusted component
    equivocation: bool = False
    """Can a faulty replica tell different replicas different things? Then two quorums
    must share f+1 replicas (one of them correct); otherwise one replica is enough.
    (A field, not the identity of :data:`BYZANTINE`: a copied or unpickled fault model
    must keep its quorum sizes.)"""

    def max_faults(self, n: int) -> int:
        """The largest f that ``n`` replicas tolerate (0 for n < 1)."""
        return max(0, (n - 1) // self.replicas_per_fault)

    def min_replicas(self, f: int) -> int:
        """The fewest replicas that tolerate ``f`` faults."""
        return self.replicas_per_fault * f + 1


BYZANTINE = Resilience("byzantine", 3, equivocation=True)
"""n >= 3f+1: Byzantine replicas that may equivocate."""
TRUSTED = Resilience("trusted component", 2)
"""n >= 2f+1: Byzantine replicas whose trusted component stops equivocation."""
CRASH = Resilience("crash", 2)
"""n >= 2f+1: replicas that may only stop (and restart from their disk)."""


@dataclass(frozen=True, slots=True)
class Quorums:
    """Quorum sizes of ``n`` replicas tolerating ``f`` faults under ``resilience``."""

    n: int
    f: int
    resilience: Resilience = BYZANTINE

    def __post_init__(self) -> None:
        if self.f < 0 or self.n < 1:
            raise ValueError(f"invalid system n={self.n} f={self.f}")
        need = self.resilience.min_replicas(self.f)
        if self.n < need:
            raise ValueError(
                f"n={self.n} cannot tolerate f={self.f} faults ({self.resilience.name}: "
                f"n >= {self.resilience.replicas_per_fault}f+1 = {need})"
            )

    @classmethod
    def for_n(cls, n: int, resilience: Resilience = BYZANTINE) -> Quorums:
        """The largest f that ``n`` replicas tolerate."""
        return cls(n, resilience.max_faults(n), resilience)

    @property
    def strong(self) -> int:
        """The quorum: any two intersect in a correct replica (Byzantine:
        ceil((n+f+1)/2), 2f+1 when n = 3f+1), or in one replica with a trusted
        component (a majority, f+1 when n = 2f+1); n - f replicas always form one."""
        if self.resilience.equivocation:
            return (self.n + self.f + 2) // 2
        return self.n // 2 + 1

    @property
    def weak(self) -> int:
        """f+1: at least one member is correct."""
        return self.f + 1

    @property
    def blocking(self) -> int:
        """n+f+1-strong: the smallest set that meets every strong quorum in f+1 replicas,
        so in a correct one (2f+1 when n = 3f+1); at most n-f, so reachable with f
        replicas silent."""
        return self.n + self.f + 1 - self.strong

    @property
    def reply(self) -> int:
        """Matching replies a client needs before it accepts a result."""
        return self.weak

    def primary(self, view: int) -> int:
        """The leader of ``view`` when leadership rotates round robin."""
        return view % self.n
