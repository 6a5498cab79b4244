"""One load-generator process of ``phalanx bench``: closed-loop clients on one event loop.

Started by the bench as ``python -m phalanx.bench.loadgen --config ... --clients K
--first-client I --payload P --out FILE``; it talks to the bench over its standard
streams, one line at a time:

1. it connects ``K`` clients (one :class:`~phalanx.runtime.client.ClientRunner` each) and
   writes ``ready K`` to stdout (``error <text>`` and exit status 1 if it cannot);
2. it reads one JSON line ``{"start": t, "window_start": ws, "window_end": we}`` (wall
   clock, seconds): every client starts its loop at ``t``; requests *completed* inside
   ``[ws, we)`` are counted and their latencies recorded;
3. the clients keep the load on past ``we`` until stdin says ``stop`` (or closes, so a
   dead bench never leaves a load generator behind); then it writes its
   :class:`~phalanx.bench.results.LoadgenReport` to ``--out`` as JSON and exits 0.

Client ``c`` writes ``Put`` ops over its own ``keys_per_client`` keys in turn, so the
replicated state stays bounded however long the run; each value is ``payload`` bytes and
starts with a counter, so every write really changes the state.

With ``--rate R`` the load is open-loop instead: requests *arrive* every ``1/R`` seconds
whether or not earlier ones finished, and are handed to an idle client (``--clients``
is then the most requests in flight); an arrival that finds none waits in a backlog.
Latency is measured from the arrival, not from when a client became free, so a
saturated system shows its queueing delay instead of hiding it (no coordinated
omission).

With ``--wan PLAN --wan-index K`` the process sits in its region of the WAN plan: its
requests and the replies it receives are delayed by the links' one-way times.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import resource
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from phalanx.bench.results import LatencyHistogram, LoadgenReport
from phalanx.config import load
from phalanx.runtime import run
from phalanx.runtime.client import ClientMux, ClientRunner
from phalanx.runtime.cluster_client import open_client, open_clients
from phalanx.runtime.wan import WanPlan
from phalanx.statemachine.kv import Err, decode_result, encode_put

log = logging.getLogger("phalanx.bench.loadgen")

TIMELINE_BIN_S = 0.1
CONNECT_TIMEOUT_S = 30.0
ERROR_BACKOFF_S = 0.05  # after an unexpected failure, so a broken link is not a hot loop


def cpu_seconds() -> float:
    """User plus system CPU time of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True, slots=True)
class Window:
    """The shared measurement window, wall-clock seconds."""

    start: float  # when the clients begin (warm-up precedes the window)
    window_start: float
    window_end: float


class Outcomes(Protocol):
    """What a load client reports each request's end to: :class:`Recorder` here, the
    soak's interval recorder there."""

    def completed(self, done_wall: float, latency_s: float) -> None: ...

    def failed(self, reason: str) -> None: ...


@dataclass(slots=True)
class Recorder:
    """Completions of all clients of this process that fall inside the window."""

    window: Window
    histogram: LatencyHistogram = field(default_factory=LatencyHistogram)
    timeline: list[int] = field(default_factory=list)
    committed: int = 0
    completed_total: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        span = self.window.window_end - self.window.window_start
        self.timeline = [0] * max(1, math.ceil(span / TIMELINE_BIN_S - 1e-9))

    def completed(self, done_wall: float, latency_s: float) -> None:
        self.completed_total += 1
        w = self.window
        if w.window_start <= done_wall < w.window_end:
            self.committed += 1
            self.histogram.record_us(latency_s * 1e6)
            slot = min(int((done_wall - w.window_start) / TIMELINE_BIN_S), len(self.timeline) - 1)
            self.timeline[slot] += 1

    def failed(self, reason: str) -> None:
        self.errors[reason] = self.errors.get(reason, 0) + 1


