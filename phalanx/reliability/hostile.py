"""Hostile input: malformed and adversarial frames and HTTP requests against a live,
loaded cluster; every unit of garbage must be dropped *and counted*.

The run (``phalanx reliability hostile``):

1. a fresh ledger cluster on real processes and the crash torture's ledger load (its
   acknowledgements show that the cluster keeps committing);
2. one phase per attack (:mod:`phalanx.reliability.wire`,
   :mod:`phalanx.reliability.http_attacks`), ``concurrency`` attackers at once, with a
   share of the frame or request budget. Around each phase every replica's counters are
   read from ``/metrics``; once they stop moving, the phase's growth of the counters
   that attack must raise is compared with what was sent: a shortfall is an
   *uncounted* finding (garbage dropped silently). Meanwhile ``/status`` of every
   replica is sampled once a second (RSS, liveness);
3. findings: a replica that exited, ``core_exceptions`` or ``handler_exceptions``
   growing, an HTTP 5xx (but 503, the API's counted refusal under load: the connection
   cap), anonymous RSS above its baseline by more than ``rss_limit_mib``, a phase in
   which the load committed nothing, an honest ``/status`` unanswered during the
   slow-loris attacks, and every uncounted category.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import re
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable
from collections.abc import Set as AbstractSet
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from phalanx.api.limits import MAX_CONNECTIONS
from phalanx.cluster import LocalCluster
from phalanx.reliability import http_attacks as http
from phalanx.reliability import wallets as wallet_plan
from phalanx.reliability import wire
from phalanx.reliability.checks import Findings, read_journal
from phalanx.reliability.common import (
    LoadProcess,
    percentiles,
    print_findings,
    process_memory,
    run_report,
)
from phalanx.runtime import run

HS = "dropped_hs_"
CLIENT_DROPS = frozenset({
    "dropped_decode", "dropped_bad_bundle", "dropped_unexpected_message",
    "dropped_client_mismatch", "dropped_stale_request", "dropped_request_too_large",
    "dropped_malformed_request", "dropped_bad_authenticator", "dropped_overloaded",
    # The ledger's admission, at the replica a request reaches:
    "dropped_malformed", "dropped_amount_not_positive", "dropped_bad_signature",
    "dropped_stale_nonce", "dropped_nonce_too_far", "dropped_insufficient_funds",
    "dropped_wrong_chain",
})
API = "api_rejected:"
WIRE_SHARES = {  # of the frame budget
    "preauth_garbage": 0.03, "preauth_oversize": 0.01, "hello_fuzz": 0.03,
    "bad_confirm": 0.01, "handshake_replay": 0.005, "break_link": 0.015,
    "auth_replica_only": 0.10, "auth_requests": 0.10, "auth_garbage": 0.70,
}
HTTP_SHARES = {  # of the request budget
    "tx_fuzz": 0.40, "queries": 0.20, "tx_replay": 0.08, "bad_signature": 0.08,
    "oversize": 0.04, "unknown": 0.08, "raw_malformed": 0.04, "rate": 0.08,
    "connection_flood": 0.02,
}
SETTLE_TIMEOUT_S = 20.0
SAMPLE_S = 1.0
_METRIC = re.compile(r'^phalanx_(\w+)\{replica="[^"]*"(?:,type="([^"]*)")?\} (\S+)$')


@dataclass
class HostileSpec:
    workdir: Path
    n: int = 4
    seed: int = 1
    frames: int = 50_000
    http_requests: int = 5_000
    wallets: int = 16
    concurrency: int = 8
    slowloris: int = 200  # connections of each slow-loris attack (handshake, HTTP)
    fat_slowloris: int = 20  # authenticated links holding a partial 16 MiB frame
    partial_mib: float = 1.0  # bytes of it each sends before stalling
    rss_limit_mib: float = 128.0
    # How long the slow-loris connections hold on at most: by default beyond the HTTP
    # head deadline and the client frame deadline (10 s each), so the replicas cut them.
    hold_s: float = 15.0

    def validate(self) -> None:
        if self.n < 4 or self.frames < 0 or self.http_requests < 0 or self.concurrency < 1:
            raise ValueError("need n >= 4, frames and http >= 0, concurrency >= 1")

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["workdir"] = str(self.workdir)
        return doc


def read_counters(cluster: LocalCluster) -> dict[int, dict[str, float]]:
    """Every replica's counters from ``/metrics`` (``dropped_x``, ``api_rejected:y``,
    ``core_exceptions``, ...); a replica that does not answer is left out."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    counters: dict[int, dict[str, float]] = {}
    for r in cluster.config.replicas:
        try:
            with opener.open(f"http://{r.host}:{r.http_port}/metrics", timeout=5) as response:
                text = response.read().decode()
        except OSError:
            continue
        values: dict[str, float] = {}
        for line in text.splitlines():
            match = _METRIC.match(line)
            if match:
                name, label, value = match.groups()
                values[f"{name}:{label}" if label else name] = float(value)
        counters[r.id] = values
    return counters


