"""The crash torture's verdict: what the load was told, against what the replicas hold.

Three independent checks, each a pure function of what was read (so each is tested
with doubles, and a broken cluster cannot hide one check behind another's failure):

- :func:`check_state`: every replica's executed state (balances and next nonces of all
  wallets, from ``GET /account``) against the acknowledgements. A wallet's transfers
  applied are exactly nonces ``0..N-1`` (one signed transfer per nonce), so ``N`` must
  exceed every acknowledged nonce (no acknowledged transfer lost), must not exceed what
  was sent, and the balances must be exactly what those transfers make.
- :func:`check_agreement`: equal executed seq, state root and head block on every
  replica.
- :class:`BlockAudit`: the blocks and tx index each replica has *on disk* (read from its
  store after a clean stop), height by height: one block per height across replicas
  (same hash), hash chains unbroken, every applied transaction of a local block in the
  replica's tx index at its place, and every acknowledged transfer in the block the
  cluster named, held by at least f+1 replicas (it was durable at the f+1 that replied
  before they replied; nothing may take it away).
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

from phalanx.ledger import tx as txm
from phalanx.ledger.block import APPLIED, Block, decode_block, decode_tx_record
from phalanx.ledger.state import TX_PREFIX, block_key
from phalanx.reliability.wallets import expected_balances

MAX_LISTED = 20
"""Findings of one kind spelled out; the rest are counted."""


@dataclass
class Findings:
    """Violations by kind; an empty :class:`Findings` is a passed run."""

    items: dict[str, list[str]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, kind: str, detail: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        listed = self.items.setdefault(kind, [])
        if len(listed) < MAX_LISTED:
            listed.append(detail)

    def __bool__(self) -> bool:
        return bool(self.counts)

    def to_json(self) -> dict[str, Any]:
        return {kind: {"count": self.counts[kind], "examples": self.items[kind]}
                for kind in sorted(self.counts)}


# -- the load's journal -------------------------------------------------------------------


@dataclass
class LoadRecord:
    """What the wallets were told, per wallet and nonce (compact: a campaign acknowledges
    millions of transfers)."""

    wallets: int
    acked_height: list[array[int]] = field(default_factory=list)  # nonce -> block, -1 if none
    ack_times: array[float] = field(default_factory=lambda: array("d"))
    latencies: array[float] = field(default_factory=lambda: array("d"))
    consumed: int = 0
    retries: int = 0
    anomalies: list[dict[str, Any]] = field(default_factory=list)
    sent: list[int] | None = None  # from the journal's end line
    unfinished: int = 0

    def __post_init__(self) -> None:
        if not self.acked_height:
            self.acked_height = [array("q") for _ in range(self.wallets)]

    @property
    def acks(self) -> int:
        return len(self.ack_times)

    def acked(self) -> Iterator[tuple[int, int, int]]:
        """(wallet, nonce, block) of every acknowledged transfer."""
        for wallet, heights in enumerate(self.acked_height):
            for nonce, height in enumerate(heights):
                if height >= 0:
                    yield wallet, nonce, height

    def last_acked(self, wallet: int) -> int:
        """The highest acknowledged nonce of ``wallet`` (-1 if none)."""
        heights = self.acked_height[wallet]
        for nonce in range(len(heights) - 1, -1, -1):
            if heights[nonce] >= 0:
                return nonce
        return -1

    def _mark(self, wallet: int, nonce: int, height: int) -> None:
        heights = self.acked_height[wallet]
        while len(heights) <= nonce:
            heights.append(-1)
        heights[nonce] = height


def read_journal(path: Path, wallets: int) -> LoadRecord:
    """Parse the load's journal (a missing ``end`` line leaves ``sent`` None)."""
    record = LoadRecord(wallets)
    with open(path) as file:
        for line in file:
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a torn last line (the load was killed)
            kind = event.get("ev")
            if kind == "ack":
                record._mark(event["w"], event["n"], event["h"])
                record.ack_times.append(event["t"])
                record.latencies.append(event["lat"])
            elif kind == "consumed":
                record.consumed += 1
            elif kind == "retry":
                record.retries += 1
            elif kind == "anomaly":
                record.anomalies.append(event)
            elif kind == "end":
                record.sent = list(event["sent"])
                record.unfinished = int(event.get("unfinished", 0))
    return record


