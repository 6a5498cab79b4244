"""The results of one ``phalanx bench`` run: the math, the JSON object and the summary.

Everything here is pure (no processes, no sockets), so the arithmetic is unit-tested on
synthetic inputs. The inputs are

- one :class:`LoadgenReport` per load-generator process: requests completed inside the
  measurement window, a latency histogram, a completion timeline and its own CPU time;
- one :class:`NodeWindow` per replica: the change of its ``GET /status`` counters over
  the window (CPU seconds, bytes, messages) and its peak RSS;
- the :class:`Safety` verdict taken after the load stopped.

:func:`build_results` combines them into the object ``DESIGN.md`` specifies for
``phalanx bench --json``; :data:`RESULT_KEYS` lists its keys.

Percentiles use the nearest-rank definition: the p-th percentile of ``N`` samples is the
smallest sample such that at least ``p%`` of the samples are at most it. Latencies are
kept in a log-bucketed histogram (:class:`LatencyHistogram`) so a long run at high
throughput costs bounded memory; its percentiles are within half a bucket (0.5%) of the
exact ones.
"""

from __future__ import annotations

import math
import os
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import msgspec

from phalanx.bench.verdict import NodeCosts, verdict
from phalanx.runtime.accounting import delta as accounting_delta
from phalanx.runtime.accounting import phase_split

# The keys of the results object, in the order DESIGN.md lists them, then the extras.
RESULT_KEYS: tuple[str, ...] = (
    "protocol",
    "n",
    "f",
    "clients",
    "payload_bytes",
    "duration_s",
    "committed_tx",
    "throughput_tps",
    "latency_ms",
    "per_node",
    "cpu_us_per_tx",
    "max_node_bytes_per_tx",
    "bottleneck",
    "safety",
    "environment",
    "client_cpu_s",
)
LATENCY_KEYS: tuple[str, ...] = ("p50", "p90", "p99")
NODE_KEYS: tuple[str, ...] = (
    "id",
    "cpu_s",
    "bytes_sent",
    "bytes_recv",
    "msgs_sent",
    "peak_rss_bytes",
)
BOTTLENECK_KEYS: tuple[str, ...] = ("data", "consensus", "execution", "verdict")
SAFETY_KEYS: tuple[str, ...] = ("state_roots_equal", "logs_consistent")
ENVIRONMENT_KEYS: tuple[str, ...] = (
    "python",
    "platform",
    "cpu_count",
    "uvloop",
    "loadgen_cpu_s",
    "commit",
    "date",
)

# A load generator busier than this share of one core may itself be what limits the load.
LOADGEN_SATURATED = 0.85
# Above this share of all host cores, the run measures the machine more than the protocol.
HOST_SATURATED = 0.90
# More than this share of the host's CPU used by other processes makes a run noisy.
OTHERS_NOISY = 0.15


# -- percentiles -----------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank ``q``-th percentile (0 < q <= 100) of ``values`` (need not be sorted)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 < q <= 100:
        raise ValueError(f"percentile rank must be in (0, 100], got {q}")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


