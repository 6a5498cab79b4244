"""The new-view decision: a pure function of a set of VIEW-CHANGE messages.

The new primary runs it to build NEW-VIEW; every backup runs it again on the same set and
so catches a primary that drops a prepared request. It follows the summary rule of the
MAC version of PBFT (Castro & Liskov, TOCS 2002, §4.5), which needs no prepare
certificates — only the P set (highest-view prepared digest per slot) and the Q set
(digests pre-prepared, each with the latest view) of each replica:

- the starting checkpoint is the highest stable checkpoint in the set (each comes with a
  proof of 2f+1 signed CHECKPOINTs, checked before a message enters the set);
- slot ``n`` gets digest ``d`` (prepared in view ``v``) when
  A1: 2f+1 messages are consistent with it — none has prepared a different digest at
  ``n`` in a view ``>= v`` (nor ``d`` in a view above ``v``), and
  A2: f+1 messages pre-prepared ``d`` at ``n`` in a view ``>= v`` (so a correct
  replica vouches for it: a Byzantine replica cannot invent a prepared value);
- otherwise slot ``n`` gets the null request when 2f+1 messages prepared nothing at ``n``;
- otherwise the decision must wait for more VIEW-CHANGEs.

Safety: a digest committed at ``n`` was prepared by 2f+1 replicas, f+1 of them correct;
every set of 2f+1 messages includes one of them, so no other digest passes A1 and the
null request fails B; the committed digest passes A1 and A2.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from phalanx.core.hashing import EMPTY_DIGEST
from phalanx.core.quorum import Quorums
from phalanx.protocols.pbft.messages import ViewChange

NULL_DIGEST = EMPTY_DIGEST
"""Digest of the null request (empty payload), which the new view uses to fill gaps."""


@dataclass(frozen=True, slots=True)
class NewViewDecision:
    checkpoint_seq: int
    checkpoint_digest: bytes
    checkpoint_source: ViewChange  # the message whose proof establishes the checkpoint
    slots: dict[int, bytes]  # seq -> digest (NULL_DIGEST for the null request)


def decide_new_view(view_changes: Sequence[ViewChange], quorums: Quorums) -> NewViewDecision | None:
    """Decide the new view from already-validated VIEW-CHANGEs (distinct replicas, same
    new view). Returns None when more VIEW-CHANGEs are needed."""
    if len(view_changes) < quorums.strong:
        return None
    source = max(view_changes, key=lambda vc: (vc.checkpoint_seq, vc.replica))
    low = source.checkpoint_seq

    prepared: list[dict[int, tuple[bytes, int]]] = []
    preprepared: list[dict[int, dict[bytes, int]]] = []
    top = low
    for vc in view_changes:
        p = {e.seq: (e.digest, e.view) for e in vc.prepared if e.seq > low}
        q: dict[int, dict[bytes, int]] = {}
        for e in vc.preprepared:
            if e.seq > low:
                q.setdefault(e.seq, {})[e.digest] = e.view
        prepared.append(p)
        preprepared.append(q)
        if p:
            top = max(top, *p)
        if q:
            top = max(top, *q)

    slots: dict[int, bytes] = {}
    vacant: set[int] = set()  # 2f+1 prepared nothing there: nothing can have committed
    for seq in range(low + 1, top + 1):
        chosen = _choose(seq, prepared, preprepared, quorums)
        if chosen is None:
            return None
        slots[seq], was_vacant = chosen
        if was_vacant:
            vacant.add(seq)
    # Trailing vacant slots carry no information: the new primary continues after them.
    # A null request chosen because it was prepared stays: it may have committed, and
    # giving its seq to another batch would break agreement.
    while slots and max(slots) in vacant:
        del slots[max(slots)]
    return NewViewDecision(low, source.checkpoint_digest, source, slots)


def _choose(
    seq: int,
    prepared: list[dict[int, tuple[bytes, int]]],
    preprepared: list[dict[int, dict[bytes, int]]],
    quorums: Quorums,
) -> tuple[bytes, bool] | None:
    """Slot ``seq``'s digest and whether it is vacant (the null request because 2f+1
    prepared nothing), or None if the messages do not decide it yet."""
    candidates = {p[seq] for p in prepared if seq in p}
    # Highest view first, then digest order, so every replica breaks ties alike.
    for digest, view in sorted(candidates, key=lambda c: (-c[1], c[0])):
        consistent = sum(
            1
            for p in prepared
            if seq not in p or p[seq][1] < view or p[seq] == (digest, view)
        )
        vouched = sum(1 for q in preprepared if q.get(seq, {}).get(digest, -1) >= view)
        if consistent >= quorums.strong and vouched >= quorums.weak:
            return digest, False
    nothing_prepared = sum(1 for p in prepared if seq not in p)
    if nothing_prepared >= quorums.strong:
        return NULL_DIGEST, True
    return None
