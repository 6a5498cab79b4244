"""``phalanx bench``: the results math on synthetic inputs, and one short real run."""

from __future__ import annotations

import json
import math
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from phalanx.bench.results import (
    BOTTLENECK_KEYS,
    ENVIRONMENT_KEYS,
    LATENCY_KEYS,
    NODE_KEYS,
    RESULT_KEYS,
    SAFETY_KEYS,
    LatencyHistogram,
    LoadgenReport,
    NodeWindow,
    RunSpec,
    Safety,
    build_results,
    cpu_us_per_tx,
    host_cpu_busy,
    logs_agree,
    longest_stall_s,
    max_node_bytes_per_tx,
    node_window,
    percentile,
    state_roots_agree,
    timeline_split,
    to_json,
)
from phalanx.bench.run import split_clients

# -- percentiles -------------------------------------------------------------------------------


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(100, 0, -1)]  # 1..100, unsorted
    assert percentile(values, 50) == 50
    assert percentile(values, 90) == 90
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([7.0], 1) == 7.0
    assert percentile([1.0, 2.0, 3.0], 50) == 2.0


def test_percentile_rejects_no_values_and_bad_ranks():
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 0)


def test_histogram_percentiles_are_within_its_resolution_of_the_exact_ones():
    rng = random.Random(7)
    samples = [rng.lognormvariate(math.log(5_000), 0.8) for _ in range(20_000)]
    hist = LatencyHistogram()
    for s in samples:
        hist.record_us(s)
    for q in (50, 90, 99, 99.9):
        exact = percentile(samples, q)
        assert hist.percentile_us(q) == pytest.approx(exact, rel=LatencyHistogram.RESOLUTION)
    assert hist.percentile_us(100) == max(samples)
    assert hist.count == len(samples)


def test_merged_histograms_equal_one_histogram_of_all_samples():
    rng = random.Random(3)
    a, b, whole = LatencyHistogram(), LatencyHistogram(), LatencyHistogram()
    for i in range(5_000):
        value = rng.uniform(100, 50_000)
        (a if i % 3 else b).record_us(value)
        whole.record_us(value)
    a.merge(b)
    assert a.buckets == whole.buckets
    assert a.count == whole.count
    assert (a.min_us, a.max_us) == (whole.min_us, whole.max_us)


def test_histogram_survives_a_json_round_trip():
    hist = LatencyHistogram()
    for v in (120.0, 3_400.0, 3_500.0, 80_000.0):
        hist.record_us(v)
    again = LatencyHistogram.from_json(json.loads(json.dumps(hist.to_json())))
    assert again.buckets == hist.buckets
    assert again.percentile_us(50) == hist.percentile_us(50)
    assert LatencyHistogram().percentile_us(50) is None


# -- per-node deltas and per-transaction costs ---------------------------------------------------


def _status(cpu: float, sent: int, recv: int, msgs: int, seq: int, peak: int = 50 << 20) -> dict:
    return {
        "cpu_s": cpu, "bytes_sent": sent, "bytes_recv": recv, "msgs_sent": msgs,
        "executed_seq": seq, "peak_rss_bytes": peak, "rss_bytes": peak - 1,
        "state_root": "ab" * 32,
    }


def test_node_window_is_the_difference_of_two_statuses_with_absolute_memory():
    node = node_window(
        2, _status(10.0, 1_000, 2_000, 30, 100), _status(12.5, 5_000, 9_000, 90, 400, peak=7)
    )
    assert node.id == 2
    assert node.cpu_s == pytest.approx(2.5)
    assert (node.bytes_sent, node.bytes_recv, node.msgs_sent) == (4_000, 7_000, 60)
    assert node.executed == 300
    assert node.peak_rss_bytes == 7
    assert node.bytes_total == 11_000


def test_node_window_without_an_end_status_reports_unknown_not_zero():
    node = node_window(0, _status(1.0, 1, 1, 1, 1), None, killed=True)
    assert node.killed
    assert node.cpu_s is None and node.bytes_sent is None


