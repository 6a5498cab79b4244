"""The PBFT instance and replica driven directly, message by message: admission rules,
bad input, the new-view rule, single-shot mode and several instances side by side."""

from __future__ import annotations

import random

import msgspec
import pytest

from phalanx.core.effects import Broadcast, Dropped, Persist, Send
from phalanx.core.hashing import digest
from phalanx.core.quorum import Quorums
from phalanx.protocols.pbft.config import PbftConfig
from phalanx.protocols.pbft.instance import Decided, PbftInstance
from phalanx.protocols.pbft.messages import (
    Checkpoint,
    Commit,
    NewView,
    Prepare,
    PrePrepare,
    SlotSummary,
    ViewChange,
)
from phalanx.protocols.pbft.viewchange import NULL_DIGEST, decide_new_view
from phalanx.sim.crypto import SymbolicOracle

Q = Quorums(4, 1)
CONFIG = PbftConfig(checkpoint_interval=4, window=8, view_change_timeout=1.0)


def oracle() -> SymbolicOracle:
    return SymbolicOracle(random.Random(7), 4)


def instance(me: int = 1, validate=lambda p: True, config: PbftConfig = CONFIG, inst: int = 0):
    return PbftInstance(inst, me, Q, oracle().node_crypto(me), config, validate)


def dropped(effects) -> list[str]:
    return [e.reason for e in effects if isinstance(e, Dropped)]


def sent(effects, kind) -> list:
    return [e.msg for e in effects if isinstance(e, Broadcast) and isinstance(e.msg, kind)]


def pp(seq: int, payload: bytes = b"x", view: int = 0) -> PrePrepare:
    return PrePrepare(0, view, seq, digest(payload), payload)


def test_backup_prepares_a_valid_preprepare():
    inst = instance()
    out = inst.on_message(0, pp(1))
    assert sent(out, Prepare) == [Prepare(0, 0, 1, digest(b"x"))]


@pytest.mark.parametrize(
    ("src", "msg", "reason"),
    [
        (2, pp(1), "preprepare_not_from_primary"),
        (9, pp(1), "unknown_sender"),
        (-1, pp(1), "unknown_sender"),
        (0, PrePrepare(0, 0, 1, digest(b"other"), b"x"), "bad_digest"),
        (0, pp(9), "outside_watermarks"),
        (0, pp(0), "stale_slot"),
        (0, pp(1, view=7), "future_view"),
        (0, PrePrepare(5, 0, 1, digest(b"x"), b"x"), "wrong_instance"),
        (0, Prepare(0, 0, 1, digest(b"x")), "prepare_from_primary"),
        (2, Checkpoint(0, 4, b"d", 2, b"forged"), "bad_signature"),
        (2, "not a message", "unexpected_message"),
    ],
)
def test_bad_input_is_dropped_and_counted(src, msg, reason):
    inst = instance()
    out = inst.on_message(src, msg)
    assert dropped(out) == [reason]
    assert not sent(out, Prepare) and inst.last_decided == 0


def test_invalid_payload_is_not_prepared():
    inst = instance(validate=lambda p: p != b"evil")
    assert dropped(inst.on_message(0, pp(1, b"evil"))) == ["invalid_payload"]


def test_conflicting_preprepare_is_equivocation_not_a_crash():
    inst = instance()
    inst.on_message(0, pp(1, b"a"))
    out = inst.on_message(0, pp(1, b"b"))
    assert dropped(out) == ["equivocation"]
    assert inst.slots[1].digest == digest(b"a")


def test_duplicate_and_conflicting_votes_count_once():
    inst = instance()
    inst.on_message(0, pp(1))
    d = digest(b"x")
    inst.on_message(2, Prepare(0, 0, 1, d))
    assert dropped(inst.on_message(2, Prepare(0, 0, 1, d))) == ["duplicate_vote"]
    assert dropped(inst.on_message(2, Prepare(0, 0, 1, digest(b"y")))) == ["equivocation"]
    # 2f = 2 prepares needed: own + replica 2 -> prepared, commit sent.
    assert inst.slots[1].prepared_view == 0
    inst.on_message(2, Commit(0, 0, 1, d))
    inst.on_message(2, Commit(0, 0, 1, d))  # duplicate does not make a quorum
    assert inst.last_decided == 0
    out = inst.on_message(3, Commit(0, 0, 1, d))
    assert [e for e in out if isinstance(e, Decided)] == [Decided(1, d, b"x")]


