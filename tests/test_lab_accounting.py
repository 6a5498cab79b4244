"""The lab's accounting and bottleneck verdict, on synthetic inputs; WAN shaping."""

from __future__ import annotations

import pytest

from phalanx.bench.results import NodeWindow
from phalanx.bench.verdict import NodeCosts, verdict
from phalanx.measure.accounting import (
    Accounting,
    TimedStateMachine,
    delta,
    phase_split,
)
from phalanx.protocols.registry import protocol
from phalanx.runtime.metrics import Metrics
from phalanx.runtime.wan import WanPlan, parse_bandwidth
from phalanx.statemachine.burn import BurningKV
from phalanx.statemachine.kv import KVStore, encode_put

AZURE = "../shared/data/latency_azure_microsoft_published/rtt_matrix_ms.csv"


class PrePrepare:  # stand-ins named like PBFT's message types
    pass


class Prepare:
    pass


def _accounting() -> Accounting:
    acct = Accounting(protocol("pbft").phases)
    acct.received(PrePrepare, 10_000)
    acct.received(Prepare, 50)
    acct.received(Prepare, 50)
    acct.sent_msg(Prepare, 3, 150)
    acct.handled(PrePrepare, 4_000_000)
    acct.handled(Prepare, 1_000_000)
    acct.handled("timer:pbft.batch", 500_000)
    acct.sending(Prepare, 500_000)
    acct.executed(100, 2_000_000)
    acct.io_ns = 1_000_000
    return acct


def test_phase_split_charges_handlers_by_type_and_shares_io_by_traffic():
    split = phase_split(_accounting().snapshot(), cpu_s=0.1)
    cpu = split["cpu_s"]
    # io (1 ms) is shared by message units: data has 1 msg + 10_000/1500 packets, consensus 5
    # msgs + 250/1500: data gets 7.67 / 12.83 of it.
    data_units, consensus_units = 1 + 10_000 / 1500, 5 + 250 / 1500
    io_data = 1e-3 * data_units / (data_units + consensus_units)
    assert cpu["data"] == pytest.approx(4e-3 + 0.5e-3 + io_data)
    assert cpu["consensus"] == pytest.approx(1e-3 + 0.5e-3 + 1e-3 - io_data)
    assert cpu["execution"] == pytest.approx(2e-3)
    assert split["bytes"] == {"data": 10_000, "consensus": 250, "execution": 0}
    assert split["msgs"] == {"data": 1, "consensus": 5, "execution": 0}
    assert split["other_cpu_s"] == pytest.approx(0.1 - sum(cpu.values()))


def test_wall_clock_inflation_is_scaled_down_to_the_process_cpu():
    split = phase_split(_accounting().snapshot(), cpu_s=0.005)  # accounted 9 ms > 5 ms
    assert sum(split["cpu_s"].values()) == pytest.approx(0.005)
    assert split["wall_inflation"] == pytest.approx(1.8)
    assert split["other_cpu_s"] is None  # unknown once the wall clock overshot the CPU


def test_delta_of_two_snapshots_counts_only_the_window():
    acct = _accounting()
    before = acct.snapshot()
    acct.received(Prepare, 50)
    acct.handled(Prepare, 7)
    acct.executed(1, 9)
    d = delta(before, acct.snapshot())
    assert d["recv"]["Prepare"] == [1, 50]
    assert d["recv"]["PrePrepare"] == [0, 0]
    assert d["handler_ns"]["Prepare"] == 7
    assert (d["exec_ns"], d["exec_ops"]) == (9, 1)


def test_accounting_is_exported_as_prometheus_counters():
    metrics = Metrics(replica=2)
    _accounting().export(metrics)
    text = metrics.render_prometheus()
    assert 'phalanx_bytes_recv_by_type{replica="2",type="PrePrepare"} 10000' in text
    assert 'phalanx_msgs_recv_by_type{replica="2",type="Prepare"} 2' in text
    assert 'phalanx_phase_cpu_seconds{replica="2",type="execution"} 0.002' in text
    assert "# TYPE phalanx_phase_cpu_seconds counter" in text


def test_timed_state_machine_charges_apply_to_execution_and_keeps_results():
    acct = Accounting()
    plain, timed = KVStore(), TimedStateMachine(BurningKV(200), acct)
    ops = [encode_put(b"k%d" % i, b"v") for i in range(10)]
    assert timed.apply(ops) == plain.apply(ops)
    assert timed.state_root() == plain.state_root()
    assert acct.exec_ops == 10
    assert acct.exec_ns >= 10 * 200_000  # the burn is CPU time, so at least that much wall


# -- the verdict -------------------------------------------------------------------------------


def _node(i: int, cpu_s: float, phases: dict[str, float], sent: int = 1000, recv: int = 1000,
          phase_bytes: dict[str, int] | None = None, cap: float | None = None) -> NodeCosts:
    return NodeCosts(i, cpu_s, sent, recv, phases,
                     phase_bytes or {"data": sent + recv, "consensus": 0, "execution": 0}, cap)


