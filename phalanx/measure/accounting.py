"""Per-node cost accounting: where a replica's CPU and bytes go, by message type and by
the three phases of SMR — **data** (shipping and checking request payloads),
**consensus** (agreement messages, checkpoints, view changes, catch-up) and
**execution** (applying ordered batches to the state machine).

The protocol cores stay pure: the *driver* measures around the calls it makes
(``time.perf_counter_ns``), the transport counts bytes by decoded message type, and a
:class:`TimedStateMachine` wrapper (injected as the state-machine factory) times
``apply``. A message type's phase comes from the protocol's table (``ProtocolSpec.phases``).

What is measured, per node (monotonic counters, cheap enough for the hot path):

- ``recv[type] = [msgs, bytes]`` and ``sent[type] = [msgs, bytes]`` — payload bytes of
  decoded/encoded messages (without the 36-byte frame overhead);
- ``handler_ns[type]`` — wall time in the core handling one input of that type (execution
  excluded), timers counted under ``timer:<name>``;
- ``send_ns[type]`` — encoding and queueing the messages the core asked to send;
- ``exec_ns`` / ``exec_ops`` — time in ``StateMachine.apply`` (and checkpoint snapshots);
- ``io_ns`` — the transport's own work: reading and writing sockets, framing, MACs,
  decoding (everything in ``data_received`` and the write path that is not a handler).

:func:`phase_split` turns a snapshot into CPU per phase: handler and send times go to
the phase of their message type, execution time to ``execution``, and ``io_ns`` is
shared between phases in proportion to their traffic, counting each message plus each
started 1,500 bytes as one unit (per-packet costs dominate socket work). Whatever the
process spent beyond all that (event loop, HTTP, garbage collection, the storage thread)
is reported as ``other``.

The clocks are ``perf_counter_ns`` (62 ns a read here; a thread-CPU clock read costs
~750 ns, too much per message), so every phase figure is **wall-clock** time in that
work. On a saturated host a handler that is preempted looks longer than the CPU it used,
so when the accounted time exceeds the process's CPU over the window, :func:`phase_split`
scales every phase by the same factor (reported as ``wall_inflation``) so that the sum
equals the process CPU; the shares are then shares of wall-clock busy time (preemption
need not hit the phases alike) and ``other`` is unknown (``None``).
"""

from __future__ import annotations

from collections.abc import Mapping
from time import perf_counter_ns
from typing import Any, Final, Generic, TypeVar

from phalanx.statemachine.base import (
    BlockStateMachine,
    SealedBlock,
    StateMachine,
    StateMachineFactory,
)

PHASES: tuple[str, ...] = ("data", "consensus", "execution")

DEFAULT_PHASE = "consensus"
"""Phase of a timer a protocol's table does not name (the view-change and catch-up
clocks). Every message type must be named (a test checks every protocol's table)."""

PACKET_BYTES = 1500
"""Bytes counted as one unit of socket work when :func:`phase_split` shares ``io_ns``."""


