"""A real BFT ledger in Python as a baseline: a 4-node Indy Plenum 1.13.1 pool (RBFT) on
loopback, loaded like ``phalanx bench``.

``python -m bench.peers.plenum_bench --clients 512 --duration 45 --json FILE``

1. sets up Plenum in its Python 3.8 venv if needed (:mod:`bench.peers.plenum_setup`);
2. generates a fresh pool in a temporary directory with Plenum's own genesis code
   (``plenum38/pool.py``: a trustee, 4 stewards, 4 nodes on 127.0.0.1, Plenum's default
   batching: up to 1000 requests per batch, a batch every 3 s at the latest);
3. starts the 4 nodes (``plenum38/node.py``) and ``--client-procs`` load generators
   (``plenum38/loadgen.py``): closed-loop clients writing signed NYM transactions from
   the genesis stewards to all 4 nodes; a write counts at f+1 = 2 matching REPLYs;
4. samples every node's CPU, memory and TCP bytes from the kernel at the window's edges
   (:mod:`bench.peers.common`); completions are windowed by phalanx's own accounting;
5. once the load has stopped and every node's validator-info dump shows the same domain
   ledger size, compares the nodes' committed domain-ledger Merkle roots (``logs
   consistent``) and state roots (``state roots equal``);
6. stops the nodes (SIGTERM, then SIGKILL), prints phalanx's summary and writes the results
   object of ``phalanx bench --json`` (protocol ``indy-plenum``).

A NYM carries no 512-byte value: its only free field, the alias, is capped at 256
characters by Plenum's schema; ``--alias-bytes`` (default 256) fills it and is reported as
``payload_bytes``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.peers.common import (
    RESULTS_DIR,
    PeerLoadGenerators,
    node_windows,
    peer_results,
    sample_processes,
    write_json,
)
from bench.peers.plenum_setup import DEFAULT_VENV, PLENUM38, SetupError, ensure_venv
from phalanx.bench.results import (
    RunSpec,
    Safety,
    environment,
    host_cpu_busy,
    host_cpu_times,
)
from phalanx.bench.run import START_DELAY_S, BenchError, Children
from phalanx.bench.summary import render_summary
from phalanx.runtime import run

PROTOCOL = "indy-plenum"
N = 4
DOMAIN_LEDGER = "1"  # Plenum's ledger ids: 0 pool, 1 domain, 2 config, 3 audit
CONVERGE_TIMEOUT_S = 90.0  # writes in flight when the load stops are still ordered
INFO_PERIOD_S = 2


def read_info(pool: Path, name: str) -> dict[str, Any] | None:
    """A node's latest validator-info dump, or None."""
    try:
        info: dict[str, Any] = json.loads((pool / "data" / f"{name.lower()}_info.json").read_text())
    except (OSError, ValueError):
        return None
    return info


def ledger_view(info: dict[str, Any]) -> tuple[int | None, str | None, str | None]:
    """(domain ledger size, committed ledger root, committed state root) of a dump."""
    node = info.get("Node_info", {})
    size = node.get("Metrics", {}).get("transaction-count", {}).get("ledger")
    return (size, node.get("Committed_ledger_root_hashes", {}).get(DOMAIN_LEDGER),
            node.get("Committed_state_root_hashes", {}).get(DOMAIN_LEDGER))


def judge(infos: dict[int, dict[str, Any] | None], names: list[str]) -> Safety:
    """Safety from one validator-info dump per node: converged when all report one
    domain-ledger size; the ledger's Merkle root covers every transaction (the log), the
    state root the resulting state."""
    views = {i: ledger_view(info) if info else (None, None, None) for i, info in infos.items()}
    sizes = {i: v[0] for i, v in views.items()}
    converged = None not in sizes.values() and len(set(sizes.values())) == 1
    ledger_roots = {v[1] for v in views.values()}
    state_roots = {v[2] for v in views.values()}
    logs = converged and len(ledger_roots) == 1 and None not in ledger_roots
    states = converged and len(state_roots) == 1 and None not in state_roots
    size = next(iter(sizes.values())) if converged else 0
    note = (f"validator info of {', '.join(names)}: domain ledger sizes {sizes}; "
            f"{len(ledger_roots)} distinct ledger root(s), {len(state_roots)} state root(s)")
    return Safety(states, logs, converged, sizes, size or 0, note)


async def check_safety(pool: Path, names: list[str], after: float) -> Safety:
    """Wait for dumps written after ``after`` that agree on the ledger size (and stay so
    for two dumps), then judge them."""
    deadline = time.monotonic() + CONVERGE_TIMEOUT_S
    previous: Safety | None = None
    while True:
        infos = {i: read_info(pool, name) for i, name in enumerate(names)}
        fresh = all(info and info.get("timestamp", 0) >= after for info in infos.values())
        verdict = judge(infos, names)
        if fresh and verdict.converged and previous is not None and (
            previous.executed_seq == verdict.executed_seq
        ):
            return verdict
        if time.monotonic() > deadline:
            return Safety(False, False, False, verdict.executed_seq, 0,
                          f"no agreement within {CONVERGE_TIMEOUT_S:g} s; " + verdict.note)
        previous = verdict if fresh and verdict.converged else None
        await asyncio.sleep(INFO_PERIOD_S + 0.5)


