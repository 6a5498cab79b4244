"""Soak: a long open-loop load at a share of the measured saturation, view changes on a
schedule; memory, disk, throughput and latency sampled, written as JSON and plotted.

The run (``phalanx reliability soak``):

1. saturation: a short closed-loop ``phalanx bench`` of the same cluster shape (64
   clients, its own cluster) gives the throughput the soak takes a share of (``--load``,
   default 0.7); ``--saturation TPS`` skips it;
2. a fresh key-value cluster (:class:`~phalanx.cluster.LocalCluster`, durability
   ``fsync``, checkpoints every 256 slots: the log is garbage-collected behind each
   stable checkpoint, and every client rewrites its own 64 keys, so the state and the
   disk must stay bounded) and ``client_procs`` open-loop load generators
   (:mod:`~phalanx.reliability.soak_load`) offering that rate in all;
3. every ``interval`` seconds each replica's anonymous and file-backed RSS (``/proc``),
   its data directory's size on disk, its executed count and view are sampled; the load
   generators report each interval's completions and latency histogram;
4. every ``view_change_every`` seconds the current primary is stopped (SIGSTOP) long
   enough for the others to elect a new one, then continued (or, with ``--view-change
   kill``, SIGKILLed and restarted);
5. at the end: the replicas must agree (one executed seq, one state root), every view
   change must have moved the view, and the series are judged within this run (after a
   warm-up): anonymous RSS peaks of the last third against the middle third, disk and
   p99 latency of the last third against the first (intervals with a view change
   reported apart), achieved against offered throughput.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from phalanx.bench.results import LatencyHistogram
from phalanx.cluster import ClusterError, LocalCluster, free_port_block
from phalanx.reliability.checks import Findings, check_agreement
from phalanx.reliability.common import (
    HarnessError,
    executed,
    primary_of,
    process_memory,
    run_report,
    settle,
    statuses,
)

MIB = 1 << 20


@dataclass
class SoakSpec:
    workdir: Path
    n: int = 4
    duration_s: float = 3600.0
    load: float = 0.7  # share of the saturated throughput offered
    saturation_tps: float | None = None  # measured when None
    saturation_duration_s: float = 20.0
    view_change_every_s: float = 300.0
    view_change: str = "stop"  # "stop" (SIGSTOP/SIGCONT) or "kill" (SIGKILL, restart)
    stop_s: float = 4.0  # how long a stopped primary stays stopped
    interval_s: float = 10.0
    warmup_s: float = 60.0  # excluded from the first-third baseline
    clients: int = 64  # requests in flight at most, over all load generators
    client_procs: int = 2
    payload: int = 512
    rss_tolerance_mib: float = 12.0
    disk_tolerance: float = 0.25  # growth of the last third over the first, as a share
    p99_tolerance: float = 1.5  # last third's median p99 over the first third's

    def validate(self) -> None:
        if self.n < 4 or self.duration_s <= 0 or not 0 < self.load <= 1.5:
            raise ValueError("need n >= 4, duration > 0 and a load share in (0, 1.5]")
        if self.view_change not in ("stop", "kill"):
            raise ValueError("view change must be 'stop' or 'kill'")
        if self.interval_s <= 0 or self.client_procs < 1 or self.clients < self.client_procs:
            raise ValueError("need interval > 0 and at least one client per load generator")

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["workdir"] = str(self.workdir)
        return doc


def measure_saturation(workdir: Path, n: int, duration: float, warmup: float | None = None
                       ) -> float:
    """Closed-loop throughput of a fresh cluster, measured by ``phalanx bench`` itself (64
    clients, 512-byte PUTs, fsync), so the soak's load is a share of what the bench
    reports."""
    if warmup is None:
        warmup = min(3.0, duration / 2)
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / "bench.json"
    subprocess.run(
        [sys.executable, "-m", "phalanx.cli", "bench", "--n", str(n), "--clients", "64",
         "--payload", "512", "--duration", str(duration), "--warmup", str(warmup),
         "--no-progress", "--base-port", str(free_port_block(2 * n)),
         "--dir", str(workdir / "cluster"), "--json", str(out)],
        check=True, stdout=subprocess.DEVNULL,
    )
    return float(json.loads(out.read_text())["throughput_tps"])


def disk_bytes(path: Path) -> int:
    """Bytes allocated on disk under ``path`` (what ``du`` counts)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(root, name)).st_blocks * 512
    return total