class LatencyHistogram:
    """Latencies in log-spaced buckets: bucket ``i`` holds values in ``[g**i, g**(i+1))``
    microseconds, ``g = 1 + RESOLUTION``, and is reported as its geometric midpoint.

    Mergeable (one per load generator, summed by the bench) and JSON-serialisable.
    Exact count, sum, minimum and maximum are kept beside the buckets.
    """

    RESOLUTION = 0.01
    _LOG_GROWTH = math.log1p(RESOLUTION)

    __slots__ = ("buckets", "count", "max_us", "min_us", "sum_us")

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}
        self.count = 0
        self.sum_us = 0.0
        self.min_us = math.inf
        self.max_us = 0.0

    def record_us(self, latency_us: float) -> None:
        """Add one latency, in microseconds (values below 1 µs count as 1 µs)."""
        value = latency_us if latency_us > 1.0 else 1.0
        index = int(math.log(value) / self._LOG_GROWTH)
        buckets = self.buckets
        buckets[index] = buckets.get(index, 0) + 1
        self.count += 1
        self.sum_us += value
        if value < self.min_us:
            self.min_us = value
        if value > self.max_us:
            self.max_us = value

    def merge(self, other: LatencyHistogram) -> None:
        """Add every sample of ``other`` to this histogram."""
        for index, count in other.buckets.items():
            self.buckets[index] = self.buckets.get(index, 0) + count
        self.count += other.count
        self.sum_us += other.sum_us
        self.min_us = min(self.min_us, other.min_us)
        self.max_us = max(self.max_us, other.max_us)

    def percentile_us(self, q: float) -> float | None:
        """Nearest-rank ``q``-th percentile in microseconds (None when empty)."""
        if not 0 < q <= 100:
            raise ValueError(f"percentile rank must be in (0, 100], got {q}")
        if self.count == 0:
            return None
        rank = max(1, math.ceil(q / 100 * self.count))
        seen = 0
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            if seen >= rank:
                midpoint = math.exp((index + 0.5) * self._LOG_GROWTH)
                # The midpoint may lie outside what was observed in the extreme buckets.
                return min(max(midpoint, self.min_us), self.max_us)
        return self.max_us  # pragma: no cover - ranks never exceed the count

    def mean_us(self) -> float | None:
        return self.sum_us / self.count if self.count else None

    def to_json(self) -> dict[str, Any]:
        return {
            "resolution": self.RESOLUTION,
            "count": self.count,
            "sum_us": self.sum_us,
            "min_us": self.min_us if self.count else None,
            "max_us": self.max_us if self.count else None,
            "buckets": sorted(self.buckets.items()),
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> LatencyHistogram:
        if doc.get("resolution") != cls.RESOLUTION:
            raise ValueError(
                f"histogram resolution {doc.get('resolution')} is not {cls.RESOLUTION}"
            )
        hist = cls()
        hist.buckets = {int(i): int(c) for i, c in doc["buckets"]}
        hist.count = int(doc["count"])
        hist.sum_us = float(doc["sum_us"])
        if hist.count:
            hist.min_us = float(doc["min_us"])
            hist.max_us = float(doc["max_us"])
        if sum(hist.buckets.values()) != hist.count:
            raise ValueError("histogram bucket counts do not add up to its count")
        return hist


# -- inputs ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunSpec:
    """What was asked for: the run's fixed parameters."""

    protocol: str
    n: int
    f: int
    clients: int
    payload_bytes: int
    duration_s: float
    warmup_s: float = 0.0
    client_procs: int = 1
    keys_per_client: int = 64
    options: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class LoadgenReport:
    """What one load-generator process measured (its result file, see ``loadgen``).

    ``committed`` counts requests completed inside the window; ``timeline[i]`` those
    completed in ``[window_start + i*bin_s, window_start + (i+1)*bin_s)``.
    """

    clients: int
    committed: int
    histogram: LatencyHistogram
    timeline: list[int]
    bin_s: float
    errors: dict[str, int] = field(default_factory=dict)
    completed_total: int = 0
    window_cpu_s: float = 0.0
    total_cpu_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "clients": self.clients,
            "committed": self.committed,
            "completed_total": self.completed_total,
            "errors": self.errors,
            "window_cpu_s": self.window_cpu_s,
            "total_cpu_s": self.total_cpu_s,
            "bin_s": self.bin_s,
            "timeline": self.timeline,
            "histogram": self.histogram.to_json(),
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> LoadgenReport:
        return cls(
            clients=int(doc["clients"]),
            committed=int(doc["committed"]),
            histogram=LatencyHistogram.from_json(doc["histogram"]),
            timeline=[int(c) for c in doc["timeline"]],
            bin_s=float(doc["bin_s"]),
            errors={str(k): int(v) for k, v in doc.get("errors", {}).items()},
            completed_total=int(doc.get("completed_total", 0)),
            window_cpu_s=float(doc.get("window_cpu_s", 0.0)),
            total_cpu_s=float(doc.get("total_cpu_s", 0.0)),
        )


@dataclass(frozen=True, slots=True)
class NodeWindow:
    """One replica over the measurement window: counter deltas, absolute memory.

    A replica killed inside the window has ``killed=True`` and deltas up to its last
    status before the kill; fields are None when a status could not be read at all.
    """

    id: int
    cpu_s: float | None
    bytes_sent: int | None
    bytes_recv: int | None
    msgs_sent: int | None
    peak_rss_bytes: int | None
    rss_bytes: int | None = None
    executed: int | None = None
    killed: bool = False
    accounting: dict[str, Any] | None = None  # runtime/accounting.py delta over the window
    bandwidth_bps: float | None = None  # the node's emulated link cap, if any

    def phases(self) -> dict[str, Any] | None:
        """CPU, bytes and messages per phase over the window (None without accounting)."""
        if not self.accounting:
            return None
        return phase_split(self.accounting, self.cpu_s)

    def costs(self) -> NodeCosts:
        """What the bottleneck verdict needs of this node."""
        split = self.phases()
        return NodeCosts(
            id=self.id, cpu_s=self.cpu_s, bytes_sent=self.bytes_sent,
            bytes_recv=self.bytes_recv, phase_cpu_s=split["cpu_s"] if split else {},
            phase_bytes=split["bytes"] if split else {}, bandwidth_bps=self.bandwidth_bps,
            busy_s=split["busy_s"] if split else None,
        )

    @property
    def bytes_total(self) -> int | None:
        if self.bytes_sent is None or self.bytes_recv is None:
            return None
        return self.bytes_sent + self.bytes_recv

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "cpu_s": None if self.cpu_s is None else round(self.cpu_s, 4),
            "bytes_sent": self.bytes_sent,
            "bytes_recv": self.bytes_recv,
            "msgs_sent": self.msgs_sent,
            "peak_rss_bytes": self.peak_rss_bytes,
            "rss_bytes": self.rss_bytes,
            "executed_seqs": self.executed,
            "killed": self.killed,
        }
        split = self.phases()
        if split is not None and self.accounting is not None:
            out["phases"] = {
                p: {"cpu_s": round(split["cpu_s"][p], 4), "bytes": split["bytes"][p],
                    "msgs": split["msgs"][p]}
                for p in split["cpu_s"]
            }
            other = split.get("other_cpu_s")  # None: unknown (see phase_split)
            out["other_cpu_s"] = None if other is None else round(other, 4)
            if "wall_inflation" in split:
                out["wall_inflation"] = split["wall_inflation"]
            acct = self.accounting
            out["by_type"] = {
                "recv": acct.get("recv", {}),
                "sent": acct.get("sent", {}),
                "encoded": acct.get("encoded", {}),  # encodings (a broadcast: one)
                "handler_ms": {k: round(v / 1e6, 3) for k, v in acct.get("handler_ns", {}).items()},
                "send_ms": {k: round(v / 1e6, 3) for k, v in acct.get("send_ns", {}).items()},
                "execution_ms": round(acct.get("exec_ns", 0) / 1e6, 3),
                "execution_ops": acct.get("exec_ops", 0),
                "transport_io_ms": round(acct.get("io_ns", 0) / 1e6, 3),
            }
        if self.bandwidth_bps:
            out["bandwidth_bps"] = self.bandwidth_bps
        return out


