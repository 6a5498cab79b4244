"""The one interface between ordering and execution.

An application is a :class:`StateMachine`; one that turns each executed batch into a
block with a commit certificate (the ledger) is a :class:`BlockStateMachine`. Both are
nominal base classes: the replica host (``phalanx.host``) asks ``isinstance(app,
BlockStateMachine)`` once, when it is built, and an application never learns which
ordering protocol drives it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass


class StateMachine(ABC):
    """A deterministic application. Every replica applies the same ops in the same order."""

    recovery_skip: tuple[bytes, ...] = ()
    """Prefixes of the records the application persists (through block records) that a
    restarting replica never reads back: the driver skips them when it recovers."""

    @abstractmethod
    def apply(self, ops: list[bytes]) -> list[bytes]:
        """Apply ``ops`` in order; return one result per op. Invalid ops yield an error
        result; they never raise, so one bad op cannot stop a replica."""

    @abstractmethod
    def snapshot(self) -> bytes:
        """Canonical bytes of the whole state."""

    @abstractmethod
    def restore(self, snapshot: bytes) -> None:
        """Replace the state with a snapshot; raises ValueError if it is malformed."""

    @abstractmethod
    def state_digest(self) -> bytes:
        """32-byte commitment to the whole state, what checkpoints certify: equal states
        have equal digests. (The key-value store's is its state root; the ledger's its
        head block's hash, which covers the accounts' state root and every block before
        it.)"""

    @abstractmethod
    def state_root(self) -> bytes:
        """The root of the state's Merkle tree, what proofs of single entries verify
        against (``/status`` shows it)."""


@dataclass(frozen=True, slots=True)
class SealedBlock:
    """A block the host persists (``records``, atomically with the log that ordered it)
    and signs (``digest``, the header hash) for a commit certificate."""

    height: int
    digest: bytes
    records: list[tuple[bytes, bytes]]


class BlockStateMachine(StateMachine):
    """A state machine that turns each executed batch into a block.

    The host calls :meth:`seal_block` after every ``apply`` and persists the returned
    records in the same atomic store transaction as its own log, then signs the block's
    digest for a commit certificate. :meth:`admit` screens a client op before it is
    ordered (a reason string refuses it); :meth:`check_op` is the state-independent
    validity a backup requires of every op of a proposed batch (False refuses the batch:
    only a faulty leader proposes such an op).
    """

    final_refusals: frozenset[str] = frozenset()
    """The :meth:`admit` reasons that are a deterministic function of the op's bytes (and
    the genesis) *and* make :meth:`check_op` false: every correct replica refuses such an
    op, so it can never execute, and a client may report it refused for good; every other
    reason depends on the executed state and is only "not accepted yet"."""

    @abstractmethod
    def seal_block(self, consensus_seq: int) -> SealedBlock | None:
        """The block of the ops applied since the last seal, or None if there were none."""

    @abstractmethod
    def last_block(self) -> tuple[int, bytes]:
        """Height and hash of the last sealed block (after a restore: the snapshot's)."""

    @abstractmethod
    def admit(self, op: bytes) -> str | None:
        """Why ``op`` cannot be valid now, or None if it may be."""

    @abstractmethod
    def check_op(self, op: bytes) -> bool:
        """Is ``op`` valid whatever the state (well-formed, validly signed)?"""


StateMachineFactory = Callable[[], StateMachine]
"""Makes a fresh, empty state machine (restored from a snapshot where one is installed)."""
