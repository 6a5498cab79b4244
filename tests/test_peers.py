"""The peer baselines' adapter logic (bench/peers) on synthetic data, and a short real etcd
run when etcd is installed (skipped otherwise; ``make peers`` runs the real baselines)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: bench.peers

from bench.peers import common, table
from bench.peers.plenum_bench import judge
from phalanx.bench.loadgen import Window
from phalanx.bench.results import RESULT_KEYS, RunSpec, Safety

SS_OUTPUT = """\
ESTAB 0 0 127.0.0.1:23790 127.0.0.1:50000 users:(("etcd",pid=101,fd=7))
\t cubic wscale:7,7 rto:201 bytes_sent:1000 bytes_acked:1000 bytes_received:250 segs_out:9
ESTAB 0 0 127.0.0.1:23790 127.0.0.1:50002 users:(("etcd",pid=101,fd=8))
\t cubic bytes_sent:500 bytes_received:50
ESTAB 0 0 127.0.0.1:23792 127.0.0.1:50004 users:(("etcd",pid=202,fd=9))
\t cubic bytes_received:70
ESTAB 0 0 127.0.0.1:50006 127.0.0.1:23790
\t cubic bytes_sent:999999 bytes_received:999999
"""


def test_parse_ss_sums_bytes_per_owning_process() -> None:
    # An unowned socket (no users:) is not charged to the process listed before it.
    assert common.parse_ss(SS_OUTPUT) == {101: (1500, 300), 202: (0, 70)}


def test_proc_sampling_reads_this_process() -> None:
    if not Path("/proc/self/stat").exists():
        pytest.skip("no /proc")
    sample = common.sample_process(os.getpid(), {os.getpid(): (10, 20)})
    assert sample is not None
    assert sample["cpu_s"] > 0 and sample["peak_rss_bytes"] >= sample["rss_bytes"] > 0
    assert (sample["bytes_sent"], sample["bytes_recv"], sample["msgs_sent"]) == (10, 20, None)
    assert common.sample_process(2**22 + 12345, None) is None  # no such pid


def test_raw_samples_are_windowed_like_phalanx() -> None:
    window = Window(start=100.0, window_start=105.0, window_end=115.0)
    doc = {
        "clients": 8,
        # before the window, inside it (3), at its end (excluded)
        "samples": [[104.9, 3.0], [105.0, 2.0], [110.0, 3.0], [114.99, 4.0], [115.0, 1.0]],
        "errors": {"timeout": 2},
        "window_cpu_s": 1.5,
        "total_cpu_s": 3.0,
    }
    report = common.report_from_samples(doc, window)
    assert (report.committed, report.completed_total, report.clients) == (3, 5, 8)
    assert report.errors == {"timeout": 2}
    assert sum(report.timeline) == 3 and report.timeline[0] == 1 and report.timeline[-1] == 1
    assert report.histogram.percentile_us(50) == pytest.approx(3e6, rel=0.01)


def test_peer_results_have_the_bench_json_shape(tmp_path: Path) -> None:
    window = Window(0.0, 10.0, 20.0)
    report = common.report_from_samples(
        {"clients": 4, "samples": [[10.0 + i / 100, 0.5] for i in range(1000)]}, window
    )
    starts = {i: {"cpu_s": 1.0, "bytes_sent": 0, "bytes_recv": 0, "msgs_sent": None,
                  "rss_bytes": 1 << 20, "peak_rss_bytes": 1 << 20} for i in range(3)}
    ends = {i: {**starts[i], "cpu_s": 3.0 + i, "bytes_sent": 1000 * (i + 1),
                "bytes_recv": 500} for i in range(3)}
    nodes = common.node_windows([0, 1, 2], starts, ends)
    spec = RunSpec(protocol="etcd-raft", n=3, f=1, clients=4, payload_bytes=512,
                   duration_s=10.0, warmup_s=10.0, client_procs=1)
    safety = Safety(True, True, True, {0: 7, 1: 7, 2: 7}, 7, "synthetic")
    results = common.peer_results(spec, [report], nodes, safety, {"cpu_count": 2},
                                  {"software": "etcd"})
    assert all(key in results for key in RESULT_KEYS)
    assert results["protocol"] == "etcd-raft" and results["peer"] == {"software": "etcd"}
    assert results["committed_tx"] == 1000 and results["throughput_tps"] == 100.0
    assert results["latency_ms"]["p50"] == pytest.approx(500, rel=0.01)
    # CPU per tx sums the members: (2 + 3 + 4) s / 1000 tx
    assert results["cpu_us_per_tx"] == pytest.approx(9000.0)
    assert results["max_node_bytes_per_tx"] == pytest.approx(3.5)  # (3000 + 500) / 1000
    assert "| etcd-raft | 3 | 4 | 512 | 100 |" in table.table([results])
    out = tmp_path / "results" / "etcd.json"
    common.write_json(results, out)
    assert out.read_text().startswith("{") and not out.with_name("etcd.json.tmp").exists()


def _info(size: int, ledger_root: str, state_root: str) -> dict:
    return {"timestamp": 1, "Node_info": {
        "Metrics": {"transaction-count": {"ledger": size}},
        "Committed_ledger_root_hashes": {"1": ledger_root},
        "Committed_state_root_hashes": {"1": state_root},
    }}


def test_plenum_safety_from_validator_info() -> None:
    names = ["Node1", "Node2", "Node3", "Node4"]
    agree = {i: _info(42, "L", "S") for i in range(4)}
    verdict = judge(agree, names)
    assert verdict.holds and verdict.converged and verdict.compared_seqs == 42
    behind = {**agree, 3: _info(41, "L0", "S0")}
    assert not judge(behind, names).converged and not judge(behind, names).holds
    forked = {**agree, 2: _info(42, "X", "S")}
    verdict = judge(forked, names)
    assert verdict.converged and verdict.state_roots_equal and not verdict.logs_consistent
    assert not judge({**agree, 1: None}, names).converged


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("etcd") is None or shutil.which("etcdctl") is None
                    or shutil.which("ss") is None,
                    reason="etcd-server/etcd-client not installed (make peers installs them)")
def test_etcd_baseline_runs_end_to_end(tmp_path: Path) -> None:
    from bench.peers import etcd_bench

    out = tmp_path / "etcd.json"
    status = etcd_bench.main(["--clients", "4", "--client-procs", "1", "--warmup", "0.5",
                              "--duration", "1.5", "--base-port", "24790", "--json", str(out),
                              "--dir", str(tmp_path / "run")])
    assert status == 0
    import json

    results = json.loads(out.read_text())
    assert results["protocol"] == "etcd-raft" and results["committed_tx"] > 0
    assert results["safety"]["state_roots_equal"] and results["safety"]["converged"]
    assert all(n["cpu_s"] is not None and n["bytes_sent"] > 0 for n in results["per_node"])
