r"""The deterministic simulator: a discrete-event driver for the sans-I/O cores.

A :class:`Simulation` runs ``n`` replicas — one process each, or several at their
:class:`~phalanx.core.address.Address`\ es — and any number of closed-loop clients on a
simulated network, in simulated time, from one seed. Every random choice (keys, client
ids, latencies, losses) comes from one ``random.Random(seed)``; events are ordered by
``(time, insertion sequence)``; nothing depends on the wall clock or on hash order. So the
same seed gives the same event trace, byte for byte, and a failing seed replays exactly.

The simulation is a thin driver: it does for the cores what the asyncio runtime does
(carry out their effects, persist before sending, re-arm named timers, restart from the
durable store), and by default round-trips every message through the real wire encoding,
so a message that would not survive the real network does not survive this one either.
"""

from __future__ import annotations

import hashlib
import heapq
import random
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, final

import msgspec

from phalanx.core.address import REPLICA_ROLE, Address
from phalanx.core.crypto import ClientCrypto, NodeCrypto
from phalanx.core.effects import (
    Broadcast,
    CancelTimer,
    Completed,
    Dropped,
    Executed,
    NotAccepted,
    Persist,
    Send,
    SetTimer,
    ToClient,
)
from phalanx.core.messages import encode, message_decoder
from phalanx.core.node import ClientCore, ReplicaCore
from phalanx.safety import Checker, SafetyViolation, generic_checkers
from phalanx.safety import committed_log_hash as _log_hash
from phalanx.sim.crypto import SymbolicNodeCrypto, SymbolicOracle
from phalanx.sim.network import Network, NetworkModel
from phalanx.sim.stats import (
    CompletedRequest,
    NodeStats,
    StuckClient,
    liveness_report,
)

MakeReplica = Callable[[int, NodeCrypto], ReplicaCore]
"""Builds replica ``r``'s front process (the one that hosts the application)."""
MakeProcess = Callable[[Address, NodeCrypto], ReplicaCore]
"""Builds one of a replica's other processes."""
MakeClient = Callable[[ClientCrypto], ClientCore]
Ops = Callable[[int, int], bytes]
"""``ops(client_index, request_index) -> op``: the workload of closed-loop clients."""

NodeId = int | bytes
"""A replica id, or a client id (its 32-byte public key)."""


class Twin(NamedTuple):
    """The second copy of Byzantine replica ``replica`` (Twins: :meth:`Simulation.add_twin`):
    the same addresses, keys and id, its own cores and store."""

    replica: int

    def __str__(self) -> str:
        return f"{self.replica}'"


Node = int | bytes | Address | Twin
"""What fault schedules name: a replica (all its processes), a client, one process, or
a replica's twin (all its processes' second copies)."""

# Event kinds. An event is a tuple (time, sequence, kind, a, b, c, d); the unique
# sequence number breaks time ties in insertion order and keeps tuples from ever
# comparing their payloads.
_START = 0
_DELIVER = 1
_TIMER = 2
_SUBMIT = 3
_CRASH = 4
_RESTART = 5
_PARTITION = 6
_HEAL = 7
_CALL = 8
_KIND_NAMES = (
    "start", "deliver", "timer", "submit", "crash", "restart", "partition", "heal", "call",
)

class SimulationError(Exception):
    """A core or a behaviour raised; the message names the seed, time and event."""


class ByzantineHooks(Protocol):
    """What the simulation asks of a Byzantine replica's behaviour, around its core
    (:class:`phalanx.sim.behaviour.Behaviour` is the honest implementation to build on)."""

    def on_deliver(self, sim: Simulation, src: NodeId, msg: Any) -> bool | None:
        """Before the core sees ``msg`` from ``src``; ``False`` suppresses it."""
        ...

    def on_timer(self, sim: Simulation, name: str) -> bool | None:
        """Before the core's timer ``name`` fires; ``False`` suppresses it."""
        ...

    def filter(self, dest: NodeId, msg: Any) -> list[Any]:
        """The messages actually sent to ``dest`` in place of ``msg``."""
        ...


@final  # the delivery loop tells nodes apart by ``type(x) is``
@dataclass(slots=True)
class _Replica:
    """One process of a replica (one copy of it: Twins run a second)."""

    address: Address
    replica_id: int  # address.replica, read on every step
    front: bool  # the replica's front process (built by make_replica), or another
    crypto: SymbolicNodeCrypto
    core: ReplicaCore | None
    alive: bool = False
    incarnation: int = 0
    timers: dict[str, int] = field(default_factory=dict)
    # The durable store: survives crashes, like the replica's data dir.
    store: dict[bytes, bytes] = field(default_factory=dict)
    # Lazy records not yet written: they wait for the next non-lazy write (the real driver
    # also writes them after a few ms; waiting longer is the harsher test) and a crash
    # loses them.
    lazy: list[tuple[bytes, bytes | None]] = field(default_factory=list)
    # First execution of each slot, in execution order (replays after restarts are not
    # appended, so logs of correct replicas stay comparable).
    log: dict[tuple[int, int], Executed] = field(default_factory=dict)
    executions: int = 0
    behaviour: ByzantineHooks | None = None
    endpoint: int = -1  # index into Simulation._nodes
    copy: int = 0  # 1 for a twin


