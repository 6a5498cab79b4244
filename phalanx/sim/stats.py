"""What a simulated run produced, as records: the requests clients completed, the clients
still waiting, and each node's traffic; and the liveness report built from them.

The simulator fills these in (:class:`~phalanx.sim.simulator.Simulation` hands them out
through ``completed()``, ``stuck_clients()`` and ``node_stats()``); they hold no
reference to it, so a report can be kept after the run.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CompletedRequest:
    """A request a client finished: with a result, or refused for good (``error``)."""

    client_index: int
    client: bytes
    timestamp: int
    result: bytes
    error: str | None
    submitted_at: float
    completed_at: float

    @property
    def latency(self) -> float:
        """Seconds from submission to completion."""
        return self.completed_at - self.submitted_at


@dataclass(frozen=True, slots=True)
class StuckClient:
    """A client that has not finished its requests (see :func:`liveness_report`)."""

    client_index: int
    client: bytes
    completed: int
    requests: int
    pending_timestamp: int | None
    waiting_since: float | None


@dataclass(slots=True)
class NodeStats:
    """Traffic of one replica or client (bytes are wire bytes; 0 with ``wire=False``)."""

    msgs_sent: int = 0
    bytes_sent: int = 0
    msgs_recv: int = 0
    bytes_recv: int = 0


def liveness_report(stuck: list[StuckClient], clients: int, now: float, seed: int) -> str:
    """One line per stuck client of ``clients`` at simulated time ``now``, or a note that
    all are done; the seed is named so that the run can be replayed."""
    if not stuck:
        return f"all {clients} clients done at t={now:.6f}s"
    lines = [f"{len(stuck)} of {clients} clients stuck at t={now:.6f}s (seed={seed}):"]
    for s in stuck:
        waiting = (
            f"waiting for timestamp {s.pending_timestamp} since t={s.waiting_since:.6f}s"
            if s.pending_timestamp is not None
            else "not waiting (next submit scheduled)"
        )
        lines.append(
            f"  client {s.client_index} ({s.client.hex()[:16]}): "
            f"{s.completed}/{s.requests} done, {waiting}"
        )
    return "\n".join(lines)
