"""phalanx's architecture, checked: its modules import each other in one direction, from
the pure building blocks at the bottom to the command at the top.

:data:`LAYERS` is the architecture in one table, bottom to top. A module may import
modules of its own layer or of a layer below, never above; no modules import each other
in a circle, nor do the packages and modules the table names; the two drivers stand side
by side without importing each other; and a protocol core imports nothing but the layers
below the protocols (and its own package, and the spec it implements).

Every import counts, at module level or inside a function (deferred imports are still
dependencies), read from the source with :mod:`ast`. Imports made by :mod:`importlib`
(protocol plugins named in ``PHALANX_PROTOCOLS``, a protocol spec's fuzz adapter named by
its import path) are not seen: naming a module in a string is how a lower layer lets a
higher one be found without importing it.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "phalanx"

LAYERS: tuple[tuple[str, ...], ...] = (
    # 1. messages, effects, quorums, node interfaces; the LMDB store; exit statuses
    ("phalanx.core", "phalanx.storage", "phalanx.exit_codes"),
    # 2. crypto; the state-machine interface and the KV store; safety properties; what
    #    the drivers and the bench measure with (accounting, RTT matrices, percentiles)
    ("phalanx.crypto", "phalanx.statemachine", "phalanx.safety", "phalanx.measure"),
    # 3. the protocol-independent replica host; the ledger application
    ("phalanx.host", "phalanx.ledger"),
    # 4. the ordering protocols: pure state machines, their spec and registry
    ("phalanx.protocols",),
    # 5. the cluster's configuration
    ("phalanx.config",),
    # 6. the two drivers of the cores, side by side: asyncio and the simulator
    ("phalanx.runtime", "phalanx.sim"),
    # 7. the HTTP API, the client SDK, Byzantine testing
    ("phalanx.api", "phalanx.client", "phalanx.byzantine"),
    # 8. composition roots: a replica process, a local cluster, the demos, 'phalanx sim'
    ("phalanx.launcher", "phalanx.cluster", "phalanx.demo", "phalanx.simrun"),
    # 9. benchmarks, calibration and the lab; the reliability campaigns
    ("phalanx.bench", "phalanx.reliability"),
    # 10. the 'phalanx' command (and the crash torture's deliberately faulty replica, which
    #     is that command with a bug planted)
    ("phalanx.cli", "phalanx.reliability.faulty_node"),
)

APART: tuple[tuple[str, str], ...] = (("phalanx.runtime", "phalanx.sim"),)
"""Units of one layer that must not import each other, in either direction."""

PROTOCOL_INTERFACE = ("phalanx.protocols.spec", "phalanx.protocols.registry")
"""What the protocol packages implement and are found by; the rest of
``phalanx.protocols`` is the cores."""

NEVER_FROM_PROTOCOLS = (
    "phalanx.runtime", "phalanx.sim", "phalanx.api", "phalanx.bench", "phalanx.byzantine",
    "phalanx.cluster", "phalanx.launcher", "phalanx.cli",
)


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    path: Path
    line: int

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}: {self.importer} -> {self.imported}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def resolve(name: str) -> str | None:
    """The phalanx module ``name`` is, or is inside of (a name a module defines)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str, path: Path) -> Iterator[Import]:
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the importer's package up
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - node.level + 1]
                base = ".".join([*package, base] if base else package)
            # "from pkg import sub" imports the submodule; "from mod import name" the module
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                       for alias in node.names]
        for target in targets:
            imported = resolve(target) if target.startswith("phalanx") else None
            if imported is not None and imported != module:
                yield Import(module, imported, path, node.lineno)


# One entry per import statement and module it reaches (``from m import a, b`` is one).
IMPORTS: list[Import] = list(dict.fromkeys(i for m, p in MODULES.items() for i in imports_of(m, p)))


def unit_of(module: str) -> str | None:
    """The entry of :data:`LAYERS` that holds ``module`` (the longest that matches)."""
    units = [u for layer in LAYERS for u in layer if module == u or module.startswith(u + ".")]
    return max(units, key=len, default=None)


LAYER_OF = {unit: number for number, layer in enumerate(LAYERS, start=1) for unit in layer}


