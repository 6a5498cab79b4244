"""Set up Hyperledger Indy Plenum 1.13.1 in a Python 3.8 venv (idempotent).

``python -m bench.peers.plenum_setup [--venv DIR] [--python PY38]`` prints the venv's
interpreter. Why this way: on Python 3.11 Plenum's dependencies orderedset, sha3 and
python-rocksdb do not build, and python-ursa needs libursa, which cannot be had. On 3.8:

- Plenum is installed with ``--no-deps`` and its other dependencies from
  ``plenum38/requirements.txt`` (pinned to what was measured);
- the prebuilt ``python-rocksdb-static`` wheel provides the ``rocksdb`` module;
- the ``indy-bls`` wheel (the BLS scheme python-ursa wrapped, same classes) stands in for
  ``python-ursa`` through the two-module ``plenum38/ursa`` shim copied into the venv;
- ``sha3`` is not needed: Python 3.8's hashlib has sha3_256, which Plenum prefers.

The interpreter is ``--python``, else ``$PLENUM_PYTHON``, else ``python3.8`` on PATH, else
pyenv's (``~/.pyenv/versions/3.8.*``). The venv (default ``bench/peers/.plenum-venv``,
gitignored) is rebuilt only when the interpreter, the pins or the shim change: a stamp
file holds their hash.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PLENUM38 = HERE / "plenum38"
DEFAULT_VENV = HERE / ".plenum-venv"
NO_DEPS = ("indy-plenum==1.13.1", "python-rocksdb-static==0.7.9", "indy-bls==0.1.0")
SMOKE = ("import plenum.server.node; "
         "from plenum.bls.bls_crypto_factory import create_default_bls_crypto_factory; "
         "import rocksdb, orderedset, ursa.bls")


class SetupError(Exception):
    """Plenum cannot be set up here (no Python 3.8, a failed install)."""


def find_python38(explicit: str | None = None) -> str | None:
    """A Python 3.8 interpreter, or None."""
    candidates = [explicit, os.environ.get("PLENUM_PYTHON"), shutil.which("python3.8")]
    home = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates += sorted(glob.glob(str(home / "versions" / "3.8.*" / "bin" / "python")),
                         reverse=True)
    candidates += sorted(glob.glob("/root/.pyenv/versions/3.8.*/bin/python"), reverse=True)
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK) and _is_python38(candidate):
            return candidate
    return None


def _is_python38(candidate: str) -> bool:
    """Does ``candidate`` run, as Python 3.8? (A pyenv shim may exist and refuse.)"""
    try:
        out = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and out.stdout.strip() == "(3, 8)"


def stamp_of(python: str) -> str:
    """What the venv was built from: interpreter, pins, shim."""
    digest = hashlib.sha256(python.encode())
    digest.update((PLENUM38 / "requirements.txt").read_bytes())
    digest.update(" ".join(NO_DEPS).encode())
    for path in sorted((PLENUM38 / "ursa").glob("*.py")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def _run(argv: list[str]) -> None:
    print("+", " ".join(argv), file=sys.stderr, flush=True)
    if subprocess.run(argv).returncode != 0:
        raise SetupError(f"failed: {' '.join(argv)}")


def ensure_venv(venv: Path = DEFAULT_VENV, python: str | None = None) -> Path:
    """The venv's interpreter, building the venv first if it is missing or stale."""
    py38 = find_python38(python)
    if py38 is None:
        raise SetupError("Indy Plenum needs Python 3.8 (none found: set PLENUM_PYTHON or "
                         "install one with pyenv)")
    stamp = stamp_of(py38)
    stamp_file = venv / ".phalanx-stamp"
    interpreter = venv / "bin" / "python"
    if interpreter.exists() and stamp_file.exists() and stamp_file.read_text() == stamp:
        return interpreter
    shutil.rmtree(venv, ignore_errors=True)
    _run([py38, "-m", "venv", str(venv)])
    pip = [str(interpreter), "-m", "pip", "install", "-q"]
    _run([*pip, "-r", str(PLENUM38 / "requirements.txt")])
    _run([*pip, "--no-deps", *NO_DEPS])
    site = subprocess.run(
        [str(interpreter), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    shutil.copytree(PLENUM38 / "ursa", Path(site) / "ursa", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    _run([str(interpreter), "-c", SMOKE])
    stamp_file.write_text(stamp)
    return interpreter


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.peers.plenum_setup", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    p.add_argument("--python", help="a Python 3.8 interpreter")
    args = p.parse_args(argv)
    try:
        print(ensure_venv(args.venv, args.python))
    except SetupError as exc:
        print(f"plenum setup: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