# -- the executed state -------------------------------------------------------------------


def _all_read(wallets: list[tuple[int, int] | None]) -> TypeGuard[list[tuple[int, int]]]:
    return all(a is not None for a in wallets)


def check_state(findings: Findings, seed: int, load: LoadRecord,
                accounts: dict[int, list[tuple[int, int] | None]]) -> None:
    """``accounts[replica][wallet]`` is (balance, next nonce), or None if unreadable."""
    for replica, wallets in sorted(accounts.items()):
        if not _all_read(wallets):
            missing = sum(a is None for a in wallets)
            findings.add("state_unreadable", f"replica {replica}: {missing} accounts unread")
            continue
        nonces = [nonce for _, nonce in wallets]
        for wallet, nonce in enumerate(nonces):
            last = load.last_acked(wallet)
            if nonce <= last:
                height = load.acked_height[wallet][last]
                findings.add("acked_lost", f"replica {replica}: wallet {wallet} is at nonce "
                             f"{nonce}, but its transfer {last} was acknowledged in block "
                             f"{height}")
            if load.sent is not None and nonce > load.sent[wallet]:
                findings.add("phantom", f"replica {replica}: wallet {wallet} at nonce {nonce}"
                             f" but only {load.sent[wallet]} were ever sent")
        expected = expected_balances(seed, load.wallets, nonces)
        for wallet, ((balance, _), want) in enumerate(zip(wallets, expected, strict=True)):
            if balance != want:
                findings.add("balance", f"replica {replica}: wallet {wallet} holds {balance},"
                             f" its transfers make {want}")
    vectors = {tuple(w) for w in accounts.values() if all(a is not None for a in w)}
    if len(vectors) > 1:
        findings.add("divergent_accounts", f"{len(vectors)} different account states")


def check_agreement(findings: Findings, statuses: dict[int, dict[str, Any] | None]) -> None:
    """Equal executed seq, state root and (ledger) head block hash everywhere, read once
    the replicas settled."""
    seen: dict[tuple[Any, Any, Any], list[int]] = {}
    for replica, status in sorted(statuses.items()):
        if status is None:
            findings.add("unreachable", f"replica {replica} did not answer /status")
            continue
        key = (status.get("executed_seq"), status.get("state_root"), status.get("block_hash"))
        seen.setdefault(key, []).append(replica)
    if len(seen) > 1:
        detail = "; ".join(f"replicas {ids}: seq {seq} root {str(root)[:16]} block "
                           f"{str(block)[:16]}" for (seq, root, block), ids in seen.items())
        states = {(root, block) for _, root, block in seen}
        kind = "divergent_roots" if len(states) > 1 else "not_converged"
        findings.add(kind, detail)


# -- the blocks on disk -------------------------------------------------------------------


