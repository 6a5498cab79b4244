"""The `phalanx` command itself: help, keygen, and the deterministic simulator."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

PHALANX = [sys.executable, "-m", "phalanx.cli"]


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PHALANX, *args], capture_output=True, text=True, timeout=timeout)


def test_help_lists_every_subcommand():
    out = run("--help").stdout
    for command in ("keygen", "node", "up", "client", "bench", "sim", "demo"):
        assert command in out


def test_keygen_writes_config_and_private_keys_only_the_owner_can_read(tmp_path):
    result = run("keygen", "--n", "4", "--out", str(tmp_path / "c"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "c" / "cluster.toml").exists()
    for i in range(4):
        mode = stat.S_IMODE(os.stat(tmp_path / "c" / f"replica-{i}.key").st_mode)
        assert mode == 0o600


def test_sim_same_seed_gives_byte_identical_output_across_processes():
    args = ("sim", "--protocol", "pbft", "--n", "4", "--seed", "7", "--crash", "0:0.05:1.0",
            "--drop", "0.01", "--jitter-ms", "2")
    first, second = run(*args), run(*args)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    hashes = [line.split()[3] for line in first.stdout.splitlines() if line.startswith("replica")]
    assert len(hashes) == 4 and len(set(hashes)) == 1
    assert run("sim", "--seed", "8").stdout != first.stdout


@pytest.mark.parametrize("bad", [["sim", "--n", "3", "--regions", "x", "--wan", "/nope.csv"]])
def test_errors_are_reported_clearly_not_as_tracebacks(bad):
    result = run(*bad)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "error" in result.stderr
