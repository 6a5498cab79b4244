"""The simulator engine, driven by toy protocols defined here (not by PBFT).

``Toy`` is primary-ordering without fault tolerance: replica 0 gives each request a seq
and broadcasts it, every replica executes in seq order and replies, the client accepts
f+1 matching replies. Replicas persist their orders and recover them. Its ``bugs`` switch
on deliberate safety bugs, one per checker.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from phalanx.core.address import Address
from phalanx.core.crypto import ClientCrypto, NodeCrypto
from phalanx.core.effects import (
    Broadcast,
    CancelTimer,
    ClientEffect,
    Completed,
    Dropped,
    Effect,
    Executed,
    Persist,
    Send,
    SetTimer,
    ToClient,
)
from phalanx.core.hashing import digest
from phalanx.core.messages import Reply, Request, encode
from phalanx.core.quorum import Quorums
from phalanx.measure.latency import LatencyMatrix
from phalanx.measure.percentile import percentile
from phalanx.safety import (
    AgreementChecker,
    ExactlyOnceChecker,
    SafetyViolation,
    StateDigestChecker,
    ValidityChecker,
    committed_log_hash,
)
from phalanx.sim import (
    Behaviour,
    ConstantLatency,
    FilterOutgoing,
    MatrixLatency,
    NetworkModel,
    Silent,
    Simulation,
    SimulationError,
    SymbolicOracle,
    UniformLatency,
)
from phalanx.sim.network import Network
from phalanx.sim.summary import run_summary

DATA = Path(__file__).parent / "data"
SHARED = Path("/work/shared/data")
PRIMARY = 0
RETRY_S = 0.2
SYNC_S = 0.5


# -- the toy protocol -----------------------------------------------------------------


class Order(msgspec.Struct, tag=100, array_like=True, frozen=True):
    """The primary puts ``request`` at ``seq``."""

    seq: int
    request: Request


class Fetch(msgspec.Struct, tag=101, array_like=True, frozen=True):
    """A backup asks the primary for every order from ``first`` on."""

    first: int


class Ping(msgspec.Struct, tag=102, array_like=True, frozen=True):
    number: int


class Unregistered(msgspec.Struct, tag=103, array_like=True, frozen=True):
    """Not in TOY_MESSAGES: cannot cross the simulated wire."""

    x: int


TOY_MESSAGES = (Request, Reply, Order, Fetch, Ping)


def _order_key(seq: int) -> bytes:
    return b"order/" + seq.to_bytes(8, "big")


class ToyReplica:
    def __init__(self, replica_id: int, crypto: NodeCrypto, n: int, bugs: Iterable[str] = ()):
        self.replica_id = replica_id
        self.crypto = crypto
        self.n = n
        self.bugs = frozenset(bugs)
        self.orders: dict[int, Order] = {}
        self.ordered: dict[tuple[bytes, int], int] = {}
        self.results: dict[tuple[bytes, int], bytes] = {}
        self.executed_upto = 0
        self.next_seq = 1
        self.state = bytes(32)
        self.recovered = 0

    # ReplicaCore
    def recover(self, records: Iterable[tuple[bytes, bytes]]) -> None:
        decoder = msgspec.msgpack.Decoder(Order)
        for key, value in records:
            if key.startswith(b"order/"):
                order = decoder.decode(value)
                self._accept(order)
                self.recovered += 1
        self._execute_ready(emit=False)

    def start(self) -> list[Effect]:
        if self.replica_id == PRIMARY:
            return []
        return [Send(PRIMARY, Fetch(self.executed_upto + 1)), SetTimer("sync", SYNC_S)]

    def on_message(self, sender: Address, msg: Any) -> list[Effect]:
        src = sender.replica
        if isinstance(msg, Order) and src == PRIMARY:
            if msg.seq in self.orders:
                return []
            effects: list[Effect] = [Persist(_order_key(msg.seq), encode(msg))]
            self._accept(msg)
            if msg.seq > self.executed_upto + 1:
                effects.append(Send(PRIMARY, Fetch(self.executed_upto + 1)))
            return effects + self._execute_ready()
        if isinstance(msg, Fetch) and self.replica_id == PRIMARY:
            return [Send(src, self.orders[s]) for s in sorted(self.orders) if s >= msg.first]
        return [Dropped("unexpected", src)]

    def on_client_message(self, client: bytes, msg: Any) -> list[Effect]:
        if not isinstance(msg, Request) or msg.client != client:
            return [Dropped("unexpected", -1)]
        if not self.crypto.check_request(msg):
            return [Dropped("bad_auth", -1)]
        key = (msg.client, msg.timestamp)
        if key in self.results:
            reply = Reply(msg.client, 0, msg.timestamp, self.replica_id, self.results[key])
            resend: list[Effect] = [ToClient(client, reply)]
            if self.replica_id == PRIMARY:
                # Backups that missed the order (partition, loss) learn it again.
                resend.append(Broadcast(self.orders[self.ordered[key]]))
            return resend
        if self.replica_id != PRIMARY or (key in self.ordered and "double_order" not in self.bugs):
            return []
        effects: list[Effect] = []
        requests = [msg]
        if "double_order" in self.bugs:
            requests.append(msg)
        if "phantom" in self.bugs:
            requests.append(Request(msg.client, msg.timestamp + 1000, b"phantom"))
        for request in requests:
            order = Order(self.next_seq, request)
            self.next_seq += 1
            self._accept(order)
            effects += [Persist(_order_key(order.seq), encode(order)), Broadcast(order)]
        return effects + self._execute_ready()

    def on_timer(self, name: str) -> list[Effect]:
        # Backups poll the primary: on a lossy network the last order may be lost.
        return [Send(PRIMARY, Fetch(self.executed_upto + 1)), SetTimer("sync", SYNC_S)]

    def state_digest(self) -> bytes:
        return self.state

    # internals
    def _accept(self, order: Order) -> None:
        self.orders[order.seq] = order
        self.ordered.setdefault((order.request.client, order.request.timestamp), order.seq)
        self.next_seq = max(self.next_seq, order.seq + 1)

    def _execute_ready(self, emit: bool = True) -> list[Effect]:
        effects: list[Effect] = []
        while self.executed_upto + 1 in self.orders:
            order = self.orders[self.executed_upto + 1]
            self.executed_upto += 1
            request = order.request
            self.state = digest(self.state + request.op)
            result = b"ok:" + request.op
            self.results[(request.client, request.timestamp)] = result
            order_digest = digest(encode(order))
            if "fork_digest" in self.bugs:
                order_digest = digest(order_digest + bytes([self.replica_id]))
            root = self.state
            if "fork_root" in self.bugs:
                root = digest(root + bytes([self.replica_id]))
            if emit:
                effects.append(
                    Executed(0, order.seq, order_digest, [(request.client, request.timestamp)],
                             root)
                )
                effects.append(
                    ToClient(
                        request.client,
                        Reply(request.client, 0, request.timestamp, self.replica_id, result),
                    )
                )
        return effects


class ToyClient:
    def __init__(self, crypto: ClientCrypto, n: int):
        self.crypto = crypto
        self.client_id = crypto.public_key
        self.quorums = Quorums.for_n(n)
        self.timestamp = 0
        self.request: Request | None = None
        self.replies: dict[int, bytes] = {}

    def submit(self, op: bytes) -> tuple[int, list[ClientEffect]]:
        self.timestamp += 1
        unsigned = Request(self.client_id, self.timestamp, op)
        self.request = Request(
            self.client_id, self.timestamp, op, auth=self.crypto.authenticate(unsigned.digest())
        )
        self.replies = {}
        return self.timestamp, [Send(PRIMARY, self.request), SetTimer("retry", RETRY_S)]

    def on_message(self, src: int, msg: Any) -> list[ClientEffect]:
        if (
            not isinstance(msg, Reply)
            or self.request is None
            or msg.timestamp != self.request.timestamp
            or msg.replica != src
        ):
            return []
        self.replies[src] = msg.result
        matching = sum(1 for r in self.replies.values() if r == msg.result)
        if matching < self.quorums.reply:
            return []
        self.request = None
        return [CancelTimer("retry"), Completed(msg.timestamp, msg.result)]

    def on_timer(self, name: str) -> list[ClientEffect]:
        if self.request is None:
            return []
        return [Broadcast(self.request), SetTimer("retry", RETRY_S)]


def toy_ops(client_index: int, request_index: int) -> bytes:
    return f"c{client_index}r{request_index}".encode()


def make_toy(
    seed: int,
    n: int = 4,
    network: NetworkModel | None = None,
    bugs: dict[int, set[str]] | None = None,
    **kwargs: Any,
) -> Simulation:
    bugs = bugs or {}
    return Simulation(
        seed,
        n,
        lambda i, crypto: ToyReplica(i, crypto, n, bugs.get(i, ())),
        lambda crypto: ToyClient(crypto, n),
        network or NetworkModel(latency=UniformLatency(0.001, 0.01)),
        messages=TOY_MESSAGES,
        **kwargs,
    )


def scenario_fingerprint(seed: int) -> tuple[Any, ...]:
    """A lossy run with a crash and restart; everything a replay must reproduce."""
    net = NetworkModel(latency=UniformLatency(0.001, 0.02), drop=0.05, duplicate=0.05)
    sim = make_toy(seed, network=net)
    sim.add_clients(3, toy_ops, 15)
    sim.crash(2, at=0.05)
    sim.restart(2, at=0.3)
    sim.run(until=20.0, stop_when=sim.all_clients_done)
    return (
        sim.trace_hash(),
        tuple(sim.committed_log_hash(r) for r in range(sim.n)),
        tuple(round(x, 12) for x in sim.latencies()),
        tuple(c.hex() for c in sim.client_ids),
        sim.events_processed,
    )


def finish(sim: Simulation, limit: float = 30.0, settle: float = 1.0) -> None:
    """Run until every client is done, then let stragglers catch up."""
    sim.run(until=limit, stop_when=sim.all_clients_done)
    assert sim.all_clients_done(), sim.liveness_report()
    sim.run(until=sim.now + settle)


# -- probe cores for the network ------------------------------------------------------


class Probe:
    """Replica 0 sends ``count`` numbered pings to replica 1, ``interval`` apart (all in
    its first step when 0); every replica records what arrives and when."""

    def __init__(self, replica_id: int, clock: Callable[[], float], count: int,
                 interval: float = 0.0):
        self.replica_id = replica_id
        self.clock = clock
        self.count = count
        self.interval = interval
        self.sent = 0
        self.received: list[tuple[int, float]] = []
        self.timer_fired: list[tuple[str, float]] = []

    def recover(self, records: Iterable[tuple[bytes, bytes]]) -> None:
        pass

    def start(self) -> list[Effect]:
        if self.replica_id != 0:
            return []
        if self.interval == 0:
            self.sent = self.count
            return [Send(1, Ping(k)) for k in range(self.count)]
        return [SetTimer("tick", self.interval)]

    def on_message(self, src: Address, msg: Any) -> list[Effect]:
        self.received.append((msg.number, self.clock()))
        return []

    def on_client_message(self, client: bytes, msg: Any) -> list[Effect]:
        return []

    def on_timer(self, name: str) -> list[Effect]:
        self.timer_fired.append((name, self.clock()))
        if name != "tick" or self.sent >= self.count:
            return []
        self.sent += 1
        return [Send(1, Ping(self.sent - 1)), SetTimer("tick", self.interval)]

    def state_digest(self) -> bytes:
        return bytes(32)


def make_probe_sim(
    seed: int, network: NetworkModel, count: int, interval: float = 0.0, n: int = 2, **kw: Any
) -> Simulation:
    holder: list[Simulation] = []
    sim = Simulation(
        seed,
        n,
        lambda i, crypto: Probe(i, lambda: holder[0].now, count, interval),
        lambda crypto: ToyClient(crypto, n),
        network,
        messages=TOY_MESSAGES,
        **kw,
    )
    holder.append(sim)
    return sim


def received(sim: Simulation, replica: int = 1) -> list[tuple[int, float]]:
    core = sim.replica(replica)
    assert isinstance(core, Probe)
    return core.received


# -- determinism ----------------------------------------------------------------------


def test_same_seed_replays_the_identical_trace_logs_and_latencies():
    first = scenario_fingerprint(11)
    assert first == scenario_fingerprint(11)
    assert first[2], "the scenario completed requests"


def test_different_seeds_give_different_timing():
    a, b = scenario_fingerprint(11), scenario_fingerprint(12)
    assert a[0] != b[0]
    assert a[2] != b[2]
    assert a[3] != b[3], "client ids are derived from the seed"


def test_replay_does_not_depend_on_python_hash_randomisation():
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import test_sim_engine as t; "
        "print(t.scenario_fingerprint(5))"
    )
    outputs = set()
    for hash_seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        proc = subprocess.run(
            [sys.executable, "-c", code, str(Path(__file__).parent)],
            env=env, capture_output=True, text=True, timeout=60, check=True,
        )
        outputs.add(proc.stdout)
    assert len(outputs) == 1


def test_trace_records_events_when_asked():
    sim = make_toy(3, record_trace=True)
    sim.add_clients(1, toy_ops, 2)
    finish(sim)
    assert sim.trace is not None
    assert sim.trace[0].endswith("start 0")
    assert any(" deliver 4->0 Request" in line for line in sim.trace)
    assert any(" completed 4 ts=2" in line for line in sim.trace)


# -- closed-loop clients, effects and results -----------------------------------------


def test_closed_loop_clients_complete_every_request_and_replicas_agree():
    sim = make_toy(1)
    ids = sim.add_clients(3, toy_ops, 10, think_time=0.01)
    finish(sim)
    assert all(len(c) == 32 for c in ids)
    assert len(sim.completed()) == 30
    done = sim.completed(1)
    assert [d.timestamp for d in done] == list(range(1, 11))
    assert done[0].result == b"ok:c1r0"
    # Closed loop: each request is submitted only after the previous one completed.
    for before, after in itertools.pairwise(done):
        assert after.submitted_at >= before.completed_at + 0.01 - 1e-12
    assert all(lat > 0 for lat in sim.latencies())
    hashes = {sim.committed_log_hash(r) for r in range(4)}
    assert len(hashes) == 1
    assert len(sim.executed_log(0)) == 30
    assert sim.liveness_report().startswith("all 3 clients done")
    summary = run_summary(sim)
    assert summary["completed"] == 30 and summary["stuck_clients"] == 0


def test_the_run_summary_reports_nearest_rank_percentiles():
    """p50 of 20 latencies is the 10th smallest, as everywhere else phalanx reports one
    (the simulator's digest once took the sample after the rank: the 11th)."""
    sim = make_toy(3)
    sim.add_clients(2, toy_ops, 10)
    finish(sim)
    latencies = sorted(sim.latencies())
    assert len(set(latencies)) == 20
    reported = run_summary(sim)["latency_s"]
    assert reported["p50"] == latencies[9] == percentile(latencies, 50)
    assert reported["p90"] == latencies[17]
    assert reported["p99"] == latencies[19]


def test_wire_round_trip_hands_each_receiver_a_decoded_copy():
    seen: dict[str, list[Any]] = {"wire": [], "objects": []}

    class Spy(Behaviour):
        def __init__(self, key: str):
            self.key = key

        def on_deliver(self, sim: Simulation, src: Any, msg: Any) -> bool | None:
            seen[self.key].append(msg)
            return None

    sent = Ping(7)

    def run(wire: bool, key: str) -> Simulation:
        sim = Simulation(
            0, 2,
            lambda i, c: _OneShot(i, sent),
            lambda crypto: ToyClient(crypto, 2),
            messages=TOY_MESSAGES if wire else None,
            wire=wire,
        )
        sim.set_byzantine(1, Spy(key))
        sim.run()
        return sim

    sim = run(True, "wire")
    assert seen["wire"] == [sent] and seen["wire"][0] is not sent
    assert sim.node_stats(0).bytes_sent == len(encode(sent))
    run(False, "objects")
    assert seen["objects"][0] is sent


class _OneShot:
    def __init__(self, replica_id: int, msg: Any):
        self.replica_id = replica_id
        self.msg = msg

    def recover(self, records: Iterable[tuple[bytes, bytes]]) -> None:
        pass

    def start(self) -> list[Effect]:
        return [Send(1, self.msg)] if self.replica_id == 0 else []

    def on_message(self, src: Address, msg: Any) -> list[Effect]:
        return []

    def on_client_message(self, client: bytes, msg: Any) -> list[Effect]:
        return []

    def on_timer(self, name: str) -> list[Effect]:
        return []

    def state_digest(self) -> bytes:
        return b""


def test_a_message_type_missing_from_the_wire_union_fails_loudly():
    sim = Simulation(
        0, 2, lambda i, c: _OneShot(i, Unregistered(1)), lambda c: ToyClient(c, 2),
        messages=TOY_MESSAGES,
    )
    with pytest.raises(SimulationError, match="seed=0"):
        sim.run()


def test_wire_mode_needs_the_message_types():
    with pytest.raises(ValueError, match="messages"):
        Simulation(0, 2, lambda i, c: _OneShot(i, Ping(1)), lambda c: ToyClient(c, 2))


def test_set_timer_rearms_cancel_timer_cancels():
    class Timers(Probe):
        def start(self) -> list[Effect]:
            return [SetTimer("a", 1.0), SetTimer("a", 2.0), SetTimer("b", 1.0),
                    CancelTimer("b"), SetTimer("c", 0.5)]

    holder: list[Simulation] = []
    sim = Simulation(
        0, 1, lambda i, c: Timers(i, lambda: holder[0].now, 0), lambda c: ToyClient(c, 1),
        messages=TOY_MESSAGES,
    )
    holder.append(sim)
    sim.run()
    core = sim.replica(0)
    assert isinstance(core, Timers)
    assert core.timer_fired == [("c", 0.5), ("a", 2.0)]


class ForgingClient(ToyClient):
    """Sends requests whose authenticator it made up instead of computing it."""

    def submit(self, op: bytes) -> tuple[int, list[ClientEffect]]:
        timestamp, _ = super().submit(op)
        assert self.request is not None
        self.request = Request(self.client_id, timestamp, op, auth=[bytes(16)] * 4)
        return timestamp, [Send(PRIMARY, self.request), SetTimer("retry", RETRY_S)]


def test_forged_requests_are_dropped_and_counted_per_reason():
    sim = Simulation(
        2, 4, lambda i, c: ToyReplica(i, c, 4), lambda c: ForgingClient(c, 4),
        messages=TOY_MESSAGES,
    )
    sim.add_clients(1, toy_ops, 1)
    sim.run(until=1.0)
    assert sim.counters["dropped.bad_auth"] >= 4  # first send + retries to all replicas
    assert sim.executed_log(0) == []
    assert [s.pending_timestamp for s in sim.stuck_clients()] == [1]


# -- network: FIFO, reordering, loss, duplication, partitions, latency matrices -------


def test_links_are_fifo_without_reorder_even_with_random_latency():
    sim = make_probe_sim(4, NetworkModel(latency=UniformLatency(0.001, 0.1)), 300)
    sim.run()
    numbers = [k for k, _ in received(sim)]
    assert numbers == list(range(300))


def test_reorder_lets_messages_overtake():
    sim = make_probe_sim(4, NetworkModel(latency=UniformLatency(0.001, 0.1), reorder=0.05), 300)
    sim.run()
    numbers = [k for k, _ in received(sim)]
    assert sorted(numbers) == list(range(300))
    assert numbers != sorted(numbers)


def test_network_model_fifo_arrivals_never_decrease():
    import random

    net = Network(NetworkModel(latency=UniformLatency(0.0, 1.0), duplicate=0.5), random.Random(1))
    arrivals = [t for i in range(500) for t in net.transmit(0, 1, i * 0.001)]
    assert arrivals == sorted(arrivals)
    assert len(arrivals) > 500


def test_drop_loses_messages_and_counts_them():
    sim = make_probe_sim(5, NetworkModel(drop=0.25), 400)
    sim.run()
    numbers = [k for k, _ in received(sim)]
    dropped = sim.network.counters["net.dropped"]
    assert 50 < dropped < 150
    assert len(numbers) == 400 - dropped
    assert numbers == sorted(set(numbers))


def test_duplicate_delivers_some_messages_twice():
    sim = make_probe_sim(6, NetworkModel(duplicate=0.25), 400)
    sim.run()
    numbers = [k for k, _ in received(sim)]
    duplicated = sim.network.counters["net.duplicated"]
    assert 50 < duplicated < 150
    assert len(numbers) == 400 + duplicated
    assert set(numbers) == set(range(400))


def test_toy_protocol_survives_loss_and_duplication():
    net = NetworkModel(latency=UniformLatency(0.001, 0.01), drop=0.1, duplicate=0.1, reorder=0.01)
    sim = make_toy(8, network=net)
    sim.add_clients(4, toy_ops, 10)
    finish(sim)
    assert len({sim.committed_log_hash(r) for r in range(4)}) == 1


def test_partition_cuts_links_until_it_heals():
    sim = make_probe_sim(7, NetworkModel(latency=ConstantLatency(0.01)), 40, interval=0.1)
    sim.partition([[0], [1]], at=1.0, heal_at=2.0)
    sim.run()
    arrivals = [t for _, t in received(sim)]
    assert not any(1.0 <= t <= 2.0 for t in arrivals)
    assert any(t < 1.0 for t in arrivals) and any(t > 2.0 for t in arrivals)
    assert sim.network.counters["net.partitioned"] >= 9


def test_partition_drops_messages_already_in_flight():
    sim = make_probe_sim(7, NetworkModel(latency=ConstantLatency(0.5)), 1)
    sim.partition([[0], [1]], at=0.2, heal_at=5.0)
    sim.run()
    assert received(sim) == []
    assert sim.network.counters["net.partitioned_in_flight"] == 1


def test_isolated_primary_stalls_clients_until_the_partition_heals():
    sim = make_toy(9)
    sim.add_clients(2, toy_ops, 5)
    sim.partition([[0], [1, 2, 3]], at=0.0, heal_at=3.0)
    sim.run(until=2.9)
    stuck = sim.stuck_clients()
    assert [s.client_index for s in stuck] == [0, 1]
    assert stuck[0].pending_timestamp == 1 and stuck[0].waiting_since == 0.0
    assert "2 of 2 clients stuck" in sim.liveness_report()
    finish(sim)
    assert all(d.completed_at > 3.0 for d in sim.completed())


def test_latency_matrix_parses_the_small_slice():
    matrix = LatencyMatrix.from_csv(DATA / "latency_small.csv")
    assert matrix.regions == ("eu-west-1", "us-east-1", "ap-northeast-1")
    assert matrix.rtt_ms("eu-west-1", "us-east-1") == 69.6
    assert matrix.rtt_ms("ap-northeast-1", "eu-west-1") == 201.1
    assert matrix.rtt_ms("us-east-1", "us-east-1") == 5.3
    assert matrix.one_way_s("eu-west-1", "ap-northeast-1") == pytest.approx(0.1005)


AZURE_STYLE = """Source,East US,West Europe,Japan East
East US,,81,
West Europe,82,,231
Japan East,155,229,
"""


def test_latency_matrix_azure_style_header_empty_diagonal_and_missing_direction():
    matrix = LatencyMatrix.from_csv_text(AZURE_STYLE, same_region_rtt_ms=0.4)
    assert matrix.rtt_ms("East US", "East US") == 0.4
    assert matrix.rtt_ms("East US", "West Europe") == 81
    assert matrix.rtt_ms("East US", "Japan East") == 155  # falls back to the reverse
    assert LatencyMatrix.from_csv_text(AZURE_STYLE).rtt_ms("Japan East", "Japan East") == 0.5


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("x,a,b\na,,1\nb,zz,\n", "3: b -> a: not a number"),
        ("x,a,b\na,,1\nb,1\n", "1 values for 2 destinations"),
        ("x,a,b\na,,1\n", "not square"),
        ("x,a,b\na,,-1\nb,1,\n", "bad RTT"),
        ("x,a\n", "header row and at least one"),
    ],
)
def test_latency_matrix_rejects_malformed_csv(text: str, message: str):
    with pytest.raises(ValueError, match=message):
        LatencyMatrix.from_csv_text(text)


