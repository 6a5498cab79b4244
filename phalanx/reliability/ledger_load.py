"""The crash torture's load: wallets sending signed transfers, every outcome journaled.

Run by the harness as ``python -m phalanx.reliability.ledger_load --config C --seed S
--wallets W --journal FILE``; it connects, prints ``ready``, and loads the cluster until
its standard input says ``stop`` (or closes). Then each wallet finishes the transfer it
has in flight (``--drain`` seconds at most), the journal gets its ``end`` line and the
process exits 0.

Each wallet has one transfer in flight (closed loop) and signs exactly one transfer per
nonce (:mod:`phalanx.reliability.wallets`), resending the very same bytes until their
fate is known, so that the checker can derive the whole ledger from the replicas' nonces.
A transfer is *acknowledged* when the cluster confirms it applied:

- native wallets (most): f+1 matching replies of the ordering protocol (a
  :class:`~phalanx.runtime.client.ClientRunner`), whose result names the block;
- SDK wallets (``--sdk-wallets``): ``POST /tx`` then f+1 replicas reporting it committed
  in the same block of their durable tx index (:class:`~phalanx.client.ledger.LedgerClient`).

The journal is one JSON object per line: ``ack`` (wallet ``w``, nonce ``n``, tx ``id``,
block ``h``, wall time ``t``, latency ``lat``), ``consumed`` (a resend was refused as
stale or a duplicate: an earlier copy applied, block unknown), ``retry`` (timed out,
resent), ``anomaly`` (an answer a correct cluster never gives; the wallet stops) and
finally ``end`` with ``sent``: per wallet, how many nonces it ever sent.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import IO, Any

from phalanx.config import load
from phalanx.ledger import tx as txm
from phalanx.ledger.block import APPLIED
from phalanx.ledger.state import Ledger, decode_result
from phalanx.reliability.wallets import signed_transfer
from phalanx.runtime import run

REQUEST_TIMEOUT_S = 30.0
BACKOFF_S = 0.2
FLUSH_S = 0.5


class Journal:
    """Appends outcome lines to a file, flushed every :data:`FLUSH_S` seconds."""

    def __init__(self, path: Path) -> None:
        self.file: IO[str] = open(path, "a", buffering=1 << 16)  # noqa: SIM115 - closed in close()
        self.acks = 0

    def write(self, event: str, **fields: Any) -> None:
        if event == "ack":
            self.acks += 1
        self.file.write(json.dumps({"ev": event, **fields}, separators=(",", ":")) + "\n")

    async def flusher(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_S)
            self.file.flush()

    def close(self) -> None:
        self.file.flush()
        self.file.close()


class Wallets:
    """What every wallet task shares: the plan, the journal, the stop signal."""

    def __init__(self, args: argparse.Namespace, chain_id: bytes, journal: Journal) -> None:
        self.seed = args.seed
        self.count = args.wallets
        self.chain_id = chain_id
        self.journal = journal
        self.timeout = args.request_timeout
        self.stopping = asyncio.Event()
        self.sent = [0] * args.wallets  # nonces ever sent, per wallet

    def transfer(self, index: int, nonce: int) -> tuple[bytes, bytes]:
        self.sent[index] = max(self.sent[index], nonce + 1)
        return signed_transfer(self.seed, self.count, self.chain_id, index, nonce)

    def settled(self, index: int, nonce: int, tid: bytes, attempts: int, begin: float,
                status: str, height: int | None, reason: str = "") -> bool:
        """Journal a transfer's fate; True if the wallet may go on to the next nonce."""
        common = {"w": index, "n": nonce, "id": tid.hex()}
        if status == "applied":
            now = time.time()
            self.journal.write("ack", **common, h=height, t=round(now, 3),
                               lat=round(now - begin, 4))
            return True
        if attempts > 1 and reason in (txm.STALE_NONCE, txm.BAD_NONCE):
            # Our own earlier copy applied (we never signed another transfer with it).
            self.journal.write("consumed", **common, reason=reason)
            return True
        self.journal.write("anomaly", **common, reason=reason or status, attempts=attempts)
        return False


