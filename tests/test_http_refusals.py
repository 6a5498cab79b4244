"""Every refused HTTP request is counted (found by the hostile-input harness: unknown
paths, wrong methods and bad /log arguments were answered 404/405/400 by aiohttp without
any counter moving)."""

from __future__ import annotations

import asyncio

from aiohttp.test_utils import TestClient, TestServer
from test_wire_fuzz import _replica, _Wire

from phalanx.api.http import make_app
from phalanx.runtime.metrics import Metrics
from phalanx.runtime.node import ReplicaDriver


def test_refusals_raised_by_the_router_and_handlers_are_counted_by_status() -> None:
    replica, _ = _replica()
    metrics = Metrics(1)
    driver = ReplicaDriver(replica, _Wire(), None, metrics)  # type: ignore[arg-type]
    app = make_app(driver, metrics, lambda: {"protocol": "pbft", "n": 4})

    async def main() -> None:
        async with TestClient(TestServer(app)) as client:
            for method, path, status in (("GET", "/nowhere", 404), ("PUT", "/status", 405),
                                         ("GET", "/log?first=x", 400),
                                         ("GET", "/log?first=5&last=1", 400),
                                         ("GET", "/status", 200)):
                response = await client.request(method, path)
                await response.read()
                assert response.status == status, (method, path)

    asyncio.run(main())
    assert metrics.get("api_rejected:http_404") == 1
    assert metrics.get("api_rejected:http_405") == 1
    assert metrics.get("api_rejected:http_400") == 2