def test_matrix_latency_places_nodes_in_regions_and_delays_half_the_rtt():
    matrix = LatencyMatrix.from_csv(DATA / "latency_small.csv")
    regions = ["eu-west-1", "us-east-1", "ap-northeast-1"]
    sim = make_probe_sim(0, NetworkModel(latency=MatrixLatency(matrix, regions)), 1, n=3)
    sim.run()
    assert received(sim) == [(0, pytest.approx(0.0348))]
    with pytest.raises(ValueError, match="not in the latency matrix"):
        MatrixLatency(matrix, ["mars-1"])


def test_toy_protocol_over_a_wan_matrix():
    matrix = LatencyMatrix.from_csv(DATA / "latency_small.csv")
    regions = ["eu-west-1", "us-east-1", "ap-northeast-1", "eu-west-1"]
    sim = make_toy(3, network=NetworkModel(latency=MatrixLatency(matrix, regions)))
    sim.add_clients(2, toy_ops, 3)  # client endpoints 4, 5: eu-west-1, us-east-1
    finish(sim)
    # Client 0 sits with the primary; it needs a second reply, from replica 3 (same
    # region): request 1.45 ms + order 1.45 ms + reply 1.45 ms.
    assert sim.completed(0)[0].latency == pytest.approx(3 * 0.00145)


