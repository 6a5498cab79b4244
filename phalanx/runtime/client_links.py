"""Bounds on a replica's authenticated client links: how many, and how long a started
frame may take to arrive.

Anyone with a key pair is a client (client keys are not registered), so an
authenticated client link is an anonymous peer's. Without bounds it could hold a
partial frame of up to ``max_frame`` (16 MiB) buffered at the replica for as long as it
likes, and open as many such links as it has keys. So:

- at most ``max_clients`` client links are open at once; a further client is dropped
  right after its handshake (``dropped_too_many_clients``). A client reconnecting with
  the key of an open link replaces that link and is not refused;
- a client link that has started a frame must keep it coming: it is dropped
  (``dropped_frame_timeout``) once no byte of it arrived for ``frame_stall_s``, or once
  the frame is older than ``frame_stall_s + size / frame_min_rate`` (a trickle of a
  byte now and then does not hold 16 MiB for ever). Both are generous: an honest client
  on a slow link sends a 1 MiB frame at 64 KiB/s within 26 s.

Replica-to-replica links are exempt. A replica holds one incoming link per peer replica
(a newer one replaces it), so a Byzantine replica pins at most one frame; and cutting a
slow WAN link between replicas would cost the cluster a reconnection and
retransmissions just when the link is struggling.

The deadlines are checked by sampling each client link's frame decoder once per sweep
(:data:`SWEEP_S`), so the receive path does no extra work per packet: progress is the
decoder's frame count or buffered byte count having changed since the last sweep.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

MAX_CLIENTS = 1024
FRAME_STALL_S = 10.0
FRAME_MIN_RATE = 64 * 1024
"""Bytes per second a started client frame must average, after a grace of
``frame_stall_s``."""
SWEEP_S = 1.0

Link = TypeVar("Link", bound=Hashable)


@dataclass(frozen=True, slots=True)
class ClientLinkLimits:
    """What a replica allows its client links (see the module docstring)."""

    max_clients: int = MAX_CLIENTS
    frame_stall_s: float = FRAME_STALL_S
    frame_min_rate: float = FRAME_MIN_RATE

    def __post_init__(self) -> None:
        if self.max_clients < 1:
            raise ValueError(f"max_clients must be at least 1, got {self.max_clients}")
        if not (self.frame_stall_s > 0 and self.frame_min_rate > 0):
            raise ValueError("frame_stall_s and frame_min_rate must be positive")


class FrameProgress(Protocol):
    """What the deadlines read of a link's frame decoder."""

    @property
    def frames_decoded(self) -> int: ...

    @property
    def buffered(self) -> int: ...

    @property
    def pending_frame_size(self) -> int | None: ...


@dataclass(slots=True)
class _Partial:
    frames: int  # the link's decoded frames when this partial frame was first seen
    buffered: int  # its bytes at the last sweep
    started: float
    progressed: float


class FrameDeadlines(Generic[Link]):
    """Decides, sweep by sweep, which links' started frames are overdue."""

    def __init__(self, limits: ClientLinkLimits) -> None:
        self.limits = limits
        self._partials: dict[Link, _Partial] = {}

    def overdue(self, links: Iterable[tuple[Link, FrameProgress]], now: float
                ) -> list[tuple[Link, str]]:
        """The links (of ``links``: every client link, with its decoder) to drop now,
        each with the reason in words."""
        limits = self.limits
        seen: dict[Link, _Partial] = {}
        late = []
        for link, decoder in links:
            buffered = decoder.buffered
            if not buffered:
                continue  # between frames: nothing held, nothing owed
            frames = decoder.frames_decoded
            partial = self._partials.get(link)
            if partial is None or partial.frames != frames:
                partial = _Partial(frames, buffered, now, now)  # a frame started since
            elif partial.buffered != buffered:
                partial.buffered = buffered
                partial.progressed = now
            seen[link] = partial
            size = decoder.pending_frame_size
            if now - partial.progressed > limits.frame_stall_s:
                late.append((link, f"no byte of its frame for {now - partial.progressed:.1f} s "
                                   f"({buffered} of {size or '?'} bytes)"))
            elif size is not None and now - partial.started > (
                    limits.frame_stall_s + size / limits.frame_min_rate):
                late.append((link, f"{buffered} of a {size}-byte frame in "
                                   f"{now - partial.started:.1f} s"))
        self._partials = seen  # links gone or between frames are forgotten
        return late
