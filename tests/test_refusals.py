"""Which refusals end a request (docs/pbft.md, "Refusals").

A client reports a request refused only when the refusals prove it can never execute:
f+1 replicas refusing for the same FINAL reason (a function of the request's bytes and
the cluster config, so one correct refuser means all refuse), or a blocking set
(``Quorums.blocking``) for the same permanent one. f Byzantine replicas echoing a
lagging correct replica's refusal (judged on its state or load) make it "not accepted
yet" at most: the request stays outstanding, and when it executes after all the client
still returns its result.
"""

from __future__ import annotations

import hashlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pbft_harness import FAST, assert_consistent

from phalanx.core.effects import Broadcast, Completed, NotAccepted
from phalanx.core.messages import Error, Refusal, Replies, Reply, Request
from phalanx.core.quorum import Quorums
from phalanx.crypto.keys import KeyPair
from phalanx.ledger import tx as txm
from phalanx.ledger.block import APPLIED
from phalanx.ledger.state import Ledger, decode_result, make_ledger_factory
from phalanx.protocols.pbft.client import RETRY_TIMER, PbftClient
from phalanx.protocols.pbft.config import PbftConfig
from phalanx.protocols.pbft.messages import ALL_MESSAGES
from phalanx.protocols.pbft.replica import PbftReplica
from phalanx.runtime.sim.crypto import SymbolicOracle
from phalanx.runtime.sim.network import ConstantLatency, NetworkModel
from phalanx.runtime.sim.simulator import Behaviour, Simulation
from phalanx.statemachine.kv import KVStore, encode_put

Q = Quorums(4, 1)
T, L, F = Refusal.TRANSIENT, Refusal.LOCAL, Refusal.FINAL


def new_client() -> PbftClient:
    return PbftClient(SymbolicOracle(random.Random(5), 4).new_client(), Q)


def refuse(client: PbftClient, ts: int, replica: int, reason: str, refusal: int) -> list:
    return client.on_message(replica, Error(client.client_id, ts, replica, reason, refusal))


def reply(client: PbftClient, ts: int, replica: int, result: bytes) -> list:
    return client.on_message(replica, Reply(client.client_id, 0, ts, replica, result))


def outcomes(effects: list) -> list:
    return [e for e in effects if isinstance(e, Completed | NotAccepted)]


# -- the client core ------------------------------------------------------------------------


def test_a_byzantine_echo_of_a_lagging_replicas_refusal_does_not_fail_the_request():
    """Replica 3 (Byzantine) echoes what lagging replica 2 said: f+1 matching refusals,
    but judged on state, so "not accepted yet"; replicas 0 and 1 execute it, and the
    client, still waiting, takes their result."""
    client = new_client()
    ts, _ = client.submit(b"transfer")
    assert outcomes(refuse(client, ts, 2, "insufficient_funds", T)) == []
    assert outcomes(refuse(client, ts, 3, "insufficient_funds", T)) == [
        NotAccepted(ts, "insufficient_funds")
    ]
    assert client.request is not None  # still outstanding: it may yet execute
    assert outcomes(reply(client, ts, 0, b"applied")) == []
    assert outcomes(reply(client, ts, 1, b"applied")) == [Completed(ts, b"applied")]


def test_the_request_is_retransmitted_after_it_was_not_accepted():
    client = new_client()
    ts, _ = client.submit(b"op")
    refuse(client, ts, 0, "overloaded", T)
    refuse(client, ts, 1, "overloaded", T)
    out = client.on_timer(RETRY_TIMER)
    assert [e.msg.timestamp for e in out if isinstance(e, Broadcast)] == [ts]


def test_mixed_refusals_for_now_from_f_plus_one_replicas_are_reported_once():
    client = new_client()
    ts, _ = client.submit(b"op")
    first = refuse(client, ts, 0, "stale_nonce", T)
    second = refuse(client, ts, 1, "overloaded", T)
    third = refuse(client, ts, 2, "overloaded", T)
    assert outcomes(first) == []
    assert len(outcomes(second)) == 1 and isinstance(outcomes(second)[0], NotAccepted)
    assert outcomes(third) == []  # reported once per request
    assert client.request is not None