class Accounting:
    """The counters of one node. Keys are message types (or timer names) as given; the
    snapshot names them. All methods are O(1) dict updates."""

    __slots__ = ("encoded", "exec_ns", "exec_ops", "handler_ns", "io_ns", "nested_ns", "phase_of",
                 "recv", "send_ns", "sent")

    def __init__(self, phase_of: Mapping[str, str] | None = None) -> None:
        self.phase_of: dict[str, str] = dict(phase_of or {})
        self.recv: dict[Any, list[int]] = {}
        self.sent: dict[Any, list[int]] = {}
        # Encodings per type: a broadcast is encoded once for all its copies.
        self.encoded: dict[Any, int] = {}
        self.handler_ns: dict[Any, int] = {}
        self.send_ns: dict[Any, int] = {}
        self.exec_ns = 0
        self.exec_ops = 0
        self.io_ns = 0
        # Handler plus execution time so far: the transport subtracts what ran nested
        # inside its own callbacks to get its own share.
        self.nested_ns = 0

    # recording (hot path) -----------------------------------------------------------

    def received(self, kind: Any, nbytes: int) -> None:
        entry = self.recv.get(kind)
        if entry is None:
            self.recv[kind] = [1, nbytes]
        else:
            entry[0] += 1
            entry[1] += nbytes

    def sent_msg(self, kind: Any, msgs: int, nbytes: int, encodings: int = 1) -> None:
        """``msgs`` messages of ``kind`` left, ``nbytes`` payload bytes in all, from
        ``encodings`` encodings (one for all the copies of a broadcast)."""
        encoded = self.encoded
        encoded[kind] = encoded.get(kind, 0) + encodings
        entry = self.sent.get(kind)
        if entry is None:
            self.sent[kind] = [msgs, nbytes]
        else:
            entry[0] += msgs
            entry[1] += nbytes

    def handled(self, kind: Any, ns: int) -> None:
        handler = self.handler_ns
        handler[kind] = handler.get(kind, 0) + ns
        self.nested_ns += ns

    def sending(self, kind: Any, ns: int) -> None:
        send = self.send_ns
        send[kind] = send.get(kind, 0) + ns

    def executed(self, ops: int, ns: int) -> None:
        self.exec_ns += ns
        self.exec_ops += ops
        self.nested_ns += ns

    # reading ------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Every counter, keyed by name (JSON-ready; what ``/status`` serves)."""
        return {
            "recv": {_name(k): list(v) for k, v in self.recv.items()},
            "sent": {_name(k): list(v) for k, v in self.sent.items()},
            "encoded": {_name(k): v for k, v in self.encoded.items()},
            "handler_ns": {_name(k): v for k, v in self.handler_ns.items()},
            "send_ns": {_name(k): v for k, v in self.send_ns.items()},
            "exec_ns": self.exec_ns,
            "exec_ops": self.exec_ops,
            "io_ns": self.io_ns,
            "phase_of": dict(self.phase_of),
        }

    def export(self, metrics: Any) -> None:
        """Copy the counters into a :class:`~phalanx.runtime.metrics.Metrics` registry
        (labelled families), so ``/metrics`` serves them in the Prometheus format."""
        snap = self.snapshot()
        for name, (msgs, nbytes) in snap["recv"].items():
            metrics.set_counter("msgs_recv_by_type:" + name, msgs)
            metrics.set_counter("bytes_recv_by_type:" + name, nbytes)
        for name, (msgs, nbytes) in snap["sent"].items():
            metrics.set_counter("msgs_sent_by_type:" + name, msgs)
            metrics.set_counter("bytes_sent_by_type:" + name, nbytes)
        for name, ns in snap["handler_ns"].items():
            metrics.set_counter("handler_seconds:" + name, ns / 1e9)
        for phase, seconds in phase_split(snap)["cpu_s"].items():
            metrics.set_counter("phase_cpu_seconds:" + phase, seconds)
        metrics.set_counter("execution_ops", snap["exec_ops"])
        metrics.set_counter("transport_io_seconds", snap["io_ns"] / 1e9)


def _name(kind: Any) -> str:
    return kind if isinstance(kind, str) else getattr(kind, "__name__", str(kind))


def delta(start: Mapping[str, Any] | None, end: Mapping[str, Any] | None) -> dict[str, Any]:
    """``end - start`` of two snapshots (counters missing at the start count from 0)."""
    if end is None:
        return {}
    start = start or {}

    def pairs(key: str) -> dict[str, list[int]]:
        before = start.get(key, {})
        return {
            name: [v - w for v, w in zip(value, before.get(name, [0, 0]), strict=True)]
            for name, value in end.get(key, {}).items()
        }

    def scalars(key: str) -> dict[str, int]:
        before = start.get(key, {})
        return {name: value - before.get(name, 0) for name, value in end.get(key, {}).items()}

    return {
        "recv": pairs("recv"),
        "sent": pairs("sent"),
        "encoded": scalars("encoded"),
        "handler_ns": scalars("handler_ns"),
        "send_ns": scalars("send_ns"),
        "exec_ns": end.get("exec_ns", 0) - start.get("exec_ns", 0),
        "exec_ops": end.get("exec_ops", 0) - start.get("exec_ops", 0),
        "io_ns": end.get("io_ns", 0) - start.get("io_ns", 0),
        "phase_of": dict(end.get("phase_of", {})),
    }


