"""A write-ahead log in two preallocated files: one ``fdatasync`` per durable batch.

An LMDB commit that must survive a power loss costs two syncs (data pages, then the meta
page) and, on this kind of virtual disk, ~200 µs of CPU besides the wait. A replica makes
two gating writes per slot, so that cost bound the default ``--durability fsync``. Here a
batch is one ``pwrite`` into a file whose blocks already exist (zero-filled when the file
was made, so the write changes no file-system metadata) and one ``fdatasync``: about half
the CPU and latency. The :class:`~phalanx.storage.lmdb_store.Store` applies the logged
batches to LMDB in the background, a generation at a time.

Layout: generation ``g`` lives in file ``wal-<g % 2>``, from offset 0, as entries
``magic | generation | seq | length | crc32 | payload`` where the CRC covers the header
fields and the payload. A scan accepts entries of the wanted generation with seq 0, 1,
2, ... and stops at the first entry that is torn, stale (another generation: the file is
reused) or out of sequence — so a write interrupted by a crash, never acknowledged, is
dropped whole.
"""

from __future__ import annotations

import os
import struct
import zlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from phalanx.storage.failpoints import Failpoints

_HEADER = struct.Struct(">4sQQII")
_PREFIX = struct.Struct(">4sQQI")  # the header without its CRC
_MAGIC = b"PWAL"
HEADER_SIZE = _HEADER.size
_ZEROS = bytes(1 << 20)


class WalFile:
    """One of the two log files, preallocated to ``capacity`` bytes."""

    __slots__ = ("_fd", "capacity", "failpoints", "path")

    def __init__(self, path: str, capacity: int, failpoints: Failpoints | None = None) -> None:
        self.path = path
        self.capacity = capacity
        self.failpoints = failpoints  # the crash harness's seam (storage/failpoints.py)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)

    def scan(self, generation: int) -> list[bytes]:
        """The payloads of ``generation``'s entries, in order, up to the first bad one."""
        size = os.fstat(self._fd).st_size
        payloads: list[bytes] = []
        offset = 0
        while offset + HEADER_SIZE <= size:
            header = os.pread(self._fd, HEADER_SIZE, offset)
            magic, gen, seq, length, crc = _HEADER.unpack(header)
            if magic != _MAGIC or gen != generation or seq != len(payloads):
                break
            if offset + HEADER_SIZE + length > size:
                break
            payload = os.pread(self._fd, length, offset + HEADER_SIZE)
            if zlib.crc32(payload, zlib.crc32(header[:-4])) != crc:
                break  # torn: the write it belongs to never returned
            payloads.append(payload)
            offset += HEADER_SIZE + length
        return payloads

    def preallocate(self) -> None:
        """Zero-fill the file to its capacity (only what is missing) and make it durable."""
        size = os.fstat(self._fd).st_size
        while size < self.capacity:
            chunk = _ZEROS[: min(len(_ZEROS), self.capacity - size)]
            os.pwrite(self._fd, chunk, size)
            size += len(chunk)
        os.fsync(self._fd)

    def append(self, offset: int, generation: int, seq: int, payload: bytes) -> int:
        """Write one entry at ``offset`` and wait until it is on disk; returns its size."""
        prefix = _PREFIX.pack(_MAGIC, generation, seq, len(payload))
        crc = zlib.crc32(payload, zlib.crc32(prefix))
        size = HEADER_SIZE + len(payload)
        # Gathered, not concatenated: a batch can be megabytes.
        written = os.pwritev(self._fd, [prefix, crc.to_bytes(4, "big"), payload], offset)
        if written != size:
            raise OSError(f"short write to {self.path}: {written} of {size} bytes")
        if self.failpoints is None:
            os.fdatasync(self._fd)
        else:
            self.failpoints.sync(self._fd, offset, size)
        return size

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def entry_size(payload_len: int) -> int:
    return HEADER_SIZE + payload_len


def sync_directory(path: str) -> None:
    """Make a new file's directory entry durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
