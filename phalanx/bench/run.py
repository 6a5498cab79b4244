"""``phalanx bench``: start a local cluster, load it, measure one window, check safety.

The run, in order:

1. a working directory with a fresh cluster config, keys and empty data directories;
   replica ``i`` listens on ``base_port + i`` and serves HTTP on ``base_port + P + i``
   (``P`` processes: ``n`` unless the protocol runs a replica as several);
2. the ``P`` replica processes (``phalanx node``), logs in ``logs/``; every ``/status`` up;
3. ``client_procs`` load generators (:mod:`phalanx.bench.loadgen`) sharing the clients;
   once all are connected they get one wall-clock window: ``warmup`` seconds of load,
   then ``duration`` measured seconds; the load stays on past the end of the window;
4. each replica's ``/status`` at the window's start and end gives its CPU, bytes and
   messages over the window (``--kill-primary-at T`` SIGKILLs the primary ``T`` seconds
   in, after a last look at its counters);
5. the load stops; once the live replicas agree on one executed_seq (bounded wait),
   their state roots and the digests of their last (up to 10,000) executed seqs are
   compared;
6. every process started here is stopped (SIGTERM, then SIGKILL) whatever happened, and
   the results are printed and, with ``--json``, written.

Exit status 0 when safety holds and something committed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import ctypes
import dataclasses
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from phalanx.bench.progress import show_progress
from phalanx.bench.results import (
    LoadgenReport,
    NodeWindow,
    RunSpec,
    Safety,
    build_results,
    environment,
    executed_seq,
    host_cpu_busy,
    host_cpu_times,
    node_window,
    state_roots_agree,
    to_json,
)
from phalanx.bench.summary import render_summary
from phalanx.cluster import identity_mismatch
from phalanx.config import (
    CLUSTER_FILE,
    ClusterConfig,
    ReplicaInfo,
    default_options,
    generate_cluster,
    process_count,
    process_name,
)
from phalanx.core.address import Address
from phalanx.protocols.registry import protocol
from phalanx.runtime import run
from phalanx.runtime.linkfaults import LINK_FAULTS_ENV
from phalanx.runtime.wan import WanPlan
from phalanx.safety import logs_agree

if TYPE_CHECKING:
    from phalanx.bench.netns import Testbed
    from phalanx.byzantine.nemesis import Nemesis

READY_TIMEOUT_S = 30.0  # replicas answering /status, load generators connected
STATUS_TIMEOUT_S = 5.0  # one /status request of a loaded replica
CONVERGE_TIMEOUT_S = 20.0  # live replicas reaching one executed_seq after the load
LOADGEN_EXIT_TIMEOUT_S = 20.0
TERMINATE_TIMEOUT_S = 10.0
LOG_CHECK_SEQS = 10_000  # the /log range limit of the HTTP API
START_DELAY_S = 0.2  # from "go" to the first request: every load generator has read it


class BenchError(Exception):
    """The bench could not run the experiment (not a measurement result)."""


# -- child processes -----------------------------------------------------------------------


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child
    """Linux: have the kernel SIGKILL the child if the bench dies (even by SIGKILL)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Children:
    """Every process the bench starts, so that none outlives it.

    ``shutdown`` stops them politely (SIGTERM, then SIGKILL after a timeout); the
    ``atexit`` hook and the kernel's parent-death signal are the backstops when the
    bench itself is interrupted or killed.
    """

    def __init__(self) -> None:
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        # argv prefix per child name (``--netns``: ``ip netns exec <its namespace>``)
        self.wrap: Callable[[str], list[str]] = lambda name: []
        atexit.register(self.kill_all)

    async def start(
        self, name: str, argv: list[str], log_path: Path, *, pipes: bool = False
    ) -> asyncio.subprocess.Process:
        with open(log_path, "ab") as log_file:
            proc = await asyncio.create_subprocess_exec(
                *self.wrap(name), *argv,
                stdin=asyncio.subprocess.PIPE if pipes else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE if pipes else log_file,
                stderr=log_file,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        self.procs[name] = proc
        return proc

    def kill(self, name: str) -> None:
        """SIGKILL one child now (the fault injection)."""
        proc = self.procs[name]
        if proc.returncode is None:
            proc.kill()

    async def stop(self, names: list[str], timeout: float = TERMINATE_TIMEOUT_S) -> None:
        """SIGTERM ``names``, wait up to ``timeout``, SIGKILL what is left, reap all."""
        procs = [self.procs[n] for n in names if n in self.procs]
        for proc in procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
        await self.reap(procs, timeout)

    async def reap(self, procs: list[asyncio.subprocess.Process], timeout: float) -> None:
        """Wait up to ``timeout`` for ``procs`` to exit; SIGKILL and reap the rest."""
        waits = [asyncio.create_task(p.wait()) for p in procs]
        if not waits:
            return
        _, pending = await asyncio.wait(waits, timeout=timeout)
        if pending:
            for proc in procs:
                if proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
            await asyncio.wait(pending, timeout=timeout)

    async def shutdown(self) -> None:
        await self.stop(list(self.procs))
        atexit.unregister(self.kill_all)

    def kill_all(self) -> None:
        """Synchronous last resort (atexit): SIGKILL every child not known to be reaped."""
        for proc in self.procs.values():
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)


