"""A simulated cluster of a registered protocol over the key-value store: what
``phalanx sim``, the fuzzer and the simulated bench run. The simulator's counterpart of
:mod:`phalanx.runtime.cluster_client`: both drivers learn a protocol from its
:class:`~phalanx.protocols.spec.ProtocolSpec`, by name."""

from __future__ import annotations

from typing import Any

from phalanx.core.address import Address
from phalanx.core.crypto import NodeCrypto
from phalanx.core.node import ReplicaCore
from phalanx.protocols.registry import protocol
from phalanx.protocols.spec import MakeReplica
from phalanx.sim.network import NetworkModel
from phalanx.sim.simulator import Simulation
from phalanx.statemachine.kv import KVStore


def kv_simulation(
    protocol_name: str,
    n: int,
    seed: int,
    network: NetworkModel,
    options: dict[str, Any],
    client_retransmit_s: float,
    multicast: bool = False,
    f: int | None = None,
    make_replica: MakeReplica | None = None,
    **kwargs: Any,
) -> Simulation:
    """A simulated cluster of ``protocol_name`` replicas over the key-value store, with
    its clients' cores (sending each request to every replica if ``multicast``); ``f``
    defaults to the most faults ``n`` replicas tolerate; ``kwargs`` go to
    :class:`Simulation` (trace, ...; ``checkers`` default to the protocol's).
    ``make_replica`` replaces the protocol's (the fuzzer's planted bugs)."""
    proto = protocol(protocol_name)
    build = make_replica or proto.make_replica
    quorums = proto.quorums(n, f)
    kwargs.setdefault("checkers", proto.checkers())

    def make_client(crypto: Any) -> Any:
        core = proto.make_client(crypto, quorums, client_retransmit_s)
        if multicast:
            core.multicast = True
        return core

    typed = options if isinstance(options, proto.options) else proto.options.from_table(options)
    others = [a for r in range(n) for a in proto.addresses(r, typed)[1:]]
    make_process = proto.make_process

    def build_process(address: Address, crypto: NodeCrypto) -> ReplicaCore:
        assert make_process is not None  # the spec has other processes only with it
        return make_process(address, quorums, crypto, typed)

    return Simulation(
        seed,
        n,
        lambda rid, crypto: build(rid, quorums, crypto, KVStore, options),
        make_client,
        network,
        messages=proto.messages,
        processes=others,
        make_process=build_process if others else None,
        front_role=proto.front_role,
        **kwargs,
    )
