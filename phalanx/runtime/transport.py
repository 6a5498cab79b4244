"""Authenticated TCP links between replicas, and from clients to replicas.

Topology: every replica process keeps one *outgoing* connection to each process it sends
to, used only for sending, and accepts *incoming* connections, used only for receiving
(clients' connections excepted: replies go back on them). So there is no dial race and
no tie-breaking: process a's messages to b always travel on the connection a dialed, and
b learns the sender's :class:`~phalanx.core.address.Address` from that connection's
handshake. A process dials its peers of the same role and partition (every other
replica, for a single-process replica) at start, any other process the first time it
sends to it. A lost connection is redialed by its
owner with exponential backoff (50 ms doubling to 2 s); messages sent meanwhile wait in
a bounded queue (PBFT retransmits whatever that queue drops).

Each connection opens with the handshake of :mod:`phalanx.runtime.handshake` (both
identities proven, a fresh session key); a link carries it out, with the sockets, the
fresh nonces and the clock that module leaves out. A failed handshake (malformed hello,
unknown replica, bad MAC), or none within 5 s, closes the connection and counts
``dropped_hs_<reason>``.

After the handshake: payloads that the msgspec decoder rejects are dropped and counted
(``dropped_decode``) without harming the link; a frame that breaks the framing (too
large, bad MAC, truncated) closes the connection, since the stream cannot be trusted
past it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
from collections import deque
from collections.abc import Callable
from time import perf_counter_ns
from typing import Any, Literal, cast

import msgspec

from phalanx.core.address import Address
from phalanx.crypto.keys import KeyPair, PairwiseKeys, pairwise_key
from phalanx.measure.accounting import Accounting
from phalanx.runtime.client_links import SWEEP_S, ClientLinkLimits, FrameDeadlines
from phalanx.runtime.framing import (
    DEFAULT_MAX_FRAME,
    FRAME_OVERHEAD,
    HANDSHAKE_MAX_FRAME,
    LENGTH_SIZE,
    BadBundle,
    FrameDecoder,
    FrameEncoder,
    FrameError,
    split_bundle,
)
from phalanx.runtime.handshake import (
    NONCE_SIZE,
    PROTOCOL_VERSION,
    AcceptorHandshake,
    ConnectorHandshake,
    Established,
    HandshakeError,
    Hello,
    PeerId,
)
from phalanx.runtime.metrics import Metrics
from phalanx.runtime.wan import Shaper

log = logging.getLogger(__name__)

BUNDLE_BYTES = 1 << 20
"""Most message bytes bundled in one frame: a frame is MAC'd and parsed whole, so a huge
one would make the receiver buffer it all before handing out its first message."""

HANDSHAKE_TIMEOUT = 5.0
MAX_PENDING_HANDSHAKES = 1024
RECONNECT_MIN = 0.05
RECONNECT_MAX = 2.0
DEFAULT_SEND_QUEUE_LIMIT = 64 << 20
WRITE_BUFFER_HIGH = 4 << 20
"""Bytes the OS-facing write buffer may hold before we stop writing and let our own
bounded queue absorb the backlog."""

# --- send queue ------------------------------------------------------------------------


class SendQueue:
    """Payloads waiting for a writable connection, bounded in bytes.

    When full, the *oldest* payloads are dropped (``dropped_send_queue_full``): under
    overload newer protocol messages are the useful ones, and PBFT's retransmission and
    state transfer recover what was lost.
    """

    __slots__ = ("_items", "_metrics", "limit", "nbytes")

    def __init__(self, limit: int, metrics: Metrics) -> None:
        self._items: deque[bytes] = deque()
        self.nbytes = 0
        self.limit = limit
        self._metrics = metrics

    def push(self, data: bytes) -> None:
        """Queue ``data``, dropping the oldest payloads while over the limit."""
        items = self._items
        items.append(data)
        self.nbytes += len(data) + FRAME_OVERHEAD
        while self.nbytes > self.limit:
            self.nbytes -= len(items.popleft()) + FRAME_OVERHEAD
            self._metrics.inc("dropped_send_queue_full")

    def take_all(self) -> deque[bytes]:
        """Remove and return everything queued."""
        items = self._items
        self._items = deque()
        self.nbytes = 0
        return items

    def __len__(self) -> int:
        return len(self._items)


# --- one connection --------------------------------------------------------------------

_HANDSHAKE = "handshake"
_OPEN = "open"
_CLOSED = "closed"


class Link(asyncio.Protocol):
    """One framed, authenticated TCP connection, at either end.

    The owning :class:`Endpoint` decides who may connect and what to do with payloads.
    ``peer`` is the authenticated identity of the other end once the link is open.
    """

    def __init__(
        self,
        owner: Endpoint,
        *,
        target: Address | None = None,
        queue: SendQueue | None = None,
    ) -> None:
        self.owner = owner
        self.initiator = target is not None
        self.target = target
        self.peer: PeerId | None = target
        self.peer_is_client = False
        if queue is None:
            queue = SendQueue(owner.send_queue_limit, owner.metrics)
        self.queue = queue
        self.state = _HANDSHAKE
        self.was_open = False
        self.closed: asyncio.Future[None] = owner.loop.create_future()
        self.transport: asyncio.Transport | None = None
        self._decoder = FrameDecoder(max_frame=HANDSHAKE_MAX_FRAME)
        self._encoder = FrameEncoder()
        self._handshake: ConnectorHandshake | AcceptorHandshake | None = None
        self._timeout: asyncio.TimerHandle | None = None
        self._paused = False
        self._flush_scheduled = False
        self._counted_pending = False  # counts towards owner.pending_handshakes

    # asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        owner = self.owner
        if owner.closing:
            self.state = _CLOSED
            transport.abort()
            return
        if not self.initiator:
            if owner.pending_handshakes >= owner.max_pending_handshakes:
                # A flood of connections that never authenticate must not exhaust fds.
                self.state = _CLOSED
                owner.metrics.inc("dropped_hs_overload")
                transport.abort()
                return
            owner.pending_handshakes += 1
            self._counted_pending = True
        owner.links.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                # Protocol messages are small and latency-bound: never wait for Nagle.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            except (OSError, AttributeError):
                pass
        transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)
        self._timeout = owner.loop.call_later(owner.handshake_timeout, self._handshake_timeout)
        if self.initiator:
            assert self.target is not None
            hello = owner.hello(self.target, os.urandom(NONCE_SIZE))
            connector = ConnectorHandshake(hello, owner.key_for_replica(self.target.replica))
            self._handshake = connector
            transport.write(self._encoder.encode(connector.hello_bytes))
        else:
            self._handshake = AcceptorHandshake(owner.accept_hello, os.urandom(NONCE_SIZE))

    def data_received(self, data: bytes) -> None:
        owner = self.owner
        metrics = owner.metrics
        acct = owner.accounting
        if acct is not None:
            io_start = perf_counter_ns()
            nested = acct.nested_ns
        metrics.inc("bytes_in", len(data))
        decoder = self._decoder
        decoder.feed(data)
        frames = 0
        try:
            while True:
                frame = decoder.next_frame()
                if frame is None:
                    break
                if self.state is _OPEN:
                    frames += 1
                    try:
                        messages = split_bundle(frame)
                    except BadBundle as e:
                        # Authenticated, so the peer itself is faulty: drop its frame.
                        metrics.inc("dropped_bad_bundle")
                        log.debug("bad bundle from %r: %s", self.peer, e)
                        continue
                    for message in messages:
                        owner.link_payload(self, message)
                elif self.state is _CLOSED:
                    break
                else:
                    self._handshake_step(frame)
        except FrameError as e:
            self._abort("hs_malformed" if self.state is not _OPEN else e.reason, str(e))
        except HandshakeError as e:
            self._abort("hs_" + e.reason, str(e))
        finally:
            if frames:
                metrics.inc("frames_in", frames)
            if acct is not None:
                # Socket, framing, MAC and decoding work; handlers run nested are not ours.
                acct.io_ns += perf_counter_ns() - io_start - (acct.nested_ns - nested)

    def pause_writing(self) -> None:
        # The peer reads slower than we write: keep further payloads in our bounded queue.
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self.schedule_flush()

    def connection_lost(self, exc: Exception | None) -> None:
        state = self.state
        self.state = _CLOSED
        self._stop_handshake_clock()
        if state is _OPEN:
            try:
                self._decoder.eof()
            except FrameError as e:
                self.owner.metrics.inc("dropped_" + e.reason)
        elif state is not _CLOSED:
            # The peer hung up mid-handshake (or never completed one).
            self.owner.metrics.inc("dropped_hs_incomplete")
        self.owner.links.discard(self)
        if self.was_open:
            self.owner.link_closed(self)
        if not self.closed.done():
            self.closed.set_result(None)

    # sending ------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Queue a payload; it is written with everything else queued this loop turn."""
        self.queue.push(data)
        self.schedule_flush()

    def schedule_flush(self) -> None:
        """Write the queue once this loop iteration's sends are in (coalesced writes)."""
        if self.state is _OPEN and not self._paused and not self._flush_scheduled and self.queue:
            self._flush_scheduled = True
            self.owner.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self.state is not _OPEN or self._paused:
            return
        items = self.queue.take_all()
        if not items:
            return
        acct = self.owner.accounting
        io_start = perf_counter_ns() if acct is not None else 0
        encoder = self._encoder
        parts: list[bytes] = []
        # Everything queued this turn goes in as few frames as the bundle bound allows.
        bundle: list[bytes] = []
        size = 0
        frames = 1
        for payload in items:
            if bundle and size + len(payload) > BUNDLE_BYTES:
                encoder.encode_bundle_into(bundle, parts)
                frames += 1
                bundle, size = [], 0
            bundle.append(payload)
            size += len(payload) + LENGTH_SIZE
        encoder.encode_bundle_into(bundle, parts)
        data = b"".join(parts)
        assert self.transport is not None
        self.transport.write(data)
        metrics = self.owner.metrics
        metrics.inc("writes_out")
        metrics.inc("frames_out", frames)
        metrics.inc("msgs_out", len(items))  # msgs_out / frames_out = how well sends bundle
        metrics.inc("bytes_out", len(data))
        if acct is not None:
            acct.io_ns += perf_counter_ns() - io_start

    def close(self) -> None:
        """Close the connection (queued payloads already handed to the OS still go out)."""
        if self.transport is not None:
            self.transport.close()

    # handshake ----------------------------------------------------------------------

    def _handshake_step(self, frame: memoryview) -> None:
        assert self._handshake is not None and self.transport is not None
        step = self._handshake.receive(frame)  # raises HandshakeError
        if step.reply is not None:
            self.transport.write(self._encoder.encode(step.reply))
        if step.established is not None:
            self._open(step.established)

    def _open(self, established: Established) -> None:
        self._handshake = None  # drops the pairwise key and the nonces
        self.peer = established.peer
        self.peer_is_client = established.peer_is_client
        self._encoder.set_key(established.key, established.send_direction)
        self._decoder.set_key(established.key, established.recv_direction, self.owner.max_frame)
        self._stop_handshake_clock()
        self.state = _OPEN
        self.was_open = True
        self.owner.metrics.inc("connections_opened")
        self.owner.link_open(self)
        self.schedule_flush()  # whatever was queued while we were disconnected

    def _stop_handshake_clock(self) -> None:
        if self._timeout is not None:
            self._timeout.cancel()
            self._timeout = None
        if self._counted_pending:
            self._counted_pending = False
            self.owner.pending_handshakes -= 1

    def _handshake_timeout(self) -> None:
        self._stop_handshake_clock()
        if self.state is not _OPEN and self.state is not _CLOSED:
            self._abort("hs_timeout", "no handshake in time")

    def _abort(self, reason: str, detail: str) -> None:
        """Drop a misbehaving or broken connection, counted as ``dropped_<reason>``."""
        if self.state is _CLOSED:
            return
        self.state = _CLOSED
        self.owner.metrics.inc("dropped_" + reason)
        peer = self.transport.get_extra_info("peername") if self.transport else None
        # Handshake failures are what scanners and floods cause: metrics, not log lines.
        level = logging.DEBUG if reason.startswith("hs_") else logging.INFO
        log.log(level, "closing link %r (%s): %s: %s", self.peer, peer, reason, detail)
        if self.transport is not None:
            self.transport.abort()  # connection_lost follows and resolves ``closed``