@pytest.mark.skipif(not SHARED.exists(), reason="shared data not present")
@pytest.mark.parametrize(
    ("folder", "regions", "pair", "rtt"),
    [
        ("latency_aws_cloudping_p50_1y_2025", 32, ("eu-west-1", "us-east-1"), 69.6),
        ("latency_azure_microsoft_published", 51, ("West US", "West US 2"), 25),
    ],
)
def test_latency_matrix_parses_the_published_matrices(folder, regions, pair, rtt):
    matrix = LatencyMatrix.from_csv(SHARED / folder / "rtt_matrix_ms.csv")
    assert len(matrix.regions) == regions
    assert matrix.rtt_ms(*pair) == rtt
    usable = list(matrix.regions)
    while missing := matrix.missing_pairs(usable):  # drop the region with most gaps
        usable.remove(Counter(r for p in missing for r in p).most_common(1)[0][0])
    assert len(usable) >= 30
    MatrixLatency(matrix, usable)  # every pair resolves
    if len(usable) < regions:
        with pytest.raises(ValueError, match="no RTT for"):
            MatrixLatency(matrix, matrix.regions)


# -- crash and restart ----------------------------------------------------------------


def test_crashed_replica_recovers_from_its_durable_store_and_catches_up():
    sim = make_toy(10)
    sim.add_clients(2, toy_ops, 20)
    sim.crash(2, at=0.05)
    sim.restart(2, at=0.3)
    sim.run(until=0.2)
    assert not sim.is_alive(2) and sim.replica(2) is None
    persisted = len(sim.durable_store(2))
    assert persisted > 0
    finish(sim)
    core = sim.replica(2)
    assert isinstance(core, ToyReplica)
    assert core.recovered == persisted
    assert sim.counters["sim.crashes"] == 1 and sim.counters["sim.restarts"] == 1
    assert len({sim.committed_log_hash(r) for r in range(4)}) == 1
    assert len(sim.executed_log(2)) == 40


