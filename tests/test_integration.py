"""Whole-system tests: real replica processes, real TCP on loopback, the real CLI.

Every cluster is torn down by a fixture finalizer (and, on Linux, by the replicas' parent
death signal), so a failing or timed-out test leaves no process behind. Timeouts are
generous (the machine is shared and has two cores) but every wait is bounded.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from phalanx.cluster import LocalCluster, free_port_block, replica_json, wait_converged
from phalanx.config import ClusterConfig, load
from phalanx.core.address import Address
from phalanx.crypto.keys import KeyPair, pairwise_key
from phalanx.runtime import run
from phalanx.runtime.client import ClientRunner
from phalanx.runtime.cluster_client import open_client
from phalanx.runtime.framing import TO_ACCEPTOR, FrameEncoder
from phalanx.runtime.handshake import (
    NONCE_SIZE,
    PROTOCOL_VERSION,
    Accept,
    Confirm,
    Hello,
    confirm_tag,
    hello_digest,
    session_key,
)
from phalanx.statemachine.kv import decode_result, encode_get, encode_put

pytestmark = pytest.mark.integration

REQUEST_TIMEOUT = 30.0


# -- helpers -------------------------------------------------------------------------------


def phalanx_command() -> list[str]:
    """The installed ``phalanx`` script beside this interpreter (what users run)."""
    script = Path(sys.executable).with_name("phalanx")
    return [str(script)] if script.exists() else [sys.executable, "-m", "phalanx.cli"]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """A running 4-replica PBFT cluster, closed whatever the test does."""
    local = LocalCluster(tmp_path / "cluster", 4)
    try:
        local.start(timeout=60.0)
        yield local
    finally:
        local.close()


async def open_clients(config: ClusterConfig, count: int) -> list[ClientRunner]:
    return list(await asyncio.gather(*(open_client(config) for _ in range(count))))


async def close_clients(clients: list[ClientRunner]) -> None:
    await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


async def put(client: ClientRunner, key: bytes, value: bytes) -> None:
    result = decode_result(
        await asyncio.wait_for(client.request(encode_put(key, value)), REQUEST_TIMEOUT)
    )
    assert result.value is None, result  # Ok(None)


async def get(client: ClientRunner, key: bytes) -> bytes | None:
    result = decode_result(await asyncio.wait_for(client.request(encode_get(key)), REQUEST_TIMEOUT))
    value: bytes | None = result.value  # type: ignore[union-attr]
    return value


async def eventually(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


def node_pids(config_path: Path) -> set[int]:
    """Running ``phalanx node`` processes of the cluster at ``config_path`` (from /proc, so
    it also finds processes this test did not start itself)."""
    pids = set()
    needle = str(config_path).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"node" in argv and needle in argv:
            pids.add(int(entry.name))
    return pids


def all_status(config: ClusterConfig, ids: range | list[int]) -> dict[int, dict[str, Any]]:
    return {i: replica_json(config, i, "/status") for i in ids}


# -- 1. phalanx up ---------------------------------------------------------------------


@pytest.mark.timeout(150)
def test_up_command_commits_1000_requests_converges_and_stops_on_sigint(tmp_path: Path) -> None:
    base = free_port_block(8)
    directory = tmp_path / "up"
    config_path = directory / "cluster.toml"
    out_path = tmp_path / "up.out"
    with open(out_path, "wb") as out:
        up = subprocess.Popen(
            [*phalanx_command(), "up", "--n", "4", "--dir", str(directory), "--app", "kv",
             "--base-port", str(base), "--base-http-port", str(base + 4)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while b"Ctrl-C" not in out_path.read_bytes():
            assert up.poll() is None, out_path.read_text()
            assert time.monotonic() < deadline, "phalanx up did not get ready in 60 s"
            time.sleep(0.1)
        config = load(config_path)
        assert [r.port for r in config.replicas] == list(range(base, base + 4))
        assert all(s["executed_seq"] == 0 for s in all_status(config, range(4)).values())
        replicas = node_pids(config_path)
        assert len(replicas) == 4

        async def commit_1000() -> None:
            clients = await open_clients(config, 20)
            try:
                # 20 concurrent clients, 50 requests each (one outstanding per client).
                async def fifty(i: int, c: ClientRunner) -> None:
                    for j in range(50):
                        await put(c, f"c{i}-k{j}".encode(), f"value {i} {j}".encode())

                await asyncio.gather(*(fifty(i, c) for i, c in enumerate(clients)))
                assert await get(clients[0], b"c19-k49") == b"value 19 49"
            finally:
                await close_clients(clients)

        run(commit_1000())
        seq, root = wait_converged(config, timeout=30.0)
        assert seq >= 1 and len(root) == 64
        # Exactly once: no replica executed a request twice (retransmissions included),
        # and a replica that never had to catch up through a checkpoint executed them all.
        executed = [s["requests_executed"] for s in all_status(config, range(4)).values()]
        assert max(executed) == 1001, executed

        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=30) == 0, out_path.read_text()
        assert node_pids(config_path) == set()
        assert all(_is_zombie(pid) in (None, True) for pid in replicas)  # none still running
        text = out_path.read_text()
        assert f"phalanx client --config {config_path} put k v" in text
        assert "stopped" in text
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        for pid in node_pids(config_path):  # only if the test failed half-way
            os.kill(pid, signal.SIGKILL)


def _is_zombie(pid: int) -> bool | None:
    """Whether process ``pid`` is a zombie; None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