# --- endpoints: the owners of links ----------------------------------------------------


class Dialer:
    """Keeps one outgoing link to the process at ``target`` up, redialing with backoff.
    Its queue outlives the individual connections."""

    def __init__(self, owner: Endpoint, target: Address) -> None:
        self.owner = owner
        self.target = target
        self.queue = SendQueue(owner.send_queue_limit, owner.metrics)
        self.link: Link | None = None
        self._current: Link | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Begin dialing (idempotent)."""
        if self._task is None:
            self._task = self.owner.loop.create_task(self._run())

    def send(self, data: bytes) -> None:
        """Queue ``data`` for the target; written as soon as a link is open."""
        self.queue.push(data)
        link = self.link
        if link is not None:
            link.schedule_flush()

    async def _run(self) -> None:
        owner = self.owner
        delay = RECONNECT_MIN
        while True:
            host, port = owner.peer_addrs[self.target]
            link = Link(owner, target=self.target, queue=self.queue)
            self._current = link
            try:
                await asyncio.wait_for(
                    owner.loop.create_connection(lambda link=link: link, host, port),  # type: ignore[misc]  # mypy cannot type a lambda's default
                    owner.handshake_timeout,
                )
            except (OSError, TimeoutError):
                owner.metrics.inc("dial_failures")
            else:
                await link.closed
                if link.was_open:
                    delay = RECONNECT_MIN
            self._current = None
            # Jitter spreads out the reconnects of many peers after one of them restarts.
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, RECONNECT_MAX)

    async def close(self) -> None:
        """Stop dialing and close the current link."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._current is not None:
            self._current.close()


