"""PBFT under the fuzzer: generator hints, protocol-aware strategies, checkers.

Strategies (besides the generic Borgesian and selective-delivery ones):
- ``silent``: listens, computes, sends nothing;
- ``equivocate``: as primary, sends different (well-formed) PRE-PREPAREs for one slot to
  different replicas — the real batch, a reordered or shortened one, an older one, the
  null request;
- ``vote_all``: votes PREPARE and COMMIT for every proposal and vote it sees, conflicting
  ones included, and signs a CHECKPOINT for every checkpoint it sees;
- ``forge_view``, ``hide_commit`` and ``splice_new_view``: targeted view-change attacks
  (:mod:`phalanx.byzantine.pbft_attacks`).
"""

from __future__ import annotations

import random
from typing import Any, TypeVar

import msgspec

from phalanx.byzantine.adapter import FuzzAdapter
from phalanx.byzantine.behaviours import (
    Borgesian,
    Log,
    Rewriter,
    SelectiveDelivery,
    Switches,
    Voter,
)
from phalanx.byzantine.generate import Fixup, MessageGenerator
from phalanx.byzantine.pbft_attacks import ForgeNewView, HideCommit, SpliceNewView
from phalanx.byzantine.pbft_planted import PLANTED_BUGS, planted_replica
from phalanx.core.hashing import digest
from phalanx.core.messages import Request, decode_batch, encode_batch
from phalanx.core.quorum import Quorums
from phalanx.protocols.pbft.config import PbftConfig
from phalanx.protocols.pbft.messages import (
    ALL_MESSAGES,
    Checkpoint,
    Commit,
    CommittedSlot,
    PayloadData,
    Prepare,
    PrePrepare,
    SlotSummary,
    ViewChange,
)
from phalanx.sim.behaviour import Behaviour, Silent
from phalanx.sim.simulator import NodeId, Simulation


def random_options(rng: random.Random) -> PbftConfig:
    """A small, fast configuration: frequent checkpoints, short windows, shallow or deep
    pipelines — the corners where watermarks, GC and view changes meet. The seeds with
    the deeper window (half of them) also track the executed set, so the equal-sets
    checker has something to check; no draw of its own, so that a seed's plan stays the
    one it was (the self-tests name seeds)."""
    interval = rng.choice((2, 4, 8))
    depth = rng.choice((2, 3))
    return PbftConfig(
        checkpoint_interval=interval,
        window=interval * depth,
        max_batch=rng.choice((4, 16)),
        max_inflight=rng.choice((1, 2, 4)),
        view_change_timeout=0.5,
        state_digest_every_batch=True,
        track_executed_set=depth == 3,
    )


# -- generator hints --------------------------------------------------------------------


def _payload(gen: MessageGenerator) -> bytes:
    """A batch payload a primary could propose: an observed one, a new batch of
    observed (authentic) client requests — reordered, repeated, replayed — or null."""
    rng = gen.rng
    roll = rng.random()
    payloads = [p.payload for p in gen.pool.messages(PrePrepare)]
    if payloads and roll < 0.5:
        return rng.choice(payloads)
    requests = gen.pool.messages(Request)
    if requests and roll < 0.9:
        batch = [rng.choice(requests) for _ in range(rng.randint(1, 4))]
        return encode_batch(batch)
    return b""


def _fix_preprepare(msg: PrePrepare, gen: MessageGenerator) -> PrePrepare:
    payload = _payload(gen)
    observed = [pp.digest for pp in gen.pool.messages(PrePrepare)]
    if observed and gen.rng.random() < 0.25:  # a real digest over another payload
        return replace_struct(msg, payload=payload, digest=gen.rng.choice(observed))
    return replace_struct(msg, payload=payload, digest=digest(payload))


def _fix_checkpoint(cp: Checkpoint, gen: MessageGenerator) -> Checkpoint:
    """A CHECKPOINT at a real checkpoint seq or the next one (so it lands above the low
    watermark), with a made-up state digest."""
    rng = gen.rng
    seqs = sorted({c.seq for c in gen.pool.messages(Checkpoint) if 0 < c.seq < 1 << 62})
    if not seqs:
        return cp
    seq = rng.choice(seqs)
    if len(seqs) > 1 and rng.random() < 0.5:
        seq += seqs[1] - seqs[0]  # a multiple of the checkpoint interval ahead
    return replace_struct(cp, instance=0, seq=seq)