# -- the cluster ---------------------------------------------------------------------------


def _options(args: argparse.Namespace, protocol: str) -> dict[str, int]:
    options: dict[str, int] = {}
    for name in ("max_batch", "max_inflight", "checkpoint_interval", "batch_delay_ms",
                 "fill_wait_ms"):
        value = getattr(args, name, None)
        if value is not None:
            options[name] = value
    if "checkpoint_interval" in options:
        # The window must hold two checkpoint intervals (see ClusterConfig).
        window = default_options(protocol)["window"]
        options["window"] = max(window, 2 * options["checkpoint_interval"])
    return options


def make_cluster(
    workdir: Path,
    args: argparse.Namespace,
    app: str = "kv",
    genesis: dict[bytes, int] | None = None,
) -> ClusterConfig:
    """A fresh cluster in ``workdir``: new keys, the given options, no old data."""
    options = _options(args, args.protocol)
    config = generate_cluster(
        workdir, args.n, f=getattr(args, "f", None), protocol=args.protocol,
        base_port=args.base_port,
        base_http_port=args.base_port + process_count(args.protocol, args.n, options),
        overwrite=True, app=app, genesis=genesis, options=options,
    )
    shutil.rmtree(workdir / "data", ignore_errors=True)
    (workdir / "logs").mkdir(exist_ok=True)
    return config


