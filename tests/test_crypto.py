"""Ed25519 keys, pairwise keys, MACs and the NodeCrypto/ClientCrypto implementations."""

from __future__ import annotations

import logging
import os
import stat

import pytest

from phalanx.core.messages import Request
from phalanx.crypto import (
    MAC_SIZE,
    Ed25519ClientCrypto,
    Ed25519NodeCrypto,
    KeyFileError,
    KeyPair,
    MacKey,
    PairwiseKeys,
    mac,
    mac_ok,
    pairwise_key,
)

N = 4


@pytest.fixture(scope="module")
def replicas() -> list[KeyPair]:
    return [KeyPair.from_seed(bytes([i]) * 32) for i in range(N)]


@pytest.fixture(scope="module")
def public_keys(replicas: list[KeyPair]) -> list[bytes]:
    return [kp.public_key for kp in replicas]


def test_from_seed_is_deterministic_and_generate_is_fresh() -> None:
    assert KeyPair.from_seed(b"s" * 32).public_key == KeyPair.from_seed(b"s" * 32).public_key
    assert KeyPair.generate().public_key != KeyPair.generate().public_key
    with pytest.raises(ValueError):
        KeyPair.from_seed(b"short")


def test_key_file_round_trip_is_owner_only(tmp_path) -> None:
    kp = KeyPair.generate()
    path = tmp_path / "replica0.key"
    kp.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == kp.seed.hex()
    assert KeyPair.load(path).public_key == kp.public_key
    with pytest.raises(FileExistsError):
        kp.save(path)
    other = KeyPair.generate()
    other.save(path, overwrite=True)
    assert KeyPair.load(path).public_key == other.public_key
    assert kp.seed.hex() not in repr(kp)


def test_missing_or_malformed_key_file_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(KeyFileError, match="does not exist"):
        KeyPair.load(tmp_path / "nope.key")
    for content in ["", "zz" * 32, "ab" * 31, "ab" * 32 + "\n" + "cd" * 32]:
        path = tmp_path / "bad.key"
        path.write_text(content)
        with pytest.raises(KeyFileError, match="malformed"):
            KeyPair.load(path)


def test_world_readable_key_file_loads_with_a_warning(tmp_path, caplog) -> None:
    kp = KeyPair.generate()
    path = tmp_path / "k.key"
    kp.save(path)
    os.chmod(path, 0o644)
    with caplog.at_level(logging.WARNING):
        assert KeyPair.load(path).public_key == kp.public_key
    assert "chmod 600" in caplog.text


def test_pairwise_key_is_symmetric_and_distinct_per_pair(replicas: list[KeyPair]) -> None:
    a, b, c = replicas[:3]
    assert pairwise_key(a, b.public_key) == pairwise_key(b, a.public_key)
    assert len(pairwise_key(a, b.public_key)) == 32
    assert pairwise_key(a, b.public_key) != pairwise_key(a, c.public_key)


@pytest.mark.parametrize(
    "garbage",
    [b"", b"\x00" * 31, b"\x00" * 32, b"\x01" + b"\x00" * 31, b"\xff" * 32, "text", None],
)
def test_pairwise_key_rejects_invalid_public_keys(replicas: list[KeyPair], garbage) -> None:
    with pytest.raises(ValueError):
        pairwise_key(replicas[0], garbage)


def test_pairwise_cache_is_bounded_lru(replicas: list[KeyPair]) -> None:
    cache = PairwiseKeys(replicas[0], capacity=2)
    keys = [kp.public_key for kp in replicas[1:4]]
    for pk in keys:
        cache.get(pk)
    assert len(cache) == 2
    assert cache.get(keys[2]) == pairwise_key(replicas[0], keys[2])
    with pytest.raises(ValueError):
        cache.get(b"\x00" * 32)
    assert len(cache) == 2


def test_mac_round_trip_and_rejections() -> None:
    tag = mac(b"k" * 32, b"data")
    assert len(tag) == MAC_SIZE
    assert mac_ok(b"k" * 32, b"data", tag)
    assert not mac_ok(b"k" * 32, b"datA", tag)
    assert not mac_ok(b"K" * 32, b"data", tag)
    assert not mac_ok(b"k" * 32, b"data", tag[:-1])
    assert not mac_ok(b"k" * 32, b"data", None)
    assert not mac_ok(b"k" * 32, b"data", "x" * 16)


