"""The replica host: the part of a replica every ordering protocol shares.

See the package docstring (:mod:`phalanx.host`) for what a protocol provides and what
it gets. :class:`ReplicaHost` is pure, like the protocol cores: every method returns
effects (``Send``, ``Broadcast``, ``ToClient``, ``Persist``, ``SetTimer``, observations)
and the protocol that owns it passes them to its driver along with its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from phalanx.core.crypto import NodeCrypto
from phalanx.core.effects import Broadcast, Dropped, Executed, Persist, Send, SetTimer, ToClient
from phalanx.core.messages import Error, Reply, Request
from phalanx.core.quorum import Quorums
from phalanx.host.certificates import (
    CERT_TICK,
    BlockCertifier,
    BlockSig,
    Certificates,
    FetchCertificates,
)
from phalanx.host.requests import CheckRequest, Requests
from phalanx.host.snapshots import (
    FetchState,
    Snapshot,
    Snapshots,
    StateData,
    open_state_data,
)
from phalanx.safety.properties import SET_KEY_MODULUS, executed_set_key
from phalanx.statemachine.base import BlockStateMachine, StateMachine, StateMachineFactory

CERT_TIMER = "ledger.certificates"
"""The host's timer: blocks still waiting for their commit certificate fetch it."""

HOST_MESSAGES = (FetchState, StateData, BlockSig, FetchCertificates, Certificates)
"""The messages replicas' hosts exchange, whatever the protocol: state transfer and the
commit certificates of a block-making state machine."""

HOST_PHASES = {
    # Moving a checkpoint's state keeps a replica in the agreement.
    "FetchState": "consensus",
    "StateData": "consensus",
    # Commit certificates: replicas sign and gather signatures over the *executed*
    # state, so it is execution's output work, not agreement on the order.
    "BlockSig": "execution",
    "FetchCertificates": "execution",
    "Certificates": "execution",
    "timer:" + CERT_TIMER: "execution",
}
"""The SMR phase each host message's cost counts in (a protocol's phase table adds its
own messages to these)."""


class StableCheckpoints(Protocol):
    """What the host needs to know of a protocol's checkpoints for state transfer."""

    def stable_checkpoint(self) -> tuple[int, bytes]:
        """The position of the latest stable checkpoint and its proof, encoded."""
        ...

    def wants_state(self, position: int) -> bool:
        """Would a snapshot at ``position`` be installed now (the protocol is fetching a
        stable checkpoint at or below it, and it moves the state forward — or repairs a
        diverged one)?"""
        ...

    def proof_valid(self, position: int, digest: bytes, proof: bytes) -> bool:
        """Does ``proof`` show the checkpoint at ``position`` stable with ``digest``?"""
        ...

    def state_transferred(self, position: int, digest: bytes, proof: bytes) -> list[Any]:
        """The host installed the proven snapshot at ``position``: the protocol moves on
        from there (returns its effects)."""
        ...


