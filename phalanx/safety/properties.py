"""The safety definitions, as pure functions over what replicas report.

Each takes per-replica reports and says whether they are consistent; the simulator's
checkers and the bench's end-of-run check apply the same functions (the checkers one
observation at a time).
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Iterable, Mapping

Position = tuple[int, int]
"""(instance, seq): a place a protocol decides exactly one value for."""

RequestId = tuple[bytes, int]
"""(client, timestamp)"""


def logs_agree(logs: Mapping[int, Mapping[Hashable, bytes]]) -> tuple[bool, int]:
    """Agreement over decided logs: ``logs[replica][position] = digest`` of the value the
    replica decided there. Returns (consistent, compared): every position two or more
    replicas report has one digest; ``compared`` counts those positions."""
    seen: dict[Hashable, bytes] = {}
    holders: dict[Hashable, int] = {}
    consistent = True
    for decided in logs.values():
        for position, digest in decided.items():
            if seen.setdefault(position, digest) != digest:
                consistent = False
            holders[position] = holders.get(position, 0) + 1
    return consistent, sum(1 for count in holders.values() if count >= 2)


def states_agree(states: Mapping[int, tuple[Hashable, Hashable]]) -> bool:
    """Equal states for equal executions: ``states[replica] = (executed, state)``, where
    ``executed`` identifies what the replica executed — its last position for a
    total-order protocol, :func:`executed_set_key` for any — and ``state`` its state
    digest (or a tuple of digests). Replicas with equal ``executed`` must have equal
    ``state``."""
    by_execution: dict[Hashable, Hashable] = {}
    for executed, state in states.values():
        if by_execution.setdefault(executed, state) != state:
            return False
    return True


def request_key(request: RequestId) -> int:
    """A request's contribution to :func:`executed_set_key` (a 256-bit hash)."""
    client, timestamp = request
    return int.from_bytes(
        hashlib.sha256(client + timestamp.to_bytes(8, "big")).digest(), "big"
    )


SET_KEY_MODULUS = 1 << 256


def executed_set_key(requests: Iterable[RequestId]) -> int:
    """An order-independent key of a set of executed requests: the sum of their hashes
    modulo 2^256, so that it can be kept incrementally as requests execute (add the key
    of the new ones)."""
    return sum(request_key(r) for r in requests) % SET_KEY_MODULUS
