"""A second protocol, outside phalanx's package (tests/sequencer/: a crash-fault
sequencer), runs everywhere PBFT runs once its spec is registered: the simulator and its
checkers, the fuzzer (which finds the sequencer's planted bug), ``phalanx sim``, and a
real ``phalanx up`` cluster — the walk-through of docs/architecture.md, proven."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import sequencer
from pbft_harness import put_op

from phalanx.byzantine.fuzz import FuzzConfig, sweep
from phalanx.protocols import registry
from phalanx.protocols.registry import PLUGINS_ENV
from phalanx.sim.network import NetworkModel, UniformLatency
from phalanx.simrun import kv_simulation

TESTS = Path(__file__).parent


@pytest.fixture(autouse=True)
def registered(monkeypatch: pytest.MonkeyPatch):
    """The sequencer known here and in every process a test starts."""
    registry.register(sequencer.SPEC)
    monkeypatch.setenv(PLUGINS_ENV, "sequencer:SPEC")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        p for p in (str(TESTS), os.environ.get("PYTHONPATH", "")) if p))
    yield
    registry.unregister(sequencer.SPEC.name)


def test_the_sequencer_runs_in_the_simulator_under_its_checkers_through_a_leader_crash():
    network = NetworkModel(latency=UniformLatency(0.001, 0.005), drop=0.02)
    options = sequencer.SPEC.options.from_table({"timeout_ms": 300})
    sim = kv_simulation("sequencer", 3, 7, network, options, 0.3)  # its checkers by default
    sim.add_clients(3, put_op, requests_per_client=30)
    sim.crash(0, at=0.2)  # the leader of view 0
    sim.restart(0, at=2.0)
    sim.run(until=60.0, stop_when=sim.all_clients_done)
    assert sim.all_clients_done(), sim.liveness_report()
    sim.run(until=sim.now + 5.0)
    assert {sim.replica(r).view for r in range(3)} != {0}
    states = {(sim.replica(r).last_executed, sim.replica(r).state_digest()) for r in range(3)}
    assert len(states) == 1


def test_the_fuzzer_runs_the_sequencer_and_finds_its_planted_bug():
    config = FuzzConfig(protocol="sequencer", n=(3, 4, 5), byzantine=0)
    summary = sweep(config, range(40))
    assert summary.violations == 0, summary.failing
    buggy = FuzzConfig(protocol="sequencer", n=(3, 4, 5), byzantine=0,
                       planted_bug="commit_alone")
    assert sweep(buggy, range(40), stop_at_first=True).violations == 1  # seed 11 when written


def _phalanx(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "phalanx.cli", *args], capture_output=True,
                          text=True, timeout=120)


def test_phalanx_sim_runs_the_sequencer_byte_for_byte():
    first = _phalanx("sim", "--protocol", "sequencer", "--n", "3", "--seed", "4")
    assert first.returncode == 0, first.stderr
    assert "protocol=sequencer n=3 f=1" in first.stdout
    assert first.stdout == _phalanx("sim", "--protocol", "sequencer", "--n", "3",
                                    "--seed", "4").stdout


@pytest.mark.integration
def test_a_real_sequencer_cluster_serves_clients_through_a_leader_crash(tmp_path: Path):
    from phalanx.cluster import LocalCluster
    from phalanx.runtime import run
    from phalanx.runtime.cluster_client import open_client
    from phalanx.statemachine.kv import decode_result, encode_get, encode_put

    async def put_then_get(cluster: LocalCluster, key: bytes, value: bytes) -> bytes | None:
        client = await open_client(cluster.config)
        try:
            await client.request(encode_put(key, value))
            return decode_result(await client.request(encode_get(key))).value
        finally:
            await client.close()

    with LocalCluster(tmp_path, 3, protocol="sequencer", options={"timeout_ms": 500}) as cluster:
        cluster.start()
        assert cluster.status(0)["protocol"] == "sequencer"
        assert run(put_then_get(cluster, b"k", b"one")) == b"one"
        cluster.kill(0)  # the leader
        assert run(put_then_get(cluster, b"k", b"two")) == b"two"
        cluster.restart(0)
        seq, _ = cluster.wait_converged(timeout=30.0)
        assert seq >= 4 and cluster.status(0)["view"] >= 1
