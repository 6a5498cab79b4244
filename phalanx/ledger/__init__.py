"""The permissioned ledger: signed transfers, blocks, a sparse Merkle account state."""

from phalanx.ledger.state import Ledger, chain_id_of

__all__ = ["Ledger", "chain_id_of"]