class ClosedLoopClient:
    """One closed-loop client: submit, and when the result comes, submit the next.

    Callback-driven (no task and no future per request): in a benchmark the load
    generator shares the CPU with the replicas, so its cost per request matters."""

    def __init__(
        self,
        runner: ClientRunner,
        client_index: int,
        keys_per_client: int,
        payload: int,
        recorder: Outcomes,
    ) -> None:
        self.runner = runner
        self.keys = [f"c{client_index:06d}-k{k:04d}".encode() for k in range(keys_per_client)]
        self.filler = os.urandom(payload)
        self.payload = payload
        self.recorder = recorder
        # Wall time from the monotonic clock: one syscall per completion, immune to clock
        # steps while measuring latency.
        self.wall_offset = time.time() - time.perf_counter()
        self.counter = 0
        self.sent = 0.0
        self.stopped = False

    def start(self) -> None:
        self._next()

    def stop(self) -> None:
        self.stopped = True

    def _next(self) -> None:
        self._submit(time.perf_counter())

    def _submit(self, started: float) -> None:
        """Submit the next op; its latency counts from ``started`` (perf_counter)."""
        if self.stopped:
            return
        counter = self.counter
        self.counter += 1
        payload = self.payload
        value = (counter.to_bytes(8, "big") + self.filler)[:payload] if payload else b""
        op = encode_put(self.keys[counter % len(self.keys)], value)
        self.sent = started
        try:
            self.runner.submit(op, self._done)
        except (OSError, RuntimeError, ValueError) as exc:
            self.recorder.failed(type(exc).__name__)
            asyncio.get_running_loop().call_later(ERROR_BACKOFF_S, self._next)

    def _done(self, raw: bytes | None, error: str | None) -> None:
        done = time.perf_counter()
        if error is not None or raw is None:
            self.recorder.failed(error or "no result")
        else:
            result = decode_result(raw)
            if isinstance(result, Err):
                self.recorder.failed(result.reason)
            else:
                self.recorder.completed(done + self.wall_offset, done - self.sent)
        self._next()


class OpenLoopClient(ClosedLoopClient):
    """A client of the open-loop pool: it submits when the pool hands it an arrival and
    returns to the pool when the request finishes."""

    pool: OpenLoop

    def start(self) -> None:
        self.pool.free(self)

    def issue(self, arrival: float) -> None:
        self._submit(arrival)

    def _next(self) -> None:
        # Called after each completion (and after a failed submit's back-off).
        if not self.stopped:
            self.pool.free(self)


class OpenLoop:
    """Arrivals at a fixed ``rate`` (requests per second), served by a pool of clients."""

    TICK_S = 0.001
    MAX_BACKLOG = 1_000_000  # arrivals beyond this are counted, not kept

    def __init__(self, clients: list[OpenLoopClient], rate: float, recorder: Outcomes) -> None:
        if not rate > 0:
            raise ValueError("rate must be > 0")
        self.clients = clients
        self.rate = rate
        self.recorder = recorder
        self.idle: deque[OpenLoopClient] = deque()
        self.backlog: deque[float] = deque()
        self.arrivals = 0
        self.max_backlog = 0
        self.t0 = 0.0
        self.stopped = False
        for client in clients:
            client.pool = self

    def start(self) -> None:
        self.t0 = time.perf_counter()
        for client in self.clients:
            client.start()
        self._tick()

    def stop(self) -> None:
        self.stopped = True

    def free(self, client: OpenLoopClient) -> None:
        if self.backlog:
            client.issue(self.backlog.popleft())
        else:
            self.idle.append(client)

    def _tick(self) -> None:
        if self.stopped:
            return
        due = int((time.perf_counter() - self.t0) * self.rate)
        while self.arrivals < due:
            arrival = self.t0 + self.arrivals / self.rate
            self.arrivals += 1
            if self.idle:
                self.idle.popleft().issue(arrival)
            elif len(self.backlog) < self.MAX_BACKLOG:
                self.backlog.append(arrival)
            else:
                self.recorder.failed("backlog_full")
        self.max_backlog = max(self.max_backlog, len(self.backlog))
        asyncio.get_running_loop().call_later(self.TICK_S, self._tick)


async def read_line(reader: asyncio.StreamReader) -> str:
    """One line of the bench's commands on stdin ("" at end of input)."""
    return (await reader.readline()).decode().strip()


async def sample_window_cpu(window: Window, samples: dict[str, float]) -> None:
    """CPU time at the window's start and end (what the load cost during the window)."""
    await asyncio.sleep(max(0.0, window.window_start - time.time()))
    samples["start"] = cpu_seconds()
    await asyncio.sleep(max(0.0, window.window_end - time.time()))
    samples["end"] = cpu_seconds()


def recorder_report(
    recorder: Recorder, clients: int, window_cpu_s: float, total_cpu_s: float
) -> LoadgenReport:
    """The report a load generator hands the bench: its window's completions and CPU."""
    return LoadgenReport(
        clients=clients,
        committed=recorder.committed,
        histogram=recorder.histogram,
        timeline=recorder.timeline,
        bin_s=TIMELINE_BIN_S,
        errors=recorder.errors,
        completed_total=recorder.completed_total,
        window_cpu_s=window_cpu_s,
        total_cpu_s=total_cpu_s,
    )


