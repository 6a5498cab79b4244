"""Hostile HTTP clients of the replicas' API: the HTTP half of the hostile-input harness.

Each attack sends ``units`` requests (or opens ``units`` connections) to the replicas in
turn and returns an :class:`HttpSent` tally of the answers by status. Requests come from
many loopback source addresses (127.0.0.2 and up), as from many hosts: the API's rate
limit is per client address, and a single address would see nothing but 429 after its
first few hundred requests (that limit is an attack of its own: ``rate``).

- ``tx_fuzz``: ``POST /tx`` bodies from a grammar — a transfer with a field missing,
  extra, of the wrong type, with bad hex, out of range — plus non-JSON, non-object and
  non-UTF-8 bodies;
- ``tx_replay``: transfers the load already committed, posted again;
- ``bad_signature``: a funded wallet's transfer, admissible but for its signature;
- ``queries``: ``GET /tx``, ``/account``, ``/block``, ``/log`` with malformed or unknown
  arguments;
- ``oversize``: bodies above the 2 KiB limit (announced or chunked);
- ``unknown``: paths and methods the API does not have;
- ``raw_malformed``: bytes that are not HTTP at all, broken request lines and headers,
  oversized header lines, bad chunked encoding (over a raw socket);
- ``slowloris``: connections that send a request's head a byte at a time and never
  finish, all at once (the server must cut them: 408);
- ``connection_flood``: ``units`` connections beyond one replica's connection cap, all
  open at once (the ones beyond the cap must get 503, the others are served);
- ``rate``: one address far above its rate limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from phalanx.config import ClusterConfig
from phalanx.ledger.state import Ledger
from phalanx.reliability import wallets as plan

SOURCE_ADDRESSES = 200  # 127.0.0.2 .. : as many hosts, each with its own rate bucket


@dataclass
class HttpSent:
    """Requests (or connections) sent, and the answers by HTTP status (0: none, the
    connection was closed or timed out)."""

    units: int = 0
    statuses: dict[int, int] = field(default_factory=dict)

    def answer(self, status: int) -> None:
        self.units += 1
        self.statuses[status] = self.statuses.get(status, 0) + 1

    def add(self, other: HttpSent) -> None:
        self.units += other.units
        for status, count in other.statuses.items():
            self.statuses[status] = self.statuses.get(status, 0) + count

    def count(self, low: int, high: int) -> int:
        return sum(c for s, c in self.statuses.items() if low <= s < high)


@dataclass
class HttpContext:
    config: ClusterConfig
    rng: random.Random
    seed: int  # the load's wallets (to replay their transfers)
    wallets: int
    sessions: list[aiohttp.ClientSession] = field(default_factory=list)
    next_target: int = 0

    @property
    def chain_id(self) -> bytes:
        return Ledger(self.config.genesis).chain_id

    async def open(self) -> None:
        timeout = aiohttp.ClientTimeout(total=10)
        for i in range(SOURCE_ADDRESSES):
            connector = aiohttp.TCPConnector(local_addr=(f"127.0.0.{2 + i}", 0), limit=8)
            self.sessions.append(aiohttp.ClientSession(connector=connector, timeout=timeout,
                                                       trust_env=False))

    async def close(self) -> None:
        for session in self.sessions:
            await session.close()
        self.sessions.clear()

    def url(self, path: str) -> str:
        self.next_target = (self.next_target + 1) % self.config.n
        info = self.config.replica(self.next_target)
        return f"http://{info.host}:{info.http_port}{path}"

    def session(self) -> aiohttp.ClientSession:
        return self.rng.choice(self.sessions)

    async def send(self, method: str, path: str, sent: HttpSent, **kwargs: Any) -> None:
        try:
            async with self.session().request(method, self.url(path), **kwargs) as response:
                await response.read()
                sent.answer(response.status)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            sent.answer(0)


def _transfer_json(ctx: HttpContext, wallet: int, nonce: int) -> dict[str, Any]:
    raw, _ = plan.signed_transfer(ctx.seed, ctx.wallets, ctx.chain_id, wallet, nonce)
    from phalanx.api.ledger import tx_to_json
    from phalanx.ledger.tx import decode_tx

    tx = decode_tx(raw)
    assert not isinstance(tx, str), tx  # the plan's own signed transfer decodes
    return tx_to_json(tx)


def _fuzzed_body(ctx: HttpContext) -> bytes:
    rng = ctx.rng
    body: Any = _transfer_json(ctx, rng.randrange(ctx.wallets), rng.randrange(1 << 20))
    choice = rng.randrange(10)
    if choice == 0:
        del body[rng.choice(sorted(body))]
    elif choice == 1:
        body[rng.choice(("extra", "from ", "", "\u0000"))] = rng.randrange(10)
    elif choice == 2:
        body[rng.choice(sorted(body))] = rng.choice(
            (None, True, 1.5, "12", [], {}, -1, 1 << 70, "zz" * 32, "ab"))
    elif choice == 3:
        body["amount"] = rng.choice((0, -5, 1 << 64, 1 << 80))
    elif choice == 4:
        key = rng.choice(("from", "to", "signature"))
        body[key] = body[key][: rng.randrange(len(body[key]))]
    elif choice == 5:
        body = rng.choice(([], "transfer", 7, None, [body], {"tx": body}))
    elif choice == 6:
        return rng.randbytes(rng.randrange(1, 500))
    elif choice == 7:
        return b'{"from": "\xff\xfe", "to": 1}'
    elif choice == 8:
        text = json.dumps(body)
        return text[: rng.randrange(len(text))].encode()
    else:
        body["amount"] = rng.randrange(1, 1000)  # now the signature is wrong
    return json.dumps(body).encode()


async def tx_fuzz(ctx: HttpContext, units: int) -> HttpSent:
    sent = HttpSent()
    for _ in range(units):
        await ctx.send("POST", "/tx", sent, data=_fuzzed_body(ctx),
                       headers={"Content-Type": "application/json"})
    return sent


async def tx_replay(ctx: HttpContext, units: int, committed: Callable[[int], int]) -> HttpSent:
    """``committed(wallet)``: how many of its transfers are known to be committed."""
    sent = HttpSent()
    for _ in range(units):
        wallet = ctx.rng.randrange(ctx.wallets)
        done = committed(wallet)
        if done == 0:
            continue
        body = _transfer_json(ctx, wallet, ctx.rng.randrange(done))
        await ctx.send("POST", "/tx", sent, json=body)
    return sent


async def bad_signature(ctx: HttpContext, units: int, committed: Callable[[int], int]
                        ) -> HttpSent:
    sent = HttpSent()
    for _ in range(units):
        wallet = ctx.rng.randrange(ctx.wallets)
        # A nonce ahead of the wallet's (admissible), a signature that is not its own.
        body = _transfer_json(ctx, wallet, committed(wallet) + 100 + ctx.rng.randrange(100))
        body["signature"] = ctx.rng.randbytes(64).hex()
        await ctx.send("POST", "/tx", sent, json=body)
    return sent


def _garbage_segment(rng: random.Random) -> str:
    return rng.choice(("", "x", "-1", "0" * 63, "g" * 64, "00" * 32, "ff" * 33, "%00",
                       "..%2f..%2fetc%2fpasswd", str(1 << 70), "1e5", " ", "\u00e9",
                       rng.randbytes(32).hex(), rng.randbytes(8).hex()))


async def queries(ctx: HttpContext, units: int) -> HttpSent:
    sent = HttpSent()
    for _ in range(units):
        segment = _garbage_segment(ctx.rng)
        path = ctx.rng.choice(("/tx/", "/account/", "/block/", "/log?first=", "/log?last="))
        url = path + segment
        if path.startswith("/log"):
            url += ctx.rng.choice(("", "&last=0", "&first=5&last=1", "&last=" + str(1 << 40)))
        await ctx.send("GET", url, sent)
    return sent


async def oversize(ctx: HttpContext, units: int) -> HttpSent:
    sent = HttpSent()
    for index in range(units):
        size = ctx.rng.choice((2049, 4096, 65_537, 1 << 20))
        body = b"{" + b" " * (size - 2) + b"}"
        if index % 2:
            async def chunks(data: bytes = body) -> Any:
                for at in range(0, len(data), 4096):
                    yield data[at:at + 4096]
            await ctx.send("POST", "/tx", sent, data=chunks())
        else:
            await ctx.send("POST", "/tx", sent, data=body)
    return sent


async def unknown(ctx: HttpContext, units: int) -> HttpSent:
    sent = HttpSent()
    for _ in range(units):
        method = ctx.rng.choice(("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"))
        path = ctx.rng.choice(("/", "/admin", "/tx", "/status/x", "/metrics/../status",
                               "/" + _garbage_segment(ctx.rng)))
        if method == "POST" and path == "/tx":
            method = "PUT"
        await ctx.send(method, path, sent)
    return sent


RAW_REQUESTS = (
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(40),  # a TLS hello
    b"GET / HTTP/9.9\r\n\r\n",
    b"GARBAGE\r\n\r\n",
    b"GET /status HTTP/1.1\r\nNo colon here\r\n\r\n",
    b"GET /status HTTP/1.1\r\nX: " + b"a" * 20_000 + b"\r\n\r\n",
    b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\n\r\n",
    b"POST /tx HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    b"POST /tx HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
    b"POST /tx HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
    b"GET /status HTTP/1.1\r\nHost: a\x00b\r\n\r\n",
    b"\r\n\r\n\r\n",
)


async def _raw(ctx: HttpContext, data: bytes) -> int:
    """Send ``data`` on a fresh connection; the status the server answers (0: none)."""
    info = ctx.config.replica(ctx.rng.randrange(ctx.config.n))
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(info.host, info.http_port), 5)
    except (OSError, TimeoutError):
        return 0
    return await _status_of(reader, writer, data, 5)


async def _status_of(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     request: bytes, timeout: float) -> int:
    """Write ``request``, read the status code of the answer (0: none) and hang up."""
    try:
        writer.write(request)
        line = await asyncio.wait_for(reader.readline(), timeout)
        parts = line.split()
        return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    except (OSError, TimeoutError, ValueError):
        return 0
    finally:
        writer.close()


async def raw_malformed(ctx: HttpContext, units: int) -> HttpSent:
    sent = HttpSent()
    for _ in range(units):
        data = ctx.rng.choice(RAW_REQUESTS)
        if ctx.rng.random() < 0.3:
            data = ctx.rng.randbytes(ctx.rng.randrange(1, 400)) + b"\r\n\r\n"
        sent.answer(await _raw(ctx, data))
    return sent


async def slowloris(ctx: HttpContext, units: int, hold_s: float,
                    probe: Callable[[], Awaitable[float | None]] | None = None
                    ) -> tuple[HttpSent, list[float | None]]:
    """``units`` connections at once, each trickling a request's head a byte per 0.5 s
    until the server answers or closes, for at most ``hold_s`` seconds; meanwhile
    ``probe()`` (an honest /status request, its latency) runs once a second. Returns the
    statuses (the server's answer, e.g. 408; 0: none — it kept waiting, or closed
    silently) and the probes."""
    head = b"POST /tx HTTP/1.1\r\nHost: replica\r\nContent-Type: application/json\r\n"

    async def one(index: int) -> int:
        info = ctx.config.replica(index % ctx.config.n)
        try:
            reader, writer = await asyncio.open_connection(info.host, info.http_port)
        except OSError:
            return -1
        answer = asyncio.create_task(reader.readline())  # the server's cut, if it comes
        try:
            loop = asyncio.get_running_loop()
            end = loop.time() + hold_s
            at = 0
            while loop.time() < end and not answer.done():
                writer.write(head[at % len(head):at % len(head) + 1])
                at += 1
                await asyncio.wait([answer], timeout=0.5)
            if not answer.done():
                return 0
            parts = answer.result().split()
            return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        except (OSError, ValueError):
            return 0
        finally:
            answer.cancel()
            writer.close()

    probes: list[float | None] = []

    async def probing() -> None:
        while True:
            probes.append(await probe() if probe is not None else None)
            await asyncio.sleep(1.0)

    prober = asyncio.create_task(probing())
    try:
        results = await asyncio.gather(*(one(i) for i in range(units)))
    finally:
        prober.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await prober
    sent = HttpSent()
    for status in results:
        sent.answer(status)
    return sent, probes


async def connection_flood(ctx: HttpContext, units: int, cap: int) -> HttpSent:
    """``cap + units`` connections to one replica at once, each asking ``GET /status``
    once all are open: at least ``units`` of them must be refused (503), the others
    answered."""
    info = ctx.config.replica(ctx.rng.randrange(ctx.config.n))
    request = b"GET /status HTTP/1.1\r\nHost: replica\r\nConnection: close\r\n\r\n"
    opened = await asyncio.gather(
        *(asyncio.open_connection(info.host, info.http_port,
                                  local_addr=(f"127.0.0.{2 + i % SOURCE_ADDRESSES}", 0))
          for i in range(cap + units)),
        return_exceptions=True)
    await asyncio.sleep(0.5)  # all are in: the cap is full

    async def ask(connection: Any) -> int:
        if isinstance(connection, BaseException):
            return 0
        reader, writer = connection
        return await _status_of(reader, writer, request, 10)

    sent = HttpSent()
    for status in await asyncio.gather(*(ask(c) for c in opened)):
        sent.answer(status)
    return sent


async def rate(ctx: HttpContext, units: int) -> HttpSent:
    """One address, as fast as it can: beyond the burst every answer must be 429."""
    sent = HttpSent()
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout, trust_env=False) as session:
        info = ctx.config.replica(ctx.rng.randrange(ctx.config.n))
        url = f"http://{info.host}:{info.http_port}/block/1"

        async def one() -> None:
            try:
                async with session.get(url) as response:
                    await response.read()
                    sent.answer(response.status)
            except (aiohttp.ClientError, TimeoutError):
                sent.answer(0)

        for start in range(0, units, 50):
            await asyncio.gather(*(one() for _ in range(min(50, units - start))))
    return sent
