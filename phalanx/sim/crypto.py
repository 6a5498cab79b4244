"""Symbolic crypto for the simulator: cheap, and unforgeable by construction.

One :class:`SymbolicOracle` per simulation holds a random secret per replica and per
client, drawn from the simulation's RNG. A signature of replica ``i`` is a truncated HMAC
under ``i``'s secret, so only an object holding that secret can produce it. The oracle
hands out capabilities, never secrets: a correct replica's :class:`SymbolicNodeCrypto`
signs as itself only; a Byzantine replica's may also sign as its colluders (the other
Byzantine replicas), and no object can sign as a correct replica it is not.

This is a model of the real schemes (Ed25519 signatures, HMAC authenticators), not a
replacement: it keeps their unforgeability and drops their cost, so fuzz runs stay fast.

The oracle also models the two extension points of :mod:`phalanx.core.crypto`: threshold
signatures (a share is a MAC under the replica's secret; the combined signature a MAC
under a group secret that only the oracle holds, issued for ``threshold`` valid shares of
distinct replicas) and trusted monotonic counters (each replica's counters live in the
oracle, outside the replica — like a trusted execution environment — so a Byzantine
replica cannot rewind them and a crash does not reset them).
"""

from __future__ import annotations

import hmac
import random
from collections.abc import Iterable, Mapping

from phalanx.core.messages import Request

SIG_BYTES = 16
"""Truncated MACs: 128 bits is far beyond what a simulated adversary could guess."""

CLIENT_ID_BYTES = 32
"""Same size as the Ed25519 public keys that name clients in real runs."""

_SIGN_DOMAIN = b"phalanx/sim/sign"
_PAIR_DOMAIN = b"phalanx/sim/pair"
_SHARE_DOMAIN = b"phalanx/sim/share"
_GROUP_DOMAIN = b"phalanx/sim/group"
_COUNTER_DOMAIN = b"phalanx/sim/counter"


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
        # Derived, not drawn: the simulation's RNG stream (keys, client ids, and so every
        # run of a seed) stays what it was before these secrets existed.
        self._group_secret = _mac(b"".join(self._replica_secrets), _GROUP_DOMAIN)
        self._trusted_secrets = [_mac(secret, _COUNTER_DOMAIN) for secret in self._replica_secrets]
        # replica -> counter -> current value: the trusted components' state.
        self._counters: list[dict[int, int]] = [{} for _ in range(n)]
        # client id -> pairwise key with each replica (index = replica id). Real clients
        # share one HMAC key per replica; a replica can thus forge only its own entry.
        self._pair_keys: dict[bytes, list[bytes]] = {}

    # -- capabilities -------------------------------------------------------------

    def node_crypto(
        self, replica_id: int, colluders: Iterable[int] = (), *, threshold: int = 0,
        trusted_counter: bool = False,
    ) -> SymbolicNodeCrypto:
        """The crypto of replica ``replica_id``; ``colluders`` are the replicas it may also
        sign as (give them only to Byzantine replicas, and only Byzantine colluders). With
        ``threshold`` > 0 it holds a threshold signer of that many shares; with
        ``trusted_counter`` a trusted monotonic counter."""
        return SymbolicNodeCrypto(
            self, replica_id, colluders,
            threshold=SymbolicThresholdSigner(self, replica_id, threshold) if threshold else None,
            trusted_counter=SymbolicTrustedCounter(self, replica_id) if trusted_counter else None,
        )

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

    def _verify(self, signer: object, data: object, sig: object) -> bool:
        if not (isinstance(signer, int) and 0 <= signer < self.n and isinstance(sig, bytes)):
            return False
        if not isinstance(data, bytes | bytearray | memoryview):
            return False
        return hmac.compare_digest(self._sign(signer, bytes(data)), sig)

    def _pair_mac(self, client_id: bytes, replica_id: int, request_digest: bytes) -> bytes:
        return _mac(self._pair_keys[client_id][replica_id], request_digest)

    def _share(self, signer: int, data: bytes) -> bytes:
        return _mac(self._replica_secrets[signer], _SHARE_DOMAIN + data)

    def _group(self, data: bytes) -> bytes:
        return _mac(self._group_secret, _GROUP_DOMAIN + data)

    def _counter_mac(self, replica: int, counter: int, value: int, data: bytes) -> bytes:
        prefix = counter.to_bytes(8, "big") + value.to_bytes(8, "big")
        return _mac(self._trusted_secrets[replica], _COUNTER_DOMAIN + prefix + data)


