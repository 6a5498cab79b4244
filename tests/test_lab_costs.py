"""How the costed simulator charges CPU and links (review of issue 5): a broadcast is
encoded once, link utilisation cannot pass 1, and the accounting's busy time is occupied
simulated time, as the real accounting's wall time is."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from test_lab_sim import _model as _sim_model
from test_lab_sim import _spec

from phalanx.bench.calibrate import modeled_cpu_s
from phalanx.bench.simbench import run_scale
from phalanx.protocols.pbft.messages import Prepare
from phalanx.sim.costmodel import CostModel
from phalanx.sim.resources import Resources


@dataclass
class _Sim:
    """What :class:`Resources` reads from a simulation: the clock (and pushes)."""

    now: float = 0.0
    pushed: list[tuple[Any, ...]] = field(default_factory=list)

    def _push(self, *event: Any) -> None:
        self.pushed.append(event)


def _model() -> CostModel:
    return CostModel(protocol="pbft", encode={"Prepare": (10_000.0, 0.0)},
                     transport_send=(2_000.0, 0.0), runtime_per_msg_ns=1_000.0,
                     timer_ns=5_000.0)


def _prepare() -> Prepare:
    return Prepare(0, 0, 1, b"d" * 32)


def test_a_broadcast_is_encoded_once_and_each_copy_pays_the_transport():
    res = Resources(_model(), 4)
    sim = _Sim()
    msg = _prepare()
    res.step(sim, 0, [])  # a timer step: 5 us
    for dst in (1, 2, 3):
        res.depart(sim, 0, dst, 100, msg)
    assert res.cpu_ns[0] == pytest.approx(5_000 + 10_000 + 3 * (2_000 + 1_000))
    snap = res.accounting[0].snapshot()
    assert snap["sent"]["Prepare"] == [3, 300] and snap["encoded"]["Prepare"] == 1
    assert snap["send_ns"]["Prepare"] == 10_000
    # The next step encodes its own messages again.
    res.step(sim, 0, [])
    res.depart(sim, 0, 1, 100, msg)
    assert res.accounting[0].snapshot()["encoded"]["Prepare"] == 2


def test_calibration_models_one_encoding_per_broadcast():
    model = _model()
    acct = {"recv": {}, "sent": {"Prepare": [30, 3_000]}, "encoded": {"Prepare": 10},
            "exec_ops": 0}
    seconds, msgs = modeled_cpu_s(model, acct)
    assert msgs == 30
    assert seconds == pytest.approx((10 * 10_000 + 30 * 2_000) / 1e9)
    # Without the count (an older bench JSON): every copy was an encoding.
    del acct["encoded"]
    assert modeled_cpu_s(model, acct)[0] == pytest.approx(30 * 12_000 / 1e9)


def test_bytes_count_as_sent_once_they_left_the_capped_link():
    res = Resources(_model(), 4, bandwidth_bps=8e5)  # 100 kB/s: 1000 bytes per 10 ms
    sim = _Sim()
    msg = _prepare()
    res.step(sim, 0, [])
    leaves = [res.depart(sim, 0, 1, 1_000, msg) for _ in range(10)]
    assert leaves[-1] - leaves[0] == pytest.approx(0.09)
    sim.now = leaves[4] + 1e-9  # five left, five wait
    snap = res.snapshot(sim.now)[0]
    assert snap["accounting"]["sent"]["Prepare"] == [5, 5_000]
    assert snap["egress_backlog_bytes"] == 5_000
    assert snap["egress_delay_s"] == pytest.approx(leaves[-1] - sim.now)
    assert res.accounting[0].snapshot()["sent"]["Prepare"] == [10, 10_000]  # untouched
    # Half of the sixth is out: its bytes count, the message not yet.
    snap = res.snapshot(leaves[4] + 0.005)[0]
    assert snap["accounting"]["sent"]["Prepare"] == [5, 5_500]
    assert snap["egress_backlog_bytes"] == 4_500


def test_an_overloaded_simulated_link_is_never_more_than_fully_used():
    results = run_scale(_spec(bandwidth_bps=2e6, clients=16), _sim_model())  # was 1.045
    neck = results["bottleneck"]
    assert neck["verdict"] == "data"
    assert 0.9 <= neck["evidence"]["link_utilisation"] <= 1.0
    assert max(results["sim"]["egress_backlog_bytes"].values()) > 0


def _handle_prepare(res: Resources, sim: _Sim, endpoint: int) -> None:
    res.receiving(endpoint, _prepare(), b"x" * 100)
    res.step(sim, endpoint, [])


def test_a_partial_core_share_stretches_accounted_time_not_cpu():
    model = _model()
    model.handler = {"Prepare": (30_000.0, 0.0)}
    model.transport_recv = (4_000.0, 0.0)
    res = Resources(model, 4, cpu_share=0.5)
    sim = _Sim()
    _handle_prepare(res, sim, 1)
    res.depart(sim, 1, 2, 100, _prepare())
    work = 30_000 + 4_000 + 1_000 + 10_000 + 2_000 + 1_000  # handler, recv, encode, send
    assert res.cpu_ns[1] == pytest.approx(work)
    snap = res.accounting[1].snapshot()
    assert snap["handler_ns"]["Prepare"] == 60_000
    assert snap["io_ns"] == 2 * (4_000 + 1_000) + 2 * (2_000 + 1_000)
    assert snap["send_ns"]["Prepare"] == 20_000
    assert res.cpu_free[1] == pytest.approx(2 * work / 1e9)


def test_waiting_for_a_shared_core_is_accounted_as_busy_time():
    model = _model()
    model.handler = {"Prepare": (30_000.0, 0.0)}
    model.transport_recv = (0.0, 0.0)
    model.runtime_per_msg_ns = 0.0
    res = Resources(model, 4, host_cores=1)
    sim = _Sim()
    _handle_prepare(res, sim, 1)  # takes the only core for 30 us
    _handle_prepare(res, sim, 2)  # waits 30 us for it, then works 30 us
    assert res.cpu_ns[2] == pytest.approx(30_000)
    assert res.accounting[1].snapshot()["handler_ns"]["Prepare"] == 30_000
    assert res.accounting[2].snapshot()["handler_ns"]["Prepare"] == pytest.approx(60_000, abs=1)
