"""``phalanx sim``: one seeded, simulated run of a protocol, printed deterministically."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from phalanx.core.quorum import Quorums
from phalanx.protocols.registry import protocol
from phalanx.runtime.sim.latency import LatencyMatrix
from phalanx.runtime.sim.network import (
    ConstantLatency,
    LatencyModel,
    MatrixLatency,
    NetworkModel,
    UniformLatency,
)
from phalanx.runtime.sim.simulator import Simulation
from phalanx.statemachine.kv import KVStore, encode_put


@dataclass
class SimSpec:
    protocol: str = "pbft"
    n: int = 4
    f: int | None = None
    """Faults tolerated (quorum sizes); None: the most ``n`` replicas tolerate."""
    seed: int = 1
    clients: int = 4
    requests: int = 50
    payload: int = 64
    duration: float = 60.0
    latency_ms: float = 1.0
    jitter_ms: float = 0.0
    drop: float = 0.0
    duplicate: float = 0.0
    reorder_ms: float = 0.0
    crash: tuple[tuple[int, float, float | None], ...] = ()  # (replica, at, restart_at)
    wan: str | None = None
    regions: tuple[str, ...] = ()
    options: dict[str, Any] | None = None


def kv_simulation(
    protocol_name: str,
    n: int,
    seed: int,
    network: NetworkModel,
    options: dict[str, Any],
    client_retransmit_s: float,
    multicast: bool = False,
    f: int | None = None,
    **kwargs: Any,
) -> Simulation:
    """A simulated cluster of ``protocol_name`` replicas over the key-value store, with
    its clients' cores (sending each request to every replica if ``multicast``); ``f``
    defaults to the most faults ``n`` replicas tolerate; ``kwargs`` go to
    :class:`Simulation` (checkers, trace, ...)."""
    proto = protocol(protocol_name)
    quorums = Quorums.for_n(n) if f is None else Quorums(n, f)

    def make_client(crypto: Any) -> Any:
        core = proto.make_client(crypto, quorums, client_retransmit_s)
        if multicast:
            core.multicast = True  # type: ignore[attr-defined]
        return core

    return Simulation(
        seed,
        n,
        lambda rid, crypto: proto.make_replica(rid, quorums, crypto, KVStore, options),
        make_client,
        network,
        messages=proto.messages,
        **kwargs,
    )


def build(spec: SimSpec) -> Simulation:
    latency: LatencyModel
    if spec.wan:
        if not spec.regions:
            raise ValueError("--wan needs --regions (one region per replica, comma-separated)")
        latency = MatrixLatency(LatencyMatrix.from_csv(spec.wan), spec.regions,
                                jitter=spec.jitter_ms / 1000)
    elif spec.jitter_ms:
        lo = spec.latency_ms / 1000
        latency = UniformLatency(lo, lo + spec.jitter_ms / 1000)
    else:
        latency = ConstantLatency(spec.latency_ms / 1000)
    network = NetworkModel(
        latency=latency, drop=spec.drop, duplicate=spec.duplicate, reorder=spec.reorder_ms / 1000
    )
    sim = kv_simulation(spec.protocol, spec.n, spec.seed, network, dict(spec.options or {}), 0.5,
                        f=spec.f)
    value = b"v" * spec.payload

    def ops(client: int, i: int) -> bytes:
        return encode_put(f"c{client}:{i % 16}".encode(), value)

    sim.add_clients(spec.clients, ops, spec.requests)
    for replica, at, restart_at in spec.crash:
        sim.crash(replica, at=at)
        if restart_at is not None:
            sim.restart(replica, at=restart_at)
    return sim


def run(spec: SimSpec) -> dict[str, Any]:
    """Run to completion (or ``duration`` simulated seconds) and summarise. The result is
    a pure function of the spec: the same seed gives the same bytes."""
    sim = build(spec)
    sim.run(until=spec.duration, stop_when=sim.all_clients_done)
    done_at = sim.now
    sim.run(until=sim.now + 2.0)  # let every replica finish executing what committed
    summary = sim.summary()
    summary["protocol"] = spec.protocol
    summary["f"] = Quorums.for_n(spec.n).f if spec.f is None else spec.f
    summary["completed_at_s"] = done_at
    summary["state_roots"] = {
        r: (core.state_root().hex() if (core := sim.replica(r)) is not None else None)
        for r in range(spec.n)
    }
    return summary


def render(summary: dict[str, Any]) -> str:
    lines = [
        f"protocol={summary['protocol']} n={summary['n']} f={summary['f']} seed={summary['seed']} "
        f"completed={summary['completed']} stuck_clients={summary['stuck_clients']} "
        f"sim_time={summary['completed_at_s']:.3f}s events={summary['events']}",
    ]
    lat = summary["latency_s"]
    if lat["p50"] is not None:
        lines.append(
            f"latency p50={lat['p50'] * 1000:.2f}ms p90={lat['p90'] * 1000:.2f}ms "
            f"p99={lat['p99'] * 1000:.2f}ms"
        )
    for r, digest in summary["log_hashes"].items():
        lines.append(f"replica {r}: committed-log {digest} state-root {summary['state_roots'][r]}")
    lines.append(f"trace {summary['trace_hash']}")
    return "\n".join(lines)


def to_json(summary: dict[str, Any]) -> str:
    return json.dumps(summary, sort_keys=True, indent=2, default=str)