def test_one_byzantine_replica_claiming_a_final_reason_cannot_refuse_a_request():
    client = new_client()
    ts, _ = client.submit(b"op")
    refuse(client, ts, 3, "malformed_request", F)  # a lie: only one replica says it
    out = refuse(client, ts, 2, "overloaded", T)
    assert outcomes(out) == [NotAccepted(ts, "malformed_request")]
    assert outcomes(reply(client, ts, 0, b"ok") + reply(client, ts, 1, b"ok")) == [
        Completed(ts, b"ok")
    ]


def test_f_plus_one_matching_final_refusals_end_the_request_as_refused():
    client = new_client()
    ts, _ = client.submit(b"op")
    refuse(client, ts, 3, "overloaded", T)  # a Byzantine replica says something else
    assert outcomes(refuse(client, ts, 0, "malformed", F)) == [NotAccepted(ts, "overloaded")]
    assert outcomes(refuse(client, ts, 1, "malformed", F)) == [
        Completed(ts, b"", error="malformed")
    ]
    assert client.request is None
    client.submit(b"next")  # the core is free for the next request


def test_final_refusals_must_agree_on_the_reason():
    client = new_client()
    ts, _ = client.submit(b"op")
    refuse(client, ts, 0, "malformed", F)
    out = refuse(client, ts, 1, "bad_signature", F)  # one of the two lies: which one?
    assert [type(e) for e in outcomes(out)] == [NotAccepted]


def test_a_permanent_refusal_of_one_replica_ends_a_request_only_from_a_blocking_set():
    """Each replica checks only its own authenticator entry: f+1 bad_authenticator
    refusals may be one correct replica with a bad entry and f liars, while the others
    execute the request; a blocking set of them (2f+1 = n-f at n = 3f+1) leaves no
    strong quorum without a correct refuser."""
    client = new_client()
    ts, _ = client.submit(b"op")
    refuse(client, ts, 2, "bad_authenticator", L)
    out = refuse(client, ts, 3, "bad_authenticator", L)
    assert [type(e) for e in outcomes(out)] == [NotAccepted]
    assert outcomes(refuse(client, ts, 1, "bad_authenticator", L)) == [
        Completed(ts, b"", error="bad_authenticator")
    ]


@pytest.mark.parametrize(("n", "f"), [(n, f) for n in range(1, 14) for f in range(n)
                                      if n >= 3 * f + 1])
def test_the_blocking_set_meets_every_strong_quorum_in_f_plus_one_and_f_may_be_silent(n, f):
    q = Quorums(n, f)
    assert q.blocking + q.strong - n >= q.weak
    assert q.blocking <= n - f


def test_refusals_for_another_request_or_in_another_replicas_name_count_for_nothing():
    client = new_client()
    ts, _ = client.submit(b"op")
    client.on_message(0, Error(client.client_id, ts, 0, "malformed", F))
    assert client.on_message(1, Error(client.client_id, ts, 0, "malformed", F)) == []
    assert client.on_message(1, Error(client.client_id, ts - 1, 1, "malformed", F)) == []
    assert client.on_message(1, Error(b"x" * 32, ts, 1, "malformed", F)) == []
    assert client.request is not None


# -- the replica: how far each of its refusals reaches ---------------------------------------

ALICE, BOB = KeyPair.from_seed(b"a" * 32), KeyPair.from_seed(b"b" * 32)
GENESIS = {ALICE.public_key: 100}
CHAIN = Ledger(GENESIS).chain_id


def replica_refusal(op: bytes, *, config: PbftConfig = FAST, bad_auth: bool = False,
                    app=None) -> tuple[str, int]:
    oracle = SymbolicOracle(random.Random(1), 4)
    replica = PbftReplica(1, Q, oracle.node_crypto(1), app or make_ledger_factory(GENESIS),
                          config)
    crypto = oracle.new_client()
    unsigned = Request(crypto.public_key, 1, op)
    auth = crypto.authenticate(unsigned.digest())
    if bad_auth:
        auth[1] = bytes(len(auth[1]))
    request = Request(crypto.public_key, 1, op, auth=auth)
    [error] = [e.msg for e in replica.on_client_message(crypto.public_key, request)
               if isinstance(getattr(e, "msg", None), Error)]
    return error.reason, error.refusal


