"""The ledger's HTTP API on every replica: ``POST /tx``, ``GET /tx/{id}``,
``GET /account/{address}``, ``GET /block/{height}`` (``/status`` and ``/metrics`` are
:mod:`phalanx.api.http`'s).

- ``POST /tx`` takes a JSON transfer ``{"from", "to", "amount", "nonce", "signature"}``
  (hex strings and integers), runs the replica's admission on it (malformed, bad
  signature, stale nonce, nonce too far ahead, insufficient funds now) and answers
  ``202 {"tx_id"}`` or a 4xx ``{"error": reason, "detail"}``. An admitted transaction
  enters ordering through the replica's :class:`Gateway`: a pool of client identities of
  this process that submit it to the whole cluster with the native client protocol, as
  any client would (so it is ordered, executed and answered exactly like the others).
- ``GET /tx/{id}``: ``committed`` (height, index) or ``rejected`` (reason) from the
  replica's durable tx index, ``pending`` while its gateway still has it, ``refused`` or
  ``not_accepted`` (reason) if the cluster refused its gateway's request for good or
  for now (it may still execute: the index is read first), else 404.
- ``GET /account/{address}``: balance and nonce at the latest *certified* height, with
  the sparse Merkle proof, the block header and its commit certificate (2f+1 replica
  signatures), so a client verifies the answer against the cluster's public keys alone
  (:mod:`phalanx.client`). At height 0 the "certificate" is the genesis in the config.
- ``GET /block/{height}``: header, hash, transactions, outcomes, certificate. A block this
  replica skipped (state transfer) is fetched from a peer and served only if it verifies
  (:mod:`phalanx.api.block_fetch`), marked ``fetched_from``.

Limits: request bodies above :data:`MAX_TX_BODY` get 413, bodies slower than
``body_timeout`` 408 (:func:`phalanx.api.limits.read_body`); each client address gets a
token bucket (``rate`` per second, ``burst``), beyond which it gets 429. Every refusal
is counted in ``phalanx_api_rejected{type=<reason>}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import OrderedDict
from typing import Any

from aiohttp import web

from phalanx.api.limits import BODY_TIMEOUT_S, BodyIncomplete, BodyTimeout, read_body
from phalanx.config import ClusterConfig
from phalanx.crypto.ed25519 import Ed25519ClientCrypto
from phalanx.crypto.keys import KeyPair
from phalanx.host import ReplicaHost
from phalanx.host.certificates import Certificate, cert_key, decode_certificate
from phalanx.ledger import tx as txm
from phalanx.ledger.block import APPLIED, decode_block, decode_tx_record
from phalanx.ledger.state import (
    MAX_NONCE_AHEAD,
    REJECTED_PREFIX,
    TX_PREFIX,
    Ledger,
    account_key,
    block_key,
    decode_bundle_result,
    decode_result,
    parse_account_value,
)
from phalanx.measure.accounting import unwrap
from phalanx.protocols.registry import protocol
from phalanx.runtime.client import (
    ClientMux,
    RequestFailed,
    RequestNotAccepted,
    RequestRefused,
)
from phalanx.runtime.cluster_client import client_transport
from phalanx.runtime.metrics import Metrics

MAX_TX_BODY = 2048
"""Bytes of a POST /tx body: a JSON transfer is about 400."""
GATEWAY_CLIENTS = 32
GATEWAY_BUNDLE = 16
"""Most queued transfers a gateway client sends as one bundle op (see ledger.tx.Bundle)."""
GATEWAY_QUEUE = 10_000
GATEWAY_TIMEOUT_S = 30.0
STATUS_MEMORY = 100_000
"""Gateway outcomes remembered for GET /tx (the durable tx index has the rest)."""

# Admission reason -> HTTP status.
_STATUS = {
    txm.MALFORMED: 400,
    txm.AMOUNT_NOT_POSITIVE: 400,
    txm.BAD_SIGNATURE: 403,
    txm.STALE_NONCE: 409,
    txm.NONCE_TOO_FAR: 409,
    txm.INSUFFICIENT_FUNDS: 422,
}


def admission_detail(reason: str, tx: txm.Transfer, balance: int, next_nonce: int) -> str:
    """What a refused transfer's sender needs to fix it, against the executed state."""
    if reason == txm.INSUFFICIENT_FUNDS:
        return f"balance {balance} < amount {tx.amount}"
    if reason == txm.STALE_NONCE:
        return f"nonce {tx.nonce} is used; the sender's next nonce is {next_nonce}"
    if reason == txm.NONCE_TOO_FAR:
        return (f"nonce {tx.nonce} is more than {MAX_NONCE_AHEAD} ahead of the sender's "
                f"next nonce {next_nonce}")
    if reason == txm.BAD_SIGNATURE:
        return "the signature is not the sender's over this transfer on this ledger's chain"
    if reason == txm.AMOUNT_NOT_POSITIVE:
        return "the amount must be at least 1"
    if reason == txm.MALFORMED:
        return "not a canonical transfer of this ledger"
    return reason


