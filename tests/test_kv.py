"""The key-value state machine: ops, errors, snapshots and the Merkle state root."""

from __future__ import annotations

import hashlib
import os
import random

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phalanx.core.hashing import EMPTY_DIGEST
from phalanx.statemachine.base import StateMachine
from phalanx.statemachine.kv import (
    ERR_KEY_TOO_LARGE,
    ERR_MALFORMED,
    ERR_VALUE_TOO_LARGE,
    MAX_KEY_BYTES,
    MAX_VALUE_BYTES,
    Delete,
    Err,
    Get,
    KVStore,
    Ok,
    Put,
    decode_op,
    decode_result,
    encode_delete,
    encode_get,
    encode_op,
    encode_put,
)


def reference_root(items: dict[bytes, bytes]) -> bytes:
    """The root as the spec defines it, computed naively from scratch."""
    level = [
        hashlib.sha256(b"\x00" + len(k).to_bytes(4, "big") + k + v).digest()
        for k, v in sorted(items.items())
    ]
    if not level:
        return hashlib.sha256(b"").digest()
    while len(level) > 1:
        pairs = [
            hashlib.sha256(b"\x01" + level[i] + level[i + 1]).digest()
            for i in range(0, len(level) - 1, 2)
        ]
        level = pairs + ([level[-1]] if len(level) % 2 else [])
    return level[0]


def results(kv: KVStore, *ops: bytes) -> list[Ok | Err]:
    return [decode_result(r) for r in kv.apply(list(ops))]


def test_kvstore_satisfies_the_state_machine_interface() -> None:
    machine: StateMachine = KVStore()
    assert machine.apply([]) == []


def test_ops_execute_in_order_with_one_result_each() -> None:
    kv = KVStore()
    assert results(
        kv,
        encode_get(b"a"),
        encode_put(b"a", b"1"),
        encode_get(b"a"),
        encode_put(b"a", b"2"),
        encode_get(b"a"),
        encode_delete(b"a"),
        encode_get(b"a"),
        encode_delete(b"a"),
    ) == [Ok(None), Ok(None), Ok(b"1"), Ok(None), Ok(b"2"), Ok(None), Ok(None), Ok(None)]
    assert len(kv) == 0


def test_empty_key_and_empty_value_are_ordinary_data() -> None:
    kv = KVStore()
    assert results(kv, encode_put(b"", b""), encode_get(b"")) == [Ok(None), Ok(b"")]


def test_op_encoding_round_trips() -> None:
    for op in (Put(b"k", b"v"), Get(b"k"), Delete(b"k")):
        assert decode_op(encode_op(op)) == op


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\xc1",  # never-used msgpack byte
        b"garbage that is not msgpack",
        msgspec.msgpack.encode([99, b"k"]),  # unknown tag
        msgspec.msgpack.encode([1, b"k"]),  # Put without a value
        msgspec.msgpack.encode([1, "k", b"v"]),  # str key
        msgspec.msgpack.encode([2, b"k", b"extra"]),
        msgspec.msgpack.encode({"key": b"k"}),
        encode_put(b"k", b"v")[:-1],  # truncated
        encode_put(b"k", b"v") + b"\x00",  # trailing bytes
    ],
)
def test_malformed_op_gives_an_error_result(raw: bytes) -> None:
    kv = KVStore()
    assert results(kv, raw, encode_get(b"k")) == [Err(ERR_MALFORMED), Ok(None)]


def test_non_bytes_op_gives_an_error_result() -> None:
    kv = KVStore()
    assert [decode_result(r) for r in kv.apply([None, 5])] == [  # type: ignore[list-item]
        Err(ERR_MALFORMED),
        Err(ERR_MALFORMED),
    ]


def test_oversize_key_or_value_is_refused_and_changes_nothing() -> None:
    kv = KVStore()
    root = kv.state_root()
    big_key = b"k" * (MAX_KEY_BYTES + 1)
    assert results(
        kv,
        encode_put(big_key, b"v"),
        encode_get(big_key),
        encode_delete(big_key),
        encode_put(b"k", b"v" * (MAX_VALUE_BYTES + 1)),
    ) == [
        Err(ERR_KEY_TOO_LARGE),
        Err(ERR_KEY_TOO_LARGE),
        Err(ERR_KEY_TOO_LARGE),
        Err(ERR_VALUE_TOO_LARGE),
    ]
    assert len(kv) == 0 and kv.state_root() == root
    # The limits themselves are allowed.
    at_limit = [encode_put(b"k" * MAX_KEY_BYTES, b"v" * MAX_VALUE_BYTES)]
    assert [decode_result(r) for r in kv.apply(at_limit)] == [Ok(None)]


def test_results_are_identical_bytes_on_every_replica() -> None:
    ops = [encode_put(b"a", b"1"), b"junk", encode_get(b"a"), encode_get(b"zz")]
    assert KVStore().apply(ops) == KVStore().apply(ops)


def test_snapshot_restore_round_trip() -> None:
    kv = KVStore()
    kv.apply([encode_put(b"%d" % i, os.urandom(i)) for i in range(200)])
    kv.apply([encode_delete(b"7")])
    other = KVStore()
    other.apply([encode_put(b"stale", b"gone")])
    other.restore(kv.snapshot())
    assert other.snapshot() == kv.snapshot()
    assert other.state_root() == kv.state_root()
    assert other.get(b"stale") is None and other.get(b"8") == kv.get(b"8")
    # And the restored machine keeps working incrementally.
    for machine in (kv, other):
        machine.apply([encode_put(b"new", b"x"), encode_put(b"8", b"y")])
    assert other.state_root() == kv.state_root()