class ReplicaHost:
    """Client table and exactly-once execution, replies, block certificates, checkpoint
    snapshots and state transfer, for one replica of any ordering protocol.

    ``check_request`` checks a request's authenticator entry for this replica (default:
    ``crypto.check_request``); ``max_request_bytes`` bounds a request's op. With
    ``track_executed_set`` every ``Executed`` observation carries the order-independent
    key of the requests executed so far (``safety.ExecutedSetChecker``; a hash per
    request, so off by default).
    """

    def __init__(
        self,
        replica_id: int,
        quorums: Quorums,
        crypto: NodeCrypto,
        make_state_machine: StateMachineFactory,
        checkpoints: StableCheckpoints,
        *,
        max_request_bytes: int,
        check_request: CheckRequest | None = None,
        track_executed_set: bool = False,
    ) -> None:
        self.replica_id = replica_id
        self.make_state_machine = make_state_machine
        self.checkpoints = checkpoints
        app = make_state_machine()
        self.requests = Requests(check_request or crypto.check_request, app, max_request_bytes)
        self.snapshots = Snapshots()
        self.track_executed_set = track_executed_set
        self.executed_set = 0  # safety.executed_set_key of every request executed
        # A state machine that makes blocks (the ledger) gets atomic block records and
        # commit certificates; any other (the key-value store) costs one test per batch.
        self.certifier = (
            BlockCertifier(replica_id, quorums, crypto) if isinstance(app, BlockStateMachine)
            else None
        )
        self.cert_timer_armed = False

    @property
    def app(self) -> StateMachine:
        """The state machine (replaced when a snapshot is installed: look it up each time)."""
        return self.requests.app

    @property
    def pending(self) -> dict[bytes, Request]:
        """Client -> its newest request that waits to be ordered."""
        return self.requests.pending

    @property
    def recovery_skip(self) -> tuple[bytes, ...]:
        """Store key prefixes :meth:`recover` does not need (the driver skips them)."""
        return self.app.recovery_skip

    # -- lifecycle ----------------------------------------------------------------------

    def recover(self, records: Sequence[tuple[bytes, bytes]]) -> int:
        """Install the persisted stable snapshot and certificates; returns the position
        the restored state reflects (0: none, the initial state)."""
        if self.certifier is not None:
            self.certifier.recover(list(records))
        snapshot = self.snapshots.recover(list(records))
        if snapshot is None:
            return 0
        app = self.make_state_machine()
        app.restore(snapshot.app)
        self.requests.install(app, snapshot.clients)
        self.executed_set = int.from_bytes(snapshot.executed_set, "big")
        self._expect_snapshot_block()  # nothing to persist: no votes yet
        return snapshot.position

    def start(self) -> list[Any]:
        return self._arm_cert_timer()

    # -- requests -----------------------------------------------------------------------

    def admit(
        self, req: Request, client: bytes | None, src: int, view: int = 0
    ) -> tuple[str, list[Any]]:
        """Classify a request that arrived from ``client`` (the connection it came on) or
        was relayed by replica ``src`` (``client`` None): returns the
        :class:`~phalanx.host.requests.Admission` status and the effects that answer or
        count it (a cached reply carries ``view``, the protocol's current one). ``"new"``
        is not queued yet: the protocol calls :meth:`enqueue` once it decided to order
        it."""
        admission = self.requests.admit(req)
        status = admission.status
        if status in ("new", "waiting"):
            return status, []
        if status == "refused":
            out: list[Any] = [Dropped(admission.reason, src)]
            if client is not None:
                error = Error(req.client, req.timestamp, self.replica_id, admission.reason,
                              admission.refusal)
                out.append(ToClient(client, error))
            return status, out
        if status == "cached" and client is not None:
            # A retransmission: the reply may have been lost.
            reply = Reply(req.client, view, req.timestamp, self.replica_id, admission.result)
            return status, [ToClient(client, reply)]
        return status, [Dropped("stale_request", src)]

    def enqueue(self, req: Request) -> None:
        self.requests.enqueue(req)

    def valid_in_batch(self, req: Request) -> bool:
        """May a batch another replica proposed hold ``req``? (see
        :meth:`Requests.valid_in_batch`)."""
        return self.requests.valid_in_batch(req)

    # -- execution ----------------------------------------------------------------------

    def execute(
        self,
        instance: int,
        seq: int,
        digest: bytes,
        batch: Iterable[Request],
        *,
        view: int,
        state_digest: bool,
    ) -> tuple[list[Request], list[Any]]:
        """Execute a decided batch at position ``seq`` of ``instance``: the requests that
        run (each client's newer requests only: exactly once) and the effects — the block
        records and signature of a block-making state machine, one reply per request
        (carrying ``view``), and the ``Executed`` observation, with the state digest if
        ``state_digest``."""
        fresh = self.requests.fresh(batch)
        app = self.app
        results = app.apply([req.op for req in fresh]) if fresh else []
        out: list[Any] = []
        if self.certifier is not None:
            assert isinstance(app, BlockStateMachine)  # certifier only for such
            sealed = app.seal_block(seq)
            if sealed is not None:
                # Gating (not lazy): the replies below leave only once the block, its
                # tx index and state changes are durable with the log that ordered them.
                out.extend(Persist(key, value) for key, value in sealed.records)
                out.extend(self.certifier.sealed(sealed.height, sealed.digest))
                out.extend(self._arm_cert_timer())
        for req, result in zip(fresh, results, strict=True):
            self.requests.executed(req, result)
            reply = Reply(req.client, view, req.timestamp, self.replica_id, result)
            out.append(ToClient(req.reply_to, reply))
        ids = [(r.client, r.timestamp) for r in fresh]
        if self.track_executed_set:
            self.executed_set = (self.executed_set + executed_set_key(ids)) % SET_KEY_MODULUS
        root = app.state_digest() if state_digest else b""
        out.append(Executed(instance, seq, digest, ids, root, self.executed_set))
        return fresh, out

    # -- checkpoints and state transfer -------------------------------------------------

    def checkpoint(self, position: int) -> bytes:
        """Snapshot the state at ``position`` (a checkpoint the protocol takes); returns
        the digest its replicas sign."""
        executed_set = self.executed_set.to_bytes(32, "big") if self.track_executed_set else b""
        return self.snapshots.take(position, self.app, self.requests.rows(), executed_set)

    def stable(self, position: int, digest: bytes) -> list[Any]:
        """The protocol proved the checkpoint at ``position`` stable with ``digest``."""
        return self.snapshots.became_stable(position, digest)

    def fetch_state(self, position: int, holders: Iterable[int]) -> list[Any]:
        """Ask for the snapshot of the stable checkpoint at ``position`` from the replicas
        that signed it (from everyone if we were the only one)."""
        fetch = FetchState(position)
        others = [r for r in holders if r != self.replica_id]
        if not others:
            return [Broadcast(fetch)]
        return [Send(r, fetch) for r in others]

    # -- messages and timers of the host ------------------------------------------------

    def on_message(self, src: int, msg: Any) -> list[Any]:
        """A :data:`HOST_MESSAGES` message from replica ``src``."""
        if isinstance(msg, FetchState):
            position, proof = self.checkpoints.stable_checkpoint()
            return self.snapshots.serve(src, msg, position, proof)
        if isinstance(msg, StateData):
            return self._on_state_data(src, msg)
        certifier = self.certifier
        if certifier is None:
            return [Dropped("unexpected_message", src)]
        if isinstance(msg, BlockSig):
            return certifier.on_block_sig(src, msg)
        if isinstance(msg, FetchCertificates):
            return certifier.on_fetch(src, msg)
        return certifier.on_certificates(src, msg)

    def on_timer(self, name: str) -> list[Any] | None:
        """The host's timers; None for a timer that is not the host's."""
        if name != CERT_TIMER or self.certifier is None:
            return None
        self.cert_timer_armed = False
        return self.certifier.tick() + self._arm_cert_timer()

    def _on_state_data(self, src: int, msg: StateData) -> list[Any]:
        if not self.checkpoints.wants_state(msg.position):
            return [Dropped("unwanted_state", src)]
        opened = open_state_data(msg, self.make_state_machine)
        if opened is None:
            return [Dropped("bad_state", src)]
        snapshot, app, digest = opened
        if not self.checkpoints.proof_valid(msg.position, digest, msg.proof):
            return [Dropped("bad_state", src)]
        out = self._install(snapshot, app)
        out.extend(self.checkpoints.state_transferred(snapshot.position, digest, msg.proof))
        return out

    def _install(self, snapshot: Snapshot, app: StateMachine) -> list[Any]:
        self.requests.install(app, snapshot.clients)
        self.executed_set = int.from_bytes(snapshot.executed_set, "big")
        out = self.snapshots.installed(snapshot)
        out.extend(self._expect_snapshot_block())
        out.extend(self._arm_cert_timer())
        return out

    # -- block certificates -------------------------------------------------------------

    def _arm_cert_timer(self) -> list[Any]:
        """Tick while blocks wait for certificates: missed signatures are fetched."""
        if self.certifier is None or self.cert_timer_armed or not self.certifier.waiting():
            return []
        self.cert_timer_armed = True
        return [SetTimer(CERT_TIMER, CERT_TICK)]

    def _expect_snapshot_block(self) -> list[Any]:
        """After installing a snapshot: its last block is known (proven by the checkpoint)
        but was not executed here; have it certified so that proofs can use it."""
        app = self.app
        if self.certifier is None or not isinstance(app, BlockStateMachine):
            return []
        height, block_hash = app.last_block()
        return self.certifier.expect(height, block_hash)
