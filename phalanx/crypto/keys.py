"""Ed25519 key pairs, their key files, and the static pairwise keys between two parties.

A party (replica or client) is one Ed25519 key pair. Signatures use it directly; MACs
use a *pairwise* key that both ends derive without a round trip: X25519 Diffie-Hellman
between the two Ed25519 keys mapped to Curve25519. A client is thus self-certifying: its
public key is its id, and only the holder of the private key can compute its MAC keys.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar, overload

import nacl.bindings
import nacl.exceptions
from nacl.signing import SigningKey

log = logging.getLogger(__name__)

PUBLIC_KEY_SIZE = 32
SEED_SIZE = 32
SIGNATURE_SIZE = 64
PAIRWISE_CONTEXT = b"phalanx-pairwise-v1"


class KeyFileError(ValueError):
    """A private key file is missing, unreadable or malformed."""


class KeyPair:
    """An Ed25519 key pair, rebuilt deterministically from its 32-byte seed."""

    __slots__ = ("_curve_secret", "_signing_key", "public_key", "seed")

    def __init__(self, signing_key: SigningKey) -> None:
        self._signing_key = signing_key
        self.seed: bytes = bytes(signing_key)
        self.public_key: bytes = bytes(signing_key.verify_key)
        self._curve_secret: bytes | None = None

    @classmethod
    def generate(cls) -> KeyPair:
        """A fresh key pair from the OS randomness source."""
        return cls(SigningKey.generate())

    @classmethod
    def from_seed(cls, seed: object) -> KeyPair:
        """The key pair of a 32-byte seed (same seed, same keys); ValueError for anything
        else (a seed may come from a file or a config, so it is checked)."""
        if not isinstance(seed, bytes) or len(seed) != SEED_SIZE:
            raise ValueError(f"an Ed25519 seed is {SEED_SIZE} bytes")
        return cls(SigningKey(seed))

    def sign(self, data: bytes) -> bytes:
        """The 64-byte detached Ed25519 signature of ``data``."""
        return self._signing_key.sign(data).signature

    def curve_secret(self) -> bytes:
        """The X25519 secret scalar of this key (computed once)."""
        if self._curve_secret is None:
            secret = self.seed + self.public_key  # libsodium's 64-byte secret-key layout
            self._curve_secret = nacl.bindings.crypto_sign_ed25519_sk_to_curve25519(secret)
        return self._curve_secret

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        """Write the seed as one hex line to a file readable by the owner only (0600).

        Refuses to replace an existing file (FileExistsError) unless ``overwrite``.
        """
        path = Path(path)
        # The mode is set at creation so the secret is never briefly world-readable; O_EXCL
        # keeps an existing identity from being replaced by accident.
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
        fd = os.open(path, flags, 0o600)
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), 0o600)  # an overwritten file keeps its old mode otherwise
            f.write(self.seed.hex() + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> KeyPair:
        """Read a key file written by :meth:`save`; raises :class:`KeyFileError` if it is
        missing or malformed. A file others can read is loaded, with a warning."""
        path = Path(path)
        try:
            mode = path.stat().st_mode
            text = path.read_text(encoding="ascii")
        except FileNotFoundError:
            raise KeyFileError(f"private key file {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as e:
            raise KeyFileError(f"cannot read private key file {path}: {e}") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning(
                "private key file %s is accessible by group/others (mode %o); "
                "run: chmod 600 %s",
                path,
                stat.S_IMODE(mode),
                path,
            )
        line = text.strip()
        try:
            seed = bytes.fromhex(line)
        except ValueError:
            seed = b""
        if len(seed) != SEED_SIZE or "\n" in line:
            raise KeyFileError(
                f"private key file {path} is malformed: expected one line of "
                f"{2 * SEED_SIZE} hex digits (an Ed25519 seed)"
            )
        return cls.from_seed(seed)

    def __repr__(self) -> str:
        # Never print the seed.
        return f"KeyPair(public_key={self.public_key.hex()})"


def curve_public_key(public_key: object) -> bytes:
    """The X25519 public key of an Ed25519 public key; ValueError if it is not a valid,
    canonical point of prime order (garbage, small-order points, wrong lengths and
    types: a public key may come off the wire)."""
    if not isinstance(public_key, bytes) or len(public_key) != PUBLIC_KEY_SIZE:
        raise ValueError(f"an Ed25519 public key is {PUBLIC_KEY_SIZE} bytes")
    try:
        return nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(public_key)
    except (nacl.exceptions.CryptoError, TypeError) as e:
        raise ValueError(f"invalid Ed25519 public key: {e}") from None


def validate_public_key(public_key: bytes) -> None:
    """Raise ValueError unless ``public_key`` is a well-formed Ed25519 public key."""
    curve_public_key(public_key)


def pairwise_key(my_keypair: KeyPair, their_public_key: bytes) -> bytes:
    """The 32-byte static key shared by ``my_keypair`` and the owner of
    ``their_public_key``: symmetric, so ``pairwise_key(a, B) == pairwise_key(b, A)``."""
    their_curve = curve_public_key(their_public_key)
    try:
        shared = nacl.bindings.crypto_scalarmult(my_keypair.curve_secret(), their_curve)
    except nacl.exceptions.CryptoError as e:
        # libsodium refuses an all-zero shared secret (a low-order point).
        raise ValueError(f"invalid Ed25519 public key: {e}") from None
    # Hash the raw X25519 output: it is a group element, not a uniform key.
    return hashlib.sha256(PAIRWISE_CONTEXT + shared).digest()


K = TypeVar("K")


def _raw(key: bytes) -> bytes:
    return key


class PairwiseKeys(Generic[K]):
    """A bounded LRU cache of :func:`pairwise_key` for one local key pair.

    A Diffie-Hellman costs tens of microseconds; a replica meets the same clients again
    and again, so it computes each client's key once. The bound keeps a flood of fresh
    client ids from growing memory without limit. ``prepare`` turns the raw key into
    what the caller uses (e.g. a :class:`~phalanx.crypto.mac.MacKey`), once per client.
    """

    __slots__ = ("_cache", "_keypair", "_prepare", "capacity")

    # Without ``prepare`` the cache holds the raw keys: K is bytes.
    @overload
    def __init__(
        self: PairwiseKeys[bytes], keypair: KeyPair, capacity: int = 65_536
    ) -> None: ...

    @overload
    def __init__(
        self, keypair: KeyPair, capacity: int, prepare: Callable[[bytes], K]
    ) -> None: ...

    @overload
    def __init__(
        self, keypair: KeyPair, *, capacity: int = 65_536, prepare: Callable[[bytes], K]
    ) -> None: ...

    def __init__(
        self,
        keypair: KeyPair,
        capacity: int = 65_536,
        prepare: Callable[[bytes], Any] = _raw,
    ) -> None:
        self._keypair = keypair
        self.capacity = capacity
        self._prepare: Callable[[bytes], K] = prepare
        self._cache: OrderedDict[bytes, K] = OrderedDict()

    def get(self, their_public_key: bytes) -> K:
        """The (prepared) pairwise key with ``their_public_key``; ValueError if that key
        is invalid."""
        cache = self._cache
        key = cache.get(their_public_key)
        if key is not None:
            cache.move_to_end(their_public_key)
            return key
        # Raises on garbage: nothing is cached then.
        key = self._prepare(pairwise_key(self._keypair, their_public_key))
        cache[their_public_key] = key
        if len(cache) > self.capacity:
            cache.popitem(last=False)
        return key

    def __len__(self) -> int:
        return len(self._cache)
