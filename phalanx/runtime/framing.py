"""Length-prefixed, MAC-authenticated frames: the byte format of every phalanx link.

A frame is ``length (4 bytes, big-endian) || payload || tag (16 bytes)`` where
``tag = MAC(session_key, direction || counter (8 bytes) || payload)``. The direction byte
and the per-direction frame counter are not sent: both ends know them. So a frame that is
replayed, dropped, reordered or reflected back to its sender fails its MAC, and the
session key (fresh per connection) stops frames from moving between connections.

Once a link is open, a frame's payload is a *bundle*: one or more messages, each
``length (4 bytes, big-endian) || message``. Everything a link sends in one loop turn
goes in one frame, so a burst of small messages (client requests, votes) costs one
tag, one header and one parse, not one per message (:func:`split_bundle`).

Handshake frames are sent before a session key exists; they carry no tag (their content
is authenticated by the handshake's own MACs, see :mod:`phalanx.runtime.transport`).

The decoder never copies a payload that arrived whole in one chunk: it hands out
``memoryview`` slices of the chunk, and it never resizes a buffer it has handed slices
of, so a returned view stays valid for as long as the caller keeps it.
"""

from __future__ import annotations

import struct
from typing import NoReturn

from phalanx.crypto.mac import MAC_SIZE, MacKey

LENGTH_SIZE = 4
TAG_SIZE = MAC_SIZE
FRAME_OVERHEAD = LENGTH_SIZE + TAG_SIZE
DEFAULT_MAX_FRAME = 16 << 20
HANDSHAKE_MAX_FRAME = 4096
"""Unauthenticated peers may not make a replica buffer more than this."""

TO_ACCEPTOR = 1
"""Direction byte of frames sent by the connecting end."""
TO_CONNECTOR = 2
"""Direction byte of frames sent by the accepting end."""

_LENGTH = struct.Struct(">I")
_MAC_PREFIX = struct.Struct(">BQ")


class FrameError(Exception):
    """The byte stream is not a valid frame sequence; the connection must be closed.

    ``reason`` names the ``dropped_<reason>`` metric the failure is counted in.
    """

    reason = "bad_frame"


class FrameTooLarge(FrameError):
    """A frame announced a length above the limit (before any of it is buffered)."""

    reason = "frame_too_large"


class FrameAuthError(FrameError):
    """A frame's tag is wrong: wrong key, tampered, replayed, reordered or reflected."""

    reason = "bad_mac"


class FrameTruncated(FrameError):
    """The stream ended in the middle of a frame."""

    reason = "truncated_frame"


class FrameEncoder:
    """Frames outgoing payloads of one direction of one connection."""

    __slots__ = ("_counter", "_direction", "_mac")

    def __init__(self, key: bytes | None = None, direction: int = TO_ACCEPTOR) -> None:
        self._mac: MacKey | None = None
        self._direction = direction
        self._counter = 0
        if key is not None:
            self.set_key(key, direction)

    def set_key(self, key: bytes, direction: int) -> None:
        """Authenticate every following frame under ``key``; the counter starts at 0."""
        self._mac = MacKey(key)
        self._direction = direction
        self._counter = 0

    def encode_into(self, payload: bytes, out: list[bytes]) -> int:
        """Append the frame's parts to ``out`` (joined once per flush by the caller);
        returns the frame's size on the wire."""
        out.append(_LENGTH.pack(len(payload)))
        out.append(payload)
        if self._mac is None:
            return LENGTH_SIZE + len(payload)
        out.append(self._mac.tag(_MAC_PREFIX.pack(self._direction, self._counter), payload))
        self._counter += 1
        return FRAME_OVERHEAD + len(payload)

    def encode_bundle_into(self, messages: list[bytes], out: list[bytes]) -> int:
        """Append one frame whose payload bundles ``messages`` (see :func:`split_bundle`);
        returns its size on the wire. The messages are not copied to build it."""
        parts: list[bytes] = []
        size = 0
        for message in messages:
            parts.append(_LENGTH.pack(len(message)))
            parts.append(message)
            size += LENGTH_SIZE + len(message)
        out.append(_LENGTH.pack(size))
        out.extend(parts)
        if self._mac is None:
            return LENGTH_SIZE + size
        out.append(self._mac.tag_parts(_MAC_PREFIX.pack(self._direction, self._counter), parts))
        self._counter += 1
        return FRAME_OVERHEAD + size

    def encode_bundle(self, messages: list[bytes]) -> bytes:
        """One bundle frame as bytes."""
        parts: list[bytes] = []
        self.encode_bundle_into(messages, parts)
        return b"".join(parts)

    def encode(self, payload: bytes) -> bytes:
        """One frame as bytes."""
        parts: list[bytes] = []
        self.encode_into(payload, parts)
        return b"".join(parts)


