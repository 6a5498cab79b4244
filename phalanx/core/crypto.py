"""Crypto interfaces the protocol cores see. Implementations live in ``phalanx.crypto``.

Cores never touch keys: they ask a :class:`NodeCrypto` to sign, to verify another
replica's signature, and to check a client request's authenticator entry. The real
implementation uses Ed25519 and HMAC-SHA256; the simulator uses a symbolic scheme that
is unforgeable by construction.
"""

from __future__ import annotations

from typing import Protocol

from phalanx.core.messages import Request


class NodeCrypto(Protocol):
    def sign(self, data: bytes) -> bytes:
        """Transferable signature of this node over ``data``."""
        ...

    def verify(self, signer: int, data: bytes, sig: bytes) -> bool:
        """Is ``sig`` replica ``signer``'s signature over ``data``? Never raises."""
        ...

    def check_request(self, request: Request) -> bool:
        """Is this node's entry of the request's authenticator valid? Never raises."""
        ...


class ClientCrypto(Protocol):
    @property
    def public_key(self) -> bytes: ...

    def authenticate(self, request_digest: bytes) -> list[bytes]:
        """One MAC per replica over the request digest."""
        ...
