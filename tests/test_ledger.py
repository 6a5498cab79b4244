"""The ledger core: transfers, validation, blocks, the sparse Merkle tree and its proofs."""

from __future__ import annotations

import hashlib

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phalanx.crypto.keys import KeyPair
from phalanx.ledger import tx as txm
from phalanx.ledger.block import APPLIED, REJECTED, decode_block, decode_tx_record
from phalanx.ledger.smt import EMPTY, Proof, SparseMerkleTree, verify_proof
from phalanx.ledger.state import (
    MAX_NONCE_AHEAD,
    Ledger,
    account_key,
    account_value,
    block_key,
    decode_bundle_result,
    decode_result,
    parse_account_value,
)
from phalanx.ledger.tx import Transfer, encode_tx, sign_transfer

KEYS = [KeyPair.from_seed(hashlib.sha256(b"k%d" % i).digest()) for i in range(6)]
ADDR = [k.public_key for k in KEYS]


def make_ledger(balances: tuple[int, ...] = (1000, 1000, 0)) -> Ledger:
    return Ledger({ADDR[i]: b for i, b in enumerate(balances)})


def transfer(ledger: Ledger, src: int, dst: int, amount: int, nonce: int) -> bytes:
    return encode_tx(sign_transfer(KEYS[src], ledger.chain_id, ADDR[dst], amount, nonce))


def outcome(raw: bytes) -> tuple[int, str]:
    result = decode_result(raw)
    return result.status, result.reason


# -- transactions ---------------------------------------------------------------------------


def test_transfer_is_applied_and_moves_funds_and_bumps_the_nonce() -> None:
    ledger = make_ledger()
    [result] = ledger.apply([transfer(ledger, 0, 2, 300, 0)])
    assert outcome(result) == (APPLIED, "")
    assert ledger.account(ADDR[0]) == (700, 1)
    assert ledger.account(ADDR[2]) == (300, 0)
    assert decode_result(result).height == 1


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda lg: transfer(lg, 0, 1, 10, 1), txm.BAD_NONCE),
        (lambda lg: transfer(lg, 0, 1, 5000, 0), txm.INSUFFICIENT_FUNDS),
        (lambda lg: transfer(lg, 3, 1, 1, 0), txm.INSUFFICIENT_FUNDS),  # unknown sender
        (lambda lg: encode_tx(Transfer(ADDR[0], ADDR[1], 0, 0, bytes(64))),
         txm.AMOUNT_NOT_POSITIVE),
        (lambda lg: b"\x93garbage", txm.MALFORMED),
        (lambda lg: encode_tx(Transfer(ADDR[0][:31], ADDR[1], 1, 0, bytes(64))), txm.MALFORMED),
        # Signed by key 1 but claims to come from account 0.
        (lambda lg: encode_tx(msgspec.structs.replace(
            sign_transfer(KEYS[1], lg.chain_id, ADDR[2], 5, 0), sender=ADDR[0])),
         txm.BAD_SIGNATURE),
        # Signed for another chain (another genesis): cannot be replayed here.
        (lambda lg: encode_tx(sign_transfer(KEYS[0], bytes(32), ADDR[1], 5, 0)),
         txm.BAD_SIGNATURE),
    ],
)
def test_invalid_transfers_are_rejected_with_their_reason_and_change_nothing(make, reason) -> None:
    ledger = make_ledger()
    before = dict((a, tuple(v)) for a, v in ledger.accounts.items())
    [result] = ledger.apply([make(ledger)])
    assert outcome(result) == (REJECTED, reason)
    assert {a: tuple(v) for a, v in ledger.accounts.items()} == before
    sealed = ledger.seal_block(1)
    assert sealed is not None and ledger.header.state_root == make_ledger().tree.root_hash


def test_non_canonical_encoding_is_malformed() -> None:
    ledger = make_ledger()
    tx = sign_transfer(KEYS[0], ledger.chain_id, ADDR[1], 5, 0)
    raw = encode_tx(tx)
    # The same array with the amount as a 64-bit integer instead of a fixint.
    padded = raw.replace(b"\x05\x00\xc4", b"\xcf" + (5).to_bytes(8, "big") + b"\x00\xc4", 1)
    assert msgspec.msgpack.decode(padded, type=Transfer) == tx
    assert txm.decode_tx(padded) == txm.MALFORMED


def test_a_replayed_transfer_is_rejected_as_a_bad_nonce() -> None:
    ledger = make_ledger()
    raw = transfer(ledger, 0, 1, 10, 0)
    first, second = ledger.apply([raw, raw])
    assert outcome(first) == (APPLIED, "")
    assert outcome(second) == (REJECTED, txm.BAD_NONCE)
    assert ledger.account(ADDR[0]) == (990, 1)


