"""Client-facing messages shared by every protocol, and the canonical encoding.

All messages are msgspec Structs encoded as msgpack arrays with an integer tag. The
msgpack encoding of an array-like Struct is canonical (fields in declaration order,
integers in their shortest form, no maps), so the bytes that are hashed or signed are the
same on every replica.

Tag ranges: 1-9 client messages (here), 10-39 PBFT, 40+ later protocols.
"""

from __future__ import annotations

from enum import IntEnum
from hashlib import sha256
from typing import Annotated

import msgspec

MAX_OP_BYTES = 1 << 20

NonNegative = Annotated[int, msgspec.Meta(ge=0, le=(1 << 63) - 1)]
"""A view, sequence number, instance, replica id or height on the wire: never negative
(a view -1 is "nothing" inside a replica, never a value a peer may claim), and within a
signed 64-bit integer. The decoder rejects anything else before a core sees it."""
Digest = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
"""A SHA-256 digest on the wire."""
StateDigest = Annotated[bytes, msgspec.Meta(max_length=32)]
"""A checkpoint's state digest: SHA-256, or empty for the genesis checkpoint."""


class Request(msgspec.Struct, tag=1, array_like=True, frozen=True, gc=False):
    """A client operation. ``(client, timestamp)`` identifies it for exactly-once execution.

    ``client`` is the client's Ed25519 public key (self-certifying id). ``endpoint`` is
    the public key of the connection replies go to when it is not the client's own: many
    clients of one process can share one connection per replica, so that replies to all
    of them travel in one write. ``auth`` is an authenticator: entry ``j`` is the MAC of
    :meth:`digest` under the pairwise key of the client and replica ``j``; a replica checks
    only its own entry. The digest covers ``endpoint``, so nobody but the client can
    redirect its replies.

    ``multicast`` says the client sent the request to every replica itself, so a backup
    need not forward it to the primary. It is a delivery hint, not part of the request
    (the digest leaves it out): it changes who relays the request, never what executes.
    """

    client: bytes
    timestamp: int
    op: bytes
    endpoint: bytes = b""
    auth: list[bytes] = []
    multicast: bool = False

    def digest(self) -> bytes:
        # One hash over fixed-width fields and a length-prefixed endpoint (0 or 32 bytes):
        # unambiguous, and computed by every client and replica for every request.
        return sha256(
            b"".join((
                len(self.client).to_bytes(1, "big"),
                self.client,
                self.timestamp.to_bytes(8, "big"),
                len(self.endpoint).to_bytes(1, "big"),
                self.endpoint,
                self.op,
            ))
        ).digest()

    @property
    def reply_to(self) -> bytes:
        """The connection identity that gets the replies."""
        return self.endpoint or self.client


class Reply(msgspec.Struct, tag=2, array_like=True, frozen=True, gc=False):
    """A replica's answer to request ``timestamp`` of ``client``."""

    client: bytes
    view: NonNegative
    timestamp: NonNegative
    replica: NonNegative
    result: bytes


class Refusal(IntEnum):
    """How far a replica's refusal of a request reaches: what a client may conclude from
    it (docs/pbft.md, "Refusals"). A correct replica marks a refusal only as far as it
    knows it reaches; a Byzantine one may claim anything, which is why a client needs
    several replicas to agree before it treats a request as refused for good."""

    TRANSIENT = 0
    """Judged on this replica's executed state or load (overloaded, a stale nonce, funds):
    the request may pass later, or be admitted by other replicas and execute now."""
    LOCAL = 1
    """This replica refuses these bytes for good, but other correct replicas may not (its
    own authenticator entry, checked with its own pairwise key)."""
    FINAL = 2
    """Every correct replica refuses these bytes, at admission and in a proposed batch
    alike: a deterministic function of the request and the cluster config."""


class Error(msgspec.Struct, tag=3, array_like=True, frozen=True, gc=False):
    """A replica's refusal of a client request, with a reason the client can show and
    how far the refusal reaches (a :class:`Refusal` value; other values count as
    TRANSIENT)."""

    client: bytes
    timestamp: int
    replica: int
    reason: str
    refusal: int = Refusal.TRANSIENT


class Replies(msgspec.Struct, tag=4, array_like=True, frozen=True, gc=False):
    """Several replies for clients behind one connection, in one message: a replica
    answering a batch writes one frame per shared connection, not one per client."""

    replies: list[Reply]


CLIENT_MESSAGES = (Request, Reply, Error, Replies)

_encoder = msgspec.msgpack.Encoder()


def encode(msg: msgspec.Struct) -> bytes:
    """Canonical bytes of a message."""
    return _encoder.encode(msg)


_batch_decoder = msgspec.msgpack.Decoder(list[Request])


def encode_batch(requests: list[Request]) -> bytes:
    return _encoder.encode(requests)


def decode_batch(payload: bytes) -> list[Request]:
    """Decode a batch payload; raises ``msgspec.DecodeError`` (or ValidationError) on garbage."""
    return _batch_decoder.decode(payload)
