"""The replica driver: recovery, group commit (persist before send, one write per loop
iteration), timers, observations, contained core exceptions, fail-stop on storage errors."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from typing import Any

import msgspec
import pytest

from phalanx.core.address import Address
from phalanx.core.effects import (
    Broadcast,
    CancelTimer,
    Dropped,
    Executed,
    Persist,
    Send,
    SetTimer,
    ToClient,
)
from phalanx.core.messages import Reply, Request
from phalanx.protocols.pbft.messages import Commit, Prepare
from phalanx.runtime import loop_factory
from phalanx.runtime.metrics import Metrics
from phalanx.runtime.node import ReplicaDriver

N = 4
CLIENT = b"c" * 32


def run(main: Coroutine[Any, Any, None]) -> None:
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(asyncio.wait_for(main, 10))


class Log:
    """One ordered record of what reached the disk and the network."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []


class FakeStore:
    def __init__(self, log: Log, records: dict[bytes, bytes] | None = None) -> None:
        self.log = log
        self.data = dict(records or {})
        self.fail = False

    def write(self, records: list[tuple[bytes, bytes | None]]) -> None:
        if self.fail:
            raise OSError("disk full")
        for key, value in records:
            if value is None:
                self.data.pop(key, None)
            else:
                self.data[key] = value
        self.log.events.append(("write", list(records)))

    def items(self, skip: tuple[bytes, ...] = ()) -> Iterator[tuple[bytes, bytes]]:
        return iter(sorted((k, v) for k, v in self.data.items() if not k.startswith(skip)))


class FakeTransport:
    peer_count = N - 1
    me = Address(0)

    def __init__(self, log: Log) -> None:
        self.log = log
        self.on_replica_message: Any = None
        self.on_client_message: Any = None

    def send(self, dest: int, data: bytes) -> None:
        self.log.events.append(("send", dest, data))

    def broadcast(self, data: bytes) -> None:
        self.log.events.append(("broadcast", data))

    def send_client(self, client: bytes, data: bytes) -> None:
        self.log.events.append(("client", client, data))


class EchoCore:
    """Persists what it sees and answers it; seq 666 makes it raise."""

    replica_id = 0

    def __init__(self) -> None:
        self.recovered: list[tuple[bytes, bytes]] | None = None
        self.timers: list[str] = []
        self.started = False

    def recover(self, records: Any) -> None:
        assert not self.started, "recover must come before start"
        self.recovered = list(records)

    def start(self) -> list[Any]:
        self.started = True
        return [Persist(b"started", b"1"), Broadcast(Commit(0, 0, 0, b"s" * 32))]

    def on_message(self, src: int, msg: Any) -> list[Any]:
        if msg.seq == 666:
            raise RuntimeError("core bug")
        seq = msg.seq.to_bytes(8, "big")
        return [
            Persist(b"seen/" + seq, msgspec.msgpack.encode(src)),
            Send(src, Commit(0, 0, msg.seq, msg.digest)),
            Executed(0, msg.seq, msg.digest, [(CLIENT, msg.seq)], b"r" * 32),
        ]

    def on_client_message(self, client: bytes, msg: Any) -> list[Any]:
        return [
            Persist(b"req/" + client, msg.op),
            ToClient(client, Reply(client, 0, msg.timestamp, 0, msg.op)),
            Dropped("duplicate_request", -1),
        ]

    def on_timer(self, name: str) -> list[Any]:
        self.timers.append(name)
        return []

    def state_root(self) -> bytes:
        return b"r" * 32


class TimerCore(EchoCore):
    def on_message(self, src: int, msg: Any) -> list[Any]:
        if msg.seq == 1:
            return [SetTimer("view", 0.05), SetTimer("batch", 0.01)]
        if msg.seq == 2:
            return [SetTimer("view", 0.2)]  # re-arm replaces the pending one
        return [CancelTimer("batch")]


def make(core: Any = None, records: dict[bytes, bytes] | None = None, store: bool = True):
    log = Log()
    fake_store = FakeStore(log, records) if store else None
    driver = ReplicaDriver(
        core or EchoCore(), FakeTransport(log), fake_store, Metrics(0)  # type: ignore[arg-type]
    )
    return driver, log, fake_store


def prepare(seq: int) -> Prepare:
    return Prepare(0, 0, seq, b"d" * 32)


def decode(data: bytes) -> Any:
    return msgspec.msgpack.decode(data, type=Commit | Reply)


def test_start_recovers_from_stored_records_in_key_order_first() -> None:
    async def main() -> None:
        records = {b"b": b"2", b"a": b"1"}
        driver, log, _ = make(records=records)
        driver.start()
        assert driver.core.recovered == [(b"a", b"1"), (b"b", b"2")]
        await driver.drained()
        assert log.events[0] == ("write", [(b"started", b"1")])
        assert log.events[1][0] == "broadcast"
        assert driver.metrics.get("msgs_sent:Commit") == N - 1

    run(main())


