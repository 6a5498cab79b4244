"""Certificate catch-up: a replica that missed block signatures (down, late, or caught up
by state transfer) fetches the certificates and accepts only ones that 2f+1 valid
signatures vouch for over the block hash it knows."""

from __future__ import annotations

import hashlib

from test_ledger_bench import KEYS, block_sig, certifier
from test_ledger_sim import check_ledgers, ledger_cluster, ledgers, workload

from phalanx.core.effects import Broadcast, Dropped, Persist, Send
from phalanx.host.certificates import (
    MAX_FETCH,
    Certificate,
    Certificates,
    FetchCertificates,
    signed_bytes,
)
from phalanx.ledger.smt import verify_proof
from phalanx.ledger.state import account_key

BLOCK = hashlib.sha256(b"block 5").digest()


def certificate(height: int, block_hash: bytes, signers=(1, 2, 3)) -> Certificate:
    sigs = [(r, KEYS[r].sign(signed_bytes(height, block_hash))) for r in signers]
    return Certificate(height, block_hash, sigs)


def test_a_block_left_uncertified_is_fetched_after_a_tick_and_verified() -> None:
    cert, _ = certifier(0)
    cert.sealed(5, BLOCK)  # our signature went out; the others' never arrive
    assert cert.waiting() and cert.tick() == []  # first tick: maybe still collecting
    [fetch] = cert.tick()
    assert isinstance(fetch, Broadcast) and fetch.msg == FetchCertificates([5])
    forged = [
        certificate(5, hashlib.sha256(b"other").digest()),  # another block
        Certificate(5, BLOCK, certificate(5, BLOCK).sigs[:2]),  # too few
        Certificate(5, BLOCK, [certificate(5, BLOCK).sigs[0]] * 3),  # one signer thrice
        Certificate(5, BLOCK, [(r, bytes(64)) for r in (1, 2, 3)]),  # bad signatures
    ]
    out = cert.on_certificates(1, Certificates(forged))
    assert out == [Dropped("bad_certificate", 1)] * 4 and cert.certificate(5) is None
    out = cert.on_certificates(2, Certificates([certificate(5, BLOCK)]))
    assert [type(e) for e in out] == [Persist] and cert.certificate(5) is not None
    assert not cert.waiting() and cert.tick() == []


def test_a_peer_answers_fetches_from_its_certificates_within_bounds() -> None:
    cert, _ = certifier(1)
    cert.sealed(5, BLOCK)
    for r in (0, 2):
        cert.on_block_sig(r, block_sig(r, 5, BLOCK))
    assert cert.certificate(5) is not None
    [answer] = cert.on_fetch(3, FetchCertificates([5, 6, 5]))
    assert isinstance(answer, Send) and answer.dest == 3
    assert [c.height for c in answer.msg.certs] == [5]
    assert cert.on_fetch(3, FetchCertificates([6])) == []
    assert cert.on_fetch(3, FetchCertificates(list(range(MAX_FETCH + 1)))) == [
        Dropped("bad_fetch", 3)]
    assert cert.on_certificates(9, Certificates([])) == [Dropped("bad_certificates", 9)]


def test_a_replica_caught_up_by_state_transfer_certifies_and_proves_at_the_top() -> None:
    sim = ledger_cluster(3)
    sim.add_clients(4, workload(3, [10, 20, 30]), requests_per_client=40)
    sim.crash(2, at=0.02)
    sim.restart(2, at=3.0)  # the others have moved on by far more than a window
    sim.run(until=40.0)
    check_ledgers(sim, 40)
    apps = ledgers(sim)
    late, app = sim.replica(2), apps[2]
    assert app.height == apps[0].height > 0
    assert sorted(app.versions) == [app.height]  # it adopted the state: no blocks executed
    assert not late.host.certifier.waiting()
    cert = late.host.certifier.certificate(app.height)
    assert cert is not None and cert.block_hash == app.last_block()[1]
    # The light-client path works there: a proof against the certified header.
    header, value, proof = app.prove(next(iter(app.accounts)), app.height)
    assert header.hash() == cert.block_hash
    assert verify_proof(header.state_root, account_key(next(iter(app.accounts))), value, proof)
