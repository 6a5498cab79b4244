"""HTTP endpoints every replica serves: ``/status``, ``/metrics`` and ``/log``.

``/status`` is the operator's view (and what ``phalanx bench`` reads for per-node CPU,
bytes and safety checks); ``/metrics`` is Prometheus text; ``/log`` returns the digests
of recently executed sequence numbers so that tools can compare replicas' logs.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from phalanx.runtime.metrics import Metrics
from phalanx.runtime.node import ReplicaDriver

MAX_LOG_RANGE = 10_000


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
            raise web.HTTPBadRequest(text="first and last must be integers") from None
        if last < first or last - first >= MAX_LOG_RANGE:
            raise web.HTTPBadRequest(text=f"need first <= last and at most {MAX_LOG_RANGE} seqs")
        digests = driver.executed_digests(first, last)
        return web.json_response({str(seq): d.hex() for seq, d in digests.items()})

    @web.middleware
    async def count_refusals(request: web.Request, handler: Any) -> web.StreamResponse:
        # Refusals raised rather than returned — an unknown path (404), a wrong method
        # (405), bad /log arguments (400) — are counted like the API's own refusals, so
        # that no refused request goes uncounted (the hostile-input harness checks it).
        try:
            return await handler(request)  # type: ignore[no-any-return]
        except web.HTTPException as exc:
            if exc.status >= 400:
                metrics.inc(f"api_rejected:http_{exc.status}")
            raise

    app = web.Application(client_max_size=1 << 16, middlewares=[count_refusals])
    app.router.add_get("/status", status)
    app.router.add_get("/metrics", prometheus)
    app.router.add_get("/log", executed_log)
    return app