def test_crashed_replica_loses_timers_and_inbound_messages():
    sim = make_probe_sim(1, NetworkModel(latency=ConstantLatency(0.05)), 30, interval=0.1)
    sim.crash(1, at=1.0)
    sim.restart(1, at=2.0)
    sim.crash(0, at=1.5)
    sim.run()
    core0 = sim.replica(0)
    assert core0 is None  # never restarted: its "tick" timer died with it
    assert sim.counters["sim.to_crashed"] >= 4
    arrivals = [t for _, t in received(sim)]
    assert arrivals == []  # the restarted core is fresh and 0 stopped sending at 1.5


def test_messages_to_an_earlier_incarnation_are_lost():
    sim = make_probe_sim(1, NetworkModel(latency=ConstantLatency(0.5)), 1)
    sim.crash(1, at=0.1)
    sim.restart(1, at=0.2)
    sim.run()
    assert received(sim) == []
    assert sim.counters["sim.to_crashed"] == 1


# -- Byzantine hooks ------------------------------------------------------------------


def test_silent_replica_sends_nothing_and_clients_still_finish():
    sim = make_toy(12)
    sim.set_byzantine(3, Silent())
    sim.add_clients(2, toy_ops, 5)
    finish(sim)
    assert sim.node_stats(3).msgs_sent == 0
    assert len(sim.executed_log(3)) == 10  # it listens and executes
    assert sim.byzantine == (3,)


