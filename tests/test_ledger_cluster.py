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
from typing import Any

import pytest

from phalanx.bench.trace import load_trace, sign
from phalanx.cluster import LocalCluster, faucet_genesis
from phalanx.ledger.block import APPLIED
from phalanx.ledger.state import Ledger, decode_result
from phalanx.ledger.tx import encode_tx, tx_id
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


def test_the_same_signed_transfer_posted_to_every_replica_executes_once(tmp_path):
    # What makes the SDK's resubmission after a lost gateway safe (client/ledger.py): the
    # same signed bytes sent through several gateways are ordered once or more, and
    # execute once — the nonce is used once; the tx's record is the committed one.
    import aiohttp

    from phalanx.client.ledger import LedgerClient
    from phalanx.client.wallet import Wallet
    from phalanx.crypto.keys import KeyPair

    alice, bob = Wallet(KeyPair.from_seed(b"a" * 32)), Wallet(KeyPair.from_seed(b"b" * 32))
    genesis = {alice.address: 1000}
    tx = alice.sign(Ledger(genesis).chain_id, bob.address, 100, 0)
    body = {"from": tx.sender.hex(), "to": tx.to.hex(), "amount": tx.amount,
            "nonce": tx.nonce, "signature": tx.signature.hex()}

    async def scenario(config) -> tuple[Any, ...]:
        async with aiohttp.ClientSession(trust_env=False) as http, LedgerClient(config) as sdk:
            def url(replica: int, path: str) -> str:
                info = config.replica(replica)
                return f"http://{info.host}:{info.http_port}{path}"

            async def post(replica: int) -> int:
                async with http.post(url(replica, "/tx"), json=body) as resp:
                    return resp.status

            statuses = await asyncio.gather(*(post(r) for r in range(config.n)))
            done = await sdk.wait_committed(tx_id(encode_tx(tx)).hex(), timeout=30)
            for _ in range(100):  # every replica executes it (at its own pace)
                records = []
                for r in range(config.n):
                    async with http.get(url(r, f"/tx/{done.tx_id}")) as resp:
                        records.append(await resp.json())
                if all(rec.get("status") == "committed" for rec in records):
                    break
                await asyncio.sleep(0.1)
            again = await post(1)
            for _ in range(50):  # until Bob's balance is certified
                account = await sdk.account(bob.address)
                if account.balance:
                    break
                await asyncio.sleep(0.1)
            sender = await sdk.account(alice.address)
            outcomes = []  # of every copy that was ordered, in every block so far
            async with http.get(url(0, "/status")) as resp:
                height = (await resp.json())["height"]
            for h in range(1, height + 1):
                async with http.get(url(0, f"/block/{h}")) as resp:
                    block = await resp.json()
                outcomes += [(o["status"], o["reason"]) for o in block["outcomes"]
                             if o["tx_id"] == done.tx_id]
            return statuses, records, done, account.balance, again, sender.balance, outcomes

    with LocalCluster(tmp_path / "c", 4, app="ledger", genesis=genesis) as cluster:
        cluster.start()
        statuses, records, done, bob_balance, again, alice_balance, outcomes = run(
            scenario(cluster.config))
    assert 202 in statuses and set(statuses) <= {202, 409}, statuses
    assert done.status == "committed"
    assert [(r["status"], r["height"]) for r in records] == [("committed", done.height)] * 4
    assert (bob_balance, alice_balance) == (100, 900)  # debited once
    assert again == 409  # and posting it once more is refused: its nonce is used
    # Copies ordered after the first are rejected, not applied.
    assert outcomes[0] == ("applied", "")
    assert outcomes[1:] == [("rejected", "bad_nonce")] * (len(outcomes) - 1)
