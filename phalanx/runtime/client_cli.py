"""``phalanx client put/get/delete``: one request to a running cluster."""

from __future__ import annotations

import argparse
import asyncio
import sys

from phalanx import exit_codes
from phalanx.config import ClusterConfig, load
from phalanx.runtime import run
from phalanx.runtime.client import RequestNotAccepted, RequestRefused
from phalanx.runtime.cluster_client import open_client
from phalanx.statemachine.kv import Err, decode_result, encode_delete, encode_get, encode_put


def _op(args: argparse.Namespace) -> bytes:
    key = args.key.encode()
    if args.client_command == "put":
        return encode_put(key, args.value.encode())
    if args.client_command == "get":
        return encode_get(key)
    return encode_delete(key)


async def _request(args: argparse.Namespace) -> int:
    config = load(args.config)
    client = await open_client(config)
    try:
        raw = await asyncio.wait_for(client.request(_op(args)), timeout=args.timeout)
    except TimeoutError:
        print(f"no answer from f+1={config.f + 1} replicas within {args.timeout}s", file=sys.stderr)
        return 1
    except RequestRefused as exc:
        print(f"refused ({exc.reason})", file=sys.stderr)
        return exit_codes.REFUSED
    except RequestNotAccepted as exc:
        print(f"not accepted yet ({exc.reason}); retry", file=sys.stderr)
        return exit_codes.NOT_ACCEPTED
    finally:
        await client.close()
    result = decode_result(raw)
    if isinstance(result, Err):
        print(f"error: {result.reason}", file=sys.stderr)
        return 1
    if args.client_command == "get":
        if result.value is None:
            print("(not found)")
            return 1
        print(result.value.decode(errors="replace"))
    else:
        print("ok")
    return 0


def wrong_app(config: ClusterConfig, command: str, path: str) -> str | None:
    """Why ``phalanx client COMMAND`` cannot talk to this cluster (it runs the other
    application), or None: the ledger refuses key-value ops as malformed, and a key-value
    cluster has no ledger API."""
    ledger_command = command in ("transfer", "balance")
    if ledger_command == (config.app == "ledger"):
        return None
    if config.app == "ledger":
        return (f"the cluster of {path} runs the ledger app: put/get/delete are for "
                f"key-value clusters ('phalanx up --app kv'); use 'phalanx client transfer' "
                f"and 'phalanx client balance' (see 'phalanx client --help')")
    return (f"the cluster of {path} runs the key-value store: transfer/balance are for "
            f"ledger clusters ('phalanx up --app ledger'); use 'phalanx client put', 'get' "
            f"and 'delete'")


def run_client(args: argparse.Namespace) -> int:
    refusal = wrong_app(load(args.config), args.client_command, args.config)
    if refusal:
        print(f"phalanx client {args.client_command}: error: {refusal}", file=sys.stderr)
        return 2
    return run(_request(args))
