"""Checkers per protocol, and liveness after a global stabilization time (GST).

Each protocol registers the safety checkers the simulator runs after every step
(:func:`register_checkers`; PBFT registers agreement, validity, exactly-once, state
roots and its own alarms in :mod:`phalanx.byzantine.pbft`). :class:`LivenessChecker`
adds the one property a safety checker cannot see: once faults stop at GST, every
correct client's request commits within a bound.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from phalanx.runtime.sim.checkers import Checker, SafetyViolation
from phalanx.runtime.sim.simulator import Simulation

_REGISTRY: dict[str, Callable[[], list[Checker]]] = {}


def register_checkers(protocol: str, factory: Callable[[], list[Checker]]) -> None:
    """``factory()`` builds fresh checkers for one simulation of ``protocol``."""
    _REGISTRY[protocol] = factory


def checkers_for(protocol: str) -> list[Checker]:
    """Fresh instances of the checkers ``protocol`` registered."""
    from phalanx.byzantine.protocols import fuzz_protocol

    fuzz_protocol(protocol)  # importing a protocol's adapter registers its checkers
    factory = _REGISTRY.get(protocol)
    if factory is None:
        raise ValueError(f"protocol {protocol!r} registered no checkers")
    return factory()


class AlarmChecker(Checker):
    """Fails when a correct replica reports one of ``reasons`` as ``Dropped``: the
    protocol's own detectors of states that are impossible while at most f replicas are
    faulty (PBFT: a stable checkpoint contradicting its own, a new view contradicting a
    commit)."""

    property_name = "protocol-alarm"

    def __init__(self, reasons: Iterable[str]) -> None:
        super().__init__()
        self.reasons = frozenset(reasons)

    def on_dropped(self, replica: int, reason: str) -> None:
        if reason in self.reasons:
            raise self.violation(f"correct replica {replica} raised alarm {reason!r}")


class LivenessViolation(SafetyViolation):
    """A correct client's request did not commit within the bound after GST."""


class LivenessChecker:
    """After ``gst`` (faults and partitions have stopped), every pending request of a
    correct client must complete within ``bound`` simulated seconds of
    ``max(submitted, gst)``. :meth:`install` checks every ``period`` simulated seconds."""

    property_name = "liveness"

    def __init__(self, gst: float, bound: float, period: float = 0.25) -> None:
        if bound <= 0 or period <= 0:
            raise ValueError("bound and period must be positive")
        self.gst = gst
        self.bound = bound
        self.period = period

    def install(self, sim: Simulation, until: float) -> None:
        """Check ``sim`` from GST on, every ``period``, up to ``until``."""
        at = max(self.gst, sim.now)

        def tick(s: Simulation) -> None:
            self.check(s)
            if s.now + self.period <= until:
                s.call_at(s.now + self.period, tick)

        sim.call_at(at, tick)

    def check(self, sim: Simulation) -> None:
        """Raise :class:`LivenessViolation` if some client waits beyond the bound."""
        for stuck in sim.stuck_clients():
            if stuck.waiting_since is None:
                continue
            deadline = max(stuck.waiting_since, self.gst) + self.bound
            if sim.now > deadline:
                raise LivenessViolation(
                    self.property_name,
                    f"client {stuck.client_index} waits for request {stuck.pending_timestamp} "
                    f"since t={stuck.waiting_since:.3f}s, beyond GST {self.gst:.3f}s + "
                    f"{self.bound:.1f}s",
                    sim.seed,
                    sim.now,
                )
