"""The ledger SDK: wallets, submitting transfers, verified balance queries."""

from phalanx.client.ledger import (
    Confirmation,
    LedgerClient,
    LedgerError,
    ProofError,
    TxNotAccepted,
    TxRefused,
    VerifiedAccount,
)
from phalanx.client.wallet import Wallet

__all__ = [
    "Confirmation",
    "LedgerClient",
    "LedgerError",
    "ProofError",
    "TxNotAccepted",
    "TxRefused",
    "VerifiedAccount",
    "Wallet",
]
