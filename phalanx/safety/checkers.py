"""Safety checkers: the properties of :mod:`phalanx.safety`, asserted while a simulation
runs.

The simulation feeds every checker each ``Executed`` observation of a *correct* replica
(Byzantine replicas are excluded: they may claim anything) the moment the core emits it,
each client submission, and each ``Dropped`` a correct replica reports. Checking on these
observations, not by rescanning logs, keeps the cost per event constant and stops the run
at the very event that broke safety — whose seed and time the :class:`SafetyViolation`
names, so the run replays exactly.

- **agreement** (:class:`AgreementChecker`): correct replicas decide the same value
  (digest and request list) at the same position ``(instance, seq)``;
- **equal states** after the same position (:class:`StateDigestChecker`, total-order
  protocols) or after the same set of executed requests (:class:`ExecutedSetChecker`,
  any protocol: it needs the host's ``track_executed_set``);
- **exactly-once** (:class:`ExactlyOnceChecker`): a correct replica executes a request
  ``(client, timestamp)`` at most once (replaying its own log after a restart, at the same
  position, is not a second execution);
- **validity** (:class:`ValidityChecker`): every executed request was submitted by its
  client;
- a protocol's own **alarms** (:class:`AlarmChecker`): states a correct replica detects
  and that are impossible while at most f replicas are faulty.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Protocol

from phalanx.core.effects import Executed
from phalanx.safety.properties import Position, RequestId

Slot = Position


class SafetyViolation(Exception):
    """A safety property failed. Carries the seed and simulated time needed to replay."""

    def __init__(self, property_name: str, detail: str, seed: int | None, time: float) -> None:
        self.property_name = property_name
        self.detail = detail
        self.seed = seed
        self.time = time
        super().__init__(
            f"{property_name} violated at t={time:.6f}s (seed={seed}): {detail}"
        )


class CheckContext(Protocol):
    """What a checker needs from its simulation to report a violation."""

    @property
    def seed(self) -> int: ...

    @property
    def now(self) -> float: ...


class Checker:
    """Base class: a no-op for every observation. Subclasses override what they need."""

    property_name = "safety"

    def __init__(self) -> None:
        self._context: CheckContext | None = None

    def bind(self, context: CheckContext) -> None:
        """Attach to the simulation whose seed and clock violations will report."""
        self._context = context

    def on_submitted(self, client: bytes, timestamp: int) -> None:
        """Client ``client`` submitted its request ``timestamp``."""

    def on_executed(self, replica: int, incarnation: int, executed: Executed) -> None:
        """Correct replica ``replica`` (in its ``incarnation``-th life) executed a slot."""

    def on_dropped(self, replica: int, reason: str) -> None:
        """Correct replica ``replica`` reported ``Dropped(reason)`` (protocols report
        internal alarms this way, e.g. a stable checkpoint that contradicts their own)."""

    def violation(self, detail: str) -> SafetyViolation:
        context = self._context
        seed = context.seed if context is not None else None
        time = context.now if context is not None else 0.0
        return SafetyViolation(self.property_name, detail, seed, time)


def _requests(executed: Executed) -> tuple[RequestId, ...]:
    # Normalise: a core may build the list from decoded lists instead of tuples.
    return tuple((bytes(client), int(ts)) for client, ts in executed.requests)


def _short(data: bytes) -> str:
    return data.hex()[:16]


def _slot(executed: Executed) -> str:
    return f"(instance={executed.instance}, seq={executed.seq})"


class AgreementChecker(Checker):
    """No two correct replicas execute different batches at the same slot."""

    property_name = "agreement"

    def __init__(self) -> None:
        super().__init__()
        self._first: dict[Slot, tuple[int, bytes, tuple[RequestId, ...]]] = {}

    def on_executed(self, replica: int, incarnation: int, executed: Executed) -> None:
        slot = (executed.instance, executed.seq)
        requests = _requests(executed)
        first = self._first.get(slot)
        if first is None:
            self._first[slot] = (replica, executed.digest, requests)
            return
        other, digest, other_requests = first
        if executed.digest != digest:
            raise self.violation(
                f"replica {other} executed digest {_short(digest)} but replica {replica} "
                f"executed {_short(executed.digest)} at {_slot(executed)}"
            )
        if requests != other_requests:
            raise self.violation(
                f"replicas {other} and {replica} executed different request lists at "
                f"{_slot(executed)} under the same digest {_short(digest)}"
            )


class StateDigestChecker(Checker):
    """Total order: no two correct replicas report different state digests after the
    same position."""

    property_name = "state-digests"

    def __init__(self) -> None:
        super().__init__()
        self._first: dict[Slot, tuple[int, bytes]] = {}

    def on_executed(self, replica: int, incarnation: int, executed: Executed) -> None:
        slot = (executed.instance, executed.seq)
        first = self._first.get(slot)
        if first is None:
            self._first[slot] = (replica, executed.state_digest)
            return
        other, root = first
        if executed.state_digest != root:
            raise self.violation(
                f"replica {other} has state digest {_short(root)} but replica {replica} has "
                f"{_short(executed.state_digest)} after {_slot(executed)}"
            )


class ExactlyOnceChecker(Checker):
    """A correct replica executes each request at most once."""

    property_name = "exactly-once"

    def __init__(self) -> None:
        super().__init__()
        # replica -> request -> slot of its first execution (kept across restarts).
        self._slot_of: dict[int, dict[RequestId, Slot]] = {}
        # replica -> (incarnation, slots executed in it): within one life a slot runs once.
        self._life: dict[int, tuple[int, set[Slot]]] = {}

    def on_executed(self, replica: int, incarnation: int, executed: Executed) -> None:
        slot = (executed.instance, executed.seq)
        life = self._life.get(replica)
        if life is None or life[0] != incarnation:
            life = (incarnation, set())
            self._life[replica] = life
        if slot in life[1]:
            raise self.violation(
                f"replica {replica} executed {_slot(executed)} twice without restarting"
            )
        life[1].add(slot)
        slot_of = self._slot_of.setdefault(replica, {})
        in_batch: dict[RequestId, None] = {}
        for request in _requests(executed):
            client, ts = request
            if request in in_batch:
                raise self.violation(
                    f"replica {replica} executed request (client={_short(client)}, "
                    f"timestamp={ts}) twice in the batch at {_slot(executed)}"
                )
            in_batch[request] = None
            previous = slot_of.get(request)
            if previous is None:
                slot_of[request] = slot
            elif previous != slot:
                raise self.violation(
                    f"replica {replica} executed request (client={_short(client)}, "
                    f"timestamp={ts}) at (instance={previous[0]}, seq={previous[1]}) and "
                    f"again at {_slot(executed)}"
                )


class ValidityChecker(Checker):
    """Every request a correct replica executes was submitted by its client."""

    property_name = "validity"

    def __init__(self) -> None:
        super().__init__()
        self._submitted: dict[bytes, set[int]] = {}

    def on_submitted(self, client: bytes, timestamp: int) -> None:
        self._submitted.setdefault(client, set()).add(timestamp)

    def on_executed(self, replica: int, incarnation: int, executed: Executed) -> None:
        for client, ts in _requests(executed):
            if ts not in self._submitted.get(client, ()):
                raise self.violation(
                    f"replica {replica} executed request (client={_short(client)}, "
                    f"timestamp={ts}) at {_slot(executed)} that its client never submitted"
                )


class ExecutedSetChecker(Checker):
    """Any order: correct replicas that executed the same set of requests report the same
    state digest (``Executed.executed_set``, kept by hosts that track it, identifies the
    set; observations without a digest or a set are skipped)."""

    property_name = "executed-sets"

    def __init__(self) -> None:
        super().__init__()
        self._first: dict[int, tuple[int, bytes]] = {}  # set key -> (replica, digest)

    def on_executed(self, replica: int, incarnation: int, executed: Executed) -> None:
        if not executed.state_digest or not executed.executed_set:
            return
        first = self._first.setdefault(executed.executed_set, (replica, executed.state_digest))
        if first[1] != executed.state_digest:
            raise self.violation(
                f"replicas {first[0]} and {replica} executed the same requests but have "
                f"state digests {_short(first[1])} and {_short(executed.state_digest)} "
                f"(replica {replica} after {_slot(executed)})"
            )


class AlarmChecker(Checker):
    """Fails when a correct replica reports one of ``reasons`` as ``Dropped``: the
    protocol's own detectors of states that are impossible while at most f replicas are
    faulty (PBFT: a stable checkpoint contradicting its own, a new view contradicting a
    commit)."""

    property_name = "protocol-alarm"

    def __init__(self, reasons: Iterable[str]) -> None:
        super().__init__()
        self.reasons = frozenset(reasons)

    def on_dropped(self, replica: int, reason: str) -> None:
        if reason in self.reasons:
            raise self.violation(f"correct replica {replica} raised alarm {reason!r}")


def generic_checkers(total_order: bool) -> list[Checker]:
    """Fresh instances of the checkers every protocol is held to: agreement per position,
    exactly-once, validity, equal states for equal executed sets, and for a total-order
    protocol equal states after each position."""
    checkers: list[Checker] = [AgreementChecker(), ExactlyOnceChecker(), ValidityChecker(),
                               ExecutedSetChecker()]
    if total_order:
        checkers.insert(1, StateDigestChecker())
    return checkers


def committed_log_hash(log: Iterable[Executed]) -> str:
    """Chained SHA-256 over ``(instance, seq, digest)`` of an executed log, in order.

    Equal hashes mean two replicas executed the same slots with the same batches in the
    same order; ``phalanx sim`` prints one per replica.
    """
    chain = bytes(32)
    for executed in log:
        chain = hashlib.sha256(
            chain
            + executed.instance.to_bytes(8, "big")
            + executed.seq.to_bytes(8, "big")
            + len(executed.digest).to_bytes(4, "big")
            + executed.digest
        ).digest()
    return chain.hex()
