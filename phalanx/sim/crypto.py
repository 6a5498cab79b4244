"""Symbolic crypto for the simulator: cheap, and unforgeable by construction.

One :class:`SymbolicOracle` per simulation holds a random secret per replica and per
client, drawn from the simulation's RNG. A signature of replica ``i`` is a truncated HMAC
under ``i``'s secret, so only an object holding that secret can produce it. The oracle
hands out capabilities, never secrets: a correct replica's :class:`SymbolicNodeCrypto`
signs as itself only; a Byzantine replica's may also sign as its colluders (the other
Byzantine replicas), and no object can sign as a correct replica it is not.

This is a model of the real schemes (Ed25519 signatures, HMAC authenticators), not a
replacement: it keeps their unforgeability and drops their cost, so fuzz runs stay fast.
"""

from __future__ import annotations

import hmac
import random
from collections.abc import Iterable

from phalanx.core.messages import Request

SIG_BYTES = 16
"""Truncated MACs: 128 bits is far beyond what a simulated adversary could guess."""

CLIENT_ID_BYTES = 32
"""Same size as the Ed25519 public keys that name clients in real runs."""

_SIGN_DOMAIN = b"phalanx/sim/sign"
_PAIR_DOMAIN = b"phalanx/sim/pair"


def _mac(key: bytes, data: bytes) -> bytes:
    return hmac.digest(key, data, "sha256")[:SIG_BYTES]


class SymbolicOracle:
    """Holds every secret of one simulation and issues crypto capabilities.

    ``rng`` must be derived from the simulation seed, so keys and client ids replay.
    """

    def __init__(self, rng: random.Random, n: int) -> None:
        if n < 1:
            raise ValueError(f"need at least one replica, got n={n}")
        self.n = n
        self._rng = rng
        self._replica_secrets = [rng.randbytes(32) for _ in range(n)]
        # client id -> pairwise key with each replica (index = replica id). Real clients
        # share one HMAC key per replica; a replica can thus forge only its own entry.
        self._pair_keys: dict[bytes, list[bytes]] = {}

    # -- capabilities -------------------------------------------------------------

    def node_crypto(self, replica_id: int, colluders: Iterable[int] = ()) -> SymbolicNodeCrypto:
        """The crypto of replica ``replica_id``; ``colluders`` are the replicas it may also
        sign as (give them only to Byzantine replicas, and only Byzantine colluders)."""
        return SymbolicNodeCrypto(self, replica_id, colluders)

    def new_client(self) -> SymbolicClientCrypto:
        """Register a fresh client with a random 32-byte id and return its crypto."""
        while True:
            client_id = self._rng.randbytes(CLIENT_ID_BYTES)
            if client_id not in self._pair_keys:
                break
        secret = self._rng.randbytes(32)
        self._pair_keys[client_id] = [
            _mac(secret, _PAIR_DOMAIN + j.to_bytes(4, "big")) for j in range(self.n)
        ]
        return SymbolicClientCrypto(self, client_id)

    def is_client(self, client_id: bytes) -> bool:
        return client_id in self._pair_keys

    # -- primitives (module-private: only the capability classes call them) --------

    def _sign(self, signer: int, data: bytes) -> bytes:
        return _mac(self._replica_secrets[signer], _SIGN_DOMAIN + data)

    def _verify(self, signer: int, data: bytes, sig: bytes) -> bool:
        if not (isinstance(signer, int) and 0 <= signer < self.n and isinstance(sig, bytes)):
            return False
        if not isinstance(data, bytes | bytearray | memoryview):
            return False
        return hmac.compare_digest(self._sign(signer, bytes(data)), sig)

    def _pair_mac(self, client_id: bytes, replica_id: int, request_digest: bytes) -> bytes:
        return _mac(self._pair_keys[client_id][replica_id], request_digest)


class SymbolicNodeCrypto:
    """:class:`phalanx.core.crypto.NodeCrypto` of one replica under the symbolic scheme."""

    def __init__(
        self, oracle: SymbolicOracle, replica_id: int, colluders: Iterable[int] = ()
    ) -> None:
        if not 0 <= replica_id < oracle.n:
            raise ValueError(f"replica id {replica_id} outside 0..{oracle.n - 1}")
        self._oracle = oracle
        self.replica_id = replica_id
        self.colluders = frozenset(colluders) | {replica_id}

    def sign(self, data: bytes) -> bytes:
        """This replica's signature over ``data``."""
        return self._oracle._sign(self.replica_id, data)

    def sign_as(self, signer: int, data: bytes) -> bytes:
        """A signature of ``signer``: allowed only for this replica and its colluders,
        which is what makes the scheme unforgeable for correct replicas."""
        if signer not in self.colluders:
            raise PermissionError(f"replica {self.replica_id} holds no secret of {signer}")
        return self._oracle._sign(signer, data)

    def verify(self, signer: int, data: bytes, sig: bytes) -> bool:
        """Is ``sig`` replica ``signer``'s signature over ``data``? Never raises."""
        return self._oracle._verify(signer, data, sig)

    def check_request(self, request: Request) -> bool:
        """Is this replica's authenticator entry of ``request`` valid? Never raises."""
        try:
            auth = request.auth
            if len(auth) <= self.replica_id:
                return False
            entry = auth[self.replica_id]
            client = request.client
            if not isinstance(entry, bytes) or not self._oracle.is_client(client):
                return False
            expected = self._oracle._pair_mac(client, self.replica_id, request.digest())
            return hmac.compare_digest(expected, entry)
        except Exception:
            # Garbage from a Byzantine sender must be rejected, never crash the replica.
            return False


class SymbolicClientCrypto:
    """:class:`phalanx.core.crypto.ClientCrypto` of one client under the symbolic scheme."""

    def __init__(self, oracle: SymbolicOracle, client_public_key: bytes) -> None:
        if not oracle.is_client(client_public_key):
            raise ValueError("unknown client: register it with SymbolicOracle.new_client()")
        self._oracle = oracle
        self._public_key = client_public_key

    @property
    def public_key(self) -> bytes:
        """The client's 32-byte id (stands in for its Ed25519 public key)."""
        return self._public_key

    def authenticate(self, request_digest: bytes) -> list[bytes]:
        """One MAC per replica over the request digest (an authenticator)."""
        return [
            self._oracle._pair_mac(self._public_key, j, request_digest)
            for j in range(self._oracle.n)
        ]
