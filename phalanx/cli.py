"""The ``phalanx`` command: keygen, node, up, client, bench, sim, fuzz, demo, reliability."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from phalanx.protocols.registry import available


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the help says it in words
    already (a computed default such as "(n-1)//3") or the option is a flag."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (
            not action.option_strings or action.nargs == 0 or action.required
            or action.default in (None, argparse.SUPPRESS) or "default" in text
        ):
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """The ``phalanx`` parser: its subcommands' parsers are of this class too, so all
    of them show the defaults (see :class:`DefaultsHelpFormatter`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # ArgumentParser's own
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)


def _pbft_default(option: str) -> str:
    """"(default: N, the [pbft] default)" for a PBFT tunable left unset here."""
    from phalanx.config import default_options

    return f"(default: {default_options('pbft')[option]}, the [pbft] default)"


def _cmd_keygen(args: argparse.Namespace) -> int:
    from phalanx.config import generate_cluster, no_fault_warning

    config = generate_cluster(
        args.out, args.n, f=args.f, protocol=args.protocol, host=args.host,
        base_port=args.base_port, base_http_port=args.base_http_port, overwrite=args.force,
    )
    print(f"wrote {Path(args.out) / 'cluster.toml'} and {config.n} key files (mode 0600): "
          f"protocol={config.protocol} n={config.n} f={config.f}")
    warning = no_fault_warning(config.protocol, config.n, config.f)
    if warning:
        print(f"phalanx keygen: {warning}", file=sys.stderr)
    return 0


def _cmd_node(args: argparse.Namespace) -> int:
    from phalanx.launcher import serve_replica

    return serve_replica(args.config, args.id, args.key, args.data_dir, args.durability,
                         role=args.role, partition=args.partition,
                         accounting=not args.no_accounting, wan_path=args.wan,
                         burn_us_per_op=args.burn_us_per_op)


def _cmd_up(args: argparse.Namespace) -> int:
    from phalanx.cluster import run_up

    return run_up(args)


def _cmd_client(args: argparse.Namespace) -> int:
    if args.client_command in ("transfer", "balance"):
        from phalanx.client.cli import run_ledger_client

        return run_ledger_client(args)
    from phalanx.runtime.client_cli import run_client

    return run_client(args)


def _cmd_bench(args: argparse.Namespace) -> int:
    if getattr(args, "trace", None):
        from phalanx.bench.trace_run import TRACE_CLIENTS, run_trace_bench

        if getattr(args, "netns", False):
            print("phalanx bench: --netns is not supported with --trace", file=sys.stderr)
            return 2
        if args.clients is None:
            args.clients = TRACE_CLIENTS
        return run_trace_bench(args)
    if args.clients is None:
        args.clients = 64
    from phalanx.bench.run import run_bench

    return run_bench(args)


def _cmd_bench_sweep(args: argparse.Namespace) -> int:
    from phalanx.bench.sweep import run_sweep

    return run_sweep(args)


def _cmd_lab(args: argparse.Namespace) -> int:
    from phalanx.bench.lab import run_lab

    return run_lab(args)


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from phalanx.bench.calibrate import CalibrateSpec, calibrate, real_run_command

    real_run = None if args.no_real_run else build_parser().parse_args(
        real_run_command(args.protocol))
    model = calibrate(CalibrateSpec(args.protocol, requests=args.requests, real_run=real_run))
    model.dump(args.out)
    print(f"wrote {args.out}: {len(model.handler)} handler costs, transport send "
          f"{model.transport_send[0] / 1000:.1f} µs + {model.transport_send[1]:.2f} ns/B, "
          f"runtime {model.runtime_per_msg_ns / 1000:.1f} µs per message")
    return 0


def _cmd_sim_costed(args: argparse.Namespace) -> int:
    from phalanx.bench.results import to_json
    from phalanx.bench.simbench import ScaleSpec, run_scale
    from phalanx.bench.summary import render_summary
    from phalanx.runtime.wan import parse_bandwidth
    from phalanx.sim.costmodel import CostModel

    spec = ScaleSpec(
        protocol=args.protocol, n=args.n, clients=args.clients, payload=args.payload,
        warmup=args.warmup, duration=args.duration, seed=args.seed, wan=args.wan,
        regions=tuple(r.strip() for r in args.regions.split(",")) if args.regions else (),
        latency_s=args.latency_ms / 1000,
        bandwidth_bps=parse_bandwidth(args.bandwidth) if args.bandwidth else None,
        host_cores=args.host_cores, client_procs=args.client_procs,
        cpu_share=args.cpu_share,
        checkers=not args.no_checkers, cost_model_name=str(args.cost_model),
    )
    results = run_scale(spec, CostModel.load(args.cost_model))
    render_summary(results)
    if args.json:
        Path(args.json).write_text(to_json(results) + "\n")
    return 0 if results["committed_tx"] > 0 else 1


