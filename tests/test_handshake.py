"""The link handshake as a state machine, without sockets: both ends prove their
identities and derive one session key; every forged, spliced, replayed or malformed
message is refused with the reason its metric is named after."""

from __future__ import annotations

from collections.abc import Callable

import msgspec
import pytest

from phalanx.core.address import Address
from phalanx.crypto import KeyPair, pairwise_key
from phalanx.runtime.framing import TO_ACCEPTOR, TO_CONNECTOR
from phalanx.runtime.handshake import (
    NONCE_SIZE,
    PROTOCOL_VERSION,
    Accept,
    AcceptorHandshake,
    Confirm,
    ConnectorHandshake,
    HandshakeError,
    Hello,
    PeerId,
    accept_tag,
    confirm_tag,
    hello_digest,
)

REPLICAS = [KeyPair.from_seed(bytes([i]) * 32) for i in range(3)]
NONCE_C = b"c" * NONCE_SIZE
NONCE_A = b"a" * NONCE_SIZE


def vet_for(me: int) -> Callable[[Hello], tuple[PeerId, bytes]]:
    """Replica ``me``'s admission policy: replicas of the cluster and any client."""

    def vet(hello: Hello) -> tuple[PeerId, bytes]:
        if hello.kind == "client":
            return hello.client, pairwise_key(REPLICAS[me], hello.client)
        sender = hello.sender
        if sender is None or not 0 <= sender.replica < len(REPLICAS) or sender.replica == me:
            raise HandshakeError("unknown_replica", f"sender {sender}")
        return sender, pairwise_key(REPLICAS[me], REPLICAS[sender.replica].public_key)

    return vet


def replica_hello(me: int, target: int, nonce: bytes = NONCE_C) -> Hello:
    return Hello(PROTOCOL_VERSION, "replica", Address(me), b"", Address(target), nonce)


def connector(me: int, target: int, key_pair: KeyPair | None = None) -> ConnectorHandshake:
    key = pairwise_key(key_pair or REPLICAS[me], REPLICAS[target].public_key)
    return ConnectorHandshake(replica_hello(me, target), key)


def reason(excinfo: pytest.ExceptionInfo[HandshakeError]) -> str:
    return excinfo.value.reason


def test_two_replicas_authenticate_each_other_and_share_one_session_key() -> None:
    dialer = connector(1, 0)
    acceptor = AcceptorHandshake(vet_for(0), NONCE_A)
    accept = acceptor.receive(dialer.hello_bytes)
    assert accept.established is None and accept.reply is not None
    confirm = dialer.receive(accept.reply)
    assert confirm.reply is not None and confirm.established is not None
    opened = acceptor.receive(confirm.reply)
    assert opened.reply is None and opened.established is not None
    at_dialer, at_acceptor = confirm.established, opened.established
    assert (at_dialer.peer, at_acceptor.peer) == (Address(0), Address(1))
    assert not at_dialer.peer_is_client and not at_acceptor.peer_is_client
    assert at_dialer.key == at_acceptor.key and len(at_dialer.key) == 32
    # Each end sends in the direction the other receives.
    assert (at_dialer.send_direction, at_dialer.recv_direction) == (TO_ACCEPTOR, TO_CONNECTOR)
    assert (at_acceptor.send_direction, at_acceptor.recv_direction) == (TO_CONNECTOR, TO_ACCEPTOR)


def test_a_client_is_named_by_its_public_key() -> None:
    client = KeyPair.from_seed(b"k" * 32)
    hello = Hello(PROTOCOL_VERSION, "client", None, client.public_key, Address(0), NONCE_C)
    dialer = ConnectorHandshake(hello, pairwise_key(client, REPLICAS[0].public_key))
    acceptor = AcceptorHandshake(vet_for(0), NONCE_A)
    confirm = dialer.receive(acceptor.receive(dialer.hello_bytes).reply or b"")
    opened = acceptor.receive(confirm.reply or b"")
    assert opened.established is not None
    assert opened.established.peer == client.public_key and opened.established.peer_is_client


def test_fresh_nonces_give_fresh_session_keys() -> None:
    keys = set()
    for nonce_a in (NONCE_A, b"b" * NONCE_SIZE):
        dialer = connector(1, 0)
        acceptor = AcceptorHandshake(vet_for(0), nonce_a)
        confirm = dialer.receive(acceptor.receive(dialer.hello_bytes).reply or b"")
        assert confirm.established is not None
        keys.add(confirm.established.key)
    assert len(keys) == 2