def _fix_committed(msg: CommittedSlot, gen: MessageGenerator) -> CommittedSlot:
    payload = _payload(gen)
    return replace_struct(msg, payload=payload, digest=digest(payload))


def _fix_payload(msg: PayloadData, gen: MessageGenerator) -> PayloadData:
    return replace_struct(msg, payload=_payload(gen))


def _fix_view_change(vc: ViewChange, gen: MessageGenerator) -> ViewChange:
    """A VIEW-CHANGE that passes the structural checks: a stable checkpoint proven by
    real CHECKPOINTs it observed (or the genesis one), and P and Q entries inside its
    window for views below the new one — claiming that observed digests (real batches,
    maybe of other slots) were prepared at recently observed seqs (one in ten at view
    -1, which only the decoder and the admission checks stand between)."""
    rng = gen.rng
    low, low_digest = 0, b""
    proof: list[Checkpoint] = []
    stable = _stable_checkpoints(gen)
    if stable and rng.random() < 0.8:
        low, low_digest, proof = rng.choice(stable)
    new_view = max(vc.new_view, 1)
    digests = [pp.digest for pp in gen.pool.messages(PrePrepare)] or [digest(b"")]
    recent = [s for s in gen.pool.values.get("seq", ()) if isinstance(s, int)
              and low < s <= low + 4]  # every window is at least 4 slots
    entries = {}
    for _ in range(rng.randint(1, 3)):
        seq = rng.choice(recent) if recent and rng.random() < 0.7 else low + rng.randint(1, 4)
        # Now and then a claim at view -1, which a replica's "not pre-prepared" (-1) would
        # make everyone vouch for if it were admitted.
        view = -1 if rng.random() < 0.1 else rng.randrange(new_view)
        entries[seq] = SlotSummary(seq, rng.choice(digests), view)
    summaries = sorted(entries.values(), key=lambda e: e.seq)
    return replace_struct(
        vc, new_view=new_view, checkpoint_seq=low, checkpoint_digest=low_digest,
        checkpoint_proof=proof, prepared=summaries, preprepared=summaries,
    )


def _stable_checkpoints(gen: MessageGenerator) -> list[tuple[int, bytes, list[Checkpoint]]]:
    """Checkpoints for which the observed traffic may hold a quorum of matching signed
    CHECKPOINTs (forwarded unchanged, every one of them, they are a valid proof if they
    reach the cluster's quorum; the generator does not know f, so it offers every group
    of at least the smallest quorum any f gives, a majority)."""
    majority = Quorums(gen.n, 0).strong
    groups: dict[tuple[int, bytes], dict[int, Checkpoint]] = {}
    for cp in gen.pool.messages(Checkpoint):
        if 0 < cp.seq < 1 << 62 and 0 <= cp.replica < gen.n:
            groups.setdefault((cp.seq, cp.state_digest), {})[cp.replica] = cp
    return [
        (seq, state_digest, [by_replica[r] for r in sorted(by_replica)])
        for (seq, state_digest), by_replica in sorted(groups.items())
        if len(by_replica) >= majority
    ]


S = TypeVar("S", bound=msgspec.Struct)


def replace_struct(msg: S, **changes: Any) -> S:
    return msgspec.structs.replace(msg, **changes)


FIXUPS: dict[type, Fixup] = {
    PrePrepare: _fix_preprepare,
    CommittedSlot: _fix_committed,
    PayloadData: _fix_payload,
    ViewChange: _fix_view_change,
    Checkpoint: _fix_checkpoint,
}


# -- strategies -------------------------------------------------------------------------


def borgesian(replica: int, seed: int, disabled: Switches, log: Log | None) -> Behaviour:
    return Borgesian(replica, seed, ALL_MESSAGES, fixups=FIXUPS, tick=0.1, disabled=disabled,
                     log=log)


