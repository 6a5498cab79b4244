"""``phalanx up`` start-up (issue 13, item 7): readiness is checked by replica identity,
a failed start exits non-zero naming each failed replica and why, and a second ``up`` on
a running cluster's directory is refused before it touches anything."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from phalanx.cluster import LocalCluster, free_port_block, identity_mismatch
from phalanx.config import generate_cluster
from phalanx.storage.lock import lock_holder

pytestmark = pytest.mark.integration

PHALANX = [sys.executable, "-m", "phalanx.cli"]


def up(directory: Path, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PHALANX, "up", "--dir", str(directory), *args],
                          capture_output=True, text=True, timeout=timeout)


def digest_tree(directory: Path) -> dict[str, str]:
    """Every file under ``directory`` (but the live stores) by content hash."""
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and "data" not in p.parts
    }


def test_status_of_another_clusters_replica_or_process_is_not_ready(tmp_path: Path) -> None:
    ours = generate_cluster(tmp_path / "a", 4)
    theirs = generate_cluster(tmp_path / "b", 4)
    status = {"replica": 1, "process": "1", "pid": 42,
              "public_key": ours.replica(1).public_key.hex()}
    assert identity_mismatch(status, ours, 1, pid=42) is None
    witness = {**status, "process": "1/witness/0"}
    assert "answers on replica 1's HTTP port" in identity_mismatch(witness, ours, 1)
    assert identity_mismatch(status, ours, 1) is None
    assert "another cluster" in identity_mismatch(status, theirs, 1)
    assert "another process" in identity_mismatch(status, ours, 1, pid=43)
    assert "another cluster" in identity_mismatch({"replica": 1}, ours, 1)


@pytest.mark.timeout(120)
def test_up_on_ports_of_another_cluster_exits_nonzero_naming_each_failed_replica(
    tmp_path: Path,
) -> None:
    with LocalCluster(tmp_path / "other", 4) as other:
        other.start()
        ports = other.config.replicas
        result = up(tmp_path / "mine", "--app", "kv", "--base-port", str(ports[0].port),
                    "--base-http-port", str(ports[0].http_port))
        assert all(other.alive(i) for i in range(4))  # the other cluster is untouched
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert "Ctrl-C stops" not in out  # never reported ready
    for r in ports:
        assert f"replica {r.id} exited with code 2 during start-up" in out
        assert f"replica {r.id} cannot listen on 127.0.0.1:{r.port}: another process uses " \
               f"that port" in out
    assert "Traceback" not in out


@pytest.mark.timeout(120)
def test_second_up_on_a_running_clusters_directory_refuses_before_touching_it(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "c"
    base = free_port_block(4)
    out_path = tmp_path / "first.out"
    with open(out_path, "wb") as out:
        first = subprocess.Popen(
            [*PHALANX, "up", "--n", "2", "--app", "kv", "--dir", str(directory),
             "--base-port", str(base), "--base-http-port", str(base + 2)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while b"Ctrl-C stops" not in out_path.read_bytes():
            assert first.poll() is None, out_path.read_text()
            assert time.monotonic() < deadline, out_path.read_text()
            time.sleep(0.1)
        text = out_path.read_text()
        assert "f=0: this 2-replica pbft cluster tolerates no faulty replica" in text
        before = digest_tree(directory)

        for args in ((), ("--fresh",)):
            second = up(directory, "--n", "2", "--app", "kv", *args)
            assert second.returncode == 1
            assert "replica 0 is already running (pid" in second.stdout
            assert "replica 1 is already running (pid" in second.stdout
            assert "Traceback" not in second.stdout + second.stderr
        # Keys, config and logs are as the first `up` left them: no second run's lines.
        assert digest_tree(directory) == before
        assert first.poll() is None
    finally:
        first.send_signal(signal.SIGINT)
        assert first.wait(timeout=30) == 0, out_path.read_text()


@pytest.mark.timeout(120)
def test_up_exits_nonzero_when_a_replica_dies_while_the_cluster_runs(tmp_path: Path) -> None:
    directory = tmp_path / "c"
    base = free_port_block(8)
    out_path = tmp_path / "up.out"
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(
            [*PHALANX, "up", "--app", "kv", "--dir", str(directory),
             "--base-port", str(base), "--base-http-port", str(base + 4)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while b"Ctrl-C stops" not in out_path.read_bytes():
            assert proc.poll() is None and time.monotonic() < deadline, out_path.read_text()
            time.sleep(0.1)
        victim = lock_holder(directory / "data" / "replica-2")
        assert victim
        os.kill(victim, signal.SIGKILL)
        while b"replica 2 was killed by SIGKILL" not in out_path.read_bytes():
            assert time.monotonic() < deadline + 30, out_path.read_text()
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=30)
    assert code == 1, out_path.read_text()
