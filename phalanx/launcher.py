"""One replica process: config + key -> crypto, core, store, transport, driver, HTTP API.

A replica's front process (the only one, for most protocols) runs the replica host —
the application, its certificates and snapshots — and the full API; a protocol's other
processes (ScalablePBFT's roles, say) run their core with ``/status`` and ``/metrics``.

The composition root of a replica: it chooses the application (key-value store or
ledger) and the API, and wires them to the asyncio runtime, so it sits above both
:mod:`phalanx.runtime` and :mod:`phalanx.api`. ``phalanx node`` calls
:func:`serve_replica`; tests and ``phalanx up`` start that command as a subprocess, so a
replica in a test is exactly what a user runs.

Start-up order matters: the data directory's lock first, then both listening ports, and
only then the store. A second process for a replica that already runs (a second
``phalanx up`` on the same directory, say) is refused at the lock or at the ports, before
it could replay the live write-ahead log of the running one (see
:mod:`phalanx.storage.lock`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
from pathlib import Path
from typing import Any

from aiohttp import web

from phalanx.api.http import make_app
from phalanx.api.ledger import Gateway, LedgerApi
from phalanx.api.limits import GuardedSite, HttpGuard, HttpLimits
from phalanx.config import ClusterConfig, load, load_private_key, process_name
from phalanx.core.address import Address
from phalanx.core.node import ReplicaCore
from phalanx.crypto.ed25519 import Ed25519NodeCrypto
from phalanx.crypto.keys import KeyPair
from phalanx.host import ReplicaHost
from phalanx.ledger.state import make_ledger_factory
from phalanx.measure.accounting import Accounting, timed_factory
from phalanx.protocols.registry import protocol
from phalanx.runtime import run
from phalanx.runtime.linkfaults import LINK_FAULTS_ENV
from phalanx.runtime.linkfaults import install as install_link_faults
from phalanx.runtime.metrics import Metrics
from phalanx.runtime.node import ReplicaDriver
from phalanx.runtime.transport import Transport
from phalanx.runtime.wan import WanPlan
from phalanx.statemachine.base import BlockStateMachine, StateMachineFactory
from phalanx.statemachine.burn import kv_factory
from phalanx.storage.lmdb_store import Store
from phalanx.storage.lock import DataDirLock

log = logging.getLogger("phalanx.node")

DURABILITY = ("fsync", "process")
"""``fsync``: every write reaches the disk before the replica answers (survives power
loss). ``process``: writes reach the OS page cache first (survive the replica being
killed at any point, not the machine losing power); several times cheaper."""


def bind_listener(host: str, port: int, what: str) -> socket.socket:
    """A socket listening on ``host:port``; OSError saying ``what`` could not listen."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                    flags=socket.AI_PASSIVE)[0][0]
        # SO_REUSEADDR (set by create_server): a restart may bind while old connections
        # of the previous process are in TIME_WAIT; a live listener still refuses.
        return socket.create_server((host, port), family=family)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            why = "another process uses that port"
        else:
            # create_server appends the address to strerror; gaierror's errno is < 0.
            why = os.strerror(e.errno) if e.errno and e.errno > 0 else e.strerror or str(e)
        raise OSError(f"{what} cannot listen on {host}:{port}: {why}") from None


