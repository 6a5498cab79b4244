"""The crash torture's wallets and their transfers, and the ledger state they must lead to.

Everything here is a pure function of a seed, so the load process and the checker agree
on it without sharing more than the seed: wallet ``i``'s key, and the recipient and
amount of its transfer with nonce ``k``. A wallet signs exactly one transfer per nonce
and resends those very bytes until their fate is known, so once a replica reports a
wallet's next nonce ``N``, the transfers it applied are exactly nonces ``0..N-1`` — and
every balance follows (:func:`expected_balances`).
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

from phalanx.crypto.keys import KeyPair
from phalanx.ledger.tx import Transfer, encode_tx, sign_transfer, tx_id

WALLET_FUNDS = 10**12
"""Genesis balance of each wallet: far more than the transfers can move, so that no
transfer is ever refused for its amount (a refusal would stall that wallet's nonces)."""
MAX_AMOUNT = 1000


@lru_cache(maxsize=4096)
def wallet(seed: int, index: int) -> KeyPair:
    return KeyPair.from_seed(hashlib.sha256(b"phalanx-reliability-wallet|%d|%d"
                                            % (seed, index)).digest())


def genesis(seed: int, count: int) -> dict[bytes, int]:
    return {wallet(seed, i).public_key: WALLET_FUNDS for i in range(count)}


def plan(seed: int, count: int, index: int, nonce: int) -> tuple[int, int]:
    """(recipient wallet, amount) of wallet ``index``'s transfer with ``nonce``."""
    h = int.from_bytes(hashlib.sha256(b"plan|%d|%d|%d" % (seed, index, nonce)).digest()[:8],
                       "big")
    to = (index + 1 + h % (count - 1)) % count  # never itself
    return to, 1 + (h >> 32) % MAX_AMOUNT


def signed_transfer(seed: int, count: int, chain_id: bytes, index: int,
                    nonce: int) -> tuple[bytes, bytes]:
    """(encoded transfer, its tx id) of wallet ``index`` at ``nonce``."""
    to, amount = plan(seed, count, index, nonce)
    tx: Transfer = sign_transfer(wallet(seed, index), chain_id, wallet(seed, to).public_key,
                                 amount, nonce)
    raw = encode_tx(tx)
    return raw, tx_id(raw)


def expected_balances(seed: int, count: int, next_nonces: list[int]) -> list[int]:
    """Every wallet's balance once wallet ``i`` applied its transfers ``0..next_nonces[i]-1``
    and nothing else happened to the wallets."""
    balances = [WALLET_FUNDS] * count
    for index, applied in enumerate(next_nonces):
        for nonce in range(applied):
            to, amount = plan(seed, count, index, nonce)
            balances[index] -= amount
            balances[to] += amount
    return balances
