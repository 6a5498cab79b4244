"""A sparse Merkle tree over 256-bit keys, with inclusion and exclusion proofs.

The tree is the complete binary tree of depth 256 in which leaf ``k`` holds the value
stored under key ``k``; almost all of it is empty. It is stored compactly (as Diem's
sparse Merkle tree is): an empty subtree is the constant ``EMPTY`` (32 zero bytes, the
memoized hash of every empty subtree at every height), and a subtree holding exactly one
leaf *is* that leaf, wherever it sits. So a path is only as long as the prefix its key
shares with its nearest neighbour (about log2 of the number of keys), and an update
rehashes only that path::

    leaf     = sha256(0x00 || key (32) || value)
    internal = sha256(0x01 || left || right)

The 0x00/0x01 prefixes keep a leaf from being read as an internal node.

Nodes are immutable: :meth:`SparseMerkleTree.update` returns a new tree that shares every
untouched subtree with the old one, so keeping the roots of recent versions is cheap and
each of them can still produce proofs (the ledger proves balances against the latest
*certified* root while newer blocks are being signed).

A proof for key ``k`` lists the sibling hashes from the root down to where ``k``'s path
ends, and what it ends at: the leaf of ``k`` (inclusion), an empty subtree, or the leaf of
another key sharing the path so far (both exclusion).

Speed matters here: every block rehashes the union of its accounts' paths, about
log2(accounts) nodes per account, on every replica. So nodes are msgspec Structs that the
cyclic garbage collector does not track (``gc=False``: a tree has no cycles; this halves
the cost of building a node and spares the collector a pass over every tree kept), keys
are compared as integers, and an update splits its sorted keys by binary search instead of
testing bits one key at a time; a node shared by several updated keys is hashed once.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left
from dataclasses import dataclass
from typing import final

import msgspec

KEY_BYTES = 32
DEPTH = 8 * KEY_BYTES
EMPTY = bytes(32)
_LEAF = b"\x00"
_INTERNAL = b"\x01"
_sha256 = hashlib.sha256



# Final, so that ``type(node) is _Leaf`` tells the type checker the rest is not one.
@final
class _Empty(msgspec.Struct, gc=False, frozen=True):
    hash: bytes


@final
class _Internal(msgspec.Struct, gc=False, frozen=True):
    hash: bytes
    left: _Node
    right: _Node


@final
class _Leaf(msgspec.Struct, gc=False, frozen=True):
    hash: bytes
    key: bytes
    value: bytes
    path: int  # the key as a 256-bit integer


_Node = _Empty | _Internal | _Leaf
_NIL = _Empty(EMPTY)  # the one empty subtree


def _bit(key: bytes, depth: int) -> int:
    return (key[depth >> 3] >> (7 - (depth & 7))) & 1


def leaf_hash(key: bytes, value: bytes) -> bytes:
    return _sha256(_LEAF + key + value).digest()


def internal_hash(left: bytes, right: bytes) -> bytes:
    return _sha256(_INTERNAL + left + right).digest()


def _leaf(key: bytes, value: bytes) -> _Leaf:
    return _Leaf(_sha256(_LEAF + key + value).digest(), key, value, int.from_bytes(key, "big"))


@dataclass(frozen=True, slots=True)
class Proof:
    """Siblings from the root down, and the leaf the path ends at (None: empty)."""

    siblings: tuple[bytes, ...]
    leaf_key: bytes | None = None
    leaf_value: bytes | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "siblings": [s.hex() for s in self.siblings],
            "leaf": None if self.leaf_key is None
            else {"key": self.leaf_key.hex(), "value": (self.leaf_value or b"").hex()},
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Proof:
        """Parse :meth:`to_json` output; raises ValueError (or TypeError) on garbage."""
        siblings = data["siblings"]
        leaf = data["leaf"]
        if not isinstance(siblings, list) or len(siblings) > DEPTH:
            raise ValueError("proof siblings must be a list of at most 256 hashes")
        parsed = tuple(bytes.fromhex(s) for s in siblings)
        if leaf is None:
            return cls(parsed)
        if not isinstance(leaf, dict):
            raise ValueError("proof leaf must be an object or null")
        return cls(parsed, bytes.fromhex(leaf["key"]), bytes.fromhex(leaf["value"]))


def verify_proof(root: bytes, key: bytes, value: bytes | None, proof: Proof) -> bool:
    """Does ``proof`` show that ``key`` maps to ``value`` (None: is absent) under
    ``root``? Never raises on malformed proofs; returns False."""
    try:
        siblings = proof.siblings
        depth = len(siblings)
        if len(key) != KEY_BYTES or depth > DEPTH or any(len(s) != 32 for s in siblings):
            return False
        if proof.leaf_key is None:
            if value is not None:
                return False
            node = EMPTY
        else:
            leaf_key, leaf_value = proof.leaf_key, proof.leaf_value or b""
            if len(leaf_key) != KEY_BYTES:
                return False
            if leaf_key == key:
                if value is None or leaf_value != value:
                    return False
            else:
                # Exclusion by another leaf: it must lie on our path so far, or the
                # prover showed a leaf from elsewhere in the tree.
                if value is not None:
                    return False
                if any(_bit(leaf_key, d) != _bit(key, d) for d in range(depth)):
                    return False
            node = leaf_hash(leaf_key, leaf_value)
        for d in range(depth - 1, -1, -1):
            sibling = siblings[d]
            node = internal_hash(sibling, node) if _bit(key, d) else internal_hash(node, sibling)
        return node == root
    except (TypeError, AttributeError, IndexError):
        return False


class SparseMerkleTree:
    """An immutable sparse Merkle tree; :meth:`update` returns the next version."""

    __slots__ = ("_root",)

    def __init__(self, root: _Node = _NIL) -> None:
        self._root = root

    @property
    def root_hash(self) -> bytes:
        return self._root.hash

    def get(self, key: bytes) -> bytes | None:
        path = int.from_bytes(key, "big")
        node, shift = self._root, DEPTH - 1
        while type(node) is _Internal:
            node = node.right if (path >> shift) & 1 else node.left
            shift -= 1
        if type(node) is _Leaf and node.key == key:
            return node.value
        return None

    def update(self, items: dict[bytes, bytes]) -> SparseMerkleTree:
        """A new tree with ``items`` (key -> value) inserted or replaced. One pass over
        the touched paths: a node shared by several updated keys is hashed once."""
        if not items:
            return self
        if any(len(k) != KEY_BYTES for k in items):
            raise ValueError("sparse Merkle tree keys are 32 bytes")
        # Sorted by key bytes, which for equal lengths is the order of their integers.
        leaves = [_leaf(k, v) for k, v in sorted(items.items())]
        paths = [leaf.path for leaf in leaves]
        return SparseMerkleTree(_update(self._root, DEPTH - 1, leaves, paths, 0, len(leaves)))

    def prove(self, key: bytes) -> Proof:
        path = int.from_bytes(key, "big")
        siblings: list[bytes] = []
        node, shift = self._root, DEPTH - 1
        while type(node) is _Internal:
            if (path >> shift) & 1:
                sibling, node = node.left, node.right
            else:
                sibling, node = node.right, node.left
            siblings.append(sibling.hash)
            shift -= 1
        if type(node) is _Leaf:
            return Proof(tuple(siblings), node.key, node.value)
        return Proof(tuple(siblings))


# In the helpers below, ``leaves[lo:hi]`` (sorted by path, ``paths`` their integers) all
# lie in the subtree whose root splits on bit ``shift`` (255 at the tree's root): they
# share every higher bit. Slicing is avoided: index ranges into the same two lists.


def _split(paths: list[int], shift: int, lo: int, hi: int) -> int:
    """Index of the first leaf in [lo, hi) whose bit ``shift`` is 1."""
    pivot = ((paths[lo] >> shift) | 1) << shift  # the shared prefix, then a 1
    return bisect_left(paths, pivot, lo, hi)


def _build(shift: int, leaves: list[_Leaf], paths: list[int], lo: int, hi: int) -> _Node:
    """The canonical subtree holding exactly ``leaves[lo:hi]``."""
    if hi - lo == 1:
        return leaves[lo]
    mid = _split(paths, shift, lo, hi)
    left = _NIL if mid == lo else _build(shift - 1, leaves, paths, lo, mid)
    right = _NIL if mid == hi else _build(shift - 1, leaves, paths, mid, hi)
    return _Internal(_sha256(_INTERNAL + left.hash + right.hash).digest(), left, right)


def _update(node: _Node, shift: int, leaves: list[_Leaf], paths: list[int], lo: int,
            hi: int) -> _Node:
    if type(node) is _Internal:
        # Inlined _split: this runs once per node on every updated path.
        mid = bisect_left(paths, ((paths[lo] >> shift) | 1) << shift, lo, hi)
        left = node.left
        right = node.right
        if mid > lo:
            left = _update(left, shift - 1, leaves, paths, lo, mid)
        if mid < hi:
            right = _update(right, shift - 1, leaves, paths, mid, hi)
        return _Internal(_sha256(_INTERNAL + left.hash + right.hash).digest(), left, right)
    if type(node) is _Empty:
        return _build(shift, leaves, paths, lo, hi)
    # A leaf: rebuilt around the new leaves (replaced if its key is among them).
    i = bisect_left(paths, node.path, lo, hi)
    if i == hi or paths[i] != node.path:
        leaves = [*leaves[lo:i], node, *leaves[i:hi]]
        paths = [leaf.path for leaf in leaves]
        lo, hi = 0, len(leaves)
    return _build(shift, leaves, paths, lo, hi)
