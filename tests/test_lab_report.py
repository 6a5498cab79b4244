"""Sweep reports judge every run under the current verdict rules, from the per-node
figures the run stored — the same code path as docs/results.md (``phalanx lab report``)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

from phalanx.bench import lab
from phalanx.bench.report import SweepReport, judged, load_results, row
from phalanx.bench.results import reverdict


def _node(i: int, cpu_s: float, busy_ms: float) -> dict:
    """One replica's stored figures: ``busy_ms`` of accounted wall-clock work."""
    return {
        "id": i, "cpu_s": cpu_s, "bytes_sent": 3_000_000, "bytes_recv": 1_000_000,
        "msgs_sent": 2_000, "killed": False,
        "phases": {"data": {"cpu_s": cpu_s * 0.7, "bytes": 3_900_000, "msgs": 3_000},
                   "consensus": {"cpu_s": cpu_s * 0.28, "bytes": 100_000, "msgs": 1_000},
                   "execution": {"cpu_s": cpu_s * 0.02, "bytes": 0, "msgs": 0}},
        "by_type": {"handler_ms": {"Request": busy_ms * 0.5}, "send_ms": {"Reply": 0.0},
                    "execution_ms": 0.0, "transport_io_ms": busy_ms * 0.5},
    }


def _run(clients: int, busy_ms: float, stale: str) -> dict:
    """A 10 s run whose stored bottleneck says ``stale`` (an older rule's call)."""
    return {
        "protocol": "pbft", "n": 4, "f": 1, "clients": clients, "payload_bytes": 512,
        "duration_s": 10.0, "committed_tx": 1_000 * clients, "throughput_tps": 100.0 * clients,
        "latency_ms": {"p50": 180.0, "p90": 185.0, "p99": 190.0},
        "per_node": [_node(i, 0.4, busy_ms if i == 0 else 100.0) for i in range(4)],
        "bottleneck": {"verdict": stale, "resource": "cpu", "reason": "stale"},
        "safety": {"state_roots_equal": True, "logs_consistent": True},
        "environment": {"cpu_count": 2, "host_cpu_busy": 0.95, "loadgen_cpu_s": 1.0},
        "client_cpu_s": 1.0, "load": {"mode": "closed", "rate_tps": None},
    }


def _write_points(folder, runs):
    (folder / "points").mkdir(parents=True)
    for r in runs:
        (folder / "points" / f"pbft-n4-c{r['clients']}.json").write_text(json.dumps(r))


def test_the_sweep_report_rejudges_stale_verdicts_in_csv_and_html(tmp_path):
    # 8 clients: nothing saturated (busy 2% of the window) -> none (latency), though
    # the stored verdict says data; 128 clients: the primary busy 60% -> data (cpu).
    _write_points(tmp_path, [_run(8, 200.0, "data"), _run(128, 6_000.0, "execution")])
    SweepReport.from_points("t", tmp_path).write()
    with open(tmp_path / "sweep.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["clients"], r["verdict"], r["resource"]) for r in rows] == [
        ("8", "none", "latency"), ("128", "data", "cpu")]
    page = (tmp_path / "report.html").read_text()
    assert "execution" not in page.split("Bottleneck verdicts")[1]
    assert "8 clients</b> — none: no CPU or link saturated" in page


def test_sweep_csv_and_results_md_tables_are_the_same_rows(tmp_path):
    _write_points(tmp_path, [_run(8, 200.0, "data"), _run(32, 5_500.0, "consensus")])
    SweepReport.from_points("t", tmp_path).write()
    with open(tmp_path / "sweep.csv") as fh:
        sweep = {r["clients"]: (r["verdict"], r["resource"]) for r in csv.DictReader(fh)}
    markdown = {str(r["clients"]): (r["verdict"], r["resource"])
                for r in lab._rows(tmp_path / "points")}
    assert sweep == markdown == {"8": ("none", "latency"), "32": ("data", "cpu")}


def test_judging_is_idempotent_and_keeps_a_peer_baseline_verdict(tmp_path):
    fresh = judged(_run(8, 200.0, "data"))
    assert judged(fresh)["bottleneck"] == fresh["bottleneck"] == reverdict(fresh)
    peer = {"protocol": "etcd", "committed_tx": 10, "bottleneck": {"verdict": "consensus"}}
    assert judged(peer) == peer
    path = tmp_path / "r.json"
    path.write_text(json.dumps(_run(8, 200.0, "data")))
    assert row(load_results(path))["verdict"] == "none"


def test_report_only_rewrites_a_sweep_without_running_it(tmp_path):
    _write_points(tmp_path, [_run(8, 200.0, "data")])
    proc = subprocess.run([sys.executable, "-m", "phalanx.cli", "bench", "sweep",
                           "--report-only", "--out", str(tmp_path), "--title", "again"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "<title>again</title>" in (tmp_path / "report.html").read_text()
    assert "none,latency" in (tmp_path / "sweep.csv").read_text()
    empty = subprocess.run([sys.executable, "-m", "phalanx.cli", "bench", "sweep",
                            "--report-only", "--out", str(tmp_path / "nothing")],
                           capture_output=True, text=True, timeout=60)
    assert empty.returncode == 1 and "no " in empty.stderr