def _vc(o, replica, new_view, prepared=(), preprepared=()):
    vc = ViewChange(0, new_view, replica, 0, b"", [], list(prepared), list(preprepared))
    return msgspec.structs.replace(vc, sig=o.node_crypto(replica).sign(vc.signed_bytes()))


def test_new_view_keeps_a_value_prepared_by_a_quorum():
    o = oracle()
    d = digest(b"x")
    vcs = [
        _vc(o, r, 1, [SlotSummary(1, d, 0)], [SlotSummary(1, d, 0)]) for r in (0, 1)
    ] + [_vc(o, 2, 1, [], [SlotSummary(1, d, 0)])]
    decision = decide_new_view(vcs, Q)
    assert decision is not None and decision.slots == {1: d}


def test_new_view_rejects_a_prepared_claim_nobody_vouches_for():
    o = oracle()
    fake = digest(b"fake")
    # A Byzantine replica claims it prepared `fake`; no one pre-prepared it.
    vcs = [_vc(o, 3, 1, [SlotSummary(1, fake, 0)], [SlotSummary(1, fake, 0)])]
    vcs += [_vc(o, r, 1) for r in (0, 1, 2)]
    decision = decide_new_view(vcs, Q)
    assert decision is not None and decision.slots == {}  # a trailing null is dropped


def test_new_view_keeps_a_trailing_null_request_that_was_prepared():
    """A null request prepared (and maybe committed) in an earlier view at the last slot is
    kept, not dropped as a trailing null: the new primary would otherwise give its seq to
    another batch. (Found by the fuzzer, seed 40444 of n=4: two replicas executed the null
    request at seq 5 in view 2, another a batch at seq 5 in view 3.)"""
    o = oracle()
    null = [SlotSummary(1, NULL_DIGEST, 2)]
    vcs = [_vc(o, r, 3, null, null) for r in (1, 3)] + [_vc(o, 2, 3)]
    decision = decide_new_view(vcs, Q)
    assert decision is not None and decision.slots == {1: NULL_DIGEST}
    # Where 2f+1 prepared nothing, nothing can have committed: that trailing null goes.
    vcs = [_vc(o, r, 3, [], null) for r in (1, 2, 3)]
    decision = decide_new_view(vcs, Q)
    assert decision is not None and decision.slots == {}


def test_new_view_fills_gaps_with_null_and_waits_when_undecidable():
    o = oracle()
    d = digest(b"x")
    vcs = [_vc(o, r, 1, [SlotSummary(2, d, 0)], [SlotSummary(2, d, 0)]) for r in (0, 1)]
    vcs.append(_vc(o, 2, 1, [], [SlotSummary(2, d, 0)]))
    decision = decide_new_view(vcs, Q)
    assert decision.slots == {1: NULL_DIGEST, 2: d}
    # With only two consistent messages nothing can be decided yet.
    assert decide_new_view(vcs[:2], Q) is None


def test_backup_rejects_new_view_that_drops_a_prepared_request():
    o = oracle()
    d = digest(b"x")
    vcs = [_vc(o, r, 1, [SlotSummary(1, d, 0)], [SlotSummary(1, d, 0)]) for r in (1, 2, 3)]
    inst = instance(me=2)
    inst.on_message(0, pp(1))  # so that it knows the payload
    # A forged VIEW-CHANGE (bad signature) inside NEW-VIEW makes the whole message invalid.
    forged = msgspec.structs.replace(vcs[0], prepared=[])
    out = inst.on_message(1, _nv(o, 1, [forged, vcs[1], vcs[2]]))
    assert dropped(out) == ["bad_new_view"]
    assert inst.view == 0
    out = inst.on_message(1, _nv(o, 1, vcs))
    assert inst.view == 1 and not inst.in_view_change
    assert sent(out, Prepare) == [Prepare(0, 1, 1, d)]


