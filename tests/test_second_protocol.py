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
from sequencer.messages import WitnessAck, Witnessed

from phalanx.byzantine.fuzz import FuzzConfig, sweep
from phalanx.core.address import Address
from phalanx.core.effects import Dropped, Persist, Send
from phalanx.protocols import registry
from phalanx.protocols.registry import PLUGINS_ENV
from phalanx.sim.behaviour import Behaviour
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


def _witnesses(sim, n: int, k: int) -> dict[int, set[tuple[int, int, str]]]:
    """Per partition, the distinct (count, highest, digest) its n witnesses hold."""
    return {p: {tuple(sim.process(Address(r, "witness", p)).status().values())
                for r in range(n)} for p in range(k)}


def test_a_replica_of_several_processes_witnesses_its_log_over_internal_links():
    """Two witness processes per replica (the example of a multi-process replica): each
    front tells its own witness p what it executed at the positions of partition p;
    every replica's witness p ends up with the same digests, through a crash and
    restart of a whole replica and of one witness alone."""
    network = NetworkModel(latency=UniformLatency(0.001, 0.005), drop=0.02)
    options = sequencer.SPEC.options.from_table({"timeout_ms": 300, "witnesses": 2})
    sim = kv_simulation("sequencer", 3, 11, network, options, 0.3)
    assert sim.process_count == 9
    sim.add_clients(3, put_op, requests_per_client=30)
    sim.crash(1, at=0.3)  # replica 1: its front and both witnesses
    sim.restart(1, at=1.5)
    sim.crash(Address(2, "witness", 1), at=0.5)  # one witness alone: its front queues
    sim.restart(Address(2, "witness", 1), at=1.0)
    sim.run(until=60.0, stop_when=sim.all_clients_done)
    assert sim.all_clients_done(), sim.liveness_report()
    sim.run(until=sim.now + 5.0)
    executed = {sim.replica(r).last_executed for r in range(3)}
    assert len(executed) == 1
    held = _witnesses(sim, 3, 2)
    assert all(len(v) == 1 for v in held.values()), held
    (count0, _, _), = held[0]
    (count1, _, _), = held[1]
    assert count0 + count1 == executed.pop() > 0


def test_a_witness_takes_only_its_own_fronts_word_about_its_own_partition():
    options = sequencer.SPEC.options.from_table({"witnesses": 2})
    witness = sequencer.SPEC.make_process(Address(0, "witness", 1), None, None, options)
    good = Witnessed(3, b"d" * 32)
    assert witness.on_message(Address(1), good) == [Dropped("unknown_sender", 1)]
    assert witness.on_message(Address(0, "witness", 0), good) == [
        Dropped("unknown_sender", 0)]
    assert witness.on_message(Address(0), Witnessed(4, b"d" * 32)) == [
        Dropped("wrong_partition", 0)]
    out = witness.on_message(Address(0), good)
    assert [type(e) for e in out] == [Persist, Send] and out[1].msg == WitnessAck(1)
    assert witness.on_message(Address(0), Witnessed(1, b"c" * 32))[1].msg == WitnessAck(5)
    # Sent again (a re-send, or the front executing its log again after a restart).
    assert witness.on_message(Address(0), good) == [Send(Address(0), WitnessAck(5))]
    assert witness.on_message(Address(0), Witnessed(3, b"e" * 32)) == [
        Dropped("equivocation", 0)]
    assert witness.on_client_message(b"c" * 32, good) == [Dropped("unexpected_message", -1)]


def test_a_byzantine_replica_cannot_write_to_another_replicas_witness_in_the_simulator():
    options = sequencer.SPEC.options.from_table({"witnesses": 2})
    sim = kv_simulation("sequencer", 3, 2, NetworkModel(), options, 0.3)
    sim.set_byzantine(2, Behaviour())
    sim.add_clients(1, put_op, requests_per_client=4)
    sim.run(until=5.0, stop_when=sim.all_clients_done)
    before = sim.process(Address(0, "witness", 1)).status()
    sim.inject(2, Address(0, "witness", 1), Witnessed(99, b"x" * 32))
    sim.run(until=sim.now + 1.0)
    assert sim.process(Address(0, "witness", 1)).status() == before
    assert sim.counters["dropped.unknown_sender"] == 1


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


@pytest.mark.integration
def test_a_real_cluster_of_multi_process_replicas_starts_serves_and_recovers(tmp_path: Path):
    """``phalanx up``'s LocalCluster runs every process the cluster file lists (3
    replicas of a front and 2 witnesses: 9 processes, 9 ports and data directories);
    the internal links carry the witnesses' positions through a witness's crash."""
    import time

    from phalanx.cluster import LocalCluster
    from phalanx.runtime import run
    from phalanx.runtime.cluster_client import open_client
    from phalanx.statemachine.kv import encode_put

    async def puts(cluster: LocalCluster, count: int) -> None:
        client = await open_client(cluster.config)
        try:
            for i in range(count):
                await client.request(encode_put(b"k%d" % i, b"v"))
        finally:
            await client.close()

    options = {"timeout_ms": 500, "witnesses": 2}
    with LocalCluster(tmp_path, 3, protocol="sequencer", options=options) as cluster:
        cluster.start()
        assert len(cluster.process_pids) == 9
        assert cluster.status(Address(1, "witness", 1))["process"] == "1/witness/1"
        run(puts(cluster, 6))
        cluster.kill(Address(0, "witness", 0))
        run(puts(cluster, 6))  # the replica keeps serving; its front queues and re-sends
        cluster.restart(Address(0, "witness", 0))
        seq, _ = cluster.wait_converged(timeout=30.0)
        deadline = time.monotonic() + 30.0
        while True:
            held = {p: {tuple(cluster.status(Address(r, "witness", p))[k]
                              for k in ("witnessed", "highest", "witness_digest"))
                        for r in range(3)} for p in range(2)}
            if all(len(v) == 1 for v in held.values()) and \
                    sum(next(iter(v))[0] for v in held.values()) == seq:
                break
            assert time.monotonic() < deadline, (seq, held)
            time.sleep(0.2)
        assert (tmp_path / "data" / "replica-0-witness-0").is_dir()
