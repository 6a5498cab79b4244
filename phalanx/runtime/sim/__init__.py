"""phalanx's VOPR: a deterministic simulator that runs the unmodified sans-I/O cores.

One seed fixes everything — keys, client ids, latencies, losses, the order of events —
so a run, and any safety violation it finds, replays exactly. See ``simulator.py`` for
the driver, ``network.py`` and ``latency.py`` for the network model, ``crypto.py`` for
symbolic signatures and ``checkers.py`` for the safety properties asserted as it runs.
"""

from phalanx.runtime.sim.checkers import (
    AgreementChecker,
    Checker,
    ExactlyOnceChecker,
    SafetyViolation,
    StateRootChecker,
    ValidityChecker,
    committed_log_hash,
    default_checkers,
)
from phalanx.runtime.sim.crypto import SymbolicClientCrypto, SymbolicNodeCrypto, SymbolicOracle
from phalanx.runtime.sim.latency import LatencyMatrix
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
    "AgreementChecker",
    "Behaviour",
    "Checker",
    "CompletedRequest",
    "ConstantLatency",
    "ExactlyOnceChecker",
    "FilterOutgoing",
    "LatencyMatrix",
    "LatencyModel",
    "MatrixLatency",
    "NetworkModel",
    "SafetyViolation",
    "Silent",
    "Simulation",
    "SimulationError",
    "StateRootChecker",
    "StuckClient",
    "SymbolicClientCrypto",
    "SymbolicNodeCrypto",
    "SymbolicOracle",
    "UniformLatency",
    "ValidityChecker",
    "committed_log_hash",
    "default_checkers",
]
