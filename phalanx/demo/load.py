"""What a demo's load observed through the primary's crash, and when commits resumed."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class LoadLog:
    """What the demo's clients observed: each commit, each refusal, each time-out, and
    when the load started, ended and the primary was killed (``perf_counter`` seconds)."""

    completions: list[tuple[float, float]] = field(default_factory=list)  # (done at, latency)
    rejected: dict[str, int] = field(default_factory=dict)
    """Requests refused, by reason."""
    timeouts: int = 0
    kill_at: float | None = None
    started: float = 0.0
    ended: float = 0.0

    def reject(self, reason: str) -> None:
        """Count one refused request."""
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def latencies(self) -> list[float]:
        """Seconds each committed request took."""
        return [latency for _, latency in self.completions]


def view_change(log: LoadLog) -> tuple[float | None, int]:
    """When commits resumed after the kill (seconds after it) and how many followed.

    The view change is the longest pause in commits after the kill: requests the backups
    had already prepared may still commit right after it, so the first commit after the
    kill does not mark the new view."""
    assert log.kill_at is not None
    times = sorted(done for done, _ in log.completions if done > log.kill_at)
    if not times:
        return None, 0
    previous, longest, resume_index = log.kill_at, -1.0, 0
    for index, done in enumerate(times):
        if done - previous > longest:
            longest, resume_index = done - previous, index
        previous = done
    return times[resume_index] - log.kill_at, len(times) - resume_index
