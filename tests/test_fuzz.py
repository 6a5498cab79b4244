"""The Byzantine fuzzer: generator, strategies, Twins, checkers, shrinking, CLI, a bounded
fuzz of PBFT with f Byzantine replicas, and the planted-bug self-test.

Scale the bounded fuzz with PHALANX_FUZZ_SEEDS (`make fuzz` runs 10,000); a failing seed
replays exactly with ``phalanx fuzz --seed N``.
"""

from __future__ import annotations

import io
import json
import os
import random
from contextlib import redirect_stdout

import msgspec
import pytest
from pbft_harness import cluster, put_op

from phalanx.byzantine.behaviours import Borgesian
from phalanx.byzantine.checkers import LivenessChecker, LivenessViolation
from phalanx.byzantine.fuzz import FuzzConfig, explain, make_plan, run_plan, shrink, sweep
from phalanx.byzantine.generate import MessageGenerator, TrafficPool, is_signed
from phalanx.byzantine.pbft import FIXUPS
from phalanx.cli import main
from phalanx.protocols.pbft.messages import ALL_MESSAGES, Checkpoint, ViewChange
from phalanx.safety import AlarmChecker, SafetyViolation
from phalanx.sim import Silent
from phalanx.sim.behaviour import Behaviour
from phalanx.sim.crypto import SymbolicOracle
from phalanx.sim.simulator import Twin

SEEDS = int(os.environ.get("PHALANX_FUZZ_SEEDS", "300"))
CHUNK = 25

# Planted bug -> seeds within which the Borgesian fuzzer must find it (first found at
# seeds 41, 24 and 1 when written).
PLANTED = {"preprepare_digest": 60, "checkpoint_signature": 40, "request_authenticator": 10}
# Planted bug -> (protocol-aware strategy, seeds within which it must find it). Random
# messages do not find these two; the targeted attacks do (first found at seeds 0 and 16
# when written; hide_commit hits about 8% of seeds, forge_view almost all).
PLANTED_TARGETED = {
    "view_change_proof": ("forge_view", 5),
    "commit_quorum": ("hide_commit", 40),
    "unsigned_new_view": ("splice_new_view", 20),  # found at seed 1 when written
}


# -- the generator ------------------------------------------------------------------------


def test_generator_makes_every_message_type_including_nested_ones():
    rng = random.Random(1)
    gen = MessageGenerator(rng, TrafficPool(rng), n=4)
    seen = set()
    for _ in range(30):
        for cls in ALL_MESSAGES:
            msg = gen.random_message(cls)
            assert type(msg) is cls
            seen.add(cls)
    nested = [gen.random_message(ViewChange) for _ in range(50)]
    assert any(vc.checkpoint_proof and isinstance(vc.checkpoint_proof[0], Checkpoint)
               for vc in nested)
    assert seen == set(ALL_MESSAGES)


def test_generator_signs_only_with_byzantine_keys():
    oracle = SymbolicOracle(random.Random(2), 4)
    byzantine = oracle.node_crypto(3, colluders=[3])
    honest = oracle.node_crypto(0)
    rng = random.Random(3)
    gen = MessageGenerator(rng, TrafficPool(rng), n=4, signers=[3], sign=byzantine.sign_as)
    valid = 0
    for _ in range(300):
        for cls in (Checkpoint, ViewChange):
            msg = gen.random_message(cls)
            assert is_signed(cls)
            if honest.verify(msg.replica, msg.signed_bytes(), msg.sig):
                assert msg.replica == 3, "a signature of a correct replica was forged"
                valid += 1
        for msg in gen.quorum_of(gen.random_message(Checkpoint), 4):
            if honest.verify(msg.replica, msg.signed_bytes(), msg.sig):
                assert msg.replica == 3
    assert valid > 100  # most are validly signed by the Byzantine replica


