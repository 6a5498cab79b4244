"""The simulated network: per-link latency, loss, duplication, reordering, partitions.

Nodes are *endpoints* numbered by the simulation: replicas ``0..n-1``, then clients in
the order they were added. The network decides, when a message is sent, at which times
(none, one or two) it arrives; the simulation turns those into delivery events.

Without reordering every link is FIFO, like the TCP connections of the real runtime: a
message never overtakes an earlier one on the same (src, dst) link, even when latency is
random. With ``reorder > 0`` each copy gets extra uniform jitter and may overtake.

All randomness comes from the ``random.Random`` the simulation passes in.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from phalanx.measure.latency import LatencyMatrix


class LatencyModel(Protocol):
    """One-way delay of a message from endpoint ``src`` to endpoint ``dst``."""

    def delay(self, src: int, dst: int, rng: random.Random) -> float:
        """Seconds; must be finite and >= 0."""
        ...


@dataclass(frozen=True, slots=True)
class ConstantLatency:
    """Every message takes ``seconds``."""

    seconds: float = 0.001

    def __post_init__(self) -> None:
        _check_delay("seconds", self.seconds)

    def delay(self, src: int, dst: int, rng: random.Random) -> float:
        return self.seconds


@dataclass(frozen=True, slots=True)
class UniformLatency:
    """Each message takes a delay drawn uniformly from ``[lo, hi]`` seconds."""

    lo: float
    hi: float

    def __post_init__(self) -> None:
        _check_delay("lo", self.lo)
        _check_delay("hi", self.hi)
        if self.hi < self.lo:
            raise ValueError(f"uniform latency needs lo <= hi, got [{self.lo}, {self.hi}]")

    def delay(self, src: int, dst: int, rng: random.Random) -> float:
        return rng.uniform(self.lo, self.hi)


class MatrixLatency:
    """Delays from an inter-region RTT matrix: one-way delay = RTT / 2.

    Endpoint ``e`` sits in ``regions[e % len(regions)]``: list the n replicas' regions
    and clients are spread over the same regions in turn, or list ``n + clients`` regions
    to place every client explicitly. ``jitter`` adds uniform ``[0, jitter]`` seconds.
    """

    def __init__(
        self, matrix: LatencyMatrix, regions: Sequence[str], jitter: float = 0.0
    ) -> None:
        if not regions:
            raise ValueError("MatrixLatency needs at least one region")
        unknown = [r for r in regions if r not in matrix]
        if unknown:
            raise ValueError(f"regions not in the latency matrix: {unknown}")
        missing = matrix.missing_pairs(regions)
        if missing:
            raise ValueError(f"the latency matrix has no RTT for {len(missing)} region pairs, "
                             f"e.g. {missing[:3]}")
        _check_delay("jitter", jitter)
        self.matrix = matrix
        self.regions = tuple(regions)
        self.jitter = jitter
        # Precompute per region pair: fails now, not mid-run, on a pair the matrix lacks.
        distinct = list(dict.fromkeys(self.regions))
        self._one_way = {(a, b): matrix.one_way_s(a, b) for a in distinct for b in distinct}

    def region_of(self, endpoint: int) -> str:
        """The region endpoint ``endpoint`` sits in."""
        return self.regions[endpoint % len(self.regions)]

    def delay(self, src: int, dst: int, rng: random.Random) -> float:
        base = self._one_way[(self.region_of(src), self.region_of(dst))]
        if self.jitter:
            return base + rng.uniform(0.0, self.jitter)
        return base


@dataclass(frozen=True)
class NetworkModel:
    """Latency and faults of every link.

    ``drop`` and ``duplicate`` are per-message probabilities; ``reorder`` is the maximum
    extra random delay (seconds) of each copy, and 0 keeps links FIFO.
    """

    latency: LatencyModel = field(default_factory=ConstantLatency)
    drop: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0

    def __post_init__(self) -> None:
        for name in ("drop", "duplicate"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} probability must be in [0, 1], got {p}")
        _check_delay("reorder", self.reorder)


class Network:
    """Runtime state of the network of one simulation: FIFO clocks and partitions."""

    def __init__(self, model: NetworkModel, rng: random.Random) -> None:
        self.model = model
        self._rng = rng
        self.counters: Counter[str] = Counter()
        # (src, dst) -> latest scheduled arrival on that link, to keep links FIFO.
        self._last_arrival: dict[tuple[int, int], float] = {}
        # partition id -> endpoint -> group index. Endpoints listed in no group of a
        # partition are unaffected by it (clients, typically).
        self._partitions: dict[int, dict[int, int]] = {}
        self.location: Callable[[int], int] | None = None
        """Where an endpoint sits, for the latency model (the simulation places a
        replica's processes with it); None: every endpoint is its own location."""

    # -- partitions -----------------------------------------------------------------

    def partition(self, partition_id: int, groups: Sequence[Iterable[int]]) -> None:
        """Cut every link between endpoints of different ``groups`` until :meth:`heal`."""
        side: dict[int, int] = {}
        for index, group in enumerate(groups):
            for endpoint in group:
                if endpoint in side and side[endpoint] != index:
                    raise ValueError(f"endpoint {endpoint} is in two partition groups")
                side[endpoint] = index
        self._partitions[partition_id] = side

    def heal(self, partition_id: int) -> None:
        """End partition ``partition_id`` (a no-op if it already ended)."""
        self._partitions.pop(partition_id, None)

    def connected(self, src: int, dst: int) -> bool:
        """Can ``src`` reach ``dst`` now? (Overlapping partitions all apply.)"""
        for side in self._partitions.values():
            a = side.get(src)
            b = side.get(dst)
            if a is not None and b is not None and a != b:
                return False
        return True

    @property
    def partitioned(self) -> bool:
        """Is any partition in force?"""
        return bool(self._partitions)

    # -- transmission ---------------------------------------------------------------

    def transmit(self, src: int, dst: int, now: float) -> list[float]:
        """Arrival times of one message sent at ``now``: empty if it is lost."""
        counters = self.counters
        counters["net.sent"] += 1
        if not self.connected(src, dst):
            counters["net.partitioned"] += 1
            return []
        model = self.model
        rng = self._rng
        if model.drop and rng.random() < model.drop:
            counters["net.dropped"] += 1
            return []
        copies = 1
        if model.duplicate and rng.random() < model.duplicate:
            counters["net.duplicated"] += 1
            copies = 2
        arrivals = []
        for _ in range(copies):
            if self.location is None:
                arrival = now + model.latency.delay(src, dst, rng)
            else:
                arrival = now + model.latency.delay(self.location(src), self.location(dst), rng)
            if model.reorder:
                arrival += rng.uniform(0.0, model.reorder)
            else:
                # FIFO: never before the previous message of this link. Equal times keep
                # send order because the event queue breaks ties by insertion sequence.
                link = (src, dst)
                last = self._last_arrival.get(link)
                if last is not None and arrival < last:
                    arrival = last
                self._last_arrival[link] = arrival
            arrivals.append(arrival)
        return arrivals


def _check_delay(name: str, value: object) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")
