"""``phalanx wallet new`` and ``phalanx client transfer|balance`` (the ledger's CLI)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from phalanx import exit_codes
from phalanx.client.ledger import LedgerClient, LedgerError, TxNotAccepted, TxRefused
from phalanx.client.wallet import Wallet
from phalanx.config import load
from phalanx.ledger.tx import MAX_AMOUNT
from phalanx.runtime import run
from phalanx.runtime.client_cli import wrong_app


def amount(text: str) -> int:
    """An argparse type: a transfer amount, 1..2^64-1 (a usage error otherwise)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 1 <= value <= MAX_AMOUNT:
        raise argparse.ArgumentTypeError(
            f"{value} is out of range: an amount is 1..2^64-1 ({MAX_AMOUNT})")
    return value


def add_wallet_parser(sub: argparse._SubParsersAction[Any]) -> None:
    # Any: the parsers are phalanx.cli's own class, which this module may not import.
    p = sub.add_parser("wallet", help="ledger wallets (Ed25519 keys; the address is the key)")
    wsub = p.add_subparsers(dest="wallet_command", required=True)
    w = wsub.add_parser("new", help="create a wallet file (mode 0600) and print its address")
    w.add_argument("--out", default="wallet.key", help="where to write the private key")
    w.add_argument("--force", action="store_true", help="overwrite an existing file")
    w = wsub.add_parser("address", help="print the address of a wallet file")
    w.add_argument("wallet", help="the wallet file")
    p.set_defaults(func=run_wallet)


def add_client_commands(csub: argparse._SubParsersAction[Any]) -> None:
    c = csub.add_parser("transfer", help="ledger: sign, submit and wait for f+1 confirmations")
    c.add_argument("--wallet", required=True, help="the sender's wallet file")
    c.add_argument("--to", required=True, help="recipient address (hex) or wallet file")
    c.add_argument("amount", type=amount, help="units to transfer, 1..2^64-1")
    c = csub.add_parser("balance", help="ledger: a balance verified against a certified root")
    c.add_argument("account", help="address (hex) or wallet file")


def run_wallet(args: argparse.Namespace) -> int:
    if args.wallet_command == "new":
        wallet = Wallet.new()
        try:
            wallet.save(args.out, overwrite=args.force)
        except FileExistsError:
            print(f"{args.out} exists; pass --force to replace it", file=sys.stderr)
            return 1
        print(f"wrote {args.out} (mode 0600)")
        print(wallet.address.hex())
        return 0
    print(Wallet.load(args.wallet).address.hex())
    return 0


def _address(text: str) -> bytes:
    """An address given as 64 hex digits, or the address of a wallet file."""
    if os.path.exists(text):
        return Wallet.load(text).address
    try:
        address = bytes.fromhex(text)
    except ValueError:
        address = b""
    if len(address) != 32:
        raise ValueError(f"{text!r} is neither a wallet file nor a 64-hex-digit address")
    return address


async def _transfer(args: argparse.Namespace) -> int:
    config = load(args.config)
    wallet = Wallet.load(args.wallet)
    async with LedgerClient(config) as client:
        try:
            done = await client.transfer(wallet, _address(args.to), args.amount,
                                         timeout=args.timeout)
        except TxRefused as exc:
            print(exc, file=sys.stderr)  # "refused (<reason>...)"
            return exit_codes.REFUSED
        except TxNotAccepted as exc:
            print(exc, file=sys.stderr)  # "not accepted yet (<reason>...); retry"
            return exit_codes.NOT_ACCEPTED
        except (LedgerError, TimeoutError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    if done.status != "committed":
        print(f"rejected in block {done.height}: {done.reason} "
              f"(replicas {list(done.replicas)} agree)", file=sys.stderr)
        return 1
    print(f"committed in block {done.height}: tx {done.tx_id} "
          f"(confirmed by replicas {list(done.replicas)})")
    return 0


async def _balance(args: argparse.Namespace) -> int:
    config = load(args.config)
    address = _address(args.account)
    async with LedgerClient(config) as client:
        try:
            account = await client.account(address)
        except LedgerError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    print(f"balance {account.balance}  nonce {account.nonce}")
    where = (f"block {account.height}, signed by replicas {list(account.signers)}"
             if account.height else "the genesis block of the cluster config")
    print(f"verified: Merkle proof against state root {account.state_root.hex()[:16]}... "
          f"of {where}")
    return 0


def run_ledger_client(args: argparse.Namespace) -> int:
    """``phalanx client transfer|balance``."""
    refusal = wrong_app(load(args.config), args.client_command, args.config)
    if refusal:
        print(f"phalanx client {args.client_command}: error: {refusal}", file=sys.stderr)
        return 2
    if args.client_command == "transfer":
        return run(_transfer(args))
    return run(_balance(args))
