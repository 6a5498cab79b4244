"""Byzantine behaviours: what a faulty replica does around its own, unmodified core.

:class:`Behaviour` is the honest base of the hooks the simulator calls
(:class:`~phalanx.sim.simulator.ByzantineHooks`); :class:`Silent` and
:class:`FilterOutgoing` are the two that every protocol can use as they are. The
protocol-aware strategies (equivocation, Twins, the Borgesian fuzzer's) build on
:class:`Behaviour` in :mod:`phalanx.byzantine`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from phalanx.sim.simulator import NodeId, Simulation


class Behaviour:
    """Hooks that make a replica Byzantine. The base class behaves honestly.

    The replica's own core still runs; a behaviour watches and rewrites around it:
    - :meth:`on_deliver` sees every message before the core; returning ``False`` hides it;
    - :meth:`on_timer` likewise for timer firings;
    - :meth:`filter` rewrites each outgoing message, per destination (a replica id or a
      client id): return ``[]`` to stay silent, other messages to equivocate.
    A behaviour may send forged messages with :meth:`Simulation.inject` and sign as any
    Byzantine replica with :meth:`Simulation.byzantine_crypto`.
    """

    def on_deliver(self, sim: Simulation, src: NodeId, msg: Any) -> bool | None:
        """Called before the core sees ``msg`` from ``src``; ``False`` suppresses it."""
        return None

    def on_timer(self, sim: Simulation, name: str) -> bool | None:
        """Called before the core's timer ``name`` fires; ``False`` suppresses it."""
        return None

    def filter(self, dest: NodeId, msg: Any) -> list[Any]:
        """The messages actually sent to ``dest`` in place of ``msg``."""
        return [msg]


class Silent(Behaviour):
    """A replica that listens and computes but never sends anything."""

    def filter(self, dest: NodeId, msg: Any) -> list[Any]:
        return []


class FilterOutgoing(Behaviour):
    """Rewrites outgoing messages with ``fn(dest, msg) -> list[msg]`` — e.g. a primary that
    sends different PrePrepares to different backups."""

    def __init__(self, fn: Callable[[NodeId, Any], list[Any]]) -> None:
        self._fn = fn

    def filter(self, dest: NodeId, msg: Any) -> list[Any]:
        return self._fn(dest, msg)
