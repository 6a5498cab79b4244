"""Wallets: an Ed25519 key pair whose public key is the account address."""

from __future__ import annotations

import os

from phalanx.crypto.keys import KeyPair
from phalanx.ledger.tx import Transfer, sign_transfer


class Wallet:
    """One account's key. ``address`` is the public key (32 bytes; hex for humans)."""

    __slots__ = ("keypair",)

    def __init__(self, keypair: KeyPair) -> None:
        self.keypair = keypair

    @classmethod
    def new(cls) -> Wallet:
        """A fresh key from the OS randomness source."""
        return cls(KeyPair.generate())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Wallet:
        """Read a wallet file written by :meth:`save` (KeyFileError if unusable)."""
        return cls(KeyPair.load(path))

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        """Write the private key to ``path``, readable by its owner only (mode 0600);
        refuses to replace an existing file unless ``overwrite``."""
        self.keypair.save(path, overwrite=overwrite)

    @property
    def address(self) -> bytes:
        return self.keypair.public_key

    def sign(self, chain_id: bytes, to: bytes, amount: int, nonce: int) -> Transfer:
        """A transfer of ``amount`` to ``to`` with ``nonce``, signed for ``chain_id``."""
        return sign_transfer(self.keypair, chain_id, to, amount, nonce)
