"""The real :class:`~phalanx.core.crypto.NodeCrypto` and
:class:`~phalanx.core.crypto.ClientCrypto`: Ed25519 signatures and MAC authenticators."""

from __future__ import annotations

from nacl.signing import VerifyKey

from phalanx.core.messages import Request
from phalanx.crypto.keys import KeyPair, PairwiseKeys, pairwise_key, validate_public_key
from phalanx.crypto.mac import MacKey

CLIENT_KEY_CACHE_SIZE = 65_536


class Ed25519NodeCrypto:
    """A replica's crypto: signs with its key pair, verifies the other replicas' Ed25519
    signatures, and checks its own entry of client authenticators."""

    __slots__ = ("_client_keys", "_keypair", "_verify_keys", "replica_id")

    def __init__(
        self,
        replica_id: int,
        keypair: KeyPair,
        replica_public_keys: list[bytes],
        *,
        client_key_cache_size: int = CLIENT_KEY_CACHE_SIZE,
    ) -> None:
        if not 0 <= replica_id < len(replica_public_keys):
            raise ValueError(f"replica id {replica_id} outside 0..{len(replica_public_keys) - 1}")
        if replica_public_keys[replica_id] != keypair.public_key:
            raise ValueError(f"key pair does not match the public key of replica {replica_id}")
        for i, public_key in enumerate(replica_public_keys):
            try:
                validate_public_key(public_key)
            except ValueError as e:
                raise ValueError(f"public key of replica {i}: {e}") from None
        self.replica_id = replica_id
        self._keypair = keypair
        # Built once: VerifyKey construction and its checks are not free on the hot path.
        self._verify_keys = [VerifyKey(pk) for pk in replica_public_keys]
        self._client_keys = PairwiseKeys(keypair, client_key_cache_size, MacKey)

    threshold = None
    """No threshold signatures yet (BLS12-381 comes with Destiny)."""
    trusted_counter = None
    """No trusted monotonic counter yet (comes with Destiny's Linear Hybster)."""

    def sign(self, data: bytes) -> bytes:
        """This replica's 64-byte Ed25519 signature over ``data``."""
        return self._keypair.sign(data)

    def verify(self, signer: int, data: bytes, sig: bytes) -> bool:
        """Is ``sig`` replica ``signer``'s signature over ``data``? Never raises."""
        if type(signer) is not int or not 0 <= signer < len(self._verify_keys):
            return False
        try:
            self._verify_keys[signer].verify(data, sig)
        except Exception:
            # BadSignatureError, wrong length, wrong type: all mean "not a signature" to a
            # replica, which must never crash on what a Byzantine peer sends.
            return False
        return True

    def check_request(self, request: Request) -> bool:
        """Is this replica's authenticator entry the MAC of the request digest under the
        pairwise key with the request's client? Never raises."""
        try:
            auth = request.auth
            if len(auth) <= self.replica_id:
                return False
            return self._client_keys.get(request.client).mac_ok(
                request.digest(), auth[self.replica_id]
            )
        except Exception:
            # Garbage client key (ValueError), a timestamp that does not fit the digest's
            # 8 bytes (OverflowError), wrong field types: all are a bad authenticator.
            return False


class Ed25519ClientCrypto:
    """A client's crypto: its public key is its id; it MACs each request digest once per
    replica under the precomputed pairwise keys (an authenticator)."""

    __slots__ = ("_keypair", "_pairwise")

    def __init__(self, keypair: KeyPair, replica_public_keys: list[bytes]) -> None:
        self._keypair = keypair
        self._pairwise = [MacKey(pairwise_key(keypair, pk)) for pk in replica_public_keys]

    @property
    def public_key(self) -> bytes:
        """The client id: its Ed25519 public key."""
        return self._keypair.public_key

    def authenticate(self, request_digest: bytes) -> list[bytes]:
        """Entry ``j`` is the MAC of ``request_digest`` for replica ``j``."""
        return [key.mac(request_digest) for key in self._pairwise]