class ReplicaServer:
    """Everything one replica process runs, started and stopped together: ``process``
    names it (a replica id: its front process).

    ``listeners`` are the replica and HTTP sockets, already bound (see
    :func:`serve_replica`); without them :meth:`start` binds the configured ports."""

    def __init__(
        self,
        config: ClusterConfig,
        process: int | Address,
        seed: bytes,
        data_dir: str | None,
        durability: str = "fsync",
        *,
        accounting: bool = True,
        wan: WanPlan | None = None,
        burn_us_per_op: float = 0.0,
        listeners: tuple[socket.socket, socket.socket] | None = None,
        http_limits: HttpLimits | None = None,
    ):
        self.config = config
        self.listeners = listeners
        self.http_limits = http_limits
        address = Address(process, config.front_role) if isinstance(process, int) else process
        self.address = address
        self.replica_id = replica_id = address.replica
        self.info = config.process(address)
        self.front = address.role == config.front_role
        keypair = KeyPair.from_seed(seed)
        public_keys = list(config.public_keys)
        spec = self.spec = protocol(config.protocol)
        quorums = config.quorums
        self.metrics = Metrics(replica=str(address))
        crypto = Ed25519NodeCrypto(replica_id, keypair, public_keys)
        make_app: StateMachineFactory = kv_factory(burn_us_per_op)
        if config.app == "ledger":
            make_app = make_ledger_factory(config.genesis)
        # The driver and transport measure per-type and per-phase costs; the core stays
        # pure (the state machine it is given is timed from outside).
        self.accounting = Accounting(spec.phases) if accounting else None
        if self.accounting is not None:
            make_app = timed_factory(make_app, self.accounting)
        self.host: ReplicaHost | None = None
        self.core: ReplicaCore
        if self.front:
            hosted = spec.make_replica(replica_id, quorums, crypto, make_app, config.options)
            self.core, self.host = hosted, hosted.host
        else:
            assert spec.make_process is not None  # the config lists no process without it
            self.core = spec.make_process(address, quorums, crypto, config.protocol_options())
        if durability not in DURABILITY:
            raise ValueError(f"durability must be one of {', '.join(DURABILITY)}")
        self.store = Store(data_dir, durable=durability == "fsync") if data_dir else None
        addrs = {p.address: (p.host, p.port) for p in config.processes}
        self.transport = Transport(
            address, keypair, addrs, public_keys, spec.decoder(),
            None, None, self.metrics,
        )
        self.transport.accounting = self.accounting
        if wan is not None:
            self.transport.shaper = wan.replica_shaper(replica_id)
        self.stopped = asyncio.Event()
        self.driver = ReplicaDriver(
            self.core, self.transport, self.store, self.metrics, on_fatal=self._fatal,
            accounting=self.accounting,
        )
        self._http: web.AppRunner | None = None
        self.gateway: Gateway | None = None
        self.blocks: Any = None  # the ledger API's BlockFetcher

    def describe(self) -> dict[str, Any]:
        """Who this replica is and what it executed, for ``GET /status``.

        ``pid`` and ``public_key`` let a launcher check that the process answering on a
        port is the one it started for this cluster. ``state_root`` is the Merkle root of
        the application state; a block state machine (the ledger) also reports its head
        block's ``height`` and ``block_hash``.
        """
        body: dict[str, Any] = {
            "protocol": self.config.protocol,
            "app": self.config.app,
            "n": self.config.n,
            "f": self.config.f,
            "process": str(self.address),
            "pid": os.getpid(),
            "public_key": self.config.replica(self.replica_id).public_key.hex(),
            **self.spec.status(self.core),
        }
        if self.host is None:
            return body
        app = self.host.app  # replaced when a snapshot is installed: look it up each time
        body["state_root"] = app.state_root().hex()
        if isinstance(app, BlockStateMachine):
            height, block_hash = app.last_block()
            body["height"] = height
            body["block_hash"] = block_hash.hex()
        return body

    async def start(self) -> None:
        replica_sock, http_sock = self.listeners or (None, None)
        await self.transport.start(self.info.host, self.info.port, sock=replica_sock)
        self.driver.start()
        app = make_app(self.driver, self.metrics, self.describe)
        if self.config.app == "ledger" and self.host is not None:
            # POST /tx, GET /tx, /account, /block; admitted txs enter ordering through
            # this process's gateway clients.
            self.gateway = Gateway(self.config)
            await self.gateway.start()
            from phalanx.api.block_fetch import BlockFetcher

            self.blocks = BlockFetcher(self.config, self.replica_id)
            LedgerApi(self.host, self.store, self.gateway, self.metrics,
                      blocks=self.blocks).install(app)
        # Connection cap, head deadline, and a count of what aiohttp refuses itself.
        guard = HttpGuard(self.metrics, self.http_limits)
        guard.install(app)
        self._http = web.AppRunner(app, **guard.runner_options())
        await self._http.setup()
        await GuardedSite(self._http, guard, sock=http_sock, host=self.info.host,
                          port=self.info.http_port).start()
        log.info("replica %s serving on %s:%d (HTTP %d)", self.address, self.info.host,
                 self.info.port, self.info.http_port)

    async def close(self) -> None:
        if self.blocks is not None:
            await self.blocks.close()
        if self.gateway is not None:
            await self.gateway.close()
        await self.driver.close()
        await self.transport.close()
        if self._http is not None:
            await self._http.cleanup()
        if self.store is not None:
            self.store.close()

    def _fatal(self, error: BaseException) -> None:
        log.critical("replica %s stopping: %r", self.address, error)
        self.stopped.set()


