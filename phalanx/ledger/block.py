"""Blocks: every ordered batch the ledger executes becomes one.

A header commits to everything a light client needs::

    chain_id, height, prev_hash, tx_root, state_root, shard_roots, consensus_seq, tx_count

``tx_root`` is the Merkle root over the block's leaves ``sha256(0x00 || tx_id || status)``
in block order (status 0 = applied, 1 = rejected), so a certified header also certifies
which transactions were applied. ``shard_roots`` has one such root per body shard; the
ledger has a single shard (until the execution-scaling issue), so it equals
``[tx_root]``. ``consensus_seq`` is where the ordering protocol decided the batch (for PBFT,
the sequence number) — the proposer/view information every replica knows identically (the
view in which a slot committed is not: a replica that catches up learns only the slot).

The block hash is ``sha256(encoded header)``; replicas sign it (``BlockSig``), and 2f+1
matching signatures are the block's commit certificate.
"""

from __future__ import annotations

import hashlib
from typing import TypeGuard

import msgspec

_opts = dict(array_like=True, frozen=True, gc=False, forbid_unknown_fields=True)

APPLIED = 0
REJECTED = 1


class BlockHeader(msgspec.Struct, **_opts):
    chain_id: bytes
    height: int
    prev_hash: bytes
    tx_root: bytes
    state_root: bytes
    shard_roots: list[bytes]
    consensus_seq: int
    tx_count: int

    def hash(self) -> bytes:
        return hashlib.sha256(_encoder.encode(self)).digest()

    def to_json(self) -> dict[str, object]:
        return {
            "chain_id": self.chain_id.hex(),
            "height": self.height,
            "prev_hash": self.prev_hash.hex(),
            "tx_root": self.tx_root.hex(),
            "state_root": self.state_root.hex(),
            "shard_roots": [r.hex() for r in self.shard_roots],
            "consensus_seq": self.consensus_seq,
            "tx_count": self.tx_count,
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> BlockHeader:
        """Parse :meth:`to_json` output; raises ValueError/TypeError/KeyError on garbage."""
        def h(name: str) -> bytes:
            value = _fromhex(data[name])
            if len(value) != 32:
                raise ValueError(f"{name} must be 32 bytes")
            return value

        height, seq, count = data["height"], data["consensus_seq"], data["tx_count"]
        if not (_is_natural(height) and _is_natural(seq) and _is_natural(count)):
            raise ValueError("height, consensus_seq and tx_count must be integers >= 0")
        shards = data["shard_roots"]
        if not isinstance(shards, list):
            raise ValueError("shard_roots must be a list")
        return cls(h("chain_id"), height, h("prev_hash"), h("tx_root"),
                   h("state_root"), [_fromhex(s) for s in shards], seq, count)


def _fromhex(value: object) -> bytes:
    """``bytes.fromhex`` of a JSON value: TypeError unless it is a string, as fromhex."""
    if not isinstance(value, str):
        raise TypeError(f"expected a hex string, not {type(value).__name__}")
    return bytes.fromhex(value)


def _is_natural(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and value >= 0


class TxOutcome(msgspec.Struct, **_opts):
    """What happened to one transaction of a block."""

    tx_id: bytes
    status: int  # APPLIED or REJECTED
    reason: str = ""


class Block(msgspec.Struct, **_opts):
    header: BlockHeader
    txs: list[bytes]  # the ops of the batch, in order (encoded transfers, or garbage)
    outcomes: list[TxOutcome]


class TxRecord(msgspec.Struct, **_opts):
    """The tx index: where a transaction ended up."""

    height: int
    index: int
    status: int
    reason: str = ""


_encoder = msgspec.msgpack.Encoder()
_block_decoder = msgspec.msgpack.Decoder(Block)
_record_decoder = msgspec.msgpack.Decoder(TxRecord)


def encode(obj: msgspec.Struct) -> bytes:
    return _encoder.encode(obj)


def decode_block(raw: bytes) -> Block:
    return _block_decoder.decode(raw)


def decode_tx_record(raw: bytes) -> TxRecord:
    return _record_decoder.decode(raw)


def outcome_leaf(outcome: TxOutcome) -> bytes:
    return hashlib.sha256(b"\x00" + outcome.tx_id + bytes((outcome.status,))).digest()


def merkle_root(leaves: list[bytes]) -> bytes:
    """Binary Merkle root (an odd last node is promoted); sha256(b"") when empty."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    level = leaves
    sha256 = hashlib.sha256
    while len(level) > 1:
        nxt = [sha256(b"\x01" + level[i] + level[i + 1]).digest()
               for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]
