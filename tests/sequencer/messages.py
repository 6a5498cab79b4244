"""The sequencer's messages (tags 200+: test-only protocols stay clear of real ones)."""

from __future__ import annotations

import msgspec

from phalanx.core.messages import NonNegative

_opts = dict(array_like=True, frozen=True, gc=False)


class Order(msgspec.Struct, tag=200, **_opts):
    """The leader of ``view`` puts ``batch`` (encoded requests) at ``seq``."""

    view: NonNegative
    seq: NonNegative
    batch: bytes


class Ack(msgspec.Struct, tag=201, **_opts):
    """A follower persisted the ORDER at ``seq`` of ``view``."""

    view: NonNegative
    seq: NonNegative


class Commit(msgspec.Struct, tag=202, **_opts):
    """Every entry up to ``seq`` is committed (a majority persisted it)."""

    view: NonNegative
    seq: NonNegative


class Entry(msgspec.Struct, array_like=True, frozen=True, gc=False):
    seq: NonNegative
    view: NonNegative  # the view in which this replica accepted it
    batch: bytes


class StartView(msgspec.Struct, tag=203, **_opts):
    """A replica moves to ``view``: its log (entries above what it executed) and how far
    it knows entries to be committed."""

    view: NonNegative
    replica: NonNegative
    committed: NonNegative
    entries: list[Entry]


class NewView(msgspec.Struct, tag=204, **_opts):
    """The new leader's log for ``view``: every replica adopts it (and acknowledges)."""

    view: NonNegative
    committed: NonNegative
    entries: list[Entry]


class Witnessed(msgspec.Struct, tag=205, **_opts):
    """Internal, from a replica's front process to its own witness process of partition
    ``seq mod witnesses``: the replica executed the batch of digest ``digest`` at
    ``seq``."""

    seq: NonNegative
    digest: bytes


class WitnessAck(msgspec.Struct, tag=206, **_opts):
    """Internal, from a witness to its front: it holds every position of its partition
    below ``next`` (so the front re-sends from there)."""

    next: NonNegative


MESSAGES = (Order, Ack, Commit, StartView, NewView, Witnessed, WitnessAck)
