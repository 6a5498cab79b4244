"""A replica's durable log: an LMDB key-value store with atomic, durable batches.

A protocol core persists with ``Persist`` effects; the driver gathers a step's effects
into one :meth:`Store.write`, which returns only once the batch is safe. LMDB's
copy-on-write B+tree and double meta page make a commit atomic: a process killed at any
instant (even mid-commit) leaves a store that reopens with exactly the transactions that
had committed. This is what lets a replica answer a message only after the state it
promised is safe.

Two durability levels:

- ``durable=True``: a batch survives a power loss. It is appended to a write-ahead log
  (:mod:`phalanx.storage.wal`, one ``fdatasync``) and kept in memory; whenever a log
  file fills, its batches are applied to LMDB in one fsynced commit on a background
  thread while the other file takes new batches. Reads see LMDB plus the logged batches;
  reopening replays the log. An fsynced LMDB commit per batch would cost two syncs.
- ``durable=False``: every batch is an LMDB commit to the OS page cache: it survives the
  process being killed at any point, not the machine losing power.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from enum import Enum
from types import TracebackType
from typing import TypeGuard

import lmdb
import msgspec

from phalanx.storage.failpoints import from_env as failpoints_from_env
from phalanx.storage.wal import WalFile, entry_size, sync_directory

DEFAULT_MAP_SIZE = 4 << 30
DEFAULT_WAL_BYTES = 8 << 20
"""Size of each of the two log files: the batches logged since LMDB last caught up are
held in memory, at most two files' worth."""

_APPLIED_KEY = b"\xffphalanx/wal-applied"
"""LMDB's record of the last log generation it holds (hidden from readers)."""


class _Missing(Enum):
    """An overlay has no entry for a key (None there is a logged delete)."""

    MISSING = "missing"


Records = list[tuple[bytes, bytes | None]]
_records_decoder = msgspec.msgpack.Decoder(list[tuple[bytes, bytes | None]])


