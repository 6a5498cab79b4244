"""``GET /status`` (issue 13, item 10): one field per fact, and "state root" is the
Merkle root of the application state — for the ledger the account tree's root, the one
its block headers carry and proofs verify against; the head block's hash is reported as
``block_hash`` with its ``height``."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from phalanx.client.ledger import LedgerClient
from phalanx.client.wallet import Wallet
from phalanx.cluster import LocalCluster, faucet_genesis
from phalanx.runtime import run
from phalanx.runtime.cluster_client import open_client
from phalanx.statemachine.kv import KVStore, encode_put

pytestmark = pytest.mark.integration

SUPERSEDED = {"current_state_root", "last_executed_seq", "last_executed"}
"""Fields /status used to carry twice, under two names from two sources."""


@pytest.mark.timeout(120)
def test_ledger_status_state_root_is_the_account_tree_root_and_block_hash_the_heads(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "c"
    genesis = faucet_genesis(directory)
    faucet = Wallet.load(directory / "faucet.key")
    with LocalCluster(directory, 4, app="ledger", genesis=genesis) as cluster:
        cluster.start()

        async def transfer() -> None:
            async with LedgerClient(cluster.config) as client:
                await client.transfer(faucet, Wallet.new().address, 1000, timeout=30)

        run(transfer())
        seq, root = cluster.wait_converged(timeout=30)
        for i in range(4):
            status = cluster.status(i)
            assert not SUPERSEDED & set(status)
            assert status["pid"] == cluster.pids[i]
            assert status["public_key"] == cluster.config.replica(i).public_key.hex()
            block = cluster.get_json(i, f"/block/{status['height']}")
            assert status["height"] >= 1 and status["executed_seq"] == seq
            assert status["state_root"] == block["header"]["state_root"] == root
            assert status["block_hash"] == block["hash"] != status["state_root"]


@pytest.mark.timeout(120)
def test_key_value_status_state_root_is_the_stores_merkle_root(tmp_path: Path) -> None:
    with LocalCluster(tmp_path / "c", 4) as cluster:
        cluster.start()

        async def put() -> None:
            client = await open_client(cluster.config)
            try:
                await asyncio.wait_for(client.request(encode_put(b"k", b"v")), 30)
            finally:
                await client.close()

        run(put())
        cluster.wait_converged(timeout=30)
        expected = KVStore()
        expected.apply([encode_put(b"k", b"v")])
        status = cluster.status(0)
        assert not SUPERSEDED & set(status) and "block_hash" not in status
        assert status["state_root"] == expected.state_root().hex()
        assert status["pid"] != os.getpid()