def _nv(o, view, vcs, signer=None):
    """A NEW-VIEW signed by ``signer`` (default: the primary of ``view``)."""
    nv = NewView(0, view, list(vcs))
    signer = Q.primary(view) if signer is None else signer
    return msgspec.structs.replace(nv, sig=o.node_crypto(signer).sign(nv.signed_bytes()))


def _two_quorums_that_decide_differently(o):
    """VIEW-CHANGEs for view 1 where replica 1 alone prepared ``d`` at seq 1 (replicas 1
    and 2 pre-prepared it): the primary's quorum {1, 2, 3} keeps ``d``; Byzantine replica
    3's quorum {0, 2, 3'} (with a VIEW-CHANGE of its own claiming nothing) does not."""
    d = digest(b"x")
    honest = [
        _vc(o, 1, 1, [SlotSummary(1, d, 0)], [SlotSummary(1, d, 0)]),
        _vc(o, 2, 1, [], [SlotSummary(1, d, 0)]),
        _vc(o, 3, 1, [], [SlotSummary(1, d, 0)]),
    ]
    spliced = [_vc(o, 0, 1), honest[1], _vc(o, 3, 1)]
    assert decide_new_view(honest, Q).slots == {1: d}
    assert decide_new_view(spliced, Q).slots == {}
    return honest, spliced


def test_a_lagging_replica_takes_only_the_new_view_its_primary_signed():
    """Any quorum of signed VIEW-CHANGEs is a valid proof, and two quorums can decide
    differently: a lagging replica must not install a NEW-VIEW another replica assembled
    (it would prepare another digest than the others in the same view and slot, and no
    later view change could decide that slot). The primary's NEW-VIEW, forwarded by
    anyone, is taken."""
    o = oracle()
    honest, spliced = _two_quorums_that_decide_differently(o)
    lagging = instance(me=0)
    for nv in (NewView(0, 1, spliced), _nv(o, 1, spliced, signer=3), _nv(o, 1, honest, signer=3)):
        assert dropped(lagging.on_message(3, nv)) == ["bad_new_view_signature"]
        assert lagging.view == 0
    lagging.on_message(3, _nv(o, 1, honest))  # the primary's, forwarded by replica 3
    assert lagging.view == 1 and lagging.slots[1].digest == digest(b"x")


def test_with_link_based_new_view_acceptance_a_lagging_replica_installs_a_splice():
    """The planted bug keeps the old rule (a NEW-VIEW for a later view from any sender,
    unsigned): the lagging replica installs the spliced O set, without slot 1."""
    o = oracle()
    _, spliced = _two_quorums_that_decide_differently(o)
    from phalanx.byzantine.pbft_planted import PLANTED_BUGS

    instance_class = PLANTED_BUGS["unsigned_new_view"].replica_class.instance_class
    lagging = instance_class(0, 0, Q, oracle().node_crypto(0), CONFIG, lambda p: True)
    lagging.on_message(3, NewView(0, 1, spliced))
    assert lagging.view == 1 and 1 not in lagging.slots


def test_view_change_from_unknown_or_forged_signer_is_rejected():
    o = oracle()
    inst = instance(me=2)
    vc = _vc(o, 3, 1)
    forged = msgspec.structs.replace(vc, replica=1)
    assert dropped(inst.on_message(3, forged)) == ["bad_view_change"]


def test_f_plus_one_view_changes_make_a_replica_join():
    o = oracle()
    inst = instance(me=2)
    inst.on_message(3, _vc(o, 3, 1))
    assert inst.view == 0
    out = inst.on_message(0, _vc(o, 0, 1))
    assert inst.view == 1 and inst.in_view_change
    assert sent(out, ViewChange)


def _wire(instances, effects_by_replica):
    """Deliver broadcasts among directly driven instances until quiet."""
    queue = [(r, e) for r, effs in effects_by_replica.items() for e in effs]
    decided = {r: [] for r in instances}
    while queue:
        src, e = queue.pop(0)
        if isinstance(e, Decided):
            decided[src].append(e)
        if isinstance(e, Broadcast):
            for r, inst in instances.items():
                if r != src:
                    queue.extend((r, x) for x in inst.on_message(src, e.msg))
    return decided


