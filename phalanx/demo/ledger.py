"""``phalanx demo`` (what ``make demo`` runs): a local ledger cluster, a walk through the
SDK, a load of signed transfers through a primary crash, and the checks at the end.

1. four PBFT replica processes run the ledger; a faucet and ``--wallets`` load wallets
   are funded at genesis;
2. with the SDK (HTTP, trusting no single replica): two new wallets, the faucet pays
   alice, alice pays bob, and bob's balance is read with a Merkle proof checked against
   a block header signed by 2f+1 replicas;
3. every load wallet is a client that signs and submits transfers to the others (nonces
   0, 1, 2 ..., one in flight each) for ``--duration`` seconds; halfway through, the
   primary is SIGKILLed: the others change view and carry on;
4. the killed replica restarts from its data directory and catches up; then all four
   must report the same height, state root and block hash, and the verified balances of every
   account must add up to the genesis supply.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import random
import tempfile
import time
from collections import Counter
from typing import Any

from phalanx.client.ledger import LedgerClient, LedgerError, VerifiedAccount
from phalanx.client.wallet import Wallet
from phalanx.cluster import ClusterError, LocalCluster
from phalanx.config import ClusterConfig
from phalanx.crypto.keys import KeyPair
from phalanx.demo.load import LoadLog, view_change
from phalanx.ledger.block import APPLIED
from phalanx.ledger.state import Ledger, decode_result
from phalanx.ledger.tx import encode_tx, sign_transfer
from phalanx.measure.percentile import percentile
from phalanx.runtime import run
from phalanx.runtime.cluster_client import open_clients

FAUCET_FUNDS = 10**12
WALLET_FUNDS = 10**9
REQUEST_TIMEOUT_S = 20.0


def load_wallets(count: int) -> list[KeyPair]:
    """Deterministic key pairs of the demo's load wallets."""
    return [KeyPair.from_seed(hashlib.sha256(b"phalanx-demo-wallet-%d" % i).digest())
            for i in range(count)]


async def _wallet_loop(runner: Any, me: int, wallets: list[KeyPair], chain_id: bytes,
                       stopping: asyncio.Event, log: LoadLog) -> None:
    rng = random.Random(me)
    nonce = 0
    while not stopping.is_set():
        to = wallets[rng.randrange(len(wallets))].public_key
        raw = encode_tx(sign_transfer(wallets[me], chain_id, to, rng.randrange(1, 1000), nonce))
        begin = time.perf_counter()
        try:
            result = await asyncio.wait_for(runner.request(raw), REQUEST_TIMEOUT_S)
        except TimeoutError:
            log.timeouts += 1
            return  # the nonce's fate is unknown: this wallet stops
        except Exception as exc:  # refused at admission (RequestFailed)
            log.reject(getattr(exc, "reason", type(exc).__name__))
            continue
        outcome = decode_result(result)
        if outcome.status != APPLIED:
            log.reject(outcome.reason)
            return
        nonce += 1
        done = time.perf_counter()
        log.completions.append((done, done - begin))


async def _load(cluster: LocalCluster, wallets: list[KeyPair], chain_id: bytes,
                duration: float, console: Any) -> LoadLog:
    mux, runners = await open_clients(cluster.config, len(wallets))
    log = LoadLog()
    stopping = asyncio.Event()
    try:
        log.started = time.perf_counter()
        tasks = [asyncio.create_task(_wallet_loop(r, i, wallets, chain_id, stopping, log))
                 for i, r in enumerate(runners)]
        await asyncio.sleep(duration / 2)
        before = len(log.completions)
        cluster.kill(0)
        log.kill_at = time.perf_counter()
        console.print(f"  t={log.kill_at - log.started:4.1f}s  SIGKILL replica 0 (the primary) "
                      f"after {before} committed transfers", highlight=False)
        await asyncio.sleep(duration / 2)
        stopping.set()
        log.ended = time.perf_counter()
        await asyncio.wait(tasks, timeout=REQUEST_TIMEOUT_S + 5)
        for task in tasks:
            task.cancel()
    finally:
        await mux.close()
    return log


async def _walkthrough(config: ClusterConfig, faucet: Wallet, console: Any) -> bool:
    """The README's story with the SDK: new wallets, two transfers, a verified balance."""
    alice, bob = Wallet.new(), Wallet.new()
    async with LedgerClient(config) as client:
        paid = await client.transfer(faucet, alice.address, 1000)
        console.print(f"  faucet -> alice 1000: {paid.status} in block {paid.height}, "
                      f"replicas {list(paid.replicas)} agree", highlight=False)
        paid = await client.transfer(alice, bob.address, 250)
        console.print(f"  alice -> bob 250: {paid.status} in block {paid.height}, "
                      f"replicas {list(paid.replicas)} agree", highlight=False)
        account = await _certified_account(client, bob.address, paid.height)
    console.print(f"  bob's balance: {account.balance}, Merkle proof checked against block "
                  f"{account.height},\n  whose header replicas {list(account.signers)} signed",
                  highlight=False)
    return account.balance == 250


async def _certified_account(client: LedgerClient, address: bytes, height: int,
                             timeout: float = 20.0) -> VerifiedAccount:
    """The verified account at a certified height >= ``height`` (certificates form a
    moment after the block commits)."""
    deadline = time.monotonic() + timeout
    while True:
        account = await client.account(address)
        if account.height >= height or time.monotonic() > deadline:
            return account
        await asyncio.sleep(0.1)