def test_equivocating_primary_is_caught_by_agreement():
    def equivocate(dest: Any, msg: Any) -> list[Any]:
        if isinstance(msg, Order) and dest == 1:
            req = msg.request
            evil = Request(req.client, req.timestamp, b"evil", auth=req.auth)
            return [Order(msg.seq, evil)]
        return [msg]

    sim = make_toy(13)
    sim.set_byzantine(0, FilterOutgoing(equivocate))
    sim.add_clients(1, toy_ops, 3)
    with pytest.raises(SafetyViolation, match=r"agreement violated .*seed=13") as caught:
        sim.run(until=5.0)
    assert "(instance=0, seq=1)" in str(caught.value)


def test_byzantine_replicas_are_excluded_from_the_checkers():
    sim = make_toy(14, bugs={3: {"fork_digest", "fork_root"}})
    sim.set_byzantine(3, Behaviour())
    sim.add_clients(1, toy_ops, 5)
    finish(sim)  # no SafetyViolation
    assert sim.correct_replicas == [0, 1, 2]


def test_byzantine_crypto_signs_for_colluders_only():
    sim = make_toy(15)
    sim.set_byzantine(2, Behaviour())
    sim.set_byzantine(3, Behaviour())
    crypto = sim.byzantine_crypto(2)
    sig = crypto.sign_as(3, b"data")
    assert crypto.verify(3, b"data", sig)
    with pytest.raises(PermissionError):
        crypto.sign_as(0, b"data")
    with pytest.raises(PermissionError):
        sim.byzantine_crypto(0)


