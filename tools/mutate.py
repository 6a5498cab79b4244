"""Mutation testing of phalanx's core with mutmut 3 (``make mutate``; see docs/testing.md).

Each target file gets its own work directory, ``.mutmut/<name>/``, holding a generated
``pyproject.toml`` (the mutmut settings and a focused pytest selection for that file), a
link to ``tests/`` and a mirror of ``phalanx/`` (links to every file but the target). mutmut
copies both into ``mutants/`` there, puts trampolines into the target file only, and runs
the tests from that copy: ``mutants/`` is first on ``sys.path``, ahead of the editable
install, and mutmut's forced-fail run stops the whole run if the tests do not reach the
mutated copy.

mutmut 3 mutates no decorated function but a static or class method, so it would never
touch a ``@property`` (quorum sizes, watermarks): the mirror's copy of the target spells
each plain property getter as a method followed by ``name = property(name)``, which
mutmut mutates like any method and which behaves the same.

A run is restartable: mutmut records each verdict as soon as it has it, and a later run
only tests the mutants with no verdict yet plus the earlier survivors (tests may have been
added since). ``FRESH=1`` starts a file over. A mutant that makes a test hang is killed by
pytest-timeout (a failing test) or by mutmut's wall-clock limit (a ``timeout``); both
count as killed.

The score line counts killed (+ timed out) over all mutants in scope; a survivor listed
with a reason in docs/testing.md's equivalent-mutant list is shown as explained, any
other survivor is listed by its mutmut id (``mutmut show ID`` in the work directory shows
the change).
"""

from __future__ import annotations

import argparse
import ast
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".mutmut"
DOCS = ROOT / "docs" / "testing.md"

# Never the real-process integration tests (they run another interpreter, which would not
# see the mutant anyway) and never the long fuzz: unit tests of the core and simulator runs.
PYTEST_ARGS = ["-m", "not integration", "-p", "no:cacheprovider", "-o", "timeout=60"]
PBFT_TESTS = ("tests/test_pbft_core.py", "tests/test_pbft_sim.py")

# PbftInstance's admission: where a message is let in or refused (the checks every handler
# makes before it changes any state, and the validity of what a message carries).
ADMISSION = (
    "on_message", "_admit", "high", "_on_preprepare", "_vote", "_on_checkpoint",
    "_checkpoint_valid", "checkpoint_proof_valid", "_on_view_change", "_view_change_valid",
    "_on_new_view",
)
# ... and its checkpoints: taking them, making one stable, garbage collection, state
# transfer and repair, and what is persisted of it all and recovered after a restart.
CHECKPOINTS = (
    "make_checkpoint", "_record_checkpoint", "_vouched", "_make_stable", "_collect_garbage",
    "state_transferred", "repairing", "recover",
)


@dataclass(frozen=True)
class Target:
    """One file to mutate, the tests that may kill its mutants, and optionally the
    functions in scope (fnmatch patterns over mutmut's function part of a mutant id)."""

    name: str
    path: str
    tests: tuple[str, ...]
    functions: tuple[str, ...] = ()

    @property
    def module(self) -> str:
        return self.path.removesuffix(".py").replace("/", ".")

    def in_scope(self, mutant: str) -> bool:
        if not self.functions:
            return True
        function = mutant.removeprefix(self.module + ".").rpartition("__mutmut_")[0]
        return any(fnmatch.fnmatchcase(function, p) for p in self.functions)


TARGETS = {
    t.name: t
    for t in [
        Target("quorum", "phalanx/core/quorum.py", (*PBFT_TESTS, "tests/test_quorum*.py")),
        Target(
            "viewchange",
            "phalanx/protocols/pbft/viewchange.py",
            (*PBFT_TESTS, "tests/test_viewchange*.py"),
        ),
        Target(
            "certificates",
            "phalanx/host/certificates.py",
            (
                "tests/test_certificates.py",
                "tests/test_ledger_catchup.py",
                "tests/test_ledger_bench.py",
                "tests/test_ledger_sim.py",
            ),
        ),
        # Admission and checkpoints only: the rest of the instance (the normal case, view
        # changes, catch-up) is for later rounds.
        Target(
            "instance",
            "phalanx/protocols/pbft/instance.py",
            (*PBFT_TESTS, "tests/test_pbft_admission.py", "tests/test_pbft_checkpoints.py",
             "tests/test_viewchange*.py"),
            functions=tuple(f"xǁPbftInstanceǁ{name}" for name in (*ADMISSION, *CHECKPOINTS)),
        ),
    ]
}

KILLED = {1, 3}  # a failing test, or pytest's internal error
TIMED_OUT = {24, -24, 152, 255, 36}  # mutmut's SIGXCPU / wall-clock limit
SURVIVED = 0