def silent(replica: int, seed: int, disabled: Switches, log: Log | None) -> Behaviour:
    return Silent()


def selective(replica: int, seed: int, disabled: Switches, log: Log | None) -> Behaviour:
    return SelectiveDelivery(replica, seed, disabled=disabled, log=log)


def equivocate(replica: int, seed: int, disabled: Switches, log: Log | None) -> Behaviour:
    history: list[bytes] = []

    def rewrite(rng: random.Random, dest: NodeId, pp: PrePrepare) -> list[Any] | None:
        if pp.payload and pp.payload not in history:
            history.append(pp.payload)
            del history[:-8]
        roll = rng.random()
        if roll < 0.4:
            return None  # this replica gets the real proposal
        if roll < 0.55:
            payload = b""
        elif roll < 0.85 and pp.payload:
            batch = decode_batch(pp.payload)
            rng.shuffle(batch)
            payload = encode_batch(batch[: rng.randint(1, len(batch))])
        else:
            payload = rng.choice(history) if history else b""
        return [replace_struct(pp, payload=payload, digest=digest(payload))]

    return Rewriter(replica, seed, rewrite, (PrePrepare,), name="equivocate",
                    disabled=disabled, log=log)


def vote_all(replica: int, seed: int, disabled: Switches, log: Log | None) -> Behaviour:
    # Each value is voted for once: conflicting values all get votes, but two vote_all
    # replicas must not answer each other's votes with votes forever (fuzz seed 60004,
    # n=10: 300,000 events in 0.1 simulated seconds, so the seed checked nothing after).
    voted: set[tuple[Any, ...]] = set()

    def votes(sim: Simulation, me: int, msg: Any) -> list[tuple[NodeId, Any]]:
        peers = [r for r in range(sim.n) if r != me]
        if isinstance(msg, PrePrepare | Prepare | Commit):
            value = ("vote", msg.instance, msg.view, msg.seq, msg.digest)
            if value in voted:
                return []
            voted.add(value)
            out: list[Any] = [
                Prepare(msg.instance, msg.view, msg.seq, msg.digest),
                Commit(msg.instance, msg.view, msg.seq, msg.digest),
            ]
            return [(r, vote) for r in peers for vote in out]
        if isinstance(msg, Checkpoint) and msg.replica != me:
            signed = ("checkpoint", msg.instance, msg.seq, msg.state_digest)
            if signed in voted:
                return []
            voted.add(signed)
            crypto = sim.byzantine_crypto(me)
            cp = Checkpoint(msg.instance, msg.seq, msg.state_digest, me)
            cp = replace_struct(cp, sig=crypto.sign(cp.signed_bytes()))
            return [(r, cp) for r in peers]
        return []

    return Voter(replica, seed, votes, name="vote_all", disabled=disabled, log=log)


def forge_view(replica: int, seed: int, disabled: Switches, log: Log | None) -> Behaviour:
    return ForgeNewView(replica, seed, disabled=disabled, log=log)


def hide_commit(replica: int, seed: int, disabled: Switches, log: Log | None) -> Behaviour:
    return HideCommit(replica, seed, disabled=disabled, log=log)


def splice_new_view(
    replica: int, seed: int, disabled: Switches, log: Log | None
) -> Behaviour:
    return SpliceNewView(replica, seed, disabled=disabled, log=log)


fuzz_adapter = FuzzAdapter(
    make_options=random_options,
    strategies={
        "borgesian": borgesian,
        "silent": silent,
        "selective": selective,
        "equivocate": equivocate,
        "vote_all": vote_all,
        "forge_view": forge_view,
        "hide_commit": hide_commit,
        "splice_new_view": splice_new_view,
    },
    signer_field="replica",
    fixups=FIXUPS,
    view_change_timeout=0.5,
    planted_bugs={name: planted_replica(name) for name in PLANTED_BUGS},
    needs_lagging_replica=frozenset({"splice_new_view"}),
)
"""PBFT's fuzz adapter (named by its spec: ``phalanx.byzantine.pbft:fuzz_adapter``)."""
