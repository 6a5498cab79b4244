"""The one interface between ordering and execution."""

from __future__ import annotations

from typing import Protocol


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
