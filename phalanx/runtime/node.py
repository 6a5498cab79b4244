"""The replica driver: runs one sans-I/O :class:`~phalanx.core.node.ReplicaCore` on real
sockets, timers and storage.

Group commit: every input of a loop iteration calls the core at once and appends the
effects to a pending list; one flush per iteration (``loop.call_soon``) then writes every
``Persist`` of the list in one store transaction (one fsync), and only then sends. So
nothing leaves the replica before the state it depends on is durable, and a burst of
messages costs one fsync, not one each. The write runs inline, on the loop: while it
syncs, input waits in the socket buffers and the next flush takes all of it (the group
grows with the disk's latency). A writer thread would let the loop work meanwhile, but
on a busy host its GIL hand-offs and wake-ups cost more than the overlap gains (measured:
about 8% fewer requests per second with fsync). Lazy records (those no send waits for)
ride along with the next write, or go on their own after ``DEFERRED_WRITE_DELAY``.

Timers are armed and cancelled as soon as the core asks (they are local, not visible to
anyone, so durability does not constrain them), which keeps "cancel" exact: a timer the
core cancelled never fires, even if its deadline passes before the flush.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from time import perf_counter_ns
from typing import Any, Protocol

from phalanx.core.address import Address
from phalanx.core.effects import (
    Broadcast,
    CancelTimer,
    Dropped,
    Effect,
    Executed,
    Persist,
    Send,
    SetTimer,
    ToClient,
)
from phalanx.core.messages import Replies, Reply, encode
from phalanx.core.node import ReplicaCore
from phalanx.measure.accounting import Accounting
from phalanx.runtime.metrics import Metrics
from phalanx.runtime.transport import Transport

log = logging.getLogger(__name__)

DEFERRED_WRITE_DELAY = 0.02
"""Seconds lazy records may wait for a write to ride along with."""

RECENT_DIGESTS = 10_000
"""Executed digests kept for /log (its largest range); older ones are forgotten."""

Outgoing = Persist | Send | Broadcast | ToClient
"""The effects a step leaves for the flush (the rest are carried out at once)."""


class Store(Protocol):
    """What the driver needs of :class:`phalanx.storage.lmdb_store.Store`."""

    def write(self, records: list[tuple[bytes, bytes | None]]) -> None: ...

    def items(self, skip: tuple[bytes, ...] = ()) -> Iterator[tuple[bytes, bytes]]: ...


class ReplicaDriver:
    """Feeds a replica core its inputs and carries out its effects.

    It installs itself as ``transport``'s message handlers. The caller starts the
    transport (``await transport.start(host, port)``) and calls :meth:`start`; it closes
    the transport and the store after :meth:`close`.

    A failing store write stops the driver (fail-stop): sending after a lost write could
    contradict what the replica will recover after a restart. ``on_fatal`` (if given) is
    then called with the error so the process can exit.
    """

    def __init__(
        self,
        core: ReplicaCore,
        transport: Transport,
        store: Store | None,
        metrics: Metrics,
        *,
        on_fatal: Callable[[BaseException], None] | None = None,
        accounting: Accounting | None = None,
    ) -> None:
        self.core = core
        # Per-type and per-phase costs (see measure/accounting.py); None: not measured.
        self.accounting = accounting
        self.transport = transport
        self.store = store
        self.metrics = metrics
        self.on_fatal = on_fatal
        self.fatal_error: BaseException | None = None
        self.last_executed_seq: int | None = None
        # Digests of recently executed seqs (instance 0), for cross-replica log checks.
        self._recent_digests: dict[int, bytes] = {}
        self._pending: list[Outgoing] = []
        self._flush_scheduled = False
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._deferred: list[tuple[bytes, bytes | None]] = []  # lazy records not yet written
        self._deferred_timer: asyncio.TimerHandle | None = None
        self._view: int | None = getattr(core, "view", None)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running = False
        me = transport.me
        assert me is not None
        self.me = me
        transport.on_replica_message = self.on_replica_message
        transport.on_client_message = self.on_client_message

    # lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Recover from the store (if it has records), then start the core. Call from
        inside the running event loop."""
        self._loop = asyncio.get_running_loop()
        if self.store is not None:
            # Records the core never recovers from (a ledger's blocks and tx index,
            # which grow with history) are not even read.
            records = list(self.store.items(tuple(getattr(self.core, "recovery_skip", ()))))
            if records:
                # Not contained: a replica that cannot rebuild its state must not run.
                self.core.recover(records)
                self.metrics.inc("recovered_records", len(records))
        self._running = True
        self._step("start", self.core.start)

    async def close(self) -> None:
        """Make pending effects durable and sent, cancel timers, ignore further input."""
        if self._running:
            self._flush()
            self._write_deferred()
        await self.drained()
        self._running = False
        if self._deferred_timer is not None:
            self._deferred_timer.cancel()
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        await asyncio.sleep(0)

    async def drained(self) -> None:
        """Wait until every effect produced so far is durable and sent (tests, shutdown)."""
        await asyncio.sleep(0)  # let a scheduled flush start
        while self._running and (
            self._pending or self._flush_scheduled or self._deferred
        ):
            await asyncio.sleep(0.0005)

    def status(self) -> dict[str, Any]:
        """What ``GET /status`` shows about the driver: whether it runs and what it
        executed since the process started (the executed seq and state root come from
        the core, which knows them across restarts)."""
        return {
            "replica": self.me.replica,
            "process": str(self.me),
            "running": self._running,
            "requests_executed": self.metrics.get("requests_executed"),
            "batches_executed": self.metrics.get("batches_executed"),
            "core_exceptions": self.metrics.get("core_exceptions"),
        }

    def executed_digests(self, first: int, last: int) -> dict[int, bytes]:
        """Digests of the executed seqs in ``first..last`` that are still remembered."""
        recent = self._recent_digests
        return {seq: recent[seq] for seq in range(first, last + 1) if seq in recent}

    # inputs -------------------------------------------------------------------------

    def on_replica_message(self, src: Address, msg: Any) -> None:
        """A message from the process at ``src`` (authenticated by its link)."""
        if self._running:
            if self.accounting is None:
                self._step("message", self.core.on_message, src, msg)
            else:
                self._timed_step(type(msg), "message", self.core.on_message, src, msg)

    def on_client_message(self, client: bytes, msg: Any) -> None:
        """A message from the client with public key ``client`` (authenticated link)."""
        if self._running:
            if self.accounting is None:
                self._step("client message", self.core.on_client_message, client, msg)
            else:
                self._timed_step(type(msg), "client message", self.core.on_client_message,
                                 client, msg)

    def _on_timer(self, name: str) -> None:
        self._timers.pop(name, None)
        if self._running:
            if self.accounting is None:
                self._step("timer", self.core.on_timer, name)
            else:
                self._timed_step("timer:" + name, "timer", self.core.on_timer, name)

    def _timed_step(self, kind: Any, what: str, call: Callable[..., list[Effect]],
                    *args: Any) -> None:
        """:meth:`_step`, its time charged to ``kind`` (execution time excluded: the
        state machine wrapper charges that to execution)."""
        acct = self.accounting
        assert acct is not None
        exec_before = acct.exec_ns
        start = perf_counter_ns()
        self._step(what, call, *args)
        acct.handled(kind, perf_counter_ns() - start - (acct.exec_ns - exec_before))

    def _step(self, what: str, call: Callable[..., list[Effect]], *args: Any) -> None:
        try:
            effects = call(*args)
        except Exception:
            # A core bug triggered by one input must not take the replica down: the input
            # is lost (as if dropped by the network), the replica carries on.
            n = int(self.metrics.get("core_exceptions")) + 1  # a count (int & int below)
            self.metrics.inc("core_exceptions")
            if n & (n - 1) == 0:  # log the 1st, 2nd, 4th, 8th... so a flood cannot fill disks
                log.exception("replica core raised on %s (%d so far)", what, n)
            return
        if effects:
            self._collect(effects)
        view = getattr(self.core, "view", None)
        if view != self._view:
            log.info("replica %s: view %s -> %s (after %s)", self.me, self._view,
                     view, what)
            self._view = view
            self.metrics.set("view", view or 0)

    # effects ------------------------------------------------------------------------

    def _collect(self, effects: list[Effect]) -> None:
        pending = self._pending
        for effect in effects:
            # ``type(effect) is``: one pointer compare, and (effects are final) mypy narrows it.
            if type(effect) is SetTimer:
                self._set_timer(effect.name, effect.delay)
            elif type(effect) is CancelTimer:
                handle = self._timers.pop(effect.name, None)
                if handle is not None:
                    handle.cancel()
            elif type(effect) is Dropped:
                self.metrics.inc("dropped_" + effect.reason)
            elif type(effect) is Executed:
                self._executed(effect)
            else:
                pending.append(effect)
        if pending and not self._flush_scheduled:
            self._flush_scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self._flush)

    def _set_timer(self, name: str, delay: float) -> None:
        old = self._timers.get(name)
        if old is not None:
            old.cancel()
        assert self._loop is not None
        self._timers[name] = self._loop.call_later(delay, self._on_timer, name)

    def _executed(self, effect: Executed) -> None:
        metrics = self.metrics
        metrics.inc("batches_executed")
        metrics.inc("requests_executed", len(effect.requests))
        if effect.instance == 0:
            recent = self._recent_digests
            recent[effect.seq] = effect.digest
            if len(recent) > RECENT_DIGESTS:
                del recent[next(iter(recent))]  # dicts keep insertion order: the oldest
        self.last_executed_seq = effect.seq
        metrics.set("last_executed_seq", effect.seq)

    def _flush(self) -> None:
        """Persist everything pending in one transaction, then send (see the module
        docstring): a send never overtakes the write of its own or of an earlier step."""
        self._flush_scheduled = False
        if not self._running or not self._pending:
            return
        effects = self._pending
        self._pending = []
        gating = False
        records: list[tuple[bytes, bytes | None]] = []
        for e in effects:
            if type(e) is Persist:
                records.append((e.key, e.value))
                gating = gating or not e.lazy
        if records and self.store is not None:
            if gating:
                if not self._write(records):
                    return
            else:
                # Nothing here waits for the disk: send now; the records ride along with
                # the next write, in order (or go on their own if none comes soon).
                self._deferred.extend(records)
                self._arm_deferred_flush()
        self._send(effects)

    def _write(self, records: list[tuple[bytes, bytes | None]]) -> bool:
        """Write the deferred lazy records, then ``records``, in one transaction; on a
        store error stop the replica (it must not send what it could not persist)."""
        if self._deferred:
            records = self._deferred + records
            self._deferred = []
        assert self.store is not None
        try:
            self.store.write(records)
        except Exception as e:
            self._fail(e)
            return False
        self.metrics.inc("store_writes")
        self.metrics.inc("store_records", len(records))
        return True

    def _arm_deferred_flush(self) -> None:
        if self._deferred_timer is None:
            assert self._loop is not None
            self._deferred_timer = self._loop.call_later(DEFERRED_WRITE_DELAY, self._write_deferred)

    def _write_deferred(self) -> None:
        if self._deferred_timer is not None:
            self._deferred_timer.cancel()  # when called early, by close()
            self._deferred_timer = None
        if self._deferred and self._running:
            self._write([])

    def _send(self, effects: list[Outgoing]) -> None:
        metrics = self.metrics
        transport = self.transport
        acct = self.accounting
        mark = perf_counter_ns() if acct is not None else 0
        # One encoding per message object, even if the core sends it to several replicas.
        encoded: dict[int, bytes] = {}
        replies: dict[bytes, list[Reply]] = {}
        for effect in effects:
            if type(effect) is ToClient and type(effect.msg) is Reply:
                replies.setdefault(effect.client, []).append(effect.msg)
                continue
            if type(effect) is Persist:
                continue
            msg = effect.msg
            data = encoded.get(id(msg))
            if data is None:
                data = encoded[id(msg)] = encode(msg)
            if type(effect) is Send:
                transport.send(effect.dest, data)
                copies = 1
            elif type(effect) is Broadcast:
                copies = self._broadcast(effect, data)
            else:  # ToClient
                transport.send_client(effect.client, data)
                copies = 1
            metrics.inc("msgs_sent", copies)
            metrics.inc("msgs_sent:" + type(msg).__name__, copies)
            if acct is not None:
                now = perf_counter_ns()
                acct.sent_msg(type(msg), copies, copies * len(data))
                acct.sending(type(msg), now - mark)
                mark = now
        for client, batch in replies.items():
            for chunk in _chunks(batch):
                reply = chunk[0] if len(chunk) == 1 else Replies(chunk)
                data = encode(reply)
                transport.send_client(client, data)
                if acct is not None:
                    acct.sent_msg(Reply, len(chunk), len(data))
            metrics.inc("msgs_sent", len(batch))
            metrics.inc("msgs_sent:Reply", len(batch))
        if acct is not None and replies:
            acct.sending(Reply, perf_counter_ns() - mark)

    def _broadcast(self, effect: Broadcast, data: bytes) -> int:
        """Send a Broadcast's ``data``; returns to how many processes."""
        me = self.me
        role = me.role if effect.role is None else effect.role
        partition = me.partition if effect.partition is None else effect.partition
        if role == me.role and partition == me.partition:
            self.transport.broadcast(data)  # to the links made for this at start
            return self.transport.peer_count
        copies = 0
        for replica in range(len(self.transport.replica_public_keys)):
            dest = Address(replica, role, partition)
            if dest != me:
                self.transport.send(dest, data)
                copies += 1
        return copies

    def _fail(self, error: BaseException) -> None:
        self.metrics.inc("store_errors")
        self.fatal_error = error
        log.critical("store write failed; stopping replica %s: %r", self.me, error)
        self._running = False
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        if self.on_fatal is not None:
            self.on_fatal(error)


REPLIES_BYTES = 1 << 20
"""Result bytes per Replies message: large results (GETs of big values) stay well under
the transport's frame limit."""


def _chunks(replies: list[Reply]) -> list[list[Reply]]:
    chunks: list[list[Reply]] = [[]]
    size = 0
    for reply in replies:
        size += len(reply.result)
        if chunks[-1] and size > REPLIES_BYTES:
            chunks.append([])
            size = len(reply.result)
        chunks[-1].append(reply)
    return chunks