def test_a_byzantine_behaviour_can_inject_messages_and_hide_inputs():
    class Forger(Behaviour):
        def on_deliver(self, sim: Simulation, src: Any, msg: Any) -> bool | None:
            sim.inject(0, 1, Ping(42))
            return False  # the core never sees what arrives

    sim = make_probe_sim(3, NetworkModel(), 1, n=2)
    sim.set_byzantine(0, Forger())
    sim.call_at(0.0, lambda s: s.inject(0, 0, Ping(1)))
    sim.run()
    assert [k for k, _ in received(sim)] == [0, 42]
    assert received(sim, 0) == []
    with pytest.raises(PermissionError):
        sim.inject(1, 0, Ping(2))


# -- checkers: each fires on a deliberately broken protocol ---------------------------


@pytest.mark.parametrize(
    ("bugs", "property_name"),
    [
        ({2: {"fork_digest"}}, "agreement"),
        ({2: {"fork_root"}}, "state-digests"),
        ({0: {"double_order"}}, "exactly-once"),
        ({0: {"phantom"}}, "validity"),
    ],
)
def test_checker_fires_on_broken_toy(bugs: dict[int, set[str]], property_name: str):
    sim = make_toy(16, bugs=bugs)
    sim.add_clients(1, toy_ops, 3)
    with pytest.raises(SafetyViolation) as caught:
        sim.run(until=5.0)
    violation = caught.value
    assert violation.property_name == property_name
    assert violation.seed == 16 and violation.time == sim.now
    assert "seed=16" in str(violation) and "t=" in str(violation)