def test_generator_mutates_observed_traffic_and_replays_from_its_seed():
    def draw(seed):
        rng = random.Random(seed)
        pool = TrafficPool(rng)
        pool.observe(Checkpoint(0, 8, b"d" * 32, 1, b"s" * 16))
        gen = MessageGenerator(rng, pool, n=4, fixups=FIXUPS)
        return [msgspec.msgpack.encode(gen.random_message(c)) for c in ALL_MESSAGES * 5]

    assert draw(4) == draw(4)
    assert draw(4) != draw(5)
    rng = random.Random(6)
    pool = TrafficPool(rng)
    pool.observe(Checkpoint(0, 8, b"d" * 32, 1, b"s" * 16))
    gen = MessageGenerator(rng, pool, n=4)
    seqs = {gen.random_message(Checkpoint).seq for _ in range(200)}
    assert {7, 8, 9} <= seqs  # the observed seq and its neighbours


# -- the Borgesian node in a simulation ---------------------------------------------------


def test_borgesian_sends_every_type_to_replicas_and_clients_and_forwards():
    sim = cluster(seed=22)
    borges = Borgesian(2, 22, ALL_MESSAGES, fixups=FIXUPS)
    sim.set_byzantine(2, borges)
    sim.add_clients(2, put_op, requests_per_client=20)
    sent: list[tuple[object, object]] = []
    inject = sim.inject
    sim.inject = lambda src, dest, msg: (sent.append((dest, msg)), inject(src, dest, msg))
    borges.attach(sim)
    sim.run(until=30.0, stop_when=sim.all_clients_done)
    assert sim.all_clients_done(), sim.liveness_report()
    assert {type(m) for _, m in sent} == set(ALL_MESSAGES)
    assert any(isinstance(d, bytes) for d, _ in sent)  # clients are channels too
    observed = {id(m) for cls in borges.pool.by_type for m in borges.pool.messages(cls)}
    assert any(id(m) in observed for _, m in sent)  # stored messages forwarded unchanged
    assert sim.counters["dropped.bad_signature"] + sim.counters["dropped.bad_view_change"] > 0


def test_a_fuzz_seed_replays_exactly():
    config = FuzzConfig(strategies=("borgesian",))
    first, _ = run_plan(make_plan(config, 3))
    again, _ = run_plan(make_plan(config, 3))
    assert (first.trace_hash, first.events) == (again.trace_hash, again.events)
    other, _ = run_plan(make_plan(config, 4))
    assert other.trace_hash != first.trace_hash


# -- Twins ------------------------------------------------------------------------------


def test_twins_run_one_identity_twice_in_two_parts_of_the_network():
    sim = cluster(seed=31)
    sim.set_byzantine(0, Behaviour())
    twin = sim.add_twin(0)
    assert twin == Twin(0) and str(twin) == "0'"
    # The primary and its twin each lead a part of the network, then everyone meets.
    sim.partition([[0, 1], [twin, 2, 3]], at=0.0, heal_at=2.0)
    sim.add_clients(3, put_op, requests_per_client=8)
    sim.run(until=60.0, stop_when=sim.all_clients_done)
    assert sim.all_clients_done(), sim.liveness_report()
    sim.run(until=sim.now + 3.0)
    assert sim.twin(0) is not None and sim.twin(0).last_executed > 0
    assert sim.node_stats(twin).msgs_recv > 0 and sim.node_stats(twin).msgs_sent > 0
    roots = {sim.replica(r).state_digest() for r in (1, 2, 3)}
    assert len(roots) == 1  # the checkers also compared every executed slot


def test_twins_need_a_byzantine_replica():
    sim = cluster(seed=32)
    with pytest.raises(ValueError, match="Byzantine"):
        sim.add_twin(1)


# -- checkers -----------------------------------------------------------------------------


def test_liveness_checker_fires_when_more_than_f_replicas_are_silent():
    sim = cluster(seed=41)
    sim.set_byzantine(1, Silent())
    sim.set_byzantine(2, Silent())
    sim.add_clients(1, put_op, requests_per_client=3)
    LivenessChecker(gst=1.0, bound=5.0).install(sim, until=20.0)
    with pytest.raises(LivenessViolation, match="beyond GST"):
        sim.run(until=20.0)


