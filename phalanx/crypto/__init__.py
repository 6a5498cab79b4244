"""Real cryptography: Ed25519 key pairs and signatures (PyNaCl), HMAC-SHA256 MACs and the
static pairwise keys that MAC authenticators and authenticated links are keyed with."""

from phalanx.crypto.ed25519 import Ed25519ClientCrypto, Ed25519NodeCrypto
from phalanx.crypto.keys import (
    KeyFileError,
    KeyPair,
    PairwiseKeys,
    pairwise_key,
    validate_public_key,
)
from phalanx.crypto.mac import MAC_SIZE, MacKey, mac, mac_ok

__all__ = [
    "MAC_SIZE",
    "Ed25519ClientCrypto",
    "Ed25519NodeCrypto",
    "KeyFileError",
    "KeyPair",
    "MacKey",
    "PairwiseKeys",
    "mac",
    "mac_ok",
    "pairwise_key",
    "validate_public_key",
]
