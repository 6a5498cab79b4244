"""The ledger state machine: accounts, transfer execution, blocks.

:class:`Ledger` implements :class:`~phalanx.statemachine.base.StateMachine` plus the
optional block hooks of :class:`~phalanx.statemachine.base.BlockStateMachine`, so any
ordering protocol that hosts it (it sees ordered batches only) gets:

- ``apply(ops)``: every op is validated deterministically — well-formed, signed by the
  sender for this chain, ``nonce`` equal to the sender's next nonce, ``amount > 0``,
  balance >= amount — and applied, or recorded as rejected with its reason (never
  applied). Each op gets one result, identical on every correct replica.
- ``seal_block(seq)``: the ops applied since the last seal become a block; the state's
  sparse Merkle root goes into its header; the block, its tx index entries and the
  header hash come back to the host, which persists them in the same atomic store
  transaction as its protocol log and has replicas sign the header.
- ``admit(op)`` / ``check_op(op)``: admission before ordering (stateful: stale nonce,
  insufficient funds now) and the stateless check a backup runs on a proposed batch
  (well-formed, valid signature). Both share the execution's verified-signature cache,
  so each signature is verified once per replica.

Pure: no I/O, no clocks, no randomness. The state digest the host sees
(:meth:`state_digest`, what checkpoints certify) is the hash of the last block header,
which commits to the account tree, the height, the chain and the whole history of
headers; the state root (:meth:`state_root`) is the accounts' sparse Merkle root, what
proofs verify against.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable

import msgspec

from phalanx.ledger import tx as txm
from phalanx.ledger.block import (
    APPLIED,
    REJECTED,
    Block,
    BlockHeader,
    TxOutcome,
    TxRecord,
    encode,
    merkle_root,
    outcome_leaf,
)
from phalanx.ledger.smt import Proof, SparseMerkleTree
from phalanx.ledger.tx import Transfer, VerifiedSignatures, decode_tx, op_txs, tx_id
from phalanx.statemachine.base import BlockStateMachine, SealedBlock

CHAIN_DOMAIN = b"phalanx-ledger-v1"
MAX_NONCE_AHEAD = 256
"""Admission refuses a nonce further ahead of the sender's next one (it could not be
applied for a long time, yet would sit in every replica's queue). A wallet pipelining its
transfers keeps fewer than half this many in flight: the replica that admits may lag
behind the f+1 replicas whose answers freed the wallet's window."""
KEEP_VERSIONS = 64
"""Recent block versions (header + account tree) kept for proofs at certified heights."""

BLOCK_PREFIX = b"Lb"
TX_PREFIX = b"Lt"  # applied transactions
REJECTED_PREFIX = b"Lr"  # rejected ones (a later applied record of the same id wins)


def block_key(height: int) -> bytes:
    return BLOCK_PREFIX + height.to_bytes(8, "big")


def chain_id_of(genesis: dict[bytes, int]) -> bytes:
    """The ledger's identity: a hash of its genesis allocation."""
    items = sorted(genesis.items())
    return hashlib.sha256(CHAIN_DOMAIN + msgspec.msgpack.encode(items)).digest()


def account_key(address: bytes) -> bytes:
    """The sparse Merkle tree key of an account: uniform, so paths stay short."""
    return hashlib.sha256(address).digest()


def account_value(balance: int, nonce: int) -> bytes:
    return balance.to_bytes(8, "big") + nonce.to_bytes(8, "big")


def parse_account_value(value: bytes) -> tuple[int, int]:
    return int.from_bytes(value[:8], "big"), int.from_bytes(value[8:16], "big")


