"""A calibrated scale simulation: the real protocol cores in the simulator, with CPU and
bandwidth as queued resources charged from a cost model, reported as a bench results
object (``phalanx sim --cost-model``).

The simulated run mirrors ``phalanx bench``: closed-loop clients (spread over
``client_procs`` load-generator CPUs) write ``payload``-byte values; after ``warmup``
simulated seconds the requests completed within ``duration`` seconds are counted and
their latencies kept; each replica's CPU, bytes and per-phase accounting over the same
window feed the same bottleneck verdict. The network is a constant loopback latency or
an RTT matrix with regions (replicas, then clients round-robin, as in ``phalanx sim``).
``host_cores`` makes all nodes share that many cores (to reproduce a bench run on this
machine, where replicas and load generators share 2 cores).

Every safety checker of the simulator runs as usual (``checkers=False`` skips them for
the largest committees); either way the reported safety is computed from the replicas'
executed logs at the end (:func:`end_of_run_safety`). One seed gives one results object,
byte for byte.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from phalanx.bench.results import (
    LatencyHistogram,
    LoadgenReport,
    NodeWindow,
    RunSpec,
    Safety,
    build_results,
)
from phalanx.measure.accounting import delta
from phalanx.measure.latency import LatencyMatrix
from phalanx.protocols.registry import protocol
from phalanx.sim.costmodel import CostModel
from phalanx.sim.kv_cluster import kv_simulation
from phalanx.sim.network import ConstantLatency, LatencyModel, MatrixLatency, NetworkModel
from phalanx.sim.resources import Resources
from phalanx.sim.simulator import Simulation
from phalanx.statemachine.kv import encode_put

TIMELINE_BIN_S = 0.1
LOOPBACK_ONE_WAY_S = 0.00005
"""One-way latency of loopback TCP here, as the simulated network's default."""
CLIENT_RETRANSMIT_S = 10.0
"""Clients retransmit late; a large committee must not drown in broadcast retries."""


@dataclass
class ScaleSpec:
    protocol: str = "pbft"
    n: int = 4
    clients: int = 32
    payload: int = 512
    warmup: float = 1.0
    duration: float = 3.0
    seed: int = 1
    wan: str | None = None
    regions: tuple[str, ...] = ()
    latency_s: float = LOOPBACK_ONE_WAY_S
    bandwidth_bps: float | None = None
    host_cores: int | None = None
    client_procs: int = 2
    cpu_share: float = 1.0
    checkers: bool = True
    options: dict[str, Any] = field(default_factory=dict)
    cost_model_name: str = ""


def _endpoint_regions(spec: ScaleSpec) -> list[str]:
    """One region per endpoint, placed as ``phalanx bench --wan`` places processes:
    replica ``i`` in ``regions[i % k]``, and every client of load generator ``j``
    (client ``c`` runs in generator ``c % client_procs``, as :class:`Resources` charges
    it) in that generator's region ``regions[(n + j) % k]`` (see ``WanPlan``)."""
    k = len(spec.regions)
    procs = max(1, spec.client_procs)
    return ([spec.regions[i % k] for i in range(spec.n)]
            + [spec.regions[(spec.n + c % procs) % k] for c in range(spec.clients)])


def _network(spec: ScaleSpec) -> NetworkModel:
    latency: LatencyModel
    if spec.wan:
        if not spec.regions:
            raise ValueError("--wan needs --regions")
        latency = MatrixLatency(LatencyMatrix.from_csv(spec.wan), _endpoint_regions(spec))
    else:
        latency = ConstantLatency(spec.latency_s)
    return NetworkModel(latency=latency)


def build_scale(spec: ScaleSpec, model: CostModel) -> Simulation:
    """The simulation of ``spec`` with its clients added and ``model``'s resources
    installed as ``sim.resources`` (not yet run)."""
    if spec.n < 1 or spec.clients < 1 or spec.duration <= 0 or spec.warmup < 0:
        raise ValueError("need n, clients >= 1, duration > 0, warmup >= 0")
    sim = kv_simulation(
        spec.protocol, spec.n, spec.seed, _network(spec), dict(spec.options),
        CLIENT_RETRANSMIT_S, checkers=None if spec.checkers else [],
    )
    filler = b"v" * spec.payload

    def ops(client: int, i: int) -> bytes:
        value = (i.to_bytes(8, "big") + filler)[: spec.payload]
        return encode_put(f"c{client:06d}-k{i % 64:04d}".encode(), value)

    sim.resources = Resources(
        model, sim.process_count, bandwidth_bps=spec.bandwidth_bps, host_cores=spec.host_cores,
        client_procs=spec.client_procs, op_bytes=len(ops(0, 0)),  # every op is this long
        phase_of=protocol(spec.protocol).phases, cpu_share=spec.cpu_share,
    )
    sim.add_clients(spec.clients, ops, 1 << 40)
    return sim