# -- 2. primary crash under load, view change, restart and catch-up --------------------------


@pytest.mark.timeout(180)
def test_primary_crash_under_load_view_change_then_restarted_primary_catches_up(
    cluster: LocalCluster,
) -> None:
    config = cluster.config
    done: list[float] = []  # completion times of every request
    failures: list[BaseException] = []

    async def closed_loop(client: ClientRunner, index: int, stop: asyncio.Event) -> None:
        n = 0
        try:
            while not stop.is_set():
                await put(client, f"key-{(index * 7 + n) % 200}".encode(), bytes(512))
                done.append(time.monotonic())
                n += 1
        except BaseException as exc:  # recorded, so the test fails with the cause
            failures.append(exc)

    async def load_through_the_crash() -> None:
        clients = await open_clients(config, 8)
        stop = asyncio.Event()
        tasks = [asyncio.create_task(closed_loop(c, i, stop)) for i, c in enumerate(clients)]
        try:
            await eventually(lambda: len(done) >= 300, 60, "300 commits before the crash")
            cluster.kill(0)
            killed_at = time.monotonic()
            assert not cluster.alive(0)

            async def survivors() -> list[dict[str, Any]]:
                statuses = await asyncio.to_thread(all_status, config, [1, 2, 3])
                return list(statuses.values())

            # The survivors elect a new primary: all three move to a view >= 1 ...
            deadline = time.monotonic() + 60
            while not all(s["view"] >= 1 for s in await survivors()):
                assert time.monotonic() < deadline, "no view change within 60 s"
                await asyncio.sleep(0.2)
            # ... and commits continue in the new view, without the old primary: until
            # replica 0 is more than a window (256 seqs) behind, so that it can only catch
            # up through a checkpoint's state.
            in_new_view = len(done)
            target = max(s["executed_seq"] for s in await survivors()) + 300
            while min(s["executed_seq"] for s in await survivors()) < target:
                assert time.monotonic() < deadline + 60, "commits stopped after the view change"
                await asyncio.sleep(0.2)
            assert len(done) >= in_new_view + 200
            assert sum(t > killed_at for t in done) >= 200
            assert not failures, failures
        finally:
            stop.set()
            await asyncio.wait(tasks, timeout=REQUEST_TIMEOUT + 5)
            for task in tasks:
                task.cancel()
            await close_clients(clients)
        assert not failures, failures

    run(load_through_the_crash())
    statuses = all_status(config, [1, 2, 3])
    assert all(s["view"] >= 1 for s in statuses.values()), statuses

    # Restart the old primary on its data directory while clients keep writing: it must
    # recover, learn the new view and catch up (through fetched slots or a checkpoint).
    cluster.restart(0)

    async def write(key: bytes, count: int) -> None:
        clients = await open_clients(config, 2)
        try:
            for n in range(count):
                await put(clients[n % 2], key, str(n).encode())
            assert await get(clients[0], key) == str(count - 1).encode()
        finally:
            await close_clients(clients)

    run(write(b"during-catch-up", 20))
    seq, root = cluster.wait_converged(timeout=60.0)
    statuses = all_status(config, range(4))
    assert all(s["executed_seq"] == seq and s["state_root"] == root
               for s in statuses.values()), statuses

    # The executed logs agree: every seq is remembered by at least two replicas (a replica
    # that caught up through a checkpoint has no digests for the seqs it skipped), and
    # every replica that remembers a seq has the same digest for it.
    logs = {i: _executed_log(cluster, i, seq) for i in range(4)}
    for s in range(1, seq + 1):
        digests = [log[s] for log in logs.values() if s in log]
        assert len(digests) >= 2, f"only {len(digests)} replicas remember seq {s}"
        assert len(set(digests)) == 1, f"executed logs differ at seq {s}: {digests}"

    # Replica 0 is a full member again: it executes new requests itself, and it does not
    # wander off into a view change of its own once idle (a stale timer once did that).
    run(write(b"after-catch-up", 10))
    time.sleep(2.5 * config.options["view_change_timeout_ms"] / 1000)  # idle past the timer
    seq_after, _ = cluster.wait_converged(timeout=60.0)
    assert seq_after > seq
    fresh = _executed_log(cluster, 0, seq_after, first=seq + 1)
    assert fresh, "replica 0 executed nothing after catching up"
    reference = _executed_log(cluster, 1, seq_after, first=seq + 1)
    assert all(reference[s] == d for s, d in fresh.items())
    views = {i: s["view"] for i, s in all_status(config, range(4)).items()}
    assert len(set(views.values())) == 1, f"replicas in different views: {views}"


