"""``phalanx reliability crash|hostile|soak``: the three harnesses' command line."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any


def _pair(text: str) -> tuple[float, float]:
    """``"1.0:3.0"`` -> (1.0, 3.0): a range of seconds."""
    try:
        low, high = (float(x) for x in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW:HIGH seconds, got {text!r}") from None
    if not 0 <= low <= high:
        raise argparse.ArgumentTypeError(f"need 0 <= LOW <= HIGH, got {text!r}")
    return low, high


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="reliability_command", required=True)

    c = sub.add_parser("crash", help="crash torture: SIGKILL/restart and power-cut cycles "
                                     "under a ledger load; every acknowledged transfer checked")
    c.add_argument("--n", type=int, default=4, help="replicas (n >= 7 kills two at once)")
    c.add_argument("--cycles", type=int, default=30, help="kill/restart cycles (the campaign: "
                                                          "1000)")
    c.add_argument("--wallets", type=int, default=32, help="load wallets, one transfer in "
                                                           "flight each")
    c.add_argument("--sdk-wallets", type=int, default=2,
                   help="of which this many use the HTTP API and the SDK")
    c.add_argument("--seed", type=int, default=1, help="the wallets' keys and transfers, and "
                                                      "every random choice of the torture")
    c.add_argument("--power-loss", type=float, default=0.5,
                   help="share of cycles that are power cuts inside the store's durability "
                        "windows rather than SIGKILLs at a random instant")
    c.add_argument("--cluster-cut-every", type=int, default=25,
                   help="every K-th cycle cuts the whole cluster's power (0: never)")
    c.add_argument("--primary-bias", type=float, default=0.5,
                   help="chance that a cycle's (first) victim is the current primary")
    c.add_argument("--double-kill", type=float, default=0.5,
                   help="n >= 7: chance that a cycle kills two replicas at once")
    c.add_argument("--up", type=_pair, default=(1.0, 3.0), metavar="LOW:HIGH",
                   help="seconds the cluster runs whole before a kill")
    c.add_argument("--down", type=_pair, default=(0.0, 1.5), metavar="LOW:HIGH",
                   help="seconds a victim stays down")
    c.add_argument("--checkpoint-interval", type=int, default=64,
                   help="slots between checkpoints (small: GC and state transfer often)")
    c.add_argument("--wal-bytes", type=int, default=1 << 20,
                   help="the replicas' log file size (small: generations apply often)")
    c.add_argument("--fault", choices=("lose-acked", "diverge", "drop-record"),
                   action="append", default=[],
                   help="plant a bug the checks must catch (the harness's self-test; "
                        "repeatable): lose-acked = stores skip fdatasync and every cycle "
                        "cuts the whole cluster's power; diverge = the last replica "
                        "executes wrongly; drop-record = replica 1 loses tx index records")
    c.add_argument("--dir", default=None, help="work directory (default: a temp dir)")
    c.add_argument("--json", default=None, help="write the report here")
    c.set_defaults(reliability=_crash)
    _add_hostile(sub)
    _add_soak(sub)


def _add_hostile(sub: Any) -> None:
    h = sub.add_parser("hostile", help="hostile input: malformed and adversarial frames and "
                                       "HTTP requests against a live, loaded cluster")
    h.add_argument("--n", type=int, default=4, help="replicas")
    h.add_argument("--seed", type=int, default=1, help="the generated garbage and the load")
    h.add_argument("--frames", type=int, default=50_000,
                   help="frames to send in all (the campaign: 1,000,000)")
    h.add_argument("--http", type=int, default=5_000,
                   help="HTTP requests to send in all (the campaign: 100,000)")
    h.add_argument("--wallets", type=int, default=16, help="the background ledger load")
    h.add_argument("--concurrency", type=int, default=8, help="attackers at once")
    h.add_argument("--slowloris", type=int, default=200,
                   help="connections of each slow-loris attack (handshake, HTTP)")
    h.add_argument("--fat-slowloris", type=int, default=20,
                   help="authenticated links that each hold a partial 16 MiB frame")
    h.add_argument("--partial-mib", type=float, default=1.0,
                   help="MiB of it each such link sends before stalling")
    h.add_argument("--rss-limit-mib", type=float, default=128.0,
                   help="a replica's anonymous RSS may exceed its baseline by this much")
    h.add_argument("--hold", type=float, default=15.0,
                   help="seconds the slow-loris connections hold on at most (the replicas "
                        "cut them first: the HTTP head and client frame deadlines are 10 s)")
    h.add_argument("--dir", default=None, help="work directory (default: a temp dir)")
    h.add_argument("--json", default=None, help="write the report here")
    h.set_defaults(reliability=_hostile)


def _hostile(args: argparse.Namespace) -> int:
    from rich.console import Console

    from phalanx.reliability.hostile import HostileSpec, run_hostile_command

    spec = HostileSpec(
        workdir=_workdir(args, "phalanx-hostile-"), n=args.n, seed=args.seed,
        frames=args.frames, http_requests=args.http, wallets=args.wallets,
        concurrency=args.concurrency, slowloris=args.slowloris,
        fat_slowloris=args.fat_slowloris, partial_mib=args.partial_mib,
        rss_limit_mib=args.rss_limit_mib, hold_s=args.hold,
    )
    return run_hostile_command(spec, args.json, Console())


def _add_soak(sub: Any) -> None:
    s = sub.add_parser("soak", help="soak: a long open-loop load at a share of saturation, "
                                    "view changes on a schedule; RSS, disk, p99 plotted")
    s.add_argument("--n", type=int, default=4, help="replicas")
    s.add_argument("--duration", type=float, default=3600.0, help="seconds of soak")
    s.add_argument("--load", type=float, default=0.7,
                   help="share of the measured saturated throughput to offer")
    s.add_argument("--saturation", type=float, default=None, metavar="TPS",
                   help="skip the measurement: the saturated throughput is TPS")
    s.add_argument("--saturation-duration", type=float, default=20.0,
                   help="seconds of the closed-loop bench that measures saturation")
    s.add_argument("--view-change-every", type=float, default=300.0, metavar="SECONDS",
                   help="seconds between view changes")
    s.add_argument("--view-change", choices=("stop", "kill"), default="stop",
                   help="stop: SIGSTOP the primary, SIGCONT it later; kill: SIGKILL it and "
                        "restart it")
    s.add_argument("--stop", type=float, default=4.0,
                   help="seconds the primary stays stopped (or down)")
    s.add_argument("--interval", type=float, default=10.0, help="seconds between samples")
    s.add_argument("--warmup", type=float, default=60.0,
                   help="seconds left out of the first-third baselines")
    s.add_argument("--clients", type=int, default=64, help="requests in flight at most")
    s.add_argument("--client-procs", type=int, default=2, help="load-generator processes")
    s.add_argument("--dir", default=None, help="work directory (default: a temp dir)")
    s.add_argument("--json", default=None, help="write the report here")
    s.add_argument("--png", default=None, help="write the plot here")
    s.set_defaults(reliability=_soak)


def _soak(args: argparse.Namespace) -> int:
    from rich.console import Console

    from phalanx.reliability.soak import SoakSpec, run_soak_command

    spec = SoakSpec(
        workdir=_workdir(args, "phalanx-soak-"), n=args.n, duration_s=args.duration,
        load=args.load, saturation_tps=args.saturation,
        saturation_duration_s=args.saturation_duration,
        view_change_every_s=args.view_change_every, view_change=args.view_change,
        stop_s=args.stop, interval_s=args.interval, warmup_s=args.warmup,
        clients=args.clients, client_procs=args.client_procs,
    )
    return run_soak_command(spec, args.json, args.png, Console())


def _workdir(args: argparse.Namespace, prefix: str) -> Path:
    path = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix=prefix))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _crash(args: argparse.Namespace) -> int:
    from rich.console import Console

    from phalanx.reliability.crash import CrashSpec, run_crash_command

    spec = CrashSpec(
        workdir=_workdir(args, "phalanx-crash-"), n=args.n, cycles=args.cycles,
        wallets=args.wallets, sdk_wallets=args.sdk_wallets, seed=args.seed,
        power_loss=args.power_loss, cluster_cut_every=args.cluster_cut_every,
        primary_bias=args.primary_bias, double_kill=args.double_kill, up_s=args.up,
        down_s=args.down, checkpoint_interval=args.checkpoint_interval,
        wal_bytes=args.wal_bytes, faults=tuple(args.fault),
    )
    return run_crash_command(spec, args.json, Console())


def run(args: argparse.Namespace) -> int:
    return int(args.reliability(args))
