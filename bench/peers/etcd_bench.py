"""The crash-fault baseline: a 3-member etcd cluster on loopback, loaded like ``phalanx bench``.

``python -m bench.peers.etcd_bench --clients 64 --payload 512 --duration 30 --json FILE``

1. installs Debian's ``etcd-server`` and ``etcd-client`` with apt-get if ``etcd`` is not
   on PATH (root only);
2. starts ``--members`` etcd processes on 127.0.0.1 (client port ``base + 2i``, peer port
   ``base + 2i + 1``), each with its own data directory in a temporary directory, etcd's
   defaults otherwise (write-ahead log fsynced before a put is answered, no compaction);
3. runs ``--client-procs`` load generators (:mod:`bench.peers.etcd_loadgen`): closed-loop
   clients putting ``--payload``-byte values over the v3 HTTP/JSON gateway, a warm-up
   and then the measured window, by phalanx's own window accounting;
4. samples every member's CPU, memory and TCP bytes from the kernel at the window's edges
   (:mod:`bench.peers.common`);
5. once the load has stopped and every member reports the same revision, compares the
   members' ``HashKV`` at that revision (``etcdctl endpoint hashkv``: a hash of every key
   revision up to it, i.e. the applied history): that is the ``safety`` verdict;
6. stops the members (SIGTERM, then SIGKILL), removes the temporary directory, prints
   phalanx's summary and writes the results object of ``phalanx bench --json``
   (protocol ``etcd-raft``).

Why the HTTP/JSON gateway and not gRPC: it is part of every etcd server, and aiohttp (a
phalanx dependency) drives it with keep-alive connections; the Python gRPC clients for
etcd are unmaintained and would add grpcio and protobuf pins for a benchmark script. The
gateway costs etcd some CPU per request (JSON to protobuf inside the server), which the
per-node CPU figure includes.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.peers.common import (
    REPO,
    RESULTS_DIR,
    PeerLoadGenerators,
    node_windows,
    peer_results,
    require_root,
    sample_processes,
    write_json,
)
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

READY_TIMEOUT_S = 30.0
CONVERGE_TIMEOUT_S = 20.0
PROTOCOL = "etcd-raft"


def ensure_etcd() -> str:
    """The etcd binary, installed (with etcdctl) from Debian's packages if missing."""
    found = shutil.which("etcd")
    if found and shutil.which("etcdctl"):
        return found
    require_root("installing etcd-server")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "etcd-server", "etcd-client"]
    if subprocess.run(install, env=env).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, check=True)
        subprocess.run(install, env=env, check=True)
    found = shutil.which("etcd")
    if not found:
        raise BenchError("etcd-server installed but no etcd on PATH")
    return found


def etcd_version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    return out.splitlines()[0].split(":", 1)[-1].strip() if out else "?"


def member_argv(binary: str, index: int, members: int, base_port: int, data: Path,
                token: str) -> list[str]:
    """The command line of member ``index``: loopback ports, its own data directory."""
    def client(i: int) -> str:
        return f"http://127.0.0.1:{base_port + 2 * i}"

    def peer(i: int) -> str:
        return f"http://127.0.0.1:{base_port + 2 * i + 1}"

    cluster = ",".join(f"m{i}={peer(i)}" for i in range(members))
    return [
        binary, "--name", f"m{index}", "--data-dir", str(data / f"m{index}"),
        "--listen-client-urls", client(index), "--advertise-client-urls", client(index),
        "--listen-peer-urls", peer(index), "--initial-advertise-peer-urls", peer(index),
        "--initial-cluster", cluster, "--initial-cluster-token", token,
        "--initial-cluster-state", "new", "--logger", "zap", "--log-outputs", "stderr",
    ]


