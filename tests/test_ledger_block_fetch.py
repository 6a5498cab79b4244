"""GET /block for a block this replica skipped: fetched from a peer, served only if it
verifies against the cluster's keys (header, 2f+1 certificate, transactions)."""

from __future__ import annotations

import asyncio
import copy
import dataclasses

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from phalanx.api.block_fetch import BlockError, BlockFetcher, verify_block
from phalanx.api.ledger import LedgerApi, certificate_json, tx_to_json
from phalanx.client.ledger import LedgerClient
from phalanx.client.wallet import Wallet
from phalanx.config import generate_cluster
from phalanx.crypto.keys import KeyPair
from phalanx.host.certificates import Certificate, signed_bytes
from phalanx.ledger import tx as txm
from phalanx.ledger.block import APPLIED, decode_block
from phalanx.ledger.state import Ledger
from phalanx.runtime.metrics import Metrics

ALICE, BOB = Wallet(KeyPair.from_seed(b"a" * 32)), Wallet(KeyPair.from_seed(b"b" * 32))


@pytest.fixture
def chain(tmp_path):
    """A cluster config, its replica keys, and a ledger with one sealed block 1 (an
    applied transfer, a rejected one and a garbage op)."""
    config = generate_cluster(tmp_path / "c", 4, app="ledger", genesis={ALICE.address: 1000})
    keys = [KeyPair.from_seed(bytes.fromhex((tmp_path / "c" / f"replica-{i}.key")
                                            .read_text().strip())) for i in range(4)]
    ledger = Ledger(config.genesis)
    ops = [txm.encode_tx(ALICE.sign(ledger.chain_id, BOB.address, 10, 0)),
           txm.encode_tx(ALICE.sign(ledger.chain_id, BOB.address, 10, 5)),  # bad nonce
           b"\x93garbage"]
    ledger.apply(ops)
    sealed = ledger.seal_block(7)
    block = decode_block(sealed.records[0][1])
    sigs = [(r, keys[r].sign(signed_bytes(1, sealed.digest))) for r in (0, 2, 3)]
    return config, ledger, block, sealed.records, Certificate(1, sealed.digest, sigs)


def block_json(block, cert) -> dict:
    """What GET /block answers (the shape LedgerApi.get_block writes)."""
    txs = []
    for op in block.txs:
        tx = txm.decode_tx(op)
        txs.append(tx_to_json(tx) if isinstance(tx, txm.Transfer) else {"raw": op.hex()})
    return {"height": block.header.height, "hash": block.header.hash().hex(),
            "header": block.header.to_json(), "txs": txs,
            "outcomes": [{"tx_id": o.tx_id.hex(),
                          "status": "applied" if o.status == APPLIED else "rejected",
                          "reason": o.reason} for o in block.outcomes],
            "certificate": certificate_json(cert)}


def tampered(good: dict) -> list[tuple[str, dict]]:
    cases = []

    def case(name, change):
        body = copy.deepcopy(good)
        change(body)
        cases.append((name, body))

    case("another amount", lambda b: b["txs"][0].update(amount=11))
    case("status flipped", lambda b: b["outcomes"][0].update(status="rejected"))
    case("outcomes swapped", lambda b: b["outcomes"].reverse())
    case("a tx dropped", lambda b: (b["txs"].pop(), b["outcomes"].pop()))
    case("short certificate", lambda b: b["certificate"]["sigs"].pop())
    case("forged signature", lambda b: b["certificate"]["sigs"][0].update(sig="00" * 64))
    case("another hash", lambda b: b.update(hash="00" * 32))
    case("header state root", lambda b: b["header"].update(state_root="11" * 32))
    case("garbage", lambda b: b.update(txs="nope"))
    case("no certificate", lambda b: b.update(certificate=None))
    return cases


def test_a_certified_block_verifies_and_every_tampering_is_caught(chain) -> None:
    config, _ledger, block, _records, cert = chain
    checker = LedgerClient(config)
    good = block_json(block, cert)
    verify_block(good, 1, checker)
    with pytest.raises(BlockError, match="another height"):
        verify_block(good, 2, checker)
    for name, body in tampered(good):
        with pytest.raises(BlockError):
            verify_block(body, 1, checker)
            pytest.fail(f"accepted: {name}")


class _Host:
    """What LedgerApi reads of a replica's host: its ledger and certifier."""

    def __init__(self, app, certifier=None) -> None:
        self.app = app
        self.certifier = certifier


class _Certifier:
    def __init__(self, cert: Certificate) -> None:
        self.certificates = {cert.height: cert}

    def certificate(self, height: int) -> Certificate | None:
        return self.certificates.get(height)


class _Store:
    def __init__(self, records) -> None:
        self.records = dict(records)

    def get(self, key: bytes) -> bytes | None:
        return self.records.get(key)


def test_a_skipped_block_is_served_from_a_peer_only_once_it_verifies(chain) -> None:
    config, ledger, block, records, cert = chain

    async def main() -> None:
        # Replica 1 has the block; replica 2 answers with a tampered one; replica 0 (us)
        # adopted the state above it without the block.
        peer_app, liar_app = web.Application(), web.Application()
        LedgerApi(_Host(ledger, _Certifier(cert)), _Store(records), None,
                  Metrics("1")).install(peer_app)
        good = block_json(block, cert)

        async def lie(_request):
            return web.json_response(tampered(good)[0][1])

        liar_app.router.add_get("/block/{height}", lie)
        async with TestServer(peer_app) as peer, TestServer(liar_app) as liar:
            replicas = list(config.replicas)
            replicas[1] = dataclasses.replace(replicas[1], http_port=peer.port)
            replicas[2] = dataclasses.replace(replicas[2], http_port=liar.port)
            replicas[3] = dataclasses.replace(replicas[3], http_port=1)  # nobody there
            cfg = dataclasses.replace(config, replicas=tuple(replicas))
            fetcher = BlockFetcher(cfg, 0, timeout=2.0)
            our_app = web.Application()
            metrics = Metrics("0")
            LedgerApi(_Host(ledger), _Store([]), None, metrics, blocks=fetcher).install(our_app)
            try:
                async with TestClient(TestServer(our_app)) as client:
                    resp = await client.get("/block/1")
                    body = await resp.json()
                    assert resp.status == 200 and body["fetched_from"] == 1
                    assert body["hash"] == good["hash"] and body["txs"] == good["txs"]
                    assert metrics.get("api_blocks_fetched") == 1
                    resp = await client.get("/block/2")  # above our state: not fetched
                    assert resp.status == 404
                # With the honest peer gone only the liar answers: nothing is served.
                replicas[1] = dataclasses.replace(replicas[1], http_port=2)
                lonely = BlockFetcher(dataclasses.replace(config, replicas=tuple(replicas)), 0)
                assert await lonely.fetch(1) is None and lonely.rejected == 1
                await lonely.close()
            finally:
                await fetcher.close()

    asyncio.run(main())
