"""A key-value store with a configurable execution cost, for benchmarks.

Real applications spend CPU executing commands (signature checks, contract code); the
plain :class:`~phalanx.statemachine.kv.KVStore` barely does. ``BurningKV`` burns a fixed
amount of CPU per op (a busy loop on the thread's CPU clock, not a sleep) on top of the
ordinary KV semantics, so a benchmark can make execution the bottleneck on purpose and
check that the lab says so. The results and the state are exactly the KV store's.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from phalanx.statemachine.kv import KVStore


def burn_cpu(microseconds: float) -> None:
    """Spin for ``microseconds`` of this thread's CPU time."""
    end = time.thread_time_ns() + int(microseconds * 1000)
    while time.thread_time_ns() < end:
        pass


class BurningKV(KVStore):
    """:class:`KVStore` that burns ``burn_us_per_op`` CPU microseconds per applied op."""

    def __init__(self, burn_us_per_op: float) -> None:
        super().__init__()
        if not burn_us_per_op >= 0:
            raise ValueError(f"burn_us_per_op must be >= 0, got {burn_us_per_op}")
        self.burn_us_per_op = burn_us_per_op

    def apply(self, ops: list[bytes]) -> list[bytes]:
        if ops and self.burn_us_per_op:
            burn_cpu(self.burn_us_per_op * len(ops))
        return super().apply(ops)


def kv_factory(burn_us_per_op: float = 0.0) -> Callable[[], KVStore]:
    """The replicas' state-machine factory: plain KV, or a burning one."""
    if not burn_us_per_op:
        return KVStore
    return lambda: BurningKV(burn_us_per_op)