def test_mac_key_tags_prefix_and_data_like_a_plain_mac() -> None:
    key = MacKey(b"k" * 32)
    tag = key.tag(b"pre", memoryview(b"payload"))
    assert tag == mac(b"k" * 32, b"prepayload")
    assert key.check(b"pre", b"payload", tag)
    assert not key.check(b"pre", b"payloaD", tag)


def test_signatures_verify_only_for_their_signer(replicas, public_keys) -> None:
    crypto = [Ed25519NodeCrypto(i, kp, public_keys) for i, kp in enumerate(replicas)]
    sig = crypto[1].sign(b"checkpoint 7")
    assert crypto[0].verify(1, b"checkpoint 7", sig)
    assert not crypto[0].verify(2, b"checkpoint 7", sig)  # not 2's signature
    assert not crypto[0].verify(1, b"checkpoint 8", sig)  # other data
    bad = bytes([sig[0] ^ 1]) + sig[1:]
    assert not crypto[0].verify(1, b"checkpoint 7", bad)


@pytest.mark.parametrize("signer", [-1, N, 10**9, "1", None, 1.0])
def test_verify_unknown_signer_is_false(replicas, public_keys, signer) -> None:
    crypto = Ed25519NodeCrypto(0, replicas[0], public_keys)
    sig = Ed25519NodeCrypto(1, replicas[1], public_keys).sign(b"x")
    assert crypto.verify(signer, b"x", sig) is False


@pytest.mark.parametrize("sig", [b"", b"\x00" * 64, b"\x00" * 65, "str", None, 12])
def test_verify_garbage_signature_is_false(replicas, public_keys, sig) -> None:
    assert Ed25519NodeCrypto(0, replicas[0], public_keys).verify(1, b"x", sig) is False


def test_node_crypto_rejects_a_mismatched_configuration(replicas, public_keys) -> None:
    with pytest.raises(ValueError, match="does not match"):
        Ed25519NodeCrypto(0, replicas[1], public_keys)
    with pytest.raises(ValueError, match="replica 2"):
        Ed25519NodeCrypto(0, replicas[0], [*public_keys[:2], b"\x00" * 32, public_keys[3]])


def _request(client: Ed25519ClientCrypto, timestamp: int = 1, op: bytes = b"op") -> Request:
    unsigned = Request(client=client.public_key, timestamp=timestamp, op=op)
    return Request(client.public_key, timestamp, op, auth=client.authenticate(unsigned.digest()))


def test_client_authenticator_checks_at_every_replica(replicas, public_keys) -> None:
    client = Ed25519ClientCrypto(KeyPair.generate(), public_keys)
    request = _request(client)
    assert len(request.auth) == N
    for i, kp in enumerate(replicas):
        assert Ed25519NodeCrypto(i, kp, public_keys).check_request(request)


def test_tampered_authenticator_entry_fails_only_where_it_is_checked(replicas, public_keys):
    client = Ed25519ClientCrypto(KeyPair.generate(), public_keys)
    request = _request(client)
    auth = list(request.auth)
    auth[2] = bytes([auth[2][0] ^ 0x80]) + auth[2][1:]
    tampered = Request(request.client, request.timestamp, request.op, auth=auth)
    results = [Ed25519NodeCrypto(i, kp, public_keys).check_request(tampered)
               for i, kp in enumerate(replicas)]
    assert results == [True, True, False, True]


def test_request_tampering_and_malformations_fail_the_check(replicas, public_keys) -> None:
    node = Ed25519NodeCrypto(1, replicas[1], public_keys)
    client = Ed25519ClientCrypto(KeyPair.generate(), public_keys)
    good = _request(client)
    impostor = KeyPair.generate().public_key
    cases = [
        Request(good.client, good.timestamp, b"other op", auth=good.auth),
        Request(good.client, good.timestamp + 1, good.op, auth=good.auth),
        Request(impostor, good.timestamp, good.op, auth=good.auth),
        Request(b"\x00" * 32, good.timestamp, good.op, good.auth),  # invalid client key
        Request(b"short", good.timestamp, good.op, auth=good.auth),
        Request(good.client, -1, good.op, good.auth),  # does not fit the digest
        Request(good.client, good.timestamp, good.op, good.auth[:1]),  # no entry for 1
        Request(good.client, good.timestamp, good.op, auth=[]),
        Request(good.client, good.timestamp, good.op, auth=[b"", b"\x00", b"", b""]),
    ]
    for case in cases:
        assert node.check_request(case) is False
    assert node.check_request(good) is True