class SymbolicNodeCrypto:
    """:class:`phalanx.core.crypto.NodeCrypto` of one replica under the symbolic scheme."""

    def __init__(
        self, oracle: SymbolicOracle, replica_id: int, colluders: Iterable[int] = (), *,
        threshold: SymbolicThresholdSigner | None = None,
        trusted_counter: SymbolicTrustedCounter | None = None,
    ) -> None:
        if not 0 <= replica_id < oracle.n:
            raise ValueError(f"replica id {replica_id} outside 0..{oracle.n - 1}")
        self._oracle = oracle
        self.replica_id = replica_id
        self.colluders = frozenset(colluders) | {replica_id}
        self.threshold = threshold
        self.trusted_counter = trusted_counter

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
            entry: object = auth[self.replica_id]  # a Byzantine client's may be anything
            client = request.client
            if not isinstance(entry, bytes) or not self._oracle.is_client(client):
                return False
            expected = self._oracle._pair_mac(client, self.replica_id, request.digest())
            return hmac.compare_digest(expected, entry)
        except Exception:
            # Garbage from a Byzantine sender must be rejected, never crash the replica.
            return False


class SymbolicThresholdSigner:
    """:class:`phalanx.core.crypto.ThresholdSigner` of one replica, symbolic."""

    def __init__(self, oracle: SymbolicOracle, replica_id: int, threshold: int) -> None:
        if not 1 <= threshold <= oracle.n:
            raise ValueError(f"threshold must be in 1..{oracle.n}, got {threshold}")
        self._oracle = oracle
        self.replica_id = replica_id
        self.threshold = threshold

    def sign_share(self, data: bytes) -> bytes:
        return self._oracle._share(self.replica_id, data)

    def verify_share(self, signer: object, data: bytes, share: object) -> bool:
        oracle = self._oracle
        if not (isinstance(signer, int) and 0 <= signer < oracle.n and isinstance(share, bytes)):
            return False
        return hmac.compare_digest(oracle._share(signer, bytes(data)), share)

    def combine(self, data: bytes, shares: Mapping[int, bytes]) -> bytes | None:
        valid = sum(1 for signer, share in shares.items()
                    if self.verify_share(signer, data, share))
        return self._oracle._group(bytes(data)) if valid >= self.threshold else None

    def verify(self, data: bytes, signature: object) -> bool:
        if not isinstance(signature, bytes):
            return False
        return hmac.compare_digest(self._oracle._group(bytes(data)), signature)


class SymbolicTrustedCounter:
    """:class:`phalanx.core.crypto.TrustedCounter` of one replica, symbolic: its state is
    the oracle's, so no behaviour of the replica (and no crash) can rewind it."""

    def __init__(self, oracle: SymbolicOracle, replica_id: int) -> None:
        self._oracle = oracle
        self.replica_id = replica_id

    def certify(self, counter: int, value: int, data: bytes) -> bytes:
        counters = self._oracle._counters[self.replica_id]
        current = counters.get(counter, 0)
        if value <= current:
            raise ValueError(f"trusted counter {counter} is at {current}: cannot certify "
                             f"{value} (values only go up)")
        counters[counter] = value
        return self._oracle._counter_mac(self.replica_id, counter, value, data)

    def value(self, counter: int) -> int:
        return self._oracle._counters[self.replica_id].get(counter, 0)

    def verify(
        self, replica: int, counter: int, value: int, data: bytes, certificate: bytes
    ) -> bool:
        oracle = self._oracle
        try:
            if not 0 <= replica < oracle.n or not isinstance(certificate, bytes):
                return False
            expected = oracle._counter_mac(replica, counter, value, bytes(data))
        except (TypeError, ValueError, OverflowError):
            return False
        return hmac.compare_digest(expected, certificate)


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