async def native_wallet(wallets: Wallets, index: int, runner: Any) -> None:
    from phalanx.runtime.client import RequestFailed

    nonce = 0
    while not wallets.stopping.is_set():
        raw, tid = wallets.transfer(index, nonce)
        begin, attempts = time.time(), 0
        while True:
            attempts += 1
            try:
                result = decode_result(await asyncio.wait_for(runner.request(raw),
                                                              wallets.timeout))
            except TimeoutError:
                wallets.journal.write("retry", w=index, n=nonce, attempts=attempts)
                continue
            except RequestFailed as exc:
                if exc.reason in (txm.STALE_NONCE, txm.BAD_NONCE):
                    result = None
                    reason = exc.reason
                else:  # a refusal that may pass later (overloaded, ...)
                    wallets.journal.write("retry", w=index, n=nonce, attempts=attempts,
                                          reason=exc.reason)
                    await asyncio.sleep(BACKOFF_S)
                    continue
            if result is None:
                ok = wallets.settled(index, nonce, tid, attempts, begin, "refused", None, reason)
            elif result.status == APPLIED:
                ok = wallets.settled(index, nonce, tid, attempts, begin, "applied", result.height)
            else:
                ok = wallets.settled(index, nonce, tid, attempts, begin, "rejected",
                                     result.height, result.reason)
            if not ok:
                return
            break
        nonce += 1


async def sdk_wallet(wallets: Wallets, index: int, client: Any) -> None:
    from phalanx.client.ledger import LedgerError, TxNotAccepted, TxRefused

    nonce = 0
    while not wallets.stopping.is_set():
        raw, tid = wallets.transfer(index, nonce)
        tx = txm.decode_tx(raw)
        assert isinstance(tx, txm.Transfer)
        begin, attempts = time.time(), 0
        while True:
            attempts += 1
            try:
                await client.submit(tx)
                confirmation = await client.wait_committed(tid.hex(), wallets.timeout)
            except (TxRefused, TxNotAccepted) as exc:
                # A stale nonce is "not accepted yet" to the SDK (a lagging replica may
                # say so); on a resend it is our own earlier copy that applied.
                if exc.reason in (txm.STALE_NONCE, txm.BAD_NONCE):
                    ok = wallets.settled(index, nonce, tid, attempts, begin, "refused", None,
                                         exc.reason)
                    if not ok:
                        return
                    break
                wallets.journal.write("retry", w=index, n=nonce, attempts=attempts,
                                      reason=exc.reason)
                await asyncio.sleep(BACKOFF_S)
                continue
            except (TimeoutError, LedgerError) as exc:
                wallets.journal.write("retry", w=index, n=nonce, attempts=attempts,
                                      reason=f"{type(exc).__name__}: {exc}"[:160])
                await asyncio.sleep(BACKOFF_S)
                continue
            status = "applied" if confirmation.status == "committed" else "rejected"
            if not wallets.settled(index, nonce, tid, attempts, begin, status,
                                   confirmation.height, confirmation.reason):
                return
            break
        nonce += 1


async def read_commands(stopping: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = (await reader.readline()).decode().strip()
        if line in ("stop", ""):
            stopping.set()
            return


async def generate(args: argparse.Namespace) -> int:
    from phalanx.client.ledger import LedgerClient
    from phalanx.runtime.cluster_client import open_clients

    config = load(args.config)
    journal = Journal(Path(args.journal))
    wallets = Wallets(args, Ledger(config.genesis).chain_id, journal)
    native = args.wallets - args.sdk_wallets
    mux, runners = await open_clients(config, native, connect_timeout=30.0)
    sdk = LedgerClient(config)
    await sdk.__aenter__()
    flusher = asyncio.create_task(journal.flusher())
    try:
        tasks = [asyncio.create_task(native_wallet(wallets, i, r))
                 for i, r in enumerate(runners)]
        tasks += [asyncio.create_task(sdk_wallet(wallets, native + i, sdk))
                  for i in range(args.sdk_wallets)]
        print(f"ready {args.wallets}", flush=True)
        await read_commands(wallets.stopping)
        # Each wallet finishes its transfer in flight (its fate is then known).
        _, late = await asyncio.wait(tasks, timeout=args.drain)
        for task in late:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        journal.write("end", sent=wallets.sent, unfinished=len(late))
        return 0
    finally:
        flusher.cancel()
        journal.close()
        with contextlib.suppress(Exception):
            await sdk.close()
        await mux.close()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m phalanx.reliability.ledger_load",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="cluster.toml")
    p.add_argument("--seed", type=int, required=True, help="the wallets' seed")
    p.add_argument("--wallets", type=int, required=True)
    p.add_argument("--sdk-wallets", type=int, default=0,
                   help="how many of the wallets use the HTTP API and the SDK")
    p.add_argument("--journal", required=True, help="JSON-lines file of outcomes")
    p.add_argument("--request-timeout", type=float, default=REQUEST_TIMEOUT_S)
    p.add_argument("--drain", type=float, default=60.0,
                   help="seconds the wallets get to settle their last transfer")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.wallets < 2 or not 0 <= args.sdk_wallets <= args.wallets:
        print("error: need at least 2 wallets, and 0 <= sdk-wallets <= wallets", flush=True)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s ledger-load %(message)s")
    return run(generate(args))


if __name__ == "__main__":
    sys.exit(main())
