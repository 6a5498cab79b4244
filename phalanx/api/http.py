"""HTTP endpoints every replica serves: ``/status``, ``/metrics`` and ``/log``.

``/status`` is the operator's view (and what ``phalanx bench`` reads for per-node CPU,
bytes and safety checks); ``/metrics`` is Prometheus text; ``/log`` returns the digests
of recently executed sequence numbers so that tools can compare replicas' logs.

Every error answer, of these routes and of any other (an unknown endpoint, a wrong
method, a body too large), is JSON ``{"error": reason, "detail": text}`` with a 4xx (or
500) status, counted in ``phalanx_api_rejected{type=<reason>}``.
"""

from __future__ import annotations

import logging
import os
import resource
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from phalanx.runtime.metrics import Metrics
from phalanx.runtime.node import ReplicaDriver

MAX_LOG_RANGE = 10_000

log = logging.getLogger("phalanx.api")

# aiohttp's own refusals (no route, wrong method, ...) -> our reason strings.
_REASONS = {
    400: "bad_request",
    404: "unknown_endpoint",
    405: "method_not_allowed",
    413: "body_too_large",
}


def json_error(metrics: Metrics, status: int, reason: str, detail: str,
               headers: dict[str, str] | None = None) -> web.Response:
    """The JSON refusal every endpoint gives, counted by reason."""
    metrics.inc("api_rejected:" + reason)
    return web.json_response({"error": reason, "detail": detail}, status=status,
                             headers=headers)


def json_errors(metrics: Metrics) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Middleware: aiohttp's plain-text errors become JSON refusals, and an exception
    in a handler a 500 JSON answer (logged) instead of a bare traceback page."""

    @web.middleware
    async def middleware(
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise  # redirects and the like are answers, not errors
            reason = _REASONS.get(exc.status, f"http_{exc.status}")
            detail = exc.reason
            headers = None
            if isinstance(exc, web.HTTPNotFound):
                detail = f"no endpoint {request.path}"
            elif isinstance(exc, web.HTTPMethodNotAllowed):
                allowed = ", ".join(sorted(exc.allowed_methods))
                detail = f"{request.method} is not allowed on {request.path}; use {allowed}"
                headers = {"Allow": allowed}
            elif exc.text and not exc.text.startswith(f"{exc.status}:"):
                detail = exc.text  # a handler's own message
            return json_error(metrics, exc.status, reason, detail, headers)
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            return json_error(metrics, 500, "internal_error",
                              "the replica failed to answer; see its log")

    return middleware


def process_stats() -> dict[str, float]:
    """CPU seconds and memory of this process (Linux: current RSS from /proc)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    rss = 0
    try:
        with open("/proc/self/statm") as f:
            rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        pass
    return {
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "rss_bytes": rss,
        "peak_rss_bytes": usage.ru_maxrss * 1024,
    }


def make_app(
    driver: ReplicaDriver, metrics: Metrics, describe: Callable[[], dict[str, Any]]
) -> web.Application:
    started = time.time()

    async def status(_: web.Request) -> web.Response:
        body = driver.status()
        body.update(describe())
        body.update(process_stats())
        snapshot = metrics.snapshot()
        body["uptime_s"] = time.time() - started
        body["bytes_sent"] = snapshot.get("bytes_out", 0)
        body["bytes_recv"] = snapshot.get("bytes_in", 0)
        body["msgs_sent"] = snapshot.get("msgs_sent", 0)
        body["dropped"] = {k[8:]: v for k, v in snapshot.items() if k.startswith("dropped_")}
        if driver.accounting is not None:
            body["accounting"] = driver.accounting.snapshot()
        return web.json_response(body)

    async def prometheus(_: web.Request) -> web.Response:
        stats = process_stats()
        metrics.set("process_cpu_seconds", stats["cpu_s"])
        metrics.set("process_rss_bytes", stats["rss_bytes"])
        if driver.accounting is not None:
            driver.accounting.export(metrics)
        return web.Response(text=metrics.render_prometheus(), content_type="text/plain")

    async def executed_log(request: web.Request) -> web.Response:
        try:
            first = int(request.query.get("first", "1"))
            last = int(request.query.get("last", str(first + 999)))
        except ValueError:
            return json_error(metrics, 400, "bad_range", "first and last must be integers")
        if last < first or last - first >= MAX_LOG_RANGE:
            return json_error(metrics, 400, "bad_range",
                              f"need first <= last and at most {MAX_LOG_RANGE} seqs")
        digests = driver.executed_digests(first, last)
        return web.json_response({str(seq): d.hex() for seq, d in digests.items()})

    app = web.Application(client_max_size=1 << 16, middlewares=[json_errors(metrics)])
    app.router.add_get("/status", status)
    app.router.add_get("/metrics", prometheus)
    app.router.add_get("/log", executed_log)
    return app