def _executed_log(cluster: LocalCluster, i: int, last: int, first: int = 1) -> dict[int, str]:
    """Replica ``i``'s remembered digests of seqs ``first..last`` (from ``GET /log``)."""
    digests: dict[int, str] = {}
    for start in range(first, last + 1, 5000):
        stop = min(last, start + 4999)
        body = cluster.get_json(i, f"/log?first={start}&last={stop}")
        digests.update({int(s): d for s, d in body.items()})
    return digests


# -- 3. phalanx client -------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_client_cli_put_then_get_and_missing_key(cluster: LocalCluster) -> None:
    def client(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*phalanx_command(), "client", "--config", str(cluster.config_path),
             "--timeout", "30", *args],
            capture_output=True, text=True, timeout=60,
        )

    stored = client("put", "greeting", "hello world")
    assert (stored.returncode, stored.stdout.strip()) == (0, "ok"), stored.stderr
    read = client("get", "greeting")
    assert (read.returncode, read.stdout.strip()) == (0, "hello world"), read.stderr
    missing = client("get", "no-such-key")
    assert (missing.returncode, missing.stdout.strip()) == (1, "(not found)"), missing.stderr


# -- 4. bad input against a live replica -----------------------------------------------


def _connect(cluster: LocalCluster, i: int) -> socket.socket:
    info = cluster.config.replica(i)
    return socket.create_connection((info.host, info.port), timeout=10)


def _closed_by_peer(sock: socket.socket, timeout: float = 10.0) -> bool:
    """Whether the replica closes the connection (reads until EOF or reset)."""
    sock.settimeout(timeout)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


def _read_frame(sock: socket.socket) -> bytes:
    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            assert chunk, "connection closed during the handshake"
            data += chunk
        return data

    (length,) = struct.unpack(">I", exactly(4))
    return exactly(length)


