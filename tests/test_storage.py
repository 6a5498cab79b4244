"""The replica log: atomic durable batches, surviving SIGKILL at any instant.

Run as a script (``python test_storage.py DIR START``), this file is the writer child of
the crash test: it appends batch after batch and reports each one after ``write`` returns.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from phalanx.storage import Store

# -- the crash-test workload, shared by the writer child and the checking parent -----------

_KEYS_PER_WRITE = 8


def _value(i: int, j: int) -> bytes:
    # 1-8 KB values: one batch spans many pages, so a torn commit would be visible.
    size = ((i * 7 + j * 13) % 8 + 1) * 1000
    block = hashlib.sha256(b"%d/%d" % (i, j)).digest()
    return (block * (size // len(block) + 1))[:size]


def _batch(i: int) -> list[tuple[bytes, bytes | None]]:
    """Write ``i``: fresh keys, a delete of an older write's key, and an overwrite."""
    records: list[tuple[bytes, bytes | None]] = [
        (b"w%08d/%02d" % (i, j), _value(i, j)) for j in range(_KEYS_PER_WRITE)
    ]
    if i >= 3:
        records.append((b"w%08d/00" % (i - 3), None))
    records.append((b"head", b"%d" % i))
    return records


def _apply(state: dict[bytes, bytes], records: list[tuple[bytes, bytes | None]]) -> None:
    for key, value in records:
        if value is None:
            state.pop(key, None)
        else:
            state[key] = value


def _writer_main(path: str, start: int) -> None:
    # A tiny initial map so that the child also grows the map while it may be killed.
    # Small log files too: generations switch (and get applied) while it may be killed.
    store = Store(path, map_size=1 << 20, wal_bytes=128 << 10)
    i = start
    while True:
        store.write(_batch(i))
        print(i, flush=True)  # only after write() returned: this write is promised durable
        i += 1


# -- unit behaviour ------------------------------------------------------------------------


def test_store_creates_private_directory(tmp_path: Path) -> None:
    path = tmp_path / "log"
    with Store(str(path)):
        pass
    assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0


def test_write_then_get_and_items_in_key_order(tmp_path: Path) -> None:
    with Store(str(tmp_path / "log")) as store:
        store.write([(b"b", b"2"), (b"a", b"1"), (b"c", b"3")])
        assert store.get(b"a") == b"1"
        assert store.get(b"zz") is None
        items = list(store.items())
        assert items == [(b"a", b"1"), (b"b", b"2"), (b"c", b"3")]
        assert all(type(k) is bytes and type(v) is bytes for k, v in items)


def test_none_deletes_and_deleting_a_missing_key_is_fine(tmp_path: Path) -> None:
    with Store(str(tmp_path / "log")) as store:
        store.write([(b"a", b"1"), (b"b", b"2")])
        store.write([(b"a", None), (b"never-there", None)])
        assert list(store.items()) == [(b"b", b"2")]


def test_later_record_in_a_batch_wins(tmp_path: Path) -> None:
    with Store(str(tmp_path / "log")) as store:
        store.write([(b"k", b"1"), (b"k", None), (b"j", b"x"), (b"j", b"y")])
        assert list(store.items()) == [(b"j", b"y")]


def test_a_failing_batch_applies_nothing(tmp_path: Path) -> None:
    with Store(str(tmp_path / "log")) as store:
        store.write([(b"keep", b"1")])
        with pytest.raises(ValueError, match="empty"):
            store.write([(b"a", b"1"), (b"keep", None), (b"", b"bad")])
        with pytest.raises(ValueError, match="exceeds"):
            store.write([(b"a", b"1"), (b"x" * 10_000, b"bad")])
        assert list(store.items()) == [(b"keep", b"1")]


def test_items_is_a_snapshot_that_outlives_its_transaction(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "log"))
    store.write([(b"a", b"1"), (b"b", b"2")])
    items = store.items()
    store.write([(b"a", None), (b"c", b"3")])
    store.close()
    assert list(items) == [(b"a", b"1"), (b"b", b"2")]


def test_reopen_sees_every_completed_write(tmp_path: Path) -> None:
    path = str(tmp_path / "log")
    with Store(path) as store:
        store.write([(b"a", b"1")])
        store.write([(b"b", b"2"), (b"a", None)])
    with Store(path) as store:
        assert list(store.items()) == [(b"b", b"2")]


def test_closed_store_refuses_use_and_close_is_idempotent(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "log"))
    store.close()
    store.close()
    with pytest.raises(ValueError, match="closed"):
        store.get(b"a")