async def _serve(server: ReplicaServer) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, server.stopped.set)
    faults_dir = os.environ.get(LINK_FAULTS_ENV)
    if faults_dir:  # set by ``phalanx bench --nemesis``: partitions and slow links
        install_link_faults(server.transport, server.replica_id, faults_dir, server.metrics)
    await server.start()
    await server.stopped.wait()
    await server.close()


def serve_replica(
    config_path: str,
    replica_id: int,
    key_path: str | None = None,
    data_dir: str | None = None,
    durability: str = "fsync",
    *,
    role: str | None = None,
    partition: int = 0,
    accounting: bool = True,
    wan_path: str | None = None,
    burn_us_per_op: float = 0.0,
) -> int:
    """Run process (``role``, ``partition``) of replica ``replica_id`` — by default its
    front process — until SIGINT/SIGTERM. Returns the exit code.

    Raises ValueError or OSError (with a message for the operator) when it cannot start:
    an unknown id or process, a bad key, the data directory locked by a running process
    (:class:`~phalanx.storage.lock.DataDirInUse`), a port in use."""
    config = load(config_path)
    address = Address(replica_id, config.front_role if role is None else role, partition)
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s r{address} %(levelname)s %(message)s"
    )
    if not 0 <= replica_id < config.n:
        raise ValueError(f"{config_path} has no replica {replica_id}: its {config.n} "
                         f"replicas have ids 0..{config.n - 1}")
    try:
        info = config.process(address)
    except KeyError:
        known = ", ".join(str(p.address) for p in config.processes if p.address.replica
                          == replica_id)
        raise ValueError(f"{config_path} has no process {address}: replica {replica_id} "
                         f"runs {known}") from None
    if durability not in DURABILITY:
        raise ValueError(f"durability must be one of {', '.join(DURABILITY)}")
    base = Path(config_path).parent
    key = Path(key_path) if key_path else base / f"replica-{replica_id}.key"
    seed = load_private_key(key, config.replica(replica_id).public_key)
    data = data_dir or str(base / "data" / process_name(address, config.front_role))
    wan = WanPlan.load(wan_path) if wan_path else None
    what = f"replica {address}"
    with contextlib.ExitStack() as held:
        # Lock, then ports, then the store (see the module docstring).
        held.enter_context(DataDirLock(data, what))
        listeners = (
            held.enter_context(bind_listener(info.host, info.port, what)),
            held.enter_context(bind_listener(info.host, info.http_port, f"{what}'s HTTP API")),
        )
        server = ReplicaServer(config, address, seed, data, durability,
                               accounting=accounting, wan=wan,
                               burn_us_per_op=burn_us_per_op, listeners=listeners)
        run(_serve(server))
    return 1 if server.driver.fatal_error is not None else 0
