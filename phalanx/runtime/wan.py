"""WAN emulation in the transport: real processes on loopback, with the delays (and
optionally the bandwidth) of replicas placed in cloud regions.

A :class:`WanPlan` says where every node sits: an RTT matrix (any square CSV that
:class:`~phalanx.runtime.sim.latency.LatencyMatrix` reads — the AWS and Azure ones in
``shared/data``), one region per replica and one per load-generator process, and an
optional egress bandwidth cap per replica. It is written by ``phalanx bench --wan`` as
JSON and read by every replica and load generator.

A :class:`Shaper` is installed on a node's transport:

- every payload a node sends waits ``RTT/2`` of its link before it is handed to the
  socket (a delay line per destination, so links stay FIFO like TCP), after first
  waiting for the node's egress "wire" to be free at the capped bandwidth;
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from phalanx.runtime.sim.latency import LatencyMatrix

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
        return self._matrix.one_way_s(a, b)  # type: ignore[attr-defined]

    def replica_shaper(self, replica: int) -> Shaper:
        """The shaper of replica ``replica``: delays to the other replicas, its cap."""
        me = self.replica_region(replica)
        delays = {r: self.one_way_s(me, self.replica_region(r)) for r in range(self.n)}
        return Shaper(delays, {}, self.bandwidth_bps)

    def loadgen_shaper(self, index: int) -> Shaper:
        """The shaper of load generator ``index``: one-way delays both ways, no cap."""
        me = self.loadgen_region(index)
        delays = {r: self.one_way_s(me, self.replica_region(r)) for r in range(self.n)}
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


class _DelayLine:
    """Items released in FIFO order at their due times (loop clock, at most
    :data:`RELEASE_SLACK_S` early), one timer at a time."""

    __slots__ = ("_handle", "_items", "_loop", "_on_empty")

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 on_empty: Callable[[], None] | None = None) -> None:
        self._loop = loop
        self._items: deque[tuple[float, Callable[..., None], tuple[Any, ...]]] = deque()
        self._handle: asyncio.TimerHandle | None = None
        # Called once the line has nothing left, so its owner can forget it (a replica
        # gets one line per client key; they must not pile up).
        self._on_empty = on_empty

    def push(self, due: float, fn: Callable[..., None], args: tuple[Any, ...]) -> None:
        self._items.append((due, fn, args))
        if self._handle is None:
            self._handle = self._loop.call_at(due, self._release)

    def _release(self) -> None:
        self._handle = None
        items = self._items
        now = self._loop.time() + RELEASE_SLACK_S
        while items and items[0][0] <= now:
            _, fn, args = items.popleft()
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


class Shaper:
    """Per-destination delay lines and an egress bandwidth cap for one node.

    ``out_delays[dest]`` is added to everything sent to ``dest`` (seconds);
    ``in_delays[src]`` to everything received from ``src``; ``bandwidth_bps`` paces all
    outgoing payloads of the node, one after the other, like a NIC.
    """

    def __init__(self, out_delays: dict[Hashable, float], in_delays: dict[Hashable, float],
                 bandwidth_bps: float | None = None, *,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.out_delays = out_delays
        self.in_delays = in_delays
        self.bandwidth_bps = bandwidth_bps
        self._lines: dict[Hashable, _DelayLine] = {}
        self._egress_free = 0.0
        self._loop = loop  # default: the running loop at first use
        self.delayed = 0

    def _line(self, key: Hashable) -> _DelayLine:
        line = self._lines.get(key)
        if line is None:
            if self._loop is None:
                self._loop = asyncio.get_running_loop()
            line = self._lines[key] = _DelayLine(
                self._loop, lambda: self._lines.pop(key, None))
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
        now = self._loop.time()
        departs = now
        if self.bandwidth_bps is not None:
            # The last bit leaves once everything queued before it did.
            departs = max(now, self._egress_free) + (nbytes * 8) / self.bandwidth_bps
            self._egress_free = departs
        self.delayed += 1
        self._line(("out", dest)).push(departs + delay, fn, args)

    def receive(self, src: Hashable, fn: Callable[..., None], *args: Any) -> None:
        """Call ``fn(*args)`` after the one-way delay from ``src``."""
        delay = self.in_delays.get(src, 0.0)
        if not delay:
            fn(*args)
            return
        line = self._line(("in", src))
        assert self._loop is not None
        line.push(self._loop.time() + delay, fn, args)

    @property
    def lines(self) -> int:
        """Delay lines holding something now."""
        return len(self._lines)

    def close(self) -> None:
        """Drop everything still held (the transport is closing)."""
        for line in self._lines.values():
            line.cancel()
        self._lines.clear()
