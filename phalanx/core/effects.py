"""Effects: what a sans-I/O protocol core asks its driver to do.

A core never performs I/O. Each input (message, request, timer) returns a list of effects;
the driver (asyncio runtime or simulator) carries them out in this order: every ``Persist``
of the step is made durable first, then messages are sent — so nothing is answered before
it is on disk.
"""

from __future__ import annotations

from typing import Any, final

import msgspec

from phalanx.core.address import Address

# Every effect class is final: drivers dispatch on ``type(effect) is Send`` (one pointer
# compare), which a type checker narrows, both ways, only for final classes.


@final
class Send(msgspec.Struct, frozen=True):
    """Send ``msg`` to the process at ``dest``; an int ``dest`` is replica ``dest``'s
    process of the sender's own role and partition (the one process of a single-process
    replica). From a client: replica ``dest``'s front process (the one clients talk to)."""

    dest: int | Address
    msg: Any


@final
class Broadcast(msgspec.Struct, frozen=True):
    """Send ``msg`` to process (``role``, ``partition``) of every replica — by default the
    sender's own role and partition — except the sender itself: for a single-process
    replica, every other replica. Encoded once by the driver. From a client: every
    replica's front process."""

    msg: Any
    role: str | None = None
    partition: int | None = None


@final
class ToClient(msgspec.Struct, frozen=True):
    """Send ``msg`` to the client identified by its public key."""

    client: bytes
    msg: Any


@final
class SetTimer(msgspec.Struct, frozen=True):
    """(Re)arm timer ``name`` to fire after ``delay`` seconds; re-arming replaces it."""

    name: str
    delay: float


@final
class CancelTimer(msgspec.Struct, frozen=True):
    name: str


@final
class Persist(msgspec.Struct, frozen=True):
    """Durably write ``value`` under ``key`` (``None`` deletes) before the step's sends.

    A ``lazy`` record gates no send: the driver may write it with a later batch (in
    order, never after a later record for the same key), e.g. a commit mark that a
    restarted replica can learn again from its peers."""

    key: bytes
    value: bytes | None
    lazy: bool = False


@final
class Executed(msgspec.Struct, frozen=True):
    """Observation: the batch at ``seq`` was executed. Checkers and metrics consume it."""

    instance: int
    seq: int
    digest: bytes
    requests: list[tuple[bytes, int]]  # (client, timestamp) of each executed request
    state_digest: bytes  # the application's (empty where the core skipped it)
    executed_set: int = 0
    """Order-independent key of every request this replica executed so far (hosts that
    track it, for checkers of protocols without a total order); 0 when not tracked."""


@final
class Dropped(msgspec.Struct, frozen=True):
    """Observation: an input was rejected. ``reason`` names the metric it is counted in."""

    reason: str
    src: int


Effect = Send | Broadcast | ToClient | SetTimer | CancelTimer | Persist | Executed | Dropped


@final
class Completed(msgspec.Struct, frozen=True):
    """Client-side observation: request ``timestamp`` finished with ``result``
    (accepted on f+1 matching replies), or was refused for good with ``error`` (enough
    replicas agree that it can never execute: see :class:`NotAccepted` for the rest)."""

    timestamp: int
    result: bytes
    error: str | None = None


@final
class NotAccepted(msgspec.Struct, frozen=True):
    """Client-side observation: f+1 replicas refused request ``timestamp``, but not in a
    way that proves it can never execute (``reason``: the one most of them gave). The
    request stays outstanding — retransmitted, its replies still counted — until it
    completes or the caller abandons it: it may still execute, so this is "not accepted
    yet", never "failed"."""

    timestamp: int
    reason: str


ClientEffect = Send | Broadcast | SetTimer | CancelTimer | Completed | NotAccepted | Dropped