def _executed(seq: int, requests: list[tuple[bytes, int]], digest_: bytes = b"d",
              root: bytes = b"r") -> Executed:
    return Executed(0, seq, digest_, requests, root)


def test_agreement_checker_compares_request_lists_under_one_digest():
    checker = AgreementChecker()
    checker.on_executed(0, 0, _executed(1, [(b"c", 1)]))
    checker.on_executed(1, 0, _executed(1, [(b"c", 1)]))
    with pytest.raises(SafetyViolation, match="different request lists"):
        checker.on_executed(2, 0, _executed(1, [(b"c", 2)]))


def test_state_digest_checker():
    checker = StateDigestChecker()
    checker.on_executed(0, 0, _executed(1, [], root=b"a"))
    with pytest.raises(SafetyViolation, match="state digest"):
        checker.on_executed(1, 0, _executed(1, [], root=b"b"))


def test_exactly_once_allows_replay_after_restart_but_not_a_second_slot():
    checker = ExactlyOnceChecker()
    checker.on_executed(0, 0, _executed(1, [(b"c", 1)]))
    checker.on_executed(0, 1, _executed(1, [(b"c", 1)]))  # replay in a new incarnation
    with pytest.raises(SafetyViolation, match="twice without restarting"):
        checker.on_executed(0, 1, _executed(1, [(b"c", 1)]))
    with pytest.raises(SafetyViolation, match="again at"):
        checker.on_executed(0, 1, _executed(2, [(b"c", 1)]))
    with pytest.raises(SafetyViolation, match="twice in the batch"):
        checker.on_executed(1, 0, _executed(3, [(b"c", 5), (b"c", 5)]))


