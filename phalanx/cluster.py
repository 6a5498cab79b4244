"""Local clusters of real replica processes: :class:`LocalCluster` and ``phalanx up``
(``phalanx demo`` runs one: :mod:`phalanx.demo`).

Every replica is ``python -m phalanx.cli node --config DIR/cluster.toml --id I`` in its own
process (a protocol that runs a replica as several processes: one such command per
process, with ``--role R --partition P``), exactly what an operator runs by hand, so
whatever a test or a demo shows about a :class:`LocalCluster` holds for a real
deployment on one host. Layout of a cluster directory::

    DIR/cluster.toml            protocol, f, replicas (see phalanx.config)
    DIR/replica-<i>.key         private keys, mode 0600 (one per replica, used by each of
                                its processes)
    DIR/data/replica-<i>/       each process's LMDB store (survives restarts), locked by
                                its running process (replica.lock); another process of a
                                replica: replica-<i>-<role>-<partition>/
    DIR/logs/replica-<i>.log    each process's stdout and stderr (appended across
                                restarts), named like its data directory
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from phalanx.config import (
    CLUSTER_FILE,
    ClusterConfig,
    generate_cluster,
    load,
    no_fault_warning,
    process_count,
    process_name,
)
from phalanx.core.address import Address
from phalanx.storage.lock import lock_holder

PORT_RANGE = (20_000, 32_000)
"""Where :func:`free_port_block` looks: below Linux's ephemeral range (32768+), so that the
outgoing connections of other programs cannot take a port between our check and a
replica's bind."""

STOP_TIMEOUT = 10.0
FAILURE_GRACE_S = 15.0
"""After a replica failed to start, how long the others get to fail too (or come up)
before the failure is reported: enough for a Python start on a loaded host."""
"""Seconds a replica gets to exit after SIGTERM before it is killed."""

_PR_SET_PDEATHSIG = 1

# No proxy, ever: the replicas are on this host, and an HTTP(S)_PROXY in the environment
# would otherwise route (and break) our /status polls.
_http = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ClusterError(RuntimeError):
    """A replica failed to start, or exited while it was expected to run, or the
    cluster's directory is in use by replicas this launcher did not start."""


