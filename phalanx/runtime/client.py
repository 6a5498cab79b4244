"""The client side of the runtime: links to every replica, and a driver for one
sans-I/O :class:`~phalanx.core.node.ClientCore`.

A client is named by its Ed25519 public key; each replica authenticates it at connect
time (see :mod:`phalanx.runtime.transport`) and sends replies back on the same link.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Literal

import msgspec

from phalanx.core.address import REPLICA_ROLE, Address
from phalanx.core.effects import (
    Broadcast,
    CancelTimer,
    ClientEffect,
    Completed,
    Dropped,
    NotAccepted,
    Send,
    SetTimer,
)
from phalanx.core.messages import Replies, encode
from phalanx.core.node import ClientCore
from phalanx.crypto.keys import KeyPair
from phalanx.runtime.framing import DEFAULT_MAX_FRAME
from phalanx.runtime.metrics import Metrics
from phalanx.runtime.transport import (
    DEFAULT_SEND_QUEUE_LIMIT,
    HANDSHAKE_TIMEOUT,
    Endpoint,
    Link,
)

log = logging.getLogger(__name__)

SWEEP_INTERVAL = 0.05
"""Seconds between a ClientMux's checks of its clients' timer deadlines."""


class ClientTransport(Endpoint):
    """Authenticated links from one client to every replica's front process (redialed
    when lost): ``replica_addrs`` says where each listens, ``front_role`` is its role.

    ``on_message(replica, msg)`` receives every decoded message a replica sends back.
    """

    kind: Literal["replica", "client"] = "client"

    def __init__(
        self,
        keypair: KeyPair,
        replica_addrs: dict[int, tuple[str, int]],
        replica_public_keys: list[bytes],
        decoder: msgspec.msgpack.Decoder[Any],
        on_message: Callable[[int, Any], None] | None,
        metrics: Metrics | None = None,
        *,
        max_frame: int = DEFAULT_MAX_FRAME,
        send_queue_limit: int = DEFAULT_SEND_QUEUE_LIMIT,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        front_role: str = REPLICA_ROLE,
    ) -> None:
        self.fronts = [Address(r, front_role) for r in range(len(replica_public_keys))]
        super().__init__(
            keypair,
            {Address(r, front_role): addr for r, addr in replica_addrs.items()},
            replica_public_keys,
            decoder,
            metrics if metrics is not None else Metrics("client"),
            max_frame=max_frame,
            send_queue_limit=send_queue_limit,
            handshake_timeout=handshake_timeout,
        )
        self.on_message = on_message
        self._make_dialers(self.fronts)

    async def start(self) -> None:
        """Dial every replica (returns at once; see :meth:`wait_connected`)."""
        self.start_dialing()

    def send(self, dest: Address | int, data: bytes) -> None:
        """Send one encoded message to replica ``dest``'s front process."""
        if isinstance(dest, int):
            if not 0 <= dest < len(self.fronts):
                self.metrics.inc("dropped_unknown_dest")
                return
            dest = self.fronts[dest]
        super().send(dest, data)

    def deliver(self, link: Link, msg: Any) -> None:
        peer = link.peer
        if self.on_message is not None and isinstance(peer, Address):
            self.on_message(peer.replica, msg)


NOT_ACCEPTED_GRACE_S = 1.0
"""Seconds a runner still waits for a request after f+1 replicas refused it for now
(:class:`~phalanx.core.effects.NotAccepted`) before it raises
:class:`RequestNotAccepted`. If the refusals came from a lagging replica and f liars while
the others order the request, its result follows within one ordering round; and within a
second the client core retransmits it to every replica (its first retransmission timeout
is 1 s by default), so a replica that refused it for a passing reason is asked again."""


class RequestFailed(Exception):
    """The replicas did not accept request ``timestamp``; ``reason`` is what they said.
    Raised as one of its two kinds: :class:`RequestRefused` or
    :class:`RequestNotAccepted`."""

    def __init__(self, timestamp: int, reason: str, message: str = "") -> None:
        super().__init__(message or f"request {timestamp} failed: {reason}")
        self.timestamp = timestamp
        self.reason = reason


class RequestRefused(RequestFailed):
    """Refused for good: enough replicas agree that the request can never execute (a
    malformed request, a bad signature: see docs/pbft.md, "Refusals"). Sending the same
    op again cannot help."""

    def __init__(self, timestamp: int, reason: str) -> None:
        super().__init__(timestamp, reason, f"request {timestamp} refused ({reason})")


