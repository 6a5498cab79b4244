"""Authenticated TCP links on loopback: replicas talk both ways, bad connections are dropped
and counted while healthy links keep working, links come back after a restart, clients
get replies."""

from __future__ import annotations

import asyncio
import functools
import os
import socket
from collections.abc import Callable, Coroutine
from typing import Any

import msgspec
import pytest

from phalanx.core.address import Address
from phalanx.core.effects import Broadcast, Completed, Send, SetTimer
from phalanx.core.messages import Reply, Request, encode, message_decoder
from phalanx.crypto import KeyPair, pairwise_key
from phalanx.protocols.pbft.messages import ALL_MESSAGES, Commit, Prepare
from phalanx.runtime import loop_factory
from phalanx.runtime.client import ClientMux, ClientRunner, ClientTransport, RequestFailed
from phalanx.runtime.framing import TO_ACCEPTOR, FrameEncoder
from phalanx.runtime.handshake import (
    PROTOCOL_VERSION as PV,
)
from phalanx.runtime.handshake import (
    Accept,
    Confirm,
    Hello,
    accept_tag,
    confirm_tag,
    hello_digest,
    session_key,
)
from phalanx.runtime.metrics import Metrics
from phalanx.runtime.transport import Transport

N = 3
HOST = "127.0.0.1"
LOOPS = {"uvloop": loop_factory(), "asyncio": asyncio.new_event_loop}


def run(main: Coroutine[Any, Any, None], loop: str = "uvloop") -> None:
    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        runner.run(asyncio.wait_for(main, 20))


