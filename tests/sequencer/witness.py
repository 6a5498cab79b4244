"""Witness processes: the sequencer's example of a replica that is several processes.

With ``witnesses = k`` each replica runs k more processes, ``Address(r, "witness", p)``
for p < k, beside its front. After executing position ``seq`` the front sends its own
witness ``seq mod k`` what it executed there (:class:`~sequencer.messages.Witnessed`),
over an internal link authenticated like any other (with replica r's key). A witness
keeps what it was told, on its disk, answers with the first position of its partition it
still lacks (:class:`~sequencer.messages.WitnessAck`: the front re-sends from there on a
timer, so a lost message or a witness's crash loses nothing), and refuses anything that
is not its own replica's front writing about its own partition: a process of another
replica (``unknown_sender``), another role, or a position of another partition
(``wrong_partition``), or a second, different digest for a position (``equivocation``).

Every replica executes the same batches at the same positions, so witness p of every
replica must end up holding the same digests: what tests compare.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

from phalanx.core.address import REPLICA_ROLE, Address
from phalanx.core.effects import Dropped, Persist, Send
from sequencer.messages import WitnessAck, Witnessed

WITNESS_ROLE = "witness"
_SEEN = b"W"


class WitnessProcess:
    """The core of witness process ``address`` (a :class:`~phalanx.core.node.ReplicaCore`)."""

    def __init__(self, address: Address, partitions: int) -> None:
        self.address = address
        self.partitions = partitions
        self.seen: dict[int, bytes] = {}  # position -> digest of what was executed there
        # The first position of our partition we lack (positions start at 1).
        self.next = address.partition or partitions

    def recover(self, records: Iterable[tuple[bytes, bytes]]) -> None:
        for key, value in records:
            if key.startswith(_SEEN):
                self.seen[int.from_bytes(key[1:], "big")] = value
        self._advance()

    def _advance(self) -> None:
        while self.next in self.seen:
            self.next += self.partitions

    def start(self) -> list[Any]:
        return []

    def on_message(self, src: Address, msg: Any) -> list[Any]:
        if src.replica != self.address.replica or src.role != REPLICA_ROLE:
            return [Dropped("unknown_sender", src.replica)]
        if not isinstance(msg, Witnessed):
            return [Dropped("unexpected_message", src.replica)]
        if msg.seq % self.partitions != self.address.partition:
            return [Dropped("wrong_partition", src.replica)]
        ack = Send(src, WitnessAck(self.next))
        known = self.seen.get(msg.seq)
        if known is not None:  # re-sent, or executed again after the front's restart
            return [ack] if known == msg.digest else [Dropped("equivocation", src.replica)]
        self.seen[msg.seq] = msg.digest
        self._advance()
        return [Persist(_SEEN + msg.seq.to_bytes(8, "big"), msg.digest),
                Send(src, WitnessAck(self.next))]

    def on_client_message(self, client: bytes, msg: Any) -> list[Any]:
        return [Dropped("unexpected_message", -1)]  # clients talk to the front only

    def on_timer(self, name: str) -> list[Any]:
        return []

    def state_digest(self) -> bytes:
        """A digest of every (position, digest) held, in position order."""
        h = hashlib.sha256()
        for seq in sorted(self.seen):
            h.update(seq.to_bytes(8, "big") + self.seen[seq])
        return h.digest()

    def status(self) -> dict[str, Any]:
        return {"witnessed": len(self.seen), "highest": max(self.seen, default=0),
                "witness_digest": self.state_digest().hex()}
