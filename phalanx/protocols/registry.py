"""The protocols phalanx can run, by their CLI name: one line per protocol.

Everything that depends on the protocol — config, runtime, simulator, bench, fuzzer —
asks :func:`protocol` for its :class:`~phalanx.protocols.spec.ProtocolSpec`. A protocol
kept outside this package (a plugin, or one used only in tests) is registered by naming
its spec in the environment: ``PHALANX_PROTOCOLS=package.module:SPEC[,...]`` (every
process of a cluster then knows it, replicas started by ``phalanx up`` included).
"""

from __future__ import annotations

import importlib
import os

from phalanx.protocols.pbft.spec import SPEC as PBFT
from phalanx.protocols.spec import ProtocolSpec

PLUGINS_ENV = "PHALANX_PROTOCOLS"

_SPECS: dict[str, ProtocolSpec] = {spec.name: spec for spec in (PBFT,)}


def register(spec: ProtocolSpec) -> None:
    """Make ``spec`` known by its name (ValueError if another spec has that name)."""
    known = _SPECS.get(spec.name)
    if known is not None and known is not spec:
        raise ValueError(f"a protocol named {spec.name!r} is registered already")
    _SPECS[spec.name] = spec


def unregister(name: str) -> None:
    """Forget the protocol ``name`` (tests that registered one for themselves)."""
    _SPECS.pop(name, None)


def _load_plugins() -> None:
    for path in filter(None, (p.strip() for p in os.environ.get(PLUGINS_ENV, "").split(","))):
        module, _, attribute = path.partition(":")
        spec = getattr(importlib.import_module(module), attribute or "SPEC")
        if not isinstance(spec, ProtocolSpec):
            raise TypeError(f"{PLUGINS_ENV}: {path} is not a ProtocolSpec")
        register(spec)


_load_plugins()


def available() -> list[str]:
    """The registered protocols' names, sorted."""
    return sorted(_SPECS)


def protocol(name: str) -> ProtocolSpec:
    """The spec of protocol ``name``; ValueError naming the available ones otherwise."""
    spec = _SPECS.get(name)
    if spec is None:
        raise ValueError(f"unknown protocol {name!r}; available: {', '.join(available())}")
    return spec