class Endpoint:
    """What replicas' and clients' transports share: identity, the dialers to replica
    processes (``peer_addrs``: where each listens), payload decoding, metrics."""

    kind: Literal["replica", "client"] = "replica"

    def __init__(
        self,
        keypair: KeyPair,
        peer_addrs: dict[Address, tuple[str, int]],
        replica_public_keys: list[bytes],
        decoder: msgspec.msgpack.Decoder[Any],
        metrics: Metrics,
        *,
        me: Address | None = None,
        max_frame: int = DEFAULT_MAX_FRAME,
        send_queue_limit: int = DEFAULT_SEND_QUEUE_LIMIT,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        max_pending_handshakes: int = MAX_PENDING_HANDSHAKES,
    ) -> None:
        self.me = me
        self.keypair = keypair
        self.peer_addrs = peer_addrs
        self.replica_public_keys = replica_public_keys
        self.decoder = decoder
        self.metrics = metrics
        self.max_frame = max_frame
        # The largest message a bundle frame can carry (its length prefix counts).
        self.max_message = max_frame - LENGTH_SIZE
        self.send_queue_limit = max(send_queue_limit, max_frame + FRAME_OVERHEAD)
        self.handshake_timeout = handshake_timeout
        self.links: set[Link] = set()
        self._replica_keys: dict[int, bytes] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self.dialers: dict[Address, Dialer] = {}
        # What a Broadcast reaches: the dialers made at construction.
        self._broadcast: list[tuple[int, Dialer]] = []
        self.started = False
        self.closing = False
        self.pending_handshakes = 0
        self.max_pending_handshakes = max_pending_handshakes
        # Per-type bytes and transport time (measure/accounting.py), if the owner wants them.
        self.accounting: Accounting | None = None
        # WAN emulation (runtime/wan.py): link delays and a bandwidth cap, if any.
        self._shaper: Shaper | None = None

    @property
    def shaper(self) -> Shaper | None:
        """The WAN shaper payloads pass through before the send queues, if any."""
        return self._shaper

    @shaper.setter
    def shaper(self, shaper: Shaper | None) -> None:
        # What it holds waits in front of the bounded send queues: bound it the same way.
        if shaper is not None:
            shaper.bind(self.send_queue_limit, self._shaper_dropped)
        self._shaper = shaper

    def _shaper_dropped(self) -> None:
        self.metrics.inc("dropped_send_queue_full")

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop this endpoint runs on (the running loop at first use)."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def _make_dialers(self, targets: list[Address]) -> None:
        missing = [str(t) for t in targets if t not in self.peer_addrs]
        if missing:
            raise ValueError(f"no address for processes {missing}")
        self.dialers = {t: Dialer(self, t) for t in targets}
        self._broadcast = [(t.replica, d) for t, d in self.dialers.items()]

    def _dial(self, target: Address) -> Dialer | None:
        """A dialer for ``target`` made on first use (None if no such process, or us)."""
        if target not in self.peer_addrs or target == self.me or self.closing:
            return None
        dialer = self.dialers[target] = Dialer(self, target)
        if self.started:
            dialer.start()
        return dialer

    def start_dialing(self) -> None:
        """Start every dialer, and each one made later as it is made."""
        self.started = True
        for dialer in self.dialers.values():
            dialer.start()

    # link callbacks -----------------------------------------------------------------

    def hello(self, target: Address, nonce: bytes) -> Hello:
        """Our identity claim when we dial ``target``."""
        if self.kind == "client":
            return Hello(PROTOCOL_VERSION, "client", None, self.keypair.public_key, target, nonce)
        return Hello(PROTOCOL_VERSION, "replica", self.me, b"", target, nonce)

    def key_for_replica(self, replica: int) -> bytes:
        """The pairwise key with ``replica`` (computed once per replica)."""
        key = self._replica_keys.get(replica)
        if key is None:
            key = self._replica_keys[replica] = pairwise_key(
                self.keypair, self.replica_public_keys[replica]
            )
        return key

    def accept_hello(self, hello: Hello) -> tuple[PeerId, bytes]:
        """Vet a connector's identity claim: its id and our pairwise key with it."""
        raise HandshakeError("not_accepting", "this endpoint accepts no connections")

    def link_open(self, link: Link) -> None:
        """``link`` finished its handshake; ``link.peer`` is authenticated."""
        if link.target is not None:
            dialer = self.dialers.get(link.target)
            if dialer is not None:
                dialer.link = link
        self._update_gauges()

    def link_closed(self, link: Link) -> None:
        """A link that had been open is gone."""
        self.metrics.inc("connections_closed")
        if link.target is not None:
            dialer = self.dialers.get(link.target)
            if dialer is not None and dialer.link is link:
                dialer.link = None
        self._update_gauges()

    def _update_gauges(self) -> None:
        self.metrics.set("peers_connected", sum(d.link is not None for d in self.dialers.values()))

    def link_payload(self, link: Link, payload: memoryview) -> None:
        """An authenticated payload from ``link.peer``: decode it and hand it on."""
        try:
            msg = self.decoder.decode(payload)
        except Exception:
            # Garbage or a wrong message type from an authenticated peer: its problem, not
            # the link's. (msgspec raises DecodeError; anything else is caught as well so
            # that no payload can raise out of the transport.)
            self.metrics.inc("dropped_decode")
            return
        if self.accounting is not None:
            self.accounting.received(type(msg), len(payload))
        shaper = self.shaper
        if shaper is not None and shaper.in_delays:
            shaper.receive(link.peer, self._deliver_safely, link, msg)
        else:
            self._deliver_safely(link, msg)

    def _deliver_safely(self, link: Link, msg: Any) -> None:
        try:
            self.deliver(link, msg)
        except Exception:
            self.metrics.inc("handler_exceptions")
            log.exception("message handler failed on a message from %r", link.peer)

    def deliver(self, link: Link, msg: Any) -> None:
        """Hand a decoded message to the application."""
        raise NotImplementedError

    # sending ------------------------------------------------------------------------

    def send(self, dest: Address, data: bytes) -> None:
        """Send one encoded message to the process at ``dest`` (never blocks, never
        raises)."""
        dialer = self.dialers.get(dest) or self._dial(dest)
        if dialer is None:
            self.metrics.inc("dropped_unknown_dest")
            return
        if len(data) > self.max_message:
            # The receiver would reject it and drop the link; refuse it here instead.
            self.metrics.inc("dropped_oversize_send")
            return
        shaper = self._shaper
        if shaper is not None:
            # A replica's processes share its place in the WAN plan.
            shaper.send(dest.replica, len(data), dialer.send, data)
        else:
            dialer.send(data)

    def broadcast(self, data: bytes) -> None:
        """Send one encoded message to our peers of our own role and partition: every
        other replica for a single-process replica (encoded once by the caller)."""
        if len(data) > self.max_message:
            self.metrics.inc("dropped_oversize_send")
            return
        shaper = self._shaper
        if shaper is None:
            for _, dialer in self._broadcast:
                dialer.send(data)
        else:
            size = len(data)
            for replica, dialer in self._broadcast:
                shaper.send(replica, size, dialer.send, data)

    @property
    def connected_replicas(self) -> set[Address]:
        """Processes to which we currently hold an open outgoing link."""
        return {t for t, d in self.dialers.items() if d.link is not None}

    async def wait_connected(self, replicas: set[Address] | None = None,
                             timeout: float = 5.0) -> None:
        """Wait until outgoing links to ``replicas`` (default: all dialed) are open."""
        wanted = set(self.dialers) if replicas is None else replicas
        deadline = self.loop.time() + timeout
        while not wanted <= self.connected_replicas:
            if self.loop.time() > deadline:
                missing = [str(a) for a in sorted(wanted - self.connected_replicas)]
                raise TimeoutError(f"no link to replicas {missing} after {timeout} s")
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        """Stop dialing and close every link."""
        self.closing = True
        if self.shaper is not None:
            self.shaper.close()  # drop what the WAN delay lines still hold
        for dialer in self.dialers.values():
            await dialer.close()
        for link in list(self.links):
            link.close()
        # Let connection_lost callbacks run.
        await asyncio.sleep(0)


