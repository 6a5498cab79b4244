"""Safety properties of replication, stated once, checked in the simulator and at the end
of a real benchmark.

The definitions (:mod:`phalanx.safety.properties`) are pure functions over what replicas
report; the checkers (:mod:`phalanx.safety.checkers`) apply them incrementally to every
``Executed`` observation of a simulation, and the bench to the ``/status`` and ``/log``
answers of live replicas. They assume nothing about how a protocol orders commands:

- **agreement**: no two correct replicas decide different values for the same position
  (``instance``, ``seq``) — a position is whatever a protocol decides exactly one value
  for: a slot of a total order, a consensus instance of leaderless SMR;
- **exactly-once** and **validity**: a correct replica executes a request at most once,
  and only requests their clients submitted;
- **equal states**: replicas that executed the same commands hold the same state — for a
  total-order protocol, after the same position; for any protocol, after the same *set*
  of executed requests, whatever the order they ran in.
"""

from phalanx.safety.checkers import (
    AgreementChecker,
    AlarmChecker,
    CheckContext,
    Checker,
    ExactlyOnceChecker,
    ExecutedSetChecker,
    SafetyViolation,
    StateDigestChecker,
    ValidityChecker,
    committed_log_hash,
    generic_checkers,
)
from phalanx.safety.properties import logs_agree, states_agree

__all__ = [
    "AgreementChecker",
    "AlarmChecker",
    "CheckContext",
    "Checker",
    "ExactlyOnceChecker",
    "ExecutedSetChecker",
    "SafetyViolation",
    "StateDigestChecker",
    "ValidityChecker",
    "committed_log_hash",
    "generic_checkers",
    "logs_agree",
    "states_agree",
]
