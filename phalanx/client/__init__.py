"""The ledger SDK: wallets, submitting transfers, verified balance queries."""

from phalanx.client.ledger import (
    Confirmation,
    LedgerClient,
    LedgerError,
    ProofError,
    TxRefused,
    VerifiedAccount,
)
from phalanx.client.wallet import Wallet

__all__ = [
    "Confirmation",
    "LedgerClient",
    "LedgerError",
    "ProofError",
    "TxRefused",
    "VerifiedAccount",
    "Wallet",
]