class StoreReader:
    """Read access to one replica's store (a :class:`~phalanx.storage.Store`)."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def block(self, height: int) -> tuple[Block, bytes] | None:
        raw = self.store.get(block_key(height))
        if raw is None:
            return None
        block = decode_block(raw)
        return block, block.header.hash()

    def tx_record(self, tid: bytes) -> tuple[int, int] | None:
        raw = self.store.get(TX_PREFIX + tid)
        if raw is None:
            return None
        record = decode_tx_record(raw)
        return record.height, record.index

    def top(self, hint: int | None = None, give_up_after: int = 1000) -> int:
        """The highest height with a block here (0: none). From ``hint`` (the ledger
        height the replica reported) down; without one, up from 1 until
        ``give_up_after`` heights in a row have none."""
        if hint is not None:
            for height in range(hint, 0, -1):
                if self.store.get(block_key(height)) is not None:
                    return height
            return 0
        top, height = 0, 1
        while height - top <= give_up_after:
            if self.store.get(block_key(height)) is not None:
                top = height
            height += 1
        return top


@dataclass
class ReplicaBlocks:
    local: int = 0  # heights with a block on this replica's disk
    missing: int = 0  # heights below its top without one (skipped by state transfer)
    top: int = 0


class BlockAudit:
    """Height by height over every replica's store (see the module docstring)."""

    def __init__(self, seed: int, f: int, load: LoadRecord, wallet_index: dict[bytes, int]):
        self.seed = seed
        self.f = f
        self.load = load
        self.wallet_index = wallet_index
        # How many replicas hold each acknowledged transfer in the named block.
        self.holders = [array("b", bytes(len(h))) for h in load.acked_height]
        self.replicas: dict[int, ReplicaBlocks] = {}

    def run(self, findings: Findings, readers: dict[int, StoreReader],
            height_hint: int | None = None) -> None:
        """``height_hint``: the ledger height the replicas reported (None: unknown)."""
        tops = {r: reader.top(height_hint) for r, reader in readers.items()}
        self.replicas = {r: ReplicaBlocks(top=t) for r, t in tops.items()}
        previous: dict[int, bytes | None] = dict.fromkeys(readers)
        for height in range(1, max(tops.values(), default=0) + 1):
            hashes: dict[bytes, list[int]] = {}
            for replica, reader in readers.items():
                found = reader.block(height)
                if found is None:
                    if height < tops[replica]:
                        self.replicas[replica].missing += 1
                    previous[replica] = None
                    continue
                block, digest = found
                self.replicas[replica].local += 1
                hashes.setdefault(digest, []).append(replica)
                before = previous[replica]
                if before is not None and block.header.prev_hash != before:
                    findings.add("broken_chain", f"replica {replica}: block {height} does "
                                 "not link to its block below")
                previous[replica] = digest
                self._audit_block(findings, replica, reader, height, block)
            if len(hashes) > 1:
                findings.add("divergent_blocks", f"block {height}: " + "; ".join(
                    f"replicas {ids} hold {d.hex()[:16]}" for d, ids in hashes.items()))
        self._audit_acks(findings)

    def _audit_block(self, findings: Findings, replica: int, reader: StoreReader,
                     height: int, block: Block) -> None:
        for index, (op, outcome) in enumerate(zip(block.txs, block.outcomes, strict=False)):
            if outcome.status != APPLIED:
                continue
            if reader.tx_record(outcome.tx_id) != (height, index):
                findings.add("tx_index_lost", f"replica {replica}: block {height} applied "
                             f"{outcome.tx_id.hex()[:16]} but its tx index says "
                             f"{reader.tx_record(outcome.tx_id)}")
            for wallet, nonce in self._transfers(op):
                heights = self.load.acked_height[wallet]
                if nonce < len(heights) and heights[nonce] >= 0:
                    if heights[nonce] == height:
                        self.holders[wallet][nonce] = min(127, self.holders[wallet][nonce] + 1)
                    else:
                        findings.add("acked_elsewhere", f"replica {replica}: wallet {wallet} "
                                     f"nonce {nonce} applied in block {height}, acknowledged "
                                     f"in block {heights[nonce]}")

    def _transfers(self, op: bytes) -> Iterable[tuple[int, int]]:
        txs = txm.op_txs(op)
        if isinstance(txs, str):
            return
        for raw in txs:
            tx = txm.decode_tx(raw)
            if isinstance(tx, txm.Transfer) and tx.sender in self.wallet_index:
                yield self.wallet_index[tx.sender], tx.nonce

    def _audit_acks(self, findings: Findings) -> None:
        needed = self.f + 1
        for wallet, nonce, height in self.load.acked():
            held = self.holders[wallet][nonce]
            if held < needed:
                findings.add("acked_not_durable", f"wallet {wallet} nonce {nonce}: "
                             f"acknowledged in block {height}, which holds it on {held} "
                             f"replica(s)' disks (need f+1 = {needed})")

    def summary(self) -> dict[str, Any]:
        return {str(r): {"local_blocks": b.local, "missing_below_top": b.missing, "top": b.top}
                for r, b in sorted(self.replicas.items())}
