"""Verdict rules fixed after the review of issue 5: one node behind all CPU figures,
egress-only link rule, no guessing without per-phase bytes, and no phase named for a run
where nothing saturated."""

from __future__ import annotations

import pytest

from phalanx.bench.verdict import NodeCosts, verdict


def _node(i: int, cpu: float, phase_cpu: dict[str, float], *, sent: int = 1000,
          recv: int = 1000, phase_bytes: dict[str, int] | None = None,
          cap: float | None = None, busy: float | None = None) -> NodeCosts:
    return NodeCosts(id=i, cpu_s=cpu, bytes_sent=sent, bytes_recv=recv,
                     phase_cpu_s=phase_cpu, phase_bytes=phase_bytes or {},
                     bandwidth_bps=cap, busy_s=busy)


def test_phases_and_evidence_describe_the_node_the_cpu_rule_judged():
    # Node 1 uses the most CPU (40% of a core); node 0 is starved: 20% of a core but busy
    # 80% of the window, so the rule judges node 0 — and every figure must be node 0's.
    starved = _node(0, 2.0, {"data": 1.5, "consensus": 0.4, "execution": 0.1}, busy=8.0)
    heavy = _node(1, 4.0, {"data": 0.5, "consensus": 3.0, "execution": 0.5}, busy=4.5)
    out = verdict([starved, heavy], committed=10_000, duration_s=10.0)
    assert (out["verdict"], out["resource"], out["busiest_node"]) == ("data", "cpu", 0)
    assert out["evidence"]["busiest_cpu_node"] == 0
    assert out["evidence"]["cpu_us_per_tx"] == pytest.approx(200.0)
    assert out["data"]["cpu_us_per_tx"] == pytest.approx(150.0)
    assert out["data"]["cpu_share"] == pytest.approx(0.75)


def test_only_egress_counts_against_the_cap():
    # A node that received 1.2 MB at a 1 Mbit/s cap but sent little is not saturated:
    # only sending is paced.
    node = _node(0, 0.1, {"data": 0.05, "consensus": 0.05}, sent=100_000, recv=1_200_000,
                 phase_bytes={"data": 1_200_000, "consensus": 100_000}, cap=1e6)
    out = verdict([node], committed=1_000, duration_s=10.0)
    assert out["resource"] != "network"
    assert out["evidence"]["link_utilisation"] == pytest.approx(0.08)
    assert out["evidence"]["egress_mbit_per_s"] == pytest.approx(0.08)


def test_a_full_link_without_per_phase_bytes_is_undetermined_not_data():
    node = _node(0, 0.1, {}, sent=1_200_000, recv=0, cap=1e6)
    out = verdict([node], committed=1_000, duration_s=10.0)
    assert (out["verdict"], out["resource"]) == ("undetermined", "network")
    assert "no per-phase bytes" in out["reason"]


def test_nothing_saturated_names_no_phase():
    # 3% of a core, busy 4%: latency-bound. Consensus is not assumed.
    nodes = [_node(i, 0.3, {"data": 0.25, "consensus": 0.05}, busy=0.4) for i in range(4)]
    out = verdict(nodes, committed=10_000, duration_s=10.0, host_cpu_busy=0.99)
    assert (out["verdict"], out["resource"]) == ("none", "latency")


def test_every_message_of_every_protocol_has_a_phase():
    from phalanx.host import CERT_TIMER
    from phalanx.measure.accounting import PHASES
    from phalanx.protocols.registry import available, protocol

    for name in available():
        table = protocol(name).phases
        missing = {m.__name__ for m in protocol(name).messages} - set(table)
        assert not missing, f"{name}: no phase for {sorted(missing)}"
        assert set(table.values()) <= set(PHASES)
    assert protocol("pbft").phases["timer:" + CERT_TIMER] == "execution"


def test_a_sweep_stopped_by_an_unexpected_error_still_writes_its_report(tmp_path,
                                                                       monkeypatch):
    import phalanx.bench.run as bench_run
    from phalanx.bench.sweep import run_sweep
    from phalanx.cli import build_parser

    def boom(*_args, **_kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(bench_run, "measure", boom)
    args = build_parser().parse_args(
        ["bench", "sweep", "--clients", "1,8", "--out", str(tmp_path)])
    with pytest.raises(RuntimeError, match="disk full"):
        run_sweep(args)
    assert (tmp_path / "sweep.csv").exists() and (tmp_path / "report.html").exists()