def _delta(start: dict[str, Any], end: dict[str, Any], key: str) -> Any:
    a, b = start.get(key), end.get(key)
    if a is None or b is None:
        return None
    return b - a


def executed_seq(status: dict[str, Any]) -> int | None:
    """The highest executed sequence number a ``GET /status`` body reports."""
    seq: int | None = status.get("executed_seq")
    return seq


def node_window(
    replica_id: int,
    start: dict[str, Any] | None,
    end: dict[str, Any] | None,
    *,
    killed: bool = False,
    bandwidth_bps: float | None = None,
) -> NodeWindow:
    """Per-node deltas between two ``GET /status`` bodies (None where unknown)."""
    if start is None or end is None:
        peak = end.get("peak_rss_bytes") if end else (start or {}).get("peak_rss_bytes")
        return NodeWindow(replica_id, None, None, None, None, peak, killed=killed)
    seq_start, seq_end = executed_seq(start), executed_seq(end)
    return NodeWindow(
        id=replica_id,
        cpu_s=_delta(start, end, "cpu_s"),
        bytes_sent=_delta(start, end, "bytes_sent"),
        bytes_recv=_delta(start, end, "bytes_recv"),
        msgs_sent=_delta(start, end, "msgs_sent"),
        peak_rss_bytes=end.get("peak_rss_bytes"),
        rss_bytes=end.get("rss_bytes"),
        executed=None if seq_start is None or seq_end is None else seq_end - seq_start,
        killed=killed,
        accounting=accounting_delta(start.get("accounting"), end.get("accounting"))
        if end.get("accounting") is not None else None,
        bandwidth_bps=bandwidth_bps,
    )


