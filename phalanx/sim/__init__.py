"""phalanx's VOPR: a deterministic simulator that runs the unmodified sans-I/O cores.

One seed fixes everything — keys, client ids, latencies, losses, the order of events —
so a run, and any safety violation it finds, replays exactly. The simulator is a driver
of the cores like the asyncio runtime (:mod:`phalanx.runtime`), beside it, and neither
imports the other. See ``simulator.py`` for the driver, ``network.py`` for the network
model (RTT matrices are :mod:`phalanx.measure.latency`'s), ``crypto.py`` for symbolic
signatures, ``behaviour.py`` for Byzantine replicas, ``stats.py`` and ``summary.py`` for
what a run produced, ``resources.py`` and ``costmodel.py`` for CPU and bandwidth as queued
resources, and ``kv_cluster.py`` for a cluster of a registered protocol; the safety
properties asserted as it runs are :mod:`phalanx.safety`'s.
"""

from phalanx.sim.behaviour import Behaviour, FilterOutgoing, Silent
from phalanx.sim.crypto import SymbolicClientCrypto, SymbolicNodeCrypto, SymbolicOracle
from phalanx.sim.network import (
    ConstantLatency,
    LatencyModel,
    MatrixLatency,
    NetworkModel,
    UniformLatency,
)
from phalanx.sim.simulator import ByzantineHooks, Simulation, SimulationError
from phalanx.sim.stats import CompletedRequest, NodeStats, StuckClient

__all__ = [
    "Behaviour",
    "ByzantineHooks",
    "CompletedRequest",
    "ConstantLatency",
    "FilterOutgoing",
    "LatencyModel",
    "MatrixLatency",
    "NetworkModel",
    "NodeStats",
    "Silent",
    "Simulation",
    "SimulationError",
    "StuckClient",
    "SymbolicClientCrypto",
    "SymbolicNodeCrypto",
    "SymbolicOracle",
    "UniformLatency",
]