def _cmd_sim(args: argparse.Namespace) -> int:
    if args.cost_model:
        return _cmd_sim_costed(args)
    from phalanx.simrun import SimSpec, render, run, to_json

    crashes = []
    for item in args.crash:
        parts = item.split(":")
        restart = float(parts[2]) if len(parts) > 2 else None
        crashes.append((int(parts[0]), float(parts[1]), restart))
    spec = SimSpec(
        protocol=args.protocol, n=args.n, f=args.f, seed=args.seed, clients=args.clients,
        requests=args.requests, payload=args.payload, duration=args.duration,
        latency_ms=args.latency_ms, jitter_ms=args.jitter_ms, drop=args.drop,
        duplicate=args.duplicate, reorder_ms=args.reorder_ms, crash=tuple(crashes),
        wan=args.wan, regions=tuple(r.strip() for r in args.regions.split(",")) if args.regions
        else (),
    )
    summary = run(spec)
    print(render(summary))
    if args.json:
        Path(args.json).write_text(to_json(summary) + "\n")
    return 0 if summary["stuck_clients"] == 0 else 1


def _cmd_fuzz(args: argparse.Namespace) -> int:
    from phalanx.byzantine.command import run_fuzz

    return run_fuzz(args)


def _cmd_reliability(args: argparse.Namespace) -> int:
    from phalanx.reliability.command import run

    return run(args)


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.app == "ledger":
        from phalanx.demo.ledger import run_ledger_demo

        return run_ledger_demo(args)
    from phalanx.demo.kv import run_kv_demo

    return run_kv_demo(args)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="phalanx", description="Scalable Byzantine-fault-tolerant state-machine replication."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    protocols = available()

    p = sub.add_parser("keygen", help="write a cluster config and one private key per replica")
    p.add_argument("--n", type=int, default=4, help="number of replicas")
    p.add_argument("--f", type=int, default=None,
                   help="faults tolerated (default: the most n tolerates, (n-1)//3 for pbft)")
    p.add_argument("--protocol", default="pbft", choices=protocols, help="ordering protocol")
    p.add_argument("--out", default="cluster", help="output directory")
    p.add_argument("--host", default="127.0.0.1", help="every replica's host")
    p.add_argument("--base-port", type=int, default=7000,
                   help="replica I listens on BASE_PORT+I")
    p.add_argument("--base-http-port", type=int, default=8000,
                   help="replica I serves its HTTP API on BASE_HTTP_PORT+I")
    p.add_argument("--force", action="store_true", help="overwrite existing key files")
    p.set_defaults(func=_cmd_keygen)

    p = sub.add_parser("node", help="run one replica (or one process of it) of a cluster")
    p.add_argument("--config", required=True, help="the cluster's cluster.toml")
    p.add_argument("--id", type=int, required=True,
                   help="this replica's id in the config (0..n-1)")
    p.add_argument("--role", help="which of the replica's processes, for a protocol that "
                                  "runs a replica as several (default: its front process)")
    p.add_argument("--partition", type=int, default=0,
                   help="the partition of --role (default: 0)")
    p.add_argument("--key", help="private key file (default: beside the config)")
    p.add_argument("--data-dir", help="LMDB data directory, locked while the replica runs "
                                      "(default: data/replica-<id> beside the config; "
                                      "data/replica-<id>-<role>-<partition> for --role)")
    p.add_argument("--durability", choices=("fsync", "process"), default="fsync",
                   help="fsync: writes reach the disk before the replica answers (survives "
                        "power loss); process: they reach the OS page cache (survives the "
                        "replica being killed, not a power loss), several times cheaper")
    p.add_argument("--no-accounting", action="store_true",
                   help="do not measure per-type and per-phase costs (for overhead checks)")
    p.add_argument("--wan", help="WAN plan JSON written by 'phalanx bench --wan' (link "
                                 "delays and bandwidth cap of this replica; default: none)")
    p.add_argument("--burn-us-per-op", type=float, default=0.0,
                   help="make execution cost this many CPU microseconds per op (benchmarks)")
    p.set_defaults(func=_cmd_node)

    p = sub.add_parser("up", help="run a local cluster of N replica processes (Ctrl-C stops)")
    p.add_argument("--n", type=int, default=4,
                   help="replicas of a new cluster (an existing DIR/cluster.toml keeps its own)")
    p.add_argument("--protocol", default="pbft", choices=protocols,
                   help="ordering protocol of a new cluster")
    p.add_argument("--dir", default="cluster", help="config, keys, data and logs directory")
    p.add_argument("--base-port", type=int, default=7000,
                   help="a new cluster's replica I listens on BASE_PORT+I")
    p.add_argument("--base-http-port", type=int, default=8000,
                   help="a new cluster's replica I serves HTTP on BASE_HTTP_PORT+I")
    p.add_argument("--fresh", action="store_true",
                   help="new keys and empty data directories, even if DIR has a cluster")
    p.add_argument("--app", choices=("ledger", "kv"), default="ledger",
                   help="the replicated application of a new cluster (ledger: with a "
                        "funded DIR/faucet.key wallet)")
    p.set_defaults(func=_cmd_up)

    p = sub.add_parser("client", help="talk to a running cluster")
    p.add_argument("--config", default="cluster/cluster.toml", help="the cluster's config")
    p.add_argument("--timeout", type=float, default=10.0,
                   help="seconds to wait for f+1 matching answers")
    csub = p.add_subparsers(dest="client_command", required=True)
    c = csub.add_parser("put", help="key-value: set a key")
    c.add_argument("key", help="the key (text)")
    c.add_argument("value", help="its new value (text)")
    c = csub.add_parser("get", help="key-value: read a key (ordered like every request)")
    c.add_argument("key", help="the key (text)")
    c = csub.add_parser("delete", help="key-value: remove a key")
    c.add_argument("key", help="the key (text)")
    from phalanx.client.cli import add_client_commands, add_wallet_parser

    add_client_commands(csub)
    p.set_defaults(func=_cmd_client)
    add_wallet_parser(sub)

    p = sub.add_parser("bench", help="closed-loop benchmark of a local cluster")
    p.add_argument("--protocol", default="pbft", choices=protocols, help="ordering protocol")
    p.add_argument("--n", type=int, default=4, help="replicas")
    p.add_argument("--clients", type=int, default=None,
                   help="closed-loop clients (default 64; with --trace 32, each with a "
                        "bundle of transfers in flight)")
    p.add_argument("--payload", type=int, default=512, help="request payload bytes")
    p.add_argument("--duration", type=float, default=30.0, help="measured seconds")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring")
    p.add_argument("--client-procs", type=int, default=2,
                   help="load-generator processes (one event loop alone adds latency)")
    p.add_argument("--max-batch", "--batch-size", dest="max_batch", type=int, default=None,
                   help=f"most requests per batch {_pbft_default('max_batch')}")
    p.add_argument("--max-inflight", type=int, default=None,
                   help=f"batches the primary has in flight at once "
                        f"{_pbft_default('max_inflight')}")
    p.add_argument("--checkpoint-interval", type=int, default=None,
                   help=f"seqs between checkpoints {_pbft_default('checkpoint_interval')}")
    p.add_argument("--dir", default=None, help="working directory (default: a temp dir)")
    p.add_argument("--base-port", type=int, default=17000,
                   help="replica ports from here, then their HTTP ports")
    p.add_argument("--json", help="write the results JSON here (default: not written)")
    p.add_argument("--trace", help="ledger mode: replay this transfer CSV (from_address, "
                                   "to_address, value|value_wei|value_raw [, block_timestamp]; "
                                   "default: the key-value workload)")
    p.add_argument("--speedup", type=float, default=None,
                   help="with --trace: pace by the trace's timestamps, X times faster "
                        "(default: as fast as the cluster goes)")
    p.add_argument("--sender-window", type=int, default=128,
                   help="with --trace: transfers of one sender in flight at once")
    p.add_argument("--bundle", type=int, default=None,
                   help="with --trace: most transfers per request, sent as one bundle op "
                        "(default 16; 1 = a request per transfer)")
    p.add_argument("--unicast", action="store_true",
                   help="with --trace: send requests to the primary only (default: to "
                        "every replica, which then verify them while the primary batches)")
    p.add_argument("--trace-limit", type=int, default=None,
                   help="with --trace: replay only the first N rows (default: all)")
    p.add_argument("--durability", choices=("fsync", "process"), default="fsync",
                   help="the replicas' write durability (see 'phalanx node --help')")
    p.add_argument("--connection-per-client", action="store_true",
                   help="every client opens its own connections (default: the clients of a "
                        "load-generator process share one connection per replica)")
    p.add_argument("--nemesis", default=None, metavar="FILE",
                   help="fault schedule (TOML/JSON): SIGKILL/restart, SIGSTOP/SIGCONT, "
                        "partitions, slowed links during the window (docs/testing.md; "
                        "default: no faults)")
    p.add_argument("--kill-primary-at", type=float, default=None,
                   help="SIGKILL replica 0 this many seconds into the measured window "
                        "(default: never)")
    p.add_argument("--keys-per-client", type=int, default=64,
                   help="distinct keys each client writes in turn (bounds the state)")
    p.add_argument("--f", type=int, default=None,
                   help="faults tolerated (default: the most n tolerates, (n-1)//3 for pbft)")
    p.add_argument("--rate", type=float, default=None,
                   help="open loop: offered tx/s in all (--clients is then the pool of "
                        "requests in flight); default: closed loop")
    p.add_argument("--batch-delay-ms", type=int, default=None,
                   help=f"ms the primary may wait for a batch to fill "
                        f"{_pbft_default('batch_delay_ms')}")
    p.add_argument("--fill-wait-ms", type=int, default=None,
                   help="with nothing in flight, ms gaps the primary waits for the last "
                        "batches' clients to be back (default 2; 0: propose at once)")
    p.add_argument("--wan", help="RTT matrix CSV: delay every link by RTT/2 of its regions "
                                 "(default: loopback as it is)")
    p.add_argument("--regions", help="with --wan: comma-separated regions of the replicas "
                                     "(then of the load generators, round-robin; default: "
                                     "none)")
    p.add_argument("--bandwidth", help="egress cap per replica, e.g. 1Gbit, 100Mbit "
                                       "(default: no cap)")
    p.add_argument("--netns", action="store_true",
                   help="root: one network namespace per process, veth pairs and a bridge; "
                        "the kernel (tc netem, htb) applies --wan delays and --bandwidth")
    p.add_argument("--burn-us-per-op", type=float, default=0.0,
                   help="execution cost per op in CPU µs (makes execution the bottleneck)")
    p.add_argument("--no-accounting", action="store_true",
                   help="replicas skip the per-phase accounting (to measure its overhead)")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no live progress display")
    p.set_defaults(func=_cmd_bench)
    bench_sub = p.add_subparsers(dest="bench_command", metavar="{sweep}")
    s = bench_sub.add_parser("sweep", help="a grid of bench runs -> CSV, plots, HTML report")
    from phalanx.bench.sweep import add_arguments as add_sweep_arguments

    add_sweep_arguments(s, protocols)
    s.set_defaults(func=_cmd_bench_sweep)

    p = sub.add_parser("sim", help="a deterministic simulated run; prints committed-log hashes")
    p.add_argument("--protocol", default="pbft", choices=protocols, help="ordering protocol")
    p.add_argument("--n", type=int, default=4, help="replicas")
    p.add_argument("--f", type=int, default=None,
                   help="faults tolerated, which sets the quorum sizes (default (n-1)//3)")
    p.add_argument("--seed", type=int, default=1, help="the run's seed (same seed, same run)")
    p.add_argument("--clients", type=int, default=4, help="closed-loop clients")
    p.add_argument("--requests", type=int, default=50, help="requests per client")
    p.add_argument("--payload", type=int, default=64, help="request payload bytes")
    p.add_argument("--duration", type=float, default=60.0, help="simulated seconds at most")
    p.add_argument("--latency-ms", type=float, default=1.0, help="one-way link latency")
    p.add_argument("--jitter-ms", type=float, default=0.0,
                   help="latency drawn uniformly from LATENCY..LATENCY+JITTER")
    p.add_argument("--drop", type=float, default=0.0, help="probability a message is lost")
    p.add_argument("--duplicate", type=float, default=0.0,
                   help="probability a message is delivered twice")
    p.add_argument("--reorder-ms", type=float, default=0.0,
                   help="extra random delay that reorders messages")
    p.add_argument("--crash", action="append", default=[], metavar="ID:AT[:RESTART_AT]",
                   help="crash replica ID at simulated second AT (and restart it at "
                        "RESTART_AT); repeatable (default: no crash)")
    p.add_argument("--wan", help="RTT matrix CSV (e.g. ../shared/data/latency_*/rtt_matrix_ms.csv;"
                                 " default: --latency-ms on every link)")
    p.add_argument("--regions", help="comma-separated region per replica (with --wan; "
                                     "default: none)")
    p.add_argument("--json", help="also write the summary as JSON (default: not written)")
    p.add_argument("--cost-model", help="calibrated costs (phalanx calibrate): CPU and "
                   "bandwidth become queued resources; reports a bench results object over "
                   "--duration seconds after --warmup, with closed-loop clients (default: "
                   "no cost model, a protocol-level run)")
    p.add_argument("--bandwidth", help="with --cost-model: egress cap per replica, e.g. 1Gbit "
                                       "(default: no cap)")
    p.add_argument("--warmup", type=float, default=1.0,
                   help="with --cost-model: simulated seconds before measuring")
    p.add_argument("--host-cores", type=int, default=None,
                   help="with --cost-model: all nodes share this many cores (default: one "
                        "core per node)")
    p.add_argument("--client-procs", type=int, default=2,
                   help="with --cost-model: load-generator CPUs the clients share")
    p.add_argument("--cpu-share", type=float, default=1.0,
                   help="with --cost-model: share of each core the run gets (the rest is "
                        "other tenants' work, as measured by a bench's host_cpu_busy)")
    p.add_argument("--no-checkers", action="store_true",
                   help="with --cost-model: skip the safety checkers (largest committees)")
    p.set_defaults(func=_cmd_sim)

    p = sub.add_parser("calibrate", help="measure this machine's CPU costs -> cost model JSON")
    p.add_argument("--protocol", default="pbft", choices=protocols, help="ordering protocol")
    p.add_argument("--out", default="cost-model.json", help="where to write the cost model")
    p.add_argument("--requests", type=int, default=20_000,
                   help="requests through the in-process handler measurement")
    p.add_argument("--no-real-run", action="store_true",
                   help="skip the short real bench that measures the runtime's per-message "
                        "overhead")
    p.set_defaults(func=_cmd_calibrate)

    p = sub.add_parser("lab", help="the lab: 'phalanx lab report' regenerates docs/results.md")
    lab_sub = p.add_subparsers(dest="lab_command", required=True)
    r = lab_sub.add_parser("report", help="calibrate, sweep, validate, simulate; write "
                                          "OUT/results.md and OUT/results/")
    r.add_argument("--out", default="docs", help="where results.md and results/ go")
    r.add_argument("--quick", action="store_true", help="fewer points, shorter runs")
    r.add_argument("--skip-measure", action="store_true",
                   help="only rewrite results.md from the JSON already in OUT/results")
    r.set_defaults(func=_cmd_lab)

    p = sub.add_parser("fuzz", help="Byzantine fuzzing in the simulator: seeds, shrunk "
                                    "traces of violations, exact replay of one seed")
    from phalanx.byzantine.command import add_arguments as add_fuzz_arguments

    add_fuzz_arguments(p)
    p.set_defaults(func=_cmd_fuzz)

    p = sub.add_parser("reliability", help="the reliability campaign: crash torture, hostile "
                                           "input, soak (docs/reliability.md)")
    from phalanx.reliability.command import add_arguments as add_reliability_arguments

    add_reliability_arguments(p)
    p.set_defaults(func=_cmd_reliability)

    p = sub.add_parser("demo", help="start a local 4-replica cluster, load it, print results")
    p.add_argument("--app", choices=("ledger", "kv"), default="ledger",
                   help="the ledger (wallets, signed transfers, verified balances) or the "
                        "key-value store")
    p.add_argument("--wallets", type=int, default=32, help="ledger: load wallets")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of load")
    p.add_argument("--clients", type=int, default=16, help="kv: closed-loop clients")
    p.add_argument("--payload", type=int, default=512, help="bytes per PUT value")
    p.add_argument("--keys", type=int, default=1000, help="size of the key space")
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (ValueError, OSError) as exc:
        print(f"phalanx {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