@dataclass(frozen=True, slots=True)
class Safety:
    """Agreement of the live replicas once the load stopped.

    ``state_roots_equal``: they converged to one executed_seq and report one state root.
    ``logs_consistent``: every seq that two of them still remember has one digest.
    """

    state_roots_equal: bool
    logs_consistent: bool
    converged: bool = True
    executed_seq: dict[int, int | None] = field(default_factory=dict)
    compared_seqs: int = 0
    note: str = ""

    @property
    def holds(self) -> bool:
        return self.state_roots_equal and self.logs_consistent

    def to_json(self) -> dict[str, Any]:
        return {
            "state_roots_equal": self.state_roots_equal,
            "logs_consistent": self.logs_consistent,
            "converged": self.converged,
            "executed_seq": {str(k): v for k, v in self.executed_seq.items()},
            "compared_seqs": self.compared_seqs,
            "note": self.note,
        }


def state_roots_agree(statuses: dict[int, dict[str, Any]]) -> tuple[bool, bool]:
    """(converged, roots_equal): do all replicas report one executed_seq, and one state
    root (and, for the ledger, one head block hash)? Roots are only comparable at equal
    seqs, so unconverged replicas fail both."""
    seqs = {executed_seq(s) for s in statuses.values()}
    converged = len(seqs) == 1 and None not in seqs
    roots = {s.get("state_root") for s in statuses.values()}
    heads = {s.get("block_hash") for s in statuses.values()}
    return converged, converged and len(roots) == 1 and None not in roots and len(heads) == 1


def logs_agree(logs: dict[int, dict[str, str]]) -> tuple[bool, int]:
    """(consistent, compared): every seq present in two or more replicas' ``/log``
    answers has one digest; ``compared`` counts the seqs that were in two or more."""
    seen: dict[str, str] = {}
    holders: dict[str, int] = {}
    consistent = True
    for digests in logs.values():
        for seq, digest in digests.items():
            if seen.setdefault(seq, digest) != digest:
                consistent = False
            holders[seq] = holders.get(seq, 0) + 1
    return consistent, sum(1 for count in holders.values() if count >= 2)


# -- derived figures -------------------------------------------------------------------------


def per_tx(total: float | None, committed: int, scale: float = 1.0) -> float | None:
    """``total * scale / committed``, or None when nothing committed or total unknown."""
    if committed <= 0 or total is None:
        return None
    return total * scale / committed


def cpu_us_per_tx(nodes: list[NodeWindow], committed: int) -> float | None:
    """Replica CPU microseconds per committed transaction, summed over the replicas."""
    cpu = [n.cpu_s for n in nodes]
    if any(c is None for c in cpu):
        return None
    return per_tx(sum(c for c in cpu if c is not None), committed, 1e6)


def max_node_bytes_per_tx(nodes: list[NodeWindow], committed: int) -> float | None:
    """Bytes sent plus received per committed transaction at the busiest replica."""
    totals = [n.bytes_total for n in nodes if n.bytes_total is not None]
    return per_tx(max(totals), committed) if totals else None


def bottleneck(
    nodes: list[NodeWindow], committed: int, duration_s: float,
    host_cpu_busy: float | None = None, run_cpu_share: float | None = None,
) -> dict[str, Any]:
    """The bottleneck verdict with its evidence (see :mod:`phalanx.bench.verdict`)."""
    return verdict([n.costs() for n in nodes], committed, duration_s,
                   host_cpu_busy=host_cpu_busy, run_cpu_share=run_cpu_share)


def run_cpu_share(replica_cpu_s: float, client_cpu_s: float, duration_s: float,
                  cores: int | None) -> float | None:
    """Share of the host's CPUs this run's processes used over the window."""
    if not cores or not duration_s:
        return None
    return (replica_cpu_s + client_cpu_s) / (duration_s * cores)


def reverdict(results: dict[str, Any]) -> dict[str, Any]:
    """The verdict recomputed from a results object's per-node figures (for results
    written before a change of the rules)."""
    nodes = []
    for node in results["per_node"]:
        phases = node.get("phases") or {}
        by_type = node.get("by_type") or {}
        busy = (sum(by_type.get("handler_ms", {}).values())
                + sum(by_type.get("send_ms", {}).values()) + by_type.get("execution_ms", 0)
                + by_type.get("transport_io_ms", 0)) / 1000 if by_type else None
        nodes.append(NodeCosts(
            id=node["id"], cpu_s=node["cpu_s"], bytes_sent=node["bytes_sent"],
            bytes_recv=node["bytes_recv"], phase_cpu_s={p: v["cpu_s"] for p, v in phases.items()},
            phase_bytes={p: v["bytes"] for p, v in phases.items()},
            bandwidth_bps=node.get("bandwidth_bps"), busy_s=busy,
        ))
    env = results.get("environment", {})
    replica_cpu = sum(n["cpu_s"] or 0.0 for n in results["per_node"])
    share = run_cpu_share(replica_cpu, results.get("client_cpu_s", 0.0) or
                          env.get("loadgen_cpu_s", 0.0), results["duration_s"],
                          env.get("cpu_count"))
    return verdict(nodes, results["committed_tx"], results["duration_s"],
                   host_cpu_busy=env.get("host_cpu_busy"), run_cpu_share=share)


