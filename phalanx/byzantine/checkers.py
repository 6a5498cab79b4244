"""Liveness after a global stabilization time (GST), in the simulator.

The safety checkers are :mod:`phalanx.safety`'s, chosen by each protocol's spec;
:class:`LivenessChecker` adds the one property a safety checker cannot see: once faults
stop at GST, every correct client's request commits within a bound.
"""

from __future__ import annotations

from phalanx.safety import SafetyViolation
from phalanx.sim.simulator import Simulation


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
