"""What the fuzzer needs to know about a protocol beyond its spec: its fuzz adapter.

A protocol's :class:`~phalanx.protocols.spec.ProtocolSpec` names its adapter by import
path (``spec.fuzz``: the adapter depends on the simulator and on this package, which sit
above the protocol); :func:`fuzz_adapter` loads it. A :class:`FuzzAdapter` holds the
fuzzing knowledge: hints for the Borgesian generator (which field names a signature's
signer, fixups that make generated messages well-formed enough to reach deep code),
protocol-aware Byzantine strategies, and random per-seed configurations.
"""

from __future__ import annotations

import importlib
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from phalanx.byzantine.behaviours import Log, Switches
from phalanx.byzantine.generate import Fixup
from phalanx.protocols.registry import available, protocol
from phalanx.sim.behaviour import Behaviour

StrategyFactory = Callable[[int, int, Switches, Log | None], Behaviour]
"""``factory(replica, seed, disabled_actions, log) -> Behaviour``."""


@dataclass(frozen=True)
class FuzzAdapter:
    make_options: Callable[[random.Random], Any]
    """``make_options(rng)``: a random protocol configuration for one seed."""
    strategies: Mapping[str, StrategyFactory]
    """Protocol-aware Byzantine strategies by name (the Borgesian one is generic)."""
    signer_field: str = "replica"
    fixups: Mapping[type, Fixup] = field(default_factory=dict)
    view_change_timeout: float = 0.5
    """Simulated seconds; scales GST and the liveness bound."""
    planted_bugs: Mapping[str, Callable[..., Any]] = field(default_factory=dict)
    """Deliberate bugs for the fuzzer's self-test: name -> ``make_replica`` (the spec's
    signature) building replicas that have the bug."""
    needs_lagging_replica: frozenset[str] = frozenset()
    """Strategies whose attack needs a correct replica that misses a view change: a plan
    drawing one also crashes a correct replica for a while (within the fault model)."""


_CACHE: dict[str, FuzzAdapter] = {}


def fuzzable() -> list[str]:
    """Protocols with a fuzz adapter."""
    return [name for name in available() if protocol(name).fuzz]


def fuzz_adapter(name: str) -> FuzzAdapter:
    """The fuzz adapter of protocol ``name``; ValueError naming the fuzzable ones."""
    adapter = _CACHE.get(name)
    if adapter is None:
        path = protocol(name).fuzz
        if not path:
            raise ValueError(f"no fuzzer for protocol {name!r}; available: "
                             f"{', '.join(fuzzable())}")
        module, _, attribute = path.partition(":")
        adapter = getattr(importlib.import_module(module), attribute)
        if not isinstance(adapter, FuzzAdapter):
            raise TypeError(f"{path} is not a FuzzAdapter")
        _CACHE[name] = adapter
    return adapter
