"""Signed transfers: the ledger's only transaction type.

A transfer moves ``amount`` units from ``sender`` to ``to``. Accounts are named by their
Ed25519 public key (32 bytes): the address *is* the key, so a transaction needs no
separate public-key field and verifying it needs no lookup — the address is
self-certifying, as client ids are in the rest of phalanx. (A hash of the key would only
shorten the address; Ed25519 keys are already uniform 32-byte strings, and the sparse
Merkle tree hashes addresses for its paths anyway.)

The signature covers fixed-width signing bytes::

    "phalanx-transfer-v1" || chain_id (32) || sender (32) || to (32)
                          || amount (8, big-endian) || nonce (8, big-endian)

``chain_id`` commits to the cluster's genesis allocation, so a transfer signed for one
ledger cannot be replayed on another. The wire form is a msgpack array; only its
canonical encoding is accepted (decode, re-encode, compare), so a transaction has exactly
one byte string and one id: ``tx_id = sha256(encoded transaction)``.

A :class:`Bundle` carries several encoded transfers as one op — one request of the
ordering protocol — for a submitter with many transfers at hand (a gateway, a replay).
The ordering protocol's costs per request (its authenticator, exactly-once bookkeeping,
reply) are then paid once per bundle instead of once per transfer; each transfer keeps
its own bytes, id, signature check, outcome and place in the block.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import msgspec
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from phalanx.crypto.keys import KeyPair

ADDRESS_BYTES = 32
SIGNATURE_BYTES = 64
MAX_AMOUNT = (1 << 64) - 1
"""Amounts, balances and nonces are unsigned 64-bit integers."""
MAX_TX_BYTES = 256
"""A canonical transfer is 176 bytes; anything much larger is not one."""
MAX_BUNDLE_TXS = 256
"""Most transfers in one bundle (about 46 KiB)."""
SIGNING_DOMAIN = b"phalanx-transfer-v1"

# Rejection reasons: fixed strings (never exception text) because they are part of the
# results that f+1 replicas must return byte-for-byte identically.
MALFORMED = "malformed"
WRONG_CHAIN = "wrong_chain"
AMOUNT_NOT_POSITIVE = "amount_not_positive"
BAD_SIGNATURE = "bad_signature"
BAD_NONCE = "bad_nonce"
STALE_NONCE = "stale_nonce"
NONCE_TOO_FAR = "nonce_too_far"
INSUFFICIENT_FUNDS = "insufficient_funds"
BALANCE_OVERFLOW = "balance_overflow"

FINAL_REFUSALS = frozenset({MALFORMED, AMOUNT_NOT_POSITIVE, BAD_SIGNATURE})
"""Admission reasons that refuse an op for good. Each is a function of the op's bytes and
the chain id (the genesis, part of the cluster config) alone — :func:`op_txs` and
:func:`decode_tx` read only the bytes, the signature covers the chain id — and each also
makes ``Ledger.check_op`` false, so no correct backup prepares a batch holding the op and
it can never execute. The others (``stale_nonce``, ``nonce_too_far``,
``insufficient_funds``) are judged on one replica's executed state, which may lag or move
on: "not accepted yet", never "refused"."""


class Transfer(msgspec.Struct, tag=101, array_like=True, frozen=True, gc=False,
               forbid_unknown_fields=True):
    """``{from, to, amount, nonce, signature}``; ``sender`` is the ``from`` address."""

    sender: bytes
    to: bytes
    amount: int
    nonce: int
    signature: bytes = b""


class Bundle(msgspec.Struct, tag=102, array_like=True, frozen=True, gc=False,
             forbid_unknown_fields=True):
    """Encoded transfers submitted together as one op, executed in this order."""

    txs: list[bytes]


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Transfer)
_bundle_decoder = msgspec.msgpack.Decoder(Bundle)
_BUNDLE_HEAD = _encoder.encode(Bundle([]))[:2]
"""How every canonical bundle begins (a 2-array, then its tag); a transfer never does
(its array has 6 elements)."""


def signing_bytes(chain_id: bytes, sender: bytes, to: bytes, amount: int, nonce: int) -> bytes:
    """What the sender signs (see the module docstring)."""
    return b"".join((
        SIGNING_DOMAIN, chain_id, sender, to, amount.to_bytes(8, "big"), nonce.to_bytes(8, "big")
    ))


def sign_transfer(
    keypair: KeyPair, chain_id: bytes, to: bytes, amount: int, nonce: int
) -> Transfer:
    """A transfer from ``keypair``'s address, signed for ledger ``chain_id``."""
    sender = keypair.public_key
    sig = keypair.sign(signing_bytes(chain_id, sender, to, amount, nonce))
    return Transfer(sender, to, amount, nonce, sig)


