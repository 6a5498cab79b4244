"""One trace-replay load generator of ``phalanx bench --trace``.

``python -m phalanx.bench.trace_loadgen --config C --trace FILE --part I --parts K
--clients N --out REPORT``: replays the transfers of the trace's senders assigned to part
``I`` (:func:`~phalanx.bench.trace.partition`: all of a sender's transfers go to one
part, so its nonces stay in order; parts balanced by transfers), with
``N`` clients sharing one connection per replica. Line protocol with the bench, as
:mod:`phalanx.bench.loadgen`: it signs everything first (outside the measured window),
writes ``ready <txs>``, reads ``{"start": t}``, replays, and writes its report once every
transfer is answered (or stdin says ``stop``), then ``done``.

Order: transfers go out in trace order, except that a sender has at most
``sender_window`` transfers in flight (a wallet pipelining its nonces: they travel in
order over the one connection to the primary, which orders them as they arrive); with
``--speedup X`` a transfer is not sent before ``start + (its timestamp - first) / X``.
A client's request carries the next ``--bundle`` such transfers (one bundle op; a
transfer's latency is its bundle's); ``--multicast`` sends every request to all
replicas at once.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import sys
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any

from phalanx.bench.loadgen import cpu_seconds, read_line, write_json_atomically
from phalanx.bench.results import LatencyHistogram
from phalanx.bench.trace import TraceTx, load_trace, partition, sign
from phalanx.config import load
from phalanx.ledger.block import APPLIED
from phalanx.ledger.state import Ledger, decode_bundle_result, decode_result
from phalanx.ledger.tx import encode_bundle
from phalanx.runtime import run
from phalanx.runtime.client import ClientRunner
from phalanx.runtime.cluster_client import open_clients

RETRANSMIT_TIMEOUT_S = 5.0


class Replayer:
    """Feeds ``runners`` with signed transfers under the ordering rules above, up to
    ``bundle`` of them per request (one op: a single transfer or a bundle)."""

    def __init__(self, items: list[tuple[TraceTx, bytes]], runners: list[ClientRunner],
                 sender_window: int, speedup: float | None, bundle: int = 1) -> None:
        self.queues: dict[str, deque[tuple[TraceTx, bytes]]] = {}
        for tx, raw in items:
            self.queues.setdefault(tx.sender, deque()).append((tx, raw))
        self.inflight: Counter[str] = Counter()
        self.heap: list[tuple[int, str]] = [(q[0][0].index, s) for s, q in self.queues.items()]
        heapq.heapify(self.heap)
        self.queued = set(self.queues)
        self.idle = list(runners)
        self.window = sender_window
        self.speedup = speedup
        self.bundle = bundle
        stamps = [tx.timestamp for tx, _ in items if tx.timestamp is not None]
        self.t0 = min(stamps) if stamps else 0.0
        self.remaining = len(items)
        self.histogram = LatencyHistogram()
        self.committed = 0
        self.rejected: Counter[str] = Counter()
        self.first_submit: float | None = None
        self.last_done: float | None = None
        self.start_wall = 0.0
        self.finished = asyncio.Event()
        self._wake: asyncio.TimerHandle | None = None
        if not items:
            self.finished.set()

    def start(self) -> None:
        self.start_wall = time.time()
        self.pump()

    def _due(self, tx: TraceTx) -> float:
        if self.speedup is None or tx.timestamp is None:
            return 0.0
        return self.start_wall + (tx.timestamp - self.t0) / self.speedup

    def _take(self, now: float) -> tuple[str, bytes] | None:
        """The next transfer in trace order whose sender has room and which is due."""
        heap = self.heap
        if not heap:
            return None
        _index, sender = heap[0]
        queue = self.queues[sender]
        tx, raw = queue[0]
        due = self._due(tx)
        if due > now:
            if self._wake is None:
                loop = asyncio.get_running_loop()
                self._wake = loop.call_later(due - now, self.pump)
            return None
        heapq.heappop(heap)
        self.queued.discard(sender)
        queue.popleft()
        self.inflight[sender] += 1
        if queue and self.inflight[sender] < self.window:
            heapq.heappush(heap, (queue[0][0].index, sender))
            self.queued.add(sender)
        return sender, raw

    def pump(self) -> None:
        self._wake = None
        idle = self.idle
        while idle:
            now = time.time()
            taken: list[tuple[str, bytes]] = []
            while len(taken) < self.bundle and (item := self._take(now)) is not None:
                taken.append(item)
            if not taken:
                return
            runner = idle.pop()
            sent = time.perf_counter()
            if self.first_submit is None:
                self.first_submit = now
            senders = [sender for sender, _ in taken]
            op = taken[0][1] if len(taken) == 1 else encode_bundle([raw for _, raw in taken])

            def done(result: bytes | None, error: str | None, runner: ClientRunner = runner,
                     senders: list[str] = senders, sent: float = sent) -> None:
                self._done(runner, senders, sent, result, error)

            runner.submit(op, done)

    def _done(self, runner: ClientRunner, senders: list[str], sent: float,
              result: bytes | None, error: str | None) -> None:
        latency_us = (time.perf_counter() - sent) * 1e6
        if error is not None or result is None:
            self.rejected["admission:" + (error or "no result")] += len(senders)
        else:
            outcomes = ([decode_result(result)] if len(senders) == 1
                        else decode_bundle_result(result))
            for outcome in outcomes:
                if outcome.status == APPLIED:
                    self.committed += 1
                    self.histogram.record_us(latency_us)
                else:
                    self.rejected[outcome.reason] += 1
        self.last_done = time.time()
        self.remaining -= len(senders)
        for sender in senders:
            self.inflight[sender] -= 1
            queue = self.queues[sender]
            if queue and sender not in self.queued and self.inflight[sender] < self.window:
                heapq.heappush(self.heap, (queue[0][0].index, sender))
                self.queued.add(sender)
        self.idle.append(runner)
        if self.remaining == 0:
            self.finished.set()
        elif self._wake is None:
            self.pump()


async def replay(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    config = load(args.config)
    chain_id = Ledger(config.genesis).chain_id
    trace = load_trace(args.trace, args.limit)
    owner = partition(trace, args.parts)
    mine = [tx for tx in trace.txs if owner[tx.sender] == args.part]
    items = [(tx, sign(tx, chain_id)) for tx in mine]  # before the measured window
    # A wallet waits patiently: a retransmission goes to every replica, which all
    # re-check it, adding load exactly when the cluster is already slow.
    mux, runners = await open_clients(config, args.clients, connect_timeout=30.0,
                                      retransmit_timeout=RETRANSMIT_TIMEOUT_S,
                                      multicast=args.multicast)
    try:
        print(f"ready {len(items)}", flush=True)
        line = await read_line(reader)
        if not line or line == "stop":
            return 0
        start = float(json.loads(line)["start"])
        replayer = Replayer(items, runners, args.sender_window, args.speedup, args.bundle)
        await asyncio.sleep(max(0.0, start - time.time()))
        cpu_start = cpu_seconds()
        replayer.start()
        stop = asyncio.create_task(_wait_stop(reader))
        finished = asyncio.create_task(replayer.finished.wait())
        await asyncio.wait([stop, finished], return_when=asyncio.FIRST_COMPLETED)
        cpu = cpu_seconds() - cpu_start
        report: dict[str, Any] = {
            "txs": len(items),
            "answered": len(items) - replayer.remaining,
            "committed": replayer.committed,
            "rejected": dict(replayer.rejected),
            "histogram": replayer.histogram.to_json(),
            "first_submit": replayer.first_submit,
            "last_done": replayer.last_done,
            "cpu_s": cpu,
        }
        write_json_atomically(report, Path(args.out))
        print("done", flush=True)
        if not stop.done():
            await stop  # the bench says stop once it has read every report
        finished.cancel()
        return 0
    finally:
        await mux.close()


async def _wait_stop(reader: asyncio.StreamReader) -> None:
    while (await read_line(reader)) not in ("stop", ""):
        pass


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m phalanx.bench.trace_loadgen")
    p.add_argument("--config", required=True)
    p.add_argument("--trace", required=True)
    p.add_argument("--part", type=int, required=True)
    p.add_argument("--parts", type=int, required=True)
    p.add_argument("--clients", type=int, required=True)
    p.add_argument("--sender-window", type=int, default=128)
    p.add_argument("--bundle", type=int, default=1)
    p.add_argument("--multicast", action="store_true")
    p.add_argument("--speedup", type=float, default=None)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    return run(replay(args))


if __name__ == "__main__":
    sys.exit(main())