def test_snapshot_is_canonical_regardless_of_history() -> None:
    a, b = KVStore(), KVStore()
    a.apply([encode_put(b"x", b"1"), encode_put(b"y", b"2")])
    b.apply([encode_put(b"y", b"0"), encode_put(b"z", b"9"), encode_put(b"x", b"1")])
    b.apply([encode_put(b"y", b"2"), encode_delete(b"z")])
    assert a.snapshot() == b.snapshot()


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"not a snapshot",
        msgspec.msgpack.encode([20, [[b"b", b"1"], [b"a", b"2"]]]),  # unsorted
        msgspec.msgpack.encode([20, [[b"a", b"1"], [b"a", b"2"]]]),  # duplicate key
        msgspec.msgpack.encode([20, [[b"k" * (MAX_KEY_BYTES + 1), b"v"]]]),
        msgspec.msgpack.encode([20, [["a", "1"]]]),
        msgspec.msgpack.encode([21, []]),
    ],
)
def test_restore_rejects_garbage_and_keeps_the_state(garbage: bytes) -> None:
    kv = KVStore()
    kv.apply([encode_put(b"keep", b"1")])
    root = kv.state_root()
    with pytest.raises(ValueError):
        kv.restore(garbage)
    assert kv.get(b"keep") == b"1" and kv.state_root() == root


# -- state root ----------------------------------------------------------------------------


def test_empty_root_is_hash_of_nothing() -> None:
    assert KVStore().state_root() == EMPTY_DIGEST == hashlib.sha256(b"").digest()


def test_root_matches_the_specified_tree_for_small_sizes() -> None:
    for n in range(12):
        kv = KVStore()
        items = {b"key%d" % i: b"v%d" % i for i in range(n)}
        kv.apply([encode_put(k, v) for k, v in items.items()])
        assert kv.state_root() == reference_root(items), n


def test_leaf_length_prefix_separates_key_from_value() -> None:
    a, b = KVStore(), KVStore()
    a.apply([encode_put(b"ab", b"c")])
    b.apply([encode_put(b"a", b"bc")])
    assert a.state_root() != b.state_root()


def test_root_changes_on_any_change() -> None:
    kv = KVStore()
    kv.apply([encode_put(b"%03d" % i, b"v") for i in range(50)])
    seen = {kv.state_root()}
    for op in (
        encode_put(b"010", b"w"),  # value change
        encode_put(b"100", b"v"),  # insert
        encode_delete(b"000"),  # delete
        encode_put(b"049", b"v\x00"),  # one extra byte
    ):
        kv.apply([op])
        root = kv.state_root()
        assert root not in seen
        seen.add(root)
    # Reads and no-op deletes do not change it.
    kv.apply([encode_get(b"010"), encode_delete(b"missing")])
    assert kv.state_root() == root
    # Writing back a previous state brings back its root.
    kv.apply([encode_put(b"049", b"v")])
    assert kv.state_root() in seen


_keys = st.binary(max_size=6)
_items = st.dictionaries(_keys, st.binary(max_size=8), max_size=40)


@settings(max_examples=60, deadline=None)
@given(items=_items, seed=st.integers(0, 2**32), noise=_items)
def test_equal_states_have_equal_roots_whatever_the_insertion_order(
    items: dict[bytes, bytes], seed: int, noise: dict[bytes, bytes]
) -> None:
    a, b = KVStore(), KVStore()
    a.apply([encode_put(k, v) for k, v in items.items()])
    # b reaches the same state by another path: shuffled order, junk written then
    # overwritten or deleted, and roots taken along the way (exercising the caches).
    shuffled = list(items.items())
    random.Random(seed).shuffle(shuffled)
    b.apply([encode_put(k, v + b"junk") for k, v in noise.items()])
    b.state_root()
    for k, v in shuffled:
        b.apply([encode_put(k, v)])
        if random.Random(seed + len(k)).random() < 0.2:
            b.state_root()
    b.apply([encode_delete(k) for k in noise if k not in items])
    assert a.state_root() == b.state_root() == reference_root(items)


_ops = st.lists(
    st.one_of(
        st.tuples(st.just("put"), _keys, st.binary(max_size=4)),
        st.tuples(st.just("delete"), _keys, st.just(b"")),
        st.tuples(st.just("root"), st.just(b""), st.just(b"")),
    ),
    max_size=80,
)


@settings(max_examples=80, deadline=None)
@given(ops=_ops)
def test_incremental_root_always_equals_a_from_scratch_root(
    ops: list[tuple[str, bytes, bytes]],
) -> None:
    kv = KVStore()
    model: dict[bytes, bytes] = {}
    for kind, key, value in ops:
        if kind == "put":
            kv.apply([encode_put(key, value)])
            model[key] = value
        elif kind == "delete":
            kv.apply([encode_delete(key)])
            model.pop(key, None)
        else:
            assert kv.state_root() == reference_root(model)
    assert kv.state_root() == reference_root(model)


def test_root_over_many_keys_stays_cheap_to_maintain() -> None:
    # Sanity, not a benchmark: 10^4 keys, then checkpoints after a few writes each.
    rng = random.Random(7)
    keys = [rng.randbytes(16) for _ in range(10_000)]
    kv = KVStore()
    kv.apply([encode_put(k, rng.randbytes(64)) for k in keys])
    kv.state_root()
    for _ in range(20):
        kv.apply([encode_put(rng.choice(keys), rng.randbytes(64)) for _ in range(30)])
        kv.apply([encode_put(rng.randbytes(16), b"new")])
        kv.state_root()
    assert len(kv) == 10_020
    assert kv.state_root() == reference_root(dict(msgspec.msgpack.decode(kv.snapshot())[1]))