def split_bundle(payload: memoryview) -> list[memoryview]:
    """The messages of a bundle frame's payload (views, no copies); raises
    :class:`BadBundle` if the lengths do not add up (the sender is faulty)."""
    messages: list[memoryview] = []
    pos = 0
    end = len(payload)
    unpack_from = _LENGTH.unpack_from
    while pos < end:
        if end - pos < LENGTH_SIZE:
            raise BadBundle(f"{end - pos} stray bytes after {len(messages)} messages")
        (length,) = unpack_from(payload, pos)
        pos += LENGTH_SIZE
        if length > end - pos:
            raise BadBundle(f"message of {length} bytes in {end - pos} remaining")
        messages.append(payload[pos : pos + length])
        pos += length
    return messages


class BadBundle(ValueError):
    """An authenticated frame whose bundle is malformed: its messages are dropped
    (``dropped_bad_bundle``), the link stays up — the peer is known and accountable."""


class FrameDecoder:
    """Reassembles frames from arbitrary chunks of a byte stream and checks their tags.

    Usage: ``feed(chunk)`` then call ``next_frame()`` until it returns None. A
    :class:`FrameError` breaks the decoder for good (the stream has lost its framing).
    ``feed`` takes ownership of the chunk: the caller must not mutate it afterwards.
    """

    __slots__ = (
        "_appendable",
        "_broken",
        "_buf",
        "_counter",
        "_direction",
        "_mac",
        "_max_frame",
        "_pos",
        "_tag_size",
        "_view",
    )

    def __init__(
        self,
        key: bytes | None = None,
        direction: int = TO_ACCEPTOR,
        max_frame: int = DEFAULT_MAX_FRAME,
    ) -> None:
        self._buf: bytes | bytearray | memoryview = b""
        self._pos = 0
        # A view of _buf, made when the first frame is handed out of it; once it exists
        # _buf must never be resized (it would raise BufferError and break the views).
        self._view: memoryview | None = None
        self._appendable = False
        self._max_frame = max_frame
        self._mac: MacKey | None = None
        self._tag_size = 0
        self._direction = direction
        self._counter = 0
        self._broken: FrameError | None = None
        if key is not None:
            self.set_key(key, direction)

    def set_key(self, key: bytes, direction: int, max_frame: int | None = None) -> None:
        """Expect authenticated frames from now on (bytes already buffered included)."""
        self._mac = MacKey(key)
        self._tag_size = TAG_SIZE
        self._direction = direction
        self._counter = 0
        if max_frame is not None:
            self._max_frame = max_frame

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames."""
        return len(self._buf) - self._pos

    @property
    def frames_decoded(self) -> int:
        """Authenticated frames returned so far (since :meth:`set_key`)."""
        return self._counter

    @property
    def pending_frame_size(self) -> int | None:
        """Bytes on the wire of the frame being received (header, payload, tag), once
        its length header is in; None before."""
        if self.buffered < LENGTH_SIZE:
            return None
        length: int = _LENGTH.unpack_from(self._buf, self._pos)[0]
        return LENGTH_SIZE + length + self._tag_size

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Add a chunk of the stream."""
        if not data:
            return
        buf = self._buf
        if self._pos >= len(buf):
            # Nothing pending: parse frames straight out of the chunk, without a copy.
            self._buf = data
            self._pos = 0
            self._view = None
            self._appendable = False
        elif self._appendable and self._view is None:
            # A frame spread over many chunks: amortised O(1) append, no quadratic copying.
            buf += data  # type: ignore[operator]  # bytearray when appendable
        else:
            # Keep only the unconsumed tail (usually part of one frame) in a new buffer.
            tail = bytearray(memoryview(buf)[self._pos :])
            tail += data
            self._buf = tail
            self._pos = 0
            self._view = None
            self._appendable = True

    def next_frame(self) -> memoryview | None:
        """The next complete, authenticated payload, or None if more bytes are needed."""
        if self._broken is not None:
            raise self._broken
        buf = self._buf
        pos = self._pos
        start = pos + LENGTH_SIZE
        if len(buf) < start:
            return None
        (length,) = _LENGTH.unpack_from(buf, pos)
        if length > self._max_frame:
            # Checked before buffering: an announced 4 GiB frame costs us nothing.
            self._fail(FrameTooLarge(f"frame of {length} bytes > {self._max_frame}"))
        stop = start + length
        end = stop + self._tag_size
        if len(buf) < end:
            return None
        view = self._view
        if view is None:
            view = self._view = memoryview(buf)
        payload = view[start:stop]
        mac = self._mac
        if mac is not None:
            prefix = _MAC_PREFIX.pack(self._direction, self._counter)
            if not mac.check(prefix, payload, view[stop:end]):
                self._fail(FrameAuthError(f"bad tag on frame {self._counter}"))
            self._counter += 1
        self._pos = end
        return payload

    def eof(self) -> None:
        """The stream ended: raise :class:`FrameTruncated` if a partial frame is pending."""
        if self._broken is None and self.buffered:
            self._fail(FrameTruncated(f"stream ended with {self.buffered} bytes of a frame"))

    def _fail(self, error: FrameError) -> NoReturn:
        self._broken = error
        raise error