@dataclass
class Score:
    target: Target
    verdicts: dict[str, int | None] = field(default_factory=dict)
    equivalent: set[str] = field(default_factory=set)

    @property
    def killed(self) -> list[str]:
        return [m for m, c in self.verdicts.items() if c in KILLED or c in TIMED_OUT]

    @property
    def alive(self) -> list[str]:
        """Survivors, mutants no selected test reaches, and anything mutmut could not
        judge (not checked, suspicious): all of them need a test or an explanation."""
        return sorted(m for m, c in self.verdicts.items() if c not in KILLED | TIMED_OUT)

    @property
    def unexplained(self) -> list[str]:
        return [m for m in self.alive if m not in self.equivalent]

    def line(self) -> str:
        total, killed = len(self.verdicts), len(self.killed)
        percent = 100 * killed / total if total else 0.0
        explained = len(self.alive) - len(self.unexplained)
        return (f"{self.target.path}: {killed}/{total} killed ({percent:.1f} %), "
                f"{explained} equivalent (explained), {len(self.unexplained)} unexplained")


def equivalent_mutants() -> set[str]:
    """Mutant ids that docs/testing.md explains as equivalent (one list item each)."""
    if not DOCS.exists():
        return set()
    return set(re.findall(r"^- `(phalanx\.[^`]+__mutmut_\d+)`", DOCS.read_text(), re.M))


def workdir(target: Target) -> Path:
    return WORK / target.name


def pytest_ini_options() -> dict[str, Any]:
    options: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"][
        "pytest"]["ini_options"]
    return options


def _toml_value(value: object) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value)  # a TOML basic string is a JSON string for these values


def write_config(target: Target, directory: Path) -> None:
    tests = [t for pattern in target.tests for t in sorted(ROOT.glob(pattern))]
    if not tests:
        raise SystemExit(f"mutate: no test file of {target.tests} exists")
    mutmut = {
        "source_paths": ["phalanx"],
        "only_mutate": [target.path],
        "pytest_add_cli_args_test_selection": [str(t.relative_to(ROOT)) for t in tests],
        "pytest_add_cli_args": PYTEST_ARGS,
        # Kill a hanging mutant after 5x its tests' clean time plus 5 s (of wall time).
        "timeout_multiplier": 5.0,
        "timeout_constant": 5.0,
        "use_git_change_detection": False,
    }
    lines = ["# Generated by tools/mutate.py: edit that file instead.", "[tool.mutmut]"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in mutmut.items()]
    lines += ["", "[tool.pytest.ini_options]"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in pytest_ini_options().items()]
    config = directory / "pyproject.toml"
    text = "\n".join(lines) + "\n"
    if not config.exists() or config.read_text() != text:
        config.write_text(text)


def expose_properties(source: str) -> str:
    """``source`` with every plain ``@property`` getter of a class written as an undecorated
    method followed by ``name = property(name)``: the same class, but mutmut (which skips
    decorated functions) now mutates the getter."""
    lines = source.splitlines(keepends=True)
    getters = [
        function
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.ClassDef)
        for function in node.body
        if isinstance(function, ast.FunctionDef)
        and [ast.unparse(d) for d in function.decorator_list] == ["property"]
    ]
    # Bottom up, so that the line numbers of the getters above stay valid.
    for function in sorted(getters, key=lambda f: f.lineno, reverse=True):
        indent = " " * function.col_offset
        assert function.end_lineno is not None
        lines.insert(function.end_lineno, f"{indent}{function.name} = property({function.name})\n")
        del lines[function.decorator_list[0].lineno - 1]
    return "".join(lines)


