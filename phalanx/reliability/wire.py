"""Hostile peers on the replicas' TCP port: the attacks of the hostile-input harness.

Each attack is an ``async`` function that sends ``units`` of one kind of bad input to the
replicas (round-robin) and returns a :class:`Sent` tally; :data:`WIRE_ATTACKS` names them
with the ``dropped_<reason>`` counters a replica must raise for each unit (see
:mod:`phalanx.reliability.hostile`). Three kinds of sender:

- an *unknown sender*, before or during the handshake: garbage, oversized length headers,
  grammar-fuzzed ``Hello`` frames, a wrong ``Confirm`` (also claiming to be a replica), a
  replayed handshake, and slow-loris connections that trickle a ``Hello`` byte by byte;
- an *authenticated client* (a fresh key pair: clients are self-certifying, so anyone can
  be one) sending grammar-generated and mutated messages, malformed bundles, messages
  only replicas may send, requests with valid authenticators but garbage operations,
  requests claiming another client, replays of its own requests;
- an authenticated client that breaks its link: a wrong tag, a replayed frame, an
  oversized frame, a truncated frame, or a frame announced and never finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import struct
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import msgspec

from phalanx.config import ClusterConfig
from phalanx.core.address import Address
from phalanx.core.messages import Request, encode
from phalanx.crypto.ed25519 import Ed25519ClientCrypto
from phalanx.crypto.keys import KeyPair, pairwise_key
from phalanx.protocols.registry import protocol
from phalanx.reliability.grammar import Corpus, mutate
from phalanx.runtime.framing import HANDSHAKE_MAX_FRAME, TO_ACCEPTOR, FrameEncoder
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

CLOSE_WAIT_S = 3.0  # how long an attacker waits for the replica to hang up
BUNDLE_MAX = 16  # messages per authenticated garbage frame
SOURCE_ADDRESSES = 200


@dataclass
class Sent:
    """What an attack sent: units (what the replicas must count), frames, messages,
    connections, and bytes."""

    units: int = 0
    frames: int = 0
    messages: int = 0
    connections: int = 0
    bytes: int = 0

    def add(self, other: Sent) -> None:
        for name in ("units", "frames", "messages", "connections", "bytes"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class WireContext:
    """Where and with what the attacks run."""

    config: ClusterConfig
    rng: random.Random
    corpus: Corpus
    replica_only: tuple[type, ...]
    next_target: int = 0
    # The handshake of one honest client session, recorded for the replay attack.
    recorded: list[tuple[int, bytes, bytes]] = field(default_factory=list)

    @classmethod
    def make(cls, config: ClusterConfig, seed: int, corpus_size: int = 2000) -> WireContext:
        from phalanx.core.messages import CLIENT_MESSAGES

        rng = random.Random(seed)
        types = protocol(config.protocol).messages
        corpus = Corpus(types, rng, config.n, corpus_size)
        replica_only = tuple(t for t in types if t not in CLIENT_MESSAGES)
        return cls(config, rng, corpus, replica_only)

    def target(self) -> int:
        """Replicas in turn, so every one of them gets its share."""
        self.next_target = (self.next_target + 1) % self.config.n
        return self.next_target


# -- connections --------------------------------------------------------------------------


async def _connect(ctx: WireContext, replica: int
                   ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    info = ctx.config.replica(replica)
    # From many loopback addresses, as from many hosts (each has its own port range).
    local = f"127.0.0.{2 + ctx.rng.randrange(SOURCE_ADDRESSES)}" if info.host == "127.0.0.1" \
        else None
    return await asyncio.open_connection(info.host, info.port,
                                         local_addr=(local, 0) if local else None)


async def _closed_by_peer(reader: asyncio.StreamReader, timeout: float = CLOSE_WAIT_S) -> bool:
    """Read until the replica hangs up (True) or ``timeout`` passes (False)."""
    try:
        async with asyncio.timeout(timeout):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return False
    except OSError:
        return True
    return True


def _close(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        writer.close()


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    (length,) = struct.unpack(">I", await reader.readexactly(4))
    return await reader.readexactly(length)


def _hello(ctx: WireContext, replica: int, keypair: KeyPair, nonce: bytes) -> bytes:
    return msgspec.msgpack.encode(
        Hello(PROTOCOL_VERSION, "client", None, keypair.public_key, Address(replica), nonce))


class Session:
    """An authenticated client link (the attacker completed a valid handshake)."""

    def __init__(self, replica: int, keypair: KeyPair, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, encoder: FrameEncoder,
                 replica_keys: Sequence[bytes]) -> None:
        self.replica = replica
        self.keypair = keypair
        self.reader = reader
        self.writer = writer
        self.encoder = encoder
        self.replica_keys = replica_keys
        self.last_frame = b""
        self._crypto: Ed25519ClientCrypto | None = None

    @classmethod
    async def open(cls, ctx: WireContext, replica: int, keypair: KeyPair | None = None,
                   record: bool = False) -> Session:
        keypair = keypair or KeyPair.generate()
        reader, writer = await _connect(ctx, replica)
        nonce_c = os.urandom(NONCE_SIZE)
        hello = _hello(ctx, replica, keypair, nonce_c)
        plain = FrameEncoder()
        writer.write(plain.encode(hello))
        accept = msgspec.msgpack.decode(await _read_frame(reader), type=Accept)
        k = pairwise_key(keypair, ctx.config.replica(replica).public_key)
        confirm = msgspec.msgpack.encode(Confirm(confirm_tag(k, hello_digest(hello),
                                                             accept.nonce)))
        writer.write(plain.encode(confirm))
        if record:
            ctx.recorded.append((replica, plain.encode(hello), plain.encode(confirm)))
        encoder = FrameEncoder(session_key(k, nonce_c, accept.nonce), TO_ACCEPTOR)
        return cls(replica, keypair, reader, writer, encoder, ctx.config.public_keys)

    def send_bundle(self, messages: list[bytes]) -> int:
        frame = self.encoder.encode_bundle(messages)
        self.last_frame = frame
        self.writer.write(frame)
        return len(frame)

    def send_raw(self, data: bytes) -> None:
        self.writer.write(data)

    def request(self, op: bytes, timestamp: int, *, client: bytes | None = None) -> bytes:
        """An encoded Request with a valid authenticator from this session's key (or
        claiming ``client``'s identity, with this key's MACs)."""
        if self._crypto is None:
            self._crypto = Ed25519ClientCrypto(self.keypair, list(self.replica_keys))
        unsigned = Request(client or self.keypair.public_key, timestamp, op)
        auth = self._crypto.authenticate(unsigned.digest())
        return encode(Request(unsigned.client, timestamp, op, b"", auth))

    async def drain_and_close(self) -> None:
        """Hang up once the replica has read everything: end our side, then read its
        answers until it closes. (Closing a socket with unread answers sends a reset,
        and the replica would throw away whatever it had not read yet.)"""
        with contextlib.suppress(Exception):
            await self.writer.drain()
            self.writer.write_eof()
        await _closed_by_peer(self.reader, 10.0)
        _close(self.writer)


# -- unknown senders ----------------------------------------------------------------------


async def preauth_garbage(ctx: WireContext, units: int) -> Sent:
    """Random bytes instead of a handshake; sometimes a short, never-finished frame."""
    sent = Sent()
    for _ in range(units):
        reader, writer = await _connect(ctx, ctx.target())
        rng = ctx.rng
        if rng.random() < 0.5:  # a length within the handshake limit, then garbage
            payload = rng.randbytes(rng.randrange(1, 200))
            data = struct.pack(">I", len(payload)) + payload
        else:
            data = rng.randbytes(rng.randrange(4, 600))
        if rng.random() < 0.2:  # or a frame announced, cut short, and the line closed
            data = struct.pack(">I", 300) + rng.randbytes(rng.randrange(0, 299))
        writer.write(data)
        with contextlib.suppress(OSError):
            writer.write_eof()
        await _closed_by_peer(reader)
        _close(writer)
        sent.add(Sent(1, 1, 0, 1, len(data)))
    return sent


async def preauth_oversize(ctx: WireContext, units: int) -> Sent:
    """A length header above the handshake limit (up to 4 GiB) before any handshake."""
    sent = Sent()
    for _ in range(units):
        reader, writer = await _connect(ctx, ctx.target())
        length = ctx.rng.randrange(HANDSHAKE_MAX_FRAME + 1, 1 << 32)
        data = struct.pack(">I", length) + ctx.rng.randbytes(64)
        writer.write(data)
        await _closed_by_peer(reader)
        _close(writer)
        sent.add(Sent(1, 1, 0, 1, len(data)))
    return sent


def _bad_hello(ctx: WireContext, replica: int) -> bytes:
    """A Hello that must be refused: a wrong field, or grammar-generated garbage."""
    rng, n = ctx.rng, ctx.config.n
    nonce = os.urandom(NONCE_SIZE)
    good = Hello(PROTOCOL_VERSION, "client", None, KeyPair.generate().public_key,
                 Address(replica), nonce)
    choice = rng.randrange(7)
    if choice == 0:
        hello = msgspec.structs.replace(good, version=rng.choice(
            (0, PROTOCOL_VERSION - 1, PROTOCOL_VERSION + 1, 1 << 40)))
    elif choice == 1:
        sender = rng.choice((Address(n), Address(n + 7), Address(replica),
                             Address(replica, "witness"), Address(0, "replica", 9)))
        hello = msgspec.structs.replace(good, kind="replica", client=b"", sender=sender)
    elif choice == 2:
        hello = msgspec.structs.replace(
            good, target=Address((replica + 1 + rng.randrange(n)) % (n + 3)))
    elif choice == 3:
        hello = msgspec.structs.replace(good, client=rng.randbytes(rng.choice((0, 31, 33))))
    elif choice == 4:
        hello = msgspec.structs.replace(good, nonce=rng.randbytes(rng.choice((0, 16, 64))))
    else:
        data = msgspec.msgpack.encode(good)
        return mutate(data, rng) if choice == 5 else ctx.corpus.draw()
    if hello.target == Address(replica) and choice == 2:
        hello = msgspec.structs.replace(hello, target=Address(replica + n))
    return msgspec.msgpack.encode(hello)


async def hello_fuzz(ctx: WireContext, units: int) -> Sent:
    sent = Sent()
    for _ in range(units):
        replica = ctx.target()
        reader, writer = await _connect(ctx, replica)
        frame = FrameEncoder().encode(_bad_hello(ctx, replica))
        writer.write(frame)
        try:
            async with asyncio.timeout(CLOSE_WAIT_S):
                # Refused: the replica hangs up. Answered (the fuzzed Hello happened to be
                # valid): we hang up at once, and the replica counts the abandoned
                # handshake (hs_incomplete).
                await reader.read(1)
        except (TimeoutError, OSError):
            pass
        _close(writer)
        sent.add(Sent(1, 1, 0, 1, len(frame)))
    return sent


async def bad_confirm(ctx: WireContext, units: int) -> Sent:
    """A valid Hello (as a client, or claiming a replica's identity), a forged Confirm."""
    sent = Sent()
    for _ in range(units):
        replica = ctx.target()
        reader, writer = await _connect(ctx, replica)
        nonce = os.urandom(NONCE_SIZE)
        if ctx.rng.random() < 0.5:
            hello = _hello(ctx, replica, KeyPair.generate(), nonce)
        else:  # an impostor: another replica's id, without its key
            claimed = (replica + 1 + ctx.rng.randrange(ctx.config.n - 1)) % ctx.config.n
            hello = msgspec.msgpack.encode(
                Hello(PROTOCOL_VERSION, "replica", Address(claimed), b"", Address(replica), nonce))
        plain = FrameEncoder()
        writer.write(plain.encode(hello))
        try:
            await _read_frame(reader)
        except (asyncio.IncompleteReadError, OSError):
            _close(writer)
            continue
        forged = plain.encode(msgspec.msgpack.encode(Confirm(os.urandom(32))))
        writer.write(forged)
        await _closed_by_peer(reader)
        _close(writer)
        sent.add(Sent(1, 2, 0, 1, len(forged)))
    return sent


async def handshake_replay(ctx: WireContext, units: int) -> Sent:
    """A recorded honest client handshake replayed on new connections (fresh nonces on
    the replica's side make the old Confirm worthless)."""
    if not ctx.recorded:
        session = await Session.open(ctx, ctx.target(), record=True)
        await session.drain_and_close()
    replica, hello, confirm = ctx.recorded[0]
    sent = Sent()
    for _ in range(units):
        reader, writer = await _connect(ctx, replica)
        writer.write(hello)
        with contextlib.suppress(asyncio.IncompleteReadError, OSError):
            await _read_frame(reader)
        writer.write(confirm)
        await _closed_by_peer(reader)
        _close(writer)
        sent.add(Sent(1, 2, 0, 1, len(hello) + len(confirm)))
    return sent


async def slowloris_handshake(ctx: WireContext, units: int, byte_every_s: float = 0.5) -> Sent:
    """``units`` connections at once, each trickling a Hello a byte at a time: the
    handshake timeout must close each (``hs_timeout``)."""

    async def one() -> Sent:
        replica = ctx.target()
        reader, writer = await _connect(ctx, replica)
        frame = FrameEncoder().encode(_hello(ctx, replica, KeyPair.generate(),
                                             os.urandom(NONCE_SIZE)))
        written = 0
        for byte in frame[:-1]:  # never the last byte
            if reader.at_eof():
                break
            writer.write(bytes((byte,)))
            written += 1
            with contextlib.suppress(OSError):
                await writer.drain()
            await asyncio.sleep(byte_every_s)
            if written * byte_every_s > 20:
                break
        await _closed_by_peer(reader, 10.0)
        _close(writer)
        return Sent(1, 0, 0, 1, written)

    sent = Sent()
    for result in await asyncio.gather(*(one() for _ in range(units))):
        sent.add(result)
    return sent


# -- authenticated clients ----------------------------------------------------------------


async def _with_sessions(ctx: WireContext, frames: int, per_session: int,
                         fill: Callable[[Session, int], Sent]) -> Sent:
    """Open sessions (one at a time), have ``fill`` send up to ``per_session`` frames on
    each, close it; until ``frames`` are sent."""
    sent = Sent()
    while sent.frames < frames:
        session = await Session.open(ctx, ctx.target())
        part = fill(session, min(per_session, frames - sent.frames))
        await session.drain_and_close()
        part.connections += 1
        sent.add(part)
    return sent


async def auth_garbage(ctx: WireContext, frames: int) -> Sent:
    """``frames`` frames of 1..16 grammar-generated or mutated messages (units: the
    messages), a tenth of them with broken bundle framing (units: the frame)."""

    def fill(session: Session, budget: int) -> Sent:
        sent = Sent()
        rng = ctx.rng
        while sent.frames < budget:
            if rng.random() < 0.1:
                # A bundle whose lengths do not add up: one count for the whole frame.
                body = struct.pack(">I", rng.randrange(64, 1 << 20)) + rng.randbytes(8)
                frame = session.encoder.encode(body)
                session.send_raw(frame)
                sent.add(Sent(1, 1, 0, 0, len(frame)))
                continue
            count = rng.randrange(1, BUNDLE_MAX + 1)
            messages = [ctx.corpus.draw() for _ in range(count)]
            size = session.send_bundle(messages)
            sent.add(Sent(count, 1, count, 0, size))
        return sent

    return await _with_sessions(ctx, frames, 500, fill)


async def auth_replica_only(ctx: WireContext, frames: int) -> Sent:
    """Well-formed messages only replicas may send (PrePrepare, Commit, ViewChange,
    Checkpoint, ...), from a client link, in ``frames`` frames."""
    from phalanx.reliability.grammar import random_message

    def fill(session: Session, budget: int) -> Sent:
        sent = Sent()
        while sent.frames < budget:
            count = ctx.rng.randrange(1, BUNDLE_MAX + 1)
            messages = [random_message(ctx.corpus.generator, ctx.replica_only)
                        for _ in range(count)]
            sent.add(Sent(count, 1, count, 0, session.send_bundle(messages)))
        return sent

    return await _with_sessions(ctx, frames, 500, fill)


async def auth_requests(ctx: WireContext, frames: int) -> Sent:
    """Requests with valid authenticators and garbage ledger ops, their replays, and
    requests claiming another client's identity."""

    def fill(session: Session, budget: int) -> Sent:
        sent = Sent()
        rng = ctx.rng
        timestamp = 1 + rng.randrange(1 << 40)
        replay: list[bytes] = []
        while sent.frames < budget:
            choice = rng.random()
            if replay and choice < 0.3:
                message = rng.choice(replay)
            elif choice < 0.45:
                message = session.request(rng.randbytes(rng.randrange(0, 300)), timestamp,
                                          client=KeyPair.generate().public_key)
            else:
                timestamp += 1
                message = session.request(mutate(ctx.corpus.draw(), rng), timestamp)
                replay.append(message)
            sent.add(Sent(1, 1, 1, 0, session.send_bundle([message])))
        return sent

    return await _with_sessions(ctx, frames, 500, fill)


async def break_link(ctx: WireContext, units: int) -> Sent:
    """On each of ``units`` authenticated links: a few valid frames, then one that must
    close the link — a flipped tag, a replayed frame, an oversized length, or a frame
    cut short by the end of the stream."""
    sent = Sent()
    for index in range(units):
        session = await Session.open(ctx, ctx.target())
        rng = ctx.rng
        for _ in range(rng.randrange(1, 4)):
            session.send_bundle([ctx.corpus.draw()])
        kind = index % 4
        if kind == 0:
            flipped = bytearray(session.encoder.encode_bundle([ctx.corpus.draw()]))
            flipped[-1 - rng.randrange(16)] ^= 1 << rng.randrange(8)
            session.send_raw(bytes(flipped))
        elif kind == 1:
            session.send_raw(session.last_frame)  # its counter is spent
        elif kind == 2:
            session.send_raw(struct.pack(">I", rng.randrange((16 << 20) + 1, 1 << 32)))
        else:
            frame = session.encoder.encode_bundle([ctx.corpus.draw()])
            session.send_raw(frame[: rng.randrange(1, len(frame) - 1)])
            with contextlib.suppress(OSError):
                session.writer.write_eof()
        await _closed_by_peer(session.reader)
        _close(session.writer)
        sent.add(Sent(1, 1, 0, 1, 0))
    return sent


async def slowloris_authenticated(ctx: WireContext, units: int, partial_bytes: int,
                                  hold_s: float) -> Sent:
    """``units`` authenticated links at once, each sending ``partial_bytes`` of a frame
    that announces 16 MiB and holding it until the replica drops the link (its frame
    deadline) or ``hold_s`` seconds pass, then hanging up (a truncated frame each).
    While they hold, the replicas keep the partial frames."""
    sessions = [await Session.open(ctx, ctx.target()) for _ in range(units)]
    for session in sessions:
        session.send_raw(struct.pack(">I", 16 << 20) + os.urandom(partial_bytes))
        with contextlib.suppress(OSError):
            await session.writer.drain()
    await asyncio.gather(*(_closed_by_peer(s.reader, hold_s) for s in sessions))
    for session in sessions:
        with contextlib.suppress(OSError):
            session.writer.write_eof()
        await _closed_by_peer(session.reader, 1.0)
        _close(session.writer)
    return Sent(units, units, 0, units, units * (partial_bytes + 4))


WireAttack = Callable[[WireContext, int], Awaitable[Sent]]