class RequestNotAccepted(RequestFailed):
    """f+1 replicas refused the request for now (overloaded, or judged on their executed
    state, which may lag) and no result came within the grace that followed. This is not
    a failure: the request may still execute. Retry it, or check its effect first where
    running it twice matters."""

    def __init__(self, timestamp: int, reason: str) -> None:
        super().__init__(timestamp, reason,
                         f"request {timestamp} not accepted yet ({reason}); retry")


class ClientRunner:
    """Drives one :class:`ClientCore` over a :class:`ClientTransport`.

    A client core has one outstanding request at a time, so a closed-loop benchmark runs
    one runner (one key pair, one transport) per simulated client.
    """

    def __init__(
        self,
        core: ClientCore,
        transport: ClientTransport,
        *,
        mux: ClientMux | None = None,
        not_accepted_grace: float = NOT_ACCEPTED_GRACE_S,
    ) -> None:
        self.core = core
        self.transport = transport
        self.mux = mux  # the transport belongs to a ClientMux, which routes to us
        self.shared = mux is not None
        self.not_accepted_grace = not_accepted_grace
        if mux is None:
            transport.on_message = self._on_message
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._pending: asyncio.Future[bytes] | None = None
        self._callback: Callable[[bytes | None, str | None], None] | None = None
        self._timestamp: int | None = None
        self._grace = not_accepted_grace  # of the outstanding request
        self._give_up_handle: asyncio.TimerHandle | None = None

    async def request(self, op: bytes, *, grace: float | None = None) -> bytes:
        """Submit ``op`` and wait for its result (f+1 matching replies, as the core
        decides). Raises :class:`RequestRefused` if the replicas refuse it for good, and
        :class:`RequestNotAccepted` if f+1 refused it for now and no result came within
        ``grace`` seconds after (default: :attr:`not_accepted_grace`)."""
        if self._pending is not None:
            raise RuntimeError("a ClientRunner has one outstanding request at a time")
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending = future
        self._grace = self.not_accepted_grace if grace is None else grace
        try:
            timestamp, effects = self.core.submit(op)
            self._timestamp = timestamp
            self._perform(effects)
            return await future
        finally:
            if not future.done():
                # The caller gave up (e.g. a timeout): free the core for the next request.
                self._perform(self.core.abandon())
            self._cancel_give_up()
            self._pending = None
            self._timestamp = None

    def submit(self, op: bytes, on_done: Callable[[bytes | None, str | None], None]) -> None:
        """Callback style: submit ``op``; ``on_done(result, None)`` or ``on_done(None,
        reason)`` runs when it completes, is refused for good, or is not accepted within
        :attr:`not_accepted_grace`. No future and no task switch per request, for load
        generators that keep many clients busy; :meth:`request` is the usual API."""
        if self._pending is not None or self._callback is not None:
            raise RuntimeError("a ClientRunner has one outstanding request at a time")
        self._callback = on_done
        self._grace = self.not_accepted_grace
        timestamp, effects = self.core.submit(op)
        self._timestamp = timestamp
        self._perform(effects)

    def _on_message(self, replica: int, msg: Any) -> None:
        if type(msg) is Replies:
            for reply in msg.replies:
                self._on_message(replica, reply)
            return
        try:
            effects = self.core.on_message(replica, msg)
        except Exception:
            self.transport.metrics.inc("core_exceptions")
            log.exception("client core failed on a message from replica %d", replica)
            return
        self._perform(effects)

    def _on_timer(self, name: str) -> None:
        self._timers.pop(name, None)
        try:
            effects = self.core.on_timer(name)
        except Exception:
            self.transport.metrics.inc("core_exceptions")
            log.exception("client core failed on timer %s", name)
            return
        self._perform(effects)

    def _perform(self, effects: list[ClientEffect]) -> None:
        transport = self.transport
        for effect in effects:
            # ``type(effect) is`` (not isinstance): one pointer compare, and mypy narrows it.
            if type(effect) is Send:
                transport.send(effect.dest, encode(effect.msg))
            elif type(effect) is Broadcast:
                transport.broadcast(encode(effect.msg))
            elif type(effect) is SetTimer:
                self._set_timer(effect.name, effect.delay)
            elif type(effect) is CancelTimer:
                self._cancel_timer(effect.name)
            elif type(effect) is Completed:
                self._complete(effect)
            elif type(effect) is NotAccepted:
                self._not_accepted(effect)
            elif type(effect) is Dropped:  # cores may report rejected inputs, as replicas do
                transport.metrics.inc("dropped_" + effect.reason)

    def _set_timer(self, name: str, delay: float) -> None:
        if self.mux is not None:
            self.mux.set_deadline(self, name, delay)
            return
        old = self._timers.get(name)
        if old is not None:
            old.cancel()
        loop = asyncio.get_running_loop()
        self._timers[name] = loop.call_later(delay, self._on_timer, name)

    def _cancel_timer(self, name: str) -> None:
        if self.mux is not None:
            self.mux.deadlines.pop((self, name), None)
            return
        handle = self._timers.pop(name, None)
        if handle is not None:
            handle.cancel()

    def _complete(self, done: Completed) -> None:
        if done.timestamp == self._timestamp:
            self._cancel_give_up()
        callback = self._callback
        if callback is not None and done.timestamp == self._timestamp:
            self._callback = None
            self._timestamp = None
            callback(done.result if done.error is None else None, done.error)
            return
        future = self._pending
        if future is None or future.done() or done.timestamp != self._timestamp:
            return  # a late answer to a request the caller gave up on
        if done.error is not None:
            future.set_exception(RequestRefused(done.timestamp, done.error))
        else:
            future.set_result(done.result)

    def _not_accepted(self, note: NotAccepted) -> None:
        """f+1 replicas refused the outstanding request for now: the core keeps it (a
        result may still come), and we wait out the grace before giving up on it."""
        if note.timestamp != self._timestamp or self._give_up_handle is not None:
            return
        self.transport.metrics.inc("requests_not_accepted")
        loop = asyncio.get_running_loop()
        self._give_up_handle = loop.call_later(self._grace, self._give_up, note)

    def _give_up(self, note: NotAccepted) -> None:
        self._give_up_handle = None
        if note.timestamp != self._timestamp:
            return
        self._perform(self.core.abandon())
        callback = self._callback
        if callback is not None:
            self._callback = None
            self._timestamp = None
            callback(None, note.reason)
            return
        future = self._pending
        if future is not None and not future.done():
            future.set_exception(RequestNotAccepted(note.timestamp, note.reason))

    def _cancel_give_up(self) -> None:
        if self._give_up_handle is not None:
            self._give_up_handle.cancel()
            self._give_up_handle = None

    async def close(self) -> None:
        """Cancel timers and close the transport (unless a ClientMux shares it)."""
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        self._cancel_give_up()
        if not self.shared:
            await self.transport.close()


