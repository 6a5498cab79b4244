"""The ledger HTTP API contract: every error case gets the right status and reason and
changes nothing (no state change, nothing queued for ordering); the happy path queues
exactly one transaction; GET endpoints answer from the replica's state and store."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from phalanx.api.ledger import MAX_TX_BODY, Gateway, LedgerApi
from phalanx.client.ledger import LedgerClient, ProofError
from phalanx.client.wallet import Wallet
from phalanx.config import generate_cluster
from phalanx.core.address import Address
from phalanx.core.quorum import Quorums
from phalanx.crypto.ed25519 import Ed25519NodeCrypto
from phalanx.crypto.keys import KeyPair
from phalanx.ledger.state import MAX_NONCE_AHEAD, make_ledger_factory
from phalanx.protocols.pbft.replica import PbftReplica
from phalanx.runtime.metrics import Metrics
from phalanx.storage.lmdb_store import Store

ALICE, BOB = Wallet(KeyPair.from_seed(b"a" * 32)), Wallet(KeyPair.from_seed(b"b" * 32))


@pytest.fixture
def world(tmp_path):
    config = generate_cluster(tmp_path / "c", 4, app="ledger", genesis={ALICE.address: 1000})
    seed = bytes.fromhex((tmp_path / "c" / "replica-0.key").read_text().strip())
    crypto = Ed25519NodeCrypto(0, KeyPair.from_seed(seed), config.public_keys)
    core = PbftReplica(0, Quorums(4, 1), crypto, make_ledger_factory(config.genesis))
    store = Store(str(tmp_path / "store"), durable=False)
    gateway = Gateway(config)
    yield config, core, store, gateway
    store.close()


def body(wallet: Wallet, chain: bytes, to: bytes, amount: int, nonce: int) -> dict:
    tx = wallet.sign(chain, to, amount, nonce)
    return {"from": tx.sender.hex(), "to": tx.to.hex(), "amount": tx.amount,
            "nonce": tx.nonce, "signature": tx.signature.hex()}


def run_with_client(core, store, gateway, scenario, **limits) -> None:
    async def main() -> None:
        app = web.Application()
        metrics = Metrics("0")
        LedgerApi(core.host, store, gateway, metrics, **limits).install(app)
        async with TestClient(TestServer(app)) as client:
            await scenario(client, metrics)

    asyncio.run(main())


def test_post_tx_errors_have_the_right_status_and_change_nothing(world) -> None:
    _config, core, store, gateway = world
    chain = core.app.chain_id
    good = body(ALICE, chain, BOB.address, 10, 0)
    forged = {**good, "amount": 11}
    cases = [
        ("not json", 400, "malformed"),
        (json.dumps([1, 2]), 400, "malformed"),
        (json.dumps({**good, "extra": 1}), 400, "malformed"),
        (json.dumps({k: v for k, v in good.items() if k != "nonce"}), 400, "malformed"),
        (json.dumps({**good, "from": "zz"}), 400, "malformed"),
        (json.dumps({**good, "amount": "10"}), 400, "malformed"),
        (json.dumps({**good, "amount": 2**64}), 400, "malformed"),
        (json.dumps({**good, "to": "00" * 31}), 400, "malformed"),
        (json.dumps(body(ALICE, chain, BOB.address, 0, 0)), 400, "amount_not_positive"),
        (json.dumps({**good, "amount": -1}), 400, "amount_not_positive"),
        # Below -2^63 msgpack cannot even encode it: this used to be a 500.
        (json.dumps({**good, "amount": -(2**63) - 1}), 400, "amount_not_positive"),
        (json.dumps({**good, "nonce": 2**64}), 400, "malformed"),
        (json.dumps({**good, "signature": "ab"}), 400, "malformed"),
        (json.dumps(forged), 403, "bad_signature"),
        (json.dumps(body(ALICE, bytes(32), BOB.address, 10, 0)), 403, "bad_signature"),
        (json.dumps(body(ALICE, chain, BOB.address, 5000, 0)), 422, "insufficient_funds"),
        (json.dumps(body(BOB, chain, ALICE.address, 1, 0)), 422, "insufficient_funds"),
        (json.dumps(body(ALICE, chain, BOB.address, 1, MAX_NONCE_AHEAD + 1)), 409,
         "nonce_too_far"),
        ("x" * (MAX_TX_BODY + 1), 413, "body_too_large"),
    ]
    root = core.app.state_root()

    async def scenario(client, metrics) -> None:
        for text, status, reason in cases:
            resp = await client.post("/tx", data=text)
            answer = await resp.json()
            assert (resp.status, answer["error"]) == (status, reason), text[:80]
            assert answer["detail"] and answer["detail"] != reason, answer  # says what to fix
        assert gateway.queue.qsize() == 0 and not gateway.outcomes  # nothing ordered
        assert core.app.state_root() == root  # nothing changed
        assert metrics.get("api_rejected:bad_signature") == 2
        # The detail says what to fix, from the executed state.
        resp = await client.post("/tx", json=body(ALICE, chain, BOB.address, 5000, 0))
        balance = core.app.account(ALICE.address)[0]
        assert (await resp.json())["detail"] == f"balance {balance} < amount 5000"
        # A stale nonce: make Alice's nonce 1 by executing a transfer, then resend nonce 0.
        core.app.apply([json_to_raw(good)])
        core.app.seal_block(1)
        resp = await client.post("/tx", json=good)
        answer = await resp.json()
        assert (resp.status, answer["error"]) == (409, "stale_nonce")
        assert answer["detail"] == "nonce 0 is used; the sender's next nonce is 1"
        # The happy path: 202 with the id, queued once (a resubmission is idempotent).
        fresh = body(ALICE, chain, BOB.address, 10, 1)
        first = await (await client.post("/tx", json=fresh)).json()
        again = await client.post("/tx", json=fresh)
        assert again.status == 202 and (await again.json())["tx_id"] == first["tx_id"]
        assert gateway.queue.qsize() == 1
        status = await (await client.get(f"/tx/{first['tx_id']}")).json()
        assert status["status"] == "pending"

    run_with_client(core, store, gateway, scenario)


def json_to_raw(fields: dict) -> bytes:
    from phalanx.api.ledger import tx_from_json
    from phalanx.ledger.tx import encode_tx

    return encode_tx(tx_from_json(fields))


def test_get_endpoints_errors_and_answers(world) -> None:
    config, core, store, gateway = world
    chain = core.app.chain_id
    raw = json_to_raw(body(ALICE, chain, BOB.address, 10, 0))
    core.app.apply([raw, raw])  # the second is a replay: rejected (bad nonce)
    sealed = core.app.seal_block(1)
    store.write(list(sealed.records))
    from phalanx.ledger.tx import tx_id

    tid = tx_id(raw).hex()

    async def scenario(client, metrics) -> None:
        for path, status, reason in [
            ("/tx/abc", 400, "bad_tx_id"),
            ("/tx/" + "00" * 32, 404, "unknown_tx"),
            ("/account/xyz", 400, "bad_address"),
            ("/account/" + "00" * 16, 400, "bad_address"),
            ("/block/-1", 400, "bad_height"),
            ("/block/zz", 400, "bad_height"),
            ("/block/7", 404, "unknown_block"),
        ]:
            resp = await client.get(path)
            assert (resp.status, (await resp.json())["error"]) == (status, reason), path
        committed = await (await client.get(f"/tx/{tid}")).json()
        assert committed == {"tx_id": tid, "status": "committed", "height": 1, "index": 0}
        block = await (await client.get("/block/1")).json()
        assert [o["status"] for o in block["outcomes"]] == ["applied", "rejected"]
        assert block["outcomes"][1]["reason"] == "bad_nonce"
        assert block["txs"][0]["amount"] == 10 and block["certificate"] is None
        assert (await (await client.get("/block/0")).json())["header"]["height"] == 0
        # No certificate yet for block 1: the account is proven at genesis, which the
        # light client checks against the config it holds.
        account = await (await client.get(f"/account/{ALICE.address.hex()}")).json()
        assert (account["height"], account["balance"], account["nonce"]) == (0, 1000, 0)
        assert account["executed"] == {"height": 1, "balance": 990, "nonce": 1}
        verifier = LedgerClient(config)
        assert verifier.verify_account(ALICE.address, account).balance == 1000
        for tampered in ({**account, "balance": 1001},
                         {**account, "header": {**account["header"], "height": 1}},
                         {**account, "proof": {"siblings": [], "leaf": None}}):
            with pytest.raises((ProofError, ValueError, KeyError)):
                verifier.verify_account(ALICE.address, tampered)
        missing = await (await client.get(f"/account/{'ab' * 32}")).json()
        assert (missing["balance"], missing["value"]) == (0, None)
        assert verifier.verify_account(bytes.fromhex("ab" * 32), missing).nonce == 0

    run_with_client(core, store, gateway, scenario)


def test_rate_limit_per_client_answers_429(world) -> None:
    _, core, store, gateway = world

    async def scenario(client, metrics) -> None:
        codes = [(await client.get("/block/0")).status for _ in range(6)]
        assert codes == [200, 200, 200, 429, 429, 429]
        assert metrics.get("api_rejected:rate_limited") == 3

    run_with_client(core, store, gateway, scenario, rate=0.001, burst=3)


def test_certificate_checks_reject_forged_or_short_certificates(world) -> None:
    config, core, *_ = world
    verifier = LedgerClient(config)
    header = core.app.genesis_header()
    header = msgspec.structs.replace(header, height=1)
    with pytest.raises(ProofError):
        verifier.verify_certificate(header, None)
    forged = {"height": 1, "block_hash": header.hash().hex(),
              "sigs": [{"replica": r, "sig": "00" * 64} for r in range(4)]}
    with pytest.raises(ProofError, match="only 0 valid"):
        verifier.verify_certificate(header, forged)


class FakeRunner:
    """Answers requests like f+1 replicas would, from a ledger of its own; does not accept
    any bundle that holds ``refuse`` (as a primary would once that transfer is stale)."""

    def __init__(self, ledger, refuse: bytes | None = None) -> None:
        self.ledger, self.refuse, self.ops = ledger, refuse, []

    async def request(self, op: bytes, *, grace: float | None = None) -> bytes:
        from phalanx.ledger import tx as txm
        from phalanx.runtime.client import RequestNotAccepted

        self.ops.append(op)
        if self.refuse is not None and txm.is_bundle(op) and self.refuse in txm.op_txs(op):
            raise RequestNotAccepted(1, "stale_nonce")
        [result] = self.ledger.apply([op])
        self.ledger.seal_block(len(self.ops))
        return result


@pytest.mark.parametrize("refuse_one", [False, True])
def test_the_gateway_sends_queued_transfers_as_bundles_and_splits_a_refused_one(
        world, refuse_one) -> None:
    from phalanx.ledger import tx as txm

    config, _, _, gateway = world
    ledger = make_ledger_factory(config.genesis)()
    raws = [txm.encode_tx(ALICE.sign(ledger.chain_id, BOB.address, 1, n)) for n in range(20)]
    runner = FakeRunner(ledger, refuse=raws[3] if refuse_one else None)

    async def main() -> None:
        for raw in raws:
            assert gateway.submit(txm.tx_id(raw), raw)
        worker = asyncio.create_task(gateway._work(runner))
        while not all(gateway.outcome(txm.tx_id(r))["status"] != "pending" for r in raws):
            await asyncio.sleep(0.001)
        worker.cancel()

    asyncio.run(main())
    assert [gateway.outcome(txm.tx_id(r))["status"] for r in raws] == ["committed"] * 20
    assert ledger.account(BOB.address) == (20, 0)
    # 16 in one bundle, then the other 4 in another; a refused bundle goes one by one.
    sizes = [len(txm.op_txs(op)) for op in runner.ops]
    assert sizes == ([16] + [1] * 16 + [4] if refuse_one else [16, 4])
    assert gateway.metrics.get("gateway_bundles_split") == (1 if refuse_one else 0)


def test_unknown_endpoints_and_methods_answer_json_refusals_with_a_reason(world) -> None:
    from types import SimpleNamespace

    from phalanx.api.http import make_app
    from phalanx.runtime.node import ReplicaDriver

    _config, core, store, gateway = world
    metrics = Metrics("0")
    driver = ReplicaDriver(core, SimpleNamespace(me=Address(0)), store, metrics)  # type: ignore[arg-type]

    async def main() -> None:
        app = make_app(driver, metrics, lambda: {})
        LedgerApi(core.host, store, gateway, metrics).install(app)
        async with TestClient(TestServer(app)) as client:
            resp = await client.get("/no/such/endpoint")
            assert resp.status == 404 and resp.content_type == "application/json"
            assert await resp.json() == {"error": "unknown_endpoint",
                                         "detail": "no endpoint /no/such/endpoint"}
            resp = await client.delete("/tx")
            assert resp.status == 405 and resp.headers["Allow"] == "POST"
            answer = await resp.json()
            assert answer["error"] == "method_not_allowed"
            assert answer["detail"] == "DELETE is not allowed on /tx; use POST"
            resp = await client.get("/log", params={"first": "x"})
            assert resp.status == 400
            assert (await resp.json())["error"] == "bad_range"
            resp = await client.post("/tx", data=b"x" * (1 << 17))  # beyond any body limit
            assert resp.status == 413 and (await resp.json())["error"] == "body_too_large"
        assert metrics.get("api_rejected:unknown_endpoint") == 1
        assert metrics.get("api_rejected:method_not_allowed") == 1

    asyncio.run(main())



@contextlib.asynccontextmanager
async def serving_api(core, store, gateway, **options):
    """The ledger API served as a replica serves it (error middleware, HTTP guard, an
    AppRunner); yields its port and metrics."""
    from phalanx.api.http import json_errors
    from phalanx.api.limits import GuardedSite, HttpGuard

    metrics = Metrics("0")
    app = web.Application(middlewares=[json_errors(metrics)])
    LedgerApi(core.host, store, gateway, metrics, **options).install(app)
    guard = HttpGuard(metrics)
    guard.install(app)
    runner = web.AppRunner(app, **guard.runner_options())
    await runner.setup()
    site = GuardedSite(runner, guard, host="127.0.0.1", port=0)
    await site.start()
    try:
        yield site.port, metrics
    finally:
        await runner.cleanup()


def api_rejected(metrics: Metrics) -> dict[str, float]:
    return {k: v for k, v in metrics.snapshot().items() if k.startswith("api_rejected:")}


async def raw_post_tx(port: int, payload: bytes, parts: list[bytes], pause: float) -> bytes:
    """POST /tx over a raw socket: the head announcing ``payload``'s length, then
    ``parts`` of the body with ``pause`` seconds before each, until the server answers;
    returns the status line (b"" if the server closed without one)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answer = asyncio.create_task(asyncio.wait_for(reader.readline(), 10))
    try:
        writer.write(b"POST /tx HTTP/1.1\r\nHost: replica\r\nContent-Type: application/json"
                     b"\r\nContent-Length: %d\r\n\r\n" % len(payload))
        for part in parts:
            await asyncio.sleep(pause)
            if answer.done():
                break
            writer.write(part)
        return await answer
    finally:
        writer.close()


