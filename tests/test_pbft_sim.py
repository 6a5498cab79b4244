"""PBFT scenarios in the deterministic simulator. Every run is checked after every
event for agreement, exactly-once, validity and equal state roots (the sim's checkers);
the tests add liveness and end-state assertions."""

from __future__ import annotations

import pytest
from pbft_harness import FAST, assert_consistent, cluster, executed_requests, put_op

from phalanx.protocols.pbft.config import PbftConfig
from phalanx.protocols.pbft.instance import PbftInstance
from phalanx.protocols.pbft.replica import PbftReplica
from phalanx.safety import SafetyViolation
from phalanx.sim.simulator import Simulation


@pytest.mark.parametrize("multicast", [False, True])
def test_normal_case_commits_every_request_once_everywhere(multicast):
    sim = cluster(seed=1, multicast=multicast)
    sim.add_clients(4, put_op, requests_per_client=30)
    sim.run(until=30.0, stop_when=sim.all_clients_done)
    assert sim.all_clients_done(), sim.liveness_report()
    assert_consistent(sim)
    for r in range(4):
        reqs = executed_requests(sim, r)
        assert len(reqs) == 120 and len(set(reqs)) == 120


def test_f_crashed_backups_do_not_stop_progress():
    sim = cluster(seed=2, n=7)  # f = 2
    sim.crash(5, at=0.0)
    sim.crash(6, at=0.0)
    sim.add_clients(3, put_op, requests_per_client=20)
    sim.run(until=30.0, stop_when=sim.all_clients_done)
    assert sim.all_clients_done(), sim.liveness_report()
    assert_consistent(sim, replicas=[0, 1, 2, 3, 4])


@pytest.mark.parametrize("multicast", [False, True])
def test_crashed_primary_triggers_view_change_and_progress_continues(multicast):
    sim = cluster(seed=3, multicast=multicast)
    sim.add_clients(4, put_op, requests_per_client=40)
    sim.crash(0, at=0.05)
    sim.run(until=60.0, stop_when=sim.all_clients_done)
    assert sim.all_clients_done(), sim.liveness_report()
    assert all(sim.replica(r).view >= 1 for r in (1, 2, 3))
    assert_consistent(sim, replicas=[1, 2, 3])


def test_consecutive_view_changes_when_next_primary_is_also_down():
    sim = cluster(seed=4, n=7)  # f = 2: replicas 2..6 are a view-change quorum
    sim.crash(1, at=0.0)  # primary of view 1
    sim.add_clients(3, put_op, requests_per_client=20)
    sim.crash(0, at=0.05)  # primary of view 0
    sim.run(until=60.0, stop_when=sim.all_clients_done)
    assert sim.all_clients_done(), sim.liveness_report()
    assert all(sim.replica(r).view == 2 for r in range(2, 7))
    assert_consistent(sim, replicas=[2, 3, 4, 5, 6])


def test_more_than_f_crashes_stall_without_divergence_and_recover():
    sim = cluster(seed=4)
    sim.crash(1, at=0.0)
    sim.add_clients(2, put_op, requests_per_client=20)
    sim.crash(0, at=0.05)
    sim.run(until=30.0, stop_when=sim.all_clients_done)
    assert not sim.all_clients_done()  # two crashed > f: no progress is the right answer
    # The survivors wait in the view change instead of racing through views alone.
    assert all(sim.replica(r).view == 1 for r in (2, 3))
    sim.restart(1, at=sim.now)
    sim.run(until=sim.now + 30.0, stop_when=sim.all_clients_done)
    assert sim.all_clients_done(), sim.liveness_report()
    assert_consistent(sim, replicas=[1, 2, 3])


def test_lagging_replica_catches_up_by_state_transfer():
    sim = cluster(seed=5)
    sim.crash(3, at=0.0)
    sim.add_clients(4, put_op, requests_per_client=40)  # many checkpoints of 8 slots
    sim.run(until=30.0, stop_when=sim.all_clients_done)
    assert sim.all_clients_done()
    sim.restart(3, at=sim.now)
    sim.add_clients(1, put_op, requests_per_client=10)
    sim.run(until=sim.now + 30.0, stop_when=sim.all_clients_done)
    assert sim.all_clients_done(), sim.liveness_report()
    sim.run(until=sim.now + 5.0)
    replica = sim.replica(3)
    assert replica.last_executed == sim.replica(0).last_executed
    assert replica.state_digest() == sim.replica(0).state_digest()