def test_validity_checker():
    checker = ValidityChecker()
    checker.on_submitted(b"c", 1)
    checker.on_executed(0, 0, _executed(1, [(b"c", 1)]))
    with pytest.raises(SafetyViolation, match="never submitted"):
        checker.on_executed(0, 0, _executed(2, [(b"c", 2)]))


def test_committed_log_hash_chains_order_and_content():
    a, b = _executed(1, [], b"x"), _executed(2, [], b"y")
    assert committed_log_hash([a, b]) == committed_log_hash([a, b])
    assert committed_log_hash([a, b]) != committed_log_hash([b, a])
    assert committed_log_hash([]) == bytes(32).hex()


# -- symbolic crypto ------------------------------------------------------------------


def test_symbolic_crypto_is_unforgeable_and_never_raises():
    import random

    oracle = SymbolicOracle(random.Random(1), 4)
    r0, r1 = oracle.node_crypto(0), oracle.node_crypto(1)
    sig = r0.sign(b"m")
    assert r1.verify(0, b"m", sig)
    assert not r1.verify(1, b"m", sig)
    assert not r1.verify(0, b"other", sig)
    assert not r1.verify(7, b"m", sig)
    assert not r1.verify(0, b"m", "junk")  # type: ignore[arg-type]
    with pytest.raises(PermissionError):
        r1.sign_as(0, b"m")

    client = oracle.new_client()
    request = Request(client.public_key, 1, b"op")
    signed = Request(request.client, 1, b"op", auth=client.authenticate(request.digest()))
    assert len(signed.auth) == 4
    assert all(oracle.node_crypto(j).check_request(signed) for j in range(4))
    tampered = Request(request.client, 1, b"op2", auth=signed.auth)
    assert not r0.check_request(tampered)
    assert not r0.check_request(Request(b"stranger", 1, b"op", auth=signed.auth))
    assert not r1.check_request(Request(request.client, 1, b"op", signed.auth[:1]))
    assert not r0.check_request(Request(request.client, 1, b"op", [None]))  # type: ignore[list-item]
