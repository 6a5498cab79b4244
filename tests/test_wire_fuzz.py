"""Wire fuzzing with hypothesis: frame and bundle decoders, the message decoder with a
PBFT replica behind it, and the per-replica HTTP API. Whatever the bytes, the only
outcomes are a value or the documented error; nothing escapes and nothing crashes.

Derandomized (a fixed example database per test), so runs are deterministic.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import Any

import msgspec
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phalanx.api.http import make_app
from phalanx.byzantine.generate import MessageGenerator, TrafficPool
from phalanx.core.address import Address
from phalanx.core.messages import Request, decode_batch, encode
from phalanx.core.quorum import Quorums
from phalanx.protocols.pbft.config import PbftConfig
from phalanx.protocols.pbft.messages import ALL_MESSAGES
from phalanx.protocols.pbft.replica import PbftReplica
from phalanx.protocols.registry import protocol
from phalanx.runtime.framing import (
    TO_ACCEPTOR,
    BadBundle,
    FrameDecoder,
    FrameEncoder,
    FrameError,
    split_bundle,
)
from phalanx.runtime.metrics import Metrics
from phalanx.runtime.node import ReplicaDriver
from phalanx.sim.crypto import SymbolicOracle
from phalanx.statemachine.kv import KVStore

FUZZ = settings(
    max_examples=150, derandomize=True, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
KEY = bytes(range(32))


# -- frames and bundles -----------------------------------------------------------------


def _drain(decoder: FrameDecoder, chunks: list[bytes]) -> list[bytes]:
    frames = []
    try:
        for chunk in chunks:
            decoder.feed(chunk)
            while (frame := decoder.next_frame()) is not None:
                frames.append(bytes(frame))
        decoder.eof()
    except FrameError:
        pass  # the documented outcome: the connection is closed and counted
    return frames


@FUZZ
@given(st.lists(st.binary(max_size=64), max_size=12), st.booleans())
def test_frame_decoder_survives_any_byte_stream(chunks: list[bytes], keyed: bool) -> None:
    decoder = FrameDecoder(KEY if keyed else None, TO_ACCEPTOR, max_frame=1024)
    _drain(decoder, chunks)


@FUZZ
@given(
    st.lists(st.binary(max_size=40), min_size=1, max_size=6),
    st.integers(0, 10_000),
    st.integers(0, 255),
    st.integers(1, 9),
)
def test_tampered_authenticated_frames_are_rejected_or_intact(
    payloads: list[bytes], position: int, xor: int, chunk: int
) -> None:
    encoder = FrameEncoder(KEY, TO_ACCEPTOR)
    stream = bytearray(b"".join(encoder.encode(p) for p in payloads))
    index = position % len(stream)
    stream[index] ^= xor
    chunks = [bytes(stream[i : i + chunk]) for i in range(0, len(stream), chunk)]
    frames = _drain(FrameDecoder(KEY, TO_ACCEPTOR), chunks)
    # A MAC'd stream never yields a frame that was not sent: a flipped bit stops it.
    assert frames == payloads[: len(frames)]
    if xor:
        assert len(frames) < len(payloads)


@FUZZ
@given(st.binary(max_size=200))
def test_split_bundle_returns_messages_or_bad_bundle(payload: bytes) -> None:
    try:
        parts = split_bundle(memoryview(payload))
    except BadBundle:
        return
    assert sum(len(p) + 4 for p in parts) == len(payload)


# -- messages, and a replica behind the decoder -------------------------------------------


def _replica() -> tuple[PbftReplica, Any]:
    oracle = SymbolicOracle(random.Random(7), 4)
    client = oracle.new_client()
    config = PbftConfig(checkpoint_interval=2, window=4, view_change_timeout=0.5)
    return PbftReplica(1, Quorums.for_n(4), oracle.node_crypto(1), KVStore, config), client


_DECODER = protocol("pbft").decoder()


def _valid_messages(seed: int, count: int) -> list[bytes]:
    """Encodings of random, structurally valid messages of every PBFT type."""
    rng = random.Random(seed)
    gen = MessageGenerator(rng, TrafficPool(rng), n=4)
    return [encode(gen.random_message(rng.choice(ALL_MESSAGES))) for _ in range(count)]


@FUZZ
@given(st.binary(max_size=300))
def test_message_decoder_raises_only_decode_errors(data: bytes) -> None:
    for decode in (_DECODER.decode, decode_batch):
        with contextlib.suppress(msgspec.DecodeError, UnicodeDecodeError):
            decode(data)


@FUZZ
@given(st.integers(0, 1 << 30), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)),
                                         max_size=4))
def test_mutated_messages_never_crash_a_replica(seed: int, flips: list[tuple[int, int]]) -> None:
    """Valid encodings with flipped bytes, decoded and handed to a live replica as if
    from a peer and from a client: the replica returns effects, it never raises."""
    replica, _ = _replica()
    replica.start()
    for wire in _valid_messages(seed, 6):
        data = bytearray(wire)
        for position, xor in flips:
            data[position % len(data)] ^= xor
        try:
            msg = _DECODER.decode(bytes(data))
        except (msgspec.DecodeError, UnicodeDecodeError):
            continue  # invalid UTF-8 in a str field raises UnicodeDecodeError, not DecodeError
        assert isinstance(replica.on_message(Address(seed % 4), msg), list)
        assert isinstance(replica.on_client_message(b"c" * 32, msg), list)


# -- the HTTP API -------------------------------------------------------------------------


class _Wire:
    """The transport seen by the driver: records what it would send."""

    peer_count = 3
    me = Address(0)

    def __init__(self) -> None:
        self.on_replica_message: Any = None
        self.on_client_message: Any = None
        self.sent = 0

    def send(self, dest: int, data: bytes) -> None:
        self.sent += 1

    def broadcast(self, data: bytes) -> None:
        self.sent += 1

    def send_client(self, client: bytes, data: bytes) -> None:
        self.sent += 1


_PATH = st.sampled_from(["/status", "/metrics", "/log", "/log/", "/", "/tx", "/x" * 3])
_QUERY = st.dictionaries(
    st.sampled_from(["first", "last", "x", "first\x00"]),
    st.one_of(st.integers(-(1 << 70), 1 << 70).map(str), st.text(max_size=12)),
    max_size=3,
)
_REQUEST = st.tuples(st.sampled_from(["GET", "POST", "PUT", "DELETE"]), _PATH, _QUERY,
                     st.binary(max_size=100))


@settings(max_examples=40, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_REQUEST, min_size=1, max_size=8))
def test_http_api_answers_any_request_without_a_server_error(requests: list[Any]) -> None:
    replica, _ = _replica()
    driver = ReplicaDriver(replica, _Wire(), None, Metrics(1))  # type: ignore[arg-type]
    app = make_app(driver, Metrics(1), lambda: {"protocol": "pbft", "n": 4})

    async def main() -> None:
        async with TestClient(TestServer(app)) as client:
            for method, path, query, body in requests:
                response = await client.request(method, path, params=query, data=body)
                await response.read()
                assert response.status < 500, (method, path, query, response.status)

    asyncio.run(main())


def test_generator_covers_every_message_type_with_a_round_trip() -> None:
    """What the generator makes either decodes to the same bytes, or breaks the schema
    (a negative view or seq, a short digest: its boundary values) and is refused whole."""
    decoded = refused = 0
    for wire in _valid_messages(3, 200):
        try:
            msg = _DECODER.decode(wire)
        except msgspec.ValidationError:
            refused += 1
            continue
        assert encode(msg) == wire
        decoded += 1
    assert decoded > 100 and refused > 0
    assert isinstance(Request(b"c" * 32, 1, b"op"), Request)


def test_hello_with_invalid_utf8_is_a_counted_malformed_handshake() -> None:
    """Found by the wire fuzzer: msgspec raises UnicodeDecodeError (not DecodeError) for
    invalid UTF-8 in a str field, and Hello's ``role`` is one."""
    from test_transport import HOST, Cluster, closed_by_peer, run, still_healthy, until

    from phalanx.runtime.handshake import Hello

    hello = bytearray(msgspec.msgpack.encode(Hello(1, "client", None, b"k" * 32,
                                                   Address(0), b"n" * 32)))
    hello[hello.index(b"client")] = 0xFF

    async def main() -> None:
        async with Cluster() as c:
            reader, writer = await asyncio.open_connection(HOST, c.ports[0])
            writer.write(FrameEncoder().encode(bytes(hello)))
            assert await closed_by_peer(reader)
            writer.close()
            await until(lambda: c.metrics[0].get("dropped_hs_malformed") == 1)
            await still_healthy(c, 1)

    run(main())