def transfer(amount: int, nonce: int = 0, *, chain: bytes = CHAIN) -> bytes:
    return txm.encode_tx(txm.sign_transfer(ALICE, chain, BOB.public_key, amount, nonce))


@pytest.mark.parametrize(("op", "expected"), [
    (b"\x93garbage", ("malformed", F)),
    (transfer(0), ("amount_not_positive", F)),
    (transfer(5, chain=b"\x00" * 32), ("bad_signature", F)),
    (transfer(500), ("insufficient_funds", T)),
    (transfer(5, nonce=txm.MAX_AMOUNT), ("nonce_too_far", T)),
])
def test_ledger_admission_refusals_are_final_only_when_the_bytes_decide(op, expected):
    assert replica_refusal(op) == expected


def test_request_checks_are_final_for_the_bytes_and_local_for_the_authenticator():
    small = PbftConfig(checkpoint_interval=8, window=16, max_request_bytes=8)
    assert replica_refusal(b"x" * 9, config=small, app=KVStore) == ("request_too_large", F)
    assert replica_refusal(b"x", bad_auth=True, app=KVStore) == ("bad_authenticator", L)


def test_a_replica_with_too_many_pending_requests_refuses_for_now(monkeypatch):
    import phalanx.protocols.pbft.replica as replica_module

    monkeypatch.setattr(replica_module, "MAX_PENDING_REQUESTS", 0)
    assert replica_refusal(encode_put(b"k", b"v"), app=KVStore) == ("overloaded", T)


def _flipped(raw: bytes, index: int | None) -> bytes:
    if index is None:
        return raw
    index %= len(raw)
    return raw[:index] + bytes([raw[index] ^ 1]) + raw[index + 1:]


