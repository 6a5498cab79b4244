"""The bottleneck verdict: is this run bound by data, consensus or execution?

Pure arithmetic over what a run measured per node (a real ``phalanx bench`` or a
calibrated simulation): CPU seconds, the per-phase split of the accounting
(:mod:`phalanx.measure.accounting`), bytes by phase, the window's length, and, if the run
capped it, each node's bandwidth. The rules, in order:

1. **network**: a node whose egress (the capped direction) used at least
   :data:`LINK_BUSY` of its bandwidth cap is saturated; the verdict is the phase that put
   the most bytes on that node's wire (data when the payloads fill it, consensus when the
   votes do; undetermined without per-phase bytes);
2. **cpu**: the busiest replica used at least :data:`CPU_BUSY` of a core, or was busy
   (running or preempted mid-work) at least :data:`BUSY` of the window by the wall clock;
   the verdict is the phase with the most CPU on that replica;
3. **latency**: nothing is saturated: throughput is clients / latency, so the verdict is
   ``none`` (resource ``latency``). Whether the latency is the protocol's rounds or the
   network's delays is not split here, so no phase is named.

Evidence always names the busiest node by CPU and by bytes, its CPU-µs and bytes per
committed transaction, and each phase's share, so a reader can check the call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from phalanx.measure.accounting import PHASES

LINK_BUSY = 0.7
"""Share of a node's bandwidth cap above which its link counts as saturated."""
CPU_BUSY = 0.7
"""Share of one core above which a (single-threaded) replica counts as CPU-saturated."""
BUSY = 0.5
"""Share of the window a replica spent in accounted work by the wall clock (running, or
runnable but preempted by other processes) above which it counts as CPU-saturated: its
queue of inputs, not the network, is then what requests wait on. On a shared host this
catches a replica starved by other tenants, while the host's own busy figure cannot tell
a starved run from one that waits on its network rounds."""


@dataclass(frozen=True)
class NodeCosts:
    """One node over the measured window."""

    id: int
    cpu_s: float | None
    bytes_sent: int | None
    bytes_recv: int | None
    phase_cpu_s: Mapping[str, float] = field(default_factory=dict)
    phase_bytes: Mapping[str, int] = field(default_factory=dict)
    bandwidth_bps: float | None = None
    busy_s: float | None = None  # wall-clock time in accounted work (preemption included)

    @property
    def bytes_total(self) -> int | None:
        if self.bytes_sent is None or self.bytes_recv is None:
            return None
        return self.bytes_sent + self.bytes_recv

    def link_utilisation(self, duration_s: float) -> float | None:
        """Egress's share of the cap (None without a cap): only sending is paced."""
        if not self.bandwidth_bps or not duration_s or self.bytes_sent is None:
            return None
        return self.bytes_sent * 8 / duration_s / self.bandwidth_bps


def _per_tx(value: float | None, committed: int, scale: float = 1.0) -> float | None:
    if value is None or committed <= 0:
        return None
    return round(value * scale / committed, 1)


def _dominant(values: Mapping[str, float]) -> str | None:
    known = {p: values.get(p, 0) for p in PHASES}
    if not any(known.values()):
        return None
    return max(PHASES, key=lambda p: known[p])


def _shares(values: Mapping[str, float]) -> dict[str, float | None]:
    total = sum(values.get(p, 0) for p in PHASES)
    return {p: (round(values.get(p, 0) / total, 4) if total else None) for p in PHASES}


def _cpu_node(nodes: Sequence[NodeCosts], duration_s: float
              ) -> tuple[NodeCosts | None, float]:
    """The replica the CPU rule looks at, and the largest wall-clock busy share: the one
    using most CPU, unless another was busy at least :data:`BUSY` of the window while
    this one stays under :data:`CPU_BUSY` of a core (starved by other processes)."""
    by_cpu = max((n for n in nodes if n.cpu_s is not None), key=lambda n: n.cpu_s or 0,
                 default=None)
    if not duration_s or not nodes:
        return by_cpu, 0.0
    busiest = max(nodes, key=lambda n: n.busy_s or 0.0)
    busy = (busiest.busy_s or 0.0) / duration_s
    util = (by_cpu.cpu_s or 0) / duration_s if by_cpu is not None else 0.0
    if busy >= BUSY and util < CPU_BUSY:
        return busiest, busy
    return by_cpu, busy