def test_liveness_checker_is_quiet_when_clients_finish():
    sim = cluster(seed=42)
    sim.add_clients(2, put_op, requests_per_client=5)
    LivenessChecker(gst=0.0, bound=5.0).install(sim, until=10.0)
    sim.run(until=10.0)
    assert sim.all_clients_done()


def test_alarm_checker_raises_on_a_protocol_alarm():
    checker = AlarmChecker({"state_divergence"})
    checker.on_dropped(0, "bad_digest")
    with pytest.raises(SafetyViolation, match="state_divergence"):
        checker.on_dropped(1, "state_divergence")


# -- the bounded fuzz and the planted bugs -----------------------------------------------


@pytest.mark.parametrize("first", range(0, SEEDS, CHUNK))
def test_bounded_fuzz_of_pbft_with_f_byzantine_replicas(first):
    config = FuzzConfig(protocol="pbft", n=4, byzantine=1)
    failures = []
    summary = sweep(
        config, range(first, min(first + CHUNK, SEEDS)),
        on_result=lambda plan, o: failures.append((o.seed, o.detail)) if o.failed else None,
    )
    assert summary.violations == 0, failures
    assert summary.truncated == 0


def test_bounded_fuzz_n7_with_two_byzantine_replicas():
    config = FuzzConfig(protocol="pbft", n=7, byzantine=2)
    summary = sweep(config, range(4))
    assert summary.violations == 0, summary.failing


def test_colluding_vote_all_replicas_do_not_echo_each_others_votes_forever():
    """vote_all votes once for each value it sees. Two of them used to answer each
    other's votes with votes, without end: fuzz seed 60004 (n=10, three Byzantine, two
    of them vote_all) ran into the 300,000-event cap after 0.1 simulated seconds, so the
    seed was counted as truncated and nothing after its first 0.1 s was checked."""
    config = FuzzConfig(n=7, byzantine=2, strategies=("vote_all",), max_steps=100_000)
    summary = sweep(config, range(2))
    assert summary.by_strategy["vote_all"] == 4
    assert summary.truncated == 0
    assert summary.violations == 0, summary.failing


@pytest.mark.parametrize(("bug", "within"), sorted(PLANTED.items()))
def test_fuzzer_finds_planted_bug(bug, within):
    config = FuzzConfig(planted_bug=bug, strategies=("borgesian",))
    summary = sweep(config, range(within), stop_at_first=True)
    assert summary.violations == 1, f"{bug} not found in {within} seeds"


@pytest.mark.parametrize(
    ("n", "f", "byzantine", "within"),
    [(6, None, 1, 30), (4, 0, 0, 20), ((5, 6, 8), None, 0, 60)],
)
def test_fuzzer_drawing_n_other_than_3f_plus_1_finds_fixed_2f_plus_1_quorums(
    n, f, byzantine, within
):
    """The old quorum rule (2f+1 whatever n) is right only for n = 3f+1: with n=6 (f=1) or
    n=4 (f=0) two halves of a partitioned cluster each decide (found at seeds 3, 12, 36
    when written)."""
    config = FuzzConfig(n=n, f=f, byzantine=byzantine, planted_bug="quorum_2f_plus_1")
    summary = sweep(config, range(within), stop_at_first=True)
    assert summary.violations == 1, f"fixed 2f+1 quorums not found in {within} seeds"


def test_bounded_fuzz_over_n_other_than_3f_plus_1():
    for config in (FuzzConfig(n=(5, 6, 8), byzantine=1), FuzzConfig(n=(4, 5, 6), f=0,
                                                                     byzantine=0)):
        summary = sweep(config, range(15))
        assert summary.violations == 0, summary.failing


@pytest.mark.parametrize(("bug", "strategy", "within"),
                         [(b, s, w) for b, (s, w) in sorted(PLANTED_TARGETED.items())])