def test_fresh_replica_is_not_asked_to_recover() -> None:
    async def main() -> None:
        driver, _, _ = make()
        driver.start()
        assert driver.core.recovered is None and driver.core.started

    run(main())


def test_inputs_of_one_iteration_are_persisted_in_one_write_before_any_send() -> None:
    async def main() -> None:
        driver, log, store = make()
        driver.start()
        await driver.drained()
        log.events.clear()
        for seq in range(1, 11):
            driver.on_replica_message(seq % N, prepare(seq))
        driver.on_client_message(CLIENT, Request(CLIENT, 1, b"op"))
        assert log.events == []  # nothing happens before the flush
        await driver.drained()
        kinds = [e[0] for e in log.events]
        assert kinds == ["write"] + ["send"] * 10 + ["client"]
        assert len(log.events[0][1]) == 11
        assert store is not None and store.data[b"req/" + CLIENT] == b"op"
        sends = [(dest, decode(data).seq) for _, dest, data in log.events[1:11]]
        assert sends == [(seq % N, seq) for seq in range(1, 11)]
        assert decode(log.events[-1][2]) == Reply(CLIENT, 0, 1, 0, b"op")
        assert driver.metrics.get("store_writes") == 2  # start + this iteration

    run(main())


def test_observations_feed_metrics_and_status() -> None:
    async def main() -> None:
        driver, _, _ = make()
        driver.start()
        driver.on_replica_message(1, prepare(7))
        driver.on_client_message(CLIENT, Request(CLIENT, 1, b"op"))
        await driver.drained()
        status = driver.status()
        assert driver.last_executed_seq == 7
        assert status["requests_executed"] == 1 and status["batches_executed"] == 1
        # The executed seq and the state root are the core's (ReplicaServer.describe):
        # one field per fact in GET /status.
        assert not {"last_executed_seq", "state_root", "executed_seq"} & set(status)
        assert driver.metrics.get("dropped_duplicate_request") == 1
        assert driver.metrics.get("msgs_sent:Reply") == 1
        assert 'phalanx_msgs_sent{replica="0",type="Commit"}' in driver.metrics.render_prometheus()

    run(main())


def test_core_exception_is_contained_and_counted() -> None:
    async def main() -> None:
        driver, log, _ = make()
        driver.start()
        driver.on_replica_message(1, prepare(666))
        driver.on_replica_message(1, prepare(5))
        await driver.drained()
        assert driver.metrics.get("core_exceptions") == 1
        assert [decode(e[2]).seq for e in log.events if e[0] == "send"] == [5]
        assert driver.status()["running"]

    run(main())


def test_timers_fire_rearm_and_cancel() -> None:
    async def main() -> None:
        driver, _, _ = make(TimerCore())
        driver.start()
        driver.on_replica_message(1, prepare(1))  # arm view (50 ms) and batch (10 ms)
        driver.on_replica_message(1, prepare(3))  # cancel batch before it fires
        driver.on_replica_message(1, prepare(2))  # re-arm view to 200 ms
        await asyncio.sleep(0.1)
        assert driver.core.timers == []
        await asyncio.sleep(0.2)
        assert driver.core.timers == ["view"]

    run(main())


def test_store_failure_stops_the_replica_before_it_sends() -> None:
    async def main() -> None:
        fatal: list[BaseException] = []
        driver, log, store = make()
        driver.on_fatal = fatal.append
        driver.start()
        await driver.drained()
        log.events.clear()
        assert store is not None
        store.fail = True
        driver.on_replica_message(1, prepare(1))
        await driver.drained()
        assert log.events == []  # the Commit depended on the lost write: never sent
        assert isinstance(fatal[0], OSError) and driver.metrics.get("store_errors") == 1
        driver.on_replica_message(1, prepare(2))
        await driver.drained()
        assert log.events == [] and not driver.status()["running"]

    run(main())


def test_replica_without_a_store_still_sends() -> None:
    async def main() -> None:
        driver, log, _ = make(store=False)
        driver.start()
        driver.on_replica_message(2, prepare(4))
        await driver.drained()
        assert [e[0] for e in log.events] == ["broadcast", "send"]

    run(main())


def test_driver_installs_itself_as_the_transport_handler() -> None:
    driver, _, _ = make()
    assert driver.transport.on_replica_message == driver.on_replica_message
    assert driver.transport.on_client_message == driver.on_client_message


def test_close_flushes_pending_effects_and_ignores_later_input() -> None:
    async def main() -> None:
        driver, log, _ = make()
        driver.start()
        driver.on_replica_message(1, prepare(9))
        await driver.close()
        assert [e[0] for e in log.events] == ["write", "broadcast", "send"]
        driver.on_replica_message(1, prepare(10))
        await driver.drained()
        assert len(log.events) == 3

    run(main())