@pytest.mark.parametrize("multicast", [False, True])
def test_loss_reorder_and_duplication(multicast):
    from phalanx.sim.network import NetworkModel, UniformLatency

    network = NetworkModel(
        latency=UniformLatency(0.001, 0.01), drop=0.05, duplicate=0.05, reorder=0.005
    )
    sim = cluster(seed=6, network=network, multicast=multicast)
    sim.add_clients(4, put_op, requests_per_client=30)
    sim.run(until=120.0, stop_when=sim.all_clients_done)
    assert sim.all_clients_done(), sim.liveness_report()
    assert_consistent(sim)


def test_restart_from_disk_recovers_state_and_rejoins():
    sim = cluster(seed=7)
    sim.add_clients(4, put_op, requests_per_client=25)
    sim.crash(2, at=0.2)
    sim.restart(2, at=0.4)
    sim.run(until=60.0, stop_when=sim.all_clients_done)
    assert sim.all_clients_done(), sim.liveness_report()
    assert_consistent(sim)


def test_restarted_replica_catches_up_with_a_busy_cluster():
    """Production sizes (K=256, window 512): the others keep ordering ~300 slots/s while
    the restarted replica fetches what it missed; it must reach them, not trail them by
    state transfers (catch-up asks for the next range as soon as one is in)."""
    # Without the fill wait: many small slots make the cluster run away fastest.
    sim = cluster(5, config=PbftConfig(fill_wait=0.0))
    sim.add_clients(16, put_op, 100_000)
    sim.crash(1, at=0.1)
    sim.restart(1, at=0.6)
    sim.run(until=4.0)
    frontier = min(sim.replica(r).last_executed for r in (0, 2, 3))
    assert frontier > 1200  # busy: two windows past where replica 1 stopped
    assert sim.replica(1).last_executed >= frontier - 32


def test_whole_cluster_restart_from_disk_keeps_committed_state():
    sim = cluster(seed=8)
    sim.add_clients(2, put_op, requests_per_client=20)
    sim.run(until=30.0, stop_when=sim.all_clients_done)
    assert sim.all_clients_done()
    sim.run(until=sim.now + 2.0)
    before = sim.replica(0).state_digest()
    for r in range(4):
        sim.crash(r, at=sim.now)
        sim.restart(r, at=sim.now + 0.5)
    sim.run(until=sim.now + 1.0)
    assert all(sim.replica(r).state_digest() == before for r in range(4))
    sim.add_clients(2, put_op, requests_per_client=10)
    sim.run(until=sim.now + 30.0, stop_when=sim.all_clients_done)
    assert sim.all_clients_done(), sim.liveness_report()
    assert_consistent(sim)


def test_equivocating_primary_is_replaced_and_nothing_diverges():
    from phalanx.protocols.pbft.messages import PrePrepare
    from phalanx.sim.behaviour import FilterOutgoing

    def equivocate(dest, msg):
        # Replicas 1 and 2 get the real batch, replica 3 a different (valid but empty-ish)
        # proposal for the same slot: a different digest.
        if isinstance(msg, PrePrepare) and dest == 3:
            import msgspec

            from phalanx.core.hashing import digest

            return [msgspec.structs.replace(msg, payload=b"", digest=digest(b""))]
        return [msg]

    sim = cluster(seed=9)
    sim.set_byzantine(0, FilterOutgoing(equivocate))
    sim.add_clients(3, put_op, requests_per_client=20)
    sim.run(until=60.0, stop_when=sim.all_clients_done)
    assert sim.all_clients_done(), sim.liveness_report()
    assert_consistent(sim, replicas=[1, 2, 3])