class EtcdCluster:
    """The members of one run, through their v3 gateway."""

    def __init__(self, binary: str, members: int, base_port: int, workdir: Path,
                 children: Children, session: aiohttp.ClientSession) -> None:
        self.binary = binary
        self.members = members
        self.base_port = base_port
        self.workdir = workdir
        self.children = children
        self.session = session
        self.pids: dict[int, int] = {}

    def endpoint(self, i: int) -> str:
        return f"http://127.0.0.1:{self.base_port + 2 * i}"

    async def start(self) -> None:
        token = "phalanx-" + secrets.token_hex(4)
        for i in range(self.members):
            argv = member_argv(self.binary, i, self.members, self.base_port,
                               self.workdir / "data", token)
            proc = await self.children.start(f"etcd-{i}", argv,
                                             self.workdir / "logs" / f"etcd-{i}.log")
            self.pids[i] = proc.pid
        deadline = time.monotonic() + READY_TIMEOUT_S
        for i in range(self.members):
            while not await self.healthy(i):
                proc = self.children.procs[f"etcd-{i}"]
                if proc.returncode is not None:
                    raise BenchError(f"etcd member {i} exited with status {proc.returncode}: "
                                     f"see {self.workdir / 'logs'}/etcd-{i}.log")
                if time.monotonic() > deadline:
                    raise BenchError(f"etcd member {i} not healthy within {READY_TIMEOUT_S:g} s")
                await asyncio.sleep(0.2)

    async def post(self, i: int, path: str, body: dict[str, Any]) -> dict[str, Any] | None:
        try:
            async with self.session.post(self.endpoint(i) + path, json=body,
                                         timeout=aiohttp.ClientTimeout(total=10)) as r:
                return await r.json(content_type=None) if r.status == 200 else None
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None

    async def healthy(self, i: int) -> bool:
        try:
            async with self.session.get(self.endpoint(i) + "/health",
                                        timeout=aiohttp.ClientTimeout(total=1)) as r:
                return r.status == 200 and (await r.json(content_type=None)).get("health") == "true"
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return False

    async def revision(self, i: int) -> int | None:
        """The member's own applied revision (a serializable read answers locally)."""
        answer = await self.post(i, "/v3/kv/range", {
            "key": base64.b64encode(b"\0").decode(), "serializable": True, "count_only": True,
        })
        try:
            return int(answer["header"]["revision"]) if answer else None
        except (KeyError, TypeError, ValueError):
            return None

    async def status(self, i: int) -> dict[str, Any] | None:
        return await self.post(i, "/v3/maintenance/status", {})

    def hashkv(self, revision: int) -> dict[str, int]:
        """``{endpoint: hash}`` of every member's key history up to ``revision`` (etcdctl
        from etcd-client: HashKV is gRPC-only, the JSON gateway maps only Hash)."""
        etcdctl = shutil.which("etcdctl")
        if etcdctl is None:
            return {}
        endpoints = ",".join(self.endpoint(i) for i in range(self.members))
        try:
            out = subprocess.run(
                [etcdctl, "--endpoints", endpoints, "endpoint", "hashkv", "--rev",
                 str(revision), "-w", "json"],
                capture_output=True, text=True, timeout=30, check=True,
                env={**os.environ, "ETCDCTL_API": "3"},
            ).stdout
            return {e["Endpoint"]: int(e["HashKV"]["hash"]) for e in json.loads(out)}
        except (OSError, subprocess.SubprocessError, ValueError, KeyError, TypeError):
            return {}

    async def check_safety(self) -> Safety:
        """Wait for one revision on every member, then compare their HashKV there."""
        ids = list(range(self.members))
        deadline = time.monotonic() + CONVERGE_TIMEOUT_S
        while True:
            revs = dict(zip(ids, await asyncio.gather(*(self.revision(i) for i in ids)),
                            strict=True))
            if None not in revs.values() and len(set(revs.values())) == 1:
                break
            if time.monotonic() > deadline:
                return Safety(False, False, False, revs, 0,
                              f"no common revision within {CONVERGE_TIMEOUT_S:g} s")
            await asyncio.sleep(0.25)
        top = next(iter(revs.values()))
        assert top is not None
        hashes = await asyncio.to_thread(self.hashkv, top)
        equal = len(hashes) == len(ids) and len(set(hashes.values())) == 1
        note = (f"HashKV at revision {top} (etcdctl endpoint hashkv: every key revision up "
                "to it): " + ("equal on all members" if equal else f"DIFFERENT: {hashes}"))
        return Safety(equal, equal, True, revs, top, note)


