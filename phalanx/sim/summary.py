"""The digest of a simulated run that ``phalanx sim`` prints and writes as JSON: what
completed, how long it took, every replica's committed-log hash, the counters and the
trace hash. Equal seeds give equal digests, byte for byte."""

from __future__ import annotations

from typing import Any

from phalanx.sim.simulator import Simulation


def run_summary(sim: Simulation) -> dict[str, Any]:
    """A JSON-ready digest of ``sim``'s run so far."""
    latencies = sorted(sim.latencies())
    return {
        "seed": sim.seed,
        "n": sim.n,
        "time_s": sim.now,
        "events": sim.events_processed,
        "byzantine": list(sim.byzantine),
        "completed": len(sim.completed()),
        "latency_s": {
            "p50": _percentile(latencies, 0.50),
            "p90": _percentile(latencies, 0.90),
            "p99": _percentile(latencies, 0.99),
        },
        "log_hashes": {r: sim.committed_log_hash(r) for r in range(sim.n)},
        "counters": dict(sorted((sim.counters + sim.network.counters).items())),
        "trace_hash": sim.trace_hash(),
        "stuck_clients": len(sim.stuck_clients()),
    }


def _percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, int(q * len(sorted_values)))
    return sorted_values[index]