def encode_tx(tx: Transfer) -> bytes:
    """The canonical bytes of a transfer (what a client submits as its op)."""
    return _encoder.encode(tx)


def tx_id(raw: bytes) -> bytes:
    """The id of an encoded transfer: sha256 of its canonical bytes."""
    return hashlib.sha256(raw).digest()


def encode_bundle(txs: list[bytes]) -> bytes:
    """One op carrying the encoded transfers ``txs`` (1..MAX_BUNDLE_TXS of them)."""
    if not 1 <= len(txs) <= MAX_BUNDLE_TXS:
        raise ValueError(f"a bundle carries 1..{MAX_BUNDLE_TXS} transfers")
    return _encoder.encode(Bundle(txs))


def is_bundle(op: bytes) -> bool:
    """Whether ``op`` is (or claims to be) a bundle rather than a single transfer."""
    return op[:2] == _BUNDLE_HEAD


def op_txs(op: bytes) -> list[bytes] | str:
    """The encoded transfers an op carries — ``[op]`` itself unless it is a bundle — or
    MALFORMED for a bundle that is not canonical or holds 0 or too many. (Whether each
    is a well-formed transfer is :func:`decode_tx`'s question.)"""
    if not is_bundle(op):
        return [op]
    if len(op) > MAX_BUNDLE_TXS * (MAX_TX_BYTES + 3) + 8:
        return MALFORMED
    try:
        bundle = _bundle_decoder.decode(op)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return MALFORMED
    if not 1 <= len(bundle.txs) <= MAX_BUNDLE_TXS or _encoder.encode(bundle) != op:
        return MALFORMED
    return bundle.txs


def decode_tx(raw: bytes) -> Transfer | str:
    """The transfer encoded by ``raw``, or a rejection reason if it is not a well-formed
    one (garbage, non-canonical bytes, wrong field sizes, amount not positive)."""
    if len(raw) > MAX_TX_BYTES:
        return MALFORMED
    try:
        tx = _decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return MALFORMED
    if (
        len(tx.sender) != ADDRESS_BYTES
        or len(tx.to) != ADDRESS_BYTES
        or len(tx.signature) != SIGNATURE_BYTES
        or not 0 <= tx.nonce <= MAX_AMOUNT
        or tx.amount > MAX_AMOUNT
    ):
        return MALFORMED
    if tx.amount <= 0:
        return AMOUNT_NOT_POSITIVE
    if _encoder.encode(tx) != raw:
        return MALFORMED  # one transaction, one byte string, one id
    return tx


def signature_valid(tx: Transfer, chain_id: bytes) -> bool:
    """Is ``tx.signature`` the sender's Ed25519 signature for ledger ``chain_id``?"""
    try:
        VerifyKey(tx.sender).verify(
            signing_bytes(chain_id, tx.sender, tx.to, tx.amount, tx.nonce), tx.signature
        )
    except (BadSignatureError, ValueError, TypeError):
        return False
    return True


class VerifiedSignatures:
    """Encoded transactions whose signature this replica already checked.

    Shared by admission, a backup's batch validation and execution, so that each client
    signature is verified once per replica (the dominant CPU cost of the ledger). Keyed
    by the canonical bytes themselves (the very objects the batch holds, so a lookup
    hashes nothing new), with the decoded transfer, so that execution neither decodes
    nor hashes it again before applying it. Bounded (oldest forgotten first), since a
    transaction that is verified but never executed must not pin memory.
    """

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._txs: OrderedDict[bytes, Transfer] = OrderedDict()
        self.verifications = 0  # real Ed25519 verifications performed (for metrics/tests)

    def __contains__(self, raw: bytes) -> bool:
        return raw in self._txs

    def check(self, raw: bytes, tx: Transfer, chain_id: bytes) -> bool:
        """Whether ``tx`` (decoded from ``raw``) is validly signed; verifies at most once."""
        txs = self._txs
        if raw in txs:
            return True
        self.verifications += 1
        if not signature_valid(tx, chain_id):
            return False  # failures are not cached: the bytes are the attacker's choice
        txs[raw] = tx
        if len(txs) > self.capacity:
            txs.popitem(last=False)
        return True

    def take(self, raw: bytes) -> Transfer | None:
        """The verified transfer encoded by ``raw`` (None if not checked or forgotten),
        removed: it is being executed and never checked again."""
        return self._txs.pop(raw, None)

    def __len__(self) -> int:
        return len(self._txs)
