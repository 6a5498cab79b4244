"""One replica process per data directory (issue 13, item 6).

A second ``phalanx node`` for a replica that runs used to open the live LMDB store and
write-ahead log before failing to bind its port: it replayed the live log and marked
that generation applied, so once the running replica was SIGKILLed, its recovery skipped
the records it logged afterwards. Now the data directory is locked (``flock``) before
anything in it is opened, and the ports are bound before the store is.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from phalanx.bench.trace import load_trace, sign
from phalanx.cluster import LocalCluster, free_port_block
from phalanx.config import generate_cluster
from phalanx.ledger.state import Ledger, block_key
from phalanx.runtime import run
from phalanx.storage import Store
from phalanx.storage.lock import LOCK_FILE, DataDirInUse, DataDirLock, lock_holder

TRACE = Path(__file__).parent / "data" / "eth_tx_2017_head300.csv"

_HOLD = """
import sys, time
from phalanx.storage.lock import DataDirLock
DataDirLock(sys.argv[1], "replica 3").acquire()
print("locked", flush=True)
time.sleep(600)
"""


def hold_lock_in_child(path: Path) -> subprocess.Popen[str]:
    """Another process that takes the lock of ``path`` and keeps it."""
    child = subprocess.Popen([sys.executable, "-c", _HOLD, str(path)], stdout=subprocess.PIPE,
                             text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "locked"
    return child


def test_a_second_process_is_refused_with_the_holders_pid(tmp_path: Path) -> None:
    child = hold_lock_in_child(tmp_path / "d")
    try:
        assert lock_holder(tmp_path / "d") == child.pid
        refusal = rf"replica 3 is already running \(pid {child.pid}\)"
        with pytest.raises(DataDirInUse, match=refusal):
            DataDirLock(tmp_path / "d", "replica 3").acquire()
    finally:
        child.kill()
        child.wait()


def test_the_lock_of_a_sigkilled_holder_does_not_block_a_restart(tmp_path: Path) -> None:
    child = hold_lock_in_child(tmp_path / "d")
    child.send_signal(signal.SIGKILL)
    child.wait()
    # The file (with the dead pid in it) stays; the kernel released the lock.
    assert (tmp_path / "d" / LOCK_FILE).read_text().strip() == str(child.pid)
    assert lock_holder(tmp_path / "d") is None
    with DataDirLock(tmp_path / "d", "replica 3") as lock:
        assert lock.held and lock_holder(tmp_path / "d") == os.getpid()
    assert lock_holder(tmp_path / "d") is None


def test_a_directory_without_a_lock_file_is_free_and_probing_creates_nothing(
    tmp_path: Path,
) -> None:
    assert lock_holder(tmp_path / "missing") is None
    assert not (tmp_path / "missing").exists()


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_second_node_on_a_live_replicas_directory_is_refused_and_recovery_loses_nothing(
    tmp_path: Path,
) -> None:
    from test_ledger_cluster import replay

    trace = load_trace(TRACE)
    genesis = trace.genesis()
    chain_id = Ledger(genesis).chain_id
    first: dict[str, list[bytes]] = {}
    second: dict[str, list[bytes]] = {}
    for index, tx in enumerate(trace.txs):
        half = first if index < len(trace.txs) // 2 else second
        half.setdefault(tx.sender, []).append(sign(tx, chain_id))
    # Small batches: many blocks, each a separate durable write in replica 3's log.
    with LocalCluster(tmp_path / "c", 4, app="ledger", genesis=genesis,
                      options={"max_batch": 8}) as cluster:
        cluster.start()
        run(replay(cluster.config, first, lambda count: None))
        cluster.wait_converged(timeout=60)

        second_node = subprocess.run(
            [sys.executable, "-m", "phalanx.cli", "node", "--config", str(cluster.config_path),
             "--id", "3"], capture_output=True, text=True, timeout=60,
        )
        assert second_node.returncode != 0
        assert f"replica 3 is already running (pid {cluster.pids[3]})" in second_node.stderr
        assert "Traceback" not in second_node.stderr

        run(replay(cluster.config, second, lambda count: None))
        cluster.wait_converged(timeout=60)
        height = cluster.status(3)["height"]
        cluster.kill(3)

    # What replica 3's restart would recover: every block it executed is in its store.
    with Store(str(tmp_path / "c" / "data" / "replica-3")) as store:
        missing = [h for h in range(1, height + 1) if store.get(block_key(h)) is None]
    assert height > 20 and missing == []


def test_a_replica_binds_its_ports_before_it_opens_its_store(tmp_path: Path) -> None:
    """With the lock taken over by hand (an older phalanx, say), the ports still stop a
    second replica before it touches the store."""
    base = free_port_block(2)
    generate_cluster(tmp_path, 1, base_port=base, base_http_port=base + 1)
    data = tmp_path / "data" / "replica-0"
    with socket.create_server(("127.0.0.1", base)):
        result = subprocess.run(
            [sys.executable, "-m", "phalanx.cli", "node", "--config",
             str(tmp_path / "cluster.toml"), "--id", "0"],
            capture_output=True, text=True, timeout=60,
        )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert f"replica 0 cannot listen on 127.0.0.1:{base}" in result.stderr
    # Only the lock file: no LMDB environment, no write-ahead log was created.
    assert sorted(p.name for p in data.iterdir()) == [LOCK_FILE]
