"""Deliberate bugs in PBFT, for the fuzzer's self-test: a fuzzer that does not find them
is not looking (``tests/test_fuzz.py``; ``phalanx fuzz --bug NAME``).

Each is a subclass of the real core that overrides one check — the production code has
seams (small methods: ``_digest_matches``, ``_signed_by``, ``_view_change_signed``,
``_new_view_refused``, ``_check_request``, the quorum sizes) and no knowledge of these
bugs. The simulator builds the buggy replicas through :func:`planted_replica`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from phalanx.core.messages import Request
from phalanx.core.quorum import Quorums
from phalanx.protocols.pbft.instance import PbftInstance
from phalanx.protocols.pbft.messages import Checkpoint, NewView, PrePrepare, ViewChange
from phalanx.protocols.pbft.replica import PbftReplica
from phalanx.protocols.pbft.spec import make_replica


class _UncheckedDigest(PbftInstance):
    def _digest_matches(self, pp: PrePrepare) -> bool:
        return True


class _UncheckedCheckpointSignature(PbftInstance):
    def _signed_by(self, replica: int, msg: Checkpoint | ViewChange | NewView) -> bool:
        return isinstance(msg, Checkpoint) or super()._signed_by(replica, msg)


class _UncheckedViewChangeSignature(PbftInstance):
    def _view_change_signed(self, vc: ViewChange) -> bool:
        return True


class _SmallCommitQuorum(PbftInstance):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commit_quorum -= 1


@dataclass(frozen=True, slots=True)
class _TwoFPlusOneQuorums(Quorums):
    @property
    def strong(self) -> int:
        return 2 * self.f + 1


class _FixedQuorums(PbftInstance):
    def __init__(self, instance: int, replica_id: int, quorums: Quorums, *args: Any,
                 **kwargs: Any) -> None:
        fixed = _TwoFPlusOneQuorums(quorums.n, quorums.f, quorums.resilience)
        super().__init__(instance, replica_id, fixed, *args, **kwargs)


class _LinkBasedNewView(PbftInstance):
    def _new_view_refused(self, src: int, nv: NewView) -> str | None:
        if src != self.q.primary(nv.view) and nv.view == self.view:
            return "new_view_not_from_primary"
        return None


class _UncheckedAuthenticator(PbftReplica):
    def _check_request(self, req: Request) -> bool:
        return True


def _with_instance(instance_class: type[PbftInstance]) -> type[PbftReplica]:
    return type(f"Planted{instance_class.__name__}", (PbftReplica,),
                {"instance_class": instance_class})


@dataclass(frozen=True, slots=True)
class PlantedBug:
    description: str
    replica_class: type[PbftReplica]


PLANTED_BUGS: dict[str, PlantedBug] = {
    "preprepare_digest": PlantedBug(
        "a pre-prepare accepted without checking that its digest is its payload's",
        _with_instance(_UncheckedDigest)),
    "checkpoint_signature": PlantedBug(
        "CHECKPOINT signatures not verified", _with_instance(_UncheckedCheckpointSignature)),
    "request_authenticator": PlantedBug(
        "client authenticators not verified", _UncheckedAuthenticator),
    "view_change_proof": PlantedBug(
        "VIEW-CHANGE signatures (the proof inside NEW-VIEW) not verified",
        _with_instance(_UncheckedViewChangeSignature)),
    "commit_quorum": PlantedBug("a commit quorum one too small",
                                _with_instance(_SmallCommitQuorum)),
    "quorum_2f_plus_1": PlantedBug(
        "every quorum 2f+1 whatever n (right only for n = 3f+1)",
        _with_instance(_FixedQuorums)),
    "unsigned_new_view": PlantedBug(
        "a NEW-VIEW for a later view taken from any sender without the new primary's "
        "signature (the old, link-based rule)", _with_instance(_LinkBasedNewView)),
}


def planted_replica(bug: str) -> Callable[..., PbftReplica]:
    """``make_replica`` (the spec's signature) building replicas with ``bug``."""
    return functools.partial(make_replica, replica_class=PLANTED_BUGS[bug].replica_class)
