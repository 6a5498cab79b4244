"""BlockCertifier driven message by message: what it signs, keeps, drops, persists,
recovers and forgets. The cluster has n=4 replicas (f=1, certificates of 2f+1=3
signatures) with the simulator's symbolic signatures, unforgeable by construction.

These tests were written against the mutants that mutation testing (``make mutate``,
docs/testing.md) found alive in phalanx/core/certificates.py."""

from __future__ import annotations

import hashlib
import random
from typing import Any

import msgspec

from phalanx.core.certificates import (
    AHEAD_WINDOW,
    CERT_PREFIX,
    KEEP_CERTIFICATES,
    MAX_FETCH,
    BlockCertifier,
    BlockSig,
    Certificate,
    Certificates,
    FetchCertificates,
    cert_key,
    decode_certificate,
    encode_certificate,
    signed_bytes,
)
from phalanx.core.effects import Broadcast, Dropped, Persist, Send
from phalanx.core.quorum import Quorums
from phalanx.runtime.sim.crypto import SymbolicNodeCrypto, SymbolicOracle

N = 4
QUORUMS = Quorums.for_n(N)
ORACLE = SymbolicOracle(random.Random(13), N)


class CountingCrypto:
    """A replica's crypto that counts the signature checks the certifier asks for."""

    def __init__(self, inner: SymbolicNodeCrypto) -> None:
        self.inner = inner
        self.verifications = 0

    def sign(self, data: bytes) -> bytes:
        return self.inner.sign(data)

    def verify(self, signer: int, data: bytes, sig: bytes) -> bool:
        self.verifications += 1
        return self.inner.verify(signer, data, sig)

    def check_request(self, request: Any) -> bool:
        return self.inner.check_request(request)


def certifier(me: int = 0, oracle: SymbolicOracle = ORACLE) -> BlockCertifier:
    return BlockCertifier(me, QUORUMS, CountingCrypto(oracle.node_crypto(me)))


def verifications(cert: BlockCertifier) -> int:
    return cert.crypto.verifications  # type: ignore[attr-defined]


def block(height: int, fork: bytes = b"") -> bytes:
    return hashlib.sha256(b"block %d" % height + fork).digest()


def sign(replica: int, height: int, block_hash: bytes, oracle: SymbolicOracle = ORACLE) -> bytes:
    return oracle.node_crypto(replica).sign(signed_bytes(height, block_hash))


def vote(replica: int, height: int, block_hash: bytes | None = None,
         forged: bool = False) -> BlockSig:
    block_hash = block(height) if block_hash is None else block_hash
    sig = bytes(16) if forged else sign(replica, height, block_hash)
    return BlockSig(height, block_hash, replica, sig)


def certificate(height: int, signers: tuple[int, ...] = (1, 2, 3),
                block_hash: bytes | None = None) -> Certificate:
    block_hash = block(height) if block_hash is None else block_hash
    return Certificate(height, block_hash, [(r, sign(r, height, block_hash)) for r in signers])


def certify(cert: BlockCertifier, height: int, voters: tuple[int, ...] = (1, 2)) -> list[Any]:
    """Seal ``height`` and deliver the others' signatures until it is certified."""
    out = cert.sealed(height, block(height))
    for r in voters:
        out += cert.on_block_sig(r, vote(r, height))
    assert cert.certificate(height) is not None
    return out


def persisted(effects: list[Any]) -> list[Persist]:
    return [e for e in effects if isinstance(e, Persist)]


# -- what is signed and persisted, and recovery --------------------------------------------


def test_a_block_signature_covers_the_domain_the_8_byte_big_endian_height_and_the_hash() -> None:
    # The layout is the contract with light clients in any language: pin it byte by byte.
    [broadcast] = certifier().sealed(5, block(5))
    msg = broadcast.msg
    layout = b"phalanx-block-v1" + (5).to_bytes(8, "big") + block(5)
    assert ORACLE.node_crypto(1).verify(0, layout, msg.sig)


def test_certificates_persisted_lazily_are_recovered_after_a_restart() -> None:
    cert = certifier()
    effects = certify(cert, 1) + certify(cert, 2)
    cert.expect(3, block(3))  # the third one comes from a peer, by certificate fetch
    effects += cert.on_certificates(2, Certificates([certificate(3)]))
    records = persisted(effects)
    assert [r.key for r in records] == [cert_key(h) for h in (1, 2, 3)]
    assert all(r.lazy is True for r in records)  # a certificate gates no message
    restarted = certifier()
    restarted.recover([(b"Lb" + bytes(8), b"a block record")] + [(r.key, r.value)
                                                                 for r in records])
    for height in (1, 2, 3):
        assert restarted.certificate(height) == cert.certificate(height)
    assert restarted.certified == 3