def tx_to_json(tx: txm.Transfer) -> dict[str, Any]:
    return {"from": tx.sender.hex(), "to": tx.to.hex(), "amount": tx.amount,
            "nonce": tx.nonce, "signature": tx.signature.hex()}


class BadTxJson(ValueError):
    """A POST /tx body that is not a transfer: ``reason`` (a refusal reason) and the
    message saying which field is wrong and what it must be."""

    def __init__(self, detail: str, reason: str = txm.MALFORMED) -> None:
        super().__init__(detail)
        self.reason = reason


_HEX_FIELDS = (("from", txm.ADDRESS_BYTES), ("to", txm.ADDRESS_BYTES),
               ("signature", txm.SIGNATURE_BYTES))


def tx_from_json(body: Any) -> txm.Transfer:
    """The transfer in a POST /tx body; :class:`BadTxJson` naming the wrong field.

    Every field is checked here, before the transfer is encoded: an integer outside
    64 bits cannot even be encoded, and a refusal must say what to fix."""
    if not isinstance(body, dict):
        raise BadTxJson("the body must be a JSON object")
    missing = [k for k in ("from", "to", "amount", "nonce", "signature") if k not in body]
    if missing:
        raise BadTxJson(f"missing field(s): {', '.join(missing)}")
    unknown = sorted(set(body) - {"from", "to", "amount", "nonce", "signature"})
    if unknown:
        raise BadTxJson(f"unknown field(s): {', '.join(unknown)}")
    amount, nonce = body["amount"], body["nonce"]
    for name, value in (("amount", amount), ("nonce", nonce)):
        if type(value) is not int:
            raise BadTxJson(f"{name} must be an integer, got {json.dumps(value)}")
    if amount < 1:
        raise BadTxJson(f"the amount must be at least 1, got {amount}",
                        txm.AMOUNT_NOT_POSITIVE)
    if amount > txm.MAX_AMOUNT:
        raise BadTxJson(f"the amount must be at most 2^64-1 = {txm.MAX_AMOUNT}")
    if not 0 <= nonce <= txm.MAX_AMOUNT:
        raise BadTxJson(f"the nonce must be in 0..2^64-1, got {nonce}")
    fields = []
    for name, size in _HEX_FIELDS:
        value = body[name]
        try:
            raw = bytes.fromhex(value)
        except (TypeError, ValueError):
            raw = None
        if raw is None or len(raw) != size:
            raise BadTxJson(f"{name} must be {2 * size} hex digits ({size} bytes)")
        fields.append(raw)
    sender, to, sig = fields
    return txm.Transfer(sender, to, amount, nonce, sig)


def certificate_json(cert: Certificate | None) -> dict[str, Any] | None:
    if cert is None:
        return None
    return {"height": cert.height, "block_hash": cert.block_hash.hex(),
            "sigs": [{"replica": r, "sig": s.hex()} for r, s in cert.sigs]}


class TokenBuckets:
    """Per-client request-rate limits (``rate`` per second, bursts up to ``burst``)."""

    def __init__(self, rate: float, burst: float, max_clients: int = 10_000) -> None:
        self.rate = rate
        self.burst = burst
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def allow(self, client: str, now: float) -> bool:
        tokens, last = self._buckets.pop(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        allowed = tokens >= 1.0
        self._buckets[client] = (tokens - 1.0 if allowed else tokens, now)
        if len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)  # the least recently seen client
        return allowed


