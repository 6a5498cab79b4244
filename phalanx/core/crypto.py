"""Crypto interfaces the protocol cores see. Implementations live in ``phalanx.crypto``.

Cores never touch keys: they ask a :class:`NodeCrypto` to sign, to verify another
replica's signature, and to check a client request's authenticator entry. The real
implementation uses Ed25519 and HMAC-SHA256; the simulator uses a symbolic scheme that
is unforgeable by construction.

Two extension points serve protocols that need more than signatures: a node may hold a
:class:`ThresholdSigner` (t-of-n threshold signatures: Destiny's BLS collectors) and a
:class:`TrustedCounter` (a trusted monotonic counter that stops equivocation: Hybster's
TrInX, which lets Destiny run 2f+1 replicas). ``NodeCrypto.threshold`` and
``NodeCrypto.trusted_counter`` are None where a deployment has none; the simulator has
symbolic ones (``SymbolicOracle.node_crypto(..., threshold=t, trusted_counter=True)``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from phalanx.core.messages import Request


class ThresholdSigner(Protocol):
    """t-of-n threshold signatures: any ``threshold`` valid shares of distinct replicas
    over the same data combine into one signature that anyone verifies."""

    @property
    def threshold(self) -> int:
        """Shares a signature needs."""
        ...

    def sign_share(self, data: bytes) -> bytes:
        """This replica's share of a signature over ``data``."""
        ...

    def verify_share(self, signer: int, data: bytes, share: bytes) -> bool:
        """Is ``share`` replica ``signer``'s share over ``data``? Never raises."""
        ...

    def combine(self, data: bytes, shares: Mapping[int, bytes]) -> bytes | None:
        """The signature over ``data`` from ``shares`` (replica -> share), or None if
        fewer than ``threshold`` of them are valid. Never raises."""
        ...

    def verify(self, data: bytes, signature: bytes) -> bool:
        """Is ``signature`` a combined signature over ``data``? Never raises."""
        ...


class TrustedCounter(Protocol):
    """A trusted monotonic counter per replica (a trusted execution environment's): it
    certifies that the replica bound counter ``counter``'s next ``value`` to ``data``,
    and never certifies a value twice or goes back — so a replica cannot send two
    messages for one value, whatever else it does, and survives its host's crashes."""

    def certify(self, counter: int, value: int, data: bytes) -> bytes:
        """Advance ``counter`` to ``value`` (above its current value) bound to ``data``;
        ValueError if ``value`` is not above it."""
        ...

    def value(self, counter: int) -> int:
        """The current value of ``counter`` (0 before the first certificate)."""
        ...

    def verify(
        self, replica: int, counter: int, value: int, data: bytes, certificate: bytes
    ) -> bool:
        """Did replica ``replica``'s trusted counter certify ``value`` for ``data``?
        Never raises."""
        ...


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

    @property
    def threshold(self) -> ThresholdSigner | None:
        """This node's threshold signer, if the deployment has one."""
        ...

    @property
    def trusted_counter(self) -> TrustedCounter | None:
        """This node's trusted monotonic counter, if the deployment has one."""
        ...


class ClientCrypto(Protocol):
    @property
    def public_key(self) -> bytes: ...

    def authenticate(self, request_digest: bytes) -> list[bytes]:
        """One MAC per replica over the request digest."""
        ...