async def _verified_supply(config: ClusterConfig, addresses: list[bytes], replica: int,
                           timeout: float = 30.0) -> tuple[int, int]:
    """(sum of the verified balances of ``addresses``, the one certified height they were
    all proven at), read from ``replica``; retried until every proof is at one height."""
    deadline = time.monotonic() + timeout
    async with LedgerClient(config) as client:
        while True:
            accounts = []
            for address in addresses:
                accounts.append(await client.account_from(address, replica))
            heights = {a.height for a in accounts}
            if len(heights) == 1:
                return sum(a.balance for a in accounts), heights.pop()
            if time.monotonic() > deadline:
                raise LedgerError(f"proofs at several heights {sorted(heights)}")
            await asyncio.sleep(0.2)


def run_ledger_demo(args: argparse.Namespace) -> int:
    """``phalanx demo``; 0 iff every check passed."""
    from rich.console import Console

    console = Console()
    wallets = load_wallets(args.wallets)
    with tempfile.TemporaryDirectory(prefix="phalanx-demo-") as tmp:
        faucet = Wallet(KeyPair.from_seed(hashlib.sha256(tmp.encode()).digest()))
        genesis = {faucet.address: FAUCET_FUNDS, **{w.public_key: WALLET_FUNDS for w in wallets}}
        with LocalCluster(tmp, 4, app="ledger", genesis=genesis) as cluster:
            try:
                ok = _demo(console, cluster, args, tmp, faucet, wallets, genesis)
            except (ClusterError, LedgerError, TimeoutError) as exc:
                console.print(f"[red]demo FAILED: {exc}[/red]", highlight=False, soft_wrap=True)
                ok = False
    return 0 if ok else 1


def _demo(console: Any, cluster: LocalCluster, args: argparse.Namespace, tmp: str,
          faucet: Wallet, wallets: list[KeyPair], genesis: dict[bytes, int]) -> bool:
    from rich.table import Table

    t0 = time.perf_counter()
    console.print(f"starting 4 pbft replicas running the ledger in {tmp} ...", highlight=False)
    cluster.start()
    config = cluster.config
    console.print(f"  ready in {time.perf_counter() - t0:.1f}s; the faucet and "
                  f"{len(wallets)} load wallets are funded at genesis", highlight=False)
    console.print("the SDK: two new wallets, two transfers, a verified balance")
    story_ok = run(_walkthrough(config, faucet, console))

    console.print(f"load: {len(wallets)} wallets sign and send transfers for "
                  f"{args.duration:g}s, one in flight each", highlight=False)
    chain_id = Ledger(genesis).chain_id
    log = run(_load(cluster, wallets, chain_id, args.duration, console))
    console.print("restarting replica 0 from its data directory ...")
    t_restart = time.perf_counter()
    cluster.restart(0)
    seq, root = cluster.wait_converged(timeout=60.0)
    caught_up = time.perf_counter() - t_restart
    final = {i: cluster.status(i) for i in range(cluster.n)}

    latencies = log.latencies()
    elapsed = log.ended - log.started
    resumed, after = view_change(log)
    table = Table(title="load", show_header=False)
    table.add_column(justify="left")
    table.add_column(justify="right")
    rows = [
        ("wallets", str(len(wallets))),
        ("duration", f"{elapsed:.1f} s"),
        ("committed transfers", str(len(latencies))),
        ("throughput", f"{len(latencies) / elapsed:,.0f} tx/s" if elapsed > 0 else "-"),
        ("latency p50", f"{1000 * percentile(latencies, 50):.1f} ms" if latencies else "-"),
        ("latency p99", f"{1000 * percentile(latencies, 99):.1f} ms" if latencies else "-"),
        ("rejected / timed out", f"{sum(log.rejected.values())} / {log.timeouts}"),
        ("commits resumed after the kill", f"{resumed:.2f} s" if resumed is not None else "never"),
    ]
    for row in rows:
        table.add_row(*row)
    console.print(table)

    table = Table(title=f"after restarting replica 0 (caught up in {caught_up:.1f} s)")
    for column in ("replica", "view", "executed seq", "height", "state root", "block hash",
                   "equal"):
        table.add_column(column)
    # wait_converged saw one block hash on all; a replica differing now is not equal.
    head = Counter(status.get("block_hash") for status in final.values()).most_common(1)[0][0]
    roots_equal = True
    for i, status in sorted(final.items()):
        same = (status.get("executed_seq") == seq and status.get("state_root") == root
                and status.get("block_hash") == head)
        roots_equal &= same
        table.add_row(str(i), str(status.get("view")), str(status.get("executed_seq")),
                      str(status.get("height")), str(status.get("state_root"))[:16] + "...",
                      str(status.get("block_hash"))[:16] + "...",
                      "[green]yes[/green]" if same else "[red]NO[/red]")
    console.print(table)

    # Every unit is somewhere among the genesis accounts, alice and bob: their verified
    # balances (proofs against one 2f+1-signed root) add up to the genesis supply.
    addresses = list(genesis)
    supply, height = run(_verified_supply(config, addresses, replica=1))
    conserved = supply + 1000 == sum(genesis.values())  # alice and bob hold 750 + 250
    console.print(f"supply: verified balances of the {len(addresses)} genesis accounts at "
                  f"certified block {height}\n  + alice's and bob's 1,000 = {supply + 1000:,}"
                  f" (genesis: {sum(genesis.values()):,}) "
                  + ("[green]conserved[/green]" if conserved else "[red]NOT conserved[/red]"),
                  highlight=False)
    checks = {
        "verified balance": story_ok,
        "commits after the view change": after > 0,
        "state roots equal": roots_equal,
        "supply conserved": conserved,
        "no rejected transfer": not log.rejected,
    }
    ok = all(checks.values()) and bool(latencies)
    failed = [name for name, passed in checks.items() if not passed]
    console.print("[green]demo ok[/green]" if ok else f"[red]demo FAILED: {failed}[/red]")
    return ok