def timeline_split(timeline: list[int], bin_s: float, at_s: float) -> tuple[int, int]:
    """Completions before and after ``at_s`` seconds into the window (to the nearest
    timeline bin boundary)."""
    cut = max(0, min(len(timeline), round(at_s / bin_s)))
    return sum(timeline[:cut]), sum(timeline[cut:])


def longest_stall_s(timeline: list[int], bin_s: float) -> float:
    """The longest run of timeline bins without a single completion, in seconds."""
    longest = run = 0
    for count in timeline:
        run = run + 1 if count == 0 else 0
        longest = max(longest, run)
    return longest * bin_s


def merge_timelines(reports: list[LoadgenReport]) -> tuple[list[int], float]:
    """Sum the load generators' timelines bin by bin (they share one bin width)."""
    if not reports:
        return [], 0.1
    bin_s = reports[0].bin_s
    if any(r.bin_s != bin_s for r in reports):
        raise ValueError("load generators used different timeline bins")
    merged = [0] * max(len(r.timeline) for r in reports)
    for r in reports:
        for i, count in enumerate(r.timeline):
            merged[i] += count
    return merged, bin_s


# -- environment -----------------------------------------------------------------------------


def host_cpu_times() -> tuple[int, int] | None:
    """(busy, total) CPU ticks of the whole host since boot, from /proc/stat (Linux)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def host_cpu_busy(start: tuple[int, int] | None, end: tuple[int, int] | None) -> float | None:
    """Share of all host CPU time that was busy between two :func:`host_cpu_times`, counting
    every process on the machine (ours and anyone else's)."""
    if start is None or end is None or end[1] <= start[1]:
        return None
    return (end[0] - start[0]) / (end[1] - start[1])


def git_commit(repo: Path | None = None) -> str | None:
    """HEAD of the phalanx checkout (``-dirty`` when tracked files differ), or None."""
    where = repo or Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "diff", "--quiet", "HEAD"], cwd=where, capture_output=True, timeout=5,
        ).returncode
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if dirty else "") if head else None