def test_targeted_strategy_finds_planted_bug(bug, strategy, within):
    config = FuzzConfig(planted_bug=bug, strategies=(strategy,))
    summary = sweep(config, range(within), stop_at_first=True)
    assert summary.violations == 1, f"{bug} not found by {strategy} in {within} seeds"


def test_targeted_strategies_are_harmless_to_correct_pbft():
    """The same attacks against PBFT without a planted bug: every forged or spliced
    NEW-VIEW is rejected and every hidden commit is impossible, so nothing is violated."""
    config = FuzzConfig(strategies=("forge_view", "hide_commit", "splice_new_view"))
    summary = sweep(config, range(40))
    assert summary.violations == 0, summary.failing
    assert all(summary.by_strategy[s] for s in config.strategies or ())


@pytest.mark.parametrize(("strategy", "seed"), [("forge_view", 0), ("hide_commit", 16)])
def test_seed_that_finds_a_planted_bug_is_harmless_without_it(strategy, seed):
    """The seed that caught the bug, against the correct core: the attack is made (a
    forged NEW-VIEW, or a NEW-VIEW that hides a slot) and changes nothing."""
    log: list = []
    outcome, sim = run_plan(make_plan(FuzzConfig(strategies=(strategy,)), seed), log=log)
    assert not outcome.failed, outcome.detail
    assert any("NEW-VIEW" in what for _, _, what in log)
    if strategy == "forge_view":
        assert sim.counters["dropped.bad_new_view"] > 0  # forged signatures rejected


def test_failing_seed_is_shrunk_and_its_trace_explains_it():
    config = FuzzConfig(planted_bug="request_authenticator", strategies=("borgesian",))
    plan = make_plan(config, 1)
    outcome, _ = run_plan(plan)
    assert outcome.violation == "validity"
    shrunk = shrink(plan, outcome, max_runs=25)
    assert shrunk.outcome.violation == "validity"
    assert shrunk.kept_actions < shrunk.total_actions
    lines = explain(shrunk)
    assert "validity" in lines[-1] and any("Request(" in line for line in lines)


def test_phalanx_fuzz_cli_summary_exit_status_and_exact_replay():
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["fuzz", "--seeds", "3", "--first", "100"]) == 0
    assert "seeds=3" in out.getvalue() and "violations=0" in out.getvalue()

    def replay() -> str:
        buf = io.StringIO()
        with redirect_stdout(buf):
            code = main(["fuzz", "--seed", "1", "--bug", "request_authenticator",
                         "--strategy", "borgesian"])
        assert code == 1
        return buf.getvalue()

    first = replay()
    assert first == replay()
    assert "violations=1 (validity)" in first



def test_phalanx_fuzz_names_the_seeds_it_truncated(tmp_path):
    """A seed cut by --steps was checked only up to the cap: the summary says which, so
    that it can be replayed (the count alone left seed 60004's storm to be hunted for)."""
    out = io.StringIO()
    report = tmp_path / "fuzz.json"
    with redirect_stdout(out):
        assert main(["fuzz", "--seeds", "2", "--first", "100", "--steps", "50",
                     "--json", str(report)]) == 0
    assert "truncated seeds (checked up to --steps 50 events only): 100 101" in out.getvalue()
    assert "--steps 50" in out.getvalue().split("replay:")[1]
    assert json.loads(report.read_text())["truncated_seeds"] == [100, 101]

# -- regressions of what the fuzzer found -------------------------------------------------


