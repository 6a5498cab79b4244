"""One process per data directory: an exclusive ``flock`` on ``DIR/replica.lock``.

Two processes on one LMDB store and write-ahead log corrupt what a restart recovers: the
second replays the first's live log into LMDB and marks that generation applied, so once
the first crashes, its recovery skips records it had acknowledged. A replica therefore
takes this lock before it opens anything in its directory, and holds it until it exits.

The kernel releases a ``flock`` when the process holding it dies, even by SIGKILL, so a
lock file left behind never blocks a restart. The pid written into the file is only for
the message a second process prints; it is never trusted to tell whether a holder lives.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from types import TracebackType

LOCK_FILE = "replica.lock"


class DataDirInUse(OSError):
    """The data directory's lock is held by a live process (``pid``, None if unknown)."""

    def __init__(self, message: str, path: Path, pid: int | None) -> None:
        super().__init__(message)
        self.path = path
        self.pid = pid


def _read_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode().strip())
    except (OSError, ValueError):
        return None  # the holder has not written it yet


class DataDirLock:
    """The exclusive lock on data directory ``path`` (created, mode 0700, if missing).

    ``owner`` names the holder in the refusal (``"replica 3"`` gives "replica 3 is
    already running (pid N)"). Use as a context manager, or :meth:`acquire` and
    :meth:`release`.
    """

    def __init__(self, path: str | os.PathLike[str], owner: str = "a replica") -> None:
        self.path = Path(path)
        self.owner = owner
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock now or raise :class:`DataDirInUse`; never waits."""
        if self._fd is not None:
            return
        os.makedirs(self.path, mode=0o700, exist_ok=True)
        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            raise DataDirInUse(
                f"{self.owner} is already running (pid {pid if pid else 'unknown'}) "
                f"on {self.path}", self.path, pid,
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Give the lock up (closing the file releases it); idempotent."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self) -> DataDirLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def lock_holder(path: str | os.PathLike[str]) -> int | None:
    """The pid of the live process holding data directory ``path``'s lock (0 if it has
    not written its pid yet), or None if no process holds it. Opens nothing but the lock
    file, and creates nothing."""
    try:
        fd = os.open(Path(path) / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            # Shared and non-blocking: held only for this instant, and only if free.
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_pid(fd) or 0
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