def test_single_shot_decides_one_valid_value_and_nothing_more():
    o = oracle()
    config = PbftConfig(single_shot=True, checkpoint_interval=1, window=2)
    valid = lambda p: p.startswith(b"ok")  # noqa: E731 - the external validity predicate
    insts = {r: PbftInstance(7, r, Q, o.node_crypto(r), config, valid) for r in range(4)}
    assert insts[0].can_propose()
    decided = _wire(insts, {0: insts[0].propose(b"ok:value")})
    assert {r: [d.payload for d in ds] for r, ds in decided.items()} == {
        r: [b"ok:value"] for r in range(4)
    }
    assert not insts[0].can_propose()


def test_independent_instances_share_a_process_without_interference():
    o = oracle()
    a = {r: PbftInstance(1, r, Q, o.node_crypto(r), CONFIG, lambda p: True) for r in range(4)}
    b = {r: PbftInstance(2, r, Q, o.node_crypto(r), CONFIG, lambda p: True) for r in range(4)}
    da = _wire(a, {0: a[0].propose(b"A")})
    db = _wire(b, {0: b[0].propose(b"B")})
    assert all(d[0].payload == b"A" for d in da.values())
    assert all(d[0].payload == b"B" for d in db.values())
    # A message of instance 2 is rejected by instance 1.
    assert dropped(a[1].on_message(0, PrePrepare(2, 0, 2, digest(b"B"), b"B"))) == [
        "wrong_instance"
    ]


def test_client_accepts_f_plus_one_matching_replies_and_can_abandon():
    from phalanx.core.effects import Completed
    from phalanx.core.messages import Reply
    from phalanx.protocols.pbft.client import PbftClient

    client = PbftClient(oracle().new_client(), Q)
    ts, _ = client.submit(b"op")
    assert client.on_message(1, Reply(client.client_id, 0, ts, 1, b"r")) == []
    assert client.on_message(2, Reply(client.client_id, 0, ts, 2, b"forged-by-2")) == []
    # A reply claiming another replica's id counts for nobody.
    assert client.on_message(3, Reply(client.client_id, 0, ts, 1, b"r")) == []
    out = client.on_message(3, Reply(client.client_id, 0, ts, 3, b"r"))
    done = [e for e in out if isinstance(e, Completed)]
    assert done == [Completed(ts, b"r")]
    ts2, _ = client.submit(b"op2")
    client.abandon()
    ts3, _ = client.submit(b"op3")  # no "one request at a time" error
    assert ts3 > ts2 > ts


@pytest.mark.parametrize(
    ("client", "timestamp", "endpoint"),
    [(b"c" * 31, 1, b""), (b"c" * 32, 0, b""), (b"c" * 32, 1 << 64, b""), (b"c" * 32, 1, b"e")],
)
def test_malformed_client_requests_are_refused_with_an_error(client, timestamp, endpoint):
    from phalanx.core.messages import Error, Request
    from phalanx.protocols.pbft.replica import PbftReplica
    from phalanx.statemachine.kv import KVStore

    replica = PbftReplica(0, Q, oracle().node_crypto(0), KVStore, CONFIG)
    request = Request(client, timestamp, b"op", endpoint)
    out = replica.on_client_message(request.reply_to, request)
    assert dropped(out) == ["malformed_request"]
    errors = [e.msg for e in out if isinstance(getattr(e, "msg", None), Error)]
    assert errors and errors[0].reason == "malformed_request"


def test_batches_respect_the_byte_cap_whatever_the_request_sizes():
    from phalanx.core.messages import Request, decode_batch
    from phalanx.protocols.pbft.replica import PbftReplica
    from phalanx.statemachine.kv import KVStore

    o = oracle()
    config = PbftConfig(max_request_bytes=1 << 20, max_batch_bytes=3 << 20, max_inflight=16)
    replica = PbftReplica(0, Q, o.node_crypto(0), KVStore, config)
    for _ in range(10):  # queued while nothing may be proposed, then proposed at once
        client = o.new_client()
        unsigned = Request(client.public_key, 1, b"x" * (1 << 20))
        req = Request(unsigned.client, 1, unsigned.op, auth=client.authenticate(unsigned.digest()))
        replica.pending[req.client] = replica.unproposed[req.client] = req
    sizes = [
        sum(len(r.op) for r in decode_batch(e.msg.payload))
        for e in replica._propose()
        if isinstance(e, Broadcast) and isinstance(e.msg, PrePrepare)
    ]
    assert sum(sizes) == 10 << 20  # nothing lost
    assert len(sizes) > 1 and max(sizes) <= 3 << 20


