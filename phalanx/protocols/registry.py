"""The protocols phalanx can run, by their CLI name.

Drivers (the asyncio runtime, the simulator, the CLI) build replicas and clients only
through this table, so adding a protocol means adding one entry here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from phalanx.core.crypto import ClientCrypto, NodeCrypto
from phalanx.core.node import ClientCore, ReplicaCore
from phalanx.core.quorum import Quorums
from phalanx.statemachine.base import StateMachine


@dataclass(frozen=True)
class ProtocolSpec:
    name: str
    messages: tuple[type, ...]
    make_replica: Callable[
        [int, Quorums, NodeCrypto, Callable[[], StateMachine], Mapping[str, Any]], ReplicaCore
    ]
    make_client: Callable[[ClientCrypto, Quorums, float], ClientCore]


def _pbft() -> ProtocolSpec:
    from phalanx.protocols.pbft.client import PbftClient
    from phalanx.protocols.pbft.config import PbftConfig
    from phalanx.protocols.pbft.messages import ALL_MESSAGES
    from phalanx.protocols.pbft.replica import PbftReplica

    def make_replica(replica_id, quorums, crypto, make_sm, options):  # type: ignore[no-untyped-def]
        config = options if isinstance(options, PbftConfig) else PbftConfig.from_options(options)
        return PbftReplica(replica_id, quorums, crypto, make_sm, config)

    def make_client(crypto, quorums, retransmit_timeout):  # type: ignore[no-untyped-def]
        return PbftClient(crypto, quorums, retransmit_timeout=retransmit_timeout)

    return ProtocolSpec("pbft", ALL_MESSAGES, make_replica, make_client)


_FACTORIES: dict[str, Callable[[], ProtocolSpec]] = {"pbft": _pbft}


def available() -> list[str]:
    return sorted(_FACTORIES)


def protocol(name: str) -> ProtocolSpec:
    """The spec of protocol ``name``; ValueError naming the available ones otherwise."""
    factory = _FACTORIES.get(name)
    if factory is None:
        raise ValueError(f"unknown protocol {name!r}; available: {', '.join(available())}")
    return factory()
