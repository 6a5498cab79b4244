"""The SDK when the replica that admitted a transfer (its gateway) dies before the cluster
ordered it: it notices that no replica has a record of the transfer and posts the same
signed bytes to another replica, instead of waiting for its confirmation timeout.

The replicas here are HTTP servers on real ports that keep the API's contract for
``POST /tx`` and ``GET /tx/{id}``, with the cluster's ordering played by the test (a
real cluster cannot be made to lose an admitted transfer on cue). That resubmitting is
safe — the same signed transfer executes once — is checked on real replicas in
tests/test_ledger_cluster.py."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web

from phalanx.api.ledger import tx_from_json
from phalanx.client import ledger as sdk
from phalanx.client.ledger import LedgerClient, TxNotAccepted
from phalanx.client.wallet import Wallet
from phalanx.cluster import free_port_block
from phalanx.config import ClusterConfig, generate_cluster
from phalanx.crypto.keys import KeyPair
from phalanx.ledger.tx import encode_tx, tx_id

ALICE, BOB = Wallet(KeyPair.from_seed(b"a" * 32)), Wallet(KeyPair.from_seed(b"b" * 32))
TIMEOUT = 10.0  # the confirmation timeout the SDK is given; the fix must beat it by far


class Replicas:
    """``n`` replicas' ``/tx`` endpoints. ``orders(replica)`` says whether a transfer
    admitted by that replica's gateway gets ordered; ordering makes every live replica
    report it committed at height 1."""

    def __init__(self, config: ClusterConfig, orders: Callable[[int], bool],
                 admits: Callable[[int], bool] = lambda _: True) -> None:
        self.config = config
        self.orders = orders
        self.admits = admits
        self.records: list[dict[str, dict[str, Any]]] = [{} for _ in range(config.n)]
        self.posted: list[tuple[int, bytes]] = []  # (replica, the transfer's bytes)
        self.runners: dict[int, web.AppRunner] = {}

    async def start(self) -> None:
        for replica in range(self.config.n):
            app = web.Application()
            app.router.add_post("/tx", self._post(replica))
            app.router.add_get("/tx/{id}", self._get(replica))
            runner = self.runners[replica] = web.AppRunner(app)
            await runner.setup()
            info = self.config.replica(replica)
            await web.TCPSite(runner, info.host, info.http_port).start()

    async def kill(self, replica: int) -> None:
        await self.runners.pop(replica).cleanup()

    async def close(self) -> None:
        for replica in list(self.runners):
            await self.kill(replica)

    def _post(self, replica: int) -> Any:
        async def post(request: web.Request) -> web.Response:
            raw = encode_tx(tx_from_json(await request.json()))
            self.posted.append((replica, raw))
            if not self.admits(replica):
                return web.json_response({"error": "stale_nonce", "detail": "used"},
                                         status=409)
            tid = tx_id(raw).hex()
            self.records[replica][tid] = {"tx_id": tid, "status": "pending"}
            if self.orders(replica):
                asyncio.get_running_loop().call_later(0.05, self._commit, tid)
            return web.json_response({"tx_id": tid, "status": "pending"}, status=202)
        return post

    def _commit(self, tid: str) -> None:
        for replica in self.runners:
            self.records[replica][tid] = {"tx_id": tid, "status": "committed",
                                          "height": 1, "index": 0}

    def _get(self, replica: int) -> Any:
        async def get(request: web.Request) -> web.Response:
            record = self.records[replica].get(request.match_info["id"])
            if record is None:
                return web.json_response({"error": "unknown_tx", "detail": "no record"},
                                         status=404)
            return web.json_response(record)
        return get


@pytest.fixture
def config(tmp_path) -> ClusterConfig:
    http = free_port_block(4)
    return generate_cluster(tmp_path / "c", 4, app="ledger", genesis={ALICE.address: 1000},
                            base_port=free_port_block(4), base_http_port=http)


@pytest.fixture(autouse=True)
def short_grace(monkeypatch) -> None:
    monkeypatch.setattr(sdk, "RESUBMIT_GRACE_S", 0.3)
    monkeypatch.setattr(sdk, "NOT_ACCEPTED_GRACE_S", 0.3)


def transfer() -> Any:
    return ALICE.sign(b"\x00" * 32, BOB.address, 5, 0)


async def submit_then_lose_the_gateway(replicas: Replicas, kill: bool = True) -> Any:
    """Submit a transfer (replica 0 admits it), kill replica 0 (unless not ``kill``),
    and wait for the confirmation."""
    await replicas.start()
    try:
        async with LedgerClient(replicas.config) as client:
            tid = await client.submit(transfer())
            if kill:
                await replicas.kill(0)
            return await client.wait_committed(tid, timeout=TIMEOUT)
    finally:
        await replicas.close()


def test_a_transfer_whose_gateway_dies_before_ordering_it_is_resubmitted_and_confirmed(
        config) -> None:
    replicas = Replicas(config, orders=lambda replica: replica != 0)
    done = asyncio.run(submit_then_lose_the_gateway(replicas))
    assert (done.status, done.height) == ("committed", 1)
    assert set(done.replicas) <= {1, 2, 3} and len(done.replicas) >= 2
    # Posted to the gateway, then once to the next replica: the same signed bytes.
    assert [replica for replica, _ in replicas.posted] == [0, 1]
    assert replicas.posted[0][1] == replicas.posted[1][1] == encode_tx(transfer())


def test_a_transfer_whose_gateway_lives_is_not_resubmitted_while_it_is_pending(
        config) -> None:
    replicas = Replicas(config, orders=lambda replica: False)

    async def scenario() -> None:
        await replicas.start()
        try:
            async with LedgerClient(config) as client:
                tid = await client.submit(transfer())
                waiting = asyncio.create_task(client.wait_committed(tid, timeout=TIMEOUT))
                await asyncio.sleep(5 * sdk.RESUBMIT_GRACE_S)  # slow ordering, gateway up
                replicas._commit(tid)
                await waiting
        finally:
            await replicas.close()

    asyncio.run(scenario())
    assert [replica for replica, _ in replicas.posted] == [0]


def test_a_lost_transfer_that_no_replica_admits_again_is_not_accepted(config) -> None:
    # Its nonce was used meanwhile (say, by another transfer of the same wallet).
    replicas = Replicas(config, orders=lambda replica: False, admits=lambda r: r == 0)
    with pytest.raises(TxNotAccepted, match="stale_nonce"):
        asyncio.run(submit_then_lose_the_gateway(replicas))
    assert [replica for replica, _ in replicas.posted] == [0, 1, 2, 3]
