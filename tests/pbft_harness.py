"""Builds simulated PBFT clusters for the scenario tests."""

from __future__ import annotations

from phalanx.core.quorum import Quorums
from phalanx.protocols.pbft.client import PbftClient
from phalanx.protocols.pbft.config import PbftConfig
from phalanx.protocols.pbft.messages import ALL_MESSAGES
from phalanx.protocols.pbft.replica import PbftReplica
from phalanx.runtime.sim.network import ConstantLatency, NetworkModel
from phalanx.runtime.sim.simulator import Simulation
from phalanx.statemachine.kv import KVStore, encode_put

FAST = PbftConfig(
    checkpoint_interval=8,
    window=16,
    max_batch=16,
    max_inflight=4,
    view_change_timeout=0.5,
    state_root_every_batch=True,
)


def put_op(client: int, i: int) -> bytes:
    return encode_put(f"k{client}:{i % 5}".encode(), f"v{client}:{i}".encode())


def cluster(
    seed: int,
    n: int = 4,
    config: PbftConfig = FAST,
    network: NetworkModel | None = None,
    multicast: bool = False,
    f: int | None = None,
    **kwargs,
) -> Simulation:
    """``multicast``: clients send every request to all replicas (backups do not forward);
    ``f`` defaults to the most faults ``n`` replicas tolerate."""
    quorums = Quorums.for_n(n) if f is None else Quorums(n, f)
    return Simulation(
        seed,
        n,
        lambda rid, crypto: PbftReplica(rid, quorums, crypto, KVStore, config),
        lambda crypto: PbftClient(crypto, quorums, retransmit_timeout=0.3, multicast=multicast),
        network or NetworkModel(latency=ConstantLatency(0.001)),
        messages=ALL_MESSAGES,
        **kwargs,
    )


def assert_consistent(sim: Simulation, replicas: list[int] | None = None) -> None:
    """All listed replicas executed the same batches and reached the same state root;
    every request was executed at most once (the checkers verify it at every step)."""
    sim.run(until=sim.now + 3.0)  # let slower replicas finish what the clients saw commit
    replicas = [r for r in (sim.correct_replicas if replicas is None else replicas)
                if sim.is_alive(r)]
    roots = {r: (sim.replica(r).last_executed, sim.replica(r).state_root()) for r in replicas}
    assert len(set(roots.values())) == 1, roots
    # A replica that caught up by state transfer has no log entries for the snapshot's
    # prefix; compare whole-log hashes among the others (per-seq agreement is checked
    # for everyone by the simulator's checkers).
    complete = [r for r in replicas if _gap_free(sim, r)]
    hashes = {r: sim.committed_log_hash(r) for r in complete}
    assert len(set(hashes.values())) <= 1, hashes


def _gap_free(sim: Simulation, replica: int) -> bool:
    seqs = [e.seq for e in sim.executed_log(replica)]
    return seqs == list(range(1, sim.replica(replica).last_executed + 1))


def executed_requests(sim: Simulation, replica: int) -> list[tuple[bytes, int]]:
    return [req for e in sim.executed_log(replica) for req in e.requests]