def cycles(edges: set[tuple[str, str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan's algorithm)."""
    graph: dict[str, list[str]] = {}
    for a, b in sorted(edges):
        graph.setdefault(a, []).append(b)
        graph.setdefault(b, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in graph[node]:
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def explain(components: list[list[str]], edges: list[Import],
            key: Callable[[str], str | None]) -> str:
    """Each circle, with the imports that close it."""
    lines = []
    for component in components:
        members = set(component)
        lines.append("circle: " + ", ".join(component))
        lines += [f"  {i}" for i in edges if key(i.importer) in members
                  and key(i.imported) in members]
    return "\n".join(lines)


# -- the checks -------------------------------------------------------------------------------


def test_the_import_graph_is_read() -> None:
    """The checks below see the imports that are there (this file reads them right)."""
    assert len(MODULES) > 80
    seen = {(i.importer, i.imported) for i in IMPORTS}
    assert ("phalanx.launcher", "phalanx.runtime.transport") in seen  # module level
    assert ("phalanx.cli", "phalanx.launcher") in seen  # inside a function
    assert ("phalanx.sim", "phalanx.sim.simulator") in seen  # a package's face


def test_every_module_has_a_place_in_the_layer_table() -> None:
    homeless = [m for m in MODULES if m != "phalanx" and unit_of(m) is None]
    assert not homeless, f"add these to LAYERS (where they belong): {homeless}"
    assert not [i for i in IMPORTS if i.importer == "phalanx"], "phalanx/__init__.py imports"


def test_no_modules_import_each_other_in_a_circle() -> None:
    found = cycles({(i.importer, i.imported) for i in IMPORTS})
    assert not found, explain(found, IMPORTS, lambda m: m)


def test_no_packages_of_the_table_import_each_other_in_a_circle() -> None:
    between = [i for i in IMPORTS if i.importer != "phalanx"
               and unit_of(i.importer) != unit_of(i.imported)]
    found = cycles({(str(unit_of(i.importer)), str(unit_of(i.imported))) for i in between})
    assert not found, explain(found, between, unit_of)


def test_no_module_imports_a_layer_above_its_own() -> None:
    upward = [i for i in IMPORTS if i.importer != "phalanx"
              and LAYER_OF[str(unit_of(i.imported))] > LAYER_OF[str(unit_of(i.importer))]]
    assert not upward, "imports that run back up:\n" + "\n".join(
        f"  {i} (layer {LAYER_OF[str(unit_of(i.importer))]} -> "
        f"{LAYER_OF[str(unit_of(i.imported))]})" for i in upward
    )


@pytest.mark.parametrize(("left", "right"), APART)
def test_side_by_side_units_do_not_import_each_other(left: str, right: str) -> None:
    across = [i for i in IMPORTS if {unit_of(i.importer), unit_of(i.imported)} == {left, right}]
    assert not across, "\n".join(map(str, across))


def test_protocol_cores_import_only_the_layers_below_them() -> None:
    protocols = LAYER_OF["phalanx.protocols"]
    wrong = []
    for i in IMPORTS:
        if unit_of(i.importer) != "phalanx.protocols" or i.importer in PROTOCOL_INTERFACE:
            continue
        own_package = ".".join(i.importer.split(".")[:3])  # phalanx.protocols.<name>
        allowed = (
            LAYER_OF[str(unit_of(i.imported))] < protocols
            or i.imported == own_package or i.imported.startswith(own_package + ".")
            or i.imported == "phalanx.protocols.spec"
        )
        if not allowed:
            wrong.append(i)
    assert not wrong, "\n".join(map(str, wrong))


def test_nothing_in_the_protocols_reaches_for_a_driver_a_tool_or_the_command() -> None:
    wrong = [i for i in IMPORTS if unit_of(i.importer) == "phalanx.protocols"
             and any(i.imported == u or i.imported.startswith(u + ".")
                     for u in NEVER_FROM_PROTOCOLS)]
    assert not wrong, "\n".join(map(str, wrong))


def test_no_private_name_is_imported_from_another_module() -> None:
    """A name with a leading underscore is its module's own business: another module
    that needs it needs a public, documented name (or the code moves)."""
    wrong = []
    for path in MODULES.values():
        tree = ast.parse(path.read_text(), str(path))
        aliases: dict[str, str] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("phalanx"):
                for alias in node.names:
                    if alias.name.startswith("_"):
                        wrong.append(f"{path.relative_to(ROOT)}:{node.lineno}: "
                                     f"from {node.module} import {alias.name}")
                    aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("phalanx") and alias.asname:
                        aliases[alias.asname] = alias.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.attr.startswith("_") and not node.attr.startswith("__")
                    and aliases.get(node.value.id, "") in MODULES):
                wrong.append(f"{path.relative_to(ROOT)}:{node.lineno}: "
                             f"{node.value.id}.{node.attr}")
    assert not wrong, "\n".join(wrong)
