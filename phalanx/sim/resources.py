"""CPU and bandwidth as queued resources of simulated nodes, charged from a cost model.

Installed as ``Simulation.resources``, this object is asked these things by the
simulator:

- :meth:`Resources.defer` — may a message be delivered to its node now? A node's CPU
  does one thing at a time (a replica is one Python process): while it is busy,
  arriving messages wait in the node's inbox, in arrival order, and are released one
  by one when it is free. With ``host_cores`` every node also needs one of that many
  shared cores (replicas and load generators on one small machine, as in a real
  ``phalanx bench`` on this host).
- :meth:`Resources.receiving` — the message a node's core is about to handle;
- :meth:`Resources.step` — a node's core just handled an input and returned its effects:
  charge the handler, the transport's receive work and any execution to its CPU clock.
- :meth:`Resources.depart` — the node sends one message: charge encoding and the
  transport's send work, then queue the bytes on the node's egress link at
  ``bandwidth_bps``; the message leaves when its last bit is out and the network adds
  the link's latency from there.

Clients are mapped onto ``client_procs`` load-generator CPUs, as the bench runs them.
Replies from one step to the clients of one load generator share one frame (the real
replica coalesces replies per shared connection). Every charge is also recorded per
replica in an :class:`~phalanx.measure.accounting.Accounting`, so a simulated run reports
the same per-phase figures, and gets the same bottleneck verdict, as a measured one.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any

from phalanx.core.effects import Executed
from phalanx.measure.accounting import Accounting
from phalanx.sim.costmodel import CostModel, cost_ns


class Resources:
    """CPU clocks, inboxes and egress queues of every endpoint of one simulation."""

    def __init__(
        self,
        model: CostModel,
        n: int,
        *,
        bandwidth_bps: float | None = None,
        host_cores: int | None = None,
        client_procs: int = 2,
        op_bytes: int = 0,
        phase_of: Mapping[str, str] | None = None,
        cpu_share: float = 1.0,
    ) -> None:
        if host_cores is not None and host_cores < 1:
            raise ValueError("host_cores must be at least 1")
        if bandwidth_bps is not None and not bandwidth_bps > 0:
            raise ValueError("bandwidth must be positive")
        if not 0 < cpu_share <= 1:
            raise ValueError("cpu_share must be in (0, 1]")
        self.model = model
        self.n = n
        # Share of each core this run gets (others' processes take the rest): work of
        # ``c`` ns keeps a core busy for ``c / cpu_share`` ns of simulated time.
        self.cpu_share = cpu_share
        self.bandwidth_bps = bandwidth_bps
        self.client_procs = max(1, client_procs)
        self.op_bytes = op_bytes
        self.cores: list[float] | None = [0.0] * host_cores if host_cores else None
        self.cpu_free: dict[Any, float] = {}
        self.cpu_ns: dict[Any, float] = {}
        self.egress_free: dict[int, float] = {}
        # Per replica, (leaves, type, bytes) of what its capped link has not sent yet:
        # a snapshot counts a message as sent once it left, so no window can hold more
        # bytes than the link carries in it.
        self._egress: dict[int, deque[tuple[float, str, int]]] = {}
        self.accounting = [Accounting(phase_of) for _ in range(n)]
        self._inbox: dict[Any, deque[tuple[int, int, Any, int]]] = {}
        self._releasing: dict[Any, tuple[int, int, Any, int]] = {}
        self._input: tuple[int, str, int] | None = None  # (endpoint, type, bytes)
        self._key: Any = None  # the CPU whose step is being charged
        self._core = 0
        self._clock = 0.0
        self._client_frames: set[Any] = set()
        # Messages of the current step already encoded (by id): a broadcast is encoded
        # once for all its copies, as the real driver does.
        self._encoded: set[int] = set()

    # -- where work runs -------------------------------------------------------------

    def cpu_key(self, endpoint: int) -> Any:
        """Replicas run on their own CPU; clients on their load generator's."""
        if endpoint < self.n:
            return endpoint
        return ("loadgen", (endpoint - self.n) % self.client_procs)

    def _ready_at(self, key: Any) -> float:
        ready = self.cpu_free.get(key, 0.0)
        if self.cores is not None:
            ready = max(ready, min(self.cores))
        return ready

    # -- the simulator's hooks -------------------------------------------------------

    def defer(self, sim: Any, src: int, dst: int, payload: Any, incarnation: int) -> bool:
        """True if the delivery must wait (it was queued and will come back). Asked
        before the simulator's loss checks: a released message that turns out lost has
        already handed the inbox on."""
        key = self.cpu_key(dst)
        now = sim.now
        event = (src, dst, payload, incarnation)
        releasing = self._releasing.get(key)
        ours = releasing is not None and releasing[0] == src and releasing[1] == dst and (
            releasing[2] is payload)
        ready = self._ready_at(key)
        if ours:
            if ready > now:
                sim.deliver_at(ready, src, dst, payload, incarnation)
                return True
            del self._releasing[key]
            self._release_next(sim, key, now)
        else:
            inbox = self._inbox.get(key)
            if releasing is not None or inbox or ready > now:
                if inbox is None:
                    inbox = self._inbox[key] = deque()
                inbox.append(event)
                if releasing is None:
                    self._release_next(sim, key, ready)
                return True
        return False

    def receiving(self, dst: int, msg: Any, wire: bytes | None) -> None:
        """``dst``'s core is about to handle ``msg`` (``wire`` bytes): the next
        :meth:`step` of ``dst`` charges it."""
        self._input = (dst, type(msg).__name__, len(wire) if wire is not None else 0)

    def _release_next(self, sim: Any, key: Any, at: float) -> None:
        inbox = self._inbox.get(key)
        if inbox:
            head = inbox.popleft()
            self._releasing[key] = head
            sim.deliver_at(max(at, sim.now), *head)

    def step(self, sim: Any, endpoint: int, effects: list[Any]) -> None:
        """Charge the input just handled by ``endpoint`` (message, timer or submit) and
        the execution among its ``effects``."""
        key = self.cpu_key(endpoint)
        ready = max(sim.now, self.cpu_free.get(key, 0.0))
        start = ready
        if self.cores is not None:
            self._core = min(range(len(self.cores)), key=self.cores.__getitem__)
            start = max(start, self.cores[self._core])
        model = self.model
        replica = endpoint < self.n
        recv = handle = run = 0.0
        ops = 0
        inp = self._input
        self._input = None
        if inp is not None and inp[0] == endpoint:
            _, kind, size = inp
            recv = model.recv_ns(size, replica)
            handle = model.handle_ns(kind, size) if replica else model.client_handle_ns(kind, size)
        elif replica:
            handle = model.timer_ns  # (timers are not accounted, as in the real runtime)
        else:
            handle = model.client_submit[0]
        for effect in effects:
            if type(effect) is Executed and effect.requests:
                ops += len(effect.requests)
                run += model.execute_ns(len(effect.requests),
                                        len(effect.requests) * self.op_bytes)
        cost = recv + handle + run
        if replica:
            # The accounting gets occupied time, as the real one gets wall time: the work
            # stretched by the core share, plus the wait for a shared core, spread over
            # the step's parts. cpu_ns keeps the work itself.
            occupied = cost / self.cpu_share + (start - ready) * 1e9
            scale = occupied / cost if cost > 0 else 1.0 / self.cpu_share
            acct = self.accounting[endpoint]
            if inp is not None and inp[0] == endpoint:
                acct.received(inp[1], inp[2])
                acct.handled(inp[1], int(handle * scale))
                acct.io_ns += int(recv * scale)
            if ops:
                acct.executed(ops, int(run * scale))
        self._key = key
        self._clock = start + cost / 1e9 / self.cpu_share
        self._client_frames = set()
        self._encoded = set()
        self._commit(key, cost)

    def depart(self, sim: Any, src: int, dst: int, size: int, msg: Any) -> float:
        """Charge sending ``msg`` (``size`` wire bytes) from ``src``; returns when its
        last bit leaves ``src``."""
        key = self.cpu_key(src)
        if key != self._key:  # a send outside any step (an injected message)
            self._key = key
            self._clock = max(sim.now, self.cpu_free.get(key, 0.0))
            self._client_frames = set()
            self._encoded = set()
        model = self.model
        kind = type(msg).__name__
        first = id(msg) not in self._encoded
        self._encoded.add(id(msg))
        encode = cost_ns(model.encode.get(kind), size) if first else 0.0
        frame = model.transport_send[0]
        if src < self.n and dst >= self.n:
            # Replies to the clients of one load generator travel in one frame per step.
            proc = (dst - self.n) % self.client_procs
            if proc in self._client_frames:
                frame = 0.0
            self._client_frames.add(proc)
        transport = frame + model.transport_send[1] * size
        if src < self.n:
            transport += model.runtime_per_msg_ns
        cost = encode + transport
        if src < self.n:
            acct = self.accounting[src]
            acct.sent_msg(kind, 1, size, 1 if first else 0)
            acct.sending(kind, int(encode / self.cpu_share))  # occupied time, as in step
            acct.io_ns += int(transport / self.cpu_share)
        self._clock += cost / 1e9 / self.cpu_share
        self._commit(key, cost)
        leaves = self._clock
        if self.bandwidth_bps is not None and src < self.n:
            leaves = max(leaves, self.egress_free.get(src, 0.0)) + size * 8 / self.bandwidth_bps
            self.egress_free[src] = leaves
            queue = self._egress.get(src)
            if queue is None:
                queue = self._egress[src] = deque()
            _prune(queue, sim.now)
            queue.append((leaves, kind, size))
        return leaves

    def _commit(self, key: Any, cost: float) -> None:
        """``cost`` (ns) was charged to ``key``, whose CPU is now busy until the clock."""
        self.cpu_free[key] = self._clock
        self.cpu_ns[key] = self.cpu_ns.get(key, 0.0) + cost
        if self.cores is not None:
            self.cores[self._core] = max(self.cores[self._core], self._clock)

    # -- reading -------------------------------------------------------------------

    def snapshot(self, now: float | None = None) -> dict[int, dict[str, Any]]:
        """Per replica: CPU seconds charged so far and its accounting snapshot. Given
        the simulated time ``now``, bytes still queued on a capped link are not counted
        as sent yet (nor their messages), and ``egress_backlog_bytes`` /
        ``egress_delay_s`` say how much waits there and for how long."""
        out: dict[int, dict[str, Any]] = {}
        for r in range(self.n):
            snap = self.accounting[r].snapshot()
            entry: dict[str, Any] = {"cpu_s": self.cpu_ns.get(r, 0.0) / 1e9, "accounting": snap}
            queue = self._egress.get(r)
            if now is not None and self.bandwidth_bps is not None:
                backlog = 0
                if queue:
                    _prune(queue, now)
                    per_byte_s = 8 / self.bandwidth_bps
                    for leaves, kind, size in queue:
                        # Bytes not on the wire yet (the head may be half out).
                        unsent = min(size, round((leaves - now) / per_byte_s))
                        sent = snap["sent"][kind]  # (the snapshot's own lists)
                        sent[0] -= 1
                        sent[1] -= unsent
                        backlog += unsent
                entry["egress_backlog_bytes"] = backlog
                entry["egress_delay_s"] = max(0.0, self.egress_free.get(r, 0.0) - now)
            out[r] = entry
        return out

    def snapshot_loadgen(self) -> float:
        return self.loadgen_cpu_s()

    def loadgen_cpu_s(self) -> float:
        return sum(v for k, v in self.cpu_ns.items() if isinstance(k, tuple)) / 1e9


def _prune(queue: deque[tuple[float, str, int]], now: float) -> None:
    """Forget what left a link by ``now``."""
    while queue and queue[0][0] <= now:
        queue.popleft()

