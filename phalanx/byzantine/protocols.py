"""What the fuzzer needs to know about a protocol, by CLI name.

A :class:`FuzzProtocol` adds to the protocol's :class:`~phalanx.protocols.registry.ProtocolSpec`
the fuzzing knowledge: its message types (for the Borgesian generator), which field names
a signature's signer, protocol hints for the generator, protocol-aware Byzantine
strategies, random per-seed configurations, and the planted bugs its self-test must find.
Adding a protocol to the fuzzer means adding one adapter module and one entry here.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from phalanx.byzantine.behaviours import Log
from phalanx.byzantine.generate import Fixup
from phalanx.runtime.sim.simulator import Behaviour

StrategyFactory = Callable[[int, int, frozenset[int], Log | None], Behaviour]
"""``factory(replica, seed, disabled_actions, log) -> Behaviour``."""


@dataclass(frozen=True)
class FuzzProtocol:
    name: str
    messages: tuple[type, ...]
    """Every message type a Byzantine node can send (the Borgesian channels)."""
    make_options: Callable[[random.Random, str | None], Any]
    """``make_options(rng, planted_bug)``: a random protocol configuration for one seed,
    with the named planted bug switched on (or none)."""
    strategies: Mapping[str, StrategyFactory]
    """Protocol-aware Byzantine strategies by name (the Borgesian one is generic)."""
    planted_bugs: tuple[str, ...] = ()
    signer_field: str = "replica"
    fixups: Mapping[type, Fixup] = field(default_factory=dict)
    view_change_timeout: float = 0.5
    """Simulated seconds; scales GST and the liveness bound."""
    needs_lagging_replica: frozenset[str] = frozenset()
    """Strategies whose attack needs a correct replica that misses a view change: a plan
    drawing one also crashes a correct replica for a while (within the fault model)."""


def _pbft() -> FuzzProtocol:
    from phalanx.byzantine.pbft import fuzz_spec

    return fuzz_spec()


_FACTORIES: dict[str, Callable[[], FuzzProtocol]] = {"pbft": _pbft}
_CACHE: dict[str, FuzzProtocol] = {}


def fuzzable() -> list[str]:
    """Protocols the fuzzer knows."""
    return sorted(_FACTORIES)


def fuzz_protocol(name: str) -> FuzzProtocol:
    """The fuzzing adapter of protocol ``name``; ValueError naming the known ones."""
    spec = _CACHE.get(name)
    if spec is None:
        factory = _FACTORIES.get(name)
        if factory is None:
            raise ValueError(f"no fuzzer for protocol {name!r}; available: {', '.join(fuzzable())}")
        spec = _CACHE[name] = factory()
    return spec
