"""``ursa.bls`` for Plenum, backed by the ``indy-bls`` wheel (same classes, same API)."""
from indy_bls.bls import (  # noqa: F401
    Bls,
    BlsEntity,
    Generator,
    MultiSignature,
    ProofOfPossession,
    Signature,
    SignKey,
    VerKey,
)
