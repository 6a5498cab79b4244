"""tools/mutate.py's rewriting of the target file: the copy mutmut mutates must behave
exactly like the original, with its property getters exposed as plain methods."""

from __future__ import annotations

import ast
import importlib.util
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _tool():
    spec = importlib.util.spec_from_file_location("mutate_tool", ROOT / "tools" / "mutate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def _exposed_module(path: str) -> types.ModuleType:
    module = types.ModuleType("exposed_copy")
    sys.modules[module.__name__] = module  # dataclasses look their class's module up
    source = _tool().expose_properties((ROOT / path).read_text())
    exec(compile(source, path, "exec"), module.__dict__)
    return module


def test_the_exposed_quorum_module_has_no_decorated_getter_and_the_same_sizes():
    source = _tool().expose_properties((ROOT / "phalanx/core/quorum.py").read_text())
    decorated = [
        f.name for f in ast.walk(ast.parse(source))
        if isinstance(f, ast.FunctionDef) and any(
            ast.unparse(d) == "property" for d in f.decorator_list)
    ]
    assert decorated == []
    from phalanx.core.quorum import Quorums

    exposed = _exposed_module("phalanx/core/quorum.py").Quorums
    names = ["strong", "weak", "reply", "blocking"]
    for n, f in [(1, 0), (4, 1), (6, 1), (7, 2), (10, 3)]:
        assert [getattr(exposed(n, f), a) for a in names] == [
            getattr(Quorums(n, f), a) for a in names
        ]
        assert isinstance(type(exposed(n, f)).__dict__["strong"], property)
