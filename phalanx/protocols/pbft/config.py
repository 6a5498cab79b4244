"""PBFT tunables, with defaults that suit a LAN cluster of a few replicas."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

MAX_BATCH_BYTES = 8 << 20
"""Upper bound of max_batch_bytes: half the transport's frame limit leaves room for the
encoding and for catch-up messages that carry a payload."""


@dataclass(frozen=True, slots=True)
class PbftConfig:
    checkpoint_interval: int = 256
    """K: a checkpoint every K sequence numbers."""
    window: int = 512
    """L: the high watermark is the last stable checkpoint + L (must be >= 2K so that the
    primary can keep proposing while the next checkpoint becomes stable)."""
    max_batch: int = 512
    """Most requests in one pre-prepare."""
    batch_delay: float = 0.0
    """Seconds the primary may wait for a batch to fill when the pipeline has room."""
    fill_wait: float = 0.002
    """With nothing in flight, the primary waits for the clients of the last batches to
    be back: one gap of this many seconds, renewed while requests keep arriving (at most
    5). 0 proposes at once (see PbftReplica._batch_wait)."""
    max_inflight: int = 4
    """Pre-prepared but undecided slots the primary keeps in flight; batches grow while
    the pipeline is full (adaptive batching)."""
    view_change_timeout: float = 2.0
    """Seconds without progress on known work before a backup suspects the primary;
    doubled on each consecutive failed view change."""
    max_request_bytes: int = 1 << 20
    max_batch_bytes: int = 4 << 20
    """Most bytes of requests in one pre-prepare: it must fit in one transport frame
    (16 MiB) however large the requests are."""
    single_shot: bool = False
    """Decide exactly one value, at seq 1 (the consensus service of leaderless SMR)."""
    track_executed_set: bool = False
    """Report the key of the set of requests executed so far with every batch (the
    simulator's checker of equal states for equal executed sets)."""
    state_digest_every_batch: bool = False
    """Report the state root with every executed batch (simulator checkers); otherwise
    only at checkpoints, where it is needed anyway."""

    def __post_init__(self) -> None:
        if self.checkpoint_interval < 1:
            raise ValueError("checkpoint_interval must be at least 1")
        if self.window < 2 * self.checkpoint_interval:
            # So that the primary can keep proposing while the next checkpoint becomes
            # stable.
            raise ValueError(f"window ({self.window}) must be at least 2 * "
                             f"checkpoint_interval ({2 * self.checkpoint_interval})")
        if self.max_batch < 1 or self.max_inflight < 1 or self.view_change_timeout <= 0:
            raise ValueError("max_batch, max_inflight and view_change_timeout must be positive")
        if not 0 < self.max_request_bytes <= self.max_batch_bytes <= MAX_BATCH_BYTES:
            raise ValueError(
                f"need 0 < max_request_bytes <= max_batch_bytes <= {MAX_BATCH_BYTES} "
                "(a pre-prepare must fit in one 16 MiB frame)"
            )

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> PbftConfig:
        """Options from a cluster file's ``[pbft]`` table (times in milliseconds, the
        keys ending in ``_ms``); the defaults for what it leaves out."""
        kwargs: dict[str, Any] = {}
        for key, value in table.items():
            entry = TABLE.get(key)
            if entry is None:
                raise ValueError(f"unknown option {key!r} in [pbft]; known: {', '.join(TABLE)}")
            name, per_second, minimum = entry
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise ValueError(f"[pbft] {key} must be an integer >= {minimum}, got {value!r}")
            kwargs[name] = value / per_second if per_second != 1 else value
        try:
            return cls(**kwargs)
        except ValueError as e:
            raise ValueError(f"[pbft] {e}") from None

    def to_table(self) -> dict[str, Any]:
        """The ``[pbft]`` table of these options (what :meth:`from_table` reads back)."""
        return {
            key: round(getattr(self, name) * per_second) if per_second != 1
            else getattr(self, name)
            for key, (name, per_second, _) in TABLE.items()
        }


TABLE: dict[str, tuple[str, int, int]] = {
    "checkpoint_interval": ("checkpoint_interval", 1, 1),
    "window": ("window", 1, 1),
    "max_batch": ("max_batch", 1, 1),
    "batch_delay_ms": ("batch_delay", 1000, 0),
    "fill_wait_ms": ("fill_wait", 1000, 0),
    "max_inflight": ("max_inflight", 1, 1),
    "view_change_timeout_ms": ("view_change_timeout", 1000, 1),
    "max_request_bytes": ("max_request_bytes", 1, 1),
    "max_batch_bytes": ("max_batch_bytes", 1, 1),
}
"""The ``[pbft]`` table of a cluster file: key -> (field, units per second of a time in
the field's seconds, or 1; the smallest value the key takes). The test-only fields
(``single_shot``, ``track_executed_set``, ``state_digest_every_batch``) have no key."""
