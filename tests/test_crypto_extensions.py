"""The crypto extension points (threshold signatures, trusted monotonic counters): their
symbolic doubles keep the properties protocols will rely on."""

from __future__ import annotations

import random

import pytest

from phalanx.crypto.ed25519 import Ed25519NodeCrypto
from phalanx.crypto.keys import KeyPair
from phalanx.sim.crypto import SymbolicOracle


def _oracle(n: int = 4) -> SymbolicOracle:
    return SymbolicOracle(random.Random(9), n)


def test_a_threshold_signature_needs_threshold_valid_shares_of_distinct_replicas():
    oracle = _oracle()
    signers = [oracle.node_crypto(r, threshold=3).threshold for r in range(4)]
    data = b"block 7"
    shares = {r: s.sign_share(data) for r, s in enumerate(signers)}
    assert signers[0].verify_share(1, data, shares[1])
    assert not signers[0].verify_share(2, data, shares[1])  # replica 1's, not 2's
    assert signers[0].combine(data, {0: shares[0], 1: shares[1]}) is None  # two of three
    forged = {0: shares[0], 1: shares[1], 2: b"x" * 16}
    assert signers[0].combine(data, forged) is None  # an invalid share does not count
    signature = signers[2].combine(data, {0: shares[0], 1: shares[1], 3: shares[3]})
    assert signature is not None
    assert all(s.verify(data, signature) for s in signers)
    assert not signers[0].verify(b"block 8", signature)


def test_a_trusted_counter_certifies_each_value_once_and_never_goes_back():
    oracle = _oracle()
    counter = oracle.node_crypto(1, trusted_counter=True).trusted_counter
    verifier = oracle.node_crypto(2, trusted_counter=True).trusted_counter
    certificate = counter.certify(0, 1, b"prepare A")
    assert verifier.verify(1, 0, 1, b"prepare A", certificate)
    assert not verifier.verify(1, 0, 1, b"prepare B", certificate)  # bound to the data
    assert not verifier.verify(3, 0, 1, b"prepare A", certificate)  # replica 1's only
    with pytest.raises(ValueError, match="only go up"):
        counter.certify(0, 1, b"prepare B")  # no second message for value 1: no equivocation
    # The state is the trusted component's: a new capability (a restarted replica's)
    # finds the counter where it was.
    again = oracle.node_crypto(1, trusted_counter=True).trusted_counter
    assert again.value(0) == 1
    with pytest.raises(ValueError):
        again.certify(0, 1, b"prepare B")
    assert verifier.verify(1, 0, 5, b"commit", again.certify(0, 5, b"commit"))
    assert again.value(0) == 5
    assert again.value(1) == 0  # counters are independent


def test_a_deployment_without_the_extensions_says_so():
    keys = [KeyPair.generate() for _ in range(4)]
    crypto = Ed25519NodeCrypto(0, keys[0], [k.public_key for k in keys])
    assert crypto.threshold is None and crypto.trusted_counter is None
    plain = _oracle().node_crypto(0)
    assert plain.threshold is None and plain.trusted_counter is None
