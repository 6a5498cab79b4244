"""The per-replica HTTP API (aiohttp) and Prometheus metrics."""
