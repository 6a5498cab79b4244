"""Checkpoint snapshots and state transfer.

A replica snapshots its state — the application and the exactly-once client table — at
the positions its ordering protocol checkpoints, and computes the *checkpoint digest* the
protocol's replicas sign. Once the protocol proves a checkpoint stable (PBFT: 2f+1 signed
CHECKPOINTs), the replica keeps that snapshot (persisted, and served to replicas that
fell behind) and drops the older ones. A replica behind a stable checkpoint fetches its
snapshot (:class:`FetchState`), and installs one (:class:`StateData`) only if it hashes
to the proven digest: the proof is the protocol's, opaque here.
"""

from __future__ import annotations

from typing import Any

import msgspec

from phalanx.core.effects import Dropped, Persist, Send
from phalanx.core.hashing import digest_parts
from phalanx.core.messages import NonNegative
from phalanx.host.requests import ClientRow
from phalanx.statemachine.base import StateMachine, StateMachineFactory

SNAPSHOT_KEY = b"Rsnap"
"""Where the stable snapshot is persisted."""


class Snapshot(msgspec.Struct, array_like=True, gc=False):
    """Everything a checkpoint's digest covers: application state and client table (and
    the executed-set key where the host tracks it)."""

    position: int
    app: bytes
    clients: list[ClientRow]
    executed_set: bytes = b""  # 32 bytes, big-endian, where tracked


def checkpoint_digest(
    state_digest: bytes, clients: list[ClientRow], executed_set: bytes = b""
) -> bytes:
    """What a checkpoint certifies: the application's state digest and the client table,
    and the executed-set key if it is tracked (so that a replica that installs a snapshot
    continues from a key its peers vouched for)."""
    parts = [state_digest, msgspec.msgpack.encode(clients)]
    if executed_set:
        parts.append(executed_set)
    return digest_parts(*parts)


class FetchState(msgspec.Struct, tag=20, array_like=True, frozen=True, gc=False):
    """Ask for the snapshot of the stable checkpoint at ``position`` (or a later one)."""

    position: NonNegative


class StateData(msgspec.Struct, tag=21, array_like=True, frozen=True, gc=False):
    """The sender's latest stable snapshot (at or above the position asked for), with
    the protocol's proof that it is stable (encoded by the protocol)."""

    position: NonNegative
    snapshot: bytes
    proof: bytes


class Snapshots:
    """Own snapshots of checkpoints not yet stable, and the stable one."""

    def __init__(self) -> None:
        self.taken: dict[int, tuple[Snapshot, bytes]] = {}  # position -> (snapshot, digest)
        self.stable: Snapshot | None = None

    def take(
        self, position: int, app: StateMachine, clients: list[ClientRow], executed_set: bytes
    ) -> bytes:
        """Snapshot the state at ``position``; returns the checkpoint digest to sign."""
        snapshot = Snapshot(position, app.snapshot(), clients, executed_set)
        digest = checkpoint_digest(app.state_digest(), clients, executed_set)
        self.taken[position] = (snapshot, digest)
        return digest

    def became_stable(self, position: int, digest: bytes) -> list[Any]:
        """The checkpoint at ``position`` is stable with ``digest``: keep our snapshot of
        it (persisted) if it is the certified state."""
        own = self.taken.pop(position, None)
        for older in [p for p in self.taken if p < position]:
            del self.taken[older]
        if own is None or own[1] != digest:
            # We are behind, or our state diverged from the certified one: either way
            # the snapshot comes by state transfer (never serve or keep a wrong one).
            return []
        self.stable = own[0]
        # Lazy, like the protocol's record of the stable checkpoint written in the same
        # batch: until both are durable, a restart simply recovers the previous one.
        return [Persist(SNAPSHOT_KEY, msgspec.msgpack.encode(own[0]), lazy=True)]

    def installed(self, snapshot: Snapshot) -> list[Any]:
        """A snapshot fetched by state transfer is now our state (and the stable one)."""
        self.stable = snapshot
        self.taken.clear()  # of states we no longer hold (taken again as we execute)
        return [Persist(SNAPSHOT_KEY, msgspec.msgpack.encode(snapshot), lazy=True)]

    def recover(self, records: list[tuple[bytes, bytes]]) -> Snapshot | None:
        """The persisted stable snapshot, if any (a restart installs it)."""
        for key, value in records:
            if key == SNAPSHOT_KEY:
                self.stable = msgspec.msgpack.decode(value, type=Snapshot)
        return self.stable

    def serve(self, src: int, msg: FetchState, stable_position: int, proof: bytes) -> list[Any]:
        """Answer a :class:`FetchState` with our stable snapshot if it is the protocol's
        current stable checkpoint and not older than the one asked for."""
        snap = self.stable
        if snap is None or snap.position < msg.position or snap.position != stable_position:
            return [Dropped("state_unavailable", src)]
        return [Send(src, StateData(snap.position, msgspec.msgpack.encode(snap), proof))]


def open_state_data(
    msg: StateData, make_state_machine: StateMachineFactory
) -> tuple[Snapshot, StateMachine, bytes] | None:
    """The snapshot a :class:`StateData` carries, restored into a fresh state machine,
    and its checkpoint digest; None if it is malformed (the proof is checked by the
    caller, against that digest)."""
    try:
        snap = msgspec.msgpack.decode(msg.snapshot, type=Snapshot)
        app = make_state_machine()
        app.restore(snap.app)
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError):
        return None
    if snap.position != msg.position:
        return None
    return snap, app, checkpoint_digest(app.state_digest(), snap.clients, snap.executed_set)
