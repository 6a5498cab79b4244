"""``ursa.indy_error`` for Plenum: the error type ``indy-bls`` raises."""
import enum

from indy_bls.error import IndyBlsError as IndyCryptoError  # noqa: F401


class ErrorCode(enum.IntEnum):
    """Only named by Plenum's own tests; kept so importing them does not fail."""

    Success = 0
