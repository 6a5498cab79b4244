"""What phalanx knows about a protocol: one :class:`ProtocolSpec`, registered once.

Every part of phalanx that depends on the protocol asks its spec (through
:func:`phalanx.protocols.registry.protocol`): the config its options, resilience and
quorums; the runtime and the simulator its messages, replicas and clients; the accounting
its phases; ``/status`` its fields; the bench and the nemesis whom to hit when they hit
"the leader"; the simulator and the fuzzer its safety checkers and its Byzantine
variants. Adding a protocol is one package and one line in the registry.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, Self

import msgspec

from phalanx.core.address import REPLICA_ROLE, Address
from phalanx.core.crypto import ClientCrypto, NodeCrypto
from phalanx.core.messages import message_decoder
from phalanx.core.node import ClientCore, ReplicaCore
from phalanx.core.quorum import BYZANTINE, Quorums, Resilience
from phalanx.host import ReplicaHost
from phalanx.safety import Checker
from phalanx.statemachine.base import StateMachineFactory


class ProtocolOptions(Protocol):
    """A protocol's tunables: one typed object, read from and written to the protocol's
    table of the cluster file (the single copy of every default and every check)."""

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> Self:
        """Options from a cluster file's table (defaults for what it leaves out);
        ValueError naming the option for anything unknown or out of range."""
        ...

    def to_table(self) -> dict[str, Any]:
        """Every option a cluster file may set, with its value (what ``from_table`` reads
        back to an equal object)."""
        ...


class HostedReplica(ReplicaCore, Protocol):
    """A replica core built on the replica host (every protocol's): the composition root
    reaches the application and its certificates through ``host``."""

    host: ReplicaHost


MakeReplica = Callable[[int, Quorums, NodeCrypto, StateMachineFactory, Any], HostedReplica]
"""``make_replica(replica_id, quorums, crypto, make_state_machine, options)``: the core of
a replica's front process."""
MakeProcess = Callable[[Address, Quorums, NodeCrypto, Any], ReplicaCore]
"""``make_process(address, quorums, crypto, options)``: the core of one of a replica's
other processes."""
MakeClient = Callable[[ClientCrypto, Quorums, float], ClientCore]
"""``make_client(crypto, quorums, retransmit_timeout)``."""


@dataclass(frozen=True)
class ProtocolSpec:
    """Everything about one protocol that code outside its package needs."""

    name: str
    """The CLI name (``phalanx up --protocol NAME``) and the cluster file's table name."""
    messages: tuple[type, ...]
    """Every message type on the wire (client, protocol and host messages)."""
    options: type[ProtocolOptions]
    """The typed tunables (``[NAME]`` table of the cluster file)."""
    make_replica: MakeReplica
    make_client: MakeClient
    phases: Mapping[str, str]
    """Message type (or ``timer:NAME``) -> the SMR phase its cost counts in: ``data``,
    ``consensus`` or ``execution`` (every message type must be named)."""
    status: Callable[[Any], dict[str, Any]]
    """The protocol's fields of ``GET /status`` for one of its replicas (``view``,
    ``primary``, ``executed_seq``...)."""
    leader: Callable[[Mapping[str, Any]], int | None]
    """Whom "kill the leader" hits, from one replica's ``/status`` answer (None: it does
    not say): the fault target of the bench's ``--kill-primary-at`` and the nemesis."""
    checkers: Callable[[], list[Checker]]
    """Fresh safety checkers for one simulation (generic and the protocol's alarms)."""
    fuzz: str = ""
    """``module:attribute`` of the protocol's fuzz adapter (its Byzantine strategies and
    random configurations; :mod:`phalanx.byzantine` imports it when asked), or empty."""
    resilience: Resilience = BYZANTINE
    """Faults n replicas tolerate (n >= 3f+1, or 2f+1 with a trusted component)."""
    total_order: bool = True
    """Do correct replicas execute the same commands in the same order (so that their
    states must be equal after equal positions, not only after equal sets)?"""
    front_role: str = REPLICA_ROLE
    """The role of each replica's front process: the one that runs the replica host (the
    application, its certificates and snapshots) and that clients talk to."""
    other_processes: Callable[[Any], tuple[tuple[str, int], ...]] = lambda options: ()
    """A replica's processes besides the front, as (role, partition), for the given
    options (the same for every replica); none for a single-process replica."""
    make_process: MakeProcess | None = None
    """Builds the cores of :attr:`other_processes` (needed if there are any)."""

    def addresses(self, replica: int, options: Any) -> list[Address]:
        """Every process of ``replica``, its front first."""
        return [Address(replica, self.front_role),
                *(Address(replica, role, partition)
                  for role, partition in self.other_processes(options))]

    def quorums(self, n: int, f: int | None = None) -> Quorums:
        """The quorums of ``n`` replicas tolerating ``f`` faults (default: the most
        ``n`` replicas of this protocol tolerate)."""
        return Quorums(n, self.resilience.max_faults(n) if f is None else f, self.resilience)

    def decoder(self) -> msgspec.msgpack.Decoder[Any]:
        """The wire decoder of every message of this protocol (a tagged union)."""
        return message_decoder(self.messages)

    def fault_target(self, statuses: Mapping[int, Mapping[str, Any] | None]) -> int:
        """The leader most replicas name in their ``/status`` (replica 0 if none says)."""
        votes: dict[int, int] = {}
        for status in statuses.values():
            leader = self.leader(status) if status is not None else None
            if leader is not None:
                votes[leader] = votes.get(leader, 0) + 1
        return max(votes, key=lambda r: (votes[r], -r)) if votes else 0