def test_an_acceptor_without_the_targets_key_is_never_confirmed() -> None:
    # Someone answers in replica 0's place but holds another key: the dialer stops.
    dialer = connector(1, 0)
    impostor = AcceptorHandshake(
        lambda hello: (1, pairwise_key(KeyPair.from_seed(b"x" * 32), REPLICAS[1].public_key)),
        NONCE_A,
    )
    with pytest.raises(HandshakeError) as excinfo:
        dialer.receive(impostor.receive(dialer.hello_bytes).reply or b"")
    assert reason(excinfo) == "bad_mac"


def test_a_connector_without_the_claimed_identitys_key_is_refused() -> None:
    # It claims to be replica 1 and knows everything but replica 1's private key.
    impostor = connector(1, 0, key_pair=KeyPair.from_seed(b"x" * 32))
    acceptor = AcceptorHandshake(vet_for(0), NONCE_A)
    accept = acceptor.receive(impostor.hello_bytes)
    assert accept.reply is not None
    nonce_a = msgspec.msgpack.decode(accept.reply, type=Accept).nonce
    wrong_k = pairwise_key(KeyPair.from_seed(b"x" * 32), REPLICAS[0].public_key)
    forged = Confirm(confirm_tag(wrong_k, hello_digest(impostor.hello_bytes), nonce_a))
    with pytest.raises(HandshakeError) as excinfo:
        acceptor.receive(msgspec.msgpack.encode(forged))
    assert reason(excinfo) == "bad_mac"


def test_a_confirm_made_for_another_hello_cannot_be_spliced_on() -> None:
    # A man in the middle claims "client with replica 1's key" to replica 0 and relays
    # the Confirm replica 1 made for its own, honest Hello with the same nonce.
    claim = Hello(PROTOCOL_VERSION, "client", None, REPLICAS[1].public_key, Address(0), NONCE_C)
    acceptor = AcceptorHandshake(vet_for(0), NONCE_A)
    accept = acceptor.receive(msgspec.msgpack.encode(claim))
    assert accept.reply is not None
    honest = connector(1, 0)
    k = pairwise_key(REPLICAS[1], REPLICAS[0].public_key)
    nonce_a = msgspec.msgpack.decode(accept.reply, type=Accept).nonce
    relayed_accept = Accept(nonce_a, accept_tag(k, hello_digest(honest.hello_bytes), nonce_a))
    relayed = honest.receive(msgspec.msgpack.encode(relayed_accept))
    with pytest.raises(HandshakeError) as excinfo:
        acceptor.receive(relayed.reply or b"")
    assert reason(excinfo) == "bad_mac"


@pytest.mark.parametrize(
    ("hello", "expected"),
    [
        (Hello(9, "replica", Address(1), b"", Address(0), NONCE_C), "bad_version"),
        (Hello(PROTOCOL_VERSION, "replica", Address(1), b"", Address(0), b"short"), "malformed"),
        (Hello(PROTOCOL_VERSION, "replica", Address(7), b"",
               Address(0), NONCE_C), "unknown_replica"),
    ],
)
def test_a_hello_the_acceptor_cannot_admit_is_refused(hello: Hello, expected: str) -> None:
    acceptor = AcceptorHandshake(vet_for(0), NONCE_A)
    with pytest.raises(HandshakeError) as excinfo:
        acceptor.receive(msgspec.msgpack.encode(hello))
    assert reason(excinfo) == expected


@pytest.mark.parametrize(
    "garbage", [b"", b"\xff" * 16, msgspec.msgpack.encode([1, 2, 3]), b"GET / HTTP/1.1\r\n"]
)
def test_undecodable_handshake_messages_are_malformed(garbage: bytes) -> None:
    with pytest.raises(HandshakeError) as excinfo:
        AcceptorHandshake(vet_for(0), NONCE_A).receive(garbage)
    assert reason(excinfo) == "malformed"
    with pytest.raises(HandshakeError) as excinfo:
        connector(1, 0).receive(garbage)
    assert reason(excinfo) == "malformed"


def test_invalid_utf8_in_the_role_is_malformed_not_a_crash() -> None:
    hello = bytearray(msgspec.msgpack.encode(replica_hello(1, 0)))
    hello[hello.index(b"replica")] = 0xFF
    with pytest.raises(HandshakeError) as excinfo:
        AcceptorHandshake(vet_for(0), NONCE_A).receive(bytes(hello))
    assert reason(excinfo) == "malformed"


def test_nothing_is_accepted_after_the_handshake() -> None:
    dialer = connector(1, 0)
    acceptor = AcceptorHandshake(vet_for(0), NONCE_A)
    accept = acceptor.receive(dialer.hello_bytes)
    confirm = dialer.receive(accept.reply or b"")
    acceptor.receive(confirm.reply or b"")
    with pytest.raises(HandshakeError):
        acceptor.receive(confirm.reply or b"")
    with pytest.raises(HandshakeError):
        dialer.receive(accept.reply or b"")
