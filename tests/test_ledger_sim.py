"""The ledger hosted by PBFT in the deterministic simulator: every replica validates
every client signature once, applies the same blocks, reaches the same state root and
collects commit certificates — with loss, crashes and restarts from disk."""

from __future__ import annotations

import hashlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pbft_harness import assert_consistent

from phalanx.byzantine.adapter import fuzz_adapter
from phalanx.byzantine.behaviours import ActionBehaviour
from phalanx.core.quorum import Quorums
from phalanx.crypto.keys import KeyPair
from phalanx.host.certificates import signed_bytes
from phalanx.ledger.state import Ledger, make_ledger_factory
from phalanx.ledger.tx import encode_bundle, encode_tx, sign_transfer
from phalanx.protocols.pbft.client import PbftClient
from phalanx.protocols.pbft.config import PbftConfig
from phalanx.protocols.pbft.messages import ALL_MESSAGES
from phalanx.protocols.pbft.replica import PbftReplica
from phalanx.protocols.registry import protocol
from phalanx.sim.network import ConstantLatency, NetworkModel
from phalanx.sim.simulator import Simulation

CONFIG = PbftConfig(checkpoint_interval=8, window=16, max_batch=16, max_inflight=4,
                    view_change_timeout=0.5, state_digest_every_batch=True)
ACCOUNTS = [KeyPair.from_seed(hashlib.sha256(b"sim%d" % i).digest()) for i in range(6)]
GENESIS = {k.public_key: 1_000 for k in ACCOUNTS[:4]}
CHAIN = Ledger(GENESIS).chain_id


def ledger_cluster(seed: int, network: NetworkModel | None = None,
                   multicast: bool = False, **kwargs) -> Simulation:
    quorums = Quorums.for_n(4)
    factory = make_ledger_factory(GENESIS)
    return Simulation(
        seed, 4,
        lambda rid, crypto: PbftReplica(rid, quorums, crypto, factory, CONFIG),
        lambda crypto: PbftClient(crypto, quorums, retransmit_timeout=0.3, multicast=multicast),
        network or NetworkModel(latency=ConstantLatency(0.001)),
        messages=ALL_MESSAGES,
        **kwargs,
    )


def workload(seed: int, amounts: list[int]):
    """Client ``c`` signs for account ``c`` with nonces 0, 1, 2 ... (one outstanding)."""
    rng = random.Random(seed)
    targets = [rng.randrange(len(ACCOUNTS)) for _ in amounts]

    def op(client: int, i: int) -> bytes:
        amount = amounts[i % len(amounts)]
        to = ACCOUNTS[targets[i % len(targets)]].public_key
        return encode_tx(sign_transfer(ACCOUNTS[client], CHAIN, to, amount, i))

    return op


def ledgers(sim: Simulation) -> dict[int, Ledger]:
    return {r: sim.replica(r).app for r in sim.correct_replicas if sim.is_alive(r)}


def check_ledgers(sim: Simulation, requests: int) -> None:
    assert_consistent(sim)
    apps = ledgers(sim)
    heights = {r: app.height for r, app in apps.items()}
    assert len(set(heights.values())) == 1, heights
    for app in apps.values():
        assert app.total_supply() == sum(GENESIS.values())
        assert all(b >= 0 for b, _ in app.accounts.values())
        # Each (account, nonce) applied at most once: nonces count applied transfers.
        assert sum(n for _, n in app.accounts.values()) <= 4 * requests


def test_ledger_replicas_agree_certify_blocks_and_verify_each_signature_once() -> None:
    sim = ledger_cluster(7)
    sim.add_clients(4, workload(7, [5, 50, 400, 2000]), requests_per_client=12)
    sim.run(until=30.0)
    check_ledgers(sim, 12)
    apps = ledgers(sim)
    app = apps[0]
    assert app.height >= 1
    applied = sum(n for _, n in app.accounts.values())
    assert 0 < applied < 48  # the 2000-unit transfers fail (admission or execution)
    for r, replica in ((r, sim.replica(r)) for r in apps):
        # Once per replica: admission, backup validation and execution share the cache.
        assert replica.app.signatures.verifications <= 48, r
        certifier = replica.host.certifier
        cert = certifier.certificate(app.height)
        assert cert is not None, (r, certifier.certified, app.height)
        header, _ = app.version(app.height)
        assert cert.block_hash == header.hash()
        assert len({s for s, _ in cert.sigs}) == Quorums.for_n(4).strong
        assert all(replica.crypto.verify(s, signed_bytes(cert.height, cert.block_hash), sig)
                   for s, sig in cert.sigs)