def test_admission_rejects_what_cannot_be_valid_cheapest_check_first() -> None:
    ledger = make_ledger()
    ledger.apply([transfer(ledger, 0, 1, 10, 0)])
    ledger.seal_block(1)
    assert ledger.admit(transfer(ledger, 0, 1, 10, 0)) == txm.STALE_NONCE
    assert ledger.admit(transfer(ledger, 0, 1, 10, 1 + MAX_NONCE_AHEAD + 1)) == txm.NONCE_TOO_FAR
    assert ledger.admit(transfer(ledger, 0, 1, 10_000, 1)) == txm.INSUFFICIENT_FUNDS
    forged = encode_tx(msgspec.structs.replace(
        sign_transfer(KEYS[0], ledger.chain_id, ADDR[1], 5, 1), amount=6))
    assert ledger.admit(forged) == txm.BAD_SIGNATURE
    assert ledger.admit(b"junk") == txm.MALFORMED
    assert ledger.admit(transfer(ledger, 0, 1, 5, 2)) is None  # a little ahead is fine


def test_each_signature_is_verified_once_across_admission_validation_and_execution() -> None:
    ledger = make_ledger()
    ops = [transfer(ledger, 0, 1, 1, n) for n in range(5)]
    for op in ops:
        assert ledger.admit(op) is None
        assert ledger.check_op(op)
    ledger.apply(ops)
    assert ledger.signatures.verifications == 5
    assert len(ledger.signatures) == 0  # executed ids are forgotten


def test_a_bundle_executes_its_transfers_in_order_each_with_its_own_outcome() -> None:
    ledger = make_ledger()
    txs = [transfer(ledger, 0, 2, 100, 0), transfer(ledger, 0, 2, 100, 5),
           transfer(ledger, 0, 1, 50, 1)]
    bundle = txm.encode_bundle(txs)
    assert txm.is_bundle(bundle) and not txm.is_bundle(txs[0])
    assert ledger.admit(bundle) is None and ledger.check_op(bundle)
    [raw] = ledger.apply([bundle])
    results = decode_bundle_result(raw)
    assert [(r.status, r.reason, r.height) for r in results] == [
        (APPLIED, "", 1), (REJECTED, txm.BAD_NONCE, 1), (APPLIED, "", 1)]
    assert ledger.account(ADDR[0]) == (850, 2)
    sealed = ledger.seal_block(1)
    assert sealed is not None
    block = decode_block(dict(sealed.records)[block_key(1)])
    # The block lists the transfers, not the bundle: ids, index and proofs are per transfer.
    assert block.txs == txs and block.header.tx_count == 3
    assert [o.tx_id for o in block.outcomes] == [txm.tx_id(t) for t in txs]
    assert ledger.signatures.verifications == 3  # admission checked each; nothing twice


def test_a_bundle_is_admitted_whole_or_not_at_all() -> None:
    ledger = make_ledger()
    good = transfer(ledger, 0, 1, 10, 0)
    forged = encode_tx(msgspec.structs.replace(
        sign_transfer(KEYS[1], ledger.chain_id, ADDR[0], 5, 0), amount=6))
    bundle = txm.encode_bundle([good, forged])
    assert ledger.admit(bundle) == txm.BAD_SIGNATURE
    assert not ledger.check_op(bundle)
    assert ledger.admit(txm.encode_bundle([good, transfer(ledger, 2, 0, 1, 0)])) == \
        txm.INSUFFICIENT_FUNDS


@pytest.mark.parametrize("op", [
    txm._encoder.encode(txm.Bundle([])),  # empty
    txm._encoder.encode(txm.Bundle([b"x"] * (txm.MAX_BUNDLE_TXS + 1))),  # too many
    txm._encoder.encode(txm.Bundle([b"x"]))[:-1],  # truncated
    txm._BUNDLE_HEAD + b"\xc0",  # a bundle's head, then garbage
])
def test_malformed_bundles_are_refused_and_rejected_as_one_op(op) -> None:
    ledger = make_ledger()
    assert txm.op_txs(op) == txm.MALFORMED
    assert ledger.admit(op) == txm.MALFORMED and not ledger.check_op(op)
    [raw] = ledger.apply([op])
    assert outcome(raw) == (REJECTED, txm.MALFORMED)
    assert ledger.account(ADDR[0]) == (1000, 0)
    with pytest.raises(ValueError):
        txm.encode_bundle([])


def test_a_bundle_of_garbage_transfers_is_refused() -> None:
    ledger = make_ledger()
    bundle = txm.encode_bundle([transfer(ledger, 0, 1, 10, 0), b"junk"])
    assert ledger.admit(bundle) == txm.MALFORMED and not ledger.check_op(bundle)
    [raw] = ledger.apply([bundle])
    assert [(r.status, r.reason) for r in decode_bundle_result(raw)] == [
        (APPLIED, ""), (REJECTED, txm.MALFORMED)]