@pytest.mark.parametrize("multicast", [False, True])
def test_silent_primary_is_replaced(multicast):
    from phalanx.sim.behaviour import Silent

    sim = cluster(seed=10, multicast=multicast)
    sim.set_byzantine(0, Silent())
    sim.add_clients(3, put_op, requests_per_client=15)
    sim.run(until=60.0, stop_when=sim.all_clients_done)
    assert sim.all_clients_done(), sim.liveness_report()
    assert_consistent(sim, replicas=[1, 2, 3])


def test_same_seed_same_run():
    def run(seed):
        sim = cluster(seed=seed)
        sim.add_clients(3, put_op, requests_per_client=10)
        sim.crash(0, at=0.02)
        sim.run(until=30.0, stop_when=sim.all_clients_done)
        return sim.trace_hash(), [sim.committed_log_hash(r) for r in range(4)]

    assert run(11) == run(11)
    assert run(11)[0] != run(12)[0]


def test_many_seeds_with_faults():
    from phalanx.sim.network import NetworkModel, UniformLatency

    for seed in range(100, 112):
        network = NetworkModel(latency=UniformLatency(0.001, 0.02), drop=0.02, reorder=0.01)
        sim = cluster(seed=seed, network=network)
        sim.add_clients(3, put_op, requests_per_client=12)
        victim = seed % 4
        sim.crash(victim, at=0.05 + (seed % 5) * 0.03)
        sim.restart(victim, at=1.5)
        sim.run(until=120.0, stop_when=sim.all_clients_done)
        assert sim.all_clients_done(), f"seed {seed}: {sim.liveness_report()}"
        assert_consistent(sim)


def test_batch_delay_forms_larger_batches_and_still_completes():
    from dataclasses import replace


    sizes = {}
    for delay in (0.0, 0.02):
        sim = cluster(seed=13, config=replace(FAST, batch_delay=delay, max_inflight=8))
        sim.add_clients(8, put_op, requests_per_client=10)
        sim.run(until=30.0, stop_when=sim.all_clients_done)
        assert sim.all_clients_done(), sim.liveness_report()
        log = sim.executed_log(1)
        sizes[delay] = sum(len(e.requests) for e in log) / len(log)
    assert sizes[0.02] > sizes[0.0]


def test_primary_equivocating_to_every_backup_is_voted_out_by_a_view_change():
    import msgspec

    from phalanx.core.hashing import digest
    from phalanx.protocols.pbft.messages import PrePrepare
    from phalanx.sim.behaviour import FilterOutgoing

    def equivocate(dest, msg):
        # Each backup gets a different proposal for the same slot: no digest can gather
        # a quorum, so the backups' timers must replace the primary.
        if isinstance(msg, PrePrepare) and dest != 1:
            payload = b"" if dest == 2 else msg.payload[:0]
            if dest == 3:
                return []  # and replica 3 gets nothing at all
            return [msgspec.structs.replace(msg, payload=payload, digest=digest(payload))]
        return [msg]

    sim = cluster(seed=14)
    sim.set_byzantine(0, FilterOutgoing(equivocate))
    sim.add_clients(3, put_op, requests_per_client=10)
    sim.run(until=60.0, stop_when=sim.all_clients_done)
    assert sim.all_clients_done(), sim.liveness_report()
    assert all(sim.replica(r).view >= 1 for r in (1, 2, 3))
    assert_consistent(sim, replicas=[1, 2, 3])


def _restart_primary_mid_proposal(seed: int, victim: int = 0) -> Simulation:
    """Crash a replica while its newest PRE-PREPAREs or PREPAREs are out but not yet on
    its disk (they are lazy: they ride with the next durable write), restart it at once."""
    sim = cluster(seed=seed)
    sim.add_clients(6, put_op, requests_per_client=30)
    crash_at = 0.05 + 0.0003 * (seed % 10)
    sim.crash(victim, at=crash_at)
    sim.restart(victim, at=crash_at + 0.002)  # back before anyone suspects it
    sim.run(until=60.0, stop_when=sim.all_clients_done)
    assert sim.all_clients_done(), sim.liveness_report()
    assert_consistent(sim)
    return sim


