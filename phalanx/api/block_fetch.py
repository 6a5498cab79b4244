"""Blocks a replica skipped, fetched from its peers for ``GET /block/{height}``.

A replica that caught up by state transfer adopted a checkpoint's accounts without
executing the blocks below it, so it has no record of them. Rather than answer 404, its
API asks the other replicas' ``GET /block/{height}`` in turn and serves the first answer
that verifies against the cluster's public keys alone — so a peer can make it serve
nothing false, only fail to serve:

- the header is of this chain and height, and ``hash`` is its hash;
- its commit certificate holds 2f+1 valid signatures of distinct replicas over that hash
  (:meth:`phalanx.client.ledger.LedgerClient.verify_certificate`);
- the transactions are the block's: each outcome's ``tx_id`` is the hash of the
  transaction's canonical bytes, and the Merkle root over the outcomes (id and
  applied/rejected) is the header's ``tx_root`` (and its only shard root).

A rejection's ``reason`` text is not covered by the header (only the status is); it is
served as the peer gave it. Nothing fetched is stored; recent answers are cached.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import aiohttp

from phalanx.api.ledger import tx_from_json
from phalanx.client.ledger import LedgerClient, ProofError
from phalanx.config import ClusterConfig
from phalanx.ledger import tx as txm
from phalanx.ledger.block import (
    APPLIED,
    REJECTED,
    BlockHeader,
    TxOutcome,
    merkle_root,
    outcome_leaf,
)

FETCH_TIMEOUT_S = 2.0
CACHE_BLOCKS = 64


class BlockError(ValueError):
    """A peer's block did not verify; the message says why."""


def verify_block(body: Any, height: int, checker: LedgerClient) -> None:
    """Raise :class:`BlockError` unless ``body`` (a ``GET /block`` answer) is block
    ``height`` of ``checker``'s chain, certified by 2f+1 replicas (module docstring)."""
    try:
        header = BlockHeader.from_json(body["header"])
        if header.height != height or header.chain_id != checker.chain_id:
            raise BlockError("header of another height or chain")
        if body["hash"] != header.hash().hex():
            raise BlockError("hash is not the header's")
        checker.verify_certificate(header, body["certificate"])
        txs, outcomes = body["txs"], body["outcomes"]
        if not isinstance(txs, list) or not isinstance(outcomes, list):
            raise BlockError("txs and outcomes must be lists")
        if not len(txs) == len(outcomes) == header.tx_count:
            raise BlockError("txs, outcomes and the header's tx_count differ")
        leaves = []
        for tx, outcome in zip(txs, outcomes, strict=True):
            raw = (bytes.fromhex(tx["raw"]) if isinstance(tx, dict) and "raw" in tx
                   else txm.encode_tx(tx_from_json(tx)))
            tid = bytes.fromhex(outcome["tx_id"])
            if tid != txm.tx_id(raw):
                raise BlockError("an outcome names another transaction")
            status = {"applied": APPLIED, "rejected": REJECTED}[outcome["status"]]
            leaves.append(outcome_leaf(TxOutcome(tid, status)))
        root = merkle_root(leaves)
        if root != header.tx_root or header.shard_roots != [root]:
            raise BlockError("transactions do not match the header's tx_root")
    except ProofError as exc:
        raise BlockError(str(exc)) from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        if isinstance(exc, BlockError):
            raise
        raise BlockError(f"malformed block: {type(exc).__name__}: {exc}") from None


class BlockFetcher:
    """Fetches and verifies blocks from the other replicas of ``config``."""

    def __init__(self, config: ClusterConfig, replica_id: int, *,
                 timeout: float = FETCH_TIMEOUT_S) -> None:
        self.config = config
        self.me = replica_id
        self.checker = LedgerClient(config)  # only its verification methods are used
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._cache: OrderedDict[int, dict[str, Any]] = OrderedDict()
        self.rejected = 0  # peer answers that did not verify

    async def fetch(self, height: int) -> dict[str, Any] | None:
        """Block ``height`` as a verified ``GET /block`` body plus ``fetched_from``, or
        None if no peer had one that verifies."""
        cached = self._cache.get(height)
        if cached is not None:
            return cached
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout, trust_env=False)
        for peer in self.config.replicas:
            if peer.id == self.me:
                continue
            url = f"http://{peer.host}:{peer.http_port}/block/{height}"
            try:
                async with self._session.get(url) as resp:
                    if resp.status != 200:
                        continue
                    body = await resp.json(content_type=None)
            except (aiohttp.ClientError, TimeoutError, ValueError):
                continue
            try:
                verify_block(body, height, self.checker)
            except BlockError:
                self.rejected += 1
                continue
            body = {**body, "fetched_from": peer.id}
            self._cache[height] = body
            while len(self._cache) > CACHE_BLOCKS:
                self._cache.popitem(last=False)
            return body
        return None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
