"""The deadlines of a started client frame (phalanx/runtime/client_links.py), driven
sweep by sweep with a hand-made decoder state: a frame that stops arriving, or trickles
in slower than the minimum rate, is overdue; a link that keeps completing frames, or is
between frames, never is. (tests/test_transport.py checks the same on real sockets.)"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from phalanx.runtime.client_links import ClientLinkLimits, FrameDeadlines

LIMITS = ClientLinkLimits(max_clients=4, frame_stall_s=10.0, frame_min_rate=1000.0)


@dataclass
class Decoder:
    frames_decoded: int = 0
    buffered: int = 0
    pending_frame_size: int | None = None


def sweep(deadlines: FrameDeadlines, now: float, **links: Decoder) -> list[str]:
    return [link for link, _ in deadlines.overdue(links.items(), now)]


def test_a_frame_that_stops_arriving_is_overdue_once_stalled_for_frame_stall_s() -> None:
    deadlines = FrameDeadlines(LIMITS)
    held = Decoder(buffered=1 << 20, pending_frame_size=16 << 20)
    assert sweep(deadlines, 0.0, held=held) == []
    assert sweep(deadlines, 9.0, held=held) == []
    assert sweep(deadlines, 10.5, held=held) == ["held"]


def test_a_frame_that_trickles_is_overdue_after_the_grace_plus_size_over_min_rate() -> None:
    deadlines = FrameDeadlines(LIMITS)
    trickle = Decoder(buffered=4, pending_frame_size=20_000)  # 10 s + 20 s allowed
    overdue_at = None
    for second in range(60):
        trickle.buffered += 1  # a byte a second: always progressing
        if sweep(deadlines, float(second), trickle=trickle):
            overdue_at = second
            break
    assert overdue_at == 31


def test_links_that_keep_completing_frames_or_sit_between_frames_are_never_overdue() -> None:
    deadlines = FrameDeadlines(LIMITS)
    busy = Decoder(buffered=100, pending_frame_size=10_000_000)  # a huge frame each time
    idle = Decoder()
    for second in range(0, 600, 5):
        busy.frames_decoded += 1  # one completed since the last sweep, the next begun
        assert sweep(deadlines, float(second), busy=busy, idle=idle) == []


def test_a_link_between_frames_starts_a_fresh_clock_with_its_next_frame() -> None:
    deadlines = FrameDeadlines(LIMITS)
    link = Decoder(buffered=10, pending_frame_size=100)
    assert sweep(deadlines, 0.0, link=link) == []
    link.buffered, link.pending_frame_size, link.frames_decoded = 0, None, 1
    assert sweep(deadlines, 8.0, link=link) == []
    link.buffered, link.pending_frame_size = 10, 100  # the same bytes, but a new frame
    assert sweep(deadlines, 9.0, link=link) == []
    assert sweep(deadlines, 18.0, link=link) == []
    assert sweep(deadlines, 19.5, link=link) == ["link"]


@pytest.mark.parametrize("bad", [
    {"max_clients": 0}, {"frame_stall_s": 0.0}, {"frame_min_rate": -1.0}])
def test_limits_refuse_values_that_would_disable_the_bounds(bad) -> None:
    with pytest.raises(ValueError):
        ClientLinkLimits(**bad)