class ClientMux:
    """Many logical clients over one :class:`ClientTransport`.

    Each client keeps its own key pair (its requests carry its own authenticator) but
    names the shared connection as its ``endpoint``, so replicas send the replies to all
    of them over one connection per replica: a replica answers a whole batch with one
    write instead of one per client, and the process reads them with one read.
    """

    def __init__(self, transport: ClientTransport) -> None:
        self.transport = transport
        self.runners: dict[bytes, ClientRunner] = {}
        # (runner, timer name) -> loop time it fires at. One periodic sweep replaces a
        # loop timer per request: arming and cancelling those was a seventh of the
        # client's CPU, and retransmission timeouts need no finer resolution.
        self.deadlines: dict[tuple[ClientRunner, str], float] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        transport.on_message = self._dispatch

    @property
    def endpoint(self) -> bytes:
        """The identity clients name as their ``endpoint``."""
        return self.transport.keypair.public_key

    def add(self, core: ClientCore) -> ClientRunner:
        runner = ClientRunner(core, self.transport, mux=self)
        self.runners[core.client_id] = runner
        return runner

    def set_deadline(self, runner: ClientRunner, name: str, delay: float) -> None:
        loop = asyncio.get_running_loop()
        self.deadlines[(runner, name)] = loop.time() + delay
        if self._sweeper is None:
            self._sweeper = loop.call_later(SWEEP_INTERVAL, self._sweep)

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        due = [key for key, when in self.deadlines.items() if when <= now]
        for key in due:
            del self.deadlines[key]
        for runner, name in due:
            runner._on_timer(name)
        self._sweeper = loop.call_later(SWEEP_INTERVAL, self._sweep) if self.deadlines else None

    def _dispatch(self, replica: int, msg: Any) -> None:
        if type(msg) is Replies:
            for reply in msg.replies:
                self._dispatch(replica, reply)
            return
        runner = self.runners.get(getattr(msg, "client", b""))
        if runner is None:
            self.transport.metrics.inc("dropped_unknown_client")
            return
        if runner._timestamp != getattr(msg, "timestamp", None):
            # An answer to a request that already completed (the replies beyond the f+1
            # that decided it: half of all replies at n=4) or was given up: nothing to do.
            self.transport.metrics.inc("late_replies")
            return
        runner._on_message(replica, msg)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self.deadlines.clear()
        for runner in self.runners.values():
            await runner.close()
        await self.transport.close()