async def measure(args: argparse.Namespace, workdir: Path, python: Path) -> dict[str, Any]:
    pool = workdir / "pool"
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    with open(workdir / "logs" / "pool.log", "wb") as log:
        proc = await asyncio.create_subprocess_exec(
            str(python), str(PLENUM38 / "pool.py"), "--dir", str(pool), "--nodes", str(N),
            "--base-port", str(args.base_port), "--info-period", str(INFO_PERIOD_S),
            stdout=log, stderr=log,
        )
        status = await proc.wait()
    if status != 0:
        raise BenchError(f"pool generation failed: see {workdir / 'logs' / 'pool.log'}")
    names = [n["name"] for n in json.loads((pool / "pool.json").read_text())["nodes"]]
    children = Children()
    try:
        pids: dict[int, int] = {}
        for i, name in enumerate(names):
            node = await children.start(
                name, [str(python), str(PLENUM38 / "node.py"), "--dir", str(pool),
                       "--name", name], workdir / "logs" / f"{name}.out")
            pids[i] = node.pid

        def argv(index: int, clients: int, first: int, out: Path) -> list[str]:
            return [str(python), str(PLENUM38 / "loadgen.py"), "--pool", str(pool),
                    "--clients", str(clients), "--first-client", str(first),
                    "--alias-bytes", str(args.alias_bytes), "--out", str(out)]

        loadgens = PeerLoadGenerators(children, workdir, argv)
        await loadgens.start_procs(args.clients, args.client_procs)
        start = time.time() + START_DELAY_S
        window_start = start + args.warmup
        window_end = window_start + args.duration
        await loadgens.go(start, window_start, window_end)
        await asyncio.sleep(max(0.0, window_start - time.time()))
        host_start = host_cpu_times()
        starts = sample_processes(pids)
        await asyncio.sleep(max(0.0, window_end - time.time()))
        ends = sample_processes(pids)
        host_end = host_cpu_times()
        reports = await loadgens.stop()
        safety = await check_safety(pool, names, time.time())
    finally:
        await children.shutdown()

    nodes = node_windows(list(range(N)), starts, ends)
    spec = RunSpec(
        protocol=PROTOCOL, n=N, f=(N - 1) // 3, clients=args.clients,
        payload_bytes=args.alias_bytes, duration_s=args.duration, warmup_s=args.warmup,
        client_procs=len(reports), keys_per_client=0,
        options={"Max3PCBatchSize": 1000, "Max3PCBatchWait_s": 3},
    )
    env = environment(sum(r.total_cpu_s for r in reports), host_cpu_busy(host_start, host_end))
    env["peer_python"] = "3.8"
    peer = {
        "software": "indy-plenum", "version": "1.13.1",
        "fault_model": "Byzantine (RBFT: a master and f backup PBFT instances), n = 3f+1",
        "interface": "Plenum's client protocol over CurveZMQ, a DEALER socket per node",
        "transaction": "NYM (a new DID and verkey) signed by a genesis steward; "
        f"alias of {args.alias_bytes} characters (the schema allows at most 256)",
        "reply_rule": "a write counts at f+1 matching REPLYs",
        "batching": "Plenum defaults: Max3PCBatchSize 1000, Max3PCBatchWait 3 s",
        "node_names": names,
        "per_node_source": "CPU and memory from /proc/PID; bytes from the kernel's TCP "
        "counters of the node's sockets (ss -tinp); msgs_sent not visible",
        "logging": "INFO to a file per node",
    }
    return peer_results(spec, reports, nodes, safety, env, peer)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.peers.plenum_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=512)
    p.add_argument("--client-procs", type=int, default=2)
    p.add_argument("--alias-bytes", type=int, default=256)
    p.add_argument("--warmup", type=float, default=15.0,
                   help="seconds of load before the window (several 3 s batches)")
    p.add_argument("--duration", type=float, default=45.0)
    p.add_argument("--base-port", type=int, default=9700,
                   help="node i (1-based): node port base+2i-1, client port base+2i")
    p.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    p.add_argument("--python", help="a Python 3.8 interpreter for the venv")
    p.add_argument("--json", type=Path, default=RESULTS_DIR / "plenum.json")
    p.add_argument("--dir", type=Path, help="keep the pool and logs here (default: temp)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.clients < 1 or args.client_procs < 1 or args.duration <= 0 or not (
        0 <= args.alias_bytes <= 256
    ):
        print("--clients, --client-procs >= 1, --duration > 0, --alias-bytes in [0, 256]",
              file=sys.stderr)
        return 2
    try:
        python = ensure_venv(args.venv, args.python)
    except SetupError as exc:
        print(f"plenum bench: {exc}", file=sys.stderr)
        return 1
    temporary = args.dir is None
    workdir = Path(tempfile.mkdtemp(prefix="plenum-bench-") if temporary else args.dir)
    try:
        results = run(measure(args, workdir, python))
    except BenchError as exc:
        print(f"plenum bench: {exc}\n(work directory kept: {workdir})", file=sys.stderr)
        return 1
    render_summary(results)
    write_json(results, args.json)
    print(f"results: {args.json}")
    ok = results["committed_tx"] > 0 and results["safety"]["state_roots_equal"]
    if temporary and ok:
        shutil.rmtree(workdir, ignore_errors=True)
    elif not ok:
        print(f"work directory (pool, logs) kept: {workdir}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