class Gateway:
    """Client identities of this replica's process that submit admitted transactions to
    the cluster (the native client protocol: answered once f+1 replicas agree)."""

    def __init__(self, config: ClusterConfig, clients: int = GATEWAY_CLIENTS,
                 queue_limit: int = GATEWAY_QUEUE, timeout: float = GATEWAY_TIMEOUT_S) -> None:
        self.config = config
        self.clients = clients
        self.timeout = timeout
        self.queue: asyncio.Queue[tuple[bytes, bytes]] = asyncio.Queue(queue_limit)
        # tx id -> {"status": "pending" | "committed" | "rejected", ...}
        self.outcomes: OrderedDict[bytes, dict[str, Any]] = OrderedDict()
        self.metrics = Metrics("gateway")
        self._mux: ClientMux | None = None
        self._workers: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        config = self.config
        keys = list(config.public_keys)
        quorums = config.quorums
        spec = protocol(config.protocol)
        transport = client_transport(config, KeyPair.generate(), self.metrics)
        self._mux = mux = ClientMux(transport)
        first = time.time_ns() // 1000
        for _ in range(self.clients):
            core = spec.make_client(Ed25519ClientCrypto(KeyPair.generate(), keys), quorums, 1.0)
            core.next_timestamp = first
            core.endpoint = mux.endpoint
            runner = mux.add(core)
            self._workers.append(asyncio.create_task(self._work(runner)))
        await transport.start()

    async def close(self) -> None:
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        if self._mux is not None:
            await self._mux.close()

    def submit(self, tid: bytes, raw: bytes) -> bool:
        """Queue an admitted transaction; False if the queue is full (overloaded)."""
        known = self.outcomes.get(tid)
        if known is not None and known["status"] == "pending":
            return True  # already on its way: idempotent
        try:
            self.queue.put_nowait((tid, raw))
        except asyncio.QueueFull:
            return False
        self._record(tid, {"status": "pending"})
        return True

    def outcome(self, tid: bytes) -> dict[str, Any] | None:
        return self.outcomes.get(tid)

    def _record(self, tid: bytes, outcome: dict[str, Any]) -> None:
        self.outcomes.pop(tid, None)
        self.outcomes[tid] = outcome
        while len(self.outcomes) > STATUS_MEMORY:
            self.outcomes.popitem(last=False)

    async def _work(self, runner: Any) -> None:
        """Send what is queued, up to GATEWAY_BUNDLE transfers per request."""
        while True:
            items = [await self.queue.get()]
            while len(items) < GATEWAY_BUNDLE and not self.queue.empty():
                items.append(self.queue.get_nowait())
            if len(items) == 1:
                await self._send_one(runner, *items[0])
            else:
                await self._send_bundle(runner, items)

    async def _send_one(self, runner: Any, tid: bytes, raw: bytes) -> None:
        try:
            result = decode_result(await asyncio.wait_for(runner.request(raw), self.timeout))
        except Exception as exc:
            self._record_failure(tid, exc)
        else:
            self._record_result(tid, result)

    async def _send_bundle(self, runner: Any, items: list[tuple[bytes, bytes]]) -> None:
        op = txm.encode_bundle([raw for _, raw in items])
        try:
            # No grace after a refusal for now: if the bundle executes after all, the
            # transfers sent again alone are refused or rejected as stale, and GET /tx
            # reads the durable index, where the bundle's outcomes are, first.
            results = decode_bundle_result(
                await asyncio.wait_for(runner.request(op, grace=0.0), self.timeout))
        except RequestFailed:
            # Refused whole (one transfer no longer admissible at the primary, say): send
            # each on its own, so that the others do not share its fate.
            self.metrics.inc("gateway_bundles_split")
            for tid, raw in items:
                await self._send_one(runner, tid, raw)
        except Exception as exc:
            for tid, _ in items:
                self._record_failure(tid, exc)
        else:
            for (tid, _), result in zip(items, results, strict=False):
                self._record_result(tid, result)

    def _record_result(self, tid: bytes, result: Any) -> None:
        status = "committed" if result.status == APPLIED else "rejected"
        self._record(tid, {"status": status, "height": result.height, "reason": result.reason})

    def _record_failure(self, tid: bytes, exc: Exception) -> None:
        if isinstance(exc, RequestRefused):
            self._record(tid, {"status": "refused", "reason": exc.reason})
        elif isinstance(exc, RequestNotAccepted):
            # Not a failure: the cluster may still execute it (docs/pbft.md, "Refusals").
            self._record(tid, {"status": "not_accepted", "reason": exc.reason})
        elif isinstance(exc, TimeoutError):
            self._record(tid, {"status": "unknown", "reason": "gateway_timeout"})
        else:  # a broken link must not kill the worker
            self._record(tid, {"status": "unknown", "reason": type(exc).__name__})


