"""WAN emulation in the transport: real processes on loopback, with the delays (and
optionally the bandwidth) of replicas placed in cloud regions.

A :class:`WanPlan` says where every node sits: an RTT matrix (any square CSV that
:class:`~phalanx.measure.latency.LatencyMatrix` reads — the AWS and Azure ones in
``shared/data``), one region per replica and one per load-generator process, and an
optional egress bandwidth cap per replica. It is written by ``phalanx bench --wan`` as
JSON and read by every replica and load generator.

A :class:`Shaper` is installed on a node's transport:

- every payload a node sends waits ``RTT/2`` of its link before it is handed to the
  socket (a delay line per destination, so links stay FIFO like TCP), after first
  waiting for the node's egress "wire" to be free at the capped bandwidth;
- what waits is bounded like the transport's send queue: beyond ``limit_bytes`` per
  line (and on the wire) the oldest payloads are dropped and counted
  (``dropped_send_queue_full``), so ``--rate`` beyond capacity or a bandwidth cap
  cannot grow a node's memory without bound;
- replicas do not know which client key sits where, so the replica->client direction is
  delayed on arrival at the client instead (same one-way delay, same FIFO order).

So a request, its protocol rounds and its replies see the matrix's round-trip times,
while CPU, syscalls and bytes stay real. ``--netns`` (kernel ``tc netem`` in network
namespaces) is the alternative where the kernel does the delaying.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from phalanx.measure.latency import LatencyMatrix
from phalanx.runtime.framing import FRAME_OVERHEAD

_RATE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kKmMgGtT]?)(bit|bps|b|Bps|B)?(/s)?\s*$")
_SCALE = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}


def parse_bandwidth(text: str) -> float:
    """``"1Gbit"``, ``"100Mbit"``, ``"500kbit"``, ``"10MB/s"`` (bytes) -> bits per second."""
    match = _RATE.match(text)
    if match is None:
        raise ValueError(f"bandwidth {text!r}: expected e.g. 1Gbit, 100Mbit, 500kbit, 10MB/s")
    value = float(match.group(1)) * _SCALE[match.group(2).lower()]
    unit = match.group(3) or "bit"
    if unit in ("B", "Bps"):
        value *= 8
    if not value > 0 or not math.isfinite(value):
        raise ValueError(f"bandwidth {text!r} must be positive")
    return value


@dataclass(frozen=True)
class WanPlan:
    """Where the nodes of one run sit. ``regions`` lists endpoints in the simulator's
    order: replicas ``0..n-1`` first, then load generators; endpoint ``e`` sits in
    ``regions[e % len(regions)]`` (so n regions place the load generators round-robin
    from replica 0's region on)."""

    matrix: str
    regions: tuple[str, ...]
    n: int
    bandwidth_bps: float | None = None
    _matrix: LatencyMatrix = field(init=False, repr=False, compare=False)  # read from ``matrix``

    def __post_init__(self) -> None:
        if not self.regions:
            raise ValueError("--wan needs --regions (comma-separated, one per replica)")
        matrix = LatencyMatrix.from_csv(self.matrix)
        unknown = [r for r in self.regions if r not in matrix]
        if unknown:
            raise ValueError(f"regions not in {self.matrix}: {unknown}; known: "
                             f"{', '.join(matrix.regions[:8])}, ...")
        missing = matrix.missing_pairs(self.regions)
        if missing:
            raise ValueError(f"{self.matrix} has no RTT for region pairs {missing[:3]}")
        object.__setattr__(self, "_matrix", matrix)

    def replica_region(self, replica: int) -> str:
        return self.regions[replica % len(self.regions)]

    def loadgen_region(self, index: int) -> str:
        return self.regions[(self.n + index) % len(self.regions)]

    def one_way_s(self, a: str, b: str) -> float:
        """Half the RTT between regions ``a`` and ``b``, in seconds."""
        return self._matrix.one_way_s(a, b)

    def replica_shaper(self, replica: int) -> Shaper:
        """The shaper of replica ``replica``: delays to the other replicas, its cap."""
        me = self.replica_region(replica)
        delays: dict[Hashable, float] = {
            r: self.one_way_s(me, self.replica_region(r)) for r in range(self.n)
        }
        return Shaper(delays, {}, self.bandwidth_bps)

    def loadgen_shaper(self, index: int) -> Shaper:
        """The shaper of load generator ``index``: one-way delays both ways, no cap."""
        me = self.loadgen_region(index)
        delays: dict[Hashable, float] = {
            r: self.one_way_s(me, self.replica_region(r)) for r in range(self.n)
        }
        return Shaper(delays, dict(delays), None)

    def to_json(self) -> dict[str, Any]:
        return {"matrix": str(Path(self.matrix).resolve()), "regions": list(self.regions),
                "n": self.n, "bandwidth_bps": self.bandwidth_bps}

    def dump(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> WanPlan:
        doc = json.loads(Path(path).read_text())
        bandwidth = doc.get("bandwidth_bps")
        return cls(str(doc["matrix"]), tuple(doc["regions"]), int(doc["n"]),
                   None if bandwidth is None else float(bandwidth))

    @classmethod
    def build(cls, matrix: str, regions: Sequence[str] | str, n: int,
              bandwidth: str | float | None = None) -> WanPlan:
        """From command-line values (``regions`` may be comma-separated text)."""
        if isinstance(regions, str):
            regions = [r.strip() for r in regions.split(",") if r.strip()]
        bps = parse_bandwidth(bandwidth) if isinstance(bandwidth, str) else bandwidth
        return cls(matrix, tuple(regions), n, bps)


RELEASE_SLACK_S = 0.001
"""How early an item may leave its delay line. uvloop's clock moves in whole
milliseconds and it rounds a timer's delay to the nearest one (a delay under half a ms
becomes ``call_soon``), so a timer can fire up to half a ms before the due time it was
armed for; insisting on ``due <= now`` then re-arms and spins until the next tick."""


_NO_LIMIT = 1 << 62


class _DelayLine:
    """Items released in FIFO order at their due times (loop clock, at most
    :data:`RELEASE_SLACK_S` early), one timer at a time; at most ``limit`` bytes held,
    the oldest dropped (``on_drop``) beyond it."""

    __slots__ = ("_handle", "_items", "_limit", "_loop", "_on_drop", "_on_empty", "nbytes")

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 on_empty: Callable[[], object] | None = None, *,
                 limit: int = _NO_LIMIT, on_drop: Callable[[], None] | None = None) -> None:
        self._loop = loop
        self._items: deque[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = deque()
        self._handle: asyncio.TimerHandle | None = None
        # Called once the line has nothing left, so its owner can forget it (a replica
        # gets one line per client key; they must not pile up).
        self._on_empty = on_empty
        self._limit = limit
        self._on_drop = on_drop
        self.nbytes = 0

    def push(self, due: float, fn: Callable[..., None], args: tuple[Any, ...],
             nbytes: int = 0) -> None:
        items = self._items
        items.append((due, nbytes, fn, args))
        self.nbytes += nbytes
        while self.nbytes > self._limit and len(items) > 1:
            # Like the transport's SendQueue: the newest messages are the useful ones.
            self.nbytes -= items.popleft()[1]
            if self._on_drop is not None:
                self._on_drop()
        if self._handle is None:
            self._handle = self._loop.call_at(items[0][0], self._release)

    def _release(self) -> None:
        self._handle = None
        items = self._items
        now = self._loop.time() + RELEASE_SLACK_S
        while items and items[0][0] <= now:
            _, nbytes, fn, args = items.popleft()
            self.nbytes -= nbytes
            fn(*args)
        if items:
            if self._handle is None:  # (a released callback may have pushed and armed)
                self._handle = self._loop.call_at(items[0][0], self._release)
        elif self._on_empty is not None:
            self._on_empty()

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._items.clear()
        self.nbytes = 0


class _Wire:
    """A node's egress at ``bps``: payloads leave one after the other, each once the
    one before it did; at most ``limit`` bytes wait, the oldest dropped (``on_drop``)
    beyond it. A dropped payload takes no wire time, so an overloaded wire keeps
    delivering the newest payloads instead of falling ever further behind."""

    __slots__ = ("_free", "_handle", "_items", "_limit", "_loop", "_on_drop", "bps", "nbytes")

    def __init__(self, loop: asyncio.AbstractEventLoop, bps: float, limit: int,
                 on_drop: Callable[[], None] | None) -> None:
        self._loop = loop
        self.bps = bps
        self._limit = limit
        self._on_drop = on_drop
        # (arrival, payload bytes, framed bytes, then): ``then(departs)`` once the last
        # bit left. Wire time is paced by payload bytes (as the simulator's links are),
        # the limit counts framed bytes (as the send queues do).
        self._items: deque[tuple[float, int, int, Callable[[float], None]]] = deque()
        self._free = 0.0  # when the wire finished its last payload
        self._handle: asyncio.TimerHandle | None = None
        self.nbytes = 0

    def push(self, nbytes: int, framed: int, then: Callable[[float], None]) -> None:
        now = self._loop.time()
        self._advance(now)  # what left by now is not "waiting" any more
        items = self._items
        items.append((now, nbytes, framed, then))
        self.nbytes += framed
        while self.nbytes > self._limit and len(items) > 1:
            self.nbytes -= items.popleft()[2]
            # The payload on the wire now is aborted; the next one starts now.
            self._free = max(self._free, now)
            if self._on_drop is not None:
                self._on_drop()
        self._arm()

    def _departs(self) -> float:
        arrival, nbytes, _, _ = self._items[0]
        return max(self._free, arrival) + nbytes * 8 / self.bps

    def _advance(self, now: float) -> None:
        items = self._items
        while items and (departs := self._departs()) <= now:
            _, _, framed, then = items.popleft()
            self.nbytes -= framed
            self._free = departs
            then(departs)

    def _arm(self) -> None:
        if self._handle is None and self._items:
            self._handle = self._loop.call_at(self._departs(), self._release)

    def _release(self) -> None:
        self._handle = None
        self._advance(self._loop.time() + RELEASE_SLACK_S)
        self._arm()

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._items.clear()
        self.nbytes = 0


class Shaper:
    """Per-destination delay lines and an egress bandwidth cap for one node.

    ``out_delays[dest]`` is added to everything sent to ``dest`` (seconds);
    ``in_delays[src]`` to everything received from ``src``; ``bandwidth_bps`` paces all
    outgoing payloads of the node, one after the other, like a NIC. The wire and every
    line hold at most ``limit_bytes`` (framed), dropping the oldest and calling
    ``on_drop`` beyond it; the transport sets both from its send queue
    (:meth:`bind`).
    """

    def __init__(self, out_delays: dict[Hashable, float], in_delays: dict[Hashable, float],
                 bandwidth_bps: float | None = None, *,
                 loop: asyncio.AbstractEventLoop | None = None,
                 limit_bytes: int = _NO_LIMIT,
                 on_drop: Callable[[], None] | None = None) -> None:
        self.out_delays = out_delays
        self.in_delays = in_delays
        self.bandwidth_bps = bandwidth_bps
        self._lines: dict[Hashable, _DelayLine] = {}
        self._wire: _Wire | None = None
        self._loop = loop  # default: the running loop at first use
        self.limit_bytes = limit_bytes
        self.on_drop = on_drop
        self.delayed = 0
        self.dropped = 0

    def bind(self, limit_bytes: int, on_drop: Callable[[], None] | None) -> None:
        """Bound what is held to ``limit_bytes`` and report drops to ``on_drop`` (set by
        the transport the shaper is installed on, before anything is sent)."""
        self.limit_bytes = limit_bytes
        self.on_drop = on_drop

    def _dropped(self) -> None:
        self.dropped += 1
        if self.on_drop is not None:
            self.on_drop()

    def _line(self, key: Hashable) -> _DelayLine:
        line = self._lines.get(key)
        if line is None:
            if self._loop is None:
                self._loop = asyncio.get_running_loop()
            line = self._lines[key] = _DelayLine(
                self._loop, lambda: self._lines.pop(key, None),
                limit=self.limit_bytes, on_drop=self._dropped)
        return line

    def send(self, dest: Hashable, nbytes: int, fn: Callable[..., None], *args: Any) -> None:
        """Call ``fn(*args)`` once ``nbytes`` left at the capped rate and the link's
        one-way delay to ``dest`` passed."""
        delay = self.out_delays.get(dest, 0.0)
        if not delay and self.bandwidth_bps is None:
            fn(*args)
            return
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        self.delayed += 1
        framed = nbytes + FRAME_OVERHEAD
        if self.bandwidth_bps is None:
            self._line(("out", dest)).push(self._loop.time() + delay, fn, args, framed)
            return
        if self._wire is None:
            self._wire = _Wire(self._loop, self.bandwidth_bps, self.limit_bytes, self._dropped)

        def left(departs: float) -> None:
            self._line(("out", dest)).push(departs + delay, fn, args, framed)
        self._wire.push(nbytes, framed, left)

    def receive(self, src: Hashable, fn: Callable[..., None], *args: Any) -> None:
        """Call ``fn(*args)`` after the one-way delay from ``src``."""
        delay = self.in_delays.get(src, 0.0)
        if not delay:
            fn(*args)
            return
        line = self._line(("in", src))
        assert self._loop is not None
        line.push(self._loop.time() + delay, fn, args)  # (bounded by the sender's lines)

    @property
    def lines(self) -> int:
        """Delay lines holding something now."""
        return len(self._lines)

    @property
    def held_bytes(self) -> int:
        """Framed bytes of outgoing payloads held now (on the wire and in the lines)."""
        wire = self._wire.nbytes if self._wire is not None else 0
        return wire + sum(line.nbytes for line in self._lines.values())

    def close(self) -> None:
        """Drop everything still held (the transport is closing)."""
        for line in self._lines.values():
            line.cancel()
        self._lines.clear()
        if self._wire is not None:
            self._wire.cancel()