def test_recovery_keeps_the_newest_256_certificates_and_skips_corrupt_or_foreign_records() -> None:
    def record(height: int) -> tuple[bytes, bytes]:
        value = b"\xc1 corrupt" if height == 150 else encode_certificate(certificate(height))
        return cert_key(height), value

    records = [record(h) for h in range(1, 301)]  # in key order, as the store returns them
    records.append((CERT_PREFIX + b"meta", encode_certificate(certificate(999))))  # not a key
    records.append((b"Xy" + (998).to_bytes(8, "big"), encode_certificate(certificate(998))))
    cert = certifier()
    cert.recover(records)
    assert sorted(cert.certificates) == [h for h in range(45, 301) if h != 150]
    assert cert.certified == 300


def test_re_sealing_a_held_certified_height_signs_nothing_but_a_lower_missing_one_is_signed(
) -> None:
    cert = certifier()
    cert.recover([(cert_key(h), encode_certificate(certificate(h))) for h in (2, 3)])
    assert cert.sealed(3, block(3)) == [] and cert.sealed(2, block(2)) == []
    [broadcast] = cert.sealed(1, block(1))  # certified is 3, but 1 is not held here
    assert broadcast == Broadcast(BlockSig(1, block(1), 0, sign(0, 1, block(1))))
    assert set(cert.own) == {1}


# -- collecting signatures -----------------------------------------------------------------


def test_our_own_signature_is_in_every_certificate_and_never_checked() -> None:
    cert = certifier(me=3)
    for r in (0, 1, 2):
        assert cert.on_block_sig(r, vote(r, 7)) == []
    out = cert.sealed(7, block(7))
    assert [type(e) for e in out] == [Broadcast, Persist]
    assert [r for r, _ in cert.certificate(7).sigs] == [0, 1, 3]
    assert verifications(cert) == 2  # 2f checks: ours needs none


def test_a_forged_signature_arriving_first_does_not_hold_back_the_valid_ones() -> None:
    cert = certifier()
    assert cert.on_block_sig(1, vote(1, 4, forged=True)) == []
    assert cert.on_block_sig(2, vote(2, 4)) == []
    assert cert.on_block_sig(3, vote(3, 4)) == []
    out = cert.sealed(4, block(4))
    assert out[1:] == [Dropped("bad_signature", 1), persisted(out)[0]]
    assert [r for r, _ in cert.certificate(4).sigs] == [0, 2, 3]


def test_block_h_plus_1_certified_before_h_leaves_h_certifiable() -> None:
    cert = certifier()
    cert.sealed(5, block(5))
    cert.sealed(6, block(6))
    assert cert.on_block_sig(1, vote(1, 7)) == []  # ahead of us: kept for later
    for r in (1, 2):
        cert.on_block_sig(r, vote(r, 6))
    assert cert.certificate(6) is not None and cert.certificate(5) is None
    assert cert.waiting()
    for r in (1, 2):
        cert.on_block_sig(r, vote(r, 5))
    assert cert.certificate(5) is not None
    cert.on_block_sig(2, vote(2, 7))
    assert persisted(cert.sealed(7, block(7)))  # replica 1's early signature still counts


def test_a_certified_height_leaves_no_votes_or_signature_checks_behind() -> None:
    cert = certifier()
    for height in (1, 2, 3):
        certify(cert, height)
        assert all(h > height for h, _ in cert.verified)
        assert height not in cert.pending and height not in cert.own


def test_a_replica_holds_its_newest_256_certificates_and_forgets_older_ones() -> None:
    cert = certifier()
    for height in range(1, KEEP_CERTIFICATES + 2):
        certify(cert, height)
    assert list(cert.certificates) == list(range(2, KEEP_CERTIFICATES + 2))
    assert cert.on_fetch(1, FetchCertificates([1])) == []


# -- what is dropped -------------------------------------------------------------------------


def test_block_signatures_from_unknown_senders_or_in_another_replicas_name_are_dropped() -> None:
    cert = certifier(me=0)
    for src in (N, -1, 0):  # past the last replica, negative, ourselves
        forged = BlockSig(3, block(3), src, bytes(16))
        assert cert.on_block_sig(src, forged) == [Dropped("unknown_sender", src)]
    assert cert.on_block_sig(1, vote(2, 3)) == [Dropped("unknown_sender", 1)]
    assert cert.pending == {}