class LedgerApi:
    """Routes of the ledger API over one replica (its host, store, gateway)."""

    def __init__(self, host: ReplicaHost, store: Any, gateway: Gateway | None,
                 metrics: Metrics, *, rate: float = 200.0, burst: float = 400.0,
                 blocks: Any = None, body_timeout: float = BODY_TIMEOUT_S) -> None:
        self.host = host
        self.store = store
        self.gateway = gateway
        self.metrics = metrics
        self.blocks = blocks  # a BlockFetcher for skipped blocks, or None
        self.buckets = TokenBuckets(rate, burst)
        self.body_timeout = body_timeout

    def install(self, app: web.Application) -> None:
        app.router.add_post("/tx", self.post_tx)
        app.router.add_get("/tx/{id}", self.get_tx)
        app.router.add_get("/account/{address}", self.get_account)
        app.router.add_get("/block/{height}", self.get_block)

    # -- helpers ----------------------------------------------------------------------------

    @property
    def ledger(self) -> Ledger:
        """The replica's ledger (replaced when a snapshot is installed: look it up each
        time), without the accounting's timing wrapper."""
        ledger = unwrap(self.host.app)
        assert isinstance(ledger, Ledger), "the ledger API serves a ledger replica"
        return ledger

    def _refuse(self, status: int, reason: str, detail: str = "") -> web.Response:
        self.metrics.inc("api_rejected:" + reason)
        return web.json_response({"error": reason, "detail": detail or reason}, status=status)

    def _limited(self, request: web.Request) -> web.Response | None:
        if not self.buckets.allow(request.remote or "?", time.monotonic()):
            return self._refuse(429, "rate_limited", "too many requests from this client")
        return None

    def _read(self, key: bytes) -> bytes | None:
        return None if self.store is None else self.store.get(key)

    def _certificate(self, height: int) -> Certificate | None:
        certifier = self.host.certifier
        cert = certifier.certificate(height) if certifier is not None else None
        if cert is None:
            raw = self._read(cert_key(height))
            if raw is not None:
                with contextlib.suppress(Exception):
                    cert = decode_certificate(raw)
        return cert

    # -- handlers ---------------------------------------------------------------------------

    async def post_tx(self, request: web.Request) -> web.Response:
        if (refused := self._limited(request)) is not None:
            return refused
        if request.content_length is not None and request.content_length > MAX_TX_BODY:
            return self._refuse(413, "body_too_large", f"at most {MAX_TX_BODY} bytes")
        try:
            body = await read_body(request, MAX_TX_BODY, self.body_timeout)
        except BodyTimeout as exc:
            return self._refuse(408, "body_timeout", str(exc))
        except BodyIncomplete as exc:
            # Nobody may be left to read this answer; the refusal is counted all the same.
            return self._refuse(400, "incomplete_body", str(exc))
        if len(body) > MAX_TX_BODY:
            return self._refuse(413, "body_too_large", f"at most {MAX_TX_BODY} bytes")
        try:
            tx = tx_from_json(json.loads(body))
        except BadTxJson as exc:
            return self._refuse(_STATUS.get(exc.reason, 400), exc.reason, str(exc))
        except ValueError as exc:  # json's errors, UnicodeDecodeError included
            return self._refuse(400, txm.MALFORMED, f"the body is not JSON: {exc}")
        raw = txm.encode_tx(tx)
        reason = self.ledger.admit(raw)
        if reason is not None:
            return self._refuse(_STATUS.get(reason, 400), reason,
                                admission_detail(reason, tx, *self.ledger.account(tx.sender)))
        tid = txm.tx_id(raw)
        if self.gateway is None or not self.gateway.submit(tid, raw):
            return self._refuse(503, "overloaded", "the gateway queue is full; retry later")
        self.metrics.inc("api_tx_accepted")
        return web.json_response({"tx_id": tid.hex(), "status": "pending"}, status=202)

    async def get_tx(self, request: web.Request) -> web.Response:
        if (refused := self._limited(request)) is not None:
            return refused
        try:
            tid = bytes.fromhex(request.match_info["id"])
            if len(tid) != 32:
                raise ValueError
        except ValueError:
            return self._refuse(400, "bad_tx_id", "a tx id is 64 hex digits")
        for prefix, status in ((TX_PREFIX, "committed"), (REJECTED_PREFIX, "rejected")):
            raw = self._read(prefix + tid)
            if raw is not None:
                record = decode_tx_record(raw)
                body = {"tx_id": tid.hex(), "status": status, "height": record.height,
                        "index": record.index}
                if record.reason:
                    body["reason"] = record.reason
                return web.json_response(body)
        outcome = self.gateway.outcome(tid) if self.gateway is not None else None
        if outcome is not None:
            return web.json_response({"tx_id": tid.hex(), **outcome})
        return self._refuse(404, "unknown_tx", "this replica has no record of the tx")

    async def get_account(self, request: web.Request) -> web.Response:
        if (refused := self._limited(request)) is not None:
            return refused
        try:
            address = bytes.fromhex(request.match_info["address"])
            if len(address) != txm.ADDRESS_BYTES:
                raise ValueError
        except ValueError:
            return self._refuse(400, "bad_address", "an address is 64 hex digits")
        ledger = self.ledger
        certifier = self.host.certifier
        heights = sorted(certifier.certificates, reverse=True) if certifier else []
        chosen = None
        for height in [*heights, 0]:
            proved = ledger.prove(address, height)
            if proved is not None:
                chosen = height, proved
                break
        if chosen is None:
            return self._refuse(503, "no_certified_state",
                                "no certified block is in memory yet; retry shortly")
        height, (header, value, proof) = chosen
        balance, nonce = parse_account_value(value) if value is not None else (0, 0)
        latest_balance, latest_nonce = ledger.account(address)
        return web.json_response({
            "address": address.hex(),
            "balance": balance,
            "nonce": nonce,
            "height": height,
            "key": account_key(address).hex(),
            "value": None if value is None else value.hex(),
            "proof": proof.to_json(),
            "header": header.to_json(),
            "block_hash": header.hash().hex(),
            "certificate": certificate_json(self._certificate(height) if height else None),
            "executed": {"height": ledger.height, "balance": latest_balance,
                         "nonce": latest_nonce},
        })

    async def get_block(self, request: web.Request) -> web.Response:
        if (refused := self._limited(request)) is not None:
            return refused
        try:
            height = int(request.match_info["height"])
            if not 0 <= height < 1 << 63:
                raise ValueError
        except ValueError:
            return self._refuse(400, "bad_height", "a height is a non-negative integer")
        if height == 0:
            header = self.ledger.genesis_header()
            return web.json_response({"height": 0, "hash": header.hash().hex(),
                                      "header": header.to_json(), "txs": [], "outcomes": [],
                                      "certificate": None})
        raw = self._read(block_key(height))
        if raw is None:
            if self.blocks is not None and height <= self.ledger.height:
                # Below our state but not here: skipped by a state transfer.
                fetched = await self.blocks.fetch(height)
                if fetched is not None:
                    self.metrics.inc("api_blocks_fetched")
                    return web.json_response(fetched)
            return self._refuse(404, "unknown_block",
                                "not executed here yet (or skipped by a state transfer)")
        block = decode_block(raw)
        txs = []
        for op in block.txs:
            tx = txm.decode_tx(op)
            txs.append(tx_to_json(tx) if isinstance(tx, txm.Transfer) else {"raw": op.hex()})
        return web.json_response({
            "height": height,
            "hash": block.header.hash().hex(),
            "header": block.header.to_json(),
            "txs": txs,
            "outcomes": [{"tx_id": o.tx_id.hex(), "status": "applied" if o.status == APPLIED
                          else "rejected", "reason": o.reason} for o in block.outcomes],
            "certificate": certificate_json(self._certificate(height)),
        })