@pytest.mark.parametrize("multicast", [False, True])
def test_a_backup_forwards_a_client_request_unless_the_client_multicast_it(multicast):
    from phalanx.core.effects import Send
    from phalanx.core.messages import Request
    from phalanx.protocols.pbft.client import PbftClient
    from phalanx.protocols.pbft.replica import PbftReplica
    from phalanx.statemachine.kv import KVStore

    o = oracle()
    backup = PbftReplica(1, Q, o.node_crypto(1), KVStore, CONFIG)
    client = PbftClient(o.new_client(), Q, multicast=multicast)
    _, effects = client.submit(b"op")
    [send] = [e for e in effects if isinstance(e, (Send, Broadcast))]
    # A multicast client reaches every replica itself; otherwise it tries the primary.
    assert isinstance(send, Broadcast) == multicast
    request = send.msg
    assert isinstance(request, Request) and request.multicast == multicast
    out = backup.on_client_message(request.reply_to, request)
    forwarded = [e for e in out if isinstance(e, Send) and e.msg == request]
    assert [e.dest for e in forwarded] == ([] if multicast else [0])
    assert request.client in backup.pending  # known either way: its view-change timer runs
    # The hint is not part of the request: the same request either way.
    assert request.digest() == msgspec.structs.replace(request, multicast=not multicast).digest()


def test_a_held_multicast_request_is_forwarded_before_the_primary_is_suspected():
    """A client may mark a request multicast yet withhold it from the primary: the backups
    that hold it forward it when their progress timer runs out and wait one more timeout
    before suspecting the primary; a primary that still decides nothing is suspected."""
    from phalanx.core.effects import Send, SetTimer
    from phalanx.protocols.pbft.client import PbftClient
    from phalanx.protocols.pbft.messages import ViewChange
    from phalanx.protocols.pbft.replica import PbftReplica
    from phalanx.statemachine.kv import KVStore

    o = oracle()
    backup = PbftReplica(1, Q, o.node_crypto(1), KVStore, CONFIG)
    backup.start()
    _, effects = PbftClient(o.new_client(), Q, multicast=True).submit(b"op")
    request = effects[0].msg
    assert not [e for e in backup.on_client_message(request.reply_to, request)
                if isinstance(e, Send)]
    timer = backup.instance.progress_timer
    out = backup.on_timer(timer)
    assert [(e.dest, e.msg) for e in out if isinstance(e, Send)] == [(0, request)]
    assert any(isinstance(e, SetTimer) and e.name == timer for e in out)
    assert not sent(out, ViewChange) and not backup.instance.in_view_change
    out = backup.on_timer(timer)  # still nothing decided: now the primary is suspected
    assert sent(out, ViewChange) and backup.instance.in_view_change


def test_cached_reply_is_not_served_to_a_request_without_a_valid_authenticator():
    from phalanx.core.messages import Reply, Request
    from phalanx.host import ClientRecord
    from phalanx.protocols.pbft.replica import PbftReplica
    from phalanx.statemachine.kv import KVStore

    replica = PbftReplica(0, Q, oracle().node_crypto(0), KVStore, CONFIG)
    victim = b"v" * 32
    replica.host.requests.clients[victim] = ClientRecord(7, b"secret")
    probe = Request(victim, 7, b"", endpoint=b"a" * 32)  # replayed id, no valid MAC
    out = replica.on_client_message(probe.reply_to, probe)
    assert not [e for e in out if isinstance(getattr(e, "msg", None), Reply)]
    assert dropped(out) == ["bad_authenticator"]


