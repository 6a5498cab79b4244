"""The ``phalanx`` command: keygen, node, up, client, bench, sim, demo."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from phalanx.protocols.registry import available


def _cmd_keygen(args: argparse.Namespace) -> int:
    from phalanx.config import generate_cluster

    config = generate_cluster(
        args.out, args.n, f=args.f, protocol=args.protocol, host=args.host,
        base_port=args.base_port, base_http_port=args.base_http_port, overwrite=args.force,
    )
    print(f"wrote {Path(args.out) / 'cluster.toml'} and {config.n} key files (mode 0600): "
          f"protocol={config.protocol} n={config.n} f={config.f}")
    return 0


def _cmd_node(args: argparse.Namespace) -> int:
    from phalanx.runtime.launcher import serve_replica

    return serve_replica(args.config, args.id, args.key, args.data_dir, args.durability)


def _cmd_up(args: argparse.Namespace) -> int:
    from phalanx.cluster import run_up

    return run_up(args)


def _cmd_client(args: argparse.Namespace) -> int:
    from phalanx.runtime.client_cli import run_client

    return run_client(args)


def _cmd_bench(args: argparse.Namespace) -> int:
    from phalanx.bench.run import run_bench

    return run_bench(args)


def _cmd_sim(args: argparse.Namespace) -> int:
    from phalanx.simrun import SimSpec, render, run, to_json

    crashes = []
    for item in args.crash:
        parts = item.split(":")
        restart = float(parts[2]) if len(parts) > 2 else None
        crashes.append((int(parts[0]), float(parts[1]), restart))
    spec = SimSpec(
        protocol=args.protocol, n=args.n, seed=args.seed, clients=args.clients,
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


def _cmd_demo(args: argparse.Namespace) -> int:
    from phalanx.cluster import run_demo

    return run_demo(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="phalanx", description="Scalable Byzantine-fault-tolerant state-machine replication."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    protocols = available()

    p = sub.add_parser("keygen", help="write a cluster config and one private key per replica")
    p.add_argument("--n", type=int, default=4, help="number of replicas")
    p.add_argument("--f", type=int, default=None, help="faults tolerated (default (n-1)//3)")
    p.add_argument("--protocol", default="pbft", choices=protocols)
    p.add_argument("--out", default="cluster", help="output directory")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--base-port", type=int, default=7000)
    p.add_argument("--base-http-port", type=int, default=8000)
    p.add_argument("--force", action="store_true", help="overwrite existing key files")
    p.set_defaults(func=_cmd_keygen)

    p = sub.add_parser("node", help="run one replica of a cluster")
    p.add_argument("--config", required=True, help="cluster.toml")
    p.add_argument("--id", type=int, required=True)
    p.add_argument("--key", help="private key file (default: beside the config)")
    p.add_argument("--data-dir", help="LMDB data directory (default: data/replica-<id>)")
    p.add_argument("--durability", choices=("fsync", "process"), default="fsync",
                   help="fsync: writes reach the disk before the replica answers (survives "
                        "power loss); process: they reach the OS page cache (survives the "
                        "replica being killed, not a power loss), several times cheaper")
    p.set_defaults(func=_cmd_node)

    p = sub.add_parser("up", help="run a local cluster of N replica processes (Ctrl-C stops)")
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--protocol", default="pbft", choices=protocols)
    p.add_argument("--dir", default="cluster", help="config, keys and data directory")
    p.add_argument("--base-port", type=int, default=7000)
    p.add_argument("--base-http-port", type=int, default=8000)
    p.add_argument("--fresh", action="store_true", help="new keys and empty data dirs")
    p.set_defaults(func=_cmd_up)

    p = sub.add_parser("client", help="talk to a running cluster")
    p.add_argument("--config", default="cluster/cluster.toml")
    p.add_argument("--timeout", type=float, default=10.0)
    csub = p.add_subparsers(dest="client_command", required=True)
    c = csub.add_parser("put", help="set a key")
    c.add_argument("key")
    c.add_argument("value")
    c = csub.add_parser("get", help="read a key (ordered like every request)")
    c.add_argument("key")
    c = csub.add_parser("delete", help="remove a key")
    c.add_argument("key")
    p.set_defaults(func=_cmd_client)

    p = sub.add_parser("bench", help="closed-loop benchmark of a local cluster")
    p.add_argument("--protocol", default="pbft", choices=protocols)
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--payload", type=int, default=512, help="request payload bytes")
    p.add_argument("--duration", type=float, default=30.0, help="measured seconds")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring")
    p.add_argument("--client-procs", type=int, default=2,
                   help="load-generator processes (one event loop alone adds latency)")
    p.add_argument("--max-batch", type=int, default=None)
    p.add_argument("--max-inflight", type=int, default=None)
    p.add_argument("--checkpoint-interval", type=int, default=None)
    p.add_argument("--dir", default=None, help="working directory (default: a temp dir)")
    p.add_argument("--base-port", type=int, default=17000)
    p.add_argument("--json", help="write the results JSON here")
    p.add_argument("--durability", choices=("fsync", "process"), default="fsync",
                   help="the replicas' write durability (see 'phalanx node --help')")
    p.add_argument("--connection-per-client", action="store_true",
                   help="every client opens its own connections (default: the clients of a "
                        "load-generator process share one connection per replica)")
    p.add_argument("--kill-primary-at", type=float, default=None,
                   help="SIGKILL replica 0 this many seconds into the measured window")
    p.add_argument("--keys-per-client", type=int, default=64,
                   help="distinct keys each client writes in turn (bounds the state)")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("sim", help="a deterministic simulated run; prints committed-log hashes")
    p.add_argument("--protocol", default="pbft", choices=protocols)
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--requests", type=int, default=50, help="requests per client")
    p.add_argument("--payload", type=int, default=64)
    p.add_argument("--duration", type=float, default=60.0, help="simulated seconds at most")
    p.add_argument("--latency-ms", type=float, default=1.0)
    p.add_argument("--jitter-ms", type=float, default=0.0)
    p.add_argument("--drop", type=float, default=0.0)
    p.add_argument("--duplicate", type=float, default=0.0)
    p.add_argument("--reorder-ms", type=float, default=0.0)
    p.add_argument("--crash", action="append", default=[], metavar="ID:AT[:RESTART_AT]")
    p.add_argument("--wan", help="RTT matrix CSV (e.g. ../shared/data/latency_*/rtt_matrix_ms.csv)")
    p.add_argument("--regions", help="comma-separated region per replica (with --wan)")
    p.add_argument("--json", help="also write the summary as JSON")
    p.set_defaults(func=_cmd_sim)

    p = sub.add_parser("demo", help="start a local 4-replica cluster, load it, print results")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--clients", type=int, default=16)
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