def decoder() -> msgspec.msgpack.Decoder[Any]:
    return message_decoder(ALL_MESSAGES)


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind((HOST, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


async def until(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


class Cluster:
    """N replica transports on loopback; every received message lands in an inbox."""

    def __init__(self, n: int = N, **transport_kw: Any) -> None:
        self.keys = [KeyPair.generate() for _ in range(n)]
        self.public_keys = [k.public_key for k in self.keys]
        self.ports = free_ports(n)
        self.addrs = {i: (HOST, p) for i, p in enumerate(self.ports)}
        self.inbox: list[list[tuple[Any, Any]]] = [[] for _ in range(n)]
        self.metrics = [Metrics(i) for i in range(n)]
        self.transports: list[Transport | None] = [None] * n
        self.transport_kw = transport_kw

    def make(self, i: int) -> Transport:
        inbox = self.inbox[i]
        return Transport(
            i,
            self.keys[i],
            self.addrs,
            self.public_keys,
            decoder(),
            lambda src, msg: inbox.append((src.replica, msg)),
            lambda client, msg: inbox.append((client, msg)),
            self.metrics[i],
            **self.transport_kw,
        )

    async def start(self, i: int) -> Transport:
        t = self.transports[i] = self.make(i)
        await t.start(HOST, self.ports[i])
        return t

    def __getitem__(self, i: int) -> Transport:
        t = self.transports[i]
        assert t is not None
        return t

    async def __aenter__(self) -> Cluster:
        for i in range(len(self.keys)):
            await self.start(i)
        for t in self.transports:
            assert t is not None
            await t.wait_connected()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for t in self.transports:
            if t is not None:
                await t.close()


def prepare(seq: int) -> Prepare:
    return Prepare(instance=0, view=0, seq=seq, digest=b"d" * 32)


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_three_replicas_exchange_messages_both_ways(loop: str) -> None:
    async def main() -> None:
        async with Cluster() as c:
            for i in range(N):
                for j in range(N):
                    if i != j:
                        c[i].send(j, encode(prepare(10 * i + j)))
            c[0].broadcast(encode(Commit(0, 0, 99, b"c" * 32)))
            await until(lambda: sum(map(len, c.inbox)) == N * (N - 1) + N - 1)
            for j in range(N):
                got = {(src, msg.seq) for src, msg in c.inbox[j] if isinstance(msg, Prepare)}
                assert got == {(i, 10 * i + j) for i in range(N) if i != j}
            assert (0, Commit(0, 0, 99, b"c" * 32)) in c.inbox[1]
            assert (0, Commit(0, 0, 99, b"c" * 32)) in c.inbox[2]
            assert c.metrics[0].get("frames_out") >= N - 1
            assert c.metrics[0].get("dropped_bad_mac") == 0

    run(main(), loop)


def test_messages_sent_before_the_link_is_up_are_delivered_in_order() -> None:
    async def main() -> None:
        c = Cluster()
        await c.start(1)
        t0 = c.make(0)
        c.transports[0] = t0
        for seq in range(100):  # queued before start(): no link yet
            t0.send(1, encode(prepare(seq)))
        await t0.start(HOST, c.ports[0])
        await until(lambda: len(c.inbox[1]) == 100)
        assert [msg.seq for _, msg in c.inbox[1]] == list(range(100))
        await t0.close()
        await c[1].close()

    run(main())


def test_sends_in_one_loop_iteration_are_bundled_into_one_frame_and_one_write() -> None:
    async def main() -> None:
        async with Cluster() as c:
            m = c.metrics[0]
            writes, frames = m.get("writes_out"), m.get("frames_out")
            for seq in range(50):
                c[0].send(1, encode(prepare(seq)))
            await until(lambda: len(c.inbox[1]) == 50)
            assert [msg.seq for _, msg in c.inbox[1]] == list(range(50))  # in order
            assert m.get("frames_out") - frames == 1
            assert m.get("writes_out") - writes == 1

    run(main())


# --- hostile connections ---------------------------------------------------------------


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    length = int.from_bytes(await reader.readexactly(4), "big")
    return await reader.readexactly(length)


async def closed_by_peer(reader: asyncio.StreamReader) -> bool:
    try:
        while await reader.read(65536):
            pass
    except (ConnectionResetError, BrokenPipeError):
        pass
    return True


async def handshake_as_client(
    port: int, keypair: KeyPair, target: int, replica_pk: bytes
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """A hand-rolled client handshake: returns the stream and its session key."""
    reader, writer = await asyncio.open_connection(HOST, port)
    nonce_c = os.urandom(32)
    hello = msgspec.msgpack.encode(Hello(PV, "client", None, keypair.public_key,
                                         Address(target), nonce_c))
    writer.write(FrameEncoder().encode(hello))
    accept = msgspec.msgpack.decode(await read_frame(reader), type=Accept)
    k = pairwise_key(keypair, replica_pk)
    assert accept.tag == accept_tag(k, hello_digest(hello), accept.nonce)
    confirm = Confirm(confirm_tag(k, hello_digest(hello), accept.nonce))
    writer.write(FrameEncoder().encode(msgspec.msgpack.encode(confirm)))
    return reader, writer, session_key(k, nonce_c, accept.nonce)


async def still_healthy(c: Cluster, seq: int) -> None:
    c[1].send(0, encode(prepare(seq)))
    await until(lambda: (1, prepare(seq)) in c.inbox[0])


@pytest.mark.parametrize(
    "garbage",
    [b"\xff" * 64, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", (10).to_bytes(4, "big") + b"\x00" * 10],
)
def test_garbage_connection_is_dropped_and_counted(garbage: bytes) -> None:
    async def main() -> None:
        async with Cluster() as c:
            reader, writer = await asyncio.open_connection(HOST, c.ports[0])
            writer.write(garbage)
            assert await closed_by_peer(reader)
            writer.close()
            await until(lambda: c.metrics[0].get("dropped_hs_malformed") == 1)
            await still_healthy(c, 1)

    run(main())


@pytest.mark.parametrize(("claimed", "reason"), [
    (Address(7), "unknown_replica"),  # no such replica
    (Address(-1), "unknown_replica"),  # no replica id at all
    (Address(0), "unknown_process"),  # the acceptor itself
    (Address(1, "preparer", 0), "unknown_process"),  # a process replica 1 does not run
])
def test_hello_from_an_unknown_replica_or_process_is_dropped_and_counted(
    claimed: Address, reason: str
) -> None:
    async def main() -> None:
        async with Cluster() as c:
            reader, writer = await asyncio.open_connection(HOST, c.ports[0])
            hello = Hello(PV, "replica", claimed, b"", Address(0), os.urandom(32))
            writer.write(FrameEncoder().encode(msgspec.msgpack.encode(hello)))
            assert await closed_by_peer(reader)
            writer.close()
            await until(lambda: c.metrics[0].get(f"dropped_hs_{reason}") == 1)
            await still_healthy(c, 2)

    run(main())


def test_impostor_without_the_replica_key_fails_the_handshake() -> None:
    async def main() -> None:
        async with Cluster() as c:
            reader, writer = await asyncio.open_connection(HOST, c.ports[0])
            nonce_c = os.urandom(32)
            hello = msgspec.msgpack.encode(Hello(PV, "replica", Address(1), b"",
                                                 Address(0), nonce_c))
            writer.write(FrameEncoder().encode(hello))
            accept = msgspec.msgpack.decode(await read_frame(reader), type=Accept)
            # The impostor knows everything but replica 1's private key.
            k = pairwise_key(KeyPair.generate(), c.public_keys[0])
            confirm = Confirm(confirm_tag(k, hello_digest(hello), accept.nonce))
            writer.write(FrameEncoder().encode(msgspec.msgpack.encode(confirm)))
            assert await closed_by_peer(reader)
            writer.close()
            await until(lambda: c.metrics[0].get("dropped_hs_bad_mac") == 1)
            assert all(src != 1 or isinstance(m, Prepare) for src, m in c.inbox[0])
            await still_healthy(c, 3)

    run(main())


def test_replica_handshake_cannot_be_spliced_onto_a_client_claim() -> None:
    # A man in the middle relays replica 1's honest Confirm (made for replica 1's own
    # Hello) onto a connection where it claims "client with replica 1's key": the MACs
    # cover the Hello, so the claim fails.
    async def main() -> None:
        async with Cluster() as c:
            reader, writer = await asyncio.open_connection(HOST, c.ports[0])
            nonce_c = os.urandom(32)
            claim = msgspec.msgpack.encode(Hello(PV, "client", None, c.public_keys[1],
                                                 Address(0), nonce_c))
            writer.write(FrameEncoder().encode(claim))
            accept = msgspec.msgpack.decode(await read_frame(reader), type=Accept)
            honest = msgspec.msgpack.encode(Hello(PV, "replica", Address(1), b"",
                                                  Address(0), nonce_c))
            k = pairwise_key(c.keys[1], c.public_keys[0])
            relayed = Confirm(confirm_tag(k, hello_digest(honest), accept.nonce))
            writer.write(FrameEncoder().encode(msgspec.msgpack.encode(relayed)))
            assert await closed_by_peer(reader)
            writer.close()
            await until(lambda: c.metrics[0].get("dropped_hs_bad_mac") == 1)
            assert c.public_keys[1] not in c[0].connected_clients

    run(main())


def test_invalid_client_key_is_rejected_at_hello() -> None:
    async def main() -> None:
        async with Cluster() as c:
            reader, writer = await asyncio.open_connection(HOST, c.ports[0])
            hello = Hello(PV, "client", None, b"\x00" * 32, Address(0), os.urandom(32))
            writer.write(FrameEncoder().encode(msgspec.msgpack.encode(hello)))
            assert await closed_by_peer(reader)
            writer.close()
            await until(lambda: c.metrics[0].get("dropped_hs_bad_client_key") == 1)

    run(main())


def test_frame_macd_with_a_wrong_key_closes_only_that_link() -> None:
    async def main() -> None:
        async with Cluster() as c:
            client = KeyPair.generate()
            reader, writer, key = await handshake_as_client(c.ports[0], client, 0, c.public_keys[0])
            good = FrameEncoder(key, TO_ACCEPTOR)
            writer.write(good.encode_bundle([encode(prepare(5))]))
            await until(lambda: (client.public_key, prepare(5)) in c.inbox[0])
            writer.write(FrameEncoder(b"w" * 32, TO_ACCEPTOR).encode_bundle([encode(prepare(6))]))
            assert await closed_by_peer(reader)
            writer.close()
            await until(lambda: c.metrics[0].get("dropped_bad_mac") == 1)
            assert (client.public_key, prepare(6)) not in c.inbox[0]
            await still_healthy(c, 4)

    run(main())


def test_oversize_frame_on_an_open_link_is_dropped_and_counted() -> None:
    async def main() -> None:
        async with Cluster(max_frame=1 << 16) as c:
            client = KeyPair.generate()
            reader, writer, _ = await handshake_as_client(c.ports[0], client, 0, c.public_keys[0])
            writer.write((1 << 20).to_bytes(4, "big") + b"x" * 100)
            assert await closed_by_peer(reader)
            writer.close()
            await until(lambda: c.metrics[0].get("dropped_frame_too_large") == 1)
            await still_healthy(c, 5)

    run(main())


def test_truncated_frame_then_eof_is_counted() -> None:
    async def main() -> None:
        async with Cluster() as c:
            client = KeyPair.generate()
            _, writer, key = await handshake_as_client(c.ports[0], client, 0, c.public_keys[0])
            frame = FrameEncoder(key, TO_ACCEPTOR).encode_bundle([encode(prepare(1))])
            writer.write(frame[:-5])
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.close()
            await until(lambda: c.metrics[0].get("dropped_truncated_frame") == 1)

    run(main())


def test_undecodable_payload_is_dropped_but_the_link_survives() -> None:
    async def main() -> None:
        async with Cluster() as c:
            c[1].send(0, b"\xc1 not msgpack")
            c[1].send(0, msgspec.msgpack.encode({"a": 1}))  # valid msgpack, wrong type
            c[1].send(0, encode(prepare(7)))
            await until(lambda: (1, prepare(7)) in c.inbox[0])
            assert c.metrics[0].get("dropped_decode") == 2
            assert c.metrics[1].get("connections_closed") == 0

    run(main())


def test_malformed_bundle_is_dropped_but_the_link_survives() -> None:
    async def main() -> None:
        async with Cluster() as c:
            client = KeyPair.generate()
            _, writer, key = await handshake_as_client(c.ports[0], client, 0, c.public_keys[0])
            encoder = FrameEncoder(key, TO_ACCEPTOR)
            # Authentic frames whose inner lengths do not add up: a faulty sender.
            writer.write(encoder.encode(b"\x00\x00\x10\x00 too short"))
            writer.write(encoder.encode(encode(prepare(3)) + b"\x01"))
            writer.write(encoder.encode_bundle([encode(prepare(4)), encode(prepare(5))]))
            await until(lambda: (client.public_key, prepare(5)) in c.inbox[0])
            assert c.metrics[0].get("dropped_bad_bundle") == 2
            assert (client.public_key, prepare(4)) in c.inbox[0]
            assert not any(m == prepare(3) for _, m in c.inbox[0])
            writer.close()

    run(main())


def test_silent_connection_times_out_in_handshake() -> None:
    async def main() -> None:
        async with Cluster(handshake_timeout=0.2) as c:
            reader, writer = await asyncio.open_connection(HOST, c.ports[0])
            assert await closed_by_peer(reader)
            writer.close()
            await until(lambda: c.metrics[0].get("dropped_hs_timeout") == 1)
            await still_healthy(c, 6)

    run(main())


def test_unauthenticated_connections_beyond_the_cap_are_refused() -> None:
    async def main() -> None:
        async with Cluster(max_pending_handshakes=2) as c:
            await until(lambda: c[0].pending_handshakes == 0)
            silent = [await asyncio.open_connection(HOST, c.ports[0]) for _ in range(3)]
            await until(lambda: c.metrics[0].get("dropped_hs_overload") == 1)
            for _, writer in silent:
                writer.close()
            await until(lambda: c[0].pending_handshakes == 0)
            await still_healthy(c, 8)

    run(main())


def test_send_queue_to_an_unreachable_peer_is_bounded() -> None:
    async def main() -> None:
        c = Cluster(max_frame=1024, send_queue_limit=10_000)
        t0 = await c.start(0)  # replicas 1 and 2 never come up
        for seq in range(1000):
            t0.send(1, encode(prepare(seq)))
        assert t0.dialers[Address(1)].queue.nbytes <= 10_000
        assert c.metrics[0].get("dropped_send_queue_full") > 0
        t0.send(1, b"x" * 2000)
        t0.send(9, b"x")
        assert c.metrics[0].get("dropped_oversize_send") == 1
        assert c.metrics[0].get("dropped_unknown_dest") == 1
        await t0.close()

    run(main())


# --- restart and clients ---------------------------------------------------------------


def test_links_come_back_after_a_peer_restarts() -> None:
    async def main() -> None:
        async with Cluster() as c:
            await c[1].close()
            await until(lambda: Address(1) not in c[0].connected_replicas)
            c[0].send(1, encode(prepare(100)))  # queued while 1 is down
            restarted = await c.start(1)
            await restarted.wait_connected()
            await c[0].wait_connected()
            await until(lambda: (0, prepare(100)) in c.inbox[1])
            restarted.send(2, encode(prepare(101)))
            c[2].send(1, encode(prepare(102)))
            await until(lambda: (1, prepare(101)) in c.inbox[2])
            await until(lambda: (2, prepare(102)) in c.inbox[1])

    run(main())


def test_client_connects_and_gets_a_reply_via_send_client() -> None:
    async def main() -> None:
        async with Cluster() as c:
            for i in range(N):
                def echo(client: bytes, msg: Any, i: int = i) -> None:
                    c[i].send_client(client, encode(Reply(client, 0, msg.timestamp, i, msg.op)))

                c[i].on_client_message = echo
            replies: list[tuple[int, Any]] = []
            kp = KeyPair.generate()
            client = ClientTransport(
                kp, c.addrs, c.public_keys, decoder(), lambda r, m: replies.append((r, m))
            )
            await client.start()
            await client.wait_connected()
            await until(lambda: all(kp.public_key in c[i].connected_clients for i in range(N)))
            client.broadcast(encode(Request(kp.public_key, 1, b"ping")))
            await until(lambda: len(replies) == N)
            expected = [(i, Reply(kp.public_key, 0, 1, i, b"ping")) for i in range(N)]
            assert sorted(replies) == expected
            await client.close()
            await until(lambda: kp.public_key not in c[0].connected_clients)
            c[0].send_client(kp.public_key, encode(Reply(kp.public_key, 0, 2, 0, b"late")))
            assert c.metrics[0].get("dropped_client_gone") == 1

    run(main())


class ToyClientCore:
    """Sends the op to replica 0; completes on its reply (an error reply if op == b'bad')."""

    def __init__(self, client_id: bytes) -> None:
        self.client_id = client_id
        self.timestamp = 0

    def submit(self, op: bytes) -> tuple[int, list[Any]]:
        self.timestamp += 1
        return self.timestamp, [Send(0, Request(self.client_id, self.timestamp, op))]

    def on_message(self, src: int, msg: Any) -> list[Any]:
        if msg.result == b"bad":
            return [Completed(msg.timestamp, b"", error="op refused: bad")]
        return [Completed(msg.timestamp, msg.result)]

    def on_timer(self, name: str) -> list[Any]:
        return []

    def abandon(self) -> list[Any]:
        return []


def test_client_runner_resolves_requests_and_raises_replica_errors() -> None:
    async def main() -> None:
        async with Cluster() as c:
            c[0].on_client_message = lambda client, msg: c[0].send_client(
                client, encode(Reply(msg.client, 0, msg.timestamp, 0, msg.op))
            )
            kp = KeyPair.generate()
            transport = ClientTransport(kp, c.addrs, c.public_keys, decoder(), None)
            runner = ClientRunner(ToyClientCore(kp.public_key), transport)
            await transport.start()
            await transport.wait_connected()
            assert await runner.request(b"one") == b"one"
            assert await runner.request(b"two") == b"two"
            with pytest.raises(RequestFailed, match="op refused: bad"):
                await runner.request(b"bad")
            await runner.close()

    run(main())


def test_transport_refuses_a_key_that_is_not_its_own() -> None:
    c = Cluster()
    with pytest.raises(ValueError, match="does not match"):
        Transport(0, c.keys[1], c.addrs, c.public_keys, decoder(), None, None, Metrics(0))



def test_metrics_render_in_prometheus_text_format() -> None:
    m = Metrics(2)
    m.inc("frames_in", 3)
    m.inc("msgs_sent:PrePrepare", 2)
    m.inc("msgs_sent:Commit")
    m.set("peers_connected", 3)
    text = m.render_prometheus()
    assert "# TYPE phalanx_frames_in counter\nphalanx_frames_in{replica=\"2\"} 3\n" in text
    assert text.count("# TYPE phalanx_msgs_sent counter") == 1
    assert 'phalanx_msgs_sent{replica="2",type="PrePrepare"} 2' in text
    assert "# TYPE phalanx_peers_connected gauge" in text
    assert m.snapshot() == {
        "frames_in": 3, "msgs_sent:PrePrepare": 2, "msgs_sent:Commit": 1, "peers_connected": 3
    }
    assert Metrics('a"b').render_prometheus() == ""
    weird = Metrics('a"b')
    weird.inc("x-y")
    assert 'phalanx_x_y{replica="a\\"b"} 1' in weird.render_prometheus()


class RetryingToyCore(ToyClientCore):
    """Sends to replica 0 and, on its retry timer, to everyone: answers come only then."""

    def submit(self, op: bytes) -> tuple[int, list[Any]]:
        ts, _ = super().submit(op)
        self.request = Request(self.client_id, ts, op, endpoint=self.endpoint)
        return ts, [Send(0, self.request), SetTimer("retry", 0.1)]

    def on_timer(self, name: str) -> list[Any]:
        return [Broadcast(self.request)]


def test_client_mux_shares_one_connection_and_fires_retry_timers() -> None:
    async def main() -> None:
        async with Cluster() as c:
            seen: list[int] = []

            def answer_on_retry(i: int, client: bytes, msg: Any) -> None:
                seen.append(i)
                if i == 1:  # only replica 1 answers, and only the broadcast reaches it
                    c[1].send_client(client, encode(Reply(msg.client, 0, msg.timestamp, 1, msg.op)))

            for i in range(N):
                c[i].on_client_message = functools.partial(answer_on_retry, i)
            transport = ClientTransport(KeyPair.generate(), c.addrs, c.public_keys, decoder(), None)
            mux = ClientMux(transport)
            cores = [RetryingToyCore(KeyPair.generate().public_key) for _ in range(3)]
            for core in cores:
                core.endpoint = mux.endpoint
            runners = [mux.add(core) for core in cores]
            await transport.start()
            await transport.wait_connected()
            results = await asyncio.gather(*(r.request(b"op%d" % i) for i, r in enumerate(runners)))
            assert results == [b"op0", b"op1", b"op2"]
            assert seen.count(0) >= 3 and seen.count(1) == 3  # first try, then the retry
            assert not mux.deadlines
            assert c[1].connected_clients == {mux.endpoint}  # one connection for all three
            await mux.close()

    run(main())


# --- bounds on client links (phalanx/runtime/client_links.py) ----------------------------


@pytest.fixture
def fast_sweeps(monkeypatch: pytest.MonkeyPatch) -> None:
    import phalanx.runtime.transport as transport_module

    monkeypatch.setattr(transport_module, "SWEEP_S", 0.05)


def test_a_client_link_holding_a_partial_frame_without_progress_is_dropped_and_counted(
        fast_sweeps: None) -> None:
    from phalanx.runtime.client_links import ClientLinkLimits

    async def main() -> None:
        limits = ClientLinkLimits(frame_stall_s=0.3)
        async with Cluster(client_limits=limits) as c:
            client = KeyPair.generate()
            reader, writer, _ = await handshake_as_client(c.ports[0], client, 0, c.public_keys[0])
            writer.write((1 << 20).to_bytes(4, "big") + b"x" * 1000)  # 1 MiB announced
            assert await closed_by_peer(reader)
            writer.close()
            await until(lambda: c.metrics[0].get("dropped_frame_timeout") == 1)
            assert c.metrics[0].get("dropped_truncated_frame") == 0
            await still_healthy(c, 9)

    run(main())


def test_a_client_trickling_a_frame_below_the_minimum_rate_is_dropped(fast_sweeps: None
                                                                      ) -> None:
    from phalanx.runtime.client_links import ClientLinkLimits

    async def main() -> None:
        limits = ClientLinkLimits(frame_stall_s=0.3, frame_min_rate=20_000)  # 0.8 s for 10 KB
        async with Cluster(client_limits=limits) as c:
            client = KeyPair.generate()
            reader, writer, _ = await handshake_as_client(c.ports[0], client, 0, c.public_keys[0])
            writer.write((10_000).to_bytes(4, "big"))
            for _ in range(100):  # 100 bytes a second, for up to 10 s
                if reader.at_eof() or c.metrics[0].get("dropped_frame_timeout"):
                    break
                writer.write(b"x" * 10)
                await asyncio.sleep(0.1)
            await until(lambda: c.metrics[0].get("dropped_frame_timeout") == 1)
            writer.close()

    run(main())


def test_a_large_client_frame_sent_steadily_within_the_deadline_is_delivered(
        fast_sweeps: None) -> None:
    from phalanx.runtime.client_links import ClientLinkLimits

    async def main() -> None:
        limits = ClientLinkLimits(frame_stall_s=0.3, frame_min_rate=100_000)
        async with Cluster(client_limits=limits) as c:
            client = KeyPair.generate()
            _, writer, key = await handshake_as_client(c.ports[0], client, 0, c.public_keys[0])
            big = Prepare(instance=0, view=0, seq=11, digest=b"d" * 32)
            frame = FrameEncoder(key, TO_ACCEPTOR).encode_bundle(
                [encode(big), b"\x00" * 150_000])  # ~150 KB: 1.8 s allowed at 100 KB/s
            for at in range(0, len(frame), 10_000):  # 200 KB/s, pausing below the stall
                writer.write(frame[at:at + 10_000])
                await asyncio.sleep(0.05)
            await until(lambda: (client.public_key, big) in c.inbox[0])
            assert c.metrics[0].get("dropped_frame_timeout") == 0
            writer.close()

    run(main())


def test_replica_links_may_hold_a_partial_frame_longer_than_client_links(fast_sweeps: None
                                                                         ) -> None:
    from phalanx.runtime.client_links import ClientLinkLimits

    async def main() -> None:
        async with Cluster(client_limits=ClientLinkLimits(frame_stall_s=0.1)) as c:
            link = c[1].dialers[Address(0)].link
            assert link is not None and link.transport is not None
            # Replica 1's link to 0 stalls in the middle of a frame (a slow WAN link).
            link.transport.write((1 << 20).to_bytes(4, "big") + b"x" * 1000)
            await asyncio.sleep(1.0)  # ten times the clients' stall limit
            assert c.metrics[0].get("dropped_frame_timeout") == 0
            assert c.metrics[0].get("connections_closed") == 0
            assert c.metrics[1].get("connections_closed") == 0

    run(main())


def test_client_links_beyond_the_cap_are_dropped_and_counted_but_a_reconnect_is_not(
) -> None:
    from phalanx.runtime.client_links import ClientLinkLimits

    async def main() -> None:
        async with Cluster(client_limits=ClientLinkLimits(max_clients=2)) as c:
            clients = [KeyPair.generate() for _ in range(3)]
            links = [await handshake_as_client(c.ports[0], k, 0, c.public_keys[0])
                     for k in clients[:2]]
            await until(lambda: len(c[0].connected_clients) == 2)
            reader, writer, _ = await handshake_as_client(
                c.ports[0], clients[2], 0, c.public_keys[0])
            assert await closed_by_peer(reader)
            writer.close()
            assert c.metrics[0].get("dropped_too_many_clients") == 1
            # A client already counted reconnects (its old link is half-open, say).
            again = await handshake_as_client(c.ports[0], clients[0], 0, c.public_keys[0])
            await until(lambda: c.metrics[0].get("connections_closed") >= 2)
            assert c[0].connected_clients == {clients[0].public_key, clients[1].public_key}
            assert c.metrics[0].get("dropped_too_many_clients") == 1
            for _, w, _ in [*links, again]:
                w.close()

    run(main())