async def measure(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    binary = ensure_etcd()
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    children = Children()
    try:
        async with aiohttp.ClientSession() as session:
            cluster = EtcdCluster(binary, args.members, args.base_port, workdir, children,
                                  session)
            await cluster.start()
            endpoints = ",".join(cluster.endpoint(i) for i in range(args.members))

            def argv(index: int, clients: int, first: int, out: Path) -> list[str]:
                return [sys.executable, "-m", "bench.peers.etcd_loadgen",
                        "--endpoints", endpoints, "--clients", str(clients),
                        "--first-client", str(first), "--payload", str(args.payload),
                        "--keys-per-client", str(args.keys_per_client), "--out", str(out)]

            loadgens = PeerLoadGenerators(children, workdir, argv)
            await loadgens.start_procs(args.clients, args.client_procs)
            start = time.time() + START_DELAY_S
            window_start = start + args.warmup
            window_end = window_start + args.duration
            await loadgens.go(start, window_start, window_end)
            await asyncio.sleep(max(0.0, window_start - time.time()))
            host_start = host_cpu_times()
            starts = sample_processes(cluster.pids)
            await asyncio.sleep(max(0.0, window_end - time.time()))
            ends = sample_processes(cluster.pids)
            host_end = host_cpu_times()
            reports = await loadgens.stop()
            safety = await cluster.check_safety()
            statuses = await asyncio.gather(*(cluster.status(i) for i in range(args.members)))
    finally:
        await children.shutdown()

    ids = list(range(args.members))
    nodes = node_windows(ids, starts, ends)
    spec = RunSpec(
        protocol=PROTOCOL, n=args.members, f=(args.members - 1) // 2, clients=args.clients,
        payload_bytes=args.payload, duration_s=args.duration, warmup_s=args.warmup,
        client_procs=len(reports), keys_per_client=args.keys_per_client,
    )
    env = environment(sum(r.total_cpu_s for r in reports), host_cpu_busy(host_start, host_end))
    leaders = {s.get("leader") for s in statuses if s}
    member_ids = [s.get("header", {}).get("member_id") if s else None for s in statuses]
    peer = {
        "software": "etcd", "version": etcd_version(binary), "binary": binary,
        "fault_model": "crash (Raft): f = (n-1)/2 crashed members tolerated",
        "interface": "v3 HTTP/JSON gateway, POST /v3/kv/put, HTTP/1.1 keep-alive",
        "durability": "etcd default: WAL fsynced before a put is answered",
        "leader": next((i for i, m in enumerate(member_ids) if m and m in leaders), None),
        "clients_per_member": "client c talks to member c mod n (followers forward)",
        "per_node_source": "CPU and memory from /proc/PID; bytes from the kernel's TCP "
        "counters of the member's sockets (ss -tinp); msgs_sent not visible",
    }
    return peer_results(spec, reports, nodes, safety, env, peer)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.peers.etcd_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--members", type=int, default=3)
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--client-procs", type=int, default=2)
    p.add_argument("--payload", type=int, default=512)
    p.add_argument("--keys-per-client", type=int, default=64)
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--duration", type=float, default=30.0)
    p.add_argument("--base-port", type=int, default=23790,
                   help="member i: client port base+2i, peer port base+2i+1 (not etcd's "
                        "2379/2380, which a packaged etcd service may hold)")
    p.add_argument("--json", type=Path, default=RESULTS_DIR / "etcd.json")
    p.add_argument("--dir", type=Path, help="keep data and logs here (default: a temp dir)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.members < 1 or args.clients < 1 or args.client_procs < 1 or args.duration <= 0:
        print("--members, --clients, --client-procs must be >= 1 and --duration > 0",
              file=sys.stderr)
        return 2
    # The load generators run as ``python -m bench.peers.etcd_loadgen``.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    temporary = args.dir is None
    workdir = Path(tempfile.mkdtemp(prefix="etcd-bench-") if temporary else args.dir)
    try:
        results = run(measure(args, workdir))
    except BenchError as exc:
        print(f"etcd bench: {exc}\n(work directory kept: {workdir})", file=sys.stderr)
        return 1
    render_summary(results)
    write_json(results, args.json)
    print(f"results: {args.json}")
    ok = results["committed_tx"] > 0 and results["safety"]["state_roots_equal"]
    if temporary and ok:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