def phase_split(snap: Mapping[str, Any], cpu_s: float | None = None) -> dict[str, Any]:
    """CPU seconds, bytes and messages per phase from one snapshot (or a :func:`delta`).

    ``cpu_s`` (the process's CPU over the same span), if given, adds ``other``: what
    the process used beyond the accounted work.
    """
    phase_of: Mapping[str, str] = snap.get("phase_of", {})

    def phase(name: str) -> str:
        return phase_of.get(name, DEFAULT_PHASE)

    ns = dict.fromkeys(PHASES, 0)
    nbytes = dict.fromkeys(PHASES, 0)
    msgs = dict.fromkeys(PHASES, 0)
    units = dict.fromkeys(PHASES, 0.0)
    for key in ("recv", "sent"):
        for name, (count, size) in snap.get(key, {}).items():
            p = phase(name)
            msgs[p] += count
            nbytes[p] += size
            units[p] += count + size / PACKET_BYTES
    for key in ("handler_ns", "send_ns"):
        for name, value in snap.get(key, {}).items():
            ns[phase(name)] += value
    ns["execution"] += snap.get("exec_ns", 0)
    io = snap.get("io_ns", 0)
    total_units = sum(units.values())
    if io and total_units:
        for p in PHASES:
            ns[p] += io * units[p] / total_units
    cpu = {p: ns[p] / 1e9 for p in PHASES}
    out: dict[str, Any] = {"cpu_s": cpu, "bytes": nbytes, "msgs": msgs}
    # Wall-clock time the node spent working (or preempted while working): its busy time.
    out["busy_s"] = sum(cpu.values())
    if cpu_s is not None:
        accounted = sum(cpu.values())
        if cpu_s > 0 and accounted > cpu_s:
            # The clocks are wall clocks (a CPU clock read costs ~10x more): on a busy
            # host a preempted handler looks longer than the CPU it used. Deflate every
            # phase alike so that they add up to the process's CPU: the shares are then
            # shares of wall-clock busy time, and what the process spent outside the
            # accounted work is unknown (None), not zero.
            out["wall_inflation"] = round(accounted / cpu_s, 3)
            cpu = out["cpu_s"] = {p: v * cpu_s / accounted for p, v in cpu.items()}
            out["other_cpu_s"] = None
        else:
            out["other_cpu_s"] = max(0.0, cpu_s - accounted)
    return out


# Covariant (a timed ledger is a timed state machine): ``inner`` is never reassigned.
Inner = TypeVar("Inner", bound=StateMachine, covariant=True)


class TimedStateMachine(StateMachine, Generic[Inner]):
    """Wraps a :class:`~phalanx.statemachine.base.StateMachine` and charges the time of
    ``apply`` and ``snapshot`` to ``accounting`` as execution; everything else passes
    through, so the host cannot tell it apart from the wrapped machine. ``inner`` is the
    wrapped machine (the ledger's API reads its accounts)."""

    def __init__(self, inner: Inner, accounting: Accounting) -> None:
        self.inner: Final[Inner] = inner
        self._accounting = accounting
        self.recovery_skip = inner.recovery_skip

    def apply(self, ops: list[bytes]) -> list[bytes]:
        start = perf_counter_ns()
        results = self.inner.apply(ops)
        self._accounting.executed(len(ops), perf_counter_ns() - start)
        return results

    def snapshot(self) -> bytes:
        start = perf_counter_ns()
        data = self.inner.snapshot()
        self._accounting.executed(0, perf_counter_ns() - start)
        return data

    def restore(self, snapshot: bytes) -> None:
        self.inner.restore(snapshot)

    def state_digest(self) -> bytes:
        return self.inner.state_digest()

    def state_root(self) -> bytes:
        return self.inner.state_root()


class TimedBlockStateMachine(TimedStateMachine[BlockStateMachine], BlockStateMachine):
    """:class:`TimedStateMachine` of a block-making state machine (the ledger)."""

    def __init__(self, inner: BlockStateMachine, accounting: Accounting) -> None:
        super().__init__(inner, accounting)
        self.final_refusals = inner.final_refusals

    def seal_block(self, consensus_seq: int) -> SealedBlock | None:
        return self.inner.seal_block(consensus_seq)

    def last_block(self) -> tuple[int, bytes]:
        return self.inner.last_block()

    def admit(self, op: bytes) -> str | None:
        return self.inner.admit(op)

    def check_op(self, op: bytes) -> bool:
        return self.inner.check_op(op)


def timed(app: StateMachine, accounting: Accounting) -> TimedStateMachine[StateMachine]:
    """``app``, its execution time charged to ``accounting``."""
    if isinstance(app, BlockStateMachine):
        return TimedBlockStateMachine(app, accounting)
    return TimedStateMachine(app, accounting)


def timed_factory(make: StateMachineFactory, accounting: Accounting) -> StateMachineFactory:
    """A state-machine factory whose machines are timed (see :func:`timed`)."""

    def factory() -> StateMachine:
        return timed(make(), accounting)

    return factory


def unwrap(app: StateMachine) -> StateMachine:
    """The state machine a timing wrapper wraps (or ``app`` itself)."""
    if isinstance(app, TimedStateMachine):
        inner: StateMachine = app.inner
        return inner
    return app