def test_cpu_per_tx_sums_replicas_and_bytes_per_tx_takes_the_busiest():
    nodes = [
        NodeWindow(0, 1.5, 3_000_000, 1_000_000, 10, 1),
        NodeWindow(1, 0.5, 500_000, 1_500_000, 10, 1),
    ]
    assert cpu_us_per_tx(nodes, 1_000) == pytest.approx(2_000.0)
    assert max_node_bytes_per_tx(nodes, 1_000) == pytest.approx(4_000.0)
    assert cpu_us_per_tx(nodes, 0) is None
    assert max_node_bytes_per_tx(nodes, 0) is None
    unknown = [*nodes, NodeWindow(2, None, None, None, None, None)]
    assert cpu_us_per_tx(unknown, 1_000) is None  # a partial sum would understate the cost


# -- safety checks -------------------------------------------------------------------------------


def test_state_roots_agree_only_at_one_executed_seq():
    same = {i: _status(0, 0, 0, 0, 50) for i in range(3)}
    assert state_roots_agree(same) == (True, True)
    forked = {**same, 2: {**same[2], "state_root": "cd" * 32}}
    assert state_roots_agree(forked) == (True, False)
    lagging = {**same, 2: _status(0, 0, 0, 0, 49)}
    assert state_roots_agree(lagging) == (False, False)


def test_ledger_replicas_with_one_state_root_but_different_block_hashes_disagree():
    # Equal accounts reached through different histories: the head block tells.
    ledger = {i: {**_status(0, 0, 0, 0, 50), "height": 9, "block_hash": "01" * 32}
              for i in range(3)}
    assert state_roots_agree(ledger) == (True, True)
    forked = {**ledger, 1: {**ledger[1], "block_hash": "02" * 32}}
    assert state_roots_agree(forked) == (True, False)


def test_logs_agree_compares_every_seq_held_by_two_replicas():
    logs = {0: {"1": "aa", "2": "bb", "3": "cc"}, 1: {"2": "bb", "3": "cc"}, 2: {"3": "cc"}}
    assert logs_agree(logs) == (True, 2)  # seq 1 is on one replica only
    logs[2]["3"] = "dd"
    assert logs_agree(logs)[0] is False


# -- the results object --------------------------------------------------------------------------


def _report(committed: int, latencies_us: list[float], timeline: list[int]) -> LoadgenReport:
    hist = LatencyHistogram()
    for v in latencies_us:
        hist.record_us(v)
    return LoadgenReport(
        clients=2, committed=committed, histogram=hist, timeline=timeline, bin_s=0.5,
        completed_total=committed + 5, window_cpu_s=0.4, total_cpu_s=1.0,
    )


def _results(fault: dict | None = None) -> dict:
    spec = RunSpec(protocol="pbft", n=4, f=1, clients=4, payload_bytes=512, duration_s=2.0,
                   warmup_s=1.0, client_procs=2)
    reports = [
        _report(3, [1_000.0, 2_000.0, 3_000.0], [1, 2, 0, 0]),
        _report(1, [4_000.0], [0, 0, 0, 1]),
    ]
    nodes = [NodeWindow(i, 0.01 * (i + 1), 800, 400, 5, 1 << 20) for i in range(4)]
    safety = Safety(True, True, True, {i: 9 for i in range(4)}, 9)
    env = {"python": "3.11", "platform": "x", "cpu_count": 2, "uvloop": "0.23.0",
           "loadgen_cpu_s": 2.0, "commit": None, "date": "2026-01-01T00:00:00+00:00"}
    return build_results(spec, reports, nodes, safety, env, fault)


def test_results_object_has_every_key_design_md_lists():
    results = json.loads(to_json(_results()))
    assert set(RESULT_KEYS) <= set(results)
    assert set(LATENCY_KEYS) <= set(results["latency_ms"])
    assert set(BOTTLENECK_KEYS) <= set(results["bottleneck"])
    assert set(SAFETY_KEYS) <= set(results["safety"])
    assert set(ENVIRONMENT_KEYS) <= set(results["environment"])
    for node in results["per_node"]:
        assert set(NODE_KEYS) <= set(node)