def _client_session(cluster: LocalCluster, i: int) -> tuple[socket.socket, FrameEncoder]:
    """A raw socket to replica ``i`` that completed the handshake as a new client, and
    the encoder for its authenticated frames (so a test can then misbehave on it)."""
    keypair = KeyPair.generate()
    sock = _connect(cluster, i)
    nonce_c = os.urandom(NONCE_SIZE)
    hello = msgspec.msgpack.encode(
        Hello(PROTOCOL_VERSION, "client", None, keypair.public_key, Address(i), nonce_c)
    )
    sock.sendall(FrameEncoder().encode(hello))
    accept = msgspec.msgpack.decode(_read_frame(sock), type=Accept)
    k = pairwise_key(keypair, cluster.config.replica(i).public_key)
    confirm = Confirm(confirm_tag(k, hello_digest(hello), accept.nonce))
    encoder = FrameEncoder()
    sock.sendall(encoder.encode(msgspec.msgpack.encode(confirm)))
    encoder.set_key(session_key(k, nonce_c, accept.nonce), TO_ACCEPTOR)
    return sock, encoder


@pytest.mark.timeout(120)
def test_bad_input_is_dropped_and_counted_and_the_replica_keeps_serving(
    cluster: LocalCluster,
) -> None:
    target = 0  # the primary: the replica whose loss would hurt most
    before = cluster.status(target)["dropped"]

    # Before any handshake: garbage, a truncated frame, an oversized length header, and a
    # well-formed hello claiming to be a replica that does not exist.
    with _connect(cluster, target) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: phalanx\r\n\r\n")
        assert _closed_by_peer(sock)
    with _connect(cluster, target) as sock:
        sock.sendall(struct.pack(">I", 100) + b"only part of a frame")
        sock.shutdown(socket.SHUT_WR)
        assert _closed_by_peer(sock)
    with _connect(cluster, target) as sock:
        sock.sendall(struct.pack(">I", 0xFFFF_FFFF) + b"x" * 64)
        assert _closed_by_peer(sock)
    with _connect(cluster, target) as sock:
        hello = Hello(PROTOCOL_VERSION, "replica", Address(99), b"",
                      Address(target), os.urandom(NONCE_SIZE))
        sock.sendall(FrameEncoder().encode(msgspec.msgpack.encode(hello)))
        assert _closed_by_peer(sock)

    # After a valid client handshake: an undecodable message (dropped, link kept), then
    # an oversized length header (the stream cannot be trusted: link closed).
    sock, encoder = _client_session(cluster, target)
    with sock:
        sock.sendall(encoder.encode(b"\xc1 not a bundle"))
        sock.sendall(encoder.encode_bundle([b"\xc1 not msgpack"]))
        sock.sendall(struct.pack(">I", 0xFFFF_FFF0))
        assert _closed_by_peer(sock)
    # And a frame whose MAC is wrong (a tampered or injected frame).
    sock, encoder = _client_session(cluster, target)
    with sock:
        frame = bytearray(encoder.encode_bundle([msgspec.msgpack.encode([1, 2, 3])]))
        frame[-1] ^= 0xFF
        sock.sendall(bytes(frame))
        assert _closed_by_peer(sock)

    expected = {
        "hs_malformed": 2,  # the garbage and the oversized header before a handshake
        "hs_incomplete": 1,  # the truncated frame (the peer hung up mid-handshake)
        "hs_unknown_replica": 1,
        "bad_bundle": 1,
        "decode": 1,
        "frame_too_large": 1,
        "bad_mac": 1,
    }

    def grown() -> dict[str, int]:
        dropped = cluster.status(target)["dropped"]
        return {k: dropped.get(k, 0) - before.get(k, 0) for k in expected}

    deadline = time.monotonic() + 20
    while any(grown()[k] < n for k, n in expected.items()):
        assert time.monotonic() < deadline, f"dropped counters grew only by {grown()}"
        time.sleep(0.1)

    # The replica is still up, and it still takes part in ordering new requests.
    assert cluster.alive(target)
    status = cluster.status(target)
    assert status["core_exceptions"] == 0

    async def still_commits() -> None:
        clients = await open_clients(cluster.config, 2)
        try:
            await put(clients[0], b"after-garbage", b"fine")
            assert await get(clients[1], b"after-garbage") == b"fine"
        finally:
            await close_clients(clients)

    run(still_commits())
    seq, _ = cluster.wait_converged(timeout=30.0)
    assert seq >= status["executed_seq"] + 2
