"""PBFT messages (Castro & Liskov), with an ``instance`` id on each so that several
independent PBFT instances can share one replica process (DQBFT runs one per replica plus
an ordering instance).

Authentication: every message travels on a MAC-authenticated link, so the receiver knows
its sender. Only the messages that end up inside proofs forwarded to third parties are
signed: CHECKPOINT (stable-checkpoint proofs), VIEW-CHANGE (NEW-VIEW's proof) and
NEW-VIEW itself, which lagging replicas take from whoever forwards it. The view change
therefore uses the summary (P/Q) selection rule of the TOCS paper, with signed
VIEW-CHANGEs standing in for its VIEW-CHANGE-ACKs.
"""

from __future__ import annotations

import msgspec

from phalanx.core.certificates import BlockSig, Certificates, FetchCertificates
from phalanx.core.messages import CLIENT_MESSAGES, Digest, NonNegative, StateDigest, encode

_opts = dict(array_like=True, frozen=True, gc=False)


class PrePrepare(msgspec.Struct, tag=10, **_opts):
    """The primary of ``view`` proposes ``payload`` (digest ``digest``) for slot ``seq``."""

    instance: NonNegative
    view: NonNegative
    seq: NonNegative
    digest: Digest
    payload: bytes


class Prepare(msgspec.Struct, tag=11, **_opts):
    instance: NonNegative
    view: NonNegative
    seq: NonNegative
    digest: Digest


class Commit(msgspec.Struct, tag=12, **_opts):
    instance: NonNegative
    view: NonNegative
    seq: NonNegative
    digest: Digest


class Checkpoint(msgspec.Struct, tag=13, **_opts):
    """Replica ``replica`` has executed up to ``seq`` and its state digest is ``state_digest``."""

    instance: NonNegative
    seq: NonNegative
    state_digest: StateDigest
    replica: NonNegative
    sig: bytes = b""

    def signed_bytes(self) -> bytes:
        return encode(msgspec.structs.replace(self, sig=b""))


class SlotSummary(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """``digest`` was prepared (P set) or pre-prepared (Q set) at ``seq`` in ``view``."""

    seq: NonNegative
    digest: Digest
    view: NonNegative


class ViewChange(msgspec.Struct, tag=14, **_opts):
    """Replica ``replica`` moves to ``new_view``.

    ``checkpoint_proof`` holds 2f+1 signed CHECKPOINTs for its stable checkpoint
    ``checkpoint_seq`` (empty for the initial checkpoint 0). ``prepared`` has, per slot
    above it, the prepared digest of the highest view; ``preprepared`` every digest it
    pre-prepared with the latest view it did so.
    """

    instance: NonNegative
    new_view: NonNegative
    replica: NonNegative
    checkpoint_seq: NonNegative
    checkpoint_digest: StateDigest
    checkpoint_proof: list[Checkpoint]
    prepared: list[SlotSummary]
    preprepared: list[SlotSummary]
    sig: bytes = b""

    def signed_bytes(self) -> bytes:
        return encode(msgspec.structs.replace(self, sig=b""))


class NewView(msgspec.Struct, tag=15, **_opts):
    """The new primary's proof: the VIEW-CHANGEs it decided from. Backups recompute the
    decisions from them, so a primary that drops a prepared request is caught.

    Signed by the primary of ``view``: any quorum of the (signed) VIEW-CHANGEs for a view
    is a valid proof, and different quorums may decide different slots, so a replica
    that missed the primary's choice and takes a NEW-VIEW from someone else must know
    that the primary chose it (otherwise a Byzantine replica could hand it another one)."""

    instance: NonNegative
    view: NonNegative
    view_changes: list[ViewChange]
    sig: bytes = b""

    def signed_bytes(self) -> bytes:
        return encode(msgspec.structs.replace(self, sig=b""))


class FetchPayload(msgspec.Struct, tag=16, **_opts):
    """Ask for the payload with ``digest`` (needed after a view change)."""

    instance: NonNegative
    digest: Digest


class PayloadData(msgspec.Struct, tag=17, **_opts):
    instance: NonNegative
    payload: bytes


class FetchCommitted(msgspec.Struct, tag=18, **_opts):
    """A lagging replica asks for committed slots ``first..last``."""

    instance: NonNegative
    first: NonNegative
    last: NonNegative


class CommittedSlot(msgspec.Struct, tag=19, **_opts):
    """The sender committed ``digest`` at ``seq``. f+1 matching claims prove it."""

    instance: NonNegative
    seq: NonNegative
    digest: Digest
    payload: bytes


class FetchState(msgspec.Struct, tag=20, **_opts):
    """Ask for the snapshot of stable checkpoint ``seq``."""

    instance: NonNegative
    seq: NonNegative


class StateData(msgspec.Struct, tag=21, **_opts):
    """The snapshot of the sender's latest stable checkpoint (at or above the one asked
    for), with its proof; the receiver checks the snapshot against the proven digest."""

    instance: NonNegative
    seq: NonNegative
    snapshot: bytes
    proof: list[Checkpoint]


PBFT_MESSAGES = (
    PrePrepare,
    Prepare,
    Commit,
    Checkpoint,
    ViewChange,
    NewView,
    FetchPayload,
    PayloadData,
    FetchCommitted,
    CommittedSlot,
    FetchState,
    StateData,
)

# Commit certificates of a block-making state machine (the ledger): BlockSig (tag 39)
# votes, and FetchCertificates / Certificates (37, 38) for replicas that missed them.
ALL_MESSAGES = CLIENT_MESSAGES + PBFT_MESSAGES + (BlockSig, FetchCertificates, Certificates)
