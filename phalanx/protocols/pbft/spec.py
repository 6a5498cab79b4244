"""PBFT's registration: its :class:`~phalanx.protocols.spec.ProtocolSpec`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from phalanx.core.crypto import ClientCrypto, NodeCrypto
from phalanx.core.quorum import Quorums
from phalanx.host import HOST_PHASES
from phalanx.protocols.pbft.client import PbftClient
from phalanx.protocols.pbft.config import PbftConfig
from phalanx.protocols.pbft.messages import ALL_MESSAGES
from phalanx.protocols.pbft.replica import BATCH_TIMER, PbftReplica
from phalanx.protocols.spec import ProtocolSpec
from phalanx.safety import AlarmChecker, Checker, generic_checkers
from phalanx.statemachine.base import StateMachineFactory

PHASES = {
    # Client traffic and the pre-prepare, which carries the batch (dissemination);
    # backups verify the requests' authenticators while accepting it.
    "Request": "data",
    "Reply": "data",
    "Replies": "data",
    "Error": "data",
    "PrePrepare": "data",
    "FetchPayload": "data",
    "PayloadData": "data",
    "timer:" + BATCH_TIMER: "data",
    # Agreement on the order, its proofs and its recovery.
    "Prepare": "consensus",
    "Commit": "consensus",
    "Checkpoint": "consensus",
    "ViewChange": "consensus",
    "NewView": "consensus",
    "FetchCommitted": "consensus",
    "CommittedSlot": "consensus",
    **HOST_PHASES,
}
"""Where each message's cost counts (timers not named count as consensus: the view-change
and catch-up clocks)."""

ALARMS = ("state_divergence", "new_view_conflicts_with_commit")
"""Dropped reasons a correct PBFT replica reports only if more than f replicas lied."""


def make_replica(
    replica_id: int, quorums: Quorums, crypto: NodeCrypto,
    make_state_machine: StateMachineFactory, options: PbftConfig | Mapping[str, Any],
    replica_class: type[PbftReplica] = PbftReplica,
) -> PbftReplica:
    """A PBFT replica (``replica_class``: a test seam for the fuzzer's planted bugs)."""
    config = options if isinstance(options, PbftConfig) else PbftConfig.from_table(options)
    return replica_class(replica_id, quorums, crypto, make_state_machine, config)


def make_client(crypto: ClientCrypto, quorums: Quorums, retransmit_timeout: float) -> PbftClient:
    return PbftClient(crypto, quorums, retransmit_timeout=retransmit_timeout)


def status(core: PbftReplica) -> dict[str, Any]:
    return {
        "view": core.view,
        "primary": core.instance.primary,
        "executed_seq": core.last_executed,
    }


def leader(status: Mapping[str, Any]) -> int | None:
    primary = status.get("primary")
    return primary if isinstance(primary, int) and not isinstance(primary, bool) else None


def checkers() -> list[Checker]:
    return [*generic_checkers(total_order=True), AlarmChecker(ALARMS)]


SPEC = ProtocolSpec(
    name="pbft",
    messages=ALL_MESSAGES,
    options=PbftConfig,
    make_replica=make_replica,
    make_client=make_client,
    phases=PHASES,
    status=status,
    leader=leader,
    checkers=checkers,
    fuzz="phalanx.byzantine.pbft:fuzz_adapter",
)