class TxResult(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """The result of one op: applied or rejected (with reason) in block ``height``."""

    status: int
    height: int
    reason: str = ""


_result_encoder = msgspec.msgpack.Encoder()
_result_decoder = msgspec.msgpack.Decoder(TxResult)
_bundle_result_decoder = msgspec.msgpack.Decoder(list[TxResult])


def decode_result(raw: bytes) -> TxResult:
    """The result of a single transfer's op."""
    return _result_decoder.decode(raw)


def decode_bundle_result(raw: bytes) -> list[TxResult]:
    """The results of a bundle's transfers, in its order."""
    return _bundle_result_decoder.decode(raw)


class _Snapshot(msgspec.Struct, array_like=True, frozen=True, gc=False,
                forbid_unknown_fields=True):
    header: BlockHeader
    accounts: list[tuple[bytes, int, int]]  # (address, balance, nonce), sorted


class Ledger(BlockStateMachine):
    """Accounts with balances and nonces; see the module docstring."""

    final_refusals: frozenset[str] = txm.FINAL_REFUSALS
    """Admission reasons that refuse an op for good (see ``tx.FINAL_REFUSALS``)."""
    recovery_skip: tuple[bytes, ...] = (BLOCK_PREFIX, TX_PREFIX, REJECTED_PREFIX)
    """Record prefixes a restarting replica never reads back: the blocks and the tx index
    grow with history and only the API reads them (from the store, on demand)."""

    def __init__(self, genesis: dict[bytes, int] | None = None) -> None:
        genesis = dict(genesis or {})
        for address, balance in genesis.items():
            if len(address) != txm.ADDRESS_BYTES or not 0 <= balance <= txm.MAX_AMOUNT:
                raise ValueError("genesis: addresses are 32 bytes, balances 0..2**64-1")
        if sum(genesis.values()) > txm.MAX_AMOUNT:
            raise ValueError("genesis: total supply exceeds 2**64-1")
        self.genesis = genesis
        self.chain_id = chain_id_of(genesis)
        self.signatures = VerifiedSignatures()
        self.accounts: dict[bytes, list[int]] = {a: [b, 0] for a, b in genesis.items()}
        self.tree = SparseMerkleTree().update(
            {account_key(a): account_value(b, 0) for a, b in genesis.items()}
        )
        empty = merkle_root([])
        self._genesis = BlockHeader(
            self.chain_id, 0, bytes(32), empty, self.tree.root_hash, [empty], 0, 0
        )
        self.header = self._genesis
        self.versions: OrderedDict[int, tuple[BlockHeader, SparseMerkleTree]] = OrderedDict()
        self.versions[0] = (self.header, self.tree)
        self._head_hash = self.header.hash()
        self._dirty: set[bytes] = set()
        # address -> its tree key (a hash), computed once per account, not once per block
        self._tree_keys: dict[bytes, bytes] = {}
        self._ops: list[bytes] = []
        self._outcomes: list[TxOutcome] = []

    def genesis_header(self) -> BlockHeader:
        """Block 0: the genesis allocation (every client can compute it from the config)."""
        return self._genesis

    @property
    def height(self) -> int:
        return self.header.height

    # -- StateMachine ---------------------------------------------------------------------

    def apply(self, ops: list[bytes]) -> list[bytes]:
        """Validate and apply ``ops`` in order; one encoded result each: a
        :class:`TxResult`, or for a bundle the list of its transfers' (see
        :func:`decode_bundle_result`)."""
        height = self.header.height + 1
        encode_result = _result_encoder.encode
        results = []
        for op in ops:
            txs = op_txs(op)
            if isinstance(txs, str):  # a malformed bundle: rejected as one op
                results.append(encode_result(self._record_outcome(op, tx_id(op), txs, height)))
            elif txs[0] is op:  # a single transfer (op_txs returned the op itself)
                results.append(encode_result(self._apply_tx(op, height)))
            else:
                results.append(encode_result([self._apply_tx(raw, height) for raw in txs]))
        return results

    def _apply_tx(self, raw: bytes, height: int) -> TxResult:
        tid = tx_id(raw)
        return self._record_outcome(raw, tid, self._execute(raw, tid), height)

    def _record_outcome(self, raw: bytes, tid: bytes, reason: str | None,
                        height: int) -> TxResult:
        self._ops.append(raw)
        if reason is None:
            self._outcomes.append(TxOutcome(tid, APPLIED))
            return TxResult(APPLIED, height)
        self._outcomes.append(TxOutcome(tid, REJECTED, reason))
        return TxResult(REJECTED, height, reason)

    def snapshot(self) -> bytes:
        self._require_sealed()
        accounts = [(a, b, n) for a, (b, n) in sorted(self.accounts.items())]
        return encode(_Snapshot(self.header, accounts))

    def restore(self, snapshot: bytes) -> None:
        """Replace the state; ValueError (state unchanged) if malformed or inconsistent."""
        try:
            snap = msgspec.msgpack.decode(snapshot, type=_Snapshot)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            raise ValueError(f"malformed ledger snapshot: {e}") from None
        if snap.header.chain_id != self.chain_id:
            raise ValueError("ledger snapshot of another chain")
        previous = b""
        for address, balance, nonce in snap.accounts:
            if address <= previous or len(address) != txm.ADDRESS_BYTES:
                raise ValueError("ledger snapshot accounts are not sorted 32-byte addresses")
            if not (0 <= balance <= txm.MAX_AMOUNT and 0 <= nonce <= txm.MAX_AMOUNT):
                raise ValueError("ledger snapshot balance or nonce out of range")
            previous = address
        tree = SparseMerkleTree().update(
            {account_key(a): account_value(b, n) for a, b, n in snap.accounts}
        )
        if tree.root_hash != snap.header.state_root:
            raise ValueError("ledger snapshot accounts do not match its header's state root")
        self.accounts = {a: [b, n] for a, b, n in snap.accounts}
        self.tree = tree
        self.header = snap.header
        self._head_hash = snap.header.hash()
        self.versions = OrderedDict({snap.header.height: (snap.header, tree)})
        self._dirty.clear()
        self._ops.clear()
        self._outcomes.clear()

    def state_digest(self) -> bytes:
        """The hash of the last block header; with unsealed changes (apply without
        seal_block), a hash over the last header and the pending account root."""
        if not self._ops:
            return self._head_hash
        pending = self.tree.update(self._dirty_items()).root_hash
        return hashlib.sha256(b"unsealed" + self._head_hash + pending).digest()

    def state_root(self) -> bytes:
        """The sparse Merkle root of the accounts as of the last sealed block (its
        header's ``state_root``, what proofs verify against)."""
        return self.header.state_root

    # -- block hooks ------------------------------------------------------------------------

    def seal_block(self, consensus_seq: int) -> SealedBlock | None:
        """Turn the ops applied since the last seal into the next block (None if none)."""
        if not self._ops:
            return None
        self.tree = self.tree.update(self._dirty_items())
        self._dirty.clear()
        outcomes, ops = self._outcomes, self._ops
        self._outcomes, self._ops = [], []
        tx_root = merkle_root([outcome_leaf(o) for o in outcomes])
        header = BlockHeader(
            self.chain_id, self.header.height + 1, self._head_hash, tx_root,
            self.tree.root_hash, [tx_root], consensus_seq, len(ops),
        )
        self.header = header
        self._head_hash = digest = header.hash()
        self.versions[header.height] = (header, self.tree)
        while len(self.versions) > KEEP_VERSIONS:
            self.versions.popitem(last=False)
        records = [(block_key(header.height), encode(Block(header, ops, outcomes)))]
        for index, o in enumerate(outcomes):
            record = encode(TxRecord(header.height, index, o.status, o.reason))
            prefix = TX_PREFIX if o.status == APPLIED else REJECTED_PREFIX
            records.append((prefix + o.tx_id, record))
        return SealedBlock(header.height, digest, records)

    def last_block(self) -> tuple[int, bytes]:
        """Height and hash of the last sealed block (0 and the genesis hash at first)."""
        return self.header.height, self._head_hash

    # -- admission ------------------------------------------------------------------------

    def admit(self, op: bytes) -> str | None:
        """Why ``op`` cannot be valid now (None if it may be): malformed, stale nonce,
        nonce too far ahead, insufficient funds, bad signature — cheapest checks first.
        A bundle is admitted whole or not at all: the first of its transfers that cannot
        be valid says why."""
        txs = op_txs(op)
        if isinstance(txs, str):
            return txs
        for raw in txs:
            reason = self._admit_tx(raw)
            if reason is not None:
                return reason
        return None

    def _admit_tx(self, raw: bytes) -> str | None:
        tx = decode_tx(raw)
        if isinstance(tx, str):
            return tx
        balance, nonce = self.accounts.get(tx.sender, (0, 0))
        if tx.nonce < nonce:
            return txm.STALE_NONCE
        if tx.nonce > nonce + MAX_NONCE_AHEAD:
            return txm.NONCE_TOO_FAR
        if balance < tx.amount:
            return txm.INSUFFICIENT_FUNDS
        if not self.signatures.check(raw, tx, self.chain_id):
            return txm.BAD_SIGNATURE
        return None

    def check_op(self, op: bytes) -> bool:
        """The state-independent validity a backup requires of every op in a proposed
        batch: well-formed and validly signed (every transfer of a bundle). (State-
        dependent failures are decided at execution: the state a batch will meet is not
        known when it is proposed.)"""
        signatures = self.signatures
        if op in signatures:
            return True  # admitted here already (a retransmission reached us)
        txs = op_txs(op)
        if isinstance(txs, str):
            return False
        for raw in txs:
            if raw in signatures:
                continue
            tx = decode_tx(raw)
            if isinstance(tx, str) or not signatures.check(raw, tx, self.chain_id):
                return False
        return True

    # -- reads (local, not replicated) ---------------------------------------------------

    def account(self, address: bytes) -> tuple[int, int]:
        """(balance, next nonce) of ``address`` in the executed state."""
        balance, nonce = self.accounts.get(address, (0, 0))
        return balance, nonce

    def version(self, height: int) -> tuple[BlockHeader, SparseMerkleTree] | None:
        """Header and account tree after block ``height``, if still kept."""
        return self.versions.get(height)

    def prove(self, address: bytes, height: int) -> tuple[BlockHeader, bytes | None, Proof] | None:
        """Header, account value (None if absent) and proof at ``height``, if kept."""
        version = self.versions.get(height)
        if version is None:
            return None
        header, tree = version
        key = account_key(address)
        return header, tree.get(key), tree.prove(key)

    def total_supply(self) -> int:
        return sum(b for b, _ in self.accounts.values())

    # -- internals ------------------------------------------------------------------------

    def _execute(self, op: bytes, tid: bytes) -> str | None:
        tx = self.signatures.take(op)  # decoded and verified at admission or validation
        if tx is None:
            decoded = decode_tx(op)
            if isinstance(decoded, str):
                return decoded
            self.signatures.verifications += 1
            if not txm.signature_valid(decoded, self.chain_id):
                return txm.BAD_SIGNATURE
            tx = decoded
        accounts = self.accounts
        sender = accounts.get(tx.sender)
        if sender is None:
            sender = [0, 0]
        if tx.nonce != sender[1]:
            return txm.BAD_NONCE
        if sender[0] < tx.amount:
            return txm.INSUFFICIENT_FUNDS
        recipient = accounts.get(tx.to)
        if recipient is None:
            recipient = [0, 0]
        if tx.to != tx.sender and recipient[0] + tx.amount > txm.MAX_AMOUNT:
            return txm.BALANCE_OVERFLOW  # unreachable while supply < 2**64; kept as a guard
        accounts[tx.sender] = sender
        accounts[tx.to] = recipient
        sender[0] -= tx.amount
        sender[1] += 1
        recipient[0] += tx.amount
        self._dirty.add(tx.sender)
        self._dirty.add(tx.to)
        return None

    def _dirty_items(self) -> dict[bytes, bytes]:
        accounts = self.accounts
        keys = self._tree_keys
        items = {}
        for a in self._dirty:
            key = keys.get(a)
            if key is None:
                key = keys[a] = account_key(a)
            items[key] = account_value(*accounts[a])
        return items

    def _require_sealed(self) -> None:
        if self._ops:
            raise RuntimeError("snapshot with unsealed ops: call seal_block first")


def make_ledger_factory(genesis: dict[bytes, int]) -> Callable[[], Ledger]:
    """A zero-argument factory of ledgers with this genesis (what a replica needs)."""
    frozen = dict(genesis)

    def make() -> Ledger:
        return Ledger(frozen)

    return make


__all__ = [
    "Ledger",
    "SealedBlock",
    "Transfer",
    "TxResult",
    "account_key",
    "account_value",
    "chain_id_of",
    "decode_bundle_result",
    "decode_result",
    "parse_account_value",
]
