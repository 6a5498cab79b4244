"""The sequencer's registration: everything phalanx needs to know about it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from phalanx.core.messages import CLIENT_MESSAGES
from phalanx.core.quorum import CRASH
from phalanx.host import HOST_MESSAGES, HOST_PHASES
from phalanx.protocols.pbft.client import PbftClient
from phalanx.protocols.spec import ProtocolSpec
from phalanx.safety import generic_checkers
from sequencer.messages import MESSAGES
from sequencer.options import SequencerOptions
from sequencer.replica import PROGRESS, SequencerReplica
from sequencer.witness import WITNESS_ROLE, WitnessProcess


def make_replica(replica_id, quorums, crypto, make_state_machine, options,
                 replica_class=SequencerReplica) -> SequencerReplica:
    if not isinstance(options, SequencerOptions):
        options = SequencerOptions.from_table(options)
    return replica_class(replica_id, quorums, crypto, make_state_machine, options)


def make_witness(address, quorums, crypto, options) -> WitnessProcess:
    return WitnessProcess(address, options.witnesses)


def status(core: SequencerReplica | WitnessProcess) -> dict[str, Any]:
    if isinstance(core, WitnessProcess):
        return core.status()
    return {"view": core.view, "primary": core.leader, "executed_seq": core.executed}


def leader(status: Mapping[str, Any]) -> int | None:
    primary = status.get("primary")
    return primary if isinstance(primary, int) else None


SPEC = ProtocolSpec(
    name="sequencer",
    messages=CLIENT_MESSAGES + MESSAGES + HOST_MESSAGES,
    options=SequencerOptions,
    make_replica=make_replica,
    # Any leader-based client will do: to the leader of its view, to everyone after a
    # timeout, done on f+1 equal replies (one would do here: no replica lies).
    make_client=lambda crypto, quorums, timeout: PbftClient(crypto, quorums,
                                                            retransmit_timeout=timeout),
    phases={"Request": "data", "Reply": "data", "Replies": "data", "Error": "data",
            "Order": "data", "Ack": "consensus", "Commit": "consensus",
            "StartView": "consensus", "NewView": "consensus", "Witnessed": "execution",
            "timer:" + PROGRESS: "consensus", **HOST_PHASES},
    status=status,
    leader=leader,
    checkers=lambda: generic_checkers(total_order=True),
    fuzz="sequencer.fuzz:ADAPTER",
    resilience=CRASH,
    other_processes=lambda options: tuple((WITNESS_ROLE, p) for p in range(options.witnesses)),
    make_process=make_witness,
)
