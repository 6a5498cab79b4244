"""Print results objects (``phalanx bench --json`` or a peer's) side by side as a
Markdown table: ``python -m bench.peers.table FILE...``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

COLUMNS = ("system", "n", "clients", "payload B", "throughput tx/s", "p50 ms", "p99 ms",
           "CPU µs/tx (sum of nodes)", "bytes/tx (busiest node)", "host CPU busy",
           "this run's share of it", "safety")


def _num(value: float | None, spec: str = ",.0f") -> str:
    return "—" if value is None else f"{value:{spec}}"


def row(results: dict[str, Any]) -> list[str]:
    """One table row of a results object."""
    env = results.get("environment", {})
    duration = results["duration_s"]
    cores = env.get("cpu_count") or 0
    ours = sum(n["cpu_s"] or 0.0 for n in results["per_node"]) + results.get("client_cpu_s", 0)
    share = ours / (duration * cores) if duration and cores else None
    safety = results["safety"]
    return [
        results["protocol"],
        str(results["n"]),
        str(results["clients"]),
        str(results["payload_bytes"]),
        _num(results["throughput_tps"]),
        _num(results["latency_ms"]["p50"], ",.1f"),
        _num(results["latency_ms"]["p99"], ",.1f"),
        _num(results["cpu_us_per_tx"]),
        _num(results["max_node_bytes_per_tx"]),
        _num(None if env.get("host_cpu_busy") is None else env["host_cpu_busy"] * 100, ".0f")
        + "%",
        _num(None if share is None else share * 100, ".0f") + "%",
        "ok" if safety["state_roots_equal"] and safety["logs_consistent"] else "FAILED",
    ]


def table(docs: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row(d)) + " |" for d in docs]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    paths = argv if argv is not None else sys.argv[1:]
    if not paths:
        print(__doc__, file=sys.stderr)
        return 2
    print(table([json.loads(Path(p).read_text()) for p in paths]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