class Transport(Endpoint):
    """A replica process's network: authenticated links to the other processes (of
    other replicas, and of its own) and to clients.

    ``me`` is this process's address; ``peer_addrs`` where every process of the cluster
    listens. ``on_replica_message(src, msg)`` (``src`` the sender's address) and
    ``on_client_message(client, msg)`` receive every decoded message with the sender
    authenticated by its link; they may be reassigned before :meth:`start` (a
    :class:`~phalanx.runtime.node.ReplicaDriver` does so).
    """

    def __init__(
        self,
        me: Address | int,
        keypair: KeyPair,
        peer_addrs: dict[Address, tuple[str, int]] | dict[int, tuple[str, int]],
        replica_public_keys: list[bytes],
        decoder: msgspec.msgpack.Decoder[Any],
        on_replica_message: Callable[[Address, Any], None] | None,
        on_client_message: Callable[[bytes, Any], None] | None,
        metrics: Metrics,
        max_frame: int = DEFAULT_MAX_FRAME,
        send_queue_limit: int = DEFAULT_SEND_QUEUE_LIMIT,
        *,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        max_pending_handshakes: int = MAX_PENDING_HANDSHAKES,
        client_key_cache_size: int = 65_536,
        client_limits: ClientLinkLimits | None = None,
    ) -> None:
        # A bare replica id (and addresses keyed by replica id) name single-process
        # replicas: the form tests and single-role tools use.
        me = Address(me) if isinstance(me, int) else me
        addrs = {Address(k) if isinstance(k, int) else k: v for k, v in peer_addrs.items()}
        if not 0 <= me.replica < len(replica_public_keys):
            raise ValueError(f"replica id {me.replica} outside "
                             f"0..{len(replica_public_keys) - 1}")
        if replica_public_keys[me.replica] != keypair.public_key:
            raise ValueError(f"key pair does not match the public key of replica {me.replica}")
        super().__init__(
            keypair,
            addrs,
            replica_public_keys,
            decoder,
            metrics,
            me=me,
            max_frame=max_frame,
            send_queue_limit=send_queue_limit,
            handshake_timeout=handshake_timeout,
            max_pending_handshakes=max_pending_handshakes,
        )
        self.on_replica_message = on_replica_message
        self.on_client_message = on_client_message
        self._client_keys = PairwiseKeys(keypair, client_key_cache_size)
        self._incoming: dict[Address, Link] = {}
        self._clients: dict[bytes, Link] = {}
        self.client_limits = client_limits or ClientLinkLimits()
        self._frame_deadlines: FrameDeadlines[Link] = FrameDeadlines(self.client_limits)
        self._client_sweep: asyncio.TimerHandle | None = None
        self._server: asyncio.Server | None = None
        # Where an int destination goes: that replica's process of our role and partition.
        self._same_role = [Address(r, me.role, me.partition)
                           for r in range(len(replica_public_keys))]
        # Created now so that sends before start() are queued, not lost.
        self._make_dialers([a for a in self._same_role if a != me and a in addrs])

    @property
    def port(self) -> int:
        """The port we listen on (useful after ``start(host, 0)``)."""
        assert self._server is not None and self._server.sockets
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def peer_count(self) -> int:
        """How many processes a broadcast goes to."""
        return len(self._broadcast)

    def send(self, dest: Address | int, data: bytes) -> None:
        """Send one encoded message to the process at ``dest``; an int ``dest`` is that
        replica's process of our own role and partition (as in
        :class:`phalanx.core.effects.Send`)."""
        if isinstance(dest, int):
            same_role = self._same_role
            dest = same_role[dest] if 0 <= dest < len(same_role) else Address(dest)
        super().send(dest, data)

    async def start(self, host: str, port: int, sock: socket.socket | None = None) -> None:
        """Listen on ``host:port`` (replicas and clients alike), or on ``sock`` if the
        caller bound it already, and dial every peer."""
        if sock is not None:
            self._server = await self.loop.create_server(lambda: Link(self), sock=sock)
        else:
            self._server = await self.loop.create_server(lambda: Link(self), host, port)
        self.start_dialing()
        self._sweep_client_links()

    def accept_hello(self, hello: Hello) -> tuple[PeerId, bytes]:
        if hello.target != self.me:
            raise HandshakeError("wrong_target", f"meant for process {hello.target}")
        if hello.kind == "replica":
            sender = hello.sender
            if sender is None or not 0 <= sender.replica < len(self.replica_public_keys):
                raise HandshakeError("unknown_replica", f"sender {sender}")
            if sender not in self.peer_addrs or sender == self.me:
                # Only the processes of the cluster file speak (for their replica).
                raise HandshakeError("unknown_process", f"sender {sender}")
            return sender, self.key_for_replica(sender.replica)
        try:
            return hello.client, self._client_keys.get(hello.client)
        except ValueError as e:
            raise HandshakeError("bad_client_key", str(e)) from None

    def link_open(self, link: Link) -> None:
        if (link.peer_is_client and link.peer not in self._clients
                and len(self._clients) >= self.client_limits.max_clients):
            link._abort("too_many_clients", f"{len(self._clients)} client links open")
            return
        if not link.initiator:
            # A newer authenticated link from the same peer supersedes the old one (the
            # peer restarted, or its old connection is half-open).
            table: dict[Any, Link] = self._clients if link.peer_is_client else self._incoming
            old = table.get(link.peer)
            table[link.peer] = link
            if old is not None and old is not link:
                old.close()
        super().link_open(link)

    def link_closed(self, link: Link) -> None:
        if not link.initiator:
            table: dict[Any, Link] = self._clients if link.peer_is_client else self._incoming
            if table.get(link.peer) is link:
                del table[link.peer]
        super().link_closed(link)

    def _update_gauges(self) -> None:
        super()._update_gauges()
        self.metrics.set("replicas_incoming", len(self._incoming))
        self.metrics.set("clients_connected", len(self._clients))

    def deliver(self, link: Link, msg: Any) -> None:
        if link.peer_is_client:
            if self.on_client_message is not None:
                self.on_client_message(link.peer, msg)  # type: ignore[arg-type]  # a client's key
        elif self.on_replica_message is not None:
            self.on_replica_message(link.peer, msg)  # type: ignore[arg-type]  # a replica id

    def send_client(self, client: bytes, data: bytes) -> None:
        """Send to a connected client; counted as ``dropped_client_gone`` if it is not."""
        shaper = self._shaper
        if shaper is not None:
            # Paced by the bandwidth cap here; the client adds the link's delay on arrival.
            shaper.send(client, len(data), self._send_client_now, client, data)
        else:
            self._send_client_now(client, data)

    def _send_client_now(self, client: bytes, data: bytes) -> None:
        link = self._clients.get(client)
        if link is None:
            self.metrics.inc("dropped_client_gone")
            return
        if len(data) > self.max_message:
            self.metrics.inc("dropped_oversize_send")
            return
        link.send(data)

    @property
    def connected_clients(self) -> set[bytes]:
        """Public keys of the clients with an open link."""
        return set(self._clients)

    def _sweep_client_links(self) -> None:
        """Drop the client links whose started frame stalled or crawls (see
        :mod:`phalanx.runtime.client_links`); again in ``SWEEP_S``."""
        links = [(link, link._decoder) for link in self._clients.values()]
        for link, why in self._frame_deadlines.overdue(links, self.loop.time()):
            link._abort("frame_timeout", why)
        self._client_sweep = self.loop.call_later(SWEEP_S, self._sweep_client_links)

    async def close(self) -> None:
        """Stop listening, stop dialing, close every link."""
        if self._client_sweep is not None:
            self._client_sweep.cancel()
        if self._server is not None:
            self._server.close()
        await super().close()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