@settings(max_examples=6, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000),
       amounts=st.lists(st.integers(1, 700), min_size=1, max_size=6),
       drop=st.sampled_from([0.0, 0.05]))
def test_generated_workloads_under_loss_keep_replicas_identical(seed, amounts, drop) -> None:
    network = NetworkModel(latency=ConstantLatency(0.001), drop=drop)
    sim = ledger_cluster(seed, network)
    sim.add_clients(4, workload(seed, amounts), requests_per_client=8)
    sim.run(until=60.0)
    check_ledgers(sim, 8)


def test_crashed_replica_restarts_from_disk_and_rejoins_with_the_same_blocks() -> None:
    sim = ledger_cluster(3)
    sim.add_clients(4, workload(3, [10, 20, 30]), requests_per_client=20)
    sim.crash(2, at=0.05)
    sim.restart(2, at=0.4)
    sim.run(until=40.0)
    check_ledgers(sim, 20)
    apps = ledgers(sim)
    assert 2 in apps and apps[2].height == apps[0].height > 0


def bundle_op(client: int, i: int) -> bytes:
    """Client ``c``'s request ``i``: a bundle of account ``c``'s nonces 3i, 3i+1, 3i+2."""
    to = ACCOUNTS[(client + 1) % len(ACCOUNTS)].public_key
    return encode_bundle([encode_tx(sign_transfer(ACCOUNTS[client], CHAIN, to, 5, 3 * i + k))
                          for k in range(3)])


def test_bundles_from_multicasting_clients_survive_a_primary_crash() -> None:
    """Each request is a bundle of 3 transfers sent to every replica: backups verify it on
    arrival, the pre-prepare finds it verified, and a view change loses nothing."""
    sim = ledger_cluster(11, multicast=True)
    sim.add_clients(4, bundle_op, requests_per_client=10)
    sim.crash(0, at=0.05)
    sim.run(until=60.0, stop_when=sim.all_clients_done)
    assert sim.all_clients_done(), sim.liveness_report()
    sim.run(until=sim.now + 3.0)
    apps = ledgers(sim)
    assert set(apps) == {1, 2, 3}
    for r, app in apps.items():
        assert app.total_supply() == sum(GENESIS.values())
        # Every transfer of every bundle applied, in nonce order, exactly once.
        assert [app.account(ACCOUNTS[c].public_key)[1] for c in range(4)] == [30] * 4, r
        assert app.signatures.verifications <= 120, r  # each signature once per replica
    assert len({app.state_digest() for app in apps.values()}) == 1
    assert all(sim.replica(r).view >= 1 for r in apps)


@pytest.mark.parametrize(("strategy", "byzantine", "seed"), [
    ("borgesian", 0, 1), ("borgesian", 2, 2), ("equivocate", 0, 3), ("selective", 0, 4),
    ("vote_all", 1, 5), ("hide_commit", 3, 6),
])
def test_bundles_and_multicast_under_a_byzantine_replica(strategy, byzantine, seed) -> None:
    """The fuzzer's strategies (random and replayed messages, equivocation, selective
    silence...) against a ledger with multicasting clients sending bundles, on a lossy
    network: the simulator's safety checkers hold after every event, every request
    completes, and the correct replicas end with identical ledgers."""
    behaviour = fuzz_adapter("pbft").strategies[strategy](byzantine, seed, frozenset(), None)
    network = NetworkModel(latency=ConstantLatency(0.001), drop=0.02, duplicate=0.02)
    sim = ledger_cluster(seed, network, multicast=True, checkers=protocol("pbft").checkers())
    sim.set_byzantine(byzantine, behaviour)
    sim.add_clients(4, bundle_op, requests_per_client=6)
    if isinstance(behaviour, ActionBehaviour):
        behaviour.attach(sim)  # as the fuzzer does: it may replay what clients sent
    sim.run(until=120.0, stop_when=sim.all_clients_done)
    assert sim.all_clients_done(), sim.liveness_report()
    assert isinstance(behaviour, ActionBehaviour) and behaviour.actions > 0  # it did act
    sim.run(until=sim.now + 3.0)
    apps = ledgers(sim)
    assert byzantine not in apps and len(apps) == 3
    for r, app in apps.items():
        assert app.total_supply() == sum(GENESIS.values()), r
        assert [app.account(ACCOUNTS[c].public_key)[1] for c in range(4)] == [18] * 4, r
    assert len({app.state_digest() for app in apps.values()}) == 1
