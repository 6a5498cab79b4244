"""WAN delay lines (runtime/wan.py) on uvloop's millisecond clock, with a fake clock that
behaves like uvloop's and with the real loop factory — no test here sleeps."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from typing import Any

import pytest

from phalanx.crypto.keys import KeyPair
from phalanx.protocols.registry import protocol
from phalanx.runtime import loop_factory
from phalanx.runtime.framing import FRAME_OVERHEAD
from phalanx.runtime.metrics import Metrics
from phalanx.runtime.transport import Transport
from phalanx.runtime.wan import RELEASE_SLACK_S, Shaper, _DelayLine


class _Handle:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class UvClock:
    """A fake event loop with uvloop's timer semantics: time moves in whole ms, a delay
    is rounded to the nearest ms and a zero delay is ``call_soon`` (same tick)."""

    def __init__(self) -> None:
        self.ms = 1_000
        self._queue: list[tuple[int, int, Callable[[], None], _Handle]] = []
        self._order = itertools.count()
        self.callbacks = 0

    def time(self) -> float:
        return self.ms / 1000

    def call_at(self, when: float, fn: Callable[[], None]) -> _Handle:
        handle = _Handle()
        delay_ms = max(0, round((when - self.time()) * 1000))
        heapq.heappush(self._queue, (self.ms + delay_ms, next(self._order), fn, handle))
        return handle

    def run(self, limit: int = 10_000) -> None:
        while self._queue:
            at, _, fn, handle = heapq.heappop(self._queue)
            if handle.cancelled:
                continue
            self.callbacks += 1
            if self.callbacks > limit:
                raise AssertionError("the delay line spins: timer re-armed without progress")
            self.ms = max(self.ms, at)
            fn()

    def run_due(self) -> None:
        """Run the callbacks due by the current ms (time does not move)."""
        while self._queue and self._queue[0][0] <= self.ms:
            _, _, fn, handle = heapq.heappop(self._queue)
            if not handle.cancelled:
                self.callbacks += 1
                fn()


def test_a_delay_line_on_a_ms_clock_releases_without_spinning():
    clock = UvClock()
    line = _DelayLine(clock)  # type: ignore[arg-type]
    got: list[tuple[str, float]] = []
    t0 = clock.time()
    for tag, delay in (("a", 0.0004), ("b", 0.0101), ("c", 0.0106), ("d", 0.0200)):
        line.push(t0 + delay, lambda tag=tag: got.append((tag, clock.time() - t0)), ())
    clock.run()
    assert [tag for tag, _ in got] == ["a", "b", "c", "d"]
    want = {"a": 0.0004, "b": 0.0101, "c": 0.0106, "d": 0.0200}
    for tag, at in got:
        assert want[tag] - RELEASE_SLACK_S <= at <= want[tag] + RELEASE_SLACK_S
    assert clock.callbacks <= 4  # one timer per release, no re-arming


def test_the_shaper_paces_egress_fifo_per_link_and_forgets_empty_lines():
    clock = UvClock()
    shaper = Shaper({1: 0.05, 2: 0.0}, {}, bandwidth_bps=8e5, loop=clock)  # type: ignore[arg-type]
    t0 = clock.time()
    got: list[tuple[str, float]] = []

    def arrive(tag: str) -> None:
        got.append((tag, clock.time() - t0))

    shaper.send(1, 1000, arrive, "a")  # leaves after 10 ms, arrives at 60 ms
    shaper.send(1, 1000, arrive, "b")  # leaves at 20 ms, arrives at 70 ms
    shaper.send(2, 1000, arrive, "c")  # leaves at 30 ms, no delay
    assert shaper.lines == 0 and shaper.held_bytes == 3 * (1000 + FRAME_OVERHEAD)  # on the wire
    clock.run()
    assert [tag for tag, _ in got] == ["c", "a", "b"]
    times = dict(got)
    for tag, want in (("c", 0.03), ("a", 0.06), ("b", 0.07)):
        assert times[tag] == pytest.approx(want, abs=RELEASE_SLACK_S)
    assert shaper.lines == 0  # lines (one per client key on a replica) do not pile up


def test_close_drops_what_the_lines_hold():
    clock = UvClock()
    shaper = Shaper({1: 0.05}, {}, loop=clock)  # type: ignore[arg-type]
    got: list[Any] = []
    shaper.send(1, 10, got.append, "x")
    shaper.close()
    clock.run()
    assert got == [] and shaper.lines == 0


def test_on_the_real_loop_a_fractional_ms_delay_does_not_rearm(monkeypatch):
    """With the loop the runtime uses (uvloop here), a 0.4 ms and a 10.1 ms delay each
    take one timer callback (the old line re-armed 226 and 323 times)."""
    calls = 0
    release = _DelayLine._release

    def counting(self: _DelayLine) -> None:
        nonlocal calls
        calls += 1
        release(self)

    monkeypatch.setattr(_DelayLine, "_release", counting)

    async def scenario() -> list[str]:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        got: list[str] = []

        def arrive(tag: str) -> None:
            got.append(tag)
            if len(got) == 2:
                done.set_result(None)

        line = _DelayLine(loop)
        line.push(loop.time() + 0.0004, arrive, ("a",))
        line.push(loop.time() + 0.0101, arrive, ("b",))
        await asyncio.wait_for(done, 5)
        return got

    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        assert runner.run(scenario()) == ["a", "b"]
    assert calls <= 3


def test_an_overloaded_bandwidth_cap_holds_bounded_bytes_counts_drops_and_keeps_delivering():
    clock = UvClock()
    drops: list[int] = []
    # 800 kbit/s = one 100-byte payload per ms, offered at 10 per ms: 10x the capacity.
    shaper = Shaper({1: 0.005}, {}, bandwidth_bps=8e5, loop=clock,  # type: ignore[arg-type]
                    limit_bytes=1_000, on_drop=lambda: drops.append(1))
    got: list[int] = []
    held: list[int] = []
    for i in range(2_000):
        if i % 10 == 0:
            clock.ms += 1
            clock.run_due()
        shaper.send(1, 100 - FRAME_OVERHEAD, got.append, i)
        held.append(shaper.held_bytes)
    clock.run()
    assert max(held) <= 2 * 1_000  # the wire's limit plus the link's line
    assert len(drops) == shaper.dropped > 1_500
    # A dropped payload takes no wire time: the newest are delivered, about at capacity.
    assert got[-1] == 1_999 and 220 <= len(got) <= 300  # 200 ms / 0.8 ms, plus the queue
    assert len(got) + len(drops) == 2_000


def test_an_uncapped_delay_line_is_bounded_too():
    clock = UvClock()
    shaper = Shaper({1: 0.05}, {}, loop=clock, limit_bytes=500)  # type: ignore[arg-type]
    got: list[int] = []
    for i in range(100):
        shaper.send(1, 100 - FRAME_OVERHEAD, got.append, i)
    assert shaper._lines[("out", 1)].nbytes <= 500
    clock.run()
    assert got == list(range(95, 100)) and shaper.dropped == 95


def test_a_transport_bounds_its_shaper_by_its_send_queue_and_counts_its_drops():
    keys = [KeyPair.generate() for _ in range(2)]
    metrics = Metrics(0)
    transport = Transport(0, keys[0], {1: ("127.0.0.1", 1)}, [k.public_key for k in keys],
                          protocol("pbft").decoder(), None, None, metrics,
                          send_queue_limit=1 << 20)
    shaper = Shaper({1: 0.05}, {})
    transport.shaper = shaper
    assert shaper.limit_bytes == transport.send_queue_limit
    assert shaper.on_drop is not None
    shaper.on_drop()
    assert metrics.get("dropped_send_queue_full") == 1
