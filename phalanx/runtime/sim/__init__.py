"""phalanx's VOPR: a deterministic simulator that runs the unmodified sans-I/O cores.

One seed fixes everything — keys, client ids, latencies, losses, the order of events —
so a run, and any safety violation it finds, replays exactly. See ``simulator.py`` for
the driver, ``network.py`` and ``latency.py`` for the network model and ``crypto.py`` for
symbolic signatures; the safety properties asserted as it runs are :mod:`phalanx.safety`'s.
"""

from phalanx.measure.latency import LatencyMatrix
from phalanx.runtime.sim.crypto import SymbolicClientCrypto, SymbolicNodeCrypto, SymbolicOracle
from phalanx.runtime.sim.network import (
    ConstantLatency,
    LatencyModel,
    MatrixLatency,
    NetworkModel,
    UniformLatency,
)
from phalanx.runtime.sim.simulator import (
    Behaviour,
    CompletedRequest,
    FilterOutgoing,
    Silent,
    Simulation,
    SimulationError,
    StuckClient,
)

__all__ = [
    "Behaviour",
    "CompletedRequest",
    "ConstantLatency",
    "FilterOutgoing",
    "LatencyMatrix",
    "LatencyModel",
    "MatrixLatency",
    "NetworkModel",
    "Silent",
    "Simulation",
    "SimulationError",
    "StuckClient",
    "SymbolicClientCrypto",
    "SymbolicNodeCrypto",
    "SymbolicOracle",
    "UniformLatency",
]