flipped_transfers = st.builds(
    lambda amount, nonce, flip: _flipped(transfer(amount, nonce), flip),
    st.integers(0, 200), st.integers(0, 3), st.none() | st.integers(0, 200),
)
mutations = st.one_of(
    st.binary(max_size=300),
    flipped_transfers,
    st.lists(flipped_transfers, min_size=1, max_size=4).map(txm.encode_bundle),
    st.builds(_flipped, st.lists(flipped_transfers, min_size=1, max_size=3)
              .map(txm.encode_bundle), st.integers(0, 600)),
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(op=mutations)
def test_every_final_admission_refusal_is_also_refused_in_a_proposed_batch(op):
    """What makes a final reason final: check_op (what every correct backup requires of
    a batch) refuses the op too, so no batch holding it is ever prepared."""
    ledger = Ledger(GENESIS)
    reason = ledger.admit(op)
    if reason in ledger.final_refusals:
        assert not Ledger(GENESIS).check_op(op), reason


# -- simulated clusters ----------------------------------------------------------------------


class EchoRefusal(Behaviour):
    """A Byzantine replica that answers every client request with ``reason`` (as if it
    echoed a correct replica's refusal) and withholds its replies; it still takes part
    in ordering, so the correct replicas can commit without the lagging one."""

    def __init__(self, me: int, reason: str, refusal: int = Refusal.TRANSIENT) -> None:
        self.me, self.reason, self.refusal = me, reason, refusal

    def on_deliver(self, sim: Simulation, src, msg) -> bool | None:
        if isinstance(src, bytes) and isinstance(msg, Request):
            sim.inject(self.me, src, Error(msg.client, msg.timestamp, self.me, self.reason,
                                           self.refusal))
        return None

    def filter(self, dest, msg) -> list:
        return [] if isinstance(msg, Reply | Replies) else [msg]


SIM_ACCOUNTS = [KeyPair.from_seed(hashlib.sha256(b"refusal%d" % i).digest()) for i in range(3)]
SIM_GENESIS = {SIM_ACCOUNTS[0].public_key: 1_000}
SIM_CHAIN = Ledger(SIM_GENESIS).chain_id


def sim_cluster(seed: int, make_app, make_client=None) -> Simulation:
    def default_client(crypto):
        return PbftClient(crypto, Q, retransmit_timeout=0.3, multicast=True)

    return Simulation(
        seed, 4,
        lambda rid, crypto: PbftReplica(rid, Q, crypto, make_app, FAST),
        make_client or default_client,
        NetworkModel(latency=ConstantLatency(0.001)),
        messages=ALL_MESSAGES,
    )


def test_sim_a_transfer_refused_by_a_lagging_replica_and_a_byzantine_echo_still_executes():
    """Replica 2 is cut off from the other replicas while account 1 is funded, so it
    refuses account 1's transfer for insufficient funds; Byzantine replica 3 says the
    same. The client reports "not accepted yet", keeps waiting, and gets the result of
    the transfer that replicas 0, 1 and 3 order and execute."""
    funded, payee = SIM_ACCOUNTS[1].public_key, SIM_ACCOUNTS[2].public_key

    def ops(client: int, i: int) -> bytes:
        if client == 0:  # account 0 funds account 1
            return txm.encode_tx(txm.sign_transfer(SIM_ACCOUNTS[0], SIM_CHAIN, funded, 500, 0))
        return txm.encode_tx(txm.sign_transfer(SIM_ACCOUNTS[1], SIM_CHAIN, payee, 200, 0))

    sim = sim_cluster(21, make_ledger_factory(SIM_GENESIS))
    sim.set_byzantine(3, EchoRefusal(3, txm.INSUFFICIENT_FUNDS))
    sim.partition([[2], [0, 1, 3]], at=0.0, heal_at=2.0)
    sim.add_clients(1, ops, requests_per_client=1)
    sim.add_clients(1, ops, requests_per_client=1, start_at=0.5)
    sim.run(until=10.0, stop_when=sim.all_clients_done)

    assert sim.all_clients_done(), sim.liveness_report()
    [spend] = sim.completed(1)
    assert spend.error is None and decode_result(spend.result).status == APPLIED
    assert sim.counters["sim.not_accepted"] == 1 and sim.counters["sim.refused"] == 0
    assert sim.replica(0).app.account(payee) == (200, 0)
    assert_consistent(sim, [0, 1])


class BadEntryFor:
    """A client crypto whose authenticator entry for one replica is wrong (a client with
    a stale key of that replica): only that replica can refuse the request for it."""

    def __init__(self, crypto, replica: int) -> None:
        self.crypto, self.replica = crypto, replica

    @property
    def public_key(self) -> bytes:
        return self.crypto.public_key

    def authenticate(self, request_digest: bytes) -> list[bytes]:
        auth = self.crypto.authenticate(request_digest)
        auth[self.replica] = bytes(len(auth[self.replica]))
        return auth


def test_sim_a_request_one_correct_replica_cannot_authenticate_still_executes():
    def client(crypto):
        return PbftClient(BadEntryFor(crypto, 2), Q, retransmit_timeout=0.3, multicast=True)

    sim = sim_cluster(4, KVStore, client)
    sim.set_byzantine(3, EchoRefusal(3, "bad_authenticator", Refusal.LOCAL))
    sim.add_clients(1, lambda c, i: encode_put(b"k", b"v%d" % i), requests_per_client=3)
    sim.run(until=10.0, stop_when=sim.all_clients_done)

    assert sim.all_clients_done(), sim.liveness_report()
    assert [done.error for done in sim.completed(0)] == [None, None, None]
    assert sim.counters["sim.not_accepted"] == 3
    assert_consistent(sim, [0, 1])


def test_sim_a_malformed_transfer_refused_by_the_correct_replicas_ends_as_refused():
    sim = sim_cluster(9, make_ledger_factory(SIM_GENESIS))
    sim.set_byzantine(3, EchoRefusal(3, "overloaded"))
    sim.add_clients(1, lambda c, i: b"\x96not a transfer", requests_per_client=1)
    sim.run(until=10.0, stop_when=sim.all_clients_done)

    [done] = sim.completed(0)
    assert done.error == txm.MALFORMED
    assert sim.counters["sim.refused"] == 1
    assert all(sim.replica(r).last_executed == 0 for r in range(3))
