"""The store's failpoints (storage/failpoints.py): a power cut inside a durability window
loses exactly what was never acknowledged — and, as a control, a store that skips its
fdatasync loses acknowledged writes under the very same cut.

Run as a script (``python test_failpoints.py DIR``) this file is the writer child: it
writes batch after batch with failpoints enabled and prints each batch number once
``write`` returned (the batch is then promised durable).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from phalanx.storage import Store
from phalanx.storage import failpoints as fp

STORE_NAME = "replica-0"


def _batch(i: int) -> list[tuple[bytes, bytes | None]]:
    return [(b"w%08d" % i, b"%d" % i * 200), (b"head", b"%d" % i)]


def _writer_main(control: str, path: str) -> None:
    os.environ[fp.FAILPOINTS_ENV] = control
    store = Store(path)  # wal_bytes from the options file: generations switch often
    i = 0
    while True:
        store.write(_batch(i))
        print(i, flush=True)
        i += 1


def _cut_a_writer(tmp_path: Path, options: dict, point: str, cut: str) -> tuple[int, Path]:
    """Start the writer, let it write a while, arm ``point``/``cut``, wait for it to kill
    itself; returns the last batch it reported written and its store's path."""
    control, path = tmp_path / "control", tmp_path / STORE_NAME
    control.mkdir()
    fp.options_path(control, STORE_NAME).write_text(json.dumps(options))
    child = subprocess.Popen(
        [sys.executable, __file__, str(control), str(path)],
        stdout=subprocess.PIPE, text=True,
    )
    assert child.stdout is not None
    reported = -1
    try:
        while reported < 300:
            reported = int(child.stdout.readline())
        fp.write_arm(control, STORE_NAME, point, cut, delay_ms=5.0)
        child.send_signal(fp.ARM_SIGNAL)
        for line in child.stdout:  # until it dies
            reported = int(line)
        assert child.wait(30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    return reported, path


def _surviving(path: Path) -> int:
    """The last batch the reopened store holds (-1: none), checking there is no gap."""
    with Store(str(path)) as store:
        head = store.get(b"head")
        batches = sum(1 for key, _ in store.items() if key.startswith(b"w"))
    last = -1 if head is None else int(head)
    assert batches == last + 1, "a gap in what survived"
    return last


@pytest.mark.parametrize("cut", ["discard", "torn", "none"])
def test_a_power_cut_before_fdatasync_keeps_every_acknowledged_write(tmp_path: Path,
                                                                     cut: str) -> None:
    reported, path = _cut_a_writer(tmp_path, {"wal_bytes": 64 << 10}, "wal_sync", cut)
    survived = _surviving(path)
    # The batch being synced when the power went was never acknowledged: it may be lost
    # (discard, torn) or not (none: the page cache survives a process crash).
    assert survived >= reported
    assert survived == reported + (cut == "none")


def test_a_power_cut_while_a_generation_is_applied_keeps_every_acknowledged_write(
    tmp_path: Path,
) -> None:
    reported, path = _cut_a_writer(tmp_path, {"wal_bytes": 16 << 10}, "wal_apply", "discard")
    assert _surviving(path) >= reported


def test_a_store_that_skips_fdatasync_loses_acknowledged_writes_in_a_power_cut(
    tmp_path: Path,
) -> None:
    # The control for the two tests above (and the crash torture's "lose-acked" fault):
    # the same cut really throws away what was not synced.
    reported, path = _cut_a_writer(tmp_path, {"wal_bytes": 1 << 20, "nosync": True},
                                   "wal_sync", "discard")
    assert _surviving(path) < reported


def test_failpoints_are_off_without_the_environment_variable(tmp_path: Path,
                                                             monkeypatch) -> None:
    monkeypatch.delenv(fp.FAILPOINTS_ENV, raising=False)
    with Store(str(tmp_path / STORE_NAME)) as store:
        assert store._failpoints is None
        assert all(file.failpoints is None for file in store._wal)


def test_the_drop_fault_loses_every_nth_record_of_a_prefix(tmp_path: Path,
                                                           monkeypatch) -> None:
    control = tmp_path / "control"
    control.mkdir()
    fp.options_path(control, STORE_NAME).write_text(
        json.dumps({"drop_prefix": "Lt", "drop_every": 3}))
    monkeypatch.setenv(fp.FAILPOINTS_ENV, str(control))
    with Store(str(tmp_path / STORE_NAME)) as store:
        store.write([(b"Lt%d" % i, b"x") for i in range(9)] + [(b"Lb", b"kept")])
        assert sorted(k for k, _ in store.items()) == sorted(
            [b"Lt%d" % i for i in (0, 1, 3, 4, 6, 7)] + [b"Lb"])


def test_arming_with_a_bad_file_leaves_the_store_unarmed(tmp_path: Path) -> None:
    points = fp.Failpoints(str(tmp_path), STORE_NAME, {})
    fp.arm_path(tmp_path, STORE_NAME).write_text("{not json")
    points.arm_from_file()
    assert points.armed is None
    fp.arm_path(tmp_path, STORE_NAME).write_text(json.dumps({"point": "elsewhere"}))
    points.arm_from_file()
    assert points.armed is None
    with pytest.raises(ValueError):
        fp.write_arm(tmp_path, STORE_NAME, "wal_sync", "melted")


if __name__ == "__main__":
    time.sleep(0)  # (imports above are the test module's; the child needs only these)
    _writer_main(sys.argv[1], sys.argv[2])
