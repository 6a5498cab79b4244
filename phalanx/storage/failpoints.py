"""Failpoints of the store, for the crash-torture harness (``phalanx reliability crash``).

A real power cut cannot be made on this machine, so the harness makes a replica kill
itself *inside* its durability windows, after throwing away what a power cut would have
lost there. Off unless the environment variable :data:`FAILPOINTS_ENV` names a control
directory: a :class:`~phalanx.storage.lmdb_store.Store` then holds a :class:`Failpoints`,
otherwise None, and the only cost is one ``is None`` test per durable write.

Arming (at run time): the harness writes ``<dir>/<store>.arm.json``, where ``<store>`` is
the name of the store's directory (``replica-2``), and sends the process ``SIGUSR2``::

    {"point": "wal_sync", "cut": "torn", "delay_ms": 0}

- ``point = "wal_sync"``: at the next write-ahead-log append, after the entry's
  ``pwrite`` returned and before its ``fdatasync``: the entry is in the page cache only,
  and nothing that depends on it has been sent.
- ``point = "wal_apply"``: while the background thread commits a log generation to LMDB:
  SIGKILL ``0..delay_ms`` ms after the commit starts (a timer thread).
- ``cut`` is what the page cache loses before the SIGKILL: ``"none"`` (a process crash:
  the page cache survives), ``"discard"`` (every log byte written since its file's last
  ``fdatasync`` is zeroed and the zeros synced, as if never written), ``"torn"`` (as
  discard, but a random prefix of those bytes is kept: a partly written entry).

Deliberate bugs (at start-up, from ``<dir>/<store>.options.json``), for the harness's
self-test that it detects what it claims to: ``"nosync": true`` skips every log
``fdatasync`` (a disk that acknowledges writes it has not made durable; a later ``cut``
then loses all of them), ``"drop_prefix": "Lt", "drop_every": 10`` silently drops every
tenth record whose key starts with ``Lt`` (a store that loses records). ``"wal_bytes"``
shrinks the log files, so that generations switch and are applied far more often.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
from pathlib import Path
from typing import Any

FAILPOINTS_ENV = "PHALANX_FAILPOINTS"
POINTS = ("wal_sync", "wal_apply")
CUTS = ("none", "discard", "torn")
ARM_SIGNAL = signal.SIGUSR2


def arm_path(control_dir: str | os.PathLike[str], store_name: str) -> Path:
    return Path(control_dir) / f"{store_name}.arm.json"


def options_path(control_dir: str | os.PathLike[str], store_name: str) -> Path:
    return Path(control_dir) / f"{store_name}.options.json"


def write_arm(control_dir: str | os.PathLike[str], store_name: str, point: str,
              cut: str = "none", delay_ms: float = 0.0) -> None:
    """Write the arming file the store reads on :data:`ARM_SIGNAL` (atomically)."""
    if point not in POINTS or cut not in CUTS:
        raise ValueError(f"point must be one of {POINTS}, cut one of {CUTS}")
    path = arm_path(control_dir, store_name)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"point": point, "cut": cut, "delay_ms": delay_ms}))
    os.replace(tmp, path)


class Failpoints:
    """The failpoints of one store (see the module docstring)."""

    def __init__(self, control_dir: str, store_name: str, options: dict[str, Any]) -> None:
        self.control_dir = control_dir
        self.store_name = store_name
        self.nosync = bool(options.get("nosync", False))
        self.wal_bytes = int(options.get("wal_bytes", 0))
        self.drop_prefix = str(options.get("drop_prefix", "")).encode()
        self.drop_every = int(options.get("drop_every", 0))
        self._records_seen = 0
        self.armed: dict[str, Any] | None = None
        # fd -> (start, end) of log bytes written but not fdatasynced yet.
        self._unsynced: dict[int, tuple[int, int]] = {}
        self._lock = threading.Lock()
        self._rng = random.Random()

    # -- arming -------------------------------------------------------------------------

    def install(self) -> None:
        """Arm on :data:`ARM_SIGNAL` (main thread only: Python's rule for handlers)."""
        signal.signal(ARM_SIGNAL, lambda signum, frame: self.arm_from_file())

    def arm_from_file(self) -> None:
        try:
            spec = json.loads(arm_path(self.control_dir, self.store_name).read_text())
        except (OSError, ValueError):
            return  # nothing (valid) to arm with: stay as we are
        if spec.get("point") in POINTS and spec.get("cut", "none") in CUTS:
            self.armed = spec

    # -- the seams ----------------------------------------------------------------------

    def sync(self, fd: int, offset: int, size: int) -> None:
        """Stands in for the log's ``fdatasync(fd)`` of the entry at ``offset``."""
        with self._lock:
            start, end = self._unsynced.get(fd, (offset, offset + size))
            self._unsynced[fd] = (min(start, offset), max(end, offset + size))
        armed = self.armed
        if armed is not None and armed["point"] == "wal_sync":
            self.power_cut(armed.get("cut", "none"))
        if self.nosync:
            return
        os.fdatasync(fd)
        with self._lock:
            self._unsynced.pop(fd, None)

    def applying(self) -> None:
        """A log generation is about to be committed to LMDB (background thread)."""
        armed = self.armed
        if armed is not None and armed["point"] == "wal_apply":
            delay = self._rng.uniform(0.0, float(armed.get("delay_ms", 0.0))) / 1000
            timer = threading.Timer(delay, self.power_cut, args=(armed.get("cut", "none"),))
            timer.daemon = True
            timer.start()

    def filter(self, records: list[tuple[bytes, bytes | None]]
               ) -> list[tuple[bytes, bytes | None]]:
        """The deliberate record-losing bug (identity unless ``drop_every`` is set)."""
        if not self.drop_every or not self.drop_prefix:
            return records
        kept = []
        for key, value in records:
            if key.startswith(self.drop_prefix):
                self._records_seen += 1
                if self._records_seen % self.drop_every == 0:
                    continue
            kept.append((key, value))
        return kept

    # -- the power cut ------------------------------------------------------------------

    def power_cut(self, cut: str) -> None:
        """Lose what a power cut would (per ``cut``), then SIGKILL this process."""
        # Under the lock to the end: the writer thread cannot finish its fdatasync's
        # bookkeeping and acknowledge an entry that is being zeroed.
        with self._lock:
            if cut != "none":
                for fd, (start, end) in self._unsynced.items():
                    keep = self._rng.randrange(0, end - start) if cut == "torn" else 0
                    try:
                        os.pwrite(fd, bytes(end - start - keep), start + keep)
                        os.fdatasync(fd)
                    except OSError:
                        pass  # the file was closed meanwhile: nothing of it is left to lose
            os.kill(os.getpid(), signal.SIGKILL)


def from_env(store_path: str) -> Failpoints | None:
    """The store's failpoints if :data:`FAILPOINTS_ENV` is set, else None."""
    control_dir = os.environ.get(FAILPOINTS_ENV)
    if not control_dir:
        return None
    name = os.path.basename(os.path.normpath(store_path))
    try:
        options = json.loads(options_path(control_dir, name).read_text())
    except FileNotFoundError:
        options = {}
    except (OSError, ValueError) as exc:
        raise ValueError(f"{FAILPOINTS_ENV}: bad options for {name}: {exc}") from None
    failpoints = Failpoints(control_dir, name, options)
    if threading.current_thread() is threading.main_thread():
        failpoints.install()
    return failpoints
