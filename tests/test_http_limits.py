"""The HTTP port's own limits (phalanx/api/limits.py), on a real socket: what aiohttp
refuses before the API sees it is counted; a connection cap; a deadline for a request's
head (slow-loris) and for an idle keep-alive connection; honest requests unharmed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from phalanx.api.http import json_errors
from phalanx.api.limits import GuardedSite, HttpGuard, HttpLimits
from phalanx.reliability.http_attacks import RAW_REQUESTS
from phalanx.runtime.metrics import Metrics

FAST = HttpLimits(max_connections=8, header_timeout_s=0.5, idle_timeout_s=0.5)
BOUND = 10.0  # no read waits this long unless what the test checks is broken
HONEST = b"GET /status HTTP/1.1\r\nHost: replica\r\n\r\n"
NOT_HTTP = [r for r in RAW_REQUESTS if r.strip()]
"""The hostile harness's raw requests but the blank lines (a parser skips those and
waits for a request: the head deadline's case)."""


@contextlib.asynccontextmanager
async def serving(limits: HttpLimits = FAST) -> AsyncIterator[tuple[int, Metrics]]:
    """An application with the API's error middleware behind an HttpGuard, as a replica
    serves it; yields its port and metrics."""
    metrics = Metrics("0")

    async def status(_: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def slow(_: web.Request) -> web.Response:
        await asyncio.sleep(2 * limits.header_timeout_s)
        return web.json_response({"ok": True})

    app = web.Application(middlewares=[json_errors(metrics)])
    app.router.add_get("/status", status)
    app.router.add_get("/slow", slow)
    guard = HttpGuard(metrics, limits)
    guard.install(app)
    runner = web.AppRunner(app, **guard.runner_options())
    await runner.setup()
    site = GuardedSite(runner, guard, host="127.0.0.1", port=0)
    await site.start()
    try:
        yield site.port, metrics
    finally:
        await runner.cleanup()


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def status_of(reader: asyncio.StreamReader) -> int:
    """The status of the next answer on the connection (0: closed without one); reads
    the whole answer."""
    line = await asyncio.wait_for(reader.readline(), BOUND)
    parts = line.split()
    if len(parts) < 2:
        return 0
    length = 0
    while (header := await asyncio.wait_for(reader.readline(), BOUND)) not in (b"\r\n", b""):
        name, _, value = header.decode().partition(":")
        if name.lower() == "content-length":
            length = int(value)
    await asyncio.wait_for(reader.readexactly(length), BOUND)
    return int(parts[1])


async def ask(port: int, data: bytes) -> int:
    reader, writer = await connect(port)
    try:
        writer.write(data)
        return await status_of(reader)
    finally:
        writer.close()


def rejected(metrics: Metrics) -> dict[str, float]:
    return {k.split(":", 1)[1]: v for k, v in metrics.snapshot().items()
            if k.startswith("api_rejected:")}


def test_requests_that_are_not_http_are_answered_400_and_counted_as_malformed_http() -> None:
    async def scenario() -> None:
        async with serving() as (port, metrics):
            statuses = [await ask(port, data) for data in NOT_HTTP]
            assert statuses == [400] * len(NOT_HTTP)
            assert rejected(metrics) == {"malformed_http": len(NOT_HTTP)}
            # Requests aiohttp parses are the application's to count, not ours.
            assert await ask(port, HONEST) == 200
            assert await ask(port, b"GET /nope HTTP/1.1\r\nHost: r\r\n\r\n") == 404
            assert rejected(metrics) == {"malformed_http": len(NOT_HTTP),
                                         "unknown_endpoint": 1}

    asyncio.run(scenario())


def test_unparseable_requests_do_not_write_a_traceback_to_the_log(caplog) -> None:
    async def scenario() -> None:
        async with serving() as (port, metrics):
            for data in NOT_HTTP:
                await ask(port, data)
            assert metrics.get("api_rejected:malformed_http") == len(NOT_HTTP)

    with caplog.at_level(logging.DEBUG):
        asyncio.run(scenario())
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_a_slow_loris_head_is_cut_with_408_at_the_header_timeout_and_counted() -> None:
    head = b"POST /tx HTTP/1.1\r\nHost: replica\r\nContent-Type: application/json\r\n"

    async def scenario() -> tuple[int, int, dict[str, float]]:
        async with serving() as (port, metrics):
            reader, writer = await connect(port)
            answer = asyncio.create_task(status_of(reader))
            sent = 0
            while not answer.done() and sent < len(head):
                writer.write(head[sent:sent + 1])
                sent += 1
                await asyncio.sleep(0.05)
            status = await answer
            writer.close()
            return status, sent, rejected(metrics)

    status, sent, counted = asyncio.run(scenario())
    assert status == 408
    assert sent < 70  # cut before it finished its head (0.5 s at 20 bytes/s)
    assert counted == {"header_timeout": 1}


def test_a_connection_that_sends_nothing_is_cut_at_the_header_timeout() -> None:
    async def scenario() -> tuple[int, dict[str, float]]:
        async with serving() as (port, metrics):
            reader, writer = await connect(port)
            status = await status_of(reader)
            writer.close()
            return status, rejected(metrics)

    assert asyncio.run(scenario()) == (408, {"header_timeout": 1})


def test_a_head_split_over_packets_within_the_deadline_is_served() -> None:
    async def scenario() -> tuple[int, dict[str, float]]:
        async with serving() as (port, metrics):
            reader, writer = await connect(port)
            for at in range(0, len(HONEST), 8):
                writer.write(HONEST[at:at + 8])
                await asyncio.sleep(0.01)
            status = await status_of(reader)
            writer.close()
            return status, rejected(metrics)

    assert asyncio.run(scenario()) == (200, {})


def test_the_head_deadline_is_per_request_not_per_connection_nor_the_handlers_time() -> None:
    async def scenario() -> tuple[list[int], dict[str, float], float]:
        async with serving() as (port, metrics):
            reader, writer = await connect(port)
            statuses = []
            # Requests on one keep-alive connection for three header timeouts in all, and
            # a handler that takes two: none of it is a slow head.
            for _ in range(6):
                writer.write(HONEST)
                statuses.append(await status_of(reader))
                await asyncio.sleep(FAST.header_timeout_s / 4)
            writer.write(b"GET /slow HTTP/1.1\r\nHost: replica\r\n\r\n")
            statuses.append(await status_of(reader))
            writer.close()
            return statuses, rejected(metrics), metrics.get("http_idle_closed")

    statuses, counted, idle = asyncio.run(scenario())
    assert statuses == [200] * 7
    assert counted == {} and idle == 0


def test_the_rest_of_a_body_answered_before_it_arrived_is_not_taken_for_a_slow_head(
) -> None:
    limits = HttpLimits(header_timeout_s=0.5, idle_timeout_s=5.0)

    async def scenario() -> tuple[list[int], dict[str, float]]:
        async with serving(limits) as (port, metrics):
            reader, writer = await connect(port)
            # 405 comes before the body; the client sends it all the same, slowly.
            writer.write(b"POST /status HTTP/1.1\r\nHost: replica\r\nContent-Length: 5000"
                         b"\r\n\r\n")
            statuses = [await status_of(reader)]
            for _ in range(5):  # longer than the head deadline in all
                writer.write(b"x" * 1000)
                await asyncio.sleep(limits.header_timeout_s / 3)
            await asyncio.sleep(limits.header_timeout_s / 3)
            writer.write(HONEST)
            statuses.append(await status_of(reader))
            writer.close()
            return statuses, rejected(metrics)

    assert asyncio.run(scenario()) == ([405, 200], {"method_not_allowed": 1})


def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout_not_as_a_refusal(
) -> None:
    async def scenario() -> tuple[int, bytes, dict[str, float], float]:
        async with serving() as (port, metrics):
            reader, writer = await connect(port)
            writer.write(HONEST)
            status = await status_of(reader)
            rest = await asyncio.wait_for(reader.read(), BOUND)  # until the server closes
            writer.close()
            return status, rest, rejected(metrics), metrics.get("http_idle_closed")

    assert asyncio.run(scenario()) == (200, b"", {}, 1)


def test_a_client_hanging_up_mid_head_is_counted_as_an_incomplete_request() -> None:
    async def scenario() -> dict[str, float]:
        async with serving() as (port, metrics):
            reader, writer = await connect(port)
            writer.write(b"GET /status HTTP/1.1\r\nHost: re")
            await writer.drain()
            writer.close()
            await writer.wait_closed()
            for _ in range(100):
                if rejected(metrics):
                    break
                await asyncio.sleep(0.01)
            # An honest client closing an idle connection is no refusal.
            reader, writer = await connect(port)
            writer.write(HONEST)
            await status_of(reader)
            writer.close()
            await writer.wait_closed()
            await asyncio.sleep(0.1)
            return rejected(metrics)

    assert asyncio.run(scenario()) == {"incomplete_request": 1}


def test_connections_beyond_the_cap_get_503_and_are_counted_and_honest_ones_are_served(
) -> None:
    limits = HttpLimits(max_connections=3, header_timeout_s=5.0, idle_timeout_s=5.0)

    async def scenario() -> None:
        async with serving(limits) as (port, metrics):
            held = [await connect(port) for _ in range(3)]
            await asyncio.sleep(0.05)
            assert metrics.get("http_connections") == 3
            assert await ask(port, HONEST) == 503
            assert rejected(metrics) == {"too_many_connections": 1}
            # The held connections are served, and a freed slot takes a new connection.
            reader, writer = held.pop()
            writer.write(HONEST)
            assert await status_of(reader) == 200
            writer.close()
            await writer.wait_closed()
            await asyncio.sleep(0.05)
            assert await ask(port, HONEST) == 200
            for _, writer in held:
                writer.close()

    asyncio.run(scenario())


def test_an_honest_request_is_answered_while_slow_loris_connections_hold_their_heads(
) -> None:
    limits = HttpLimits(max_connections=64, header_timeout_s=5.0, idle_timeout_s=5.0)

    async def scenario() -> list[int]:
        async with serving(limits) as (port, _metrics):
            slow = [await connect(port) for _ in range(40)]
            for _, writer in slow:
                writer.write(b"GET /status HTTP/1.1\r\nHo")
            statuses = [await ask(port, HONEST) for _ in range(5)]
            for _, writer in slow:
                writer.close()
            return statuses

    assert asyncio.run(scenario()) == [200] * 5


def test_at_the_cap_a_new_connection_replaces_the_longest_idle_one() -> None:
    limits = HttpLimits(max_connections=3, header_timeout_s=5.0, idle_timeout_s=5.0)

    async def scenario() -> None:
        async with serving(limits) as (port, metrics):
            pooled = []
            for _ in range(3):  # a client's pool: each served once, then kept open
                reader, writer = await connect(port)
                writer.write(HONEST)
                assert await status_of(reader) == 200
                pooled.append((reader, writer))
            assert await ask(port, HONEST) == 200
            assert metrics.get("http_idle_closed") == 1 and rejected(metrics) == {}
            oldest = pooled[0][0]
            assert await asyncio.wait_for(oldest.read(), BOUND) == b""  # closed
            # The newer pooled connections still serve.
            reader, writer = pooled[2]
            writer.write(HONEST)
            assert await status_of(reader) == 200
            for _, writer in pooled:
                writer.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("bad", [
    {"max_connections": 0}, {"header_timeout_s": 0}, {"idle_timeout_s": -1.0}])
def test_limits_refuse_values_that_would_disable_the_port(bad) -> None:
    with pytest.raises(ValueError):
        HttpLimits(**bad)