def environment(loadgen_cpu_s: float, host_busy: float | None = None) -> dict[str, Any]:
    """Where the run happened: interpreter, host (and how busy its CPUs were during the
    window, all processes counted), event loop, code version, date."""
    try:
        uvloop: str | bool = metadata.version("uvloop")
    except metadata.PackageNotFoundError:
        uvloop = False
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "uvloop": uvloop,
        "loadgen_cpu_s": loadgen_cpu_s,
        "host_cpu_busy": None if host_busy is None else round(host_busy, 4),
        "commit": git_commit(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


# -- the results object ----------------------------------------------------------------------


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def build_results(
    spec: RunSpec,
    loadgens: list[LoadgenReport],
    nodes: list[NodeWindow],
    safety: Safety,
    env: dict[str, Any],
    fault: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The results object of DESIGN.md (keys :data:`RESULT_KEYS`) plus diagnostics.

    ``fault``, if given, describes a replica killed inside the window: ``replica`` and
    ``at_s`` (seconds into the window); committed-before/after figures are added here.
    """
    committed = sum(r.committed for r in loadgens)
    hist = LatencyHistogram()
    for r in loadgens:
        hist.merge(r.histogram)
    duration = spec.duration_s
    latency = {
        f"p{q}": _round(None if (v := hist.percentile_us(q)) is None else v / 1000)
        for q in (50, 90, 99)
    }
    mean = hist.mean_us()
    latency["mean"] = _round(None if mean is None else mean / 1000)
    latency["max"] = _round(hist.max_us / 1000 if hist.count else None)
    errors: dict[str, int] = {}
    for r in loadgens:
        for reason, count in r.errors.items():
            errors[reason] = errors.get(reason, 0) + count
    client_cpu = sum(r.window_cpu_s for r in loadgens)
    timeline, bin_s = merge_timelines(loadgens)
    replica_cpu = [n.cpu_s for n in nodes if n.cpu_s is not None]
    total_cpu = sum(replica_cpu)

    results: dict[str, Any] = {
        "protocol": spec.protocol,
        "n": spec.n,
        "f": spec.f,
        "clients": spec.clients,
        "payload_bytes": spec.payload_bytes,
        "duration_s": duration,
        "committed_tx": committed,
        "throughput_tps": _round(committed / duration if duration else None, 1),
        "latency_ms": latency,
        "per_node": [
            {**n.to_json(), "cpu_share": _round(n.cpu_s / total_cpu if total_cpu and
                                                n.cpu_s is not None else None, 4)}
            for n in nodes
        ],
        "cpu_us_per_tx": _round(cpu_us_per_tx(nodes, committed), 1),
        "max_node_bytes_per_tx": _round(max_node_bytes_per_tx(nodes, committed), 1),
        "bottleneck": bottleneck(
            nodes, committed, duration, env.get("host_cpu_busy"),
            run_cpu_share(total_cpu, client_cpu or env.get("loadgen_cpu_s") or 0.0, duration,
                          env.get("cpu_count")),
        ),
        "safety": safety.to_json(),
        "environment": {**env, "loadgen_cpu_s": round(env.get("loadgen_cpu_s") or 0.0, 3)},
        "client_cpu_s": round(client_cpu, 3),
        "warmup_s": spec.warmup_s,
        "client_procs": spec.client_procs,
        "keys_per_client": spec.keys_per_client,
        "options": dict(spec.options),
        "errors": errors,
        "timeline": {"bin_s": bin_s, "committed": timeline},
        "longest_stall_s": round(longest_stall_s(timeline, bin_s), 3),
    }
    if fault is not None:
        before, after = timeline_split(timeline, bin_s, fault["at_s"])
        after_s = duration - fault["at_s"]
        results["fault"] = {
            **fault,
            "committed_before": before,
            "committed_after": after,
            "throughput_before_tps": _round(before / fault["at_s"] if fault["at_s"] else None, 1),
            "throughput_after_tps": _round(after / after_s if after_s > 0 else None, 1),
        }
    results["warnings"] = _warnings(results, spec, total_cpu, client_cpu)
    return results


def _warnings(
    results: dict[str, Any], spec: RunSpec, replica_cpu: float, client_cpu: float
) -> list[str]:
    """Caveats a reader of the numbers must know."""
    out = []
    duration = spec.duration_s
    if duration and spec.client_procs and client_cpu / (duration * spec.client_procs) > (
        LOADGEN_SATURATED
    ):
        out.append(
            f"load generators used {client_cpu / duration / spec.client_procs:.0%} of a core "
            "each: the load itself may be the limit (try more --client-procs)"
        )
    env = results["environment"]
    cores = env.get("cpu_count") or 0
    if duration and cores:
        ours = (replica_cpu + client_cpu) / (duration * cores)
        host = env.get("host_cpu_busy")
        if max(ours, host or 0.0) > HOST_SATURATED:
            out.append(
                f"the host's {cores} CPUs were {max(ours, host or 0.0):.0%} busy in the window "
                f"({ours:.0%} by this run): the figures measure this machine's CPU as much as "
                "the protocol"
            )
        if host is not None and host - ours > OTHERS_NOISY:
            out.append(
                f"other processes (and kernel work charged to none) used {host - ours:.0%} of "
                "the host's CPU during the window: "
                "expect noise, compare runs made together"
            )
    if results["errors"]:
        out.append(f"requests refused or failed: {results['errors']}")
    if not results["safety"]["converged"]:
        out.append("live replicas did not reach one executed_seq after the load stopped")
    return out


def to_json(results: dict[str, Any]) -> str:
    """The results object as indented JSON text."""
    return msgspec.json.format(msgspec.json.encode(results), indent=2).decode()


# -- the summary -----------------------------------------------------------------------------


def _fmt(value: float | None, spec: str = ",.1f", unit: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{unit}"


def _mib(value: float | None) -> str:
    return "—" if value is None else f"{value / (1 << 20):,.1f}"


def render_summary(results: dict[str, Any], console: Any = None) -> None:
    """Print one honest summary of ``results`` (rich tables) to ``console`` or stdout."""
    from rich.console import Console
    from rich.table import Table

    # Wide enough for the per-node table even when stdout is not a terminal.
    console = console or Console(width=max(100, Console().width))
    latency = results["latency_ms"]
    safety = results["safety"]
    env = results["environment"]
    duration = results["duration_s"]

    head = Table(title=f"phalanx bench — {results['protocol']}", show_header=False)
    head.add_column("", style="bold")
    head.add_column("")
    head.add_row("committee", f"n={results['n']} f={results['f']}")
    head.add_row(
        "load",
        f"{results['clients']} closed-loop clients in {results['client_procs']} process(es), "
        f"{results['payload_bytes']} B values",
    )
    head.add_row("window", f"{duration:g} s after {results['warmup_s']:g} s warm-up")
    head.add_row("committed", f"{results['committed_tx']:,} tx")
    head.add_row("throughput", _fmt(results["throughput_tps"], ",.0f", " tx/s"))
    head.add_row(
        "latency p50 / p90 / p99",
        " / ".join(_fmt(latency[k], ",.1f") for k in LATENCY_KEYS) + " ms",
    )
    head.add_row("replica CPU per tx (sum)", _fmt(results["cpu_us_per_tx"], ",.0f", " µs"))
    head.add_row(
        "bytes per tx (busiest node)", _fmt(results["max_node_bytes_per_tx"], ",.0f", " B")
    )
    client_share = results["client_cpu_s"] / duration / max(1, results["client_procs"])
    head.add_row("load-generator CPU", f"{results['client_cpu_s']:.1f} s ({client_share:.0%} of a "
                 "core per process)")
    if "fault" in results:
        fault = results["fault"]
        head.add_row(
            "fault",
            f"replica {fault['replica']} killed at +{fault['at_s']:.2f} s: "
            f"{fault['committed_before']:,} tx before "
            f"({_fmt(fault['throughput_before_tps'], ',.0f')} tx/s), "
            f"{fault['committed_after']:,} after ({_fmt(fault['throughput_after_tps'], ',.0f')}"
            " tx/s)",
        )
    head.add_row("longest stall", f"{results['longest_stall_s']:.1f} s")

    def yes_no(ok: bool) -> str:
        return "[green]yes[/green]" if ok else "[red]NO[/red]"

    head.add_row(
        "safety",
        f"state roots equal: {yes_no(safety['state_roots_equal'])}, "
        f"logs consistent: {yes_no(safety['logs_consistent'])} "
        f"({safety['compared_seqs']:,} seqs compared)",
    )
    neck = results["bottleneck"]
    head.add_row("bottleneck", f"[bold]{neck['verdict']}[/bold]"
                 + (f" ({neck['resource']}): {neck['reason']}" if neck.get("resource") else
                    f": {neck.get('reason', '')}"))
    head.add_row(
        "environment",
        f"Python {env['python']}, {env['cpu_count']} CPUs"
        + (f" ({env['host_cpu_busy']:.0%} busy in the window)"
           if env.get("host_cpu_busy") is not None else "")
        + f", uvloop {env['uvloop']}, commit {(env['commit'] or '?')[:12]}",
    )
    console.print(head)

    nodes = Table(title="per replica over the window")
    for name in ("id", "CPU s", "CPU share", "core use", "sent MiB", "recv MiB", "msgs sent",
                 "bytes/tx", "peak RSS MiB"):
        nodes.add_column(name, justify="right")
    committed = results["committed_tx"]
    for node in results["per_node"]:
        total = (
            node["bytes_sent"] + node["bytes_recv"]
            if node["bytes_sent"] is not None and node["bytes_recv"] is not None
            else None
        )
        nodes.add_row(
            f"{node['id']}{' killed' if node['killed'] else ''}",
            _fmt(node["cpu_s"], ".2f"),
            _fmt(None if node["cpu_share"] is None else node["cpu_share"] * 100, ".0f", "%"),
            _fmt(None if node["cpu_s"] is None else node["cpu_s"] / duration * 100, ".0f", "%"),
            _mib(node["bytes_sent"]),
            _mib(node["bytes_recv"]),
            _fmt(node["msgs_sent"], ",.0f"),
            _fmt(per_tx(total, committed), ",.0f"),
            _mib(node["peak_rss_bytes"]),
        )
    console.print(nodes)
    for warning in results["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {warning}")