def total(counters: dict[int, dict[str, float]]) -> dict[str, float]:
    summed: dict[str, float] = {}
    for values in counters.values():
        for name, value in values.items():
            summed[name] = summed.get(name, 0.0) + value
    return summed


class Sampler(threading.Thread):
    """Every replica's resident memory once a second, from ``/proc``: anonymous (what
    must stay bounded) and file-backed (LMDB's memory map: grows with the database and
    is page cache the kernel reclaims; ``/status``'s ``rss_bytes`` counts both)."""

    def __init__(self, cluster: LocalCluster) -> None:
        super().__init__(name="hostile-sampler", daemon=True)
        self.cluster = cluster
        # (time, replica, anonymous bytes, file-backed bytes)
        self.samples: list[tuple[float, int, int, int]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(SAMPLE_S):
            now = time.time()
            for replica, pid in self.cluster.pids.items():
                memory = process_memory(pid)
                if memory is not None:
                    self.samples.append((now, replica, memory["anon"], memory["file"]))

    def rss(self, start: float, end: float, file: bool = False) -> dict[int, int]:
        """The largest anonymous (or file-backed) RSS of each replica in [start, end]."""
        peak: dict[int, int] = {}
        for t, replica, anon, mapped in self.samples:
            if start <= t <= end:
                peak[replica] = max(peak.get(replica, 0), mapped if file else anon)
        return peak


@dataclass
class Phase:
    name: str
    kind: str  # "wire" or "http"
    expected: str  # which counters must grow, in words
    started: float = 0.0
    ended: float = 0.0
    units: int = 0
    frames: int = 0
    messages: int = 0
    connections: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    counted: float = 0.0  # growth of the expected counters
    grown: dict[str, float] = field(default_factory=dict)  # every counter that grew
    rss_peak_mib: dict[int, float] = field(default_factory=dict)  # anonymous
    file_rss_peak_mib: dict[int, float] = field(default_factory=dict)  # LMDB's map
    acks: int = 0
    notes: str = ""


class HostileInput:
    def __init__(self, spec: HostileSpec, say: Any = print) -> None:
        spec.validate()
        self.spec = spec
        self.say = say
        self.findings = Findings()
        self.phases: list[Phase] = []

    def run(self) -> dict[str, Any]:
        spec = self.spec
        started = time.time()
        cluster = LocalCluster(spec.workdir / "cluster", spec.n, app="ledger",
                               genesis=wallet_plan.genesis(spec.seed, spec.wallets))
        load: LoadProcess | None = None
        sampler = Sampler(cluster)
        try:
            cluster.start()
            load = LoadProcess(cluster.config_path, spec.workdir / "journal.jsonl",
                               # Native wallets only: the SDK's polls of pending txs
                               # would raise api_rejected:unknown_tx in the background.
                               seed=spec.seed, wallets=spec.wallets, sdk_wallets=0,
                               log=spec.workdir / "cluster" / "logs" / "load.log")
            load.wait_ready()
            sampler.start()
            time.sleep(3.0)  # a baseline: the load alone
            baseline = sampler.rss(started, time.time())
            before = total(read_counters(cluster))
            self.say(f"hostile input: n={spec.n}, {spec.frames:,} frames, "
                     f"{spec.http_requests:,} HTTP requests, {spec.concurrency} attackers; "
                     f"work dir {spec.workdir}")
            run(self._attacks(cluster, load))
            after = total(read_counters(cluster))
            sampler.stopping.set()
            sampler.join()
            code = load.stop()
            if code != 0:
                self.findings.add("load_died", f"the load ended with {code}")
            record = read_journal(load.journal, spec.wallets)
            for p in self.phases:
                window = (p.started, p.ended + SAMPLE_S)
                p.rss_peak_mib = {r: round(v / (1 << 20), 1)
                                  for r, v in sampler.rss(*window).items()}
                p.file_rss_peak_mib = {r: round(v / (1 << 20), 1)
                                       for r, v in sampler.rss(*window, file=True).items()}
            self._judge(cluster, baseline, before, after, record)
            alive = [cluster.alive(i) for i in range(cluster.n)]
        finally:
            sampler.stopping.set()
            if load is not None:
                load.kill()
            cluster.close()
        return self._report(started, baseline, sampler, record, alive)

    # -- the phases ---------------------------------------------------------------------

    async def _attacks(self, cluster: LocalCluster, load: LoadProcess) -> None:
        spec = self.spec
        ctx = wire.WireContext.make(cluster.config, spec.seed)
        web = http.HttpContext(cluster.config, ctx.rng, spec.seed, spec.wallets)
        await web.open()
        committed = self._committed_reader(load)
        try:
            wire_attacks: dict[str, Callable[[int], Awaitable[wire.Sent]]] = {
                name: functools.partial(getattr(wire, name), ctx) for name in WIRE_SHARES
            }
            expected = {
                "preauth_garbage": ({HS}, "dropped_hs_*"),
                "preauth_oversize": ({"dropped_hs_malformed"}, "dropped_hs_malformed"),
                "hello_fuzz": ({HS}, "dropped_hs_*"),
                "bad_confirm": ({"dropped_hs_bad_mac"}, "dropped_hs_bad_mac"),
                "handshake_replay": ({"dropped_hs_bad_mac"}, "dropped_hs_bad_mac"),
                "break_link": ({"dropped_bad_mac", "dropped_frame_too_large",
                                "dropped_truncated_frame"}, "bad_mac|frame_too_large|"
                                                            "truncated_frame"),
                # Fields out of the wire schema's ranges fail decoding before the core
                # sees them (a negative view, say): then "decode".
                "auth_replica_only": ({"dropped_unexpected_message", "dropped_decode"},
                                      "unexpected_message|decode"),
                "auth_requests": (CLIENT_DROPS, "a client-message drop reason"),
                "auth_garbage": (CLIENT_DROPS, "a client-message drop reason"),
            }
            for name, share in WIRE_SHARES.items():
                budget = max(1, round(spec.frames * share))
                counters, words = expected[name]
                await self._phase(cluster, name, "wire", words, counters,
                                  wire_attacks[name], budget)
            await self._phase(
                cluster, "slowloris_handshake", "wire", "dropped_hs_timeout",
                {"dropped_hs_timeout"},
                lambda units: wire.slowloris_handshake(ctx, units), spec.slowloris, split=False)
            await self._phase(
                cluster, "fat_slowloris", "wire", "frame_timeout|truncated_frame",
                {"dropped_frame_timeout", "dropped_truncated_frame"},
                lambda units: wire.slowloris_authenticated(
                    ctx, units, int(spec.partial_mib * (1 << 20)), hold_s=spec.hold_s),
                spec.fat_slowloris, split=False)
            http_attacks: dict[str, Callable[[int], Awaitable[http.HttpSent]]] = {
                "tx_fuzz": lambda u: http.tx_fuzz(web, u),
                "queries": lambda u: http.queries(web, u),
                "tx_replay": lambda u: http.tx_replay(web, u, committed),
                "bad_signature": lambda u: http.bad_signature(web, u, committed),
                "oversize": lambda u: http.oversize(web, u),
                "unknown": lambda u: http.unknown(web, u),
                "raw_malformed": lambda u: http.raw_malformed(web, u),
                "rate": lambda u: http.rate(web, u),
                "connection_flood": lambda u: http.connection_flood(web, u, MAX_CONNECTIONS),
            }
            for name, share in HTTP_SHARES.items():
                budget = max(1, round(spec.http_requests * share))
                if name == "rate":  # beyond one address's burst (400), or nothing is refused
                    budget = max(budget, 1000)
                await self._phase(cluster, name, "http", "api_rejected{type=*}", {API},
                                  http_attacks[name], budget,
                                  split=name not in ("rate", "connection_flood"))
            await self._slowloris_http(cluster, web)
        finally:
            await web.close()

    def _committed_reader(self, load: LoadProcess) -> Callable[[int], int]:
        """How many transfers of a wallet the load has seen acknowledged so far (from its
        journal, re-read at most once a second)."""
        cache: dict[str, Any] = {"at": 0.0, "next": [0] * self.spec.wallets}

        def committed(wallet: int) -> int:
            if time.monotonic() - cache["at"] > 1.0:
                record = read_journal(load.journal, self.spec.wallets)
                cache["next"] = [record.last_acked(w) + 1 for w in range(self.spec.wallets)]
                cache["at"] = time.monotonic()
            return int(cache["next"][wallet])

        return committed

    async def _phase(self, cluster: LocalCluster, name: str, kind: str, words: str,
                     counters: AbstractSet[str],
                     attack: Callable[[int], Awaitable[Any]], units: int,
                     split: bool = True) -> Phase:
        phase = Phase(name, kind, words)
        before = await asyncio.to_thread(lambda: total(read_counters(cluster)))
        phase.started = time.time()
        workers = self.spec.concurrency if split else 1
        shares = [units // workers + (1 if i < units % workers else 0) for i in range(workers)]
        results = await asyncio.gather(*(attack(s) for s in shares if s > 0),
                                       return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                phase.notes += f"attacker error: {type(result).__name__}: {result}; "
            elif isinstance(result, wire.Sent):
                phase.units += result.units
                phase.frames += result.frames
                phase.messages += result.messages
                phase.connections += result.connections
            else:
                phase.units += result.units
                for status, count in result.statuses.items():
                    phase.statuses[status] = phase.statuses.get(status, 0) + count
        after = await asyncio.to_thread(self._settled_counters, cluster)
        phase.ended = time.time()
        phase.grown = {k: v - before.get(k, 0.0) for k, v in after.items()
                       if v - before.get(k, 0.0) > 0 and _is_counter(k)}
        phase.counted = sum(v for k, v in phase.grown.items()
                            if k in counters or any(k.startswith(p) for p in counters
                                                    if p.endswith(("_", ":"))))
        self.phases.append(phase)
        self.say(self._describe(phase))
        return phase

    def _settled_counters(self, cluster: LocalCluster) -> dict[str, float]:
        """The counters once they stopped moving (what is sent is processed by then)."""
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        previous = None
        while True:
            time.sleep(0.3)
            now = total(read_counters(cluster))
            drops = {k: v for k, v in now.items() if k.startswith(("dropped_", API))}
            if drops == previous or time.monotonic() > deadline:
                return now
            previous = drops

    async def _slowloris_http(self, cluster: LocalCluster, web: http.HttpContext) -> None:
        """Slow-loris on the HTTP ports while an honest client polls /status."""
        import aiohttp

        info = cluster.config.replica(0)
        url = f"http://{info.host}:{info.http_port}/status"
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout, trust_env=False) as honest:

            async def probe() -> float | None:
                begin = time.perf_counter()
                try:
                    async with honest.get(url) as response:
                        await response.read()
                        return time.perf_counter() - begin if response.status == 200 else None
                except (aiohttp.ClientError, TimeoutError):
                    return None

            before = await asyncio.to_thread(lambda: total(read_counters(cluster)))
            phase = Phase("slowloris_http", "http", "api_rejected{type=header_timeout|"
                                                    "incomplete_request}")
            phase.started = time.time()
            sent, probes = await http.slowloris(web, self.spec.slowloris, self.spec.hold_s,
                                                probe=probe)
            phase.ended = time.time()
            after = await asyncio.to_thread(self._settled_counters, cluster)
            phase.units, phase.statuses = sent.units, sent.statuses
            phase.grown = {k: v - before.get(k, 0.0) for k, v in after.items()
                           if v - before.get(k, 0.0) > 0 and _is_counter(k)}
            phase.counted = sum(v for k, v in phase.grown.items() if k.startswith(API))
            answered = [p for p in probes if p is not None]
            phase.notes = (f"honest /status during the attack: {len(answered)}/{len(probes)} "
                           f"answered, slowest {max(answered, default=0):.3f} s; "
                           f"{sent.statuses.get(0, 0)} of {sent.units} slow connections "
                           f"still open when they gave up")
            if len(answered) < len(probes):
                self.findings.add("unavailable", f"slowloris_http: honest /status failed "
                                  f"{len(probes) - len(answered)} of {len(probes)} times")
            self.phases.append(phase)
            self.say(self._describe(phase))

    def _describe(self, p: Phase) -> str:
        sent = (f"{p.frames:,} frames, {p.messages:,} messages, {p.connections:,} connections"
                if p.kind == "wire" else
                f"{p.units:,} requests, statuses {dict(sorted(p.statuses.items()))}")
        return (f"{p.name:20s} {sent}; counted {p.counted:,.0f} of {p.units:,} units "
                f"({p.expected}) in {p.ended - p.started:.1f} s")

    # -- the verdict --------------------------------------------------------------------

    def _judge(self, cluster: LocalCluster, baseline: dict[int, int],
               before: dict[str, float], after: dict[str, float], record: Any) -> None:
        for i in range(cluster.n):
            if not cluster.alive(i):
                self.findings.add("crashed", f"replica {i} exited with {cluster.returncode(i)}")
        for name in ("core_exceptions", "handler_exceptions"):
            grew = after.get(name, 0.0) - before.get(name, 0.0)
            if grew > 0:
                self.findings.add(name, f"{name} grew by {grew:.0f} during the attacks")
        times = sorted(record.ack_times)
        for p in self.phases:
            p.acks = bisect.bisect_left(times, p.ended) - bisect.bisect_left(times, p.started)
            if p.ended - p.started >= 2.0 and p.acks == 0:
                self.findings.add("stalled", f"{p.name}: the load committed nothing in "
                                  f"{p.ended - p.started:.1f} s")
            server_errors = sum(c for s, c in p.statuses.items() if _server_error(s))
            if server_errors:
                self.findings.add("http_5xx", f"{p.name}: {server_errors} answers >= 500: "
                                  f"{p.statuses}")
            refused = p.units if p.kind == "wire" else sum(
                c for s, c in p.statuses.items() if 400 <= s < 500 or s in (0, 503))
            if p.counted < refused:
                self.findings.add("uncounted", f"{p.name}: {refused:,} units refused, "
                                  f"counters rose by {p.counted:,.0f} ({p.expected})")
        limit = self.spec.rss_limit_mib * (1 << 20)
        for p in self.phases:
            for replica, rss in p.rss_peak_mib.items():
                if rss * (1 << 20) - baseline.get(replica, 0) > limit:
                    self.findings.add("memory", f"{p.name}: replica {replica} at {rss:.0f} "
                                      f"MiB, baseline {baseline.get(replica, 0) >> 20} MiB")

    def _report(self, started: float, baseline: dict[int, int], sampler: Sampler,
                record: Any, alive: list[bool]) -> dict[str, Any]:
        wire_phases = [p for p in self.phases if p.kind == "wire"]
        http_phases = [p for p in self.phases if p.kind == "http"]
        anon = [a for _, _, a, _ in sampler.samples]
        mapped = [m for _, _, _, m in sampler.samples]
        return {
            "harness": "hostile",
            "spec": self.spec.to_json(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
            "duration_s": round(time.time() - started, 1),
            "ok": not self.findings,
            "findings": self.findings.to_json(),
            "totals": {
                "frames": sum(p.frames for p in wire_phases),
                "messages": sum(p.messages for p in wire_phases),
                "connections": sum(p.connections for p in wire_phases),
                "http_requests": sum(p.units for p in http_phases),
                "http_5xx": sum(c for p in http_phases for s, c in p.statuses.items()
                                if _server_error(s)),
                "replicas_alive_at_end": sum(alive),
            },
            "rss_mib": {
                "anonymous_baseline": {r: round(v / (1 << 20), 1) for r, v in baseline.items()},
                "anonymous_peak": round(max(anon, default=0) / (1 << 20), 1),
                "file_backed_peak": round(max(mapped, default=0) / (1 << 20), 1),
                "samples": len(anon),
            },
            "load": {"acknowledged": record.acks,
                     "latency_s": percentiles(record.latencies)},
            "phases": [asdict(p) for p in self.phases],
        }


def _server_error(status: int) -> bool:
    """A 5xx that is a failure, not a refusal: 503 is the API's answer to load (the
    connection cap, a full gateway queue), counted in api_rejected like a 4xx."""
    return status >= 500 and status != 503


def _is_counter(name: str) -> bool:
    return name.startswith(("dropped_", API)) or name in ("core_exceptions",
                                                          "handler_exceptions")


def summarize(report: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    table = Table(title=f"hostile input: {report['totals']['frames']:,} frames, "
                        f"{report['totals']['http_requests']:,} HTTP requests in "
                        f"{report['duration_s']:.0f} s")
    for column in ("attack", "sent", "units", "counted", "peak anon RSS MiB", "acks"):
        table.add_column(column, justify="right" if column != "attack" else "left")
    for p in report["phases"]:
        sent = (f"{p['frames']:,} fr / {p['connections']:,} conn" if p["kind"] == "wire"
                else ", ".join(f"{s}:{c}" for s, c in sorted(p["statuses"].items())))
        peak = max(p["rss_peak_mib"].values(), default=0)
        mark = "" if p["counted"] >= p["units"] or p["kind"] == "http" else " !"
        table.add_row(p["name"], sent, f"{p['units']:,}", f"{p['counted']:,.0f}{mark}",
                      f"{peak:.0f}", str(p["acks"]))
    console.print(table)
    if report["ok"]:
        console.print("[green]hostile input ok: no crash, no 5xx, memory bounded, every "
                      "drop counted, the load kept committing[/green]")
    else:
        console.print("[red]hostile input: findings[/red]")
        print_findings(report["findings"], console, most=8)


def run_hostile_command(spec: HostileSpec, json_path: str | None, console: Any) -> int:
    """``phalanx reliability hostile``: 0 iff every check passed (1 with findings)."""
    return run_report("hostile input", lambda say: HostileInput(spec, say=say).run(),
                      json_path, console, summarize)
