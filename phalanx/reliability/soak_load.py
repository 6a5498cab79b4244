"""The soak's load: ``phalanx bench``'s open-loop clients, reporting every interval.

Run by the soak harness as ``python -m phalanx.reliability.soak_load --config C --clients
K --rate R --interval S``. It connects its clients (one shared connection per replica),
prints ``ready``, and on the line ``go`` starts offering ``R`` requests per second
(:class:`~phalanx.bench.loadgen.OpenLoop`: arrivals on a clock, latency measured from
the arrival, so queueing shows). Every ``S`` seconds it prints one JSON line: the
interval's end (wall clock), completions, failures by reason, the arrivals still waiting
for a free client, and the latency histogram
(:class:`~phalanx.bench.results.LatencyHistogram`, mergeable across processes). It
stops on ``stop`` or at the end of its standard input.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time

from phalanx.bench.loadgen import OpenLoop, OpenLoopClient, read_line
from phalanx.bench.results import LatencyHistogram
from phalanx.config import load
from phalanx.runtime import run
from phalanx.runtime.cluster_client import open_clients


class IntervalRecorder:
    """What :class:`OpenLoopClient` reports to, cut into intervals."""

    def __init__(self) -> None:
        self.histogram = LatencyHistogram()
        self.completed_count = 0
        self.errors: dict[str, int] = {}

    def completed(self, done_wall: float, latency_s: float) -> None:
        self.completed_count += 1
        self.histogram.record_us(latency_s * 1e6)

    def failed(self, reason: str) -> None:
        self.errors[reason] = self.errors.get(reason, 0) + 1

    def cut(self, now: float, backlog: int) -> str:
        """The interval ending ``now`` as a JSON line; starts the next one."""
        line = json.dumps({"t": now, "completed": self.completed_count, "errors": self.errors,
                           "backlog": backlog, "histogram": self.histogram.to_json()})
        self.histogram, self.completed_count, self.errors = LatencyHistogram(), 0, {}
        return line


async def report(recorder: IntervalRecorder, open_loop: OpenLoop, interval: float) -> None:
    next_cut = time.time() + interval
    while True:
        await asyncio.sleep(max(0.0, next_cut - time.time()))
        print(recorder.cut(next_cut, len(open_loop.backlog)), flush=True)
        next_cut += interval


async def generate(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    mux, runners = await open_clients(load(args.config), args.clients, connect_timeout=30.0)
    try:
        recorder = IntervalRecorder()
        clients = [OpenLoopClient(r, args.first_client + i, args.keys_per_client,
                                  args.payload, recorder)
                   for i, r in enumerate(runners)]
        open_loop = OpenLoop(clients, args.rate, recorder)
        print(f"ready {len(runners)}", flush=True)
        if await read_line(reader) != "go":
            return 0
        open_loop.start()
        reporter = asyncio.create_task(report(recorder, open_loop, args.interval))
        while (await read_line(reader)) not in ("stop", ""):
            pass
        open_loop.stop()
        for client in clients:
            client.stop()
        reporter.cancel()
        return 0
    finally:
        await mux.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m phalanx.reliability.soak_load",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--clients", type=int, default=32, help="requests in flight at most")
    p.add_argument("--first-client", type=int, default=0)
    p.add_argument("--rate", type=float, required=True, help="requests per second")
    p.add_argument("--payload", type=int, default=512)
    p.add_argument("--keys-per-client", type=int, default=64)
    p.add_argument("--interval", type=float, default=10.0)
    args = p.parse_args(argv)
    if args.clients < 1 or args.rate <= 0 or args.interval <= 0:
        print("error: clients >= 1, rate > 0 and interval > 0 needed", flush=True)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s soak-load %(message)s")
    return run(generate(args))


if __name__ == "__main__":
    sys.exit(main())
