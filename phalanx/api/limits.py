"""Limits of a replica's HTTP port that aiohttp does not have, and a count of the
requests aiohttp refuses on its own.

The port is open to anyone, and aiohttp alone would let anyone

- send bytes that are not HTTP (a broken request line or header, a 20 KB header line,
  bad chunked framing, two ``Content-Length``): aiohttp answers 400 before any
  middleware runs, so no API counter would move;
- open connections without limit, and take as long as they like to send a request's
  head (slow-loris): each holds a file descriptor of the replica's process, which the
  replica-to-replica links need too.

:class:`HttpGuard` closes those gaps with aiohttp's public hooks only:

- :class:`GuardedSite` (an ``aiohttp.web.BaseSite``) listens with a protocol factory
  that puts a :class:`GuardedConnection` in front of aiohttp's protocol for each
  accepted connection. At ``max_connections`` a new connection takes the place of the
  one idle the longest between requests (pooled keep-alive connections must not lock
  other clients out); if none is idle, it gets 503 and is closed
  (``api_rejected{type=too_many_connections}``). A connection must send a complete
  request head within ``header_timeout_s`` of being accepted, or of its first byte
  after a response (else 408, ``header_timeout``); a keep-alive connection idle for
  ``idle_timeout_s`` is closed (``http_idle_closed``: not a refusal); a connection that
  hangs up in the middle of a request head is counted ``incomplete_request``.
- A middleware (outermost) marks every request that reaches the application, and
  stops the head clock while it is handled.
- The access logger (``aiohttp.abc.AbstractAccessLogger``, called after every answer)
  counts an error answer to a request that never reached the application:
  ``malformed_http``; it restarts the clock for the connection's next request.

:func:`read_body` reads a request body with a deadline (``body_timeout``) and whole:
``StreamReader.read(n)`` returns as soon as *some* bytes are there.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import StreamReader, web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http import HttpProcessingError

from phalanx.runtime.metrics import Metrics

MAX_CONNECTIONS = 256
HEADER_TIMEOUT_S = 10.0
IDLE_TIMEOUT_S = 30.0
"""Longer than aiohttp's client keeps an idle connection (15 s), so that an SDK never
sends a request on a connection we are closing at that very moment."""
BODY_TIMEOUT_S = 10.0

_REACHED_APP = web.RequestKey("phalanx_reached_app", bool)

# aiohttp logs every request it cannot parse at ERROR, with a traceback: an attacker's
# garbage would flood the replica's log. They are counted (malformed_http) instead.
server_log = logging.getLogger("phalanx.api.server")


class _ParseErrorsAreCounted(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, HttpProcessingError)


server_log.addFilter(_ParseErrorsAreCounted())


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """What one replica's HTTP port allows (see the module docstring)."""

    max_connections: int = MAX_CONNECTIONS
    header_timeout_s: float = HEADER_TIMEOUT_S
    idle_timeout_s: float = IDLE_TIMEOUT_S

    def __post_init__(self) -> None:
        if self.max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {self.max_connections}")
        for name in ("header_timeout_s", "idle_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


def raw_refusal(status: int, phrase: str, reason: str, detail: str) -> bytes:
    """A whole HTTP/1.1 answer with the API's JSON refusal body, closing the connection
    (for refusals made below aiohttp, where no response object exists)."""
    body = json.dumps({"error": reason, "detail": detail}).encode()
    head = (f"HTTP/1.1 {status} {phrase}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    return head.encode() + body


# A connection's phases: waiting for a request's head (the clock runs), handling a
# request (no clock: the handler bounds its own work), idle between requests, closing.
_HEAD = "head"
_BUSY = "busy"
_IDLE = "idle"
_DONE = "done"


class GuardedConnection(asyncio.Protocol):
    """One accepted connection: admitted (under the cap) or refused, and timed while it
    owes us a request head. Everything else is aiohttp's protocol's business."""

    def __init__(self, guard: HttpGuard, make_inner: Callable[[], asyncio.Protocol]) -> None:
        self.guard = guard
        self._make_inner = make_inner
        self.inner: asyncio.Protocol | None = None
        self.transport: asyncio.Transport | None = None
        self._phase = _DONE
        self.head_bytes = 0  # bytes received since the head clock started
        self._clock: asyncio.TimerHandle | None = None
        # The body of the last request, if it was answered before it all arrived (413,
        # say): aiohttp reads the rest after the answer, and those bytes are no head.
        self._unread_body: StreamReader | None = None

    @property
    def phase(self) -> str:
        return self._phase

    @phase.setter
    def phase(self, phase: str) -> None:
        idle = self.guard.idle
        idle.pop(self, None)
        if phase is _IDLE:
            idle[self] = None  # the longest idle first
        self._phase = phase

    # asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        guard = self.guard
        if not guard.admit(self):
            transport.write(guard.too_many)  # type: ignore[attr-defined]
            transport.close()
            return
        self.inner = inner = self._make_inner()
        guard.by_protocol[inner] = self
        inner.connection_made(transport)
        self._wait(_HEAD, guard.limits.header_timeout_s)

    def data_received(self, data: bytes) -> None:
        inner = self.inner
        if inner is None:
            return  # refused: whatever it sends is ignored until it is gone
        body = self._unread_body
        if self.phase is _IDLE and (body is None or body.is_eof()):
            self._wait(_HEAD, self.guard.limits.header_timeout_s)
        if self.phase is _HEAD:
            self.head_bytes += len(data)
        inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else None

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_clock()
        inner = self.inner
        if inner is None:
            return
        if self.phase is _HEAD and self.head_bytes:
            self.guard.metrics.inc("api_rejected:incomplete_request")
        self.phase = _DONE
        self.guard.release(self)
        inner.connection_lost(exc)

    # the request cycle (from the middleware and the access logger) ---------------------

    def request_started(self) -> None:
        self._stop_clock()
        self.phase = _BUSY

    def response_sent(self, keep_alive: bool, body: StreamReader) -> None:
        if self.phase is _DONE:
            return
        self._unread_body = None if body.is_eof() else body
        if keep_alive:
            self._wait(_IDLE, self.guard.limits.idle_timeout_s)
        else:  # aiohttp closes it now (an error, or the client asked)
            self._stop_clock()
            self.phase = _DONE

    # the clock -------------------------------------------------------------------------

    def _wait(self, phase: str, seconds: float) -> None:
        self._stop_clock()
        self.phase = phase
        self.head_bytes = 0
        self._clock = asyncio.get_running_loop().call_later(seconds, self._expired)

    def _stop_clock(self) -> None:
        if self._clock is not None:
            self._clock.cancel()
            self._clock = None

    def _expired(self) -> None:
        self._clock = None
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self.phase is _HEAD:
            self.guard.metrics.inc("api_rejected:header_timeout")
            transport.write(self.guard.head_too_slow)
            self.phase = _DONE
            transport.close()
        elif self.phase is _IDLE:
            self.close_idle()

    def close_idle(self) -> None:
        """Close this keep-alive connection between requests (its client reconnects
        when it needs to): counted ``http_idle_closed``, not a refusal."""
        self._stop_clock()
        self.phase = _DONE
        self.guard.metrics.inc("http_idle_closed")
        if self.transport is not None:
            self.transport.close()


class HttpGuard:
    """The limits of one HTTP port and the counters of what they refuse.

    Use: :meth:`install` on the application (before it starts), ``web.AppRunner(app,
    **guard.runner_options())``, then serve with :class:`GuardedSite`."""

    def __init__(self, metrics: Metrics, limits: HttpLimits | None = None) -> None:
        self.metrics = metrics
        self.limits = limits = limits or HttpLimits()
        self.open = 0
        self.by_protocol: dict[asyncio.Protocol, GuardedConnection] = {}
        self.idle: dict[GuardedConnection, None] = {}  # between requests, oldest first
        self.too_many = raw_refusal(
            503, "Service Unavailable", "too_many_connections",
            f"this replica serves at most {limits.max_connections} HTTP connections; "
            "retry later")
        self.head_too_slow = raw_refusal(
            408, "Request Timeout", "header_timeout",
            f"no complete request head within {limits.header_timeout_s:g} s")
        metrics.set("http_connections", 0)

    # connections ----------------------------------------------------------------------

    def admit(self, connection: GuardedConnection) -> bool:
        """Take a new connection: under the cap, or in place of the connection idle the
        longest (clients that keep pooled connections open must not lock others out);
        refused (503) if every connection is in use."""
        if self.open >= self.limits.max_connections:
            if not self.idle:
                self.metrics.inc("api_rejected:too_many_connections")
                return False
            next(iter(self.idle)).close_idle()  # its slot is free once it is gone
        self.open += 1
        self.metrics.set("http_connections", self.open)
        return True

    def release(self, connection: GuardedConnection) -> None:
        self.by_protocol.pop(connection.inner, None)  # type: ignore[arg-type]
        self.open -= 1
        self.metrics.set("http_connections", self.open)

    def protocol_factory(self, runner: web.BaseRunner) -> Callable[[], GuardedConnection]:
        server = runner.server
        if server is None:
            raise RuntimeError("call runner.setup() first")
        return lambda: GuardedConnection(self, server)

    # the application's side ---------------------------------------------------------------

    def install(self, app: web.Application) -> None:
        """Add the middleware that marks requests reaching the application (outermost,
        so that it sees every one)."""
        app.middlewares.insert(0, self._middleware)

    @web.middleware
    async def _middleware(
        self, request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        request[_REACHED_APP] = True
        connection = self.by_protocol.get(request.protocol)
        if connection is not None:
            connection.request_started()
        return await handler(request)

    def runner_options(self) -> dict[str, Any]:
        """Keyword arguments for ``web.AppRunner``: the counting access logger, and a
        server logger that does not log each unparseable request (it is counted)."""
        guard = self

        class Refusals(AbstractAccessLogger):
            """Called after every answer, aiohttp's own included."""

            def log(self, request: web.BaseRequest, response: web.StreamResponse,
                    time: float) -> None:
                guard.answered(request, response)

        return {"access_log_class": Refusals, "access_log": server_log, "logger": server_log}

    def answered(self, request: web.BaseRequest, response: web.StreamResponse) -> None:
        if response.status >= 400 and not request.get(_REACHED_APP, False):
            # aiohttp refused it before the application saw it: not HTTP we can parse.
            self.metrics.inc("api_rejected:malformed_http")
        connection = self.by_protocol.get(request.protocol)
        if connection is not None:
            connection.response_sent(response.keep_alive is not False, request.content)


class GuardedSite(web.BaseSite):
    """An aiohttp site that serves through an :class:`HttpGuard`: on ``sock`` (bound by
    the caller) or on ``host:port``."""

    __slots__ = ("_guard", "_host", "_name", "_port", "_sock")

    def __init__(self, runner: web.BaseRunner, guard: HttpGuard, *,
                 sock: Any = None, host: str | None = None, port: int = 0) -> None:
        super().__init__(runner)
        self._guard = guard
        self._sock = sock
        self._host = host
        self._port = port
        self._name = f"http://{host}:{port}" if sock is None else f"socket {sock.getsockname()}"

    @property
    def name(self) -> str:
        return self._name

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        factory = self._guard.protocol_factory(self._runner)
        if self._sock is not None:
            self._server = await loop.create_server(factory, sock=self._sock,
                                                    backlog=self._backlog)
        else:
            self._server = await loop.create_server(factory, self._host, self._port,
                                                    backlog=self._backlog)

    @property
    def port(self) -> int:
        """The port listened on (useful after ``port=0``)."""
        assert isinstance(self._server, asyncio.Server)
        port: int = self._server.sockets[0].getsockname()[1]
        return port


class BodyTimeout(Exception):
    """The body did not arrive within the deadline."""


class BodyIncomplete(Exception):
    """The client hung up, or broke the body's framing, before the body was complete."""


async def read_body(request: web.BaseRequest, limit: int, timeout: float) -> bytes:
    """The request's body, whole, or its first ``limit + 1`` bytes if it is longer (so
    that the caller can refuse it as too large); :class:`BodyTimeout` if it does not
    arrive within ``timeout`` seconds, :class:`BodyIncomplete` if the client hangs up
    or sends a broken chunked encoding first."""
    body = bytearray()
    try:
        async with asyncio.timeout(timeout):
            while len(body) <= limit:
                chunk = await request.content.read(limit + 1 - len(body))
                if not chunk:
                    break
                body += chunk
    except TimeoutError:
        raise BodyTimeout(f"no complete body within {timeout:g} s") from None
    except (ConnectionError, web.RequestPayloadError) as exc:
        raise BodyIncomplete(str(exc) or type(exc).__name__) from None
    return bytes(body)
