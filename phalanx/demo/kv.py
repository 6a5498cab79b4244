"""``phalanx demo --app kv``: four PBFT replica processes run the key-value store;
``--clients`` closed-loop clients PUT ``--payload``-byte values over ``--keys`` keys for
``--duration`` seconds, and halfway through the primary is SIGKILLed: the others change
view and carry on. The killed replica then restarts from its data directory and must
catch up, with no new requests, to the same executed seq and state root as the others.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from typing import Any

from phalanx.cluster import ClusterError, LocalCluster
from phalanx.demo.load import LoadLog, view_change
from phalanx.measure.percentile import percentile
from phalanx.runtime import run
from phalanx.runtime.client import RequestFailed
from phalanx.runtime.cluster_client import open_client
from phalanx.statemachine.kv import encode_put


async def _client_loop(
    client: Any, index: int, stopping: asyncio.Event, log: LoadLog, payload: int, keys: int,
    request_timeout: float,
) -> None:
    rng = random.Random(index)
    count = 0
    while not stopping.is_set():
        key = f"key-{rng.randrange(keys):05d}".encode()
        value = f"client {index} request {count} ".encode().ljust(payload, b".")[:payload]
        count += 1
        begin = time.perf_counter()
        try:
            await asyncio.wait_for(client.request(encode_put(key, value)), request_timeout)
        except TimeoutError:
            # The client core still holds the abandoned request, so this client is done.
            log.timeouts += 1
            return
        except RequestFailed as exc:
            log.reject(getattr(exc, "reason", type(exc).__name__))
            continue
        done = time.perf_counter()
        log.completions.append((done, done - begin))


async def _demo_load(
    cluster: LocalCluster, clients: int, duration: float, payload: int, keys: int,
    console: Any,
) -> LoadLog:
    runners = await asyncio.gather(*(open_client(cluster.config) for _ in range(clients)))
    log = LoadLog()
    stopping = asyncio.Event()
    try:
        log.started = time.perf_counter()
        tasks = [
            asyncio.create_task(
                _client_loop(c, i, stopping, log, payload, keys, request_timeout=20.0)
            )
            for i, c in enumerate(runners)
        ]
        await asyncio.sleep(duration / 2)
        before = len(log.completions)
        cluster.kill(0)
        log.kill_at = time.perf_counter()
        console.print(
            f"  t={log.kill_at - log.started:4.1f}s  SIGKILL replica 0 (the primary) after "
            f"{before} commits", highlight=False,
        )
        await asyncio.sleep(duration / 2)
        stopping.set()
        log.ended = time.perf_counter()
        # Requests in flight finish on their own (or time out inside their loop).
        await asyncio.wait(tasks, timeout=25.0)
        for task in tasks:
            task.cancel()
    finally:
        await asyncio.gather(*(c.close() for c in runners), return_exceptions=True)
    return log


def run_kv_demo(args: argparse.Namespace) -> int:
    """``phalanx demo --app kv``; 0 iff every check passed."""
    from rich.console import Console

    console = Console()
    with (
        tempfile.TemporaryDirectory(prefix="phalanx-demo-") as tmp,
        LocalCluster(tmp, 4) as cluster,
    ):
        try:
            ok = _demo(console, cluster, args, tmp)
        except (ClusterError, TimeoutError) as exc:
            console.print(f"[red]demo FAILED: {exc}[/red]", highlight=False, soft_wrap=True)
            ok = False
    return 0 if ok else 1


def _demo(console: Any, cluster: LocalCluster, args: argparse.Namespace, tmp: str) -> bool:
    t0 = time.perf_counter()
    console.print(f"starting 4 pbft replicas in {tmp} ...", highlight=False)
    cluster.start()
    console.print(
        f"  ready in {time.perf_counter() - t0:.1f}s; {args.clients} clients, "
        f"{args.duration:g}s of {args.payload}-byte PUTs over {args.keys} keys",
        highlight=False,
    )
    log = run(_demo_load(cluster, args.clients, args.duration, args.payload, args.keys, console))
    survivors = {i: cluster.status(i) for i in (1, 2, 3)}
    console.print("restarting replica 0 from its data directory ...")
    t_restart = time.perf_counter()
    cluster.restart(0)
    # No new requests: the restarted replica must catch up on its own (log recovery,
    # then fetching committed slots or a checkpoint's state from the others).
    seq, root = cluster.wait_converged(timeout=30.0)
    caught_up = time.perf_counter() - t_restart
    final = {i: cluster.status(i) for i in range(cluster.n)}
    return _report(console, args, log, survivors, final, seq, root, caught_up)


def _report(
    console: Any, args: argparse.Namespace, log: LoadLog, survivors: dict[int, Any],
    final: dict[int, Any], seq: int, root: str, caught_up: float,
) -> bool:
    from rich.table import Table

    assert log.kill_at is not None
    latencies = log.latencies()
    committed = len(latencies)
    elapsed = log.ended - log.started
    resumed, after_view_change = view_change(log)
    table = Table(title="load", show_header=False)
    table.add_column(justify="left")
    table.add_column(justify="right")
    rows = [
        ("clients", str(args.clients)),
        ("duration", f"{elapsed:.1f} s"),
        ("committed requests", str(committed)),
        ("throughput", f"{committed / elapsed:,.0f} req/s" if elapsed > 0 else "-"),
        ("latency p50", f"{1000 * percentile(latencies, 50):.1f} ms" if latencies else "-"),
        ("latency p99", f"{1000 * percentile(latencies, 99):.1f} ms" if latencies else "-"),
        ("refused / timed out", f"{sum(log.rejected.values())} / {log.timeouts}"),
    ]
    for row in rows:
        table.add_row(*row)
    console.print(table)

    views = sorted({s.get("view") for s in survivors.values()})
    primaries = sorted({s.get("primary") for s in survivors.values()})
    continued = after_view_change > 0 and all(v is not None and v >= 1 for v in views)
    mark = "[green]yes[/green]" if continued else "[red]NO[/red]"
    pause = f"{resumed:.2f} s after the kill" if resumed is not None else "never"
    console.print(
        f"primary crash: survivors moved to view {views} with primary {primaries}; "
        f"commits resumed {pause}; {after_view_change} commits after the view change: "
        f"{mark}", highlight=False,
    )

    table = Table(title=f"after restarting replica 0 (caught up in {caught_up:.1f} s)")
    for column in ("replica", "view", "executed seq", "state root", "equal"):
        table.add_column(column)
    roots_equal = True
    for i, s in sorted(final.items()):
        same = s.get("executed_seq") == seq and s.get("state_root") == root
        roots_equal &= same
        table.add_row(
            str(i), str(s.get("view")), str(s.get("executed_seq")),
            str(s.get("state_root"))[:16] + "...",
            "[green]yes[/green]" if same else "[red]NO[/red]",
        )
    console.print(table)
    ok = continued and roots_equal and committed > 0
    console.print("[green]demo ok[/green]" if ok else "[red]demo FAILED[/red]")
    return ok