@pytest.mark.parametrize("durable", [False, True])
def test_map_grows_when_a_write_does_not_fit(tmp_path: Path, durable: bool) -> None:
    path = str(tmp_path / "log")
    big = os.urandom(3 << 20)
    # With 1 MiB log files the 6 MiB batch of a durable store goes straight to LMDB.
    with Store(path, map_size=64 << 10, durable=durable, wal_bytes=1 << 20) as store:
        before = store.map_size
        store.write([(b"small", b"x")])
        store.write([(b"big", big), (b"big2", big)])
        assert store.map_size > before
        assert store.get(b"big") == big
    # Reopening with the small configured size still maps the whole, larger file.
    with Store(path, map_size=64 << 10, durable=durable) as store:
        assert store.get(b"big2") == big
        assert store.get(b"small") == b"x"


# -- the write-ahead log of durable stores ------------------------------------------------


def _abandon(store: Store) -> None:
    """Drop a store the way a killed process would: no final application of the log."""
    store._join_applier()  # a thread of a killed process would just stop
    for file in store._wal:
        file.close()
    assert store._env is not None
    store._env.close()
    store._env = None


def test_logged_batches_survive_generation_switches_and_reopening(tmp_path: Path) -> None:
    path = str(tmp_path / "log")
    state: dict[bytes, bytes] = {}
    store = Store(path, wal_bytes=64 << 10)  # a new generation every few batches
    for i in range(120):
        batch = _batch(i)
        store.write(batch)
        _apply(state, batch)
        if i % 17 == 0:
            assert dict(store.items()) == state
            assert all(store.get(k) == v for k, v in list(state.items())[-20:])
    # Not closed: as if the process died; whatever LMDB lacks is replayed from the log.
    _abandon(store)
    with Store(path, wal_bytes=64 << 10) as reopened:
        assert dict(reopened.items()) == state
        reopened.write([(b"after", b"reopen")])
    with Store(path, wal_bytes=64 << 10) as again:
        assert again.get(b"after") == b"reopen"
        assert len(list(again.items())) == len(state) + 1


def test_a_torn_log_entry_is_dropped_whole(tmp_path: Path) -> None:
    path = str(tmp_path / "log")
    store = Store(path)
    store.write([(b"a", b"1")])
    store.write([(b"b", b"2")])
    generation, offset = store._generation, store._offset
    _abandon(store)
    wal = os.path.join(path, f"wal-{generation % 2}")
    with open(wal, "r+b") as f:  # the second entry's last payload byte never made it
        f.seek(offset - 1)
        last = f.read(1)
        f.seek(offset - 1)
        f.write(bytes([last[0] ^ 0xFF]))
    with Store(path) as reopened:
        assert list(reopened.items()) == [(b"a", b"1")]


def test_the_store_key_of_the_log_is_reserved(tmp_path: Path) -> None:
    with Store(str(tmp_path / "log")) as store:
        store.write([(b"a", b"1")])
        with pytest.raises(ValueError, match="reserved"):
            store.write([(b"\xffphalanx/wal-applied", b"x")])
        assert list(store.items()) == [(b"a", b"1")]


# -- crash safety --------------------------------------------------------------------------


def _run_writer_and_kill(path: str, start: int, rng: random.Random) -> int:
    """Start a writer at write ``start``, SIGKILL it mid-stream; return its last reported write."""
    child = subprocess.Popen(
        [sys.executable, __file__, path, str(start)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert child.stdout is not None and child.stderr is not None
    target = start + rng.randrange(5, 40)
    reported = start - 1
    try:
        while reported < target:
            line = child.stdout.readline()
            if not line.endswith(b"\n"):
                pytest.fail(f"writer died early: {child.stderr.read().decode()}")
            reported = int(line)
        # Land the kill at an arbitrary point inside a later write or commit.
        time.sleep(rng.uniform(0, 0.03))
        child.send_signal(signal.SIGKILL)
        child.wait()
        # Writes reported before the kill may still sit in the pipe.
        for line in child.stdout.read().splitlines(keepends=True):
            if line.endswith(b"\n"):
                reported = int(line)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    return reported


def test_sigkill_leaves_a_prefix_of_whole_writes(tmp_path: Path) -> None:
    path = str(tmp_path / "log")
    rng = random.Random(20240601)
    expected: dict[bytes, bytes] = {}
    last_applied = -1
    for _round in range(4):
        reported = _run_writer_and_kill(path, last_applied + 1, rng)
        with Store(path) as store:
            found = dict(store.items())
        # "head" names the last write that committed; the store must then equal exactly
        # the state after writes 0..head: no lost write, no torn one, nothing beyond.
        head = int(found[b"head"])
        assert head >= reported, "a write reported durable was lost"
        for i in range(last_applied + 1, head + 1):
            _apply(expected, _batch(i))
        assert found.keys() == expected.keys()
        assert found == expected
        last_applied = head


if __name__ == "__main__":
    _writer_main(sys.argv[1], int(sys.argv[2]))
