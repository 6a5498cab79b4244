"""The digest of a simulated run that ``phalanx sim`` prints and writes as JSON: what
completed, how long it took, every replica's committed-log hash, the counters and the
trace hash. Equal seeds give equal digests, byte for byte. Latency percentiles are the
nearest-rank ones of :mod:`phalanx.measure.percentile`, as in ``phalanx bench``."""

from __future__ import annotations

from typing import Any

from phalanx.measure.percentile import percentile
from phalanx.sim.simulator import Simulation


def run_summary(sim: Simulation) -> dict[str, Any]:
    """A JSON-ready digest of ``sim``'s run so far."""
    latencies = sim.latencies()
    return {
        "seed": sim.seed,
        "n": sim.n,
        "time_s": sim.now,
        "events": sim.events_processed,
        "byzantine": list(sim.byzantine),
        "completed": len(sim.completed()),
        "latency_s": {
            f"p{q}": percentile(latencies, q) if latencies else None for q in (50, 90, 99)
        },
        "log_hashes": {r: sim.committed_log_hash(r) for r in range(sim.n)},
        "counters": dict(sorted((sim.counters + sim.network.counters).items())),
        "trace_hash": sim.trace_hash(),
        "stuck_clients": len(sim.stuck_clients()),
    }