def free_port_block(count: int, host: str = "127.0.0.1", attempts: int = 200) -> int:
    """The first of ``count`` consecutive TCP ports that are free on ``host`` right now.

    Bases are drawn at random so that concurrent test runs on one machine rarely collide;
    a port is free if we can bind it without ``SO_REUSEADDR`` (stricter than the replicas'
    own bind, so a port in TIME_WAIT is also avoided)."""
    low, high = PORT_RANGE
    rng = random.Random()
    for _ in range(attempts):
        base = rng.randrange(low, high - count)
        if all(_port_free(host, port) for port in range(base, base + count)):
            return base
    raise OSError(f"no block of {count} free ports on {host} in {low}..{high}")


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _child_setup() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the kernel send SIGTERM to a replica when we die.

    This is what guarantees no orphans even if we are SIGKILLed (atexit never runs then).
    Linux only, and only from the main thread: PDEATHSIG fires when the *thread* that
    forked exits, so a replica spawned from a worker thread would die with that thread.
    """
    if sys.platform != "linux" or threading.current_thread() is not threading.main_thread():
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def setup() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # we died before prctl took effect
            os._exit(1)

    return setup


Node = int | Address
"""A replica (by id: all its processes, or its front process where one answers), or one
process of it."""


def replica_json(config: ClusterConfig, i: Node, path: str, timeout: float = 5.0) -> Any:
    """GET ``path`` from the HTTP API of replica ``i``'s front process (or of process
    ``i``) and decode the JSON answer."""
    info = config.process(Address(i, config.front_role) if isinstance(i, int) else i)
    with _http.open(f"http://{info.host}:{info.http_port}{path}", timeout=timeout) as response:
        return json.loads(response.read())


def identity_mismatch(
    status: dict[str, Any], config: ClusterConfig, i: Node, pid: int | None = None
) -> str | None:
    """Why a ``GET /status`` body is not replica ``i``'s front process (or process
    ``i``) of ``config`` (run by process ``pid``, if given), or None if it is. Another
    cluster's replica ``i`` on the same port answers with the same id, so the public key
    and the pid are what tell."""
    address = Address(i, config.front_role) if isinstance(i, int) else i
    answered = f"replica {status.get('process', status.get('replica'))} (pid {status.get('pid')})"
    if status.get("public_key") != config.replica(address.replica).public_key.hex():
        return f"{answered} of another cluster answers on its HTTP port"
    if status.get("replica") != address.replica or status.get("process") != str(address):
        return f"{answered} answers on replica {address}'s HTTP port"
    if pid is not None and status.get("pid") != pid:
        return f"another process, {answered}, answers on its HTTP port"
    return None


def wait_converged(
    config: ClusterConfig, ids: list[int] | None = None, timeout: float = 30.0
) -> tuple[int, str]:
    """Wait until replicas ``ids`` (default: all) report the same ``executed_seq``,
    ``state_root`` and (the ledger) ``block_hash`` on ``/status``; returns the seq and
    the state root. Raises TimeoutError with what each replica last reported."""
    members = list(range(config.n)) if ids is None else ids
    deadline = time.monotonic() + timeout
    seen: dict[int, Any] = {}
    while True:
        for i in members:
            try:
                body = replica_json(config, i, "/status", timeout=2.0)
                seen[i] = (body.get("executed_seq"), body.get("state_root"),
                           body.get("block_hash"))
            except (OSError, ValueError) as exc:
                seen[i] = f"no answer ({exc})"
        values = {seen[i] for i in members}
        if len(values) == 1:
            value = values.pop()
            if isinstance(value, tuple) and value[0] is not None:
                return value[0], value[1]
        if time.monotonic() > deadline:
            report = ", ".join(f"{i}: {seen[i]}" for i in members)
            raise TimeoutError(f"replicas did not converge within {timeout} s: {report}")
        time.sleep(0.2)


class LocalCluster:
    """``n`` replica processes of one cluster on this host, started and stopped together.

    Usage::

        with LocalCluster(tmp_path, 4, options={"checkpoint_interval": 64}) as cluster:
            cluster.start()                      # keys, config, 4 processes, all ready
            ...                                  # open_client(cluster.config), load
            cluster.kill(0); cluster.restart(0)  # crash and recover the primary
            seq, root = cluster.wait_converged()

    ``dir`` holds the config, keys, data and logs (see the module docstring). With
    ``fresh`` (the default) it gets new keys and empty data directories; without it an
    existing ``cluster.toml`` and the replicas' data are reused (``n``, ``protocol`` and
    the ports then come from that file). Ports default to a free block: replica ports
    ``base_port..`` (one per process: ``n`` for a single-process protocol), HTTP ports
    ``base_http_port..`` (default right after the replica ports). ``options`` sets
    protocol tunables (``checkpoint_interval``, ...).

    Replicas are referred to by id: killing, stopping or restarting replica ``i`` acts on
    every process of it (a replica is faulty if any of its processes is); an
    :class:`~phalanx.core.address.Address` names one process. :meth:`close` (also run at
    interpreter exit, and by ``with``) stops every process; on Linux the processes also
    get SIGTERM if this one dies without closing.
    """

    def __init__(
        self,
        dir: str | os.PathLike[str],
        n: int = 4,
        protocol: str = "pbft",
        base_port: int | None = None,
        base_http_port: int | None = None,
        options: dict[str, int] | None = None,
        fresh: bool = True,
        host: str = "127.0.0.1",
        app: str = "kv",
        genesis: dict[bytes, int] | None = None,
    ) -> None:
        self.app = app
        self.genesis = dict(genesis or {})
        self.dir = Path(dir)
        self.n = n
        self.protocol = protocol
        self.base_port = base_port
        self.base_http_port = base_http_port
        self.options = dict(options or {})
        self.fresh = fresh
        self.host = host
        self.config_path = self.dir / CLUSTER_FILE
        self._config: ClusterConfig | None = None
        self._procs: dict[Address, subprocess.Popen[bytes]] = {}
        self._log_start: dict[Address, int] = {}  # where each process's latest run begins
        self._closed = False
        atexit.register(self.close)

    # -- setup -------------------------------------------------------------------------

    @property
    def config(self) -> ClusterConfig:
        """The cluster's configuration (available once :meth:`start` has run)."""
        if self._config is None:
            raise RuntimeError("the cluster has no configuration before start()")
        return self._config

    def _prepare(self) -> ClusterConfig:
        """Keygen (if fresh or there is no cluster file yet), then apply ``options``."""
        self.dir.mkdir(parents=True, exist_ok=True)
        new = self.fresh or not self.config_path.exists()
        if new:
            base = self.base_port
            http = self.base_http_port
            ports = process_count(self.protocol, self.n, self.options)
            if base is None:
                base = free_port_block(ports if http is not None else 2 * ports, self.host)
            if http is None:
                http = base + ports
            config = generate_cluster(
                self.dir, self.n, protocol=self.protocol, host=self.host,
                base_port=base, base_http_port=http, overwrite=self.fresh,
                app=self.app, genesis=self.genesis, options=self.options,
            )
            # New keys make old data meaningless (and its signatures unverifiable).
            shutil.rmtree(self.dir / "data", ignore_errors=True)
            shutil.rmtree(self.dir / "logs", ignore_errors=True)
        else:
            config = load(self.config_path)
        if self.options and not new:
            # A kept cluster file takes new tunables (new processes need a new cluster).
            config = replace(config, options={**config.options, **self.options})
            config.dump(self.config_path)
        (self.dir / "logs").mkdir(exist_ok=True)
        self.n = config.n
        self.protocol = config.protocol
        return config

    # -- processes ---------------------------------------------------------------------

    def start(self, timeout: float = 60.0, cancel: threading.Event | None = None) -> None:
        """Write keys and config if needed, spawn every replica, and wait until each one
        answers ``GET /status`` as itself (its id, public key and pid). Raises
        :class:`ClusterError` if replicas of this directory already run (before touching
        anything) or if a replica exits during start-up (naming each one that did, with
        its log), and :class:`TimeoutError` after ``timeout`` seconds; returns early
        (with the replicas running) once ``cancel`` is set."""
        if self._closed:
            raise RuntimeError("the cluster is closed")
        if self._config is not None:
            raise RuntimeError("start() runs once; use restart(i) for a single replica")
        self._refuse_if_running()
        self._config = self._prepare()
        addresses = [p.address for p in self._config.processes]
        for address in addresses:
            self._spawn(address)
        self._wait_ready(addresses, timeout, cancel)

    def addresses(self, node: Node) -> list[Address]:
        """The processes ``node`` names: every one of a replica, or one."""
        if isinstance(node, Address):
            return [node]
        return [p.address for p in self.config.processes if p.address.replica == node]

    def _front(self, node: Node) -> Address:
        return Address(node, self.config.front_role) if isinstance(node, int) else node

    def _refuse_if_running(self) -> None:
        """ClusterError if a replica process holds one of this directory's data
        directories (another ``phalanx up``, or ``phalanx node`` by hand): starting
        anyway would rewrite its config and keys (``fresh``) or interleave its logs."""
        running = []
        for data in sorted((self.dir / "data").glob("replica-*")):
            pid = lock_holder(data)
            if pid is not None:
                replica = data.name.removeprefix("replica-")
                running.append(f"replica {replica} is already running (pid {pid or '?'})")
        if running:
            raise ClusterError(
                f"{self.dir} is in use: {'; '.join(running)}. Stop that cluster first "
                f"(Ctrl-C in its 'phalanx up'), or use another --dir."
            )

    def _spawn(self, i: Address) -> None:
        log_path = self.log_path(i)
        with open(log_path, "ab") as log:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log.write(f"--- {stamp} starting replica {i} ---\n".encode())
            log.flush()
            self._log_start[i] = log.tell()
            command = self.node_command(i)
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            # A session of its own: a Ctrl-C at the terminal reaches only us, and we stop
            # the replicas in order (instead of every process racing to exit at once).
            self._procs[i] = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=env, start_new_session=True, preexec_fn=_child_setup(),
            )

    def _wait_ready(
        self, ids: list[Address], timeout: float, cancel: threading.Event | None = None
    ) -> None:
        deadline = time.monotonic() + timeout
        waiting = set(ids)
        why: dict[Address, str] = {}
        failing_since: float | None = None
        while waiting:
            failed = [i for i in sorted(waiting) if self._procs[i].poll() is not None]
            if failed:
                # Replicas failing for one cause (the ports of another cluster) fail
                # together, each as soon as its interpreter got that far: report once
                # every replica still starting has exited or come up (or after a grace).
                now = time.monotonic()
                failing_since = failing_since or now
                if len(failed) == len(waiting) or now - failing_since > FAILURE_GRACE_S:
                    raise ClusterError("\n".join(self._start_failure(i) for i in failed))
            for i in sorted(set(waiting) - set(failed)):
                try:
                    status = self.status(i, timeout=2.0)
                except (OSError, ValueError) as exc:
                    why[i] = f"no answer on /status ({exc})"
                    continue
                mismatch = identity_mismatch(status, self.config, i, self._procs[i].pid)
                if mismatch is None:
                    waiting.discard(i)
                else:
                    why[i] = mismatch
            if not waiting or (cancel is not None and cancel.is_set()):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"replicas {[str(i) for i in sorted(waiting)]} were not ready within "
                    f"{timeout} s: "
                    + "; ".join(f"replica {i}: {why.get(i, 'not asked')}" for i in sorted(waiting))
                )
            time.sleep(0.1)

    def _start_failure(self, i: Address) -> str:
        code = self._procs[i].poll()
        reason = _exit_reason(code) if code is not None else "is running"
        return (f"replica {i} {reason} during start-up; its output "
                f"({self.log_path(i)}):\n{_indent(self.log_tail(i, this_run=True))}")

    def node_command(self, i: Address) -> list[str]:
        """The command that runs process ``i`` (a harness may wrap it, e.g. to run a
        deliberately faulty replica)."""
        command = [sys.executable, "-m", "phalanx.cli", "node",
                   "--config", str(self.config_path), "--id", str(i.replica)]
        if i != self._front(i.replica):
            command += ["--role", i.role, "--partition", str(i.partition)]
        return command

    def kill(self, i: Node, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to replica ``i``'s processes, or to process ``i`` (a crash by
        default); after SIGKILL, waits until they are gone."""
        for address in self.addresses(i):
            proc = self._procs.get(address)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(sig)
            if sig == signal.SIGKILL:
                proc.wait()

    def stop(self, i: Node, timeout: float = STOP_TIMEOUT) -> int | None:
        """Stop replica ``i`` (every process of it) or process ``i`` cleanly (SIGTERM;
        SIGKILL after ``timeout`` s). Returns the exit code of its front process (None
        if it was not started)."""
        for address in self.addresses(i):
            proc = self._procs.get(address)
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        return self.returncode(i)

    def restart(self, i: Node, timeout: float = 60.0) -> None:
        """Stop replica ``i`` (or process ``i``) if it runs, start it again on its data
        directory (it recovers from its store and catches up), and wait until it answers
        /status."""
        self.stop(i)
        addresses = self.addresses(i)
        for address in addresses:
            self._spawn(address)
        self._wait_ready(addresses, timeout)

    def close(self) -> None:
        """Stop every replica: SIGTERM to all, wait, SIGKILL whatever is left.
        Idempotent; also registered with :mod:`atexit`."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        running = [p for p in self._procs.values() if p.poll() is None]
        for proc in running:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT
        for proc in running:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pids(self) -> dict[int, int]:
        """Process ids of the replicas' front processes that are running, by replica id."""
        return {a.replica: p.pid for a, p in sorted(self._procs.items())
                if p.poll() is None and a == self._front(a.replica)}

    @property
    def process_pids(self) -> dict[Address, int]:
        """Process ids of every running process, by address."""
        return {a: p.pid for a, p in sorted(self._procs.items()) if p.poll() is None}

    def alive(self, i: Node) -> bool:
        """Whether replica ``i``'s processes (or process ``i``) are all running."""
        procs = [self._procs.get(a) for a in self.addresses(i)]
        return bool(procs) and all(p is not None and p.poll() is None for p in procs)

    def returncode(self, i: Node) -> int | None:
        """Exit code of the latest run of replica ``i``'s front process (or of process
        ``i``); None while it runs (or before it was ever started). A negative code -N
        means it was killed by signal N."""
        proc = self._procs.get(self._front(i))
        return None if proc is None else proc.poll()

    # -- observing ---------------------------------------------------------------------

    def get_json(self, i: Node, path: str, timeout: float = 5.0) -> Any:
        """GET ``path`` (e.g. ``/log?first=1&last=100``) from replica ``i``'s HTTP API
        (its front process's, or process ``i``'s)."""
        return replica_json(self.config, i, path, timeout)

    def status(self, i: Node, timeout: float = 5.0) -> dict[str, Any]:
        """Replica ``i``'s (or process ``i``'s) ``GET /status`` (view, executed_seq,
        state_root, dropped counters, cpu_s, ...). Raises OSError if it does not answer."""
        body: dict[str, Any] = replica_json(self.config, i, "/status", timeout)
        return body

    def wait_converged(
        self, timeout: float = 30.0, ids: list[int] | None = None
    ) -> tuple[int, str]:
        """Wait until the running replicas (or ``ids``) all report the same
        ``executed_seq`` and ``state_root`` (and ``block_hash``); returns the seq and the
        state root. Stop the load
        first: under load replicas agree only by chance. Raises TimeoutError with what
        each replica last reported."""
        return wait_converged(self.config, list(self.pids) if ids is None else ids, timeout)

    def log_path(self, i: Node) -> Path:
        """Where the output of replica ``i``'s front process (or of process ``i``) goes."""
        return self.dir / "logs" / f"{process_name(self._front(i), self.config.front_role)}.log"

    def log_tail(self, i: Node, lines: int = 20, this_run: bool = False) -> str:
        """The last ``lines`` lines of replica ``i``'s (or process ``i``'s) log
        (``this_run``: only of the latest process this cluster started, not of earlier
        runs)."""
        start = self._log_start.get(self._front(i), 0) if this_run else 0
        try:
            with open(self.log_path(i), "rb") as log:
                log.seek(max(start, log.seek(0, os.SEEK_END) - 64 * 1024))
                text = log.read().decode(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(no output)"


# -- phalanx up --------------------------------------------------------------------------

FAUCET_FILE = "faucet.key"
FAUCET_BALANCE = 10**15
"""What ``phalanx up`` gives the faucet wallet of a new ledger cluster at genesis."""


def faucet_genesis(directory: Path) -> dict[bytes, int]:
    """A genesis that funds ``directory/faucet.key`` (created, mode 0600, if missing)."""
    from phalanx.client.wallet import Wallet

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / FAUCET_FILE
    wallet = Wallet.load(path) if path.exists() else Wallet.new()
    if not path.exists():
        wallet.save(path)
    return {wallet.address: FAUCET_BALANCE}


def run_up(args: argparse.Namespace) -> int:
    """``phalanx up``: run a local cluster until SIGINT or SIGTERM.

    Exits 0 after a Ctrl-C if every replica ran until then; 1 if a replica failed to
    start (each failed one is named, with its output), if the directory's replicas were
    already running, or if a replica exited while the cluster ran."""
    from rich.console import Console
    from rich.markup import escape

    console = Console()
    directory = Path(args.dir)
    reuse = not args.fresh and (directory / CLUSTER_FILE).exists()
    app = getattr(args, "app", "kv")
    genesis = faucet_genesis(directory) if app == "ledger" and not reuse else None
    cluster = LocalCluster(
        directory, args.n, protocol=args.protocol, base_port=args.base_port,
        base_http_port=args.base_http_port, fresh=args.fresh, app=app, genesis=genesis,
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            cluster.start(cancel=stop)
        except (ClusterError, TimeoutError, OSError, ValueError) as exc:
            console.print(f"[red]phalanx up: {escape(str(exc))}[/red]", highlight=False,
                          soft_wrap=True)
            return 1
        died = False
        if not stop.is_set():
            if reuse:
                config = cluster.config
                console.print(
                    f"using the existing {cluster.config_path} (protocol {config.protocol}, "
                    f"n={config.n}, keys and data kept; --fresh starts over)", highlight=False,
                    soft_wrap=True,
                )
            _print_up(console, cluster)
            died = _watch(console, cluster, stop)
        console.print("stopping the replicas ...")
        sys.stdout.flush()
        cluster.close()
        console.print("stopped")
        return 1 if died else 0
    finally:
        cluster.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _print_up(console: Any, cluster: LocalCluster) -> None:
    from rich.table import Table

    config = cluster.config
    table = Table(title=f"{config.protocol} cluster, n={config.n}, f={config.f}")
    for column in ("id", "port", "http port", "pid", "log"):
        table.add_column(column)
    pids = cluster.process_pids
    for p in config.processes:
        table.add_row(
            str(p.address), str(p.port), str(p.http_port), str(pids.get(p.address, "-")),
            str(cluster.log_path(p.address)),
        )
    console.print(table)
    warning = no_fault_warning(config.protocol, config.n, config.f)
    if warning:
        console.print(f"[yellow]{warning}[/yellow]", highlight=False, soft_wrap=True)
    path = cluster.config_path
    http = config.replicas[0].http_port
    # Plain prints: commands must stay copy-pasteable, never wrapped at the console width.
    print("try:")
    if config.app == "ledger":
        faucet = cluster.dir / FAUCET_FILE
        print("  phalanx wallet new --out alice.key")
        print(f"  phalanx client --config {path} transfer --wallet {faucet} --to alice.key 1000")
        print(f"  phalanx client --config {path} balance alice.key")
    else:
        print(f"  phalanx client --config {path} put k v")
        print(f"  phalanx client --config {path} get k")
    print(f"  curl http://{config.replicas[0].host}:{http}/status")
    print("Ctrl-C stops the cluster.")
    sys.stdout.flush()


def _watch(console: Any, cluster: LocalCluster, stop: threading.Event) -> bool:
    """Until ``stop``: report replicas that die (with their log's tail), keep the rest.
    Returns whether any replica exited."""
    reported: set[Address] = set()
    processes = [p.address for p in cluster.config.processes]
    while not stop.is_set():
        time.sleep(0.2)  # a signal interrupts the sleep; the handler sets ``stop``
        for i in processes:
            code = cluster.returncode(i)
            if i in reported or code is None:
                continue
            reported.add(i)
            console.print(
                f"[red]replica {i} {_exit_reason(code)} unexpectedly; the others keep "
                f"running. Last lines of {cluster.log_path(i)}:[/red]", highlight=False,
                soft_wrap=True,
            )
            print(cluster.log_tail(i, this_run=True))
            sys.stdout.flush()
        if len(reported) == len(processes):
            console.print("[red]every replica has exited[/red]")
            return True
    return bool(reported)


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())


def _exit_reason(code: int) -> str:
    """'exited with code 1' or 'was killed by SIGKILL' (Popen reports signal N as -N)."""
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


__all__ = [
    "ClusterError",
    "LocalCluster",
    "free_port_block",
    "replica_json",
    "run_up",
    "wait_converged",
]