def test_restarted_primary_does_not_propose_again_in_its_view():
    for seed in range(20, 30):
        sim = _restart_primary_mid_proposal(seed)
        assert sim.counters["dropped.equivocation"] == 0, seed
        assert all(sim.replica(r).view >= 1 for r in range(4)), seed  # moved on


def test_restarted_backup_is_not_fenced_and_the_cluster_goes_on_in_its_view():
    for seed in range(20, 25):
        sim = _restart_primary_mid_proposal(seed, victim=2)
        assert sim.counters["sim.restarts"] == 1
        assert sim.counters["dropped.equivocation"] == 0, seed
        instance = sim.replica(2).instance
        assert instance.fenced_view == -1 and instance.view == 0, seed  # no view change


def test_without_the_fence_a_restarted_primary_equivocates(monkeypatch):
    """The control for the test above: it can fail. A primary that forgets the fence,
    and carries on after the slots it recovered, reuses the slots of its lost
    pre-prepares (not yet on disk when it crashed) for other batches."""
    recover = PbftInstance.recover

    def recover_unfenced(self, *args, **kwargs):
        recover(self, *args, **kwargs)
        self.fenced_view = -1
        self.next_seq = max(self.low, self.last_decided, *self.slots) + 1

    monkeypatch.setattr(PbftInstance, "recover", recover_unfenced)
    equivocations = 0
    for seed in range(20, 30):
        try:
            sim = _restart_primary_mid_proposal(seed)
        except SafetyViolation:
            equivocations += 1
            continue
        equivocations += sim.counters["dropped.equivocation"] > 0
    assert equivocations >= 5