def test_signers_outside_the_configured_n_never_count_even_if_the_crypto_knows_them() -> None:
    # A crypto that still holds the key of a fifth replica (say, a removed one).
    five = SymbolicOracle(random.Random(5), N + 1)
    cert = certifier(me=0, oracle=five)
    sig4 = sign(4, 3, block(3), oracle=five)
    assert cert.on_block_sig(4, BlockSig(3, block(3), 4, sig4)) == [Dropped("unknown_sender", 4)]
    cert.expect(3, block(3))
    sigs = [(r, sign(r, 3, block(3), oracle=five)) for r in (1, 2)] + [(4, sig4)]
    out = cert.on_certificates(1, Certificates([Certificate(3, block(3), sigs)]))
    assert out == [Dropped("bad_certificate", 1)] and cert.certificate(3) is None


def test_signatures_up_to_the_ahead_window_are_kept_and_beyond_it_dropped() -> None:
    cert = certifier()
    assert cert.on_block_sig(1, vote(1, AHEAD_WINDOW)) == []
    assert cert.on_block_sig(1, vote(1, AHEAD_WINDOW + 1)) == [
        Dropped("block_sig_out_of_range", 1)]
    assert cert.on_block_sig(2, vote(2, 0)) == [Dropped("block_sig_out_of_range", 2)]
    cert.sealed(10, block(10))  # the window moves with our own height
    assert cert.on_block_sig(2, vote(2, AHEAD_WINDOW + 10)) == []
    assert cert.on_block_sig(2, vote(2, AHEAD_WINDOW + 11)) == [
        Dropped("block_sig_out_of_range", 2)]


def test_a_signature_for_a_negative_height_is_dropped_and_counted() -> None:
    cert = certifier()
    for height in (-1, -KEEP_CERTIFICATES + 1, -KEEP_CERTIFICATES, -10**6):
        assert cert.on_block_sig(1, BlockSig(height, block(1), 1, bytes(16))) == [
            Dropped("block_sig_out_of_range", 1)]


def test_a_signature_for_another_block_than_ours_is_dropped_as_a_mismatch() -> None:
    cert = certifier()
    assert cert.on_block_sig(2, vote(2, 5, block(5, fork=b"other"))) == []  # before ours
    out = cert.sealed(5, block(5))
    assert out[1:] == [Dropped("block_sig_mismatch", 2)]
    assert cert.on_block_sig(1, vote(1, 5, block(5, fork=b"other"))) == [
        Dropped("block_sig_mismatch", 1)]
    assert list(cert.pending[5]) == [0]


def test_a_second_signature_from_one_replica_is_dropped_as_a_duplicate() -> None:
    cert = certifier()
    cert.sealed(5, block(5))
    assert cert.on_block_sig(1, vote(1, 5)) == []
    assert cert.on_block_sig(1, vote(1, 5)) == [Dropped("duplicate_vote", 1)]


def test_late_signatures_for_certified_or_too_old_blocks_are_ignored_without_a_drop() -> None:
    cert = certifier()
    certify(cert, 5)
    assert cert.on_block_sig(3, vote(3, 5)) == [] and cert.on_block_sig(3, vote(3, 5)) == []
    certify(cert, 300)
    old = 300 - KEEP_CERTIFICATES  # peers no longer hold its certificate: nothing to do
    assert cert.on_block_sig(1, vote(1, old)) == [] and cert.on_block_sig(1, vote(1, old)) == []
    assert cert.on_block_sig(1, vote(1, old + 1)) == []  # still collected ...
    assert cert.on_block_sig(1, vote(1, old + 1)) == [Dropped("duplicate_vote", 1)]  # ... once


def test_votes_and_blocks_more_than_the_window_below_a_new_certificate_are_freed() -> None:
    height = AHEAD_WINDOW + 76
    cert = certifier()
    cert.sealed(75, block(75))
    cert.sealed(76, block(76))
    certify(cert, height)
    assert set(cert.own) == {76} and set(cert.pending) == {76}  # 76 = height - AHEAD_WINDOW


# -- certificates from peers, and fetches --------------------------------------------------


