"""One load-generator process for an etcd cluster: closed-loop clients over etcd's v3
HTTP/JSON gateway, with phalanx's window accounting.

``python -m bench.peers.etcd_loadgen --endpoints URL,... --clients K --first-client I
--payload P --out FILE`` speaks the line protocol of :mod:`phalanx.bench.loadgen`
(``ready K``, one JSON window line, ``stop``) and writes the same
:class:`~phalanx.bench.results.LoadgenReport`; completions are counted by the same
:class:`~phalanx.bench.loadgen.Recorder`. The load has phalanx's shape too: client ``c``
puts to its own ``keys_per_client`` keys in turn (``c000012-k0003``), each value ``payload``
bytes starting with a counter, one request outstanding per client.

Client ``c`` talks to member ``c mod len(endpoints)`` (as ``etcd benchmark`` spreads its
clients over ``--endpoints``); a follower forwards the proposal to the leader. A put is
done when the member answers 200 with a response header: etcd answers a put only once
it is committed by a majority and applied. Connections are HTTP/1.1 keep-alive, one per
outstanding client, kept open for the whole run.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import time
from pathlib import Path

import aiohttp

from phalanx.bench.loadgen import (
    Recorder,
    Window,
    cpu_seconds,
    read_line,
    recorder_report,
    sample_window_cpu,
    write_json_atomically,
)
from phalanx.runtime import run

ERROR_BACKOFF_S = 0.05
REQUEST_TIMEOUT_S = 30.0


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class EtcdClient:
    """One closed-loop client: put, wait for the answer, put the next."""

    def __init__(self, session: aiohttp.ClientSession, endpoint: str, client_index: int,
                 keys_per_client: int, payload: int, recorder: Recorder) -> None:
        self.session = session
        self.url = endpoint.rstrip("/") + "/v3/kv/put"
        # Keys and the random filler are encoded once; only the counter changes per put.
        self.keys = [b64(f"c{client_index:06d}-k{k:04d}".encode())
                     for k in range(keys_per_client)]
        self.filler = os.urandom(payload)
        self.payload = payload
        self.recorder = recorder
        self.wall_offset = time.time() - time.perf_counter()

    def body(self, counter: int) -> bytes:
        value = (counter.to_bytes(8, "big") + self.filler)[: self.payload]
        return json.dumps(
            {"key": self.keys[counter % len(self.keys)], "value": b64(value)}
        ).encode()

    async def run(self, stopped: asyncio.Event) -> None:
        counter = 0
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        headers = {"Content-Type": "application/json"}
        while not stopped.is_set():
            data = self.body(counter)
            counter += 1
            sent = time.perf_counter()
            try:
                async with self.session.post(self.url, data=data, headers=headers,
                                             timeout=timeout) as response:
                    answer = await response.read()
                    status = response.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.recorder.failed(type(exc).__name__)
                await asyncio.sleep(ERROR_BACKOFF_S)
                continue
            done = time.perf_counter()
            if status == 200 and b'"header"' in answer:
                self.recorder.completed(done + self.wall_offset, done - sent)
            else:
                self.recorder.failed(f"http {status}: {answer[:120].decode(errors='replace')}")


async def _warm_connections(session: aiohttp.ClientSession, endpoints: list[str],
                            clients: int) -> None:
    """Open every client's connection before the window (a GET /health each), so the
    measured sockets exist from start to end."""
    per = [endpoints[i % len(endpoints)] for i in range(clients)]

    async def one(endpoint: str) -> None:
        async with session.get(endpoint.rstrip("/") + "/health",
                               timeout=aiohttp.ClientTimeout(total=10)) as response:
            await response.read()
            if response.status != 200:
                raise aiohttp.ClientError(f"{endpoint}/health answered {response.status}")

    await asyncio.gather(*(one(e) for e in per))


async def generate(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    endpoints = [e for e in args.endpoints.split(",") if e]
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=3600)
    async with aiohttp.ClientSession(connector=connector) as session:
        try:
            await _warm_connections(session, endpoints, args.clients)
        except (aiohttp.ClientError, TimeoutError) as exc:
            print(f"error cannot reach etcd: {exc}", flush=True)
            return 1
        print(f"ready {args.clients}", flush=True)
        line = await read_line(reader)
        if not line or line == "stop":
            return 0
        spec = json.loads(line)
        window = Window(float(spec["start"]), float(spec["window_start"]),
                        float(spec["window_end"]))
        recorder = Recorder(window)
        clients = [
            EtcdClient(session, endpoints[(args.first_client + i) % len(endpoints)],
                       args.first_client + i, args.keys_per_client, args.payload, recorder)
            for i in range(args.clients)
        ]
        stopped = asyncio.Event()
        cpu: dict[str, float] = {}
        await asyncio.sleep(max(0.0, window.start - time.time()))
        tasks = [asyncio.create_task(c.run(stopped)) for c in clients]
        sampler = asyncio.create_task(sample_window_cpu(window, cpu))
        while (await read_line(reader)) not in ("stop", ""):
            pass
        now_cpu = cpu_seconds()
        stopped.set()
        sampler.cancel()
        await asyncio.gather(*tasks, sampler, return_exceptions=True)
    report = recorder_report(recorder, args.clients,
                             cpu.get("end", now_cpu) - cpu.get("start", now_cpu), cpu_seconds())
    write_json_atomically(report.to_json(), Path(args.out))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.peers.etcd_loadgen", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--endpoints", required=True, help="comma-separated client URLs")
    p.add_argument("--clients", type=int, required=True)
    p.add_argument("--first-client", type=int, default=0)
    p.add_argument("--payload", type=int, default=512)
    p.add_argument("--keys-per-client", type=int, default=64)
    p.add_argument("--out", required=True)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.clients < 1 or args.keys_per_client < 1 or args.payload < 0:
        print("error clients and keys-per-client must be positive, payload >= 0", flush=True)
        return 2
    return run(generate(args))


if __name__ == "__main__":
    sys.exit(main())