@final
@dataclass(slots=True)
class _Client:
    index: int
    endpoint: int
    client_id: bytes
    core: ClientCore
    ops: Ops
    requests: int
    think_time: float
    timers: dict[str, int] = field(default_factory=dict)
    next_request: int = 0
    pending: int | None = None
    pending_since: float = 0.0
    completed: list[CompletedRequest] = field(default_factory=list)


class Simulation:
    """A seeded cluster of ``n`` replicas and closed-loop clients.

    Replica ``r``'s front process is ``make_replica(r, crypto)`` at ``Address(r,
    front_role)``; ``processes`` lists the replicas' other processes (if any), each built
    by ``make_process(address, crypto)``. Every process of a replica holds its keys. A
    core's ``Send`` and ``Broadcast`` are routed by address (:mod:`phalanx.core.effects`);
    clients talk to front processes. Endpoints (the numbers in traces) are the front
    processes ``0..n-1``, then the other processes, then clients and twins in the order
    they were added.

    ``messages`` are the protocol's message types (a tagged msgspec union, e.g. PBFT's
    ``ALL_MESSAGES``); with ``wire=True`` (the default) every message is encoded with
    :func:`phalanx.core.messages.encode` when sent and decoded from those bytes for each
    receiver. ``wire=False`` passes the objects themselves (faster; ``messages`` unused).

    ``checkers`` default to :func:`phalanx.safety.generic_checkers` of a total order; pass
    ``[]`` to run without. ``record_trace`` keeps a human-readable line per event in
    :attr:`trace`; the trace hash is always computed.
    """

    def __init__(
        self,
        seed: int,
        n: int,
        make_replica: MakeReplica,
        make_client: MakeClient,
        network: NetworkModel | None = None,
        *,
        messages: Sequence[type] | msgspec.msgpack.Decoder[Any] | None = None,
        wire: bool = True,
        checkers: Sequence[Checker] | None = None,
        record_trace: bool = False,
        processes: Sequence[Address] = (),
        make_process: MakeProcess | None = None,
        front_role: str = REPLICA_ROLE,
    ) -> None:
        if n < 1:
            raise ValueError(f"need at least one replica, got n={n}")
        if processes and make_process is None:
            raise ValueError("processes other than the front ones need make_process")
        self.seed = seed
        self.n = n
        self.now = 0.0
        self._make_replica = make_replica
        self._make_process = make_process
        self._make_client = make_client
        # The one RNG. Sub-streams are drawn from it in a fixed order, so that e.g. a
        # change of loss rate does not change keys and client ids of the same seed.
        self.rng = random.Random(seed)
        self._oracle = SymbolicOracle(random.Random(self.rng.getrandbits(64)), n)
        self.network = Network(network or NetworkModel(), random.Random(self.rng.getrandbits(64)))
        self._decoder = _make_decoder(messages) if wire else None
        if wire and self._decoder is None:
            raise ValueError("wire=True needs the protocol's message types: pass messages=...")
        self.checkers: list[Checker] = (
            generic_checkers(total_order=True) if checkers is None else list(checkers)
        )
        for checker in self.checkers:
            checker.bind(self)
        self.counters: Counter[str] = Counter()
        self.events_processed = 0
        self.trace: list[str] | None = [] if record_trace else None
        # CPU and bandwidth as queued resources (sim/resources.py); None: free and instant.
        self.resources: Any = None
        self._trace_hash = hashlib.sha256()
        self._queue: list[tuple[Any, ...]] = []
        self._sequence = 0
        self._timer_generation = 0
        self._partition_ids = 0
        self._byzantine: dict[int, ByzantineHooks] = {}
        # Every node by endpoint; the copies of each process by address (the original,
        # then its twin); each replica's processes (front first); the twins by replica.
        self._nodes: list[_Replica | _Client] = []
        self._copies: dict[Address, list[_Replica]] = {}
        self._processes: list[list[_Replica]] = [[] for _ in range(n)]
        self._twins: dict[int, list[_Replica]] = {}
        self._stats: dict[int, NodeStats] = {}
        # Broadcast destinations per (role, partition), computed once.
        self._peers: dict[tuple[str, int], list[Address]] = {}
        # Checkers that want Dropped observations (protocol alarms such as a detected
        # state divergence); empty for the default checkers, so drops stay cheap.
        self._drop_checkers = [
            c for c in self.checkers if type(c).on_dropped is not Checker.on_dropped
        ]
        self._clients: list[_Client] = []
        self._client_endpoint: dict[bytes, int] = {}
        self._submitted: dict[bytes, dict[int, float]] = {}
        self._front_role = front_role
        for replica_id in range(n):
            crypto = self._oracle.node_crypto(replica_id)
            self._add_process(Address(replica_id, front_role), crypto,
                              make_replica(replica_id, crypto))
        for address in sorted(set(processes)):
            if not 0 <= address.replica < n or address.role == front_role:
                raise ValueError(f"process {address}: no such replica, or a second front")
            crypto = self._oracle.node_crypto(address.replica)
            assert make_process is not None
            self._add_process(address, crypto, make_process(address, crypto))
        self.process_count = len(self._nodes)
        """Endpoints below this are replica processes (originals; twins come later)."""
        if self.process_count > n:
            self.network.location = self._location  # else every location is the endpoint

    # -- scheduling API ---------------------------------------------------------------

    def add_clients(
        self,
        count: int,
        ops: Ops,
        requests_per_client: int,
        think_time: float = 0.0,
        start_at: float | None = None,
    ) -> list[bytes]:
        """Add ``count`` closed-loop clients; each submits ``requests_per_client`` ops,
        the next one ``think_time`` seconds after the previous one completed.

        ``ops(client_index, request_index)`` gives the ops; client indexes run on across
        calls. Returns the new clients' ids.
        """
        if count < 0 or requests_per_client < 0 or think_time < 0:
            raise ValueError("count, requests_per_client and think_time must be >= 0")
        at = self._at(start_at)
        ids = []
        for _ in range(count):
            crypto = self._oracle.new_client()
            core = self._make_client(crypto)
            if core.client_id != crypto.public_key:
                raise ValueError("make_client must build a client named by crypto.public_key")
            index = len(self._clients)
            endpoint = len(self._nodes)
            client = _Client(
                index, endpoint, crypto.public_key, core, ops, requests_per_client, think_time
            )
            self._clients.append(client)
            self._nodes.append(client)
            self._client_endpoint[client.client_id] = endpoint
            self._stats[endpoint] = NodeStats()
            if requests_per_client:
                self._push(at, _SUBMIT, index)
            ids.append(client.client_id)
        return ids

    def crash(self, node: int | Address, at: float | None = None) -> None:
        """Crash ``node`` — a replica (every process of it) or one process — at time
        ``at`` (default: now): memory, timers and in-flight inbound messages are lost;
        durable stores are kept."""
        self._originals(node)  # checks it
        self._push(self._at(at), _CRASH, node)

    def restart(self, node: int | Address, at: float | None = None) -> None:
        """Restart crashed ``node`` (a replica or one process): a fresh core,
        ``recover`` from its durable store (key order), then ``start``."""
        self._originals(node)
        self._push(self._at(at), _RESTART, node)

    def partition(
        self,
        groups: Sequence[Iterable[Node]],
        at: float | None = None,
        heal_at: float | None = None,
    ) -> int:
        """From ``at`` until ``heal_at`` (default: never), nodes in different ``groups``
        cannot talk; messages in flight across the cut are lost. Nodes in no group
        (clients, unless listed) are unaffected. Returns the partition's id."""
        start = self._at(at)
        if heal_at is not None and heal_at < start:
            raise ValueError(f"heal_at={heal_at} is before the partition starts at {start}")
        endpoint_groups = [tuple(e for node in group for e in self._endpoints(node))
                           for group in groups]
        self._partition_ids += 1
        partition_id = self._partition_ids
        self._push(start, _PARTITION, partition_id, endpoint_groups)
        if heal_at is not None:
            self._push(heal_at, _HEAL, partition_id)
        return partition_id

    def deliver_at(self, at: float, src: int, dst: int, payload: Any, incarnation: int) -> None:
        """Deliver ``payload`` (as it was sent) from endpoint ``src`` to endpoint ``dst`` at
        ``at``, unless ``dst`` has restarted since ``incarnation``: how :attr:`resources`
        hands back a message it held while the receiving node's CPU was busy."""
        self._push(at, _DELIVER, src, dst, payload, incarnation)

    def call_at(self, at: float, fn: Callable[[Simulation], None]) -> None:
        """Run ``fn(self)`` at simulated time ``at`` (for fault schedules and fuzzers)."""
        self._push(self._at(at), _CALL, fn)

    def set_byzantine(self, replica: int, behaviour: ByzantineHooks) -> None:
        """Make ``replica`` Byzantine: ``behaviour`` wraps it and checkers ignore it.
        Call before :meth:`run`, so no observation of it was trusted already."""
        self._check_replica(replica)
        if self.events_processed:
            raise RuntimeError("set_byzantine must be called before the simulation runs")
        self._byzantine[replica] = behaviour
        for process in self._processes[replica]:
            process.behaviour = behaviour

    def add_twin(self, replica: int, behaviour: ByzantineHooks | None = None) -> Twin:
        """Run a second copy of Byzantine ``replica`` (Twins): every process of it again,
        at the same addresses with the same keys, its own cores and durable stores.
        Messages to an address reach both copies; messages from either come from that
        address. Put the two in different :meth:`partition` groups (the copy is named by
        the returned :class:`Twin`) and each leads its own part of the network. Twins do
        not crash."""
        self._check_replica(replica)
        if replica not in self._byzantine:
            raise ValueError(f"replica {replica} must be Byzantine (set_byzantine) to have a twin")
        if self.events_processed:
            raise RuntimeError("add_twin must be called before the simulation runs")
        if replica in self._twins:
            raise ValueError(f"replica {replica} already has a twin")
        copies = []
        for original in self._processes[replica]:
            twin = self._add_process(original.address, original.crypto,
                                     self._build(original), copy=1)
            twin.behaviour = behaviour
            copies.append(twin)
        self._twins[replica] = copies
        self.network.location = self._location
        return Twin(replica)

    def twin(self, replica: int) -> ReplicaCore | None:
        """The core of ``replica``'s twin's front process (None if it has none)."""
        copies = self._twins.get(replica)
        return None if copies is None else copies[0].core

    def process(self, address: Address) -> ReplicaCore | None:
        """The current core of the process at ``address`` (None while it is crashed)."""
        return self._original(address).core

    def byzantine_crypto(self, replica: int) -> SymbolicNodeCrypto:
        """Crypto of Byzantine ``replica`` that can sign as any Byzantine replica (its
        colluders) and as no correct one."""
        if replica not in self._byzantine:
            raise PermissionError(f"replica {replica} is not Byzantine")
        return self._oracle.node_crypto(replica, sorted(self._byzantine))

    def inject(self, src: int, dest: NodeId | Address, msg: Any) -> None:
        """Send ``msg`` from Byzantine replica ``src`` (its front process) to ``dest`` now
        — a client, a replica's front process, or any process (an internal channel of
        another replica, a wrong partition) — bypassing its core and its filter (e.g.
        from a behaviour's hook)."""
        if src not in self._byzantine:
            raise PermissionError(f"only Byzantine replicas inject messages, not {src}")
        sender = self._processes[src][0].endpoint
        if isinstance(dest, bytes):
            self._transmit(sender, self._client(dest), msg, None)
            return
        address = Address(dest, self._front_role) if isinstance(dest, int) else dest
        targets = self._copies.get(address)
        if targets is None:
            raise ValueError(f"no process at {address}")
        for target in targets:
            self._transmit(sender, target.endpoint, msg, None)

    # -- running ------------------------------------------------------------------

    def run(
        self,
        until: float | None = None,
        max_events: int | None = None,
        stop_when: Callable[[], bool] | None = None,
    ) -> str:
        """Process events in order until one limit is reached; returns why it stopped:
        ``"until"`` (next event is after ``until``; the clock is set to it), ``"idle"``
        (no events left), ``"max_events"`` or ``"stop_when"`` (checked before each event).

        Raises :class:`SafetyViolation` from a checker, :class:`SimulationError` if a
        core raises.
        """
        processed = 0
        queue = self._queue
        while True:
            if stop_when is not None and stop_when():
                return "stop_when"
            if not queue:
                if until is not None and until > self.now:
                    self.now = until
                return "idle"
            if until is not None and queue[0][0] > until:
                self.now = max(self.now, until)
                return "until"
            if max_events is not None and processed >= max_events:
                return "max_events"
            event = heapq.heappop(queue)
            self.now = event[0]
            processed += 1
            self.events_processed += 1
            try:
                self._dispatch(event)
            except (SafetyViolation, SimulationError):
                raise
            except Exception as exc:
                raise SimulationError(
                    f"seed={self.seed} t={self.now:.6f}s event #{self.events_processed} "
                    f"({_KIND_NAMES[event[2]]}): {exc!r}"
                ) from exc

    # -- results ------------------------------------------------------------------

    @property
    def byzantine(self) -> tuple[int, ...]:
        """Ids of the Byzantine replicas, ascending."""
        return tuple(sorted(self._byzantine))

    @property
    def correct_replicas(self) -> list[int]:
        """Ids of the replicas the checkers trust (crashed ones included)."""
        return [r for r in range(self.n) if r not in self._byzantine]

    @property
    def client_ids(self) -> list[bytes]:
        """Client ids in the order the clients were added (index = client index)."""
        return [c.client_id for c in self._clients]

    def replica(self, replica: int) -> ReplicaCore | None:
        """The current core of ``replica``'s front process (``None`` while crashed)."""
        self._check_replica(replica)
        return self._processes[replica][0].core

    def client(self, client_index: int) -> ClientCore:
        """The core of the ``client_index``-th client."""
        return self._clients[client_index].core

    def is_alive(self, node: int | Address) -> bool:
        """Has ``node`` (every process of a replica, or one process) started and not
        crashed since?"""
        return all(process.alive for process in self._originals(node))

    def durable_store(self, node: int | Address) -> Mapping[bytes, bytes]:
        """Read-only view of the durable store of a replica's front process, or of one
        process."""
        return dict(self._originals(node)[0].store)

    def executed_log(self, replica: int) -> list[Executed]:
        """Slots ``replica`` executed, each once, in the order it first executed them."""
        self._check_replica(replica)
        return list(self._processes[replica][0].log.values())

    def executions(self, replica: int) -> int:
        """How many ``Executed`` it emitted, counting replays after restarts."""
        self._check_replica(replica)
        return self._processes[replica][0].executions

    def committed_log_hash(self, replica: int) -> str:
        """Chained hash of ``replica``'s executed log (``safety.committed_log_hash``)."""
        return _log_hash(self.executed_log(replica))

    def completed(self, client_index: int | None = None) -> list[CompletedRequest]:
        """Completed requests of one client, or of all clients (by client, then order)."""
        if client_index is not None:
            return list(self._clients[client_index].completed)
        return [done for client in self._clients for done in client.completed]

    def latencies(self) -> list[float]:
        """Latency of every successfully completed request, in seconds."""
        return [d.latency for d in self.completed() if d.error is None]

    def node_stats(self, node: Node) -> NodeStats:
        """Messages and wire bytes sent and received by a client or one process (of a
        replica or twin: its front process)."""
        return self._stats[self._endpoints(node)[0]]

    def all_clients_done(self) -> bool:
        """Has every client completed all its requests?"""
        return all(len(c.completed) >= c.requests for c in self._clients)

    def stuck_clients(self) -> list[StuckClient]:
        """Clients that have not completed all their requests, with what they wait for."""
        return [
            StuckClient(
                c.index,
                c.client_id,
                len(c.completed),
                c.requests,
                c.pending,
                c.pending_since if c.pending is not None else None,
            )
            for c in self._clients
            if len(c.completed) < c.requests
        ]

    def liveness_report(self) -> str:
        """One line per stuck client, or a note that all are done."""
        return liveness_report(self.stuck_clients(), len(self._clients), self.now, self.seed)

    def trace_hash(self) -> str:
        """SHA-256 over every event processed so far: equal seeds give equal hashes."""
        return self._trace_hash.hexdigest()

    # -- event loop internals -----------------------------------------------------

    def _push(self, time: float, kind: int, a: Any = None, b: Any = None, c: Any = None,
              d: Any = None) -> None:
        self._sequence += 1
        heapq.heappush(self._queue, (time, self._sequence, kind, a, b, c, d))

    def _at(self, at: float | None) -> float:
        if at is None:
            return self.now
        if at < self.now:
            raise ValueError(f"time {at} is in the past (now={self.now})")
        return float(at)

    def _check_replica(self, replica: object) -> None:
        if not (isinstance(replica, int) and 0 <= replica < self.n):
            raise ValueError(f"no replica {replica!r} (n={self.n})")

    def _add_process(self, address: Address, crypto: SymbolicNodeCrypto, core: ReplicaCore,
                     copy: int = 0) -> _Replica:
        endpoint = len(self._nodes)
        process = _Replica(address, address.replica, address.role == self._front_role,
                           crypto, core, endpoint=endpoint, copy=copy)
        self._nodes.append(process)
        self._copies.setdefault(address, []).append(process)
        if copy == 0:
            self._processes[address.replica].append(process)
        self._stats[endpoint] = NodeStats()
        self._push(0.0, _START, endpoint)
        return process

    def _build(self, process: _Replica) -> ReplicaCore:
        """A fresh core for ``process`` (at start-up of a twin, or a restart)."""
        if process.front:
            return self._make_replica(process.replica_id, process.crypto)
        assert self._make_process is not None
        return self._make_process(process.address, process.crypto)

    def _original(self, address: Address) -> _Replica:
        copies = self._copies.get(address)
        if copies is None:
            raise ValueError(f"no process at {address}")
        return copies[0]

    def _originals(self, node: int | Address) -> list[_Replica]:
        """The processes ``node`` names: every one of a replica, or one."""
        if isinstance(node, Address):
            return [self._original(node)]
        self._check_replica(node)
        return self._processes[node]

    def _client(self, client: bytes) -> int:
        endpoint = self._client_endpoint.get(client)
        if endpoint is None:
            raise ValueError(f"unknown client {client.hex()[:16]}")
        return endpoint

    def _endpoints(self, node: Node) -> list[int]:
        """The endpoints ``node`` names (see :data:`Node`)."""
        if isinstance(node, bytes):
            return [self._client(node)]
        if isinstance(node, Twin):
            twins = self._twins.get(node.replica)
            if twins is None:
                raise ValueError(f"replica {node.replica} has no twin")
            return [twin.endpoint for twin in twins]
        return [process.endpoint for process in self._originals(node)]

    def _location(self, endpoint: int) -> int:
        """Where ``endpoint`` sits for the latency model: a replica's processes (and its
        twin's) with the replica, ``r``; client ``i`` at ``n + i``."""
        node = self._nodes[endpoint]
        if isinstance(node, _Replica):
            return node.replica_id
        return self.n + node.index

    def _record(self, line: str, wire: bytes | None = None) -> None:
        entry = f"{self.now!r} {line}\n".encode()
        self._trace_hash.update(entry)
        if wire is not None:
            self._trace_hash.update(wire)
        if self.trace is not None:
            self.trace.append(entry.decode().rstrip("\n"))

    def _dispatch(self, event: tuple[Any, ...]) -> None:
        _, _, kind, a, b, c, d = event
        if kind == _DELIVER:
            self._deliver(a, b, c, d)
        elif kind == _TIMER:
            self._fire_timer(a, b, c)
        elif kind == _SUBMIT:
            self._submit(self._clients[a])
        elif kind == _START:
            self._record(f"start {a}")
            replica = self._nodes[a]
            assert isinstance(replica, _Replica)
            replica.alive = True
            assert replica.core is not None
            self._apply_replica(replica, replica.core.start())
        elif kind == _CRASH:
            for process in self._originals(a):
                self._crash(process)
        elif kind == _RESTART:
            for process in self._originals(a):
                self._restart(process)
        elif kind == _PARTITION:
            self._record(f"partition #{a} {b}")
            self.network.partition(a, b)
        elif kind == _HEAL:
            self._record(f"heal #{a}")
            self.network.heal(a)
        elif kind == _CALL:
            self._record(f"call {getattr(a, '__qualname__', type(a).__name__)}")
            a(self)
        else:  # pragma: no cover - kinds are module constants
            raise AssertionError(f"unknown event kind {kind}")

    def _deliver(self, src: int, dst: int, payload: Any, incarnation: int) -> None:
        resources = self.resources
        if resources is not None and resources.defer(self, src, dst, payload, incarnation):
            # The node's CPU is busy: delivered once it is free. Deferring comes before
            # the loss checks, so a message released from the inbox and then lost still
            # releases the next one; decoding comes after, so it happens once.
            return
        decoder = self._decoder
        wire = payload if decoder is not None else None
        if not self.network.connected(src, dst):
            # The cut also kills what was already on the wire (TCP connection reset).
            self._record(f"lost {src}->{dst} (partition)", wire)
            self.network.counters["net.partitioned_in_flight"] += 1
            return
        nodes = self._nodes
        receiver = nodes[dst]
        replica = receiver if type(receiver) is _Replica else None
        if replica is not None and (not replica.alive or replica.incarnation != incarnation):
            self._record(f"lost {src}->{dst} (crashed)", wire)
            self.counters["sim.to_crashed"] += 1
            return
        if decoder is None:
            msg = payload
        else:
            try:
                msg = decoder.decode(payload)
            except (msgspec.DecodeError, msgspec.ValidationError):
                sender = nodes[src]
                if type(sender) is not _Replica or sender.behaviour is None:
                    raise  # a correct node's message that does not decode is a bug
                # What the real transport does with a frame that is not a valid message
                # (a Byzantine sender's view -1, a short digest): drop and count it.
                self._record(f"undecodable {src}->{dst}", wire)
                self.counters["dropped.decode"] += 1
                return
        self._record(f"deliver {src}->{dst} {type(msg).__name__}", wire)
        stats = self._stats[dst]
        stats.msgs_recv += 1
        if wire is not None:
            stats.bytes_recv += len(wire)
        sender = nodes[src]
        if replica is not None:
            core = replica.core
            assert core is not None
            behaviour = replica.behaviour
            if behaviour is not None:
                source = sender.replica_id if type(sender) is _Replica else sender.client_id
                if behaviour.on_deliver(self, source, msg) is False:
                    return
            if resources is not None:
                resources.receiving(dst, msg, wire)
            if type(sender) is _Replica:
                self._apply_replica(replica, core.on_message(sender.address, msg))
            else:
                self._apply_replica(replica, core.on_client_message(sender.client_id, msg))
        else:
            if type(sender) is not _Replica or type(receiver) is not _Client:
                raise AssertionError("client-to-client message")  # _transmit prevents it
            if resources is not None:
                resources.receiving(dst, msg, wire)
            self._apply_client(receiver, receiver.core.on_message(sender.replica_id, msg))

    def _fire_timer(self, endpoint: int, name: str, generation: int) -> None:
        node = self._nodes[endpoint]
        if type(node) is _Replica:
            replica = node
            if not replica.alive or replica.timers.get(name) != generation:
                return  # cancelled, re-armed or crashed: a stale firing
            del replica.timers[name]
            self._record(f"timer {endpoint} {name}")
            self.counters["sim.timers_fired"] += 1
            behaviour = replica.behaviour
            if behaviour is not None and behaviour.on_timer(self, name) is False:
                return
            assert replica.core is not None
            self._apply_replica(replica, replica.core.on_timer(name))
        else:
            client = node
            assert type(client) is _Client
            if client.timers.get(name) != generation:
                return
            del client.timers[name]
            self._record(f"timer {endpoint} {name}")
            self.counters["sim.timers_fired"] += 1
            self._apply_client(client, client.core.on_timer(name))

    def _submit(self, client: _Client) -> None:
        request_index = client.next_request
        client.next_request += 1
        op = client.ops(client.index, request_index)
        timestamp, effects = client.core.submit(op)
        self._record(f"submit {client.endpoint} ts={timestamp}")
        client.pending = timestamp
        client.pending_since = self.now
        self._submitted.setdefault(client.client_id, {})[timestamp] = self.now
        for checker in self.checkers:
            checker.on_submitted(client.client_id, timestamp)
        self._apply_client(client, effects)

    def _crash(self, replica: _Replica) -> None:
        if not replica.alive:
            self.counters["sim.crash_ignored"] += 1
            return
        self._record(f"crash {replica.address}")
        replica.alive = False
        replica.core = None
        replica.timers.clear()  # pending firings become stale (generation mismatch)
        replica.lazy = []  # written by no one: lost with the process
        self.counters["sim.crashes"] += 1

    def _restart(self, replica: _Replica) -> None:
        if replica.alive:
            self.counters["sim.restart_ignored"] += 1
            return
        self._record(f"restart {replica.address}")
        # A new incarnation: messages sent to the old one are lost with its connections.
        replica.incarnation += 1
        core = self._build(replica)
        core.recover(sorted(replica.store.items()))
        replica.core = core
        replica.alive = True
        self.counters["sim.restarts"] += 1
        self._apply_replica(replica, core.start())

    # -- effects ------------------------------------------------------------------

    def _apply_replica(self, replica: _Replica, effects: list[Any]) -> None:
        if self.resources is not None:
            self.resources.step(self, replica.endpoint, effects)
        # Every non-lazy Persist of the step is durable before any message of the step
        # leaves, together with the lazy records that waited for it, in order.
        records = replica.lazy
        gating = False
        for effect in effects:
            if type(effect) is Persist:
                records.append((effect.key, effect.value))
                gating = gating or not effect.lazy
        if gating:
            store = replica.store
            for key, value in records:
                if value is None:
                    store.pop(key, None)
                else:
                    store[key] = value
            replica.lazy = []
        src = replica.replica_id
        me = replica.address
        for effect in effects:
            kind = type(effect)
            if kind is Send:
                dest = effect.dest
                if type(dest) is int:
                    dest = Address(dest, me.role, me.partition)
                self._replica_send(replica, dest, effect.msg)
            elif kind is Broadcast:
                wire = self._encode(effect.msg)
                role = me.role if effect.role is None else effect.role
                partition = me.partition if effect.partition is None else effect.partition
                for dest in self._broadcast_peers(role, partition):
                    if dest != me:
                        self._replica_send(replica, dest, effect.msg, wire)
            elif kind is ToClient:
                endpoint = self._client_endpoint.get(effect.client)
                if endpoint is None:
                    self.counters["sim.unknown_client"] += 1
                    continue
                self._send_out(replica, effect.client, [endpoint], effect.msg, None)
            elif kind is SetTimer:
                self._set_timer(replica.endpoint, replica.timers, effect)
            elif kind is CancelTimer:
                replica.timers.pop(effect.name, None)
            elif kind is Executed:
                self._on_executed(replica, effect)
            elif kind is Dropped:
                self.counters[f"dropped.{effect.reason}"] += 1
                if self._drop_checkers and src not in self._byzantine:
                    for checker in self._drop_checkers:
                        checker.on_dropped(src, effect.reason)
            elif kind is not Persist:
                raise TypeError(f"replica {src} returned a non-effect {effect!r}")

    def _broadcast_peers(self, role: str, partition: int) -> list[Address]:
        peers = self._peers.get((role, partition))
        if peers is None:
            peers = self._peers[(role, partition)] = [
                Address(r, role, partition) for r in range(self.n)
            ]
        return peers

    def _replica_send(
        self, replica: _Replica, dest: Address, msg: Any, wire: bytes | None = None
    ) -> None:
        """To every copy of the process at ``dest`` (the sender itself excepted)."""
        copies = self._copies.get(dest)
        if copies is None:
            self.counters["sim.bad_destination"] += 1
            return
        endpoints = [c.endpoint for c in copies if c is not replica]
        self._send_out(replica, dest.replica, endpoints, msg, wire)

    def _send_out(self, replica: _Replica, dest: NodeId, endpoints: list[int], msg: Any,
                  wire: bytes | None) -> None:
        """``msg`` from ``replica`` to ``endpoints`` (every copy of one destination),
        through its Byzantine filter if it has one: ``dest`` is what the filter sees."""
        behaviour = replica.behaviour
        if behaviour is None:
            for endpoint in endpoints:
                self._transmit(replica.endpoint, endpoint, msg, wire)
            return
        for out in behaviour.filter(dest, msg):
            for endpoint in endpoints:
                self._transmit(replica.endpoint, endpoint, out, wire if out is msg else None)

    def _apply_client(self, client: _Client, effects: list[Any]) -> None:
        src = client.endpoint
        if self.resources is not None:
            self.resources.step(self, src, effects)
        for effect in effects:
            kind = type(effect)
            if kind is Send:
                dest = effect.dest
                copies = self._copies.get(
                    Address(dest, self._front_role) if type(dest) is int else dest
                )
                if copies is None or not copies[0].front:
                    self.counters["sim.bad_destination"] += 1
                    continue
                for copy in copies:
                    self._transmit(src, copy.endpoint, effect.msg, None)
            elif kind is Broadcast:
                wire = self._encode(effect.msg)
                for replica_id in range(self.n):
                    for copy in self._copies[Address(replica_id, self._front_role)]:
                        self._transmit(src, copy.endpoint, effect.msg, wire)
            elif kind is SetTimer:
                self._set_timer(src, client.timers, effect)
            elif kind is CancelTimer:
                client.timers.pop(effect.name, None)
            elif kind is Completed:
                self._on_completed(client, effect)
            elif kind is NotAccepted:
                # Not an outcome: the request stays pending, retransmitted, and may still
                # execute (a closed-loop client waits for it as long as it takes).
                self._record(f"not_accepted {client.endpoint} ts={effect.timestamp}")
                self.counters["sim.not_accepted"] += 1
            elif kind is Dropped:
                self.counters[f"client_dropped.{effect.reason}"] += 1
            else:
                raise TypeError(f"client {client.index} returned a non-effect {effect!r}")

    def _transmit(self, src: int, dst: int, msg: Any, wire: bytes | None) -> None:
        receiver = self._nodes[dst]
        if type(receiver) is _Client and type(self._nodes[src]) is _Client:
            raise ValueError("clients talk to replicas only")
        if self._decoder is not None:
            payload: Any = wire if wire is not None else self._encode(msg)
            size = len(payload)
        else:
            payload = msg
            size = 0
        stats = self._stats[src]
        stats.msgs_sent += 1
        stats.bytes_sent += size
        incarnation = receiver.incarnation if type(receiver) is _Replica else 0
        sent_at = self.now
        if self.resources is not None:
            sent_at = self.resources.depart(self, src, dst, size, msg)
        for arrival in self.network.transmit(src, dst, sent_at):
            self._push(arrival, _DELIVER, src, dst, payload, incarnation)

    def _encode(self, msg: Any) -> bytes:
        return encode(msg) if self._decoder is not None else b""

    def _set_timer(self, endpoint: int, timers: dict[str, int], effect: SetTimer) -> None:
        # A generation per arming: re-arming or cancelling makes older firings stale.
        self._timer_generation += 1
        timers[effect.name] = self._timer_generation
        delay = effect.delay if effect.delay > 0 else 0.0
        self._push(self.now + delay, _TIMER, endpoint, effect.name, self._timer_generation)

    def _on_executed(self, replica: _Replica, executed: Executed) -> None:
        replica.executions += 1
        slot = (executed.instance, executed.seq)
        if slot not in replica.log:
            replica.log[slot] = executed
        if replica.replica_id in self._byzantine:
            return
        for checker in self.checkers:
            checker.on_executed(replica.replica_id, replica.incarnation, executed)

    def _on_completed(self, client: _Client, done: Completed) -> None:
        if client.pending is None or done.timestamp != client.pending:
            self.counters["sim.unexpected_completion"] += 1
            return
        self._record(f"completed {client.endpoint} ts={done.timestamp}")
        client.completed.append(
            CompletedRequest(
                client.index,
                client.client_id,
                done.timestamp,
                done.result,
                done.error,
                client.pending_since,
                self.now,
            )
        )
        client.pending = None
        self.counters["sim.completed" if done.error is None else "sim.refused"] += 1
        if client.next_request < client.requests:
            self._push(self.now + client.think_time, _SUBMIT, client.index)


def _make_decoder(
    messages: Sequence[type] | msgspec.msgpack.Decoder[Any] | None,
) -> msgspec.msgpack.Decoder[Any] | None:
    if messages is None:
        return None
    if isinstance(messages, msgspec.msgpack.Decoder):
        return messages
    return message_decoder(messages)