def run_scale(spec: ScaleSpec, model: CostModel,
              sim: Simulation | None = None) -> dict[str, Any]:
    """Simulate ``spec`` under ``model``; the results object of ``phalanx bench``.
    ``sim`` is :func:`build_scale`'s simulation, if the caller scheduled faults in it."""
    if sim is None:
        sim = build_scale(spec, model)
    resources: Resources = sim.resources
    quorums = protocol(spec.protocol).quorums(spec.n)
    start, end = spec.warmup, spec.warmup + spec.duration
    marks: dict[str, Any] = {}
    def mark(name: str) -> Any:
        def take(at: Simulation) -> None:
            marks[name] = resources.snapshot(at.now)
            marks[name + "_loadgen"] = resources.loadgen_cpu_s()
        return take

    sim.call_at(start, mark("start"))
    sim.call_at(end, mark("end"))
    wall = time.perf_counter()
    sim.run(until=end)
    wall = time.perf_counter() - wall

    hist = LatencyHistogram()
    bins = max(1, round(spec.duration / TIMELINE_BIN_S))
    timeline = [0] * bins
    committed = 0
    for done in sim.completed():
        if done.error is None and start <= done.completed_at < end:
            committed += 1
            hist.record_us(done.latency * 1e6)
            timeline[min(bins - 1, int((done.completed_at - start) / TIMELINE_BIN_S))] += 1
    report = LoadgenReport(clients=spec.clients, committed=committed, histogram=hist,
                           timeline=timeline, bin_s=TIMELINE_BIN_S, completed_total=committed)
    nodes = []
    for r in range(spec.n):
        before, after = marks["start"][r], marks["end"][r]
        acct = delta(before["accounting"], after["accounting"])
        nodes.append(NodeWindow(
            id=r, cpu_s=after["cpu_s"] - before["cpu_s"],
            bytes_sent=sum(v[1] for v in acct["sent"].values()),
            bytes_recv=sum(v[1] for v in acct["recv"].values()),
            msgs_sent=sum(v[0] for v in acct["sent"].values()),
            peak_rss_bytes=None, accounting=acct, bandwidth_bps=spec.bandwidth_bps,
        ))
    loadgen_cpu = marks["end_loadgen"] - marks["start_loadgen"]
    total_cpu = sum(n.cpu_s or 0.0 for n in nodes) + loadgen_cpu
    env: dict[str, Any] = {
        "python": None, "platform": "phalanx simulator", "cpu_count": spec.host_cores,
        "uvloop": None, "loadgen_cpu_s": loadgen_cpu, "commit": None,
        "date": None, "cost_model": spec.cost_model_name,
        "cost_model_machine": model.machine,
        "host_cpu_busy": round(min(1.0, total_cpu / spec.cpu_share
                                   / (spec.host_cores * spec.duration)), 4)
        if spec.host_cores else None,
        "cpu_share": spec.cpu_share,
    }
    run_spec = RunSpec(protocol=spec.protocol, n=spec.n, f=quorums.f, clients=spec.clients,
                       payload_bytes=spec.payload, duration_s=spec.duration,
                       warmup_s=spec.warmup, client_procs=spec.client_procs,
                       options=dict(spec.options))
    safety = end_of_run_safety(sim, checked_live=spec.checkers)
    results = build_results(run_spec, [report], nodes, safety, env)
    results["simulated"] = True
    results["sim"] = {
        "seed": spec.seed, "events": sim.events_processed, "wall_s": round(wall, 2),
        "wan": spec.wan, "regions": list(spec.regions), "latency_s": spec.latency_s,
        "bandwidth_bps": spec.bandwidth_bps, "host_cores": spec.host_cores,
        "checkers": spec.checkers,
    }
    if spec.bandwidth_bps is not None:
        # What the capped links still held when the window closed: a growing backlog
        # means the run had not reached a steady state.
        results["sim"]["egress_backlog_bytes"] = {
            str(r): marks["end"][r]["egress_backlog_bytes"] for r in range(spec.n)}
        results["sim"]["egress_delay_s"] = {
            str(r): round(marks["end"][r]["egress_delay_s"], 6) for r in range(spec.n)}
    results["environment"]["wall_s"] = None
    return results


def end_of_run_safety(sim: Simulation, *, checked_live: bool) -> Safety:
    """Safety computed from the replicas' executed logs when the run stops.

    The run stops with requests in flight, so replicas may stand at different slots:
    ``logs_consistent`` holds when every slot two replicas executed has one digest,
    ``state_roots_equal`` when every state root two replicas reported for one slot (PBFT
    reports one at each checkpoint) is the same; ``converged`` when all logs are equal.
    This is computed whether or not the per-event checkers ran (``checked_live``)."""
    digests: dict[tuple[int, int], bytes] = {}
    roots: dict[tuple[int, int], bytes] = {}
    seen: dict[tuple[int, int], int] = {}
    consistent = roots_equal = True
    executed_seq: dict[int, int | None] = {}
    for r in sim.correct_replicas:
        log = sim.executed_log(r)
        executed_seq[r] = max((e.seq for e in log), default=None)
        for e in log:
            slot = (e.instance, e.seq)
            seen[slot] = seen.get(slot, 0) + 1
            if digests.setdefault(slot, e.digest) != e.digest:
                consistent = False
            if e.state_digest and roots.setdefault(slot, e.state_digest) != e.state_digest:
                roots_equal = False
    hashes = {sim.committed_log_hash(r) for r in sim.correct_replicas}
    how = ("also checked after every event by the simulator's checkers" if checked_live
           else "per-event checkers off")
    return Safety(
        state_roots_equal=roots_equal, logs_consistent=consistent, converged=len(hashes) == 1,
        executed_seq=executed_seq, compared_seqs=sum(1 for c in seen.values() if c > 1),
        note=f"compared over the replicas' executed logs at the end of the run; {how}",
    )


def deterministic_view(results: dict[str, Any]) -> dict[str, Any]:
    """``results`` without the fields that depend on the host's speed (wall time)."""
    out = dict(results)
    out["sim"] = {k: v for k, v in results["sim"].items() if k != "wall_s"}
    return out
