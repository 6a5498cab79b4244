"""A replicated key-value store: the simplest :class:`~phalanx.statemachine.base.StateMachine`.

Ops and results are msgpack-encoded tagged Structs (canonical bytes, like every message).
The state root is a Merkle tree over the (key, value) leaves in key order::

    leaf  = sha256(0x00 || len(key) as 4 bytes big-endian || key || value)
    inner = sha256(0x01 || left || right)      # an odd last node is promoted unchanged
    empty = sha256(b"")

The distinct 0x00/0x01 prefixes keep a leaf from ever being read as an inner node.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left

import msgspec

from phalanx.core.hashing import EMPTY_DIGEST
from phalanx.statemachine.base import StateMachine

MAX_KEY_BYTES = 1 << 10
MAX_VALUE_BYTES = 1 << 20

_LEAF = b"\x00"
_INNER = b"\x01"

# Extra trailing elements are rejected: an op or snapshot has exactly one valid encoding.
_struct_opts = dict(array_like=True, frozen=True, gc=False, forbid_unknown_fields=True)


class Put(msgspec.Struct, tag=1, **_struct_opts):
    """Set ``key`` to ``value``. Result: ``Ok(None)``."""

    key: bytes
    value: bytes


class Get(msgspec.Struct, tag=2, **_struct_opts):
    """Read ``key``. Result: ``Ok(value)``, or ``Ok(None)`` if absent."""

    key: bytes


class Delete(msgspec.Struct, tag=3, **_struct_opts):
    """Remove ``key`` (absent is fine). Result: ``Ok(None)``."""

    key: bytes


class Ok(msgspec.Struct, tag=10, **_struct_opts):
    value: bytes | None = None


class Err(msgspec.Struct, tag=11, **_struct_opts):
    reason: str


Op = Put | Get | Delete
Result = Ok | Err

# Error reasons are fixed strings, never exception text: a client accepts a result only
# when f+1 replicas return identical bytes, so results must not depend on library versions.
ERR_MALFORMED = "malformed op"
ERR_KEY_TOO_LARGE = f"key larger than {MAX_KEY_BYTES} bytes"
ERR_VALUE_TOO_LARGE = f"value larger than {MAX_VALUE_BYTES} bytes"


class _Snapshot(msgspec.Struct, tag=20, **_struct_opts):
    items: list[tuple[bytes, bytes]]


_encoder = msgspec.msgpack.Encoder()
# Op and Result are unions, which mypy cannot infer a Decoder's type from.
_op_decoder: msgspec.msgpack.Decoder[Op] = msgspec.msgpack.Decoder(Op)
_result_decoder: msgspec.msgpack.Decoder[Result] = msgspec.msgpack.Decoder(Result)
_snapshot_decoder = msgspec.msgpack.Decoder(_Snapshot)

_OK_NONE = _encoder.encode(Ok(None))


def encode_op(op: Op) -> bytes:
    """Canonical bytes of an op, as submitted in a client request."""
    return _encoder.encode(op)


def encode_put(key: bytes, value: bytes) -> bytes:
    return encode_op(Put(key, value))


def encode_get(key: bytes) -> bytes:
    return encode_op(Get(key))


def encode_delete(key: bytes) -> bytes:
    return encode_op(Delete(key))


def decode_op(data: bytes) -> Op:
    """Decode an op; raises ``msgspec.DecodeError`` on garbage."""
    return _op_decoder.decode(data)


def decode_result(data: bytes) -> Result:
    """Decode a result returned by :meth:`KVStore.apply`; raises ``msgspec.DecodeError``."""
    return _result_decoder.decode(data)


def _leaf_hash(key: bytes, value: bytes) -> bytes:
    h = hashlib.sha256(_LEAF)
    h.update(len(key).to_bytes(4, "big"))
    h.update(key)
    h.update(value)
    return h.digest()


def _parent_level(level: list[bytes]) -> list[bytes]:
    sha256 = hashlib.sha256
    parents = [
        sha256(_INNER + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)
    ]
    if len(level) % 2:
        parents.append(level[-1])
    return parents


class KVStore(StateMachine):
    """In-memory byte-string map with a cached Merkle state root.

    Root maintenance: leaf hashes are cached per key and recomputed lazily (a key written
    many times between checkpoints is hashed once). While the key set is unchanged, the
    tree levels are kept and only the paths above changed leaves are rehashed; adding or
    removing a key shifts positions, so the levels are rebuilt from the cached leaves.
    """

    def __init__(self) -> None:
        self._data: dict[bytes, bytes] = {}
        self._leaf: dict[bytes, bytes] = {}
        self._stale: set[bytes] = set()  # present keys whose leaf hash is out of date
        self._order: list[bytes] = []  # sorted keys as of the last root, plus the deltas:
        self._added: set[bytes] = set()
        self._removed: set[bytes] = set()
        self._levels: list[list[bytes]] | None = None  # levels[0] = leaves in key order

    # -- StateMachine ---------------------------------------------------------------------

    def apply(self, ops: list[bytes]) -> list[bytes]:
        """Apply ``ops`` in order; one encoded :class:`Ok` or :class:`Err` per op."""
        return [self._apply_one(op) for op in ops]

    def snapshot(self) -> bytes:
        """The whole state as canonical bytes (items sorted by key)."""
        return _encoder.encode(_Snapshot(sorted(self._data.items())))

    def restore(self, snapshot: bytes) -> None:
        """Replace the state with ``snapshot``; on ValueError the state is unchanged."""
        try:
            items = _snapshot_decoder.decode(snapshot).items
        except msgspec.DecodeError as e:
            raise ValueError(f"malformed KV snapshot: {e}") from None
        previous: bytes | None = None
        for key, value in items:
            # Only the canonical form is accepted, so a snapshot has one meaning.
            if previous is not None and key <= previous:
                raise ValueError("KV snapshot keys are not strictly increasing")
            if len(key) > MAX_KEY_BYTES or len(value) > MAX_VALUE_BYTES:
                raise ValueError("KV snapshot holds an oversize key or value")
            previous = key
        self._data = dict(items)
        self._leaf = {}
        self._stale = set(self._data)
        self._order = [key for key, _ in items]
        self._added = set()
        self._removed = set()
        self._levels = None

    def state_digest(self) -> bytes:
        """The state's commitment: its Merkle root."""
        return self.state_root()

    def state_root(self) -> bytes:
        """Merkle root over the sorted (key, value) leaves; see the module docstring."""
        changed = self._refresh_leaves()
        if self._added or self._removed or self._levels is None:
            self._rebuild_tree()
        elif changed:
            self._update_paths(changed)
        assert self._levels is not None
        return self._levels[-1][0] if self._levels[0] else EMPTY_DIGEST

    # -- reads for local callers (not replicated) ------------------------------------------

    def get(self, key: bytes) -> bytes | None:
        return self._data.get(key)

    def __len__(self) -> int:
        return len(self._data)

    # -- internals -------------------------------------------------------------------------

    def _apply_one(self, raw: bytes) -> bytes:
        try:
            op = _op_decoder.decode(raw)
        except (msgspec.DecodeError, TypeError):
            return _encoder.encode(Err(ERR_MALFORMED))
        if len(op.key) > MAX_KEY_BYTES:
            return _encoder.encode(Err(ERR_KEY_TOO_LARGE))
        if isinstance(op, Get):
            return _encoder.encode(Ok(self._data.get(op.key)))
        if isinstance(op, Put):
            if len(op.value) > MAX_VALUE_BYTES:
                return _encoder.encode(Err(ERR_VALUE_TOO_LARGE))
            self._put(op.key, op.value)
        else:
            self._delete(op.key)
        return _OK_NONE

    def _put(self, key: bytes, value: bytes) -> None:
        if key not in self._data:
            if key in self._removed:
                self._removed.discard(key)  # back at its old position
            else:
                self._added.add(key)
        self._data[key] = value
        self._stale.add(key)

    def _delete(self, key: bytes) -> None:
        if key not in self._data:
            return
        del self._data[key]
        self._leaf.pop(key, None)
        self._stale.discard(key)
        if key in self._added:
            self._added.discard(key)
        else:
            self._removed.add(key)

    def _refresh_leaves(self) -> list[bytes]:
        """Rehash the stale leaves; return the keys whose leaf hash actually changed."""
        changed = []
        data, leaf = self._data, self._leaf
        for key in self._stale:
            new = _leaf_hash(key, data[key])
            if leaf.get(key) != new:
                leaf[key] = new
                changed.append(key)
        self._stale.clear()
        return changed

    def _rebuild_tree(self) -> None:
        order = self._order
        if self._removed:
            removed = self._removed
            order = [key for key in order if key not in removed]
        if self._added:
            # Timsort merges the sorted run with the few new keys in near-linear time.
            order.extend(self._added)
            order.sort()
        self._order = order
        self._added = set()
        self._removed = set()
        leaf = self._leaf
        levels = [[leaf[key] for key in order]]
        while len(levels[-1]) > 1:
            levels.append(_parent_level(levels[-1]))
        self._levels = levels

    def _update_paths(self, changed: list[bytes]) -> None:
        assert self._levels is not None
        levels = self._levels
        order = self._order
        dirty = set()
        for key in changed:
            # bisect instead of a key->position dict: no O(n) map to rebuild on inserts.
            i = bisect_left(order, key)
            levels[0][i] = self._leaf[key]
            dirty.add(i >> 1)
        sha256 = hashlib.sha256
        for depth in range(1, len(levels)):
            below, here = levels[depth - 1], levels[depth]
            for i in dirty:
                left = 2 * i
                if left + 1 < len(below):
                    here[i] = sha256(_INNER + below[left] + below[left + 1]).digest()
                else:
                    here[i] = below[left]
            dirty = {i >> 1 for i in dirty}