def test_a_run_bound_by_a_bandwidth_cap_is_called_data():
    # 10 s at a 1 Mbit/s cap; the primary sent 1.2 MB (0.96 of its link), mostly payloads.
    primary = _node(0, 0.5, {"data": 0.3, "consensus": 0.1, "execution": 0.01},
                    sent=1_200_000, recv=100_000,
                    phase_bytes={"data": 1_250_000, "consensus": 50_000, "execution": 0},
                    cap=1e6)
    backups = [_node(i, 0.2, {"data": 0.05, "consensus": 0.1, "execution": 0.01},
                     sent=50_000, recv=400_000, cap=1e6) for i in (1, 2, 3)]
    out = verdict([primary, *backups], committed=2_000, duration_s=10.0, host_cpu_busy=0.2)
    assert (out["verdict"], out["resource"], out["busiest_node"]) == ("data", "network", 0)
    assert out["evidence"]["link_utilisation"] == pytest.approx(0.96)
    assert out["evidence"]["bytes_per_tx"] == pytest.approx(650.0)


def test_a_link_saturated_by_votes_is_called_consensus():
    node = _node(0, 0.5, {"data": 0.1, "consensus": 0.3, "execution": 0.0}, sent=1_000_000,
                 recv=1_000_000, phase_bytes={"data": 100_000, "consensus": 1_900_000,
                                              "execution": 0}, cap=1e6)
    assert verdict([node], 100, 10.0)["verdict"] == "consensus"


def test_a_run_bound_by_a_slow_state_machine_is_called_execution():
    nodes = [_node(i, 9.0, {"data": 1.0, "consensus": 1.5, "execution": 6.0}) for i in range(4)]
    out = verdict(nodes, committed=10_000, duration_s=10.0)
    assert (out["verdict"], out["resource"]) == ("execution", "cpu")
    assert out["execution"]["cpu_us_per_tx"] == pytest.approx(600.0)
    assert out["execution"]["cpu_share"] == pytest.approx(6.0 / 8.5, abs=1e-4)
    assert out["evidence"]["cpu_us_per_tx"] == pytest.approx(900.0)


def test_a_replica_starved_by_other_tenants_is_cpu_bound_by_its_wall_clock_busy_time():
    # 30% of a core of CPU, but busy (running or preempted mid-work) 80% of the window.
    starved = NodeCosts(0, 3.0, 1000, 1000, {"data": 2.0, "consensus": 0.8, "execution": 0.1},
                        {}, None, busy_s=8.0)
    other = NodeCosts(1, 2.0, 1000, 1000, {"data": 0.5, "consensus": 1.2, "execution": 0.1},
                      {}, None, busy_s=3.0)
    out = verdict([starved, other], committed=10_000, duration_s=10.0, host_cpu_busy=0.99)
    assert (out["verdict"], out["resource"], out["busiest_node"]) == ("data", "cpu", 0)
    assert out["evidence"]["busiest_busy_share"] == pytest.approx(0.8)
    # The host is busy, but the replicas idle most of the window (waiting on the
    # network): nothing of theirs is saturated, whoever else keeps the CPUs busy.
    idle = [NodeCosts(i, 0.3, 1000, 1000, {"data": 0.2, "consensus": 0.1}, {}, None,
                      busy_s=0.4) for i in range(4)]
    out = verdict(idle, committed=10_000, duration_s=10.0, host_cpu_busy=0.99)
    assert (out["verdict"], out["resource"]) == ("none", "latency")


def test_nothing_committed_is_undetermined():
    assert verdict([_node(0, 1.0, {"data": 1.0})], 0, 10.0)["verdict"] == "undetermined"


def test_node_window_feeds_the_verdict_from_status_snapshots():
    acct = _accounting()
    start = {"cpu_s": 1.0, "bytes_sent": 0, "bytes_recv": 0, "msgs_sent": 0,
             "accounting": Accounting(protocol("pbft").phases).snapshot()}
    end = {"cpu_s": 1.1, "bytes_sent": 500, "bytes_recv": 10_100, "msgs_sent": 3,
           "accounting": acct.snapshot()}
    window = node_window_from(start, end)
    assert window.costs().phase_bytes["data"] == 10_000
    assert window.to_json()["phases"]["execution"]["cpu_s"] == pytest.approx(0.002)


def node_window_from(start: dict, end: dict) -> NodeWindow:
    from phalanx.bench.results import node_window

    return node_window(0, start, end)


# -- WAN emulation -----------------------------------------------------------------------------


def test_parse_bandwidth_units():
    assert parse_bandwidth("1Gbit") == 1e9
    assert parse_bandwidth("100Mbit") == 1e8
    assert parse_bandwidth("500kbit") == 5e5
    assert parse_bandwidth("10MB/s") == 8e7
    with pytest.raises(ValueError):
        parse_bandwidth("fast")


def test_wan_plan_places_replicas_then_load_generators_round_robin():
    regions = ["East US", "West Europe", "Southeast Asia", "Australia East"]
    plan = WanPlan.build(AZURE, ",".join(regions), 4, "100Mbit")
    assert [plan.replica_region(i) for i in range(4)] == regions
    assert plan.loadgen_region(0) == "East US" and plan.loadgen_region(1) == "West Europe"
    shaper = plan.replica_shaper(0)
    assert shaper.out_delays[0] == pytest.approx(plan.one_way_s("East US", "East US"))
    assert shaper.out_delays[1] == pytest.approx(plan.one_way_s("East US", "West Europe"))
    assert shaper.bandwidth_bps == 1e8
    with pytest.raises(ValueError, match="not in"):
        WanPlan.build(AZURE, "East US,Atlantis", 2)


# The shaper's timing is tested on a fake millisecond clock in tests/test_lab_wan.py.
