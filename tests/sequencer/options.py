"""The sequencer's tunables: its ``[sequencer]`` table of a cluster file."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class SequencerOptions:
    timeout: float = 1.0
    """Seconds without progress before a follower moves to the next view."""
    max_batch: int = 64
    witnesses: int = 0
    """Witness processes per replica (the multi-process example: :mod:`sequencer.witness`)."""
    state_digest_every_batch: bool = False  # the simulator's checkers; no table key

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> SequencerOptions:
        unknown = sorted(set(table) - {"timeout_ms", "max_batch", "witnesses"})
        if unknown:
            raise ValueError(f"unknown option {unknown[0]!r} in [sequencer]; "
                             f"known: timeout_ms, max_batch, witnesses")
        for key, value in table.items():
            least = 0 if key == "witnesses" else 1
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(f"[sequencer] {key} must be an integer >= {least}, "
                                 f"got {value!r}")
        return cls(timeout=table.get("timeout_ms", 1000) / 1000,
                   max_batch=table.get("max_batch", 64), witnesses=table.get("witnesses", 0))

    def to_table(self) -> dict[str, Any]:
        return {"timeout_ms": round(self.timeout * 1000), "max_batch": self.max_batch,
                "witnesses": self.witnesses}