class LoadGenerators:
    """The soak's load processes and the interval lines they print."""

    def __init__(self, config_path: Path, spec: SoakSpec, rate: float, logs: Path) -> None:
        self.lines: queue.Queue[tuple[int, dict[str, Any]]] = queue.Queue()
        self.procs: list[subprocess.Popen[bytes]] = []
        self._logs = [open(logs / f"soak-load-{i}.log", "ab")  # noqa: SIM115
                      for i in range(spec.client_procs)]
        first = 0
        for i in range(spec.client_procs):
            clients = spec.clients // spec.client_procs + (i < spec.clients % spec.client_procs)
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "phalanx.reliability.soak_load", "--config",
                 str(config_path), "--clients", str(clients), "--first-client", str(first),
                 "--rate", repr(rate * clients / spec.clients), "--payload", str(spec.payload),
                 "--interval", repr(spec.interval_s)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._logs[i],
            ))
            first += clients

    def start(self) -> None:
        for proc in self.procs:
            assert proc.stdout is not None
            line = proc.stdout.readline().decode().strip()
            if not line.startswith("ready"):
                raise HarnessError(f"a soak load generator did not start: {line or 'EOF'}")
        for index, proc in enumerate(self.procs):
            threading.Thread(target=self._read, args=(index, proc), daemon=True).start()
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            proc.stdin.flush()

    def _read(self, index: int, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            try:
                self.lines.put((index, json.loads(raw)))
            except ValueError:
                continue

    def stop(self) -> None:
        for proc in self.procs:
            if proc.stdin is not None:
                try:
                    proc.stdin.write(b"stop\n")
                    proc.stdin.close()
                except OSError:
                    pass
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in self._logs:
            log.close()

    def drained(self) -> list[tuple[int, dict[str, Any]]]:
        out = []
        while True:
            try:
                out.append(self.lines.get_nowait())
            except queue.Empty:
                return out


@dataclass
class ViewChange:
    at: float
    primary: int
    how: str
    view_before: int
    view_after: int | None = None
    took_s: float | None = None  # until the others were in a higher view
    recovery_s: float | None = None  # until the load's backlog had drained


@dataclass
class Sample:
    t: float
    anon_mib: dict[int, float] = field(default_factory=dict)
    file_mib: dict[int, float] = field(default_factory=dict)
    disk_mib: dict[int, float] = field(default_factory=dict)
    executed: dict[int, int] = field(default_factory=dict)
    view: dict[int, int] = field(default_factory=dict)


class Soak:
    def __init__(self, spec: SoakSpec, say: Any = print) -> None:
        spec.validate()
        self.spec = spec
        self.say = say
        self.findings = Findings()
        self.samples: list[Sample] = []
        self.view_changes: list[ViewChange] = []
        self.intervals: list[tuple[int, dict[str, Any]]] = []
        self._down: set[int] = set()  # replicas the view changer killed on purpose

    def run(self) -> dict[str, Any]:
        spec = self.spec
        started = time.time()
        saturation = spec.saturation_tps
        if saturation is None:
            self.say(f"measuring saturation: phalanx bench, {spec.saturation_duration_s:g} s")
            saturation = measure_saturation(spec.workdir / "saturation", spec.n,
                                            spec.saturation_duration_s)
        rate = spec.load * saturation
        self.say(f"soak: {spec.duration_s:g} s at {rate:,.0f} req/s ({spec.load:.0%} of "
                 f"{saturation:,.0f}), a view change every {spec.view_change_every_s:g} s "
                 f"({spec.view_change}); work dir {spec.workdir}")
        cluster = LocalCluster(spec.workdir / "cluster", spec.n)
        loads: LoadGenerators | None = None
        try:
            cluster.start()
            loads = LoadGenerators(cluster.config_path, spec, rate, cluster.dir / "logs")
            loads.start()
            go = time.time()
            self._sample_until(cluster, go, go + spec.duration_s)
            loads.stop()
            self.intervals.extend(loads.drained())
            answers = settle(cluster, 60.0)
            check_agreement(self.findings, answers)
            final = {r: {"executed_seq": executed(s),
                         "state_root": s and s.get("state_root")}
                     for r, s in answers.items()}
        finally:
            if loads is not None:
                for proc in loads.procs:
                    if proc.poll() is None:
                        proc.kill()
            cluster.close()
        return self._report(started, go, saturation, rate, final)

    # -- sampling and view changes ------------------------------------------------------

    def _sample_until(self, cluster: LocalCluster, go: float, end: float) -> None:
        spec = self.spec
        next_sample = go + spec.interval_s
        next_change = go + spec.view_change_every_s
        changer: threading.Thread | None = None
        while time.time() < end:
            now = time.time()
            if now >= next_change and (changer is None or not changer.is_alive()):
                changer = threading.Thread(target=self._view_change, args=(cluster,),
                                           daemon=True)
                changer.start()
                next_change += spec.view_change_every_s
            if now >= next_sample:
                self._sample(cluster, now)
                next_sample += spec.interval_s
            self._restart_the_dead(cluster)
            time.sleep(max(0.0, min(next_sample, next_change, end) - time.time()))
        if changer is not None:
            changer.join()

    def _restart_the_dead(self, cluster: LocalCluster) -> None:
        for i in range(cluster.n):
            code = cluster.returncode(i)
            if code is not None and i not in self._down:
                self.findings.add("replica_exited", f"replica {i} exited with {code}")
                cluster.restart(i)

    def _sample(self, cluster: LocalCluster, now: float) -> None:
        sample = Sample(now)
        pids = cluster.pids
        for i, status in statuses(cluster).items():
            memory = process_memory(pids[i]) if i in pids else None
            if memory is not None:
                sample.anon_mib[i] = round(memory["anon"] / MIB, 2)
                sample.file_mib[i] = round(memory["file"] / MIB, 2)
            sample.disk_mib[i] = round(disk_bytes(cluster.dir / "data" / f"replica-{i}") / MIB,
                                       2)
            if status is not None:
                sample.executed[i] = int(status.get("requests_executed") or 0)
                sample.view[i] = int(status.get("view") or 0)
        self.samples.append(sample)
        self.say(self._describe(sample))

    def _view_change(self, cluster: LocalCluster) -> None:
        before = statuses(cluster)
        primary = primary_of(before)
        view = max((s.get("view") or 0) for s in before.values() if s is not None)
        change = ViewChange(time.time(), primary, self.spec.view_change, view)
        self.view_changes.append(change)
        pid = cluster.pids.get(primary)
        if pid is None:
            return
        if self.spec.view_change == "stop":
            os.kill(pid, signal.SIGSTOP)
        else:
            self._down.add(primary)
            cluster.kill(primary)
        others = [r for r in range(cluster.n) if r != primary]
        deadline = time.time() + max(self.spec.stop_s, 30.0)
        while time.time() < deadline:
            views = [v for s in statuses(cluster, others).values()
                     if s and isinstance(v := s.get("view"), int)]
            if len(views) >= len(others) - 1 and min(views) > view:
                change.view_after = min(views)
                change.took_s = round(time.time() - change.at, 3)
                break
            time.sleep(0.1)
        time.sleep(max(0.0, change.at + self.spec.stop_s - time.time()))
        if self.spec.view_change == "stop":
            os.kill(pid, signal.SIGCONT)
        else:
            try:
                cluster.restart(primary)
            except (ClusterError, TimeoutError) as exc:
                self.findings.add("restart_failed", f"replica {primary}: {exc}")
            self._down.discard(primary)
        if change.view_after is None:
            self.findings.add("no_view_change", f"primary {primary} {self.spec.view_change}"
                              f"ped, the view stayed {view}")
        else:
            self.say(f"view change: primary {primary} {self.spec.view_change}ped, view "
                     f"{view} -> {change.view_after} in {change.took_s:.1f} s")

    def _describe(self, s: Sample) -> str:
        def span(values: dict[int, float]) -> str:
            return f"{min(values.values()):.0f}-{max(values.values()):.0f}" if values else "-"

        return (f"t={s.t - (self.samples[0].t if self.samples else s.t):7.0f}s  anon RSS "
                f"{span(s.anon_mib)} MiB, mapped {span(s.file_mib)} MiB, disk "
                f"{span(s.disk_mib)} MiB, view {max(s.view.values(), default=0)}")

    # -- the verdict --------------------------------------------------------------------

    def _report(self, started: float, go: float, saturation: float, rate: float,
                final: dict[int, Any]) -> dict[str, Any]:
        spec = self.spec
        series = interval_series(self.intervals, go, spec.interval_s)
        recoveries = mark_disturbed(series, [c.at - go for c in self.view_changes], rate)
        for change, recovery in zip(self.view_changes, recoveries, strict=True):
            change.recovery_s = recovery
        verdicts = judge(self.samples, series, go, rate, spec, self.findings)
        return {
            "harness": "soak",
            "spec": spec.to_json(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
            "duration_s": round(time.time() - started, 1),
            "ok": not self.findings,
            "findings": self.findings.to_json(),
            "saturation_tps": round(saturation, 1),
            "offered_tps": round(rate, 1),
            "verdicts": verdicts,
            "view_changes": [asdict(v) | {"at_s": round(v.at - go, 1)}
                             for v in self.view_changes],
            "final": final,
            "intervals": series,
            "samples": [asdict(s) | {"t_s": round(s.t - go, 1)} for s in self.samples],
        }


def interval_series(lines: list[tuple[int, dict[str, Any]]], go: float, interval: float
                    ) -> list[dict[str, Any]]:
    """The load generators' interval lines merged by interval: completions per second,
    p50/p99 (ms), failures and the waiting backlog. An interval that not every load
    generator reported (the last one, cut by the stop) is left out."""
    merged: dict[int, dict[str, Any]] = {}
    reporters: dict[int, set[int]] = {}
    for proc, line in lines:
        reporters.setdefault(max(0, round((line["t"] - go) / interval) - 1), set()).add(proc)
    everyone = set().union(*reporters.values()) if reporters else set()
    for _, line in lines:
        index = max(0, round((line["t"] - go) / interval) - 1)
        if reporters[index] != everyone:
            continue
        point = merged.setdefault(index, {"histogram": LatencyHistogram(), "completed": 0,
                                          "errors": 0, "backlog": 0})
        point["histogram"].merge(LatencyHistogram.from_json(line["histogram"]))
        point["completed"] += line["completed"]
        point["errors"] += sum(v for k, v in line["errors"].items() if k != "backlog_full")
        point["backlog"] += line["backlog"]
    series = []
    for index in sorted(merged):
        point = merged[index]
        hist = point.pop("histogram")
        p50, p99 = hist.percentile_us(50), hist.percentile_us(99)
        series.append({
            "start_s": round(index * interval, 1), "end_s": round((index + 1) * interval, 1),
            "throughput_tps": round(point["completed"] / interval, 1),
            "p50_ms": None if p50 is None else round(p50 / 1000, 2),
            "p99_ms": None if p99 is None else round(p99 / 1000, 2),
            "errors": point["errors"], "backlog": point["backlog"], "view_change": False,
        })
    return series


BACKLOG_DRAINED_S = 0.25
"""An interval ends *drained* when the arrivals waiting for a free client are fewer than
this many seconds' worth of the offered rate."""


def mark_disturbed(series: list[dict[str, Any]], changes_s: list[float], rate: float
                   ) -> list[float | None]:
    """Mark the intervals from each view change until the load's backlog has drained
    (``view_change``: True); returns, per change, the seconds until then (None: never)."""
    drained = rate * BACKLOG_DRAINED_S
    recoveries: list[float | None] = []
    for at in changes_s:
        recovery = None
        for point in series:
            if point["end_s"] <= at:
                continue
            if point["start_s"] > at + 1.0 and point["backlog"] <= drained:
                recovery = round(point["start_s"] - at, 1)
                break
            point["view_change"] = True
        recoveries.append(recovery)
    return recoveries


def _slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (x, y) points (0 with fewer than two)."""
    if len(points) < 2:
        return 0.0
    mean_x = statistics.fmean(x for x, _ in points)
    mean_y = statistics.fmean(y for _, y in points)
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    if not spread:
        return 0.0
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / spread


def _thirds(values: list[float]) -> tuple[float, float] | None:
    """Medians of the first and last thirds (None with fewer than three values)."""
    if len(values) < 3:
        return None
    third = max(1, len(values) // 3)
    return (round(statistics.median(values[:third]), 2),
            round(statistics.median(values[-third:]), 2))


def judge(samples: list[Sample], series: list[dict[str, Any]], go: float, rate: float,
          spec: SoakSpec, findings: Findings) -> dict[str, Any]:
    """Ratios within the run (first third against last third, after the warm-up)."""
    verdicts: dict[str, Any] = {}
    steady = [s for s in samples if s.t - go >= spec.warmup_s] or samples
    replicas = sorted({r for s in steady for r in s.anon_mib})
    rss: dict[str, Any] = {}
    for r in replicas:
        values = [s.anon_mib[r] for s in steady if r in s.anon_mib]
        thirds = _thirds(values)
        if thirds is None:
            continue
        third = len(values) // 3
        # A replica's RSS steps up when it absorbs a burst (a view change's backlog) and
        # stays there: the allocator keeps its high-water mark. A leak keeps rising. So
        # the verdict compares the peaks of the middle and the last third: a plateau
        # reached early passes, growth that goes on does not.
        middle, last = max(values[third:-third]), max(values[-third:])
        points = [(s.t - go, s.anon_mib[r]) for s in steady if r in s.anon_mib]
        rss[str(r)] = {"first_third_mib": thirds[0], "last_third_mib": thirds[1],
                       "middle_third_peak_mib": middle, "last_third_peak_mib": last,
                       "slope_mib_per_hour": round(_slope(points) * 3600, 1),
                       "peak_mib": max(values)}
        if last - middle > spec.rss_tolerance_mib:
            findings.add("rss_growth", f"replica {r}: anonymous RSS peaked at {middle:.1f} "
                         f"MiB in the middle third, {last:.1f} in the last (tolerance "
                         f"{spec.rss_tolerance_mib:g})")
    verdicts["anonymous_rss"] = rss
    disk: dict[str, Any] = {}
    for r in replicas:
        thirds = _thirds([s.disk_mib[r] for s in steady if r in s.disk_mib])
        if thirds is None:
            continue
        disk[str(r)] = {"first_third_mib": thirds[0], "last_third_mib": thirds[1],
                        "max_mib": max(s.disk_mib.get(r, 0.0) for s in samples)}
        if thirds[1] > thirds[0] * (1 + spec.disk_tolerance) + 1.0:
            findings.add("disk_growth", f"replica {r}: data directory {thirds[0]:.1f} -> "
                         f"{thirds[1]:.1f} MiB")
    verdicts["disk"] = disk
    # Calm: past the warm-up, no view change, no backlog left by one (mark_disturbed).
    calm = [p for p in series if not p["view_change"] and p["start_s"] >= spec.warmup_s
            and p["p99_ms"] is not None] or [p for p in series if p["p99_ms"] is not None]
    thirds = _thirds([p["p99_ms"] for p in calm])
    if thirds is not None:
        verdicts["p99_ms"] = {"first_third": thirds[0], "last_third": thirds[1],
                              "ratio": round(thirds[1] / thirds[0], 3) if thirds[0] else None}
        if thirds[0] and thirds[1] > thirds[0] * spec.p99_tolerance:
            findings.add("p99_drift", f"median p99 {thirds[0]:.1f} -> {thirds[1]:.1f} ms")
    changes = [p["p99_ms"] for p in series if p["view_change"] and p["p99_ms"] is not None]
    verdicts["p99_ms_view_change_intervals"] = {
        "count": len(changes), "max": max(changes, default=None)}
    achieved = [p["throughput_tps"] for p in calm]
    if achieved:
        mean = statistics.fmean(achieved)
        overall = statistics.fmean(p["throughput_tps"] for p in series)
        verdicts["throughput"] = {"offered_tps": round(rate, 1),
                                  "calm_mean_tps": round(mean, 1),
                                  "calm_ratio": round(mean / rate, 3),
                                  "overall_mean_tps": round(overall, 1)}
        if mean < 0.95 * rate:
            findings.add("underload", f"calm intervals served {mean:,.0f} of {rate:,.0f} "
                         "req/s offered")
    return verdicts


def plot(report: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Throughput, latency, memory and disk against time, view changes marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = 60.0
    fig, axes = plt.subplots(4, 1, figsize=(10, 12), sharex=True)
    series = report["intervals"]
    mid = [(p["start_s"] + p["end_s"]) / 2 / minutes for p in series]
    axes[0].plot(mid, [p["throughput_tps"] for p in series], label="achieved")
    axes[0].axhline(report["offered_tps"], color="grey", linestyle=":", label="offered")
    axes[0].set_ylabel("requests / s")
    axes[1].plot(mid, [p["p50_ms"] for p in series], label="p50")
    axes[1].plot(mid, [p["p99_ms"] for p in series], label="p99")
    axes[1].set_ylabel("latency (ms)")
    axes[1].set_yscale("log")
    samples = report["samples"]
    t = [s["t_s"] / minutes for s in samples]
    for index, r in enumerate(sorted({k for s in samples for k in s["anon_mib"]}, key=int)):
        color = f"C{index}"
        axes[2].plot(t, [s["anon_mib"].get(r) for s in samples], color=color,
                     label=f"replica {r} anonymous")
        axes[2].plot(t, [s["file_mib"].get(r) for s in samples], color=color, linestyle="--",
                     alpha=0.5, label=f"replica {r} mapped (LMDB)")
        axes[3].plot(t, [s["disk_mib"].get(r) for s in samples], color=color,
                     label=f"replica {r}")
    axes[2].set_ylabel("RSS (MiB)")
    axes[3].set_ylabel("data dir on disk (MiB)")
    axes[3].set_xlabel("minutes")
    for ax in axes:
        for change in report["view_changes"]:
            ax.axvline(change["at_s"] / minutes, color="red", alpha=0.3, linewidth=0.8)
        ax.legend(fontsize="x-small", loc="upper left", ncol=4)
        ax.grid(alpha=0.3)
    spec = report["spec"]
    fig.suptitle(f"soak: n={spec['n']}, {report['offered_tps']:,.0f} req/s offered "
                 f"({spec['load']:.0%} of {report['saturation_tps']:,.0f}), view change "
                 f"every {spec['view_change_every_s']:g} s (red)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summarize(report: dict[str, Any], console: Any) -> None:
    v = report["verdicts"]
    changes = [(c["at_s"], c["view_before"], c["view_after"], c["took_s"], c["recovery_s"])
               for c in report["view_changes"]]
    lines = [f"saturation {report['saturation_tps']:,.0f} req/s; offered "
             f"{report['offered_tps']:,.0f}; achieved {v.get('throughput', {})}",
             f"p99 (calm intervals, first vs last third): {v.get('p99_ms')}; view-change "
             f"intervals: {v.get('p99_ms_view_change_intervals')}",
             f"anonymous RSS: {v.get('anonymous_rss')}",
             f"disk: {v.get('disk')}",
             f"view changes (at s, view before, after, took s, backlog drained after s): "
             f"{changes}"]
    for line in lines:
        console.print(line, highlight=False, markup=False, soft_wrap=True)
    if report["ok"]:
        console.print("[green]soak ok: RSS flat, disk bounded, p99 stable, every view change "
                      "took, the replicas agree[/green]")
    else:
        console.print("[red]soak: findings[/red]")
        for kind, found in report["findings"].items():
            console.print(f"  {kind}: {found['examples'][:5]}", highlight=False, markup=False)


def run_soak_command(spec: SoakSpec, json_path: str | None, png_path: str | None,
                     console: Any) -> int:
    return run_report("soak", lambda say: Soak(spec, say=say).run(), json_path, console,
                      summarize, also=(lambda report: plot(report, png_path)) if png_path
                      else None)