def _after_prefix(prefix: bytes) -> bytes | None:
    """The smallest key above every key starting with ``prefix`` (None: there is none)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


def _all_puts(records: Records) -> TypeGuard[list[tuple[bytes, bytes]]]:
    """True if no record is a delete (None value)."""
    return all(value is not None for _, value in records)


class Store:
    """Durable, ordered byte-string map in directory ``path`` (created with mode 0700).

    Not thread-safe: one driver owns it. ``map_size`` is the initial address-space
    reservation (not disk usage); it doubles as needed when a write does not fit.
    """

    def __init__(
        self,
        path: str,
        map_size: int = DEFAULT_MAP_SIZE,
        durable: bool = True,
        wal_bytes: int = DEFAULT_WAL_BYTES,
    ) -> None:
        if map_size <= 0:
            raise ValueError(f"map_size must be positive, got {map_size}")
        # 0700: the log holds signed protocol messages and client requests.
        os.makedirs(path, mode=0o700, exist_ok=True)
        self.path = path
        self.durable = durable
        # None unless the crash-torture harness enabled them (storage/failpoints.py).
        self._failpoints = failpoints_from_env(path)
        if self._failpoints is not None and self._failpoints.wal_bytes:
            wal_bytes = self._failpoints.wal_bytes
        self._env: lmdb.Environment | None = lmdb.open(
            path,
            map_size=map_size,
            subdir=True,
            max_dbs=0,
            # Durable stores commit to LMDB only to apply a log generation, and those
            # commits are fsynced (data, then the meta page) before the log is reused.
            sync=durable,
            metasync=durable,
            # A writable mmap lets stray pointers corrupt the file; keep it read-only.
            writemap=False,
            readahead=False,
        )
        # Free reader slots left behind by killed processes, so they cannot pin old pages.
        self._env.reader_check()
        self._max_key_size = self._env.max_key_size()
        # The write-ahead log (durable stores only): batches of the current generation
        # are in ``_active``; a full generation being applied to LMDB is in ``_frozen``.
        self._wal: list[WalFile] = []
        self._active: dict[bytes, bytes | None] = {}
        self._frozen: dict[bytes, bytes | None] | None = None
        self._applier: threading.Thread | None = None
        self._apply_error: BaseException | None = None
        self._generation = 0
        self._seq = 0
        self._offset = 0
        if durable:
            self._open_wal(wal_bytes)

    @property
    def map_size(self) -> int:
        """Current size of the memory map, in bytes."""
        return int(self._open().info()["map_size"])

    def write(self, records: Records) -> None:
        """Apply ``records`` atomically and durably (see the module docstring).

        A ``None`` value deletes the key (a missing key is not an error). Later records
        win over earlier ones for the same key. Either every record is applied or, if
        this raises, none is. Raises ValueError for an empty or oversize key.
        """
        self._open()
        if self._failpoints is not None:
            records = self._failpoints.filter(records)
        for key, _ in records:
            self._check_key(key)
            if key == _APPLIED_KEY:
                raise ValueError(f"key {key!r} is reserved by the store")
        if not self.durable:
            self._commit(records)
            return
        if self._apply_error is not None:
            raise self._apply_error
        payload = msgspec.msgpack.encode(records)
        wal = self._wal
        size, capacity = entry_size(len(payload)), wal[0].capacity
        if size > capacity:
            # Larger than a log file: apply everything logged so far, then this batch,
            # straight to LMDB (fsynced), in order.
            self._switch_generation(wait=True)
            self._join_applier()
            self._commit(records)
            return
        if self._offset + size > capacity:
            self._switch_generation(wait=False)
        file = wal[self._generation % 2]
        self._offset += file.append(self._offset, self._generation, self._seq, payload)
        self._seq += 1
        active = self._active
        for key, value in records:
            active[key] = value

    def get(self, key: bytes) -> bytes | None:
        """The value stored under ``key``, or None."""
        self._open()
        # Newest first; each dict is read once (the applier swaps, never edits, them).
        for overlay in (self._active, self._frozen):
            if overlay is not None:
                value = overlay.get(key, _Missing.MISSING)
                if value is not _Missing.MISSING:
                    return value
        with self._open().begin() as txn:
            value = txn.get(key)
        return None if value is None or key == _APPLIED_KEY else bytes(value)

    def items(self, skip: tuple[bytes, ...] = ()) -> Iterator[tuple[bytes, bytes]]:
        """Every record, in key order, as of one consistent snapshot; none whose key
        starts with a prefix in ``skip`` (the cursor jumps past each such range, so a
        large skipped range costs neither time nor memory).

        Materialized inside a short read transaction: a lazily consumed cursor would hold
        a reader slot (and pin old pages) for as long as the caller keeps the iterator.
        """
        frozen, active = self._frozen, self._active
        with self._open().begin() as txn:
            # buffers=False (the default) copies each key and value out of the mmap.
            if not skip:
                merged: dict[bytes, bytes | None] = {bytes(k): bytes(v) for k, v in txn.cursor()}
            else:
                merged = {}
                cursor = txn.cursor()
                more = cursor.first()
                while more:
                    key = cursor.key()
                    prefix = next((p for p in skip if key.startswith(p)), None)
                    if prefix is None:
                        merged[key] = cursor.value()
                        more = cursor.next()
                    else:
                        after = _after_prefix(prefix)
                        more = after is not None and cursor.set_range(after)
        merged.pop(_APPLIED_KEY, None)
        for overlay in (frozen, active):
            if overlay:
                merged.update(overlay)
        return iter(sorted(
            (k, v) for k, v in merged.items()
            if v is not None and not (skip and k.startswith(skip))
        ))

    # -- the write-ahead log -------------------------------------------------------------

    def _open_wal(self, wal_bytes: int) -> None:
        if wal_bytes < 4096:
            raise ValueError(f"wal_bytes must be at least 4096, got {wal_bytes}")
        created = not all(os.path.exists(os.path.join(self.path, f"wal-{i}")) for i in (0, 1))
        self._wal = [WalFile(os.path.join(self.path, f"wal-{i}"), wal_bytes, self._failpoints)
                     for i in (0, 1)]
        with self._open().begin() as txn:
            raw = txn.get(_APPLIED_KEY)
        applied = -1 if raw is None else int.from_bytes(raw, "big", signed=True)
        # At most two generations can be ahead of LMDB: a third starts only after the
        # first was applied. Replay them into LMDB, then start a fresh generation.
        replay: Records = []
        last = applied
        for generation in (applied + 1, applied + 2):
            payloads = self._wal[generation % 2].scan(generation)
            if not payloads:
                break
            for payload in payloads:
                replay.extend(_records_decoder.decode(payload))
            last = generation
        if last != applied:
            self._commit([*replay, (_APPLIED_KEY, last.to_bytes(8, "big", signed=True))])
        # Only now may the files be rewritten: what they held is in LMDB.
        for file in self._wal:
            file.preallocate()
        if created:
            sync_directory(self.path)
        self._generation = last + 1

    def _switch_generation(self, wait: bool) -> None:
        """Start the next generation in the other file; apply the current one to LMDB
        in the background (after the previous application finished)."""
        self._join_applier()
        if not self._active and not wait:
            return
        frozen, generation = self._active, self._generation
        self._frozen, self._active = frozen, {}
        self._generation += 1
        self._seq = 0
        self._offset = 0
        self._applier = threading.Thread(
            target=self._apply_generation, args=(frozen, generation),
            name=f"wal-apply-{generation}", daemon=True,
        )
        self._applier.start()
        if wait:
            self._join_applier()

    def _apply_generation(self, records: dict[bytes, bytes | None], generation: int) -> None:
        if self._failpoints is not None:
            self._failpoints.applying()
        try:
            self._commit([*records.items(), (_APPLIED_KEY, generation.to_bytes(8, "big"))])
        except BaseException as e:  # reported by the next write
            self._apply_error = e
            return
        self._frozen = None

    def _join_applier(self) -> None:
        if self._applier is not None:
            self._applier.join()
            self._applier = None
        if self._apply_error is not None:
            raise self._apply_error

    # -- LMDB ---------------------------------------------------------------------------

    def _commit(self, records: Records) -> None:
        """One LMDB transaction (fsynced if the store is durable)."""
        env = self._open()
        while True:
            try:
                with env.begin(write=True) as txn:
                    if _all_puts(records):
                        # One C loop (later records still win: puts overwrite).
                        txn.cursor().putmulti(records)
                        return
                    for key, value in records:
                        if value is None:
                            txn.delete(key)
                        else:
                            txn.put(key, value)
                return
            except lmdb.MapFullError:
                # The aborted txn left the store untouched; grow and redo the whole batch.
                env.set_mapsize(2 * int(env.info()["map_size"]))
            except lmdb.MapResizedError:
                # Another opener grew the file: adopt its size and retry.
                env.set_mapsize(0)

    def close(self) -> None:
        """Apply the log to LMDB (so the files hold nothing needed) and close; idempotent."""
        if self._env is None:
            return
        try:
            if self._wal:
                if self._apply_error is None:
                    self._switch_generation(wait=bool(self._active))
                    self._join_applier()
                for file in self._wal:
                    file.close()
        finally:
            self._env.close()
            self._env = None

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _open(self) -> lmdb.Environment:
        if self._env is None:
            raise ValueError(f"store {self.path!r} is closed")
        return self._env

    def _check_key(self, key: bytes) -> None:
        if not key:
            raise ValueError("empty keys cannot be stored")
        if len(key) > self._max_key_size:
            raise ValueError(
                f"key of {len(key)} bytes exceeds the store's limit of {self._max_key_size}"
            )
