"""The one interface between ordering and execution."""

from __future__ import annotations

from typing import Any, Protocol


class StateMachine(Protocol):
    """A deterministic application. Every replica applies the same ops in the same order."""

    def apply(self, ops: list[bytes]) -> list[bytes]:
        """Apply ``ops`` in order; return one result per op. Invalid ops yield an error
        result; they never raise, so one bad op cannot stop a replica."""
        ...

    def snapshot(self) -> bytes:
        """Canonical bytes of the whole state."""
        ...

    def restore(self, snapshot: bytes) -> None:
        """Replace the state with a snapshot; raises ValueError if it is malformed."""
        ...

    def state_root(self) -> bytes:
        """32-byte commitment to the state: equal states have equal roots."""
        ...


class BlockStateMachine(StateMachine, Protocol):
    """Optional extension: a state machine that turns each executed batch into a block.

    A host that finds ``seal_block`` on its state machine calls it after every ``apply``
    and persists the returned records in the same atomic store transaction as its own
    log (``Persist`` effects), then signs the returned digest for a commit certificate.
    ``admit`` screens a client op before it is ordered (a reason string rejects it);
    ``check_op`` is the state-independent validity a backup requires of every op of a
    proposed batch (False rejects the batch: only a faulty primary proposes such an op).
    ``final_refusals`` are the ``admit`` reasons that are a deterministic function of the
    op's bytes (and the genesis) *and* make ``check_op`` false: every correct replica
    refuses such an op, so it can never execute, and a client may report it refused for
    good; every other reason depends on the executed state and is only "not yet".
    """

    final_refusals: frozenset[str]

    def seal_block(self, consensus_seq: int) -> Any:
        """The block of the ops applied since the last seal (an object with ``height``,
        ``digest`` and ``records``), or None if there were none."""
        ...

    def last_block(self) -> tuple[int, bytes]:
        """Height and hash of the last sealed block (after a restore: the snapshot's)."""
        ...

    def admit(self, op: bytes) -> str | None: ...

    def check_op(self, op: bytes) -> bool: ...
