"""Transaction traces for ``phalanx bench --trace``: any CSV of transfers becomes a
replayable, valid ledger workload.

Columns: ``from_address``, ``to_address``, and the amount as ``value``, ``value_wei`` or
``value_raw``; optionally ``block_number`` and ``block_timestamp`` (Unix seconds, used
for pacing). Rows without a recipient (contract creations) are skipped and counted.

The mapping, all deterministic (every load generator and the cluster config agree):

- each trace address gets an Ed25519 key pair from ``sha256("phalanx-trace-v1" ||
  address)``;
- amounts are scaled by the smallest power of ten that brings the trace's total under
  2**62 (the ledger's amounts are 64-bit); a row whose scaled amount is 0 (e.g. a
  zero-value contract call) moves 1 unit, so that every row is a valid transfer with
  the trace's sender and recipient;
- each sender is funded at genesis with the sum of its outgoing amounts, so its
  transfers are valid in any interleaving with other senders;
- a sender's transfers get nonces 0, 1, 2 ... in trace order.

``contention`` is the share of rows touching (as sender or recipient) one of the 10
accounts that appear in the most rows.
"""

from __future__ import annotations

import csv
import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from phalanx.crypto.keys import KeyPair
from phalanx.ledger.tx import encode_tx, sign_transfer

AMOUNT_COLUMNS = ("value", "value_wei", "value_raw")
MAX_TOTAL = 1 << 62
HOT_ACCOUNTS = 10
KEY_DOMAIN = b"phalanx-trace-v1"


class TraceError(ValueError):
    """The file is not a usable trace; the message says why."""


@dataclass(frozen=True, slots=True)
class TraceTx:
    index: int  # position in the trace
    sender: str
    to: str
    amount: int  # scaled ledger units
    nonce: int
    timestamp: float | None


@dataclass
class Trace:
    path: str
    txs: list[TraceTx]
    scale: int
    skipped: dict[str, int] = field(default_factory=dict)
    zero_amounts: int = 0

    def genesis(self) -> dict[bytes, int]:
        """Each sender funded with the sum of its outgoing amounts."""
        funding: Counter[str] = Counter()
        for tx in self.txs:
            funding[tx.sender] += tx.amount
        return {keypair_for(a).public_key: total for a, total in sorted(funding.items())}

    def contention(self) -> float:
        """Share of transactions touching one of the 10 most frequent accounts."""
        if not self.txs:
            return 0.0
        counts: Counter[str] = Counter()
        for tx in self.txs:
            counts[tx.sender] += 1
            if tx.to != tx.sender:
                counts[tx.to] += 1
        hot = {a for a, _ in counts.most_common(HOT_ACCOUNTS)}
        return sum(1 for tx in self.txs if tx.sender in hot or tx.to in hot) / len(self.txs)

    def summary(self) -> dict[str, object]:
        senders = {tx.sender for tx in self.txs}
        accounts = senders | {tx.to for tx in self.txs}
        busiest = Counter(tx.sender for tx in self.txs).most_common(1)
        return {
            "file": self.path,
            "rows": len(self.txs),
            "skipped": dict(self.skipped),
            "accounts": len(accounts),
            "senders": len(senders),
            "amount_scale": self.scale,
            "zero_amounts_as_1": self.zero_amounts,
            "contention_top10": round(self.contention(), 4),
            "busiest_sender_share": round(busiest[0][1] / len(self.txs), 4) if busiest else 0.0,
        }


_keypairs: dict[str, KeyPair] = {}


def keypair_for(address: str) -> KeyPair:
    """The deterministic key pair standing for trace address ``address``."""
    keypair = _keypairs.get(address)
    if keypair is None:
        seed = hashlib.sha256(KEY_DOMAIN + address.encode()).digest()
        keypair = _keypairs[address] = KeyPair.from_seed(seed)
    return keypair


def _amount(text: str) -> int:
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        return int(float(text))  # e.g. "1e+18" in some exports


def load_trace(path: str | Path, limit: int | None = None) -> Trace:
    """Read and map a trace CSV (see the module docstring); TraceError if unusable."""
    try:
        handle = open(path, newline="", encoding="utf-8")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise TraceError(f"{path}: cannot read trace: {exc}") from None
    with handle:
        reader = csv.DictReader(handle)
        columns = set(reader.fieldnames or [])
        amount_column = next((c for c in AMOUNT_COLUMNS if c in columns), None)
        missing = {"from_address", "to_address"} - columns
        if missing or amount_column is None:
            need = sorted(missing) + ([] if amount_column else ["value|value_wei|value_raw"])
            raise TraceError(f"{path}: trace lacks column(s) {', '.join(need)}")
        rows: list[tuple[str, str, int, float | None]] = []
        skipped: Counter[str] = Counter()
        for line, row in enumerate(reader, start=2):
            sender = (row["from_address"] or "").strip().lower()
            to = (row["to_address"] or "").strip().lower()
            if not sender or not to:
                skipped["no_sender_or_recipient"] += 1
                continue
            try:
                value = _amount(row[amount_column] or "0")
                stamp = row.get("block_timestamp")
                timestamp = float(stamp) if stamp not in (None, "") else None
            except (ValueError, OverflowError):
                raise TraceError(f"{path}:{line}: bad amount or timestamp") from None
            if value < 0:
                raise TraceError(f"{path}:{line}: negative amount")
            rows.append((sender, to, value, timestamp))
            if limit is not None and len(rows) >= limit:
                break
    if not rows:
        raise TraceError(f"{path}: no usable rows")
    total = sum(v for _, _, v, _ in rows)
    scale = 1
    while total // scale > MAX_TOTAL:
        scale *= 10
    nonces: Counter[str] = Counter()
    txs = []
    zero = 0
    for index, (sender, to, value, timestamp) in enumerate(rows):
        amount = value // scale
        if amount == 0:
            zero += 1
            amount = 1
        txs.append(TraceTx(index, sender, to, amount, nonces[sender], timestamp))
        nonces[sender] += 1
    return Trace(str(path), txs, scale, dict(skipped), zero)


def partition(trace: Trace, parts: int) -> dict[str, int]:
    """Which of ``parts`` load generators replays each sender's transfers (all of them, so
    they stay in nonce order), balancing the transfers per part: busiest senders first,
    each to the part with the fewest so far. (A hash of the sender left one generator
    with two thirds of the 2017 trace: the other finished early, and the replay's last
    third ran with half the transfers in flight.) Deterministic: every generator computes
    the same assignment."""
    counts = Counter(tx.sender for tx in trace.txs)
    first: dict[str, int] = {}
    for tx in trace.txs:
        first.setdefault(tx.sender, tx.index)
    load = [0] * parts
    owner: dict[str, int] = {}
    for sender in sorted(counts, key=lambda s: (-counts[s], first[s])):
        part = min(range(parts), key=lambda p: (load[p], p))
        owner[sender] = part
        load[part] += counts[sender]
    return owner


def sign(tx: TraceTx, chain_id: bytes) -> bytes:
    """The encoded, signed ledger transfer of trace row ``tx``."""
    to = keypair_for(tx.to).public_key
    return encode_tx(sign_transfer(keypair_for(tx.sender), chain_id, to, tx.amount, tx.nonce))