def write_json_atomically(doc: Any, path: Path) -> None:
    """Write ``doc`` as JSON through a temporary file: the bench never reads half of it."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


async def generate(args: argparse.Namespace) -> int:
    """Connect, report ready, run the load until told to stop, write the report."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    config = load(args.config)
    runners: list[ClientRunner] = []
    mux: ClientMux | None = None
    try:
        try:
            if args.shared_connection:
                mux, runners = await open_clients(
                    config, args.clients, connect_timeout=CONNECT_TIMEOUT_S
                )
            else:
                runners = list(
                    await asyncio.gather(
                        *(open_client(config, connect_timeout=CONNECT_TIMEOUT_S)
                          for _ in range(args.clients))
                    )
                )
        except (TimeoutError, OSError) as exc:
            print(f"error cannot connect clients: {exc}", flush=True)
            return 1
        if args.wan:
            # Connected first (handshakes are not what we measure), then shaped.
            plan = WanPlan.load(args.wan)
            transports = {id(r.transport): r.transport for r in runners}
            for transport in transports.values():
                transport.shaper = plan.loadgen_shaper(args.wan_index)
        print(f"ready {len(runners)}", flush=True)

        line = await read_line(reader)
        if not line or line == "stop":
            return 0
        spec = json.loads(line)
        window = Window(
            float(spec["start"]), float(spec["window_start"]), float(spec["window_end"])
        )
        recorder = Recorder(window)
        cpu: dict[str, float] = {}
        client_args = (args.keys_per_client, args.payload, recorder)
        clients: Sequence[ClosedLoopClient]
        open_loop: OpenLoop | None = None
        if args.rate:
            pool = [OpenLoopClient(r, args.first_client + i, *client_args)
                    for i, r in enumerate(runners)]
            open_loop = OpenLoop(pool, args.rate, recorder)
            clients = pool
        else:
            clients = [ClosedLoopClient(r, args.first_client + i, *client_args)
                       for i, r in enumerate(runners)]
        await asyncio.sleep(max(0.0, window.start - time.time()))
        if open_loop is not None:
            open_loop.start()
        else:
            for client in clients:
                client.start()
        sampler = asyncio.create_task(sample_window_cpu(window, cpu))
        while (await read_line(reader)) not in ("stop", ""):
            pass  # anything else on stdin is ignored
        sampler.cancel()
        now_cpu = cpu_seconds()
        for client in clients:
            client.stop()
        if open_loop is not None:
            open_loop.stop()
            recorder.errors["open_loop_max_backlog"] = open_loop.max_backlog
        await asyncio.gather(sampler, return_exceptions=True)
        report = recorder_report(recorder, len(runners),
                                 cpu.get("end", now_cpu) - cpu.get("start", now_cpu),
                                 cpu_seconds())
        write_json_atomically(report.to_json(), Path(args.out))
        return 0
    finally:
        if mux is not None:
            await mux.close()
        else:
            await asyncio.gather(*(r.close() for r in runners), return_exceptions=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m phalanx.bench.loadgen", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="cluster.toml")
    p.add_argument("--clients", type=int, required=True, help="closed-loop clients to run")
    p.add_argument("--first-client", type=int, default=0, help="index of the first client")
    p.add_argument("--payload", type=int, default=512, help="value bytes per Put")
    p.add_argument("--keys-per-client", type=int, default=64)
    p.add_argument("--out", required=True, help="where to write the JSON report")
    p.add_argument("--rate", type=float, default=None,
                   help="open loop: requests per second from this process (default: closed "
                        "loop)")
    p.add_argument("--wan", help="WAN plan JSON (see phalanx.runtime.wan)")
    p.add_argument("--wan-index", type=int, default=0, help="this process's place in the plan")
    p.add_argument("--connection-per-client", dest="shared_connection", action="store_false",
                   help="one connection per client and replica (default: the clients of a "
                        "process share one connection per replica)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.clients < 1 or args.keys_per_client < 1 or args.payload < 0:
        print("error clients and keys-per-client must be positive, payload >= 0", flush=True)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s loadgen %(message)s")
    return run(generate(args))


if __name__ == "__main__":
    sys.exit(main())