def test_results_figures_follow_from_the_inputs():
    results = _results()
    assert results["committed_tx"] == 4
    assert results["throughput_tps"] == 2.0
    assert results["latency_ms"]["p50"] == pytest.approx(2.0, rel=0.01)
    assert results["latency_ms"]["p99"] == pytest.approx(4.0, rel=0.01)
    assert results["cpu_us_per_tx"] == pytest.approx((0.01 + 0.02 + 0.03 + 0.04) * 1e6 / 4)
    assert results["max_node_bytes_per_tx"] == 300.0
    assert results["client_cpu_s"] == pytest.approx(0.8)
    assert results["timeline"]["committed"] == [1, 2, 0, 1]
    assert results["longest_stall_s"] == 0.5
    # Nothing saturated (2% of a core at most, no link cap): latency-bound, no phase named.
    assert (results["bottleneck"]["verdict"], results["bottleneck"]["resource"]) == (
        "none", "latency")
    assert results["bottleneck"]["evidence"]["busiest_cpu_node"] == 3


def test_a_kill_splits_committed_into_before_and_after():
    fault = _results({"replica": 0, "at_s": 1.0})["fault"]
    assert (fault["committed_before"], fault["committed_after"]) == (3, 1)
    assert fault["throughput_before_tps"] == 3.0


def test_warnings_name_a_saturated_or_shared_host():
    spec = RunSpec(protocol="pbft", n=4, f=1, clients=4, payload_bytes=512, duration_s=10.0)
    nodes = [NodeWindow(i, 4.0, 1, 1, 1, 1) for i in range(4)]  # 16 of 20 core-seconds
    env = {"cpu_count": 2, "host_cpu_busy": 0.99}
    results = build_results(spec, [_report(10, [1_000.0], [10])], nodes, Safety(True, True),
                            env)
    assert any("99% busy" in w for w in results["warnings"])
    assert any("other processes" in w for w in results["warnings"])
    quiet = build_results(spec, [_report(10, [1_000.0], [10])], nodes[:1], Safety(True, True),
                          {"cpu_count": 2, "host_cpu_busy": 0.25})
    assert quiet["warnings"] == []


def test_host_cpu_busy_is_the_busy_share_of_all_ticks():
    assert host_cpu_busy((100, 1_000), (175, 1_100)) == pytest.approx(0.75)
    assert host_cpu_busy(None, (1, 2)) is None
    assert host_cpu_busy((5, 10), (5, 10)) is None


def test_timeline_helpers():
    assert timeline_split([1, 2, 3, 4], 0.1, 0.2) == (3, 7)
    assert timeline_split([1, 2], 0.1, 5.0) == (3, 0)
    assert longest_stall_s([1, 0, 0, 2, 0], 0.1) == pytest.approx(0.2)


def test_clients_are_split_evenly_among_load_generators():
    assert split_clients(64, 3) == [22, 21, 21]
    assert split_clients(2, 4) == [1, 1]
    assert sum(split_clients(7, 2)) == 7


# -- one short real run --------------------------------------------------------------------------


def _free_port_range(count: int) -> int:
    """A base port such that ``count`` consecutive loopback ports bind right now (below
    the usual ephemeral range, so outgoing connections do not take them meanwhile)."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20_000, 32_000 - count)
        socks = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range")


@pytest.mark.integration
@pytest.mark.timeout(90)
def test_short_bench_run_commits_and_reports_safety(tmp_path: Path):
    out = tmp_path / "out.json"
    n = 4
    proc = subprocess.run(
        [sys.executable, "-m", "phalanx.cli", "bench", "--n", str(n), "--clients", "4",
         "--duration", "3", "--warmup", "1", "--base-port", str(_free_port_range(2 * n)),
         "--dir", str(tmp_path / "work"), "--json", str(out)],
        capture_output=True, text=True, timeout=80,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads(out.read_text())
    assert set(RESULT_KEYS) <= set(results)
    assert set(LATENCY_KEYS) <= set(results["latency_ms"])
    assert set(ENVIRONMENT_KEYS) <= set(results["environment"])
    assert results["committed_tx"] > 0
    assert results["safety"]["state_roots_equal"] is True
    assert results["safety"]["logs_consistent"] is True
    assert len(results["per_node"]) == n
    for node in results["per_node"]:
        assert set(NODE_KEYS) <= set(node)
        assert node["cpu_s"] > 0 and node["bytes_sent"] > 0
