"""The replica host under Byzantine peers, in the simulator: what a faulty replica can
make a correct one install by state transfer. A snapshot is taken only if it hashes to
the digest that 2f+1 signed CHECKPOINTs prove stable, at a position the replica is
fetching; whatever a faulty replica sends instead is refused and counted, and the
lagging replica still converges (from a correct holder) without executing any request
twice."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from pbft_harness import assert_consistent, cluster, executed_requests, put_op

from phalanx.host import Snapshot, StateData
from phalanx.sim.behaviour import Behaviour
from phalanx.sim.simulator import NodeId

BYZANTINE = 0  # the first holder a lagging replica asks, so its answer arrives first
LAGGING = 3


class TamperedStateData(Behaviour):
    """A replica whose core runs honestly but that rewrites every StateData it sends."""

    def __init__(self, tamper: Callable[[StateData], StateData]) -> None:
        self.tamper = tamper
        self.sent = 0

    def filter(self, dest: NodeId, msg: Any) -> list[Any]:
        if isinstance(msg, StateData):
            self.sent += 1
            return [self.tamper(msg)]
        return [msg]


def _with_snapshot(msg: StateData, change: Callable[[Snapshot], Snapshot]) -> StateData:
    snapshot = msgspec.msgpack.decode(msg.snapshot, type=Snapshot)
    return msgspec.structs.replace(msg, snapshot=msgspec.msgpack.encode(change(snapshot)))


def _forget_clients(msg: StateData) -> StateData:
    # Without the client table every request in the snapshot would run again.
    return _with_snapshot(msg, lambda s: msgspec.structs.replace(s, clients=[]))


def _roll_back_one_client(msg: StateData) -> StateData:
    def change(s: Snapshot) -> Snapshot:
        client, timestamp, result = s.clients[0]
        return msgspec.structs.replace(s, clients=[(client, timestamp - 1, result),
                                                   *s.clients[1:]])
    return _with_snapshot(msg, change)


def _other_position(msg: StateData) -> StateData:
    # The genuine proof and snapshot bytes, but the snapshot claims another position.
    return _with_snapshot(msg, lambda s: msgspec.structs.replace(s, position=s.position + 1))


def _garbage(msg: StateData) -> StateData:
    return msgspec.structs.replace(msg, snapshot=b"\xc1not msgpack")


def _empty_app(msg: StateData) -> StateData:
    from phalanx.statemachine.kv import KVStore

    return _with_snapshot(msg, lambda s: msgspec.structs.replace(s, app=KVStore().snapshot()))


@pytest.mark.parametrize(
    "tamper", [_forget_clients, _roll_back_one_client, _other_position, _garbage, _empty_app]
)
def test_a_lagging_replica_refuses_a_tampered_snapshot_and_converges(tamper):
    sim = cluster(seed=41)
    behaviour = TamperedStateData(tamper)
    sim.set_byzantine(BYZANTINE, behaviour)
    sim.crash(LAGGING, at=0.0)
    sim.add_clients(4, put_op, requests_per_client=40)  # many checkpoints of 8 slots
    sim.run(until=30.0, stop_when=sim.all_clients_done)
    assert sim.all_clients_done(), sim.liveness_report()
    sim.restart(LAGGING, at=sim.now)
    sim.add_clients(1, put_op, requests_per_client=10)
    sim.run(until=sim.now + 30.0, stop_when=sim.all_clients_done)
    assert sim.all_clients_done(), sim.liveness_report()
    sim.run(until=sim.now + 5.0)  # the restarted replica fetches the stable state
    assert behaviour.sent >= 1
    assert sim.counters["dropped.bad_state"] >= 1
    assert_consistent(sim, replicas=[1, 2, LAGGING])
    # Each request the lagging replica executed itself ran once (the checkers also say
    # so at every step); those in the snapshot it installed did not run again.
    mine = executed_requests(sim, LAGGING)
    assert len(mine) == len(set(mine))