def test_blocks_chain_by_hash_and_record_every_outcome() -> None:
    ledger = make_ledger()
    assert ledger.seal_block(1) is None  # nothing applied, no block
    ledger.apply([transfer(ledger, 0, 1, 10, 0), transfer(ledger, 0, 1, 10, 7)])
    first = ledger.seal_block(5)
    ledger.apply([transfer(ledger, 1, 2, 20, 0)])
    second = ledger.seal_block(6)
    assert first is not None and second is not None
    records = dict(first.records)
    block = decode_block(records[block_key(1)])
    assert block.header.height == 1 and block.header.consensus_seq == 5
    assert block.header.prev_hash == ledger.genesis_header().hash()
    assert block.header.shard_roots == [block.header.tx_root]
    assert [o.status for o in block.outcomes] == [APPLIED, REJECTED]
    assert block.outcomes[1].reason == txm.BAD_NONCE
    applied = decode_tx_record(records[b"Lt" + block.outcomes[0].tx_id])
    rejected = decode_tx_record(records[b"Lr" + block.outcomes[1].tx_id])
    assert (applied.height, applied.index, rejected.index) == (1, 0, 1)
    second_block = decode_block(dict(second.records)[block_key(2)])
    assert second_block.header.prev_hash == first.digest == block.header.hash()
    assert ledger.state_digest() == second.digest


def test_snapshot_restore_round_trip_and_tampered_snapshots_are_refused() -> None:
    ledger = make_ledger()
    ledger.apply([transfer(ledger, 0, 1, 10, 0), transfer(ledger, 1, 4, 3, 0)])
    ledger.seal_block(1)
    snap = ledger.snapshot()
    copy = make_ledger()
    copy.restore(snap)
    assert copy.state_digest() == ledger.state_digest()
    assert copy.account(ADDR[4]) == (3, 0)
    decoded = msgspec.msgpack.decode(snap)
    decoded[1][0][1] += 1  # one more unit than the header's state root allows
    with pytest.raises(ValueError):
        make_ledger().restore(msgspec.msgpack.encode(decoded))
    with pytest.raises(ValueError):
        Ledger({ADDR[0]: 1}).restore(snap)  # another chain
    with pytest.raises(ValueError):
        make_ledger().restore(b"\x00garbage")


# -- invariants under generated workloads ------------------------------------------------------

workload = st.lists(
    st.tuples(st.integers(0, 5), st.integers(0, 5), st.integers(-1, 600), st.integers(0, 4),
              st.booleans()),
    max_size=40,
)


def bundled(ops: list[bytes], sizes: list[int]) -> list[bytes]:
    """``ops`` cut into consecutive bundles of the given sizes (a size of 1: the plain op)."""
    out, i = [], 0
    for size in sizes:
        if i >= len(ops):
            break
        chunk = ops[i:i + size]
        out.append(chunk[0] if len(chunk) == 1 else txm.encode_bundle(chunk))
        i += len(chunk)
    return out + ops[i:]


@settings(max_examples=60, deadline=None, derandomize=True)
@given(batches=st.lists(workload, min_size=1, max_size=4),
       sizes=st.lists(st.integers(1, 12), max_size=10))
def test_ledger_invariants_hold_for_generated_workloads(batches, sizes) -> None:
    ledger = make_ledger((500, 300, 200, 0, 0, 0))
    # The same transfers submitted in bundles must execute exactly as one by one.
    replay = make_ledger((500, 300, 200, 0, 0, 0))
    supply = ledger.total_supply()
    applied_nonces: set[tuple[bytes, int]] = set()
    for seq, batch in enumerate(batches, start=1):
        ops = []
        for src, dst, amount, nonce, forge in batch:
            if amount <= 0:
                ops.append(encode_tx(Transfer(ADDR[src], ADDR[dst], 0, nonce, bytes(64))))
                continue
            tx = sign_transfer(KEYS[src], ledger.chain_id, ADDR[dst], amount, nonce)
            if forge:
                tx = msgspec.structs.replace(tx, amount=amount + 1)
            ops.append(encode_tx(tx))
        expected = []
        for op, raw in zip(ops, ledger.apply(ops), strict=True):
            tx = txm.decode_tx(op)
            result = decode_result(raw)
            expected.append((result.status, result.reason))
            if result.status == APPLIED:
                assert isinstance(tx, Transfer)
                assert (tx.sender, tx.nonce) not in applied_nonces  # at most once
                applied_nonces.add((tx.sender, tx.nonce))
        ledger.seal_block(seq)
        bundles = bundled(ops, sizes)
        got = []
        for op, raw in zip(bundles, replay.apply(bundles), strict=True):
            results = decode_bundle_result(raw) if txm.is_bundle(op) else [decode_result(raw)]
            got += [(r.status, r.reason) for r in results]
        assert got == expected
        replay.seal_block(seq)
        assert ledger.total_supply() == supply  # conserved
        assert all(b >= 0 for b, _ in ledger.accounts.values())  # never negative
        assert replay.state_digest() == ledger.state_digest()  # deterministic
    # Nonces advanced exactly by the applied transfers.
    for address, (_, nonce) in ledger.accounts.items():
        assert nonce == sum(1 for a, _ in applied_nonces if a == address)
    # The incrementally maintained tree equals one built from scratch.
    scratch = SparseMerkleTree().update(
        {account_key(a): account_value(b, n) for a, (b, n) in ledger.accounts.items()}
    )
    assert scratch.root_hash == ledger.header.state_root


