"""A replica's durable log: an LMDB key-value store with atomic, synchronous batches.

A protocol core persists with ``Persist`` effects; the driver gathers a step's effects
into one :meth:`Store.write`, which commits in a single LMDB transaction and returns only
once the commit is on disk. LMDB's copy-on-write B+tree and double meta page make a
commit atomic: a process killed at any instant (even mid-commit) leaves a store that
reopens with exactly the transactions that had committed. This is what lets a replica
answer a message only after the state it promised is safe.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from types import TracebackType

import lmdb

DEFAULT_MAP_SIZE = 4 << 30


class Store:
    """Durable, ordered byte-string map in directory ``path`` (created with mode 0700).

    Not thread-safe: one driver owns it. ``map_size`` is the initial address-space
    reservation (not disk usage); it doubles as needed when a write does not fit.
    """

    def __init__(self, path: str, map_size: int = DEFAULT_MAP_SIZE, durable: bool = True) -> None:
        if map_size <= 0:
            raise ValueError(f"map_size must be positive, got {map_size}")
        # 0700: the log holds signed protocol messages and client requests.
        os.makedirs(path, mode=0o700, exist_ok=True)
        self.path = path
        self.durable = durable
        self._env: lmdb.Environment | None = lmdb.open(
            path,
            map_size=map_size,
            subdir=True,
            max_dbs=0,
            # durable: every commit is fsynced (data, then the meta page) and survives a
            # power loss. Otherwise a commit lands in the OS page cache: it survives the
            # process being killed at any point, not the machine losing power.
            sync=durable,
            metasync=durable,
            # A writable mmap lets stray pointers corrupt the file; keep it read-only.
            writemap=False,
            readahead=False,
        )
        # Free reader slots left behind by killed processes, so they cannot pin old pages.
        self._env.reader_check()
        self._max_key_size = self._env.max_key_size()

    @property
    def map_size(self) -> int:
        """Current size of the memory map, in bytes."""
        return int(self._open().info()["map_size"])

    def write(self, records: list[tuple[bytes, bytes | None]]) -> None:
        """Apply ``records`` in one atomic, durable transaction.

        A ``None`` value deletes the key (a missing key is not an error). Later records
        win over earlier ones for the same key. Either every record is applied or, if
        this raises, none is. Raises ValueError for an empty or oversize key.
        """
        env = self._open()
        while True:
            try:
                with env.begin(write=True) as txn:
                    for key, value in records:
                        # Checked inside the txn so that a bad record aborts the whole batch.
                        self._check_key(key)
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

    def get(self, key: bytes) -> bytes | None:
        """The value stored under ``key``, or None."""
        with self._open().begin() as txn:
            value = txn.get(key)
        return None if value is None else bytes(value)

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """Every record, in key order, as of one consistent snapshot.

        Materialized inside a short read transaction: a lazily consumed cursor would hold
        a reader slot (and pin old pages) for as long as the caller keeps the iterator.
        """
        with self._open().begin() as txn:
            # buffers=False (the default) copies each key and value out of the mmap.
            records = [(bytes(k), bytes(v)) for k, v in txn.cursor()]
        return iter(records)

    def close(self) -> None:
        """Close the environment; idempotent."""
        if self._env is not None:
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