def verdict(
    nodes: Sequence[NodeCosts],
    committed: int,
    duration_s: float,
    *,
    host_cpu_busy: float | None = None,
    run_cpu_share: float | None = None,
) -> dict[str, Any]:
    """The ``bottleneck`` object of the results JSON (keys data, consensus, execution,
    verdict, plus resource, busiest_node, evidence and reason). ``host_cpu_busy`` and
    ``run_cpu_share`` are evidence only: no rule uses them (see :data:`BUSY`)."""
    by_cpu, busy_share = _cpu_node(nodes, duration_s)
    by_bytes = max((n for n in nodes if n.bytes_total is not None),
                   key=lambda n: n.bytes_total or 0, default=None)
    links = [(n.link_utilisation(duration_s), n) for n in nodes]
    capped = [(u, n) for u, n in links if u is not None]
    by_link = max(capped, key=lambda pair: pair[0], default=None)

    # The phase figures describe the node the CPU rule judges (chosen above).
    phases: dict[str, Any] = {}
    for p in PHASES:
        cpu = by_cpu.phase_cpu_s.get(p) if by_cpu and by_cpu.phase_cpu_s else None
        traffic = by_bytes.phase_bytes.get(p) if by_bytes and by_bytes.phase_bytes else None
        phases[p] = {
            "cpu_s": None if cpu is None else round(cpu, 4),
            "cpu_us_per_tx": _per_tx(cpu, committed, 1e6),
            "cpu_share": _shares(by_cpu.phase_cpu_s)[p] if by_cpu and by_cpu.phase_cpu_s
            else None,
            "bytes_per_tx": _per_tx(traffic, committed),
            "bytes_share": _shares(by_bytes.phase_bytes)[p] if by_bytes and by_bytes.phase_bytes
            else None,
        }

    cpu_util = (by_cpu.cpu_s or 0) / duration_s if by_cpu and duration_s else None
    egress = by_link[1] if by_link is not None else by_bytes
    evidence: dict[str, Any] = {
        "busiest_cpu_node": by_cpu.id if by_cpu else None,
        "cpu_utilisation": None if cpu_util is None else round(cpu_util, 4),
        "cpu_us_per_tx": _per_tx(by_cpu.cpu_s if by_cpu else None, committed, 1e6),
        "busiest_bytes_node": by_bytes.id if by_bytes else None,
        "bytes_per_tx": _per_tx(by_bytes.bytes_total if by_bytes else None, committed),
        # Egress only, per direction like the link rule (of the capped node if any).
        "egress_mbit_per_s": round((egress.bytes_sent or 0) * 8 / 1e6 / duration_s, 3)
        if egress is not None and duration_s else None,
        "busiest_busy_share": round(busy_share, 4),
        "host_cpu_busy": host_cpu_busy,
        "run_cpu_share": None if run_cpu_share is None else round(run_cpu_share, 4),
    }
    result: dict[str, Any] = {**phases, "verdict": "undetermined", "resource": None,
                              "busiest_node": None, "evidence": evidence, "reason": ""}
    if committed <= 0:
        result["reason"] = "nothing committed in the window"
        return result

    if by_link is not None:
        evidence["link_utilisation"] = round(by_link[0], 4)
    if by_link is not None and by_link[0] >= LINK_BUSY:
        util, node = by_link
        evidence["bandwidth_bps"] = node.bandwidth_bps
        call = _dominant(node.phase_bytes)
        why = (f"node {node.id} sent {util:.0%} of its {(node.bandwidth_bps or 0) / 1e6:g} "
               f"Mbit/s link")
        result.update(
            verdict=call or "undetermined", resource="network", busiest_node=node.id,
            reason=f"{why}; {call} messages carried most of its bytes" if call
            else f"{why}; no per-phase bytes to say which phase filled it",
        )
        return result

    if by_cpu is not None and cpu_util is not None and (
            cpu_util >= CPU_BUSY or busy_share >= BUSY):
        call = _dominant(by_cpu.phase_cpu_s)
        why = (f"replica {by_cpu.id} used {cpu_util:.0%} of a core" if cpu_util >= CPU_BUSY
               else f"replica {by_cpu.id} was busy {busy_share:.0%} of the window by the "
                    f"wall clock ({cpu_util:.0%} of a core: other processes share the host, "
                    f"{host_cpu_busy or 0:.0%} busy)")
        if call is None:
            result.update(resource="cpu", busiest_node=by_cpu.id,
                          reason=why + "; no per-phase accounting to split it")
            return result
        share = _shares(by_cpu.phase_cpu_s)[call] or 0.0
        result.update(
            verdict=call, resource="cpu", busiest_node=by_cpu.id,
            reason=f"{why}; {call} took {share:.0%} of its accounted CPU",
        )
        return result

    result.update(
        verdict="none", resource="latency",
        busiest_node=by_cpu.id if by_cpu else None,
        reason="no CPU or link saturated: throughput is clients / latency (protocol rounds "
               "and network delays, not split by phase)"
               + (f"; busiest replica at {cpu_util:.0%} of a core" if cpu_util is not None
                  else ""),
    )
    return result