def test_far_future_checkpoints_of_a_byzantine_replica_do_not_evict_its_real_one():
    """Seed 105200: Byzantine replica 1 filled its quota of unstable checkpoints at a
    lagging replica with made-up far-future ones; its genuine CHECKPOINT(8), forwarded in
    the others' stable proofs, was evicted on arrival (the lowest seq), so the lagging
    replica never had 2f+1 and never caught up."""
    from phalanx.core.quorum import Quorums
    from phalanx.protocols.pbft.config import PbftConfig
    from phalanx.protocols.pbft.instance import CHECKPOINTS_PER_REPLICA, PbftInstance

    oracle = SymbolicOracle(random.Random(5), 4)
    lagging = PbftInstance(0, 2, Quorums.for_n(4), oracle.node_crypto(2),
                           PbftConfig(checkpoint_interval=4, window=12), lambda p: True)

    def signed(replica: int, seq: int, state: bytes) -> Checkpoint:
        cp = Checkpoint(0, seq, state, replica)
        return msgspec.structs.replace(
            cp, sig=oracle.node_crypto(replica).sign(cp.signed_bytes()))

    for seq in range(CHECKPOINTS_PER_REPLICA):
        lagging.on_message(1, signed(1, 65_000 + seq, b"junk"))
    real = b"s" * 32
    for sender in (0, 1, 3):  # a stable proof forwarded by a correct replica
        for cp in (signed(0, 8, real), signed(1, 8, real), signed(3, 8, real)):
            lagging.on_message(sender, cp)
    assert lagging.pending_stable is not None and lagging.pending_stable[0] == 8


def test_seed_105200_lagging_replica_converges():
    # Pinned to its strategy: the plan stays the seed's original whatever the weights.
    outcome, _ = run_plan(make_plan(FuzzConfig(strategies=("borgesian",)), 105200))
    assert not outcome.failed, outcome.detail


FAR = 1 << 62
"""A slot far outside any window (the Borgesian replica's "far slot" mutation)."""


def _attackers_with_a_colluder():
    """n=7 (f=2): hide_commit at 1, splice_new_view at 3, and replica 2 a colluder
    whose messages the test writes; no run, the attackers' hooks are called directly."""
    from phalanx.byzantine.pbft_attacks import HideCommit, SpliceNewView

    sim = cluster(seed=1, n=7)
    hide, splice = HideCommit(1, 1), SpliceNewView(3, 1)
    for replica, behaviour in ((1, hide), (2, Behaviour()), (3, splice)):
        sim.set_byzantine(replica, behaviour)
    hide.attach(sim)
    splice.attach(sim)
    return sim, hide, splice


def test_hide_commit_ignores_pre_prepares_outside_the_watermarks():
    """Seed 83139 (n=8, a Borgesian primary and hide_commit, checkpoints every 3 slots,
    window 9) was reported as a 'hang': hide_commit had voted for the Borgesian
    primary's pre-prepare of a far slot — which every correct replica drops as outside
    its watermarks — and, hiding it, built one null PRE-PREPARE per slot up to it."""
    from phalanx.core.hashing import digest
    from phalanx.protocols.pbft.messages import PrePrepare

    sim, hide, _ = _attackers_with_a_colluder()
    far = PrePrepare(0, 0, FAR, digest(b"x"), b"x")
    near = PrePrepare(0, 0, 3, digest(b"x"), b"x")
    hide.on_deliver(sim, 0, far)
    hide.on_deliver(sim, 0, near)
    assert sorted(hide.voted) == [3]


def test_view_change_attacks_use_only_view_changes_correct_replicas_accept():
    """A colluder's VIEW-CHANGE with a P entry at a far slot is signed by its sender, but
    every correct replica refuses it (outside its window); the attacks must not build
    on it either: their new-view decision would walk every slot up to it."""
    from phalanx.protocols.pbft.instance import GENESIS_DIGEST
    from phalanx.protocols.pbft.messages import SlotSummary

    sim, hide, splice = _attackers_with_a_colluder()
    crypto = sim.byzantine_crypto(2)

    def signed(prepared: list[SlotSummary]) -> ViewChange:
        vc = ViewChange(0, 2, 2, 0, GENESIS_DIGEST, [], prepared, [])
        return msgspec.structs.replace(vc, sig=crypto.sign(vc.signed_bytes()))

    for attacker in (hide, splice):
        attacker.on_deliver(sim, 2, signed([SlotSummary(FAR, b"d" * 32, 1)]))
        assert 2 not in attacker.view_changes.get(2, {})
        attacker.on_deliver(sim, 2, signed([SlotSummary(3, b"d" * 32, 1)]))
        assert 2 in attacker.view_changes[2]  # a well-formed one is used