def _durable(effects) -> list[tuple[bytes, bytes]]:
    """What a crash right after ``effects`` leaves on disk: the non-lazy records only."""
    return [(e.key, e.value) for e in effects if isinstance(e, Persist) and not e.lazy]


def test_a_backup_prepares_only_once_its_pre_prepare_record_is_durable():
    """A backup's Q entry must survive a crash: it is what vouches for the batch in a
    view change (f+1 pre-prepared), and it stops a restarted backup from preparing a
    Byzantine primary's second batch for the same slot and view."""
    first = instance(me=1)
    out = first.on_message(0, pp(1, b"batch A"))
    assert sent(out, Prepare) and _durable(out)  # the PREPARE waits for this write
    restarted = instance(me=1)
    restarted.recover(_durable(out))
    assert restarted.fenced_view == -1  # backups are not fenced
    again = restarted.on_message(0, pp(1, b"batch B"))
    assert sent(again, Prepare) == [] and dropped(again) == ["equivocation"]


class _Node:
    """A bare instance with a disk: non-lazy writes take the lazy ones along; a crash
    loses what was not written (as in the simulator)."""

    def __init__(self, me: int) -> None:
        self.me, self.disk, self.lazy, self.outbox = me, {}, [], []
        self.inst = instance(me=me)

    def apply(self, effects) -> None:
        records = [(e.key, e.value, e.lazy) for e in effects if isinstance(e, Persist)]
        self.lazy.extend((k, v) for k, v, _ in records)
        if any(not lazy for _, _, lazy in records):
            for key, value in self.lazy:
                if value is None:
                    self.disk.pop(key, None)
                else:
                    self.disk[key] = value
            self.lazy = []
        self.outbox.extend(e.msg for e in effects if isinstance(e, Broadcast))

    def crash_restart(self) -> None:
        self.lazy, self.outbox = [], []
        self.inst = instance(me=self.me)
        self.inst.recover(sorted(self.disk.items()))
        self.apply(self.inst.start())

    def time_out(self) -> None:
        self.inst.timer_armed = True
        self.apply(self.inst.on_timer(self.inst._t_progress))

    def deliver_to(self, dest: _Node, kind) -> None:
        for msg in self.outbox:
            if isinstance(msg, kind):
                dest.apply(dest.inst.on_message(self.me, msg))


def test_two_crash_rounds_in_two_views_still_decide_a_new_view():
    """Crash faults only, two replicas restarted in each of two views, each time right
    after a batch was prepared at one replica: every later VIEW-CHANGE set must still
    decide (with lazy backup records, the batches lost their f+1 vouchers and no view
    could ever be installed again)."""
    nodes = [_Node(i) for i in range(4)]
    nodes[0].apply(nodes[0].inst.propose(b"batch one"))
    nodes[0].deliver_to(nodes[1], PrePrepare)
    nodes[0].deliver_to(nodes[2], PrePrepare)
    nodes[2].deliver_to(nodes[1], Prepare)
    assert nodes[1].inst.slots[1].p_entry == (digest(b"batch one"), 0)
    nodes[0].crash_restart()
    nodes[2].crash_restart()
    for n in nodes:
        n.outbox = []
        n.time_out()  # everyone to view 1 (primary 1)
    for src in (0, 2, 3):
        nodes[src].deliver_to(nodes[1], ViewChange)
    new_views = [m for m in nodes[1].outbox if isinstance(m, NewView)]
    assert new_views
    for dest in (0, 2, 3):
        nodes[dest].apply(nodes[dest].inst.on_message(1, new_views[0]))
    assert all(n.inst.view == 1 and not n.inst.in_view_change for n in nodes)
    for n in nodes:
        n.outbox = []
    nodes[1].apply(nodes[1].inst.propose(b"batch two"))
    nodes[1].deliver_to(nodes[2], PrePrepare)
    nodes[1].deliver_to(nodes[3], PrePrepare)
    nodes[3].deliver_to(nodes[2], Prepare)
    nodes[1].crash_restart()
    nodes[3].crash_restart()
    for n in nodes:
        n.outbox = []
        n.time_out()  # view 2
    view_changes = [
        next(m for m in reversed(n.outbox) if isinstance(m, ViewChange) and m.new_view == 2)
        for n in nodes
    ]
    assert decide_new_view(view_changes, Q) is not None
    # Without replica 3's VIEW-CHANGE it cannot decide: batch two was prepared at 2 only,
    # and its primary (1) restarted without its lazy pre-prepare record, so 3's durable
    # Q entry is the second voucher. That is the documented corner: a restarted primary
    # counts as faulty until the next view, and 3 missing would be a second fault.
    assert decide_new_view(view_changes[:3], Q) is None


