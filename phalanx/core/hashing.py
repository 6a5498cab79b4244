"""The one hash function of the protocols: SHA-256 (fast on large buffers, unlike keyed blake2b)."""

from __future__ import annotations

import hashlib

DIGEST_SIZE = 32
EMPTY_DIGEST = hashlib.sha256(b"").digest()


def digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def digest_parts(*parts: bytes) -> bytes:
    """Hash of length-prefixed parts, so that ("ab", "c") and ("a", "bc") differ."""
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(4, "big"))
        h.update(part)
    return h.digest()
