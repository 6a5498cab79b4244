"""The ledger on real replica processes: a trace replay during which a replica is
SIGKILLed and restarted (it recovers from LMDB, catches up, ends with the same root and
every committed transaction in its durable tx index), and the user's CLI path
(``phalanx wallet new``, ``client transfer``, ``client balance`` with a verified proof)."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from pathlib import Path

import pytest

from phalanx.bench.trace import load_trace, sign
from phalanx.cluster import LocalCluster, faucet_genesis
from phalanx.ledger.block import APPLIED
from phalanx.ledger.state import Ledger, decode_result
from phalanx.ledger.tx import tx_id
from phalanx.runtime import run
from phalanx.runtime.cluster_client import open_clients

TRACE = Path(__file__).parent / "data" / "eth_tx_2017_head300.csv"
pytestmark = pytest.mark.integration


async def replay(config, raws_by_sender, on_commit) -> list[bytes]:
    """Each sender's transfers in nonce order, 16 senders at a time."""
    mux, runners = await open_clients(config, 16)
    pool: asyncio.Queue = asyncio.Queue()
    for runner in runners:
        pool.put_nowait(runner)
    committed: list[bytes] = []

    async def chain(raws: list[bytes]) -> None:
        runner = await pool.get()
        try:
            for raw in raws:
                result = decode_result(await asyncio.wait_for(runner.request(raw), 30))
                assert result.status == APPLIED, result
                committed.append(tx_id(raw))
                on_commit(len(committed))
        finally:
            pool.put_nowait(runner)

    try:
        await asyncio.gather(*(chain(r) for r in raws_by_sender.values()))
    finally:
        await mux.close()
    return committed


@pytest.mark.timeout(180)
def test_sigkill_a_replica_during_a_trace_replay_restart_catch_up_nothing_lost(tmp_path):
    trace = load_trace(TRACE)
    genesis = trace.genesis()
    chain_id = Ledger(genesis).chain_id
    raws: dict[str, list[bytes]] = {}
    for tx in trace.txs:
        raws.setdefault(tx.sender, []).append(sign(tx, chain_id))
    with LocalCluster(tmp_path / "c", 4, app="ledger", genesis=genesis,
                      options={"checkpoint_interval": 8, "max_batch": 8}) as cluster:
        cluster.start()
        config = cluster.config
        events: list[str] = []

        def on_commit(count: int) -> None:
            if count == 60 and not events:
                cluster.kill(1)  # SIGKILL mid-replay, with blocks being written
                events.append("killed")
            elif count == 180 and events == ["killed"]:
                cluster.restart(1)
                events.append("restarted")

        committed = run(replay(config, raws, on_commit))
        assert events == ["killed", "restarted"] and len(committed) == len(trace.txs)
        seq, root = cluster.wait_converged(timeout=60)
        # No committed transaction lost, none placed twice: wherever a replica's durable
        # tx index has one, it is in the same block everywhere. A replica that skipped
        # blocks by state transfer has no entries for them (never other ones), and each
        # reply a client counted was sent only once its block was durable at that
        # replica, so every committed transaction is indexed at f+1 = 2 replicas at least.
        for tid in committed:
            found = []
            for i in range(4):
                with contextlib.suppress(OSError):  # 404: not in this replica's index
                    found.append(cluster.get_json(i, f"/tx/{tid.hex()}")["height"])
            assert len(found) >= 2 and len(set(found)) == 1, (tid.hex(), found)
        # The killed replica kept what it had committed before the kill (recovered from
        # its store) and executed everything after its restart.
        status = cluster.status(1)
        assert status["executed_seq"] == seq and status["state_root"] == root
        balances = {i: _account_when_certified(cluster, i, "00" * 32) for i in range(4)}
        assert len({json_key(b) for b in balances.values()}) == 1


def _account_when_certified(cluster, i: int, address: str, timeout: float = 20.0) -> dict:
    """``GET /account`` of replica ``i``, waiting out a 503 while its latest block's
    certificate is still being fetched from its peers (a replica that just caught up)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return cluster.get_json(i, f"/account/{address}")["executed"]
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def json_key(value: dict) -> tuple:
    return tuple(sorted(value.items()))


@pytest.mark.timeout(120)
def test_wallet_transfer_and_verified_balance_from_the_cli(tmp_path):
    genesis = faucet_genesis(tmp_path / "c")
    with LocalCluster(tmp_path / "c", 4, app="ledger", genesis=genesis) as cluster:
        cluster.start()
        cfg = str(cluster.config_path)

        def phalanx(*argv: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "phalanx.cli", *argv],
                                  capture_output=True, text=True, timeout=60, cwd=tmp_path)

        alice = phalanx("wallet", "new", "--out", "alice.key")
        bob = phalanx("wallet", "new", "--out", "bob.key")
        assert alice.returncode == bob.returncode == 0
        assert (tmp_path / "alice.key").stat().st_mode & 0o777 == 0o600
        bob_address = bob.stdout.split()[-1]
        faucet = str(tmp_path / "c" / "faucet.key")
        done = phalanx("client", "--config", cfg, "transfer", "--wallet", faucet,
                       "--to", "alice.key", "1000")
        assert done.returncode == 0 and "committed in block" in done.stdout, done.stderr
        done = phalanx("client", "--config", cfg, "transfer", "--wallet", "alice.key",
                       "--to", bob_address, "300")
        assert done.returncode == 0, done.stderr
        # Judged on the executed state, which may change: not a final refusal.
        refused = phalanx("client", "--config", cfg, "transfer", "--wallet", "bob.key",
                          "--to", "alice.key", "301")
        assert refused.returncode == 4, refused.stderr
        assert refused.stderr.startswith("not accepted yet (insufficient_funds: balance ")
        assert refused.stderr.rstrip().endswith("; retry")
        # The balance is proven against a block signed by 2f+1 replicas (it may take a
        # moment for the transfer's block to be certified).
        for _ in range(50):
            balance = phalanx("client", "--config", cfg, "balance", "bob.key")
            if balance.stdout.startswith("balance 300"):
                break
        assert balance.stdout.startswith("balance 300  nonce 0"), balance.stdout
        assert "verified: Merkle proof" in balance.stdout and "signed by replicas" in balance.stdout