def test_restarted_primary_proposes_nothing_more_in_its_view_but_does_after_it():
    primary = instance(me=0)
    out = primary.propose(b"batch A")
    assert sent(out, PrePrepare) and not _durable(out)
    restarted = instance(me=0)
    restarted.recover(_durable(out))
    assert restarted.fenced_view == 0 and not restarted.can_propose()
    restarted.view = 4  # primary again after view changes (4 mod 4)
    assert restarted.can_propose()


def _in_view_change(me: int, view: int) -> PbftInstance:
    """An instance recovered in the middle of a view change to ``view`` (it lost the
    VIEW-CHANGEs it had collected: they are not persisted)."""
    inst = instance(me=me)
    inst.recover([(inst._key(b"v"), msgspec.msgpack.encode((view, True)))])
    inst.start()
    return inst


def test_a_replica_that_moved_past_a_view_change_gives_its_view_change_to_one_stuck_there():
    """Seed 263 of the splice_new_view fuzz: replicas 0 and 1 (one back from a crash)
    waited in the change to view 2 with two VIEW-CHANGEs, replica 3 in the change to view
    3 alone, Byzantine replica 2 silent: nobody's timer ran, forever. Replica 3 left view
    2 without installing it, so its VIEW-CHANGE for view 2 is true: it sends it to a
    replica it sees stuck there (once per sync tick)."""
    o = oracle()
    ahead = _in_view_change(3, 3)
    out = ahead.on_message(0, _vc(o, 0, 2))
    help_ = [e.msg for e in out if isinstance(e, Send)]
    assert [(vc.new_view, vc.replica) for vc in help_] == [(2, 3)]
    assert o.node_crypto(0).verify(3, help_[0].signed_bytes(), help_[0].sig)
    assert not [e for e in ahead.on_message(0, _vc(o, 0, 2)) if isinstance(e, Send)]
    stuck = _in_view_change(0, 2)
    stuck.on_message(1, _vc(o, 1, 2))
    assert not stuck.timer_armed  # two VIEW-CHANGEs: no quorum, no timer
    stuck.on_message(3, help_[0])
    assert stuck.timer_armed  # a quorum for view 2: its timer runs, it moves on


def test_a_replica_in_a_later_view_gives_its_new_view_to_one_stuck_changing_to_it():
    o = oracle()
    d = digest(b"x")
    vcs = [_vc(o, r, 1, [SlotSummary(1, d, 0)], [SlotSummary(1, d, 0)]) for r in (1, 2, 3)]
    installed = instance(me=2)
    installed.on_message(0, pp(1))
    installed.on_message(1, _nv(o, 1, vcs))
    assert installed.view == 1 and not installed.in_view_change
    out = installed.on_message(0, _vc(o, 0, 1))
    assert [type(e.msg) for e in out if isinstance(e, Send)] == [NewView]


def test_a_restarted_backup_still_counts_its_own_prepare_vote():
    """A backup's PREPARE for a pre-prepare of its view may be out when it crashes (the
    record is durable before it leaves): after the restart it takes its pre-prepare
    back, and its vote with it, so one more backup's PREPARE makes the slot prepared
    (n=4: the two of 2f), as before the crash — not two more."""
    first = instance(me=1)
    out = first.on_message(0, pp(1, b"batch A"))
    restarted = instance(me=1)
    restarted.recover(_durable(out))
    restarted.start()
    out = restarted.on_message(2, Prepare(0, 0, 1, digest(b"batch A")))
    assert sent(out, Commit) == [Commit(0, 0, 1, digest(b"batch A"))]