def _write_if_changed(path: Path, text: str) -> None:
    # An unchanged file keeps its mtime: mutmut regenerates the mutants of a newer source.
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def mirror_source(target: Target, directory: Path) -> None:
    """``directory/phalanx``: a link to every source file but the target, which is a copy
    with its properties exposed to mutmut (see :func:`expose_properties`)."""
    mirror = directory / "phalanx"
    if mirror.is_symlink():  # a work directory made before the mirror existed
        mirror.unlink()
    sources = {
        path.relative_to(ROOT)
        for path in (ROOT / "phalanx").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    for path in sorted(p for p in mirror.rglob("*") if p.is_symlink() or p.is_file()):
        if path.relative_to(directory) not in sources:
            path.unlink()
    for relative in sorted(sources):
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if relative == Path(target.path):
            if path.is_symlink():
                path.unlink()
            _write_if_changed(path, expose_properties((ROOT / relative).read_text()))
        elif not path.is_symlink():
            path.symlink_to(ROOT / relative)


def refresh_copies(target: Target, directory: Path) -> None:
    """mutmut copies the source tree into ``mutants/`` once and never updates a file it
    finds there: remove the copies of the other files that changed since, so that the
    mutants run against the current code around them."""
    copies = directory / "mutants" / "phalanx"
    if not copies.exists():
        return
    mutated = directory / "mutants" / target.path
    for copy in copies.rglob("*"):
        if not copy.is_file() or (
            copy.parent == mutated.parent and copy.name.startswith(mutated.name)
        ):
            continue  # the mutated target and mutmut's records of it
        source = directory / copy.relative_to(directory / "mutants")
        if not source.exists() or source.read_bytes() != copy.read_bytes():
            copy.unlink()


def prepare(target: Target, fresh: bool) -> Path:
    directory = workdir(target)
    if fresh and directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tests = directory / "tests"
    if not tests.is_symlink():
        tests.symlink_to(ROOT / "tests", target_is_directory=True)
    mirror_source(target, directory)
    refresh_copies(target, directory)
    write_config(target, directory)
    return directory


def load_verdicts(target: Target) -> dict[str, int | None] | None:
    """The recorded verdicts of the mutants in scope, or None if there are none for the
    current source (never run, or the file changed since mutmut generated its mutants)."""
    directory = workdir(target)
    meta = directory / "mutants" / (target.path + ".meta")
    mutated = directory / "mutants" / target.path
    if not meta.exists() or not mutated.exists():
        return None
    if (directory / target.path).stat().st_mtime >= mutated.stat().st_mtime:
        return None
    verdicts = json.loads(meta.read_text())["exit_code_by_key"]
    return {m: c for m, c in verdicts.items() if target.in_scope(m)}


def mutants_to_run(target: Target) -> list[str]:
    """Ids or patterns for mutmut: every mutant in scope on a first run, else the ones
    without a verdict and the earlier survivors."""
    verdicts = load_verdicts(target)
    if verdicts is None:
        if not target.functions:
            return [f"{target.module}.*"]
        return [f"{target.module}.{f}__mutmut_*" for f in target.functions]
    return sorted(m for m, c in verdicts.items() if c not in KILLED | TIMED_OUT)


def _mutmut_run(target: Target, mutants: list[str], max_children: int) -> None:
    mutmut = Path(sys.executable).parent / "mutmut"
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    try:
        proc = subprocess.run(
            [str(mutmut), "run", "--max-children", str(max_children), *mutants],
            cwd=workdir(target), env=env, check=False,
        )
    except KeyboardInterrupt:
        raise SystemExit("\nmutate: interrupted; the verdicts so far are kept, run again to "
                         "resume") from None
    if proc.returncode != 0:
        raise SystemExit(f"mutate: mutmut failed on {target.path} (exit {proc.returncode})")


def run(target: Target, max_children: int) -> float:
    todo = mutants_to_run(target)
    if not todo:
        print(f"mutate: {target.path}: every mutant has a verdict")
        return 0.0
    print(f"mutate: {target.path}: testing {len(todo)} mutant id(s)/pattern(s) in "
          f"{workdir(target)}")
    start = time.monotonic()
    _mutmut_run(target, todo, max_children)
    # mutmut forgets every verdict when the test selection or the pytest settings changed
    # (a test file added to a target, say), and then tests only the mutants it was given.
    forgotten = sorted(m for m, c in (load_verdicts(target) or {}).items() if c is None)
    if forgotten:
        print(f"mutate: {target.path}: mutmut dropped {len(forgotten)} earlier verdict(s) "
              "(the test selection changed): testing those mutants again")
        _mutmut_run(target, forgotten, max_children)
    return time.monotonic() - start


def score(target: Target) -> Score:
    verdicts = load_verdicts(target) or {}
    return Score(target, verdicts, equivalent_mutants())


def status(code: int | None) -> str:
    """mutmut's name for a verdict that is not a kill."""
    return {None: "not checked", 0: "survived", 5: "no tests", 33: "no tests",
            34: "skipped", 35: "suspicious"}.get(code, f"exit {code}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", help="target names or paths (default: all): "
                        + ", ".join(TARGETS))
    parser.add_argument("--max-children", type=int, default=2)
    parser.add_argument("--fresh", action="store_true", help="forget earlier verdicts")
    parser.add_argument("--score-only", action="store_true", help="print the scores, run nothing")
    args = parser.parse_args(argv)
    by_path = {t.path: t for t in TARGETS.values()}
    chosen = []
    for name in args.files or list(TARGETS):
        target = TARGETS.get(name) or by_path.get(name)
        if target is None:
            parser.error(f"unknown target {name!r}: choose from {', '.join(TARGETS)}")
        chosen.append(target)
    walls = {}
    for target in chosen:
        prepare(target, args.fresh)
        if not args.score_only:
            walls[target.name] = run(target, args.max_children)
    print("\nmutation score (killed includes timed out):")
    for target in chosen:
        result = score(target)
        if not result.verdicts:
            print(f"  {target.path}: no verdicts for the current source (run make mutate)")
            continue
        wall = f" [{walls[target.name]:.0f} s]" if target.name in walls else ""
        print(f"  {result.line()}{wall}")
        for mutant in result.unexplained:
            print(f"    alive: {mutant} ({status(result.verdicts[mutant])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
