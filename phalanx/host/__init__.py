"""The replica host: everything a replica does besides ordering.

Every ordering protocol — PBFT, and the ones built on this framework after it — runs its
cores on top of one :class:`ReplicaHost`, pure like them (no I/O: effects out). The split
is CometBFT's ABCI in small: consensus decides *what* runs *where*; the host runs it,
answers clients, certifies and checkpoints the result, and moves state between replicas.

What a protocol provides
- **Admission decisions.** For each client request it calls :meth:`ReplicaHost.admit`
  (new, waiting, cached, stale or refused, with the effects that answer the latter) and
  :meth:`ReplicaHost.enqueue` for the ones it will order; it chooses how requests travel
  (to a leader, to every replica) and how they are batched.
- **Decisions, in its own order.** For each decided batch it calls
  :meth:`ReplicaHost.execute` with the batch's position (``instance``, ``seq``: what
  the protocol decides exactly one value for — a total-order protocol's slot, leaderless
  SMR's consensus instance — never a replica's own count of its executions, which
  differs between replicas: :class:`~phalanx.safety.AgreementChecker` holds every
  correct replica to one value per position) and the requests, decoded and validated
  (:meth:`ReplicaHost.valid_in_batch` is the state-independent check a backup applies
  to a proposed batch).
- **Checkpoints.** At the positions it checkpoints it calls :meth:`ReplicaHost.checkpoint`
  (a snapshot and the digest its replicas sign), and :meth:`ReplicaHost.stable` once it
  proved one stable; it implements :class:`StableCheckpoints` so that the host can serve
  and install snapshots (the proof format is the protocol's, opaque to the host) and
  :meth:`ReplicaHost.fetch_state` asks for one when it fell behind.
- **Its host's messages and timers**: it hands :data:`HOST_MESSAGES` to
  :meth:`ReplicaHost.on_message` and its timers first to :meth:`ReplicaHost.on_timer`.

What it gets
- the exactly-once client table (a retransmitted request is answered from the cache, an
  older one dropped, a request ordered twice executed once), bounded pending requests,
  refusals that say how far they reach (``Error.refusal``);
- execution through a typed :class:`~phalanx.statemachine.base.StateMachine`, and for a
  :class:`~phalanx.statemachine.base.BlockStateMachine` (the ledger) admission by the
  application, block records persisted with the log that ordered them and commit
  certificates (:mod:`phalanx.host.certificates`);
- replies to clients and the ``Executed`` observation the checkers and metrics consume;
- checkpoint snapshots, their persistence, recovery after a restart, and state transfer.
"""

from phalanx.host.certificates import BlockCertifier, BlockSig, Certificates, FetchCertificates
from phalanx.host.host import (
    CERT_TIMER,
    HOST_MESSAGES,
    HOST_PHASES,
    ReplicaHost,
    StableCheckpoints,
)
from phalanx.host.requests import MAX_PENDING_REQUESTS, ClientRecord, Requests
from phalanx.host.snapshots import FetchState, Snapshot, StateData, checkpoint_digest

__all__ = [
    "CERT_TIMER",
    "HOST_MESSAGES",
    "HOST_PHASES",
    "MAX_PENDING_REQUESTS",
    "BlockCertifier",
    "BlockSig",
    "Certificates",
    "ClientRecord",
    "FetchCertificates",
    "FetchState",
    "ReplicaHost",
    "Requests",
    "Snapshot",
    "StableCheckpoints",
    "StateData",
    "checkpoint_digest",
]