def test_post_tx_reads_a_body_that_arrives_in_several_packets_whole(world) -> None:
    _config, core, store, gateway = world
    payload = json.dumps(body(ALICE, core.app.chain_id, BOB.address, 10, 0)).encode()

    async def scenario() -> tuple[bytes, dict[str, float]]:
        async with serving_api(core, store, gateway) as (port, metrics):
            halves = [payload[:100], payload[100:]]
            return await raw_post_tx(port, payload, halves, pause=0.1), api_rejected(metrics)

    line, refused = asyncio.run(scenario())
    assert line.startswith(b"HTTP/1.1 202"), line
    assert gateway.queue.qsize() == 1 and refused == {}


def test_post_tx_refuses_a_body_slower_than_the_body_timeout_with_408(world) -> None:
    _config, core, store, gateway = world
    payload = json.dumps(body(ALICE, core.app.chain_id, BOB.address, 10, 0)).encode()

    async def scenario() -> tuple[bytes, dict[str, float]]:
        async with serving_api(core, store, gateway, body_timeout=0.3) as (port, metrics):
            trickle = [payload[i:i + 1] for i in range(len(payload))]
            return await raw_post_tx(port, payload, trickle, pause=0.05), api_rejected(metrics)

    line, refused = asyncio.run(scenario())
    assert line.startswith(b"HTTP/1.1 408"), line
    assert refused == {"api_rejected:body_timeout": 1}
    assert gateway.queue.qsize() == 0


def test_post_tx_counts_a_client_that_hangs_up_mid_body_without_an_internal_error(
        world, caplog) -> None:
    _config, core, store, gateway = world

    async def scenario() -> dict[str, float]:
        async with serving_api(core, store, gateway) as (port, metrics):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST /tx HTTP/1.1\r\nHost: replica\r\nContent-Length: 400\r\n"
                         b"\r\n{")
            await writer.drain()
            writer.close()
            for _ in range(200):
                if api_rejected(metrics):
                    break
                await asyncio.sleep(0.01)
            return api_rejected(metrics)

    assert asyncio.run(scenario()) == {"api_rejected:incomplete_body": 1}
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