# -- the sparse Merkle tree ------------------------------------------------------------------


def _key(i: int) -> bytes:
    return hashlib.sha256(b"key%d" % i).digest()


@settings(max_examples=40, deadline=None, derandomize=True)
@given(updates=st.lists(st.dictionaries(st.integers(0, 60), st.binary(min_size=1, max_size=8),
                                        max_size=12), max_size=6),
       probe=st.integers(0, 80))
def test_smt_incremental_equals_scratch_and_every_proof_verifies(updates, probe) -> None:
    tree = SparseMerkleTree()
    state: dict[bytes, bytes] = {}
    for batch in updates:
        items = {_key(i): v for i, v in batch.items()}
        tree = tree.update(items)
        state.update(items)
    assert tree.root_hash == SparseMerkleTree().update(state).root_hash
    key = _key(probe)
    value = state.get(key)
    proof = tree.prove(key)
    assert tree.get(key) == value
    assert verify_proof(tree.root_hash, key, value, proof)
    # The same proof never proves anything else.
    assert not verify_proof(tree.root_hash, key, (value or b"") + b"x", proof)
    if value is not None:
        assert not verify_proof(tree.root_hash, key, None, proof)


def test_smt_proofs_inclusion_and_both_kinds_of_exclusion_and_tampering() -> None:
    tree = SparseMerkleTree().update({_key(i): b"v%d" % i for i in range(50)})
    root = tree.root_hash
    included = tree.prove(_key(7))
    assert included.leaf_key == _key(7) and verify_proof(root, _key(7), b"v7", included)
    kinds = {"empty": 0, "other leaf": 0}
    for i in range(50, 120):
        proof = tree.prove(_key(i))
        assert verify_proof(root, _key(i), None, proof)
        kinds["empty" if proof.leaf_key is None else "other leaf"] += 1
    assert all(kinds.values()), kinds  # both exclusion forms occur and verify
    tampered = [
        Proof(included.siblings, included.leaf_key, b"v8"),  # another value
        Proof(included.siblings[:-1], included.leaf_key, included.leaf_value),  # shortened
        Proof((bytes(32), *included.siblings[1:]), included.leaf_key, included.leaf_value),
        Proof(included.siblings, _key(8), b"v8"),  # a leaf from elsewhere as "exclusion"
        Proof(("x",), None, None),  # type: ignore[arg-type]  # garbage never raises
    ]
    assert not any(verify_proof(root, _key(7), b"v7", p) for p in tampered)
    assert not verify_proof(root, _key(8), None, Proof(included.siblings, _key(7), b"v7"))
    assert not verify_proof(b"\x01" * 32, _key(7), b"v7", included)  # another root
    assert Proof.from_json(included.to_json()) == included
    assert SparseMerkleTree().root_hash == EMPTY


def test_old_versions_keep_proving_after_updates() -> None:
    v1 = SparseMerkleTree().update({_key(1): b"a", _key(2): b"b"})
    v2 = v1.update({_key(1): b"c", _key(3): b"d"})
    assert verify_proof(v1.root_hash, _key(1), b"a", v1.prove(_key(1)))
    assert verify_proof(v2.root_hash, _key(1), b"c", v2.prove(_key(1)))
    assert v1.get(_key(3)) is None and v2.get(_key(3)) == b"d"


def test_ledger_proves_balances_at_kept_heights() -> None:
    ledger = make_ledger()
    ledger.apply([transfer(ledger, 0, 2, 300, 0)])
    ledger.seal_block(1)
    ledger.apply([transfer(ledger, 0, 2, 100, 1)])
    ledger.seal_block(2)
    for height, expected in ((1, (300, 0)), (2, (400, 0))):
        header, value, proof = ledger.prove(ADDR[2], height)
        assert value is not None and parse_account_value(value) == expected
        assert verify_proof(header.state_root, account_key(ADDR[2]), value, proof)
    header, value, proof = ledger.prove(ADDR[5], 2)
    assert value is None and verify_proof(header.state_root, account_key(ADDR[5]), None, proof)
    assert ledger.prove(ADDR[0], 99) is None
