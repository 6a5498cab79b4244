"""Node addresses: which process of which replica.

A logical replica — the unit of the fault model, of votes and of keys — may run as
several processes, one per *role* and *partition* (ScalablePBFT splits a replica into a
leader, pre-preparers, preparers... each partitioned by sequence number). A protocol
whose replica is one process (PBFT) has one process per replica, at
``Address(replica)``: role :data:`REPLICA_ROLE`, partition 0.

Every process of replica ``r`` authenticates as replica ``r`` (it holds ``r``'s key) and
says which of ``r``'s processes it is; a message between two processes of one replica
(an internal channel) is authenticated like any other, so only ``r``'s own processes can
write to ``r``'s internal channels. A core learns each message's sender as an
:class:`Address`, and counts votes by ``address.replica``, never per process.
"""

from __future__ import annotations

import re

import msgspec

REPLICA_ROLE = "replica"
"""The role of a replica that is a single process."""

MAX_ROLE_LENGTH = 32
_ROLE_PATTERN = re.compile(r"[a-z][a-z0-9_]*")


class Address(msgspec.Struct, frozen=True, array_like=True, order=True):
    """Process ``partition`` of role ``role`` of replica ``replica``."""

    replica: int
    role: str = REPLICA_ROLE
    partition: int = 0

    def __str__(self) -> str:
        if self.role == REPLICA_ROLE and self.partition == 0:
            return str(self.replica)
        return f"{self.replica}/{self.role}/{self.partition}"

    def check(self) -> Address:
        """``self`` if well formed, else ValueError saying why (for addresses read from
        files and command lines)."""
        if self.replica < 0:
            raise ValueError(f"replica id must be >= 0, got {self.replica}")
        if self.partition < 0:
            raise ValueError(f"partition must be >= 0, got {self.partition}")
        if len(self.role) > MAX_ROLE_LENGTH or not _ROLE_PATTERN.fullmatch(self.role):
            raise ValueError(f"role must be lowercase letters, digits and _ (starting "
                             f"with a letter, at most {MAX_ROLE_LENGTH}), got {self.role!r}")
        return self