def test_a_block_known_from_a_snapshot_is_certified_at_once_from_signatures_already_here(
) -> None:
    cert = certifier()
    for r in (1, 2, 3):
        cert.on_block_sig(r, vote(r, 5))
    out = cert.expect(5, block(5))
    assert persisted(out) and [r for r, _ in cert.certificate(5).sigs] == [1, 2, 3]


def test_expecting_genesis_or_an_already_certified_block_waits_for_nothing() -> None:
    cert = certifier()
    assert cert.expect(0, block(0)) == [] and not cert.waiting()
    certify(cert, 5)
    assert cert.expect(5, block(5)) == [] and not cert.waiting()
    assert cert.expect(1, block(1)) == [] and cert.waiting()


def test_certificates_are_taken_from_replica_0_and_refused_from_ourselves_or_unknown_ids(
) -> None:
    cert = certifier(me=1)
    cert.expect(5, block(5))
    for src in (1, N, -1):
        assert cert.on_certificates(src, Certificates([certificate(5, (0, 2, 3))])) == [
            Dropped("bad_certificates", src)]
    assert cert.certificate(5) is None
    cert.on_block_sig(2, vote(2, 5))
    good = certificate(5, (0, 2, 3))
    assert cert.on_certificates(0, Certificates([good])) == [
        Persist(cert_key(5), encode_certificate(good), lazy=True)]
    assert cert.certificate(5) == good and 5 not in cert.pending and not cert.waiting()


def test_an_answer_of_exactly_64_certificates_is_taken_and_65_refused() -> None:
    cert = certifier()
    for height in range(1, MAX_FETCH + 2):
        cert.expect(height, block(height))
    too_many = [certificate(h) for h in range(1, MAX_FETCH + 2)]
    assert cert.on_certificates(1, Certificates(too_many)) == [Dropped("bad_certificates", 1)]
    out = cert.on_certificates(1, Certificates(too_many[:MAX_FETCH]))
    assert len(persisted(out)) == MAX_FETCH and list(cert.own) == [MAX_FETCH + 1]


def test_a_certificate_for_an_unknown_height_does_not_stop_the_rest_of_the_answer() -> None:
    cert = certifier()
    cert.expect(5, block(5))
    out = cert.on_certificates(1, Certificates([certificate(9), certificate(5)]))
    assert len(persisted(out)) == 1 and cert.certificate(5) is not None


def test_a_certificate_with_all_n_signatures_is_taken() -> None:
    cert = certifier()
    cert.expect(5, block(5))
    assert persisted(cert.on_certificates(1, Certificates([certificate(5, (0, 1, 2, 3))])))


def test_a_certificate_listing_a_signer_twice_is_refused_even_with_a_quorum_besides() -> None:
    cert = certifier()
    cert.expect(5, block(5))
    padded = certificate(5, (1, 1, 2, 3))
    assert cert.on_certificates(2, Certificates([padded])) == [Dropped("bad_certificate", 2)]


def test_fetches_from_replica_0_with_up_to_64_heights_are_answered_and_others_refused() -> None:
    cert = certifier(me=1)
    certify(cert, 5, voters=(0, 2))
    [answer] = cert.on_fetch(0, FetchCertificates([5, *range(100, 100 + MAX_FETCH - 1)]))
    assert answer == Send(0, Certificates([cert.certificate(5)]))
    for src in (1, N, -1):
        assert cert.on_fetch(src, FetchCertificates([5])) == [Dropped("bad_fetch", src)]
    assert cert.on_fetch(0, FetchCertificates([5] * (MAX_FETCH + 1))) == [Dropped("bad_fetch", 0)]


def test_a_block_uncertified_for_256_heights_is_no_longer_fetched_nor_kept() -> None:
    cert = certifier()
    cert.expect(9, block(9))  # from a snapshot: no signatures collected for it
    cert.sealed(10, block(10))
    assert cert.tick() == []  # the first tick lets signatures still arrive
    certify(cert, 9 + KEEP_CERTIFICATES)
    # Peers keep 256 certificates: 9 is out of their reach now, 10 is not.
    assert cert.tick() == [Broadcast(FetchCertificates([10]))]
    certify(cert, 10 + KEEP_CERTIFICATES)
    assert cert.tick() == [] and not cert.waiting()
    assert 9 not in cert.pending and 10 not in cert.pending


def test_a_decoded_certificate_is_the_encoded_one() -> None:
    cert = certificate(5)
    assert decode_certificate(encode_certificate(cert)) == cert
    assert msgspec.msgpack.decode(encode_certificate(cert)) == [5, block(5), [
        [r, s] for r, s in cert.sigs]]