def _mean_batch_and_latency(fill_wait: float, clients: int, seed: int = 14):
    from dataclasses import replace

    from pbft_harness import FAST

    # Production batching (FAST caps batches at 16): the question is how the clients
    # group, not how a full batch splits.
    config = replace(FAST, fill_wait=fill_wait, max_batch=512)
    sim = cluster(seed=seed, config=config)
    sim.add_clients(clients, put_op, requests_per_client=40)
    sim.run(until=60.0, stop_when=sim.all_clients_done)
    assert sim.all_clients_done(), sim.liveness_report()
    assert_consistent(sim)
    log = sim.executed_log(1)
    latencies = sorted(sim.latencies())
    return sum(len(e.requests) for e in log) / len(log), latencies[len(latencies) // 2]


def test_fill_wait_keeps_closed_loop_clients_in_one_full_batch_per_round():
    """Without the fill wait, closed-loop clients split into cohorts that alternate in
    smaller batches; with it, the primary waits for the last batches' clients (a gap
    at a time, while they keep arriving), so a round carries (nearly) all of them."""
    split, _ = _mean_batch_and_latency(0.0, 24)
    # A gap longer than a client's round trip to the primary (2 ms on these links).
    whole, _ = _mean_batch_and_latency(0.003, 24)
    assert whole > 20 and whole > 1.5 * split, (split, whole)


def test_fill_wait_costs_a_lone_client_nothing():
    assert _mean_batch_and_latency(0.003, 1) == _mean_batch_and_latency(0.0, 1)


def test_multicast_requests_withheld_from_the_primary_cost_a_timeout_not_a_view_change():
    """Clients that mark requests multicast but send them to the backups only (Byzantine
    clients, or a lost link to the primary): the backups forward them once their progress
    timer runs out, and the cluster goes on in view 0."""
    from pbft_harness import FAST

    from phalanx.core.effects import Broadcast, Send
    from phalanx.core.quorum import Quorums
    from phalanx.protocols.pbft.client import PbftClient
    from phalanx.protocols.pbft.messages import ALL_MESSAGES
    from phalanx.protocols.pbft.replica import PbftReplica
    from phalanx.sim.network import ConstantLatency, NetworkModel
    from phalanx.statemachine.kv import KVStore

    class WithholdingClient(PbftClient):
        def submit(self, op):
            ts, effects = super().submit(op)
            return ts, [e for b in effects for e in (
                [Send(r, b.msg) for r in (1, 2, 3)] if isinstance(b, Broadcast) else [b])]

    quorums = Quorums.for_n(4)
    sim = Simulation(
        12, 4,
        lambda rid, crypto: PbftReplica(rid, quorums, crypto, KVStore, FAST),
        lambda crypto: WithholdingClient(crypto, quorums, retransmit_timeout=5.0,
                                         multicast=True),
        NetworkModel(latency=ConstantLatency(0.001)),
        messages=ALL_MESSAGES,
    )
    sim.add_clients(3, put_op, requests_per_client=4)
    sim.run(until=60.0, stop_when=sim.all_clients_done)
    assert sim.all_clients_done(), sim.liveness_report()
    assert all(sim.replica(r).view == 0 for r in range(4))
    assert sim.now < 4 * FAST.view_change_timeout * 4  # a few timeouts, no retransmission
    assert_consistent(sim)


@pytest.mark.parametrize(("n", "f"), [(6, 1), (4, 0), (5, 1), (8, 2)])
def test_a_partition_into_halves_never_decides_two_batches_for_one_slot(n, f):
    """Quorums intersect in f+1 replicas for every n >= 3f+1, not only n = 3f+1: with
    2f+1 quorums, each half of n=6 (f=1) or n=4 (f=0) commits a batch of its own
    client at seq 1 (seen before quorums were ceil((n+f+1)/2))."""
    sim = cluster(seed=11, n=n, f=f)
    left, right = list(range(n // 2)), list(range(n // 2, n))
    ids = sim.add_clients(2, put_op, requests_per_client=3)
    sim.partition([[*left, ids[0]], [*right, ids[1]]], at=0.0, heal_at=20.0)
    sim.run(until=40.0, stop_when=sim.all_clients_done)  # the checkers run at every event
    assert sim.all_clients_done(), sim.liveness_report()
    assert_consistent(sim)


def _splice_attack(seed: int, planted_bug: str | None = None):
    """n=4: Byzantine replica 3 splices NEW-VIEWs (phalanx.byzantine.pbft_attacks) while
    replica 2 is down from t=0.3s until 2.0s + seed/10; the liveness checker runs from
    t=6s (every fault over) with a bound of 30s."""
    from phalanx.byzantine.checkers import LivenessChecker
    from phalanx.byzantine.pbft_attacks import SpliceNewView
    from phalanx.byzantine.pbft_planted import PLANTED_BUGS
    from phalanx.sim.network import NetworkModel, UniformLatency

    config = PbftConfig(checkpoint_interval=8, window=16, max_batch=4, max_inflight=4,
                        view_change_timeout=0.5, state_digest_every_batch=True)
    replica_class = PLANTED_BUGS[planted_bug].replica_class if planted_bug else PbftReplica
    sim = cluster(seed=seed, config=config, replica_class=replica_class,
                  network=NetworkModel(latency=UniformLatency(0.001, 0.01)))
    attacker = SpliceNewView(3, seed)
    sim.set_byzantine(3, attacker)
    sim.add_clients(3, put_op, requests_per_client=200)
    attacker.attach(sim)
    sim.crash(2, at=0.3)
    sim.restart(2, at=2.0 + seed / 10)
    LivenessChecker(6.0, 30.0).install(sim, 60.0)
    return sim


SPLICED = (4, 9, 10, 11)
"""Seeds whose replica 2 took the spliced NEW-VIEW under the old acceptance rule."""


@pytest.mark.parametrize("seed", SPLICED)
def test_a_spliced_new_view_does_not_stall_the_cluster(seed):
    """A Byzantine backup hands a replica back from a crash a NEW-VIEW assembled from
    another quorum of the same VIEW-CHANGEs, with its PREPARE for the other digest; it
    withholds its COMMITs on the split slots and backs the spliced digests in its own
    VIEW-CHANGEs. Taken, it split one slot between correct replicas in one view and no
    later view change could decide it: clients stuck from t~1.3s, view 10 at t=36s.
    The new primary's signature on NEW-VIEW makes the lagging replica refuse it."""
    sim = _splice_attack(seed)
    sim.run(until=60.0, stop_when=sim.all_clients_done)
    assert sim.all_clients_done(), sim.liveness_report()
    assert_consistent(sim, replicas=[0, 1, 2])


def test_with_link_based_new_view_acceptance_a_splice_stalls_the_cluster_forever():
    from phalanx.byzantine.checkers import LivenessViolation

    with pytest.raises(LivenessViolation):
        _splice_attack(SPLICED[0], planted_bug="unsigned_new_view").run(until=60.0)


def test_a_replica_whose_state_diverged_takes_the_certified_state_and_reexecutes():
    """Replica 2's state goes wrong once (a corrupted store, a bug in the application:
    never a correct replica's fault while f hold, so it runs as a Byzantine replica that
    behaves honestly and the checkers leave it alone). At the next stable checkpoint its
    own digest contradicts the 2f+1 signed ones: it fetches the certified snapshot,
    executes the decided batches after it again, and ends with the others' state."""
    from phalanx.core.quorum import Quorums
    from phalanx.protocols.pbft.client import PbftClient
    from phalanx.protocols.pbft.messages import ALL_MESSAGES
    from phalanx.protocols.pbft.replica import PbftReplica
    from phalanx.sim.behaviour import Behaviour
    from phalanx.sim.network import ConstantLatency, NetworkModel
    from phalanx.statemachine.kv import KVStore, encode_put

    corrupted = []

    class CorruptOnce(KVStore):
        def apply(self, ops):
            results = super().apply(ops)
            if not corrupted and len(self._data) >= 3:
                corrupted.append(True)
                super().apply([encode_put(b"never-ordered", b"garbage")])
            return results

    quorums = Quorums(4, 1)
    sim = Simulation(
        5, 4,
        lambda rid, crypto: PbftReplica(rid, quorums, crypto,
                                        CorruptOnce if rid == 2 else KVStore, FAST),
        lambda crypto: PbftClient(crypto, quorums, retransmit_timeout=0.3),
        NetworkModel(latency=ConstantLatency(0.001)), messages=ALL_MESSAGES,
    )
    sim.set_byzantine(2, Behaviour())
    sim.add_clients(3, put_op, requests_per_client=40)
    sim.run(until=30.0, stop_when=sim.all_clients_done)
    assert corrupted and sim.all_clients_done(), sim.liveness_report()
    assert sim.counters["dropped.state_divergence"] >= 1
    assert_consistent(sim, replicas=[0, 1, 2, 3])
    # Repaired at the checkpoint that showed the divergence, then every later batch ran
    # again: no slot skipped (a replica that only waited for a later checkpoint's state
    # transfer would have skipped the slots in between).
    seqs = sorted(e.seq for e in sim.executed_log(2))
    assert seqs == list(range(1, sim.replica(2).last_executed + 1))


def test_replicas_that_executed_the_same_requests_have_the_same_state_whatever_the_order():
    """The order-independent state check (safety.ExecutedSetChecker), on PBFT with the
    host tracking the executed set: quiet on a correct run with a crash, a restart and
    state transfer (the key survives snapshots), loud on a replica whose state went
    wrong."""
    from dataclasses import replace as replace_config

    from phalanx.safety import ExecutedSetChecker

    config = replace_config(FAST, track_executed_set=True)
    checker = ExecutedSetChecker()
    sim = cluster(seed=31, config=config, checkers=[checker])
    sim.add_clients(3, put_op, requests_per_client=40)
    sim.crash(3, at=0.05)
    sim.restart(3, at=1.5)
    sim.run(until=30.0, stop_when=sim.all_clients_done)
    assert sim.all_clients_done(), sim.liveness_report()
    assert len(checker._first) > 40  # it compared states for every executed set
    keys = {sim.executed_log(r)[-1].executed_set for r in range(3)}
    assert len(keys) == 1 and 0 not in keys

    from phalanx.core.effects import Executed

    other = ExecutedSetChecker()
    one = Executed(0, 1, b"d", [(b"c" * 32, 1)], b"root", 7)
    other.on_executed(0, 0, one)
    with pytest.raises(SafetyViolation, match="executed the same requests"):
        other.on_executed(1, 0, replace_struct(one, seq=9, state_digest=b"other"))


def replace_struct(msg, **changes):
    import msgspec

    return msgspec.structs.replace(msg, **changes)