class Cluster:
    """The replicas of one bench run, as seen through their HTTP API. Replica ids name
    every process of a replica (killed and restarted together) or, for its API, its
    front process."""

    def __init__(self, config: ClusterConfig, workdir: Path, children: Children,
                 session: aiohttp.ClientSession, durability: str = "fsync",
                 node_flags: list[str] | None = None) -> None:
        self.config = config
        self.durability = durability
        self.node_flags = list(node_flags or [])  # accounting, WAN plan, execution cost
        self.workdir = workdir
        self.children = children
        self.session = session
        self.killed: set[int] = set()

    @property
    def live(self) -> list[int]:
        return [r.id for r in self.config.replicas if r.id not in self.killed]

    def url(self, node: int | Address, path: str) -> str:
        address = Address(node, self.config.front_role) if isinstance(node, int) else node
        info = self.config.process(address)
        return f"http://{info.host}:{info.http_port}{path}"

    def _name(self, address: Address) -> str:
        return process_name(address, self.config.front_role)

    def _processes(self, replica_id: int) -> list[Address]:
        return [p.address for p in self.config.processes if p.address.replica == replica_id]

    def _argv(self, address: Address) -> list[str]:
        argv = [sys.executable, "-m", "phalanx.cli", "node",
                "--config", str(self.workdir / CLUSTER_FILE), "--id", str(address.replica),
                "--durability", self.durability, *self.node_flags]
        if address.role != self.config.front_role or address.partition:
            argv += ["--role", address.role, "--partition", str(address.partition)]
        return argv

    async def restart(self, replica_id: int) -> None:
        """Start a killed replica again on its data directories (the nemesis)."""
        for address in self._processes(replica_id):
            name = self._name(address)
            old = self.children.procs.get(name)
            if old is not None:
                # The killed process holds its data directory's lock until it is gone.
                await asyncio.wait_for(old.wait(), READY_TIMEOUT_S)
            await self.children.start(name, self._argv(address),
                                      self.workdir / "logs" / f"{name}.log")
        self.killed.discard(replica_id)

    async def start(self) -> None:
        processes = [p.address for p in self.config.processes]
        for address in processes:
            name = self._name(address)
            await self.children.start(name, self._argv(address),
                                      self.workdir / "logs" / f"{name}.log")
        deadline = time.monotonic() + READY_TIMEOUT_S
        for address in processes:
            name = self._name(address)
            why = "no answer"
            while True:
                proc = self.children.procs[name]
                if proc.returncode is not None:
                    raise BenchError(f"replica {address} exited with status "
                                     f"{proc.returncode}:\n" + self.log_tail(name))
                status = await self.get_json(address, "/status", timeout=1.0)
                if status is not None:
                    # The key tells this run's replica from another's on the same port
                    # (the pid does not: --netns wraps the process).
                    mismatch = identity_mismatch(status, self.config, address)
                    if mismatch is None:
                        break
                    why = mismatch
                if time.monotonic() > deadline:
                    raise BenchError(f"replica {address} was not ready within "
                                     f"{READY_TIMEOUT_S:g} s ({why}):\n" + self.log_tail(name))
                await asyncio.sleep(0.1)

    def log_tail(self, name: str, lines: int = 15) -> str:
        try:
            text = (self.workdir / "logs" / f"{name}.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    async def get_json(self, node: int | Address, path: str, timeout: float) -> Any:
        try:
            async with self.session.get(
                self.url(node, path), timeout=aiohttp.ClientTimeout(total=timeout)
            ) as response:
                if response.status != 200:
                    return None
                return await response.json()
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None

    async def status(self, replica_id: int, timeout: float = STATUS_TIMEOUT_S
                     ) -> dict[str, Any] | None:
        status: dict[str, Any] | None = await self.get_json(replica_id, "/status", timeout)
        return status

    async def statuses(self, ids: list[int]) -> dict[int, dict[str, Any] | None]:
        """``/status`` of ``ids``, asked all at once so the snapshots are simultaneous."""
        answers = await asyncio.gather(*(self.status(i) for i in ids))
        return dict(zip(ids, answers, strict=True))

    def kill(self, replica_id: int) -> None:
        self.killed.add(replica_id)
        for address in self._processes(replica_id):
            self.children.kill(self._name(address))

    async def converge(self, timeout: float = CONVERGE_TIMEOUT_S) -> dict[int, dict[str, Any]]:
        """Poll the live replicas until they report one executed_seq (or time runs out);
        returns their last statuses (replicas that never answered are left out)."""
        deadline = time.monotonic() + timeout
        last: dict[int, dict[str, Any]] = {}
        while True:
            answers = await self.statuses(self.live)
            last = {i: s for i, s in answers.items() if s is not None}
            seqs = {executed_seq(s) for s in last.values()}
            if len(last) == len(self.live) and len(seqs) == 1 and None not in seqs:
                return last
            if time.monotonic() > deadline:
                return last
            await asyncio.sleep(0.25)

    async def check_safety(self) -> Safety:
        """Converge, then compare state roots and recent log digests of the live replicas."""
        statuses = await self.converge()
        seqs = {i: executed_seq(s) for i, s in statuses.items()}
        missing = [i for i in self.live if i not in statuses]
        converged, roots_equal = state_roots_agree(statuses)
        converged = converged and not missing
        roots_equal = roots_equal and not missing
        top = max((s for s in seqs.values() if s is not None), default=0)
        if top <= 0:
            return Safety(roots_equal, True, converged, seqs, 0, "nothing executed")
        first = max(1, top - LOG_CHECK_SEQS + 1)
        answers = await asyncio.gather(
            *(self.get_json(i, f"/log?first={first}&last={top}", 30.0) for i in statuses)
        )
        logs = {i: a for i, a in zip(statuses, answers, strict=True) if isinstance(a, dict)}
        consistent, compared = logs_agree(logs)
        notes = []
        if missing:
            notes.append(f"replicas {missing} did not answer /status")
        if len(logs) < len(statuses):
            notes.append(f"{len(statuses) - len(logs)} replica(s) did not answer /log")
            consistent = False
        if not converged:
            notes.append(f"no common executed_seq within {CONVERGE_TIMEOUT_S:g} s: {seqs}")
        return Safety(roots_equal, consistent, converged, seqs, compared, "; ".join(notes))


# -- load generators -----------------------------------------------------------------------


def split_clients(clients: int, procs: int) -> list[int]:
    """Share ``clients`` among ``procs`` load generators as evenly as possible."""
    procs = max(1, min(procs, clients))
    return [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]


async def read_child_line(proc: asyncio.subprocess.Process, timeout: float) -> str:
    """The next line a child (a load generator) writes to its stdout pipe, stripped; ""
    if none comes within ``timeout`` seconds or the pipe is closed."""
    assert proc.stdout is not None
    try:
        return (await asyncio.wait_for(proc.stdout.readline(), timeout)).decode().strip()
    except TimeoutError:
        return ""


async def await_ready(children: Children, names: list[str], workdir: Path,
                      timeout_s: float) -> None:
    """Wait for every named load generator's ``ready`` line; BenchError names the first
    one that answered anything else (or nothing) and its log."""
    lines = await asyncio.gather(*(read_child_line(children.procs[n], timeout_s) for n in names))
    for name, line in zip(names, lines, strict=True):
        if not line.startswith("ready"):
            raise BenchError(f"{name} did not get ready: {line or 'no answer'} "
                             f"(see {workdir / 'logs' / name}.log)")


class LoadGenerators:
    """The load-generator processes and their line protocol (see ``loadgen``)."""

    exit_timeout_s = LOADGEN_EXIT_TIMEOUT_S

    def __init__(self, children: Children, workdir: Path) -> None:
        self.children = children
        self.workdir = workdir
        self.names: list[str] = []

    def _report_path(self, name: str) -> Path:
        return self.workdir / f"{name}.json"

    async def start(self, args: argparse.Namespace) -> None:
        first = 0
        for index, count in enumerate(split_clients(args.clients, args.client_procs)):
            name = f"loadgen-{index}"
            self._report_path(name).unlink(missing_ok=True)
            argv = [sys.executable, "-m", "phalanx.bench.loadgen",
                    "--config", str(self.workdir / CLUSTER_FILE), "--clients", str(count),
                    "--first-client", str(first), "--payload", str(args.payload),
                    "--keys-per-client", str(args.keys_per_client),
                    "--out", str(self._report_path(name))]
            if getattr(args, "connection_per_client", False):
                argv.append("--connection-per-client")
            if getattr(args, "rate", None):
                # Every process offers its clients' share of the total rate.
                argv += ["--rate", repr(args.rate * count / args.clients)]
            if getattr(args, "wan_plan", None):
                argv += ["--wan", str(args.wan_plan), "--wan-index", str(index)]
            await self.children.start(name, argv, self.workdir / "logs" / f"{name}.log",
                                      pipes=True)
            self.names.append(name)
            first += count
        await await_ready(self.children, self.names, self.workdir, READY_TIMEOUT_S + 10)

    async def _send(self, line: str) -> None:
        for name in self.names:
            stdin = self.children.procs[name].stdin
            if stdin is not None and not stdin.is_closing():
                stdin.write(line.encode() + b"\n")
                with contextlib.suppress(ConnectionError):
                    await stdin.drain()

    async def go(self, start: float, window_start: float, window_end: float) -> None:
        await self._send(json.dumps(
            {"start": start, "window_start": window_start, "window_end": window_end}
        ))

    async def stop(self) -> list[LoadgenReport]:
        """Stop the load and collect every report (a missing one is an error)."""
        await self._send("stop")
        for name in self.names:
            stdin = self.children.procs[name].stdin
            if stdin is not None:
                stdin.close()
        await self.children.reap([self.children.procs[n] for n in self.names],
                                  self.exit_timeout_s)
        reports = []
        for name in self.names:
            try:
                doc = json.loads(self._report_path(name).read_text())
            except (OSError, ValueError) as exc:
                raise BenchError(f"{name} left no report ({exc}); see "
                                 f"{self.workdir / 'logs' / name}.log") from None
            reports.append(self._report(doc))
        return reports

    def _report(self, doc: dict[str, Any]) -> LoadgenReport:
        return LoadgenReport.from_json(doc)


# -- the run -------------------------------------------------------------------------------


async def _sleep_until(wall: float) -> None:
    await asyncio.sleep(max(0.0, wall - time.time()))


async def _kill_primary(
    cluster: Cluster, at: float, window_start: float, ends: dict[int, dict[str, Any] | None],
    fault: dict[str, Any],
) -> None:
    """At ``at`` (wall), record the primary's counters, then SIGKILL it."""
    await _sleep_until(at)
    spec = protocol(cluster.config.protocol)
    victim = spec.fault_target(await cluster.statuses(cluster.live))
    ends[victim] = await cluster.status(victim, timeout=1.0)
    cluster.kill(victim)
    fault.update(replica=victim, at_s=round(time.time() - window_start, 3))


async def measure(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Run the experiment in ``workdir``; returns the results object."""
    children = Children()
    config = make_cluster(workdir, args)
    nemesis = _nemesis(args, config.n, workdir)
    wan = _wan_plan(args, workdir, config.n)
    testbed: Testbed | None = None
    try:
        testbed = _netns_testbed(args, wan, config.n, children)
        if testbed is not None:
            config = testbed_config(workdir, config, testbed)
        async with aiohttp.ClientSession() as session:
            cluster = Cluster(config, workdir, children, session, args.durability,
                              _node_flags(args))
            await cluster.start()
            loadgens = LoadGenerators(children, workdir)
            await loadgens.start(args)

            start = time.time() + START_DELAY_S
            window_start = start + args.warmup
            window_end = window_start + args.duration
            await loadgens.go(start, window_start, window_end)
            progress = None
            if getattr(args, "progress", True):
                # Poll a backup: /status serialises the accounting snapshot, and the
                # primary (replica 0 in view 0) is the busiest process of the run.
                polled = cluster.live[-1]
                progress = asyncio.create_task(show_progress(
                    lambda: cluster.status(polled, timeout=1.0), start, window_start, window_end
                ))

            await _sleep_until(window_start)
            host_start = host_cpu_times()
            starts = await cluster.statuses(cluster.live)
            ends: dict[int, dict[str, Any] | None] = {}
            fault: dict[str, Any] = {}
            killer = None
            if nemesis is not None:
                killer = asyncio.create_task(nemesis.run(cluster, window_start, _sleep_until))
            elif args.kill_primary_at is not None:
                killer = asyncio.create_task(_kill_primary(
                    cluster, window_start + args.kill_primary_at, window_start, ends, fault
                ))
            await _sleep_until(window_end)
            if killer is not None:
                await killer
            if nemesis is not None:
                await nemesis.finish(cluster)
            ends.update(await cluster.statuses(cluster.live))
            if nemesis is not None:
                # A replica killed (and maybe restarted) counts up to its kill; restarted
                # ones stay live, so the safety checks below include them.
                for r in nemesis.killed_ever:
                    ends[r] = nemesis.last_status.get(r)
            host_end = host_cpu_times()
            if progress is not None:
                progress.cancel()
                await asyncio.gather(progress, return_exceptions=True)
            reports = await loadgens.stop()
            safety = await cluster.check_safety()
    finally:
        if nemesis is not None:
            os.environ.pop(LINK_FAULTS_ENV, None)
        await children.shutdown()
        if testbed is not None:
            testbed.teardown()  # after the processes inside it are gone

    bandwidth = wan.bandwidth_bps if wan is not None else None
    nodes: list[NodeWindow] = [
        node_window(r.id, starts.get(r.id), ends.get(r.id),
                    killed=r.id in cluster.killed or (nemesis is not None
                                                      and r.id in nemesis.killed_ever),
                    bandwidth_bps=bandwidth)
        for r in config.replicas
    ]
    spec = RunSpec(
        protocol=config.protocol, n=config.n, f=config.f, clients=args.clients,
        payload_bytes=args.payload, duration_s=args.duration, warmup_s=args.warmup,
        client_procs=len(reports), keys_per_client=args.keys_per_client,
        options=dict(config.options),
    )
    env = environment(sum(r.total_cpu_s for r in reports), host_cpu_busy(host_start, host_end))
    env["durability"] = args.durability
    env["shared_client_connections"] = not args.connection_per_client
    env["accounting"] = not getattr(args, "no_accounting", False)
    env["wan_emulation"] = "netns" if testbed is not None else (
        "transport" if wan is not None else None)
    results = build_results(spec, reports, nodes, safety, env, fault or None)
    results["load"] = {
        "mode": "open" if getattr(args, "rate", None) else "closed",
        "rate_tps": getattr(args, "rate", None),
        "burn_us_per_op": getattr(args, "burn_us_per_op", 0.0) or 0.0,
    }
    if nemesis is not None:
        results["nemesis"] = nemesis.report()
    if wan is not None:
        results["wan"] = {**wan.to_json(),
                          "loadgen_regions": [wan.loadgen_region(i) for i in range(len(reports))]}
    if testbed is not None:
        results["netns"] = testbed.topology.to_json()
    return results


def _nemesis(args: argparse.Namespace, n: int, workdir: Path) -> Nemesis | None:
    """With ``--nemesis FILE``: the schedule, and the replicas told (by an environment
    variable they inherit) where their link-fault control files are."""
    if not getattr(args, "nemesis", None):
        return None
    if args.kill_primary_at is not None:
        raise ValueError("--nemesis and --kill-primary-at exclude each other "
                         "(schedule the kill in the nemesis file)")
    from phalanx.byzantine.nemesis import make_nemesis

    nemesis = make_nemesis(args.nemesis, n, args.duration, workdir)
    os.environ[LINK_FAULTS_ENV] = str(nemesis.control_dir)
    return nemesis


def _netns_testbed(args: argparse.Namespace, wan: WanPlan | None, n: int,
                   children: Children) -> Testbed | None:
    """With ``--netns``: the namespaces of this run, built (see :mod:`phalanx.bench.netns`);
    the children start inside them and the transport delays nothing (the kernel does)."""
    if not getattr(args, "netns", False):
        return None
    from phalanx.bench.netns import NetnsError, build

    loadgens = len(split_clients(args.clients, args.client_procs))
    try:
        testbed = build(n, loadgens, wan, wan.bandwidth_bps if wan else None).up()
    except NetnsError as exc:
        raise BenchError(str(exc)) from None
    args.wan_plan = None  # no delay lines, no pacing in the processes
    children.wrap = testbed.topology.exec_prefix
    return testbed


def testbed_config(workdir: Path, config: ClusterConfig, testbed: Testbed) -> ClusterConfig:
    """``config`` with each replica (every process of it) at its namespace's address
    (same ports), rewritten."""

    def moved(r: ReplicaInfo) -> ReplicaInfo:
        host = testbed.topology.replicas[r.id].address
        return dataclasses.replace(r, host=host, processes=tuple(
            dataclasses.replace(p, host=host) for p in r.processes))

    replicas = tuple(moved(r) for r in config.replicas)
    config = dataclasses.replace(config, replicas=replicas)
    config.dump(workdir / CLUSTER_FILE)
    return config


def _wan_plan(args: argparse.Namespace, workdir: Path, n: int) -> WanPlan | None:
    """The WAN plan of ``--wan/--regions/--bandwidth`` (written for the children), or
    None on plain loopback. ``--bandwidth`` alone caps links without delays."""
    matrix = getattr(args, "wan", None)
    bandwidth = getattr(args, "bandwidth", None)
    if not matrix and not bandwidth:
        args.wan_plan = None
        return None
    if not matrix:
        # A one-region matrix: zero delay everywhere, only the cap applies.
        matrix = str(workdir / "loopback.csv")
        Path(matrix).write_text("src_region\\dst_region,local\nlocal,0\n")
        regions: str | list[str] = ["local"]
    else:
        regions = getattr(args, "regions", None) or ""
    plan = WanPlan.build(matrix, regions, n, bandwidth)
    args.wan_plan = workdir / "wan.json"
    plan.dump(args.wan_plan)
    return plan


def _node_flags(args: argparse.Namespace) -> list[str]:
    flags: list[str] = []
    if getattr(args, "no_accounting", False):
        flags.append("--no-accounting")
    if getattr(args, "wan_plan", None):
        flags += ["--wan", str(args.wan_plan)]
    if getattr(args, "burn_us_per_op", 0.0):
        flags += ["--burn-us-per-op", repr(args.burn_us_per_op)]
    return flags


def _validate(args: argparse.Namespace) -> None:
    if args.n < 1 or args.clients < 1 or args.client_procs < 1:
        raise ValueError("--n, --clients and --client-procs must be at least 1")
    if args.payload < 0 or args.keys_per_client < 1:
        raise ValueError("--payload must be >= 0 and --keys-per-client >= 1")
    if args.duration <= 0 or args.warmup < 0:
        raise ValueError("--duration must be > 0 and --warmup >= 0")
    if args.kill_primary_at is not None and not 0 <= args.kill_primary_at < args.duration:
        raise ValueError("--kill-primary-at must be within the measured window [0, duration)")
    ports = 2 * process_count(args.protocol, args.n, _options(args, args.protocol))
    if not 1 <= args.base_port <= 65535 - ports:
        raise ValueError(f"--base-port leaves no room for {ports} ports")


def run_bench(args: argparse.Namespace) -> int:
    """``phalanx bench``: run, print the summary, write ``--json``; 0 iff safe and live."""
    if not hasattr(args, "keys_per_client"):
        args.keys_per_client = 64
    _validate(args)
    temporary = args.dir is None
    workdir = Path(tempfile.mkdtemp(prefix="phalanx-bench-") if temporary else args.dir)
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        results = run(measure(args, workdir))
    except BenchError as exc:
        print(f"phalanx bench: {exc}\n(work directory kept: {workdir})", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"phalanx bench: interrupted (work directory kept: {workdir})", file=sys.stderr)
        raise
    render_summary(results)
    if args.json:
        Path(args.json).write_text(to_json(results) + "\n")
    ok = results["committed_tx"] > 0 and results["safety"]["state_roots_equal"] and (
        results["safety"]["logs_consistent"]
    )
    if temporary and ok:
        shutil.rmtree(workdir, ignore_errors=True)
    elif not ok:
        print(f"work directory (logs, config) kept: {workdir}", file=sys.stderr)
    return 0 if ok else 1