def test_a_view_change_claiming_a_prepared_entry_at_view_minus_one_is_refused():
    """Inside a replica "not pre-prepared" is view -1, so a claim at view -1 counted every
    VIEW-CHANGE as vouching for it: one Byzantine replica's made-up digest was chosen for
    an otherwise empty slot (the same claim at view 0 yields the null request)."""
    o = oracle()
    fake = digest(b"made up")
    claim = [SlotSummary(1, fake, -1)]
    lying = _vc(o, 3, 1, claim, claim)
    assert decide_new_view([lying, _vc(o, 0, 1), _vc(o, 2, 1)], Q).slots == {1: fake}  # why
    assert dropped(instance(me=2).on_message(3, lying)) == ["bad_view_change"]
    with pytest.raises(msgspec.ValidationError):
        msgspec.msgpack.decode(msgspec.msgpack.encode(lying), type=ViewChange)
    at_zero = [SlotSummary(1, fake, 0)]
    vcs = [_vc(o, 3, 1, at_zero, at_zero), _vc(o, 0, 1), _vc(o, 2, 1)]
    assert decide_new_view(vcs, Q) is None  # nobody vouches for it: wait for more
    vcs.append(_vc(o, 1, 1))
    assert decide_new_view(vcs, Q).slots == {}  # the null request, dropped as trailing


@pytest.mark.parametrize("bad", [
    Prepare(0, -1, 1, digest(b"x")), Prepare(0, 0, -5, digest(b"x")),
    Prepare(-1, 0, 1, digest(b"x")), Prepare(0, 0, 1, b"short"),
    Commit(0, 1 << 63, 1, digest(b"x")),
])
def test_the_wire_refuses_negative_or_oversized_views_seqs_instances_and_short_digests(bad):
    from phalanx.core.messages import encode
    from phalanx.protocols.registry import protocol

    with pytest.raises(msgspec.ValidationError):
        protocol("pbft").decoder().decode(encode(bad))


def test_a_cached_reply_carries_the_current_view():
    """A retransmitted request is answered from the client table, in the replica's current
    view: clients learn the view (and so the primary) from replies. (The replica host
    once answered cached replies in view 0: caught by comparing simulator traces.)"""
    from phalanx.core.messages import Reply, Request
    from phalanx.host import ClientRecord
    from phalanx.protocols.pbft.replica import PbftReplica
    from phalanx.statemachine.kv import KVStore

    o = oracle()
    client = o.new_client()
    replica = PbftReplica(0, Q, o.node_crypto(0), KVStore, CONFIG)
    replica.host.requests.clients[client.public_key] = ClientRecord(7, b"done")
    replica.instance.view = 2
    unsigned = Request(client.public_key, 7, b"op")
    request = msgspec.structs.replace(unsigned, auth=client.authenticate(unsigned.digest()))
    out = replica.on_client_message(request.reply_to, request)
    replies = [e.msg for e in out if isinstance(getattr(e, "msg", None), Reply)]
    assert [(r.view, r.result) for r in replies] == [(2, b"done")]


@pytest.mark.parametrize("sender", [(0, "witness", 0), (0, "replica", 1), (2, "leader", 3)])
@pytest.mark.parametrize("kind", ["preprepare", "fetch_state", "relayed_request"])
def test_a_pbft_replica_hears_only_replica_processes_partition_zero(sender, kind):
    """A PBFT replica is one process: a message from any other role or partition — even
    one that authenticates as a real replica (its key is every process's of it) — is
    refused before the instance or the host sees it: no vote, no snapshot sent, no
    request relayed."""
    from phalanx.core.address import Address
    from phalanx.core.messages import Request
    from phalanx.host import FetchState
    from phalanx.protocols.pbft.replica import PbftReplica
    from phalanx.statemachine.kv import KVStore

    replica = PbftReplica(1, Q, oracle().node_crypto(1), KVStore, CONFIG)
    replica.start()
    msg = {"preprepare": pp(1), "fetch_state": FetchState(0),
           "relayed_request": Request(b"c" * 32, 1, b"op")}[kind]
    address = Address(*sender)
    out = replica.on_message(address, msg)
    assert out == [Dropped("unknown_sender", address.replica)]
    assert not replica.pending and replica.instance.max_seen == 0
