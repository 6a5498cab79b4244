"""``phalanx bench sweep``: one bench run per point of a grid, then a CSV, plots and an
HTML report of the whole sweep.

The grid is protocols x committee sizes x loads (closed-loop client counts, or open-loop
rates with ``--rates``). Every point is a complete ``phalanx bench`` run (fresh cluster,
warm-up, measured window, safety check) whose results JSON is kept in
``OUT/points/``; ``OUT/sweep.csv`` has one row per point, ``OUT/*.png`` the
throughput-latency curves and ``OUT/report.html`` all of it with each point's bottleneck
verdict. Points run one after the other, so they share the machine only with whatever
else runs on it (see each row's ``host_cpu_busy``).
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from phalanx.bench.report import SweepReport
from phalanx.bench.results import to_json


def int_list(text: str) -> list[int]:
    """``"1,8,32"`` -> ``[1, 8, 32]`` (each at least 1)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return values


def float_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}") from None
    if not values or any(not v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return values


def add_arguments(p: argparse.ArgumentParser, protocols: list[str]) -> None:
    """The options of ``phalanx bench sweep`` (those of one run, with lists for the grid)."""
    p.add_argument("--protocols", default="pbft",
                   help=f"comma-separated protocols ({', '.join(protocols)})")
    p.add_argument("--n", type=int_list, default=[4],
                   help="committee sizes, e.g. 4,7 (default: 4)")
    p.add_argument("--clients", type=int_list, default=[1, 8, 32, 128],
                   help="closed-loop client counts (the pool size with --rates; default: "
                        "1,8,32,128)")
    p.add_argument("--rates", type=float_list, default=None,
                   help="open-loop rates in tx/s instead of closed-loop client counts "
                        "(the pool is the largest --clients value; default: closed loop)")
    p.add_argument("--payload", type=int, default=512, help="request payload bytes")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per point")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    p.add_argument("--client-procs", type=int, default=2, help="load-generator processes")
    p.add_argument("--max-batch", "--batch-size", dest="max_batch", type=int, default=None,
                   help="most requests per batch (default: the [pbft] default)")
    p.add_argument("--batch-delay-ms", type=int, default=None,
                   help="ms the primary may wait for a batch to fill (default: the [pbft] "
                        "default)")
    p.add_argument("--durability", choices=("fsync", "process"), default="fsync",
                   help="the replicas' write durability (see 'phalanx node --help')")
    p.add_argument("--wan", help="RTT matrix CSV (default: loopback as it is)")
    p.add_argument("--regions", help="comma-separated regions (replicas, then load "
                                     "generators; default: none)")
    p.add_argument("--bandwidth", help="egress cap per replica, e.g. 100Mbit (default: no cap)")
    p.add_argument("--netns", action="store_true",
                   help="root: the kernel does the WAN (see phalanx bench --netns)")
    p.add_argument("--burn-us-per-op", type=float, default=0.0,
                   help="execution cost per op in CPU µs")
    p.add_argument("--title", default=None, help="the report's title (default: from the grid)")
    p.add_argument("--out", default="sweep", help="output directory")
    p.add_argument("--report-only", action="store_true",
                   help="run nothing: rewrite OUT's CSV, plot and HTML from OUT/points/*.json "
                        "(verdicts re-judged under the current rules)")
    p.add_argument("--base-port", type=int, default=17000,
                   help="replica ports from here, then their HTTP ports")


def points(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The grid, in run order: protocol, then n, then increasing load."""
    grid = []
    for proto in [p.strip() for p in args.protocols.split(",") if p.strip()]:
        for n in args.n:
            if args.rates:
                pool = max(args.clients)
                grid += [{"protocol": proto, "n": n, "clients": pool, "rate": r}
                         for r in args.rates]
            else:
                grid += [{"protocol": proto, "n": n, "clients": c, "rate": None}
                         for c in args.clients]
    return grid


def run_args(args: argparse.Namespace, point: dict[str, Any]) -> argparse.Namespace:
    """The ``phalanx bench`` namespace of one point."""
    one = copy.copy(args)
    one.protocol = point["protocol"]
    one.n = point["n"]
    one.clients = point["clients"]
    one.rate = point["rate"]
    one.f = None
    one.max_inflight = None
    one.checkpoint_interval = None
    one.connection_per_client = False
    one.kill_primary_at = None
    one.keys_per_client = 64
    one.no_accounting = False
    one.progress = False
    one.json = None
    one.dir = None
    return one


def point_name(point: dict[str, Any]) -> str:
    load = f"rate{point['rate']:g}" if point["rate"] else f"c{point['clients']}"
    return f"{point['protocol']}-n{point['n']}-{load}"


def run_sweep(args: argparse.Namespace) -> int:
    """Run every point, write the CSV, the plots and the HTML report; 0 iff every point
    was safe and committed something."""
    from phalanx.bench.run import BenchError, measure
    from phalanx.runtime import run

    out = Path(args.out)
    if getattr(args, "report_only", False):
        if not list(out.glob("points/*.json")):
            print(f"phalanx bench sweep: no {out / 'points'}/*.json to report", file=sys.stderr)
            return 1
        SweepReport.from_points(args.title or _default_title(args), out).write()
        print(f"rewrote {out / 'sweep.csv'}, {out / 'report.html'} and plots", file=sys.stderr)
        return 0
    (out / "points").mkdir(parents=True, exist_ok=True)
    report = SweepReport(args.title or _default_title(args), out)
    ok = True
    grid = points(args)
    try:
        for index, point in enumerate(grid, 1):
            name = point_name(point)
            print(f"[{index}/{len(grid)}] {name} ...", file=sys.stderr, flush=True)
            one = run_args(args, point)
            workdir = Path(tempfile.mkdtemp(prefix="phalanx-sweep-"))
            try:
                results = run(measure(one, workdir))
            except BenchError as exc:
                print(f"  failed: {exc}", file=sys.stderr)
                ok = False
                continue
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
            (out / "points" / f"{name}.json").write_text(to_json(results) + "\n")
            report.add(point, results)
            safe = results["safety"]["state_roots_equal"] and results["safety"]["logs_consistent"]
            ok = ok and safe and results["committed_tx"] > 0
            print(f"  {results['throughput_tps']:,.0f} tx/s, p50 {results['latency_ms']['p50']} ms,"
                  f" bottleneck {results['bottleneck']['verdict']}", file=sys.stderr, flush=True)
    finally:
        # Whatever stopped the sweep (Ctrl-C, a crash), the points run so far are
        # reported.
        report.write()
    print(f"wrote {out / 'sweep.csv'}, {out / 'report.html'} and plots", file=sys.stderr)
    return 0 if ok else 1


def _default_title(args: argparse.Namespace) -> str:
    where = f"WAN {Path(args.wan).parent.name} {args.regions}" if args.wan else "loopback"
    return f"{args.protocols} on {where}, {args.payload} B payloads"


def load_points(out: str | Path) -> list[dict[str, Any]]:
    """The results JSON of every point a sweep left in ``out/points``."""
    return [json.loads(p.read_text()) for p in sorted(Path(out, "points").glob("*.json"))]
