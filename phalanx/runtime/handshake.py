"""The handshake that opens every phalanx link, sans I/O: handshake payloads in, the
payload to answer and the verdict out. No sockets, no clocks, no randomness (the caller
passes the fresh nonces in), so the tests drive both ends directly.

Before any data, on the framing of :mod:`phalanx.runtime.framing` (untagged frames):

1. connector -> acceptor  ``Hello``: kind, the sending process's address (a replica's
   process: replica id, role, partition) or client public key, the target process's
   address, ``nonce_c``.
2. The acceptor looks up the claimed identity's public key (a replica's from the
   cluster's key list — every process of a replica holds its key, so a process proves
   it belongs to the replica it names, and an internal channel between two processes
   of one replica is authenticated like any other; a client's is its id: clients are
   self-certifying), derives the
   static pairwise key ``k`` and answers ``Accept``: ``nonce_a``,
   ``MAC_k("acc" || H(hello) || nonce_a)``.
3. The connector derives ``k`` for the replica it meant to reach and checks that MAC: it
   is talking to that replica. It answers ``Confirm``: ``MAC_k("con" || nonce_a ||
   H(hello))``, proving it holds the claimed identity's private key.

Both then key their frames with ``HMAC-SHA256(k, nonce_c || nonce_a)``. The labels stop
reflection of one side's MAC as the other's; the fresh nonces stop replayed handshakes.
``H(hello)`` (the Hello's bytes, ``nonce_c`` included) binds the claimed kind, identity
and target into both MACs: a man in the middle cannot splice replica 1's handshake with
replica 0 onto a connection where it claims to be "client with replica 1's key".

What is checked, and the :class:`HandshakeError` reason (the ``dropped_hs_<reason>``
metric) each failure is counted under: an undecodable message or a nonce of the wrong
size (``malformed``), another protocol version (``bad_version``), an identity the
acceptor does not admit (the acceptor's own reasons: ``wrong_target``,
``unknown_replica``, ``unknown_process``, ``bad_client_key``), a MAC that does not verify
(``bad_mac``). Which
identities an acceptor admits, and with which pairwise key, is its owner's policy
(:meth:`phalanx.runtime.transport.Endpoint.accept_hello`), passed in as ``vet``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

import msgspec

from phalanx.core.address import Address
from phalanx.crypto.mac import mac
from phalanx.runtime.framing import TO_ACCEPTOR, TO_CONNECTOR

PROTOCOL_VERSION = 3  # 2: frames carry bundles of messages; 3: processes have addresses
NONCE_SIZE = 32

PeerId = Address | bytes
"""A replica's process, or a client's public key."""

M = TypeVar("M")


class Hello(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    """The connector's claim of identity: a replica's process at ``sender`` (``client``
    empty), or a client (``sender`` None, ``client`` its public key); ``target`` is the
    process it means to reach."""

    version: int
    kind: Literal["replica", "client"]
    sender: Address | None
    client: bytes
    target: Address
    nonce: bytes


class Accept(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    """The acceptor's fresh nonce and its proof of holding the pairwise key."""

    nonce: bytes
    tag: bytes