@pytest.mark.parametrize("records", [None, {b"x": b"y"}])
def test_real_lmdb_store_round_trip(tmp_path, records) -> None:
    lmdb_store = pytest.importorskip("phalanx.storage.lmdb_store")

    async def main() -> None:
        path = str(tmp_path / "db")
        store = lmdb_store.Store(path)
        if records:
            store.write(list(records.items()))
        core = EchoCore()
        driver = ReplicaDriver(core, FakeTransport(Log()), store, Metrics(0))  # type: ignore[arg-type]
        driver.start()
        driver.on_replica_message(1, prepare(3))
        await driver.drained()
        await driver.close()
        store.close()
        reopened = lmdb_store.Store(path)
        keys = [k for k, _ in reopened.items()]
        reopened.close()
        assert b"seen/" + (3).to_bytes(8, "big") in keys and b"started" in keys
        assert core.recovered == (sorted(records.items()) if records else None)

    run(main())


class LazyCore(EchoCore):
    """Marks its records lazy (like PBFT's commit marks): they must not hold sends back."""

    def on_message(self, src: int, msg: Any) -> list[Any]:
        seq = msg.seq.to_bytes(2, "big")
        return [Persist(b"lazy/" + seq, b"x", lazy=True), Send(src, Commit(0, 0, msg.seq, b""))]


def test_lazy_records_do_not_delay_sends_but_are_written_in_order() -> None:
    async def main() -> None:
        driver, log, store = make(LazyCore())
        driver.start()
        await driver.drained()
        log.events.clear()
        driver.on_replica_message(1, prepare(1))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert [e[0] for e in log.events] == ["send"]  # sent before anything was written
        driver.on_replica_message(1, prepare(2))
        await driver.drained()  # the deferred records reach the store within a few ms
        assert store is not None
        assert store.data[b"lazy/\x00\x01"] == b"x" and store.data[b"lazy/\x00\x02"] == b"x"
        writes = [e[1] for e in log.events if e[0] == "write"]
        assert [k for batch in writes for k, _ in batch] == [b"lazy/\x00\x01", b"lazy/\x00\x02"]

    run(main())


def test_a_primary_killed_before_its_proposals_reach_the_disk_restarts_fenced(monkeypatch):
    """Its PRE-PREPAREs are lazy (they ride with a later durable write), but the view it
    started in is written before anything leaves: so a primary killed right after
    proposing restarts from a non-empty store, recovers, and proposes nothing more in
    that view (another batch in the same slot would be equivocation)."""
    import random

    from phalanx.core.quorum import Quorums
    from phalanx.protocols.pbft.messages import PrePrepare
    from phalanx.protocols.pbft.replica import PbftReplica
    from phalanx.runtime import node as node_module
    from phalanx.sim.crypto import SymbolicOracle
    from phalanx.statemachine.kv import KVStore, encode_put

    monkeypatch.setattr(node_module, "encode", lambda msg: msg)  # keep message objects
    quorums = Quorums(N, 1)
    oracle = SymbolicOracle(random.Random(7), N)
    clients = [oracle.new_client() for _ in range(2)]

    def request(client: Any, op: bytes) -> Request:
        unsigned = Request(client.public_key, 1, op)
        return Request(client.public_key, 1, op, auth=client.authenticate(unsigned.digest()))

    log = Log()
    store = FakeStore(log)
    sent: list[Any] = []

    class Transport(FakeTransport):
        def broadcast(self, data: Any) -> None:
            sent.append(data)

    def replica() -> PbftReplica:
        return PbftReplica(0, quorums, oracle.node_crypto(0), KVStore)

    async def main() -> None:
        first = ReplicaDriver(replica(), Transport(log), store, Metrics(0))
        first.start()
        await first.drained()  # the start's own write is done
        req = request(clients[0], encode_put(b"k", b"A"))
        first.on_client_message(req.reply_to, req)
        await asyncio.sleep(0.002)
        assert [m.seq for m in sent if isinstance(m, PrePrepare)] == [1]
        first._running = False  # SIGKILL: nothing more runs, the deferred records are lost
        for handle in first._timers.values():
            handle.cancel()
        assert first._deferred_timer is not None
        first._deferred_timer.cancel()
        assert store.data, "the view record was written before the PRE-PREPARE left"
        core = replica()
        second = ReplicaDriver(core, Transport(log), store, Metrics(0))
        second.start()
        assert core.instance.fenced_view == 0
        req = request(clients[1], encode_put(b"k", b"B"))
        second.on_client_message(req.reply_to, req)
        await asyncio.sleep(0.002)
        second._running = False
        for handle in second._timers.values():
            handle.cancel()

    run(main())
    assert [(m.view, m.seq) for m in sent if isinstance(m, PrePrepare)] == [(0, 1)]
