"""PBFT tunables, with defaults that suit a LAN cluster of a few replicas."""

from __future__ import annotations

from dataclasses import dataclass, fields

PLANTED_BUGS = (
    "preprepare_digest",
    "checkpoint_signature",
    "request_authenticator",
    "view_change_proof",
    "commit_quorum",
    "quorum_2f_plus_1",
    "unsigned_new_view",
)
"""Deliberate bugs for the fuzzer's self-test (``tests/test_fuzz.py``): a pre-prepare
accepted without checking its digest; CHECKPOINT signatures not verified; client
authenticators not verified; VIEW-CHANGE signatures (NEW-VIEW's proof) not verified; a
commit quorum one too small; every quorum 2f+1 whatever n (right only for n = 3f+1); a
NEW-VIEW for a later view taken from any sender without the new primary's signature."""

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
    state_root_every_batch: bool = False
    """Report the state root with every executed batch (simulator checkers); otherwise
    only at checkpoints, where it is needed anyway."""
    planted_bug: str | None = None
    """Testing only: switch on one of :data:`PLANTED_BUGS` (never in a real cluster)."""

    def __post_init__(self) -> None:
        if self.planted_bug is not None and self.planted_bug not in PLANTED_BUGS:
            raise ValueError(f"unknown planted bug {self.planted_bug!r}; known: {PLANTED_BUGS}")
        if self.checkpoint_interval < 1 or self.window < 2 * self.checkpoint_interval:
            raise ValueError("need checkpoint_interval >= 1 and window >= 2 * checkpoint_interval")
        if self.max_batch < 1 or self.max_inflight < 1 or self.view_change_timeout <= 0:
            raise ValueError("max_batch, max_inflight and view_change_timeout must be positive")
        if not 0 < self.max_request_bytes <= self.max_batch_bytes <= MAX_BATCH_BYTES:
            raise ValueError(
                f"need 0 < max_request_bytes <= max_batch_bytes <= {MAX_BATCH_BYTES} "
                "(a pre-prepare must fit in one 16 MiB frame)"
            )

    @classmethod
    def from_options(cls, options: dict[str, object]) -> PbftConfig:
        """Build from a config file's ``[pbft]`` table (``*_ms`` keys in milliseconds)."""
        known = {f.name for f in fields(cls)}
        kwargs: dict[str, object] = {}
        for key, value in options.items():
            name = key
            if key.endswith("_ms"):
                name, value = key[:-3], float(value) / 1000.0  # type: ignore[arg-type]
            if name not in known:
                raise ValueError(f"unknown pbft option {key!r}")
            kwargs[name] = value
        return cls(**kwargs)  # type: ignore[arg-type]