class Confirm(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    """The connector's proof of holding the pairwise key of the identity it claimed."""

    tag: bytes


_encoder = msgspec.msgpack.Encoder()
_hello_decoder = msgspec.msgpack.Decoder(Hello)
_accept_decoder = msgspec.msgpack.Decoder(Accept)
_confirm_decoder = msgspec.msgpack.Decoder(Confirm)


def hello_digest(hello_bytes: bytes | memoryview) -> bytes:
    """The handshake transcript both MACs cover: the Hello exactly as sent."""
    return hashlib.sha256(hello_bytes).digest()


def accept_tag(k: bytes, hello_hash: bytes, nonce_a: bytes) -> bytes:
    """The acceptor's proof that it holds ``k`` for this very Hello."""
    return mac(k, b"acc" + hello_hash + nonce_a)


def confirm_tag(k: bytes, hello_hash: bytes, nonce_a: bytes) -> bytes:
    """The connector's proof that it holds ``k`` (the claimed identity's key)."""
    return mac(k, b"con" + nonce_a + hello_hash)


def session_key(k: bytes, nonce_c: bytes, nonce_a: bytes) -> bytes:
    """The per-connection frame key."""
    return hmac.digest(k, nonce_c + nonce_a, "sha256")


class HandshakeError(Exception):
    """The peer failed the handshake; ``reason`` names the ``dropped_hs_<reason>`` metric."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Established:
    """A completed handshake: the authenticated peer and how to key the frames."""

    peer: PeerId
    peer_is_client: bool
    key: bytes
    """The session key of both directions' frame MACs."""
    send_direction: int
    recv_direction: int


@dataclass(frozen=True, slots=True)
class Step:
    """What one received handshake payload leads to: a payload to send back (in an
    untagged frame) and, once the peer is authenticated, the open link's terms."""

    reply: bytes | None = None
    established: Established | None = None


def _decode(decoder: msgspec.msgpack.Decoder[M], payload: bytes | memoryview, waiting: str) -> M:
    try:
        return decoder.decode(payload)
    except (msgspec.DecodeError, UnicodeDecodeError) as e:
        # Invalid UTF-8 in a str field (Hello.kind, an address's role) raises UnicodeDecodeError.
        raise HandshakeError("malformed", f"{waiting}: {e}") from None


def _check_nonce(nonce: bytes) -> None:
    if len(nonce) != NONCE_SIZE:
        raise HandshakeError("malformed", "nonce size")


class ConnectorHandshake:
    """The dialing end: sends :attr:`hello_bytes` first, then :meth:`receive` takes the
    acceptor's answer. ``key`` is the pairwise key with the replica ``hello`` targets:
    only that replica can answer with a MAC under it."""

    def __init__(self, hello: Hello, key: bytes) -> None:
        self.hello_bytes = _encoder.encode(hello)
        self._hello_hash = hello_digest(self.hello_bytes)
        self._target = hello.target
        self._nonce_c = hello.nonce
        self._k = key
        self._done = False

    def receive(self, payload: bytes | memoryview) -> Step:
        """The acceptor's ``Accept``: answer ``Confirm``; the link is then open."""
        if self._done:
            raise HandshakeError("malformed", "handshake message after the handshake")
        accept = _decode(_accept_decoder, payload, "await_accept")
        _check_nonce(accept.nonce)
        nonce_a = accept.nonce
        expected = accept_tag(self._k, self._hello_hash, nonce_a)
        if not hmac.compare_digest(expected, accept.tag):
            # Not the replica we dialed (or a stale/forged answer): never send it anything.
            raise HandshakeError("bad_mac", f"replica {self._target} failed to authenticate")
        confirm = Confirm(tag=confirm_tag(self._k, self._hello_hash, nonce_a))
        self._done = True
        established = Established(
            self._target, False, session_key(self._k, self._nonce_c, nonce_a),
            send_direction=TO_ACCEPTOR, recv_direction=TO_CONNECTOR,
        )
        self._k = b""  # the pairwise key is not needed once the session key exists
        return Step(_encoder.encode(confirm), established)


class AcceptorHandshake:
    """The accepting end: :meth:`receive` takes the ``Hello`` (answered with ``Accept``),
    then the ``Confirm`` (which opens the link). ``vet(hello)`` admits the claimed
    identity and returns ``(peer, pairwise key)``, or raises :class:`HandshakeError`;
    ``nonce`` is this end's fresh nonce."""

    def __init__(self, vet: Callable[[Hello], tuple[PeerId, bytes]], nonce: bytes) -> None:
        self._vet = vet
        self._nonce_a = nonce
        self._nonce_c = b""
        self._hello_hash = b""
        self._k = b""
        self._peer: PeerId | None = None
        self._peer_is_client = False
        self._state: Literal["await_hello", "await_confirm", "done"] = "await_hello"

    def receive(self, payload: bytes | memoryview) -> Step:
        """The connector's next handshake message."""
        if self._state == "await_hello":
            return self._on_hello(payload)
        if self._state == "await_confirm":
            return self._on_confirm(payload)
        raise HandshakeError("malformed", "handshake message after the handshake")

    def _on_hello(self, payload: bytes | memoryview) -> Step:
        self._hello_hash = hello_digest(payload)
        hello = _decode(_hello_decoder, payload, "await_hello")
        _check_nonce(hello.nonce)
        if hello.version != PROTOCOL_VERSION:
            raise HandshakeError("bad_version", f"version {hello.version}")
        self._peer, self._k = self._vet(hello)
        self._peer_is_client = hello.kind == "client"
        self._nonce_c = hello.nonce
        accept = Accept(nonce=self._nonce_a, tag=accept_tag(self._k, self._hello_hash,
                                                            self._nonce_a))
        self._state = "await_confirm"
        return Step(reply=_encoder.encode(accept))

    def _on_confirm(self, payload: bytes | memoryview) -> Step:
        confirm = _decode(_confirm_decoder, payload, "await_confirm")
        expected = confirm_tag(self._k, self._hello_hash, self._nonce_a)
        if not hmac.compare_digest(expected, confirm.tag):
            raise HandshakeError("bad_mac", f"{self._peer!r} failed to prove its identity")
        assert self._peer is not None
        self._state = "done"
        established = Established(
            self._peer, self._peer_is_client, session_key(self._k, self._nonce_c, self._nonce_a),
            send_direction=TO_CONNECTOR, recv_direction=TO_ACCEPTOR,
        )
        self._k = b""
        return Step(established=established)
