"""``phalanx calibrate``: measure this machine's CPU costs of a protocol, as a cost model.

Three measurements, each of the real code:

1. **Handlers.** N replica cores and closed-loop client cores, built exactly as
   ``phalanx node`` builds them (real Ed25519 keys, MAC authenticators, the KV store
   behind the accounting's timer), exchange real encoded messages through an in-process
   FIFO. Every decode+handler call, every encoding and every ``apply`` is timed
   (``perf_counter_ns``). Per message type a least-squares fit gives ``a + b * bytes``;
   one shared coefficient gives the per-executed-request host work. One outlier pass
   drops samples far above the fit (the scheduler preempting us on a shared host).
2. **Transport.** Two processes, each with a real :class:`~phalanx.runtime.transport.Transport`,
   send framed, MAC'd payloads of two sizes over loopback TCP in bursts of
   :data:`BURST` per loop turn; each side's process CPU per frame gives the send and
   receive costs (system calls included) as ``a + b * bytes``.
3. **Crypto.** Ed25519 sign and verify, HMAC-SHA256 of a digest, SHA-256 per byte.

The result is a :class:`~phalanx.sim.costmodel.CostModel` (JSON), the input of
``phalanx sim --cost-model``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import math
import multiprocessing
import os
import platform
import resource
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
import numpy as np

from phalanx.core.address import Address
from phalanx.core.effects import Broadcast, CancelTimer, Completed, Send, SetTimer, ToClient
from phalanx.core.messages import encode
from phalanx.crypto.ed25519 import Ed25519ClientCrypto, Ed25519NodeCrypto
from phalanx.crypto.keys import KeyPair
from phalanx.measure.accounting import Accounting, timed_factory
from phalanx.protocols.registry import protocol as protocol_spec
from phalanx.sim.costmodel import CostModel, cost_ns
from phalanx.statemachine.kv import KVStore, encode_put

BURST = 4
"""Frames written per loop turn in the transport measurement (the bench coalesces a few
frames per write under load)."""

Sample = tuple[str, int, int, int]
"""(message type, wire bytes, executed ops in the step, nanoseconds)."""


# -- 1. handlers ---------------------------------------------------------------------------


class _Harness:
    """Replica and client cores wired through one FIFO of encoded messages."""

    def __init__(self, protocol: str, n: int, clients: int, payload: int,
                 options: dict[str, Any]) -> None:
        spec = protocol_spec(protocol)
        self.n = n
        quorums = spec.quorums(n)
        keys = [KeyPair.generate() for _ in range(n)]
        public = [k.public_key for k in keys]
        self.accounting = Accounting()
        make_app = timed_factory(KVStore, self.accounting)
        self.replicas = [
            spec.make_replica(i, quorums, Ed25519NodeCrypto(i, keys[i], public), make_app, options)
            for i in range(n)
        ]
        self.clients = []
        for _ in range(clients):
            crypto = Ed25519ClientCrypto(KeyPair.generate(), public)
            self.clients.append(spec.make_client(crypto, quorums, 5.0))
        self.by_id = {c.client_id: c for c in self.clients}
        # The harness runs one process per replica (a protocol's front processes).
        self.addresses = [Address(i, spec.front_role) for i in range(n)]
        self.decoder = spec.decoder()
        self.queue: deque[tuple[Any, Any, bytes]] = deque()  # (dst, src, wire)
        self.value = os.urandom(payload)
        self.counter = 0
        self.done = 0
        self.handler: list[Sample] = []
        self.client_handler: list[Sample] = []
        self.submit: list[int] = []
        self.encode: list[tuple[str, int, int]] = []
        # Armed timers per replica (name -> due, perf_counter seconds: the harness is
        # one CPU doing every node's work, so its clock is real time) and the firings.
        self.timers: list[dict[str, float]] = [{} for _ in range(n)]
        self.timer_ns: list[tuple[str, int]] = []

    def op(self, client_index: int) -> bytes:
        self.counter += 1
        key = f"c{client_index}-k{self.counter % 64}".encode()
        return encode_put(key, self.counter.to_bytes(8, "big") + self.value[8:])

    def run(self, requests: int, budget_s: float, due_timers: bool = False) -> None:
        """Deliver until ``requests`` completed. Armed timers fire when nothing else is
        queued and, with ``due_timers``, also as soon as they are due (the main
        measurement leaves that off: a late view-change clock would disturb it)."""
        for i, r in enumerate(self.replicas):
            self._replica_effects(i, r.start())
        for index, client in enumerate(self.clients):
            self._submit(index, client)
        deadline = time.monotonic() + budget_s
        while self.done < requests and time.monotonic() < deadline:
            if (due_timers or not self.queue) and self._fire_next_timer(idle=not self.queue):
                continue
            if not self.queue:
                break
            dst, src, wire = self.queue.popleft()
            if isinstance(dst, int):
                self._to_replica(dst, src, wire)
            else:
                self._to_client(dst, src, wire)

    def _submit(self, index: int, client: Any) -> None:
        start = time.perf_counter_ns()
        _, effects = client.submit(self.op(index))
        self.submit.append(time.perf_counter_ns() - start)
        self._client_effects(client, effects)

    def _to_replica(self, dst: int, src: Any, wire: bytes) -> None:
        core = self.replicas[dst]
        acct = self.accounting
        exec_before, ops_before = acct.exec_ns, acct.exec_ops
        start = time.perf_counter_ns()
        msg = self.decoder.decode(wire)
        if isinstance(src, int):
            effects = core.on_message(self.addresses[src], msg)
        else:
            effects = core.on_client_message(src, msg)
        spent = time.perf_counter_ns() - start - (acct.exec_ns - exec_before)
        self.handler.append((type(msg).__name__, len(wire), acct.exec_ops - ops_before, spent))
        self._replica_effects(dst, effects)

    def _fire_next_timer(self, idle: bool) -> bool:
        """Fire the earliest armed timer if it is due (or, ``idle``, skip to it)."""
        armed = [(due, r, name) for r, timers in enumerate(self.timers)
                 for name, due in timers.items()]
        if not armed:
            return False
        due, replica, name = min(armed)
        if not idle and due > time.perf_counter():
            return False
        del self.timers[replica][name]
        acct = self.accounting
        exec_before = acct.exec_ns
        start = time.perf_counter_ns()
        effects = self.replicas[replica].on_timer(name)
        self.timer_ns.append((name, time.perf_counter_ns() - start - (acct.exec_ns - exec_before)))
        self._replica_effects(replica, effects)
        return True

    def _to_client(self, dst: bytes, src: int, wire: bytes) -> None:
        client = self.by_id[dst]
        start = time.perf_counter_ns()
        msg = self.decoder.decode(wire)
        effects = client.on_message(src, msg)
        self.client_handler.append((type(msg).__name__, len(wire), 0,
                                    time.perf_counter_ns() - start))
        self._client_effects(client, effects)

    def _encode(self, msg: Any) -> bytes:
        start = time.perf_counter_ns()
        wire = encode(msg)
        self.encode.append((type(msg).__name__, len(wire), time.perf_counter_ns() - start))
        return wire

    def _replica_effects(self, src: int, effects: list[Any]) -> None:
        for e in effects:
            kind = type(e)
            if kind is Send:
                dest = e.dest if isinstance(e.dest, int) else e.dest.replica
                self.queue.append((dest, src, self._encode(e.msg)))
            elif kind is Broadcast:
                wire = self._encode(e.msg)
                for dst in range(self.n):
                    if dst != src:
                        self.queue.append((dst, src, wire))
            elif kind is ToClient and e.client in self.by_id:
                self.queue.append((e.client, src, self._encode(e.msg)))
            elif kind is SetTimer:
                self.timers[src][e.name] = time.perf_counter() + e.delay
            elif kind is CancelTimer:
                self.timers[src].pop(e.name, None)

    def _client_effects(self, client: Any, effects: list[Any]) -> None:
        for e in effects:
            kind = type(e)
            if kind is Send:
                dest = e.dest if isinstance(e.dest, int) else e.dest.replica
                self.queue.append((dest, client.client_id, self._encode(e.msg)))
            elif kind is Broadcast:
                wire = self._encode(e.msg)
                for dst in range(self.n):
                    self.queue.append((dst, client.client_id, wire))
            elif kind is Completed:
                self.done += 1
                self._submit(self.clients.index(client), client)


SIZE_SPREAD = 256
"""A type whose sizes span fewer bytes than this gets no per-byte term (it would be
collinear with the per-message one)."""


def fit_linear(
    samples: list[Sample], with_ops: bool = True
) -> tuple[dict[str, tuple[float, float]], float, dict[str, Any]]:
    """Least squares ``ns ~ a[type] + b[type] * bytes (+ c * ops)`` with one pass that
    drops samples more than 4 median absolute residuals above the fit (preemptions)."""
    types = sorted({s[0] for s in samples})
    index = {t: i for i, t in enumerate(types)}
    k = len(types)
    sizes: dict[str, list[int]] = {}
    for kind, size, _, _ in samples:
        sizes.setdefault(kind, []).append(size)
    sized = {t for t, v in sizes.items() if max(v) - min(v) >= SIZE_SPREAD}

    def design(rows: list[Sample]) -> tuple[np.ndarray, np.ndarray]:
        x = np.zeros((len(rows), 2 * k + (1 if with_ops else 0)))
        y = np.zeros(len(rows))
        for r, (kind, size, ops, ns) in enumerate(rows):
            i = index[kind]
            x[r, i] = 1.0
            if kind in sized:
                x[r, k + i] = size
            if with_ops:
                x[r, 2 * k] = ops
            y[r] = ns
        return x, y

    x, y = design(samples)
    coef = np.linalg.lstsq(x, y, rcond=None)[0]
    residual = y - x @ coef
    mad = float(np.median(np.abs(residual))) or 1.0
    keep = residual < 4 * mad
    coef = np.linalg.lstsq(x[keep], y[keep], rcond=None)[0]
    per_type = {}
    for t, i in index.items():
        a, b = float(coef[i]), float(coef[k + i]) if t in sized else 0.0
        if b < 0:  # a size that does not matter: the mean is the better fit
            rows = [s for s, kept in zip(samples, keep, strict=True) if kept and s[0] == t]
            a, b = float(np.mean([s[3] for s in rows])) if rows else max(a, 0.0), 0.0
        per_type[t] = (round(max(a, 0.0), 1), round(b, 4))
    ops = float(coef[2 * k]) if with_ops else 0.0
    info = {"samples": len(samples), "dropped_outliers": int((~keep).sum()),
            "counts": {t: sum(1 for s in samples if s[0] == t) for t in types}}
    return per_type, max(ops, 0.0), info


def measure_handlers(protocol: str, n: int = 4, clients: int = 32, payload: int = 512,
                     requests: int = 20_000, budget_s: float = 20.0) -> dict[str, Any]:
    harness = _Harness(protocol, n, clients, payload, {})
    harness.run(requests, budget_s)
    # Timers: small batches with a batch delay, so that the primary waits on its batch
    # timer (the timer a loaded run fires most); every firing is timed like a handler.
    timed = _Harness(protocol, n, clients, payload, {"batch_delay_ms": 1, "max_batch": 8})
    timed.run(max(200, requests // 20), budget_s / 4, due_timers=True)
    timer_samples = [ns for _, ns in harness.timer_ns + timed.timer_ns]
    if not timer_samples:
        raise RuntimeError(f"calibration fired no {protocol} timer: cannot measure timer cost")
    handler, per_op, info = fit_linear(harness.handler)
    client_handler, _, client_info = fit_linear(harness.client_handler, with_ops=False)
    enc, _, _ = fit_linear([(t, s, 0, ns) for t, s, ns in harness.encode], with_ops=False)
    acct = harness.accounting
    return {
        "handler": handler,
        "per_executed_op_ns": round(per_op, 1),
        "client_handler": client_handler,
        "client_submit": (round(float(np.median(harness.submit)), 1), 0.0),
        "encode": enc,
        "execute": (round(acct.exec_ns / max(1, acct.exec_ops), 1), 0.0),
        "timer_ns": round(float(np.median(timer_samples)), 1),
        "fit": {"timers": {"fired": len(timer_samples),
                           "names": sorted({n for n, _ in harness.timer_ns + timed.timer_ns})},
                "handlers": info, "client_handlers": client_info,
                "requests_completed": harness.done, "n": n, "clients": clients,
                "payload": payload},
    }


# -- 2. transport --------------------------------------------------------------------------


def _free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _transport(me: int, keys: list[KeyPair], ports: list[int],
               on_message: Callable[[Address, Any], None] | None) -> Any:
    from phalanx.runtime.metrics import Metrics
    from phalanx.runtime.transport import Transport

    addrs = {Address(i): ("127.0.0.1", p) for i, p in enumerate(ports)}
    return Transport(Address(me), keys[me], addrs, [k.public_key for k in keys],
                     msgspec.msgpack.Decoder(bytes), on_message, None, Metrics(me))


def _receiver(seeds: list[bytes], ports: list[int], frames: int, out: Any) -> None:
    from phalanx.runtime import run

    async def main() -> None:
        keys = [KeyPair.from_seed(s) for s in seeds]
        state = {"count": 0, "cpu0": 0.0}
        done = asyncio.Event()

        def on_message(src: Address, msg: Any) -> None:
            if state["count"] == 0:
                state["cpu0"] = _cpu()
            state["count"] += 1
            if state["count"] == frames:
                state["cpu1"] = _cpu()
                done.set()

        transport = _transport(1, keys, ports, on_message)
        await transport.start("127.0.0.1", ports[1])
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), 60)
        count = state["count"]
        cpu1 = state.get("cpu1", _cpu())
        out.send((cpu1 - state["cpu0"]) / (count - 1) if count > 1 else float("nan"))
        await transport.close()

    run(main())


def _send_frames(seeds: list[bytes], ports: list[int], frames: int, size: int) -> float:
    from phalanx.runtime import run

    async def main() -> float:
        keys = [KeyPair.from_seed(s) for s in seeds]
        transport = _transport(0, keys, ports, None)
        await transport.start("127.0.0.1", ports[0])
        receiver = Address(1)
        await transport.wait_connected({receiver}, timeout=10)
        data = msgspec.msgpack.encode(os.urandom(size))  # a msgpack bin of ``size`` bytes
        cpu0 = _cpu()
        sent = 0
        while sent < frames:
            for _ in range(min(BURST, frames - sent)):
                transport.send(receiver, data)
                sent += 1
            await asyncio.sleep(0)  # one loop turn: the burst goes out in one write
        # Everything queued (the link may have paused on a full socket) must be written
        # before the CPU is read, or the cost of the tail is missed.
        dialer = transport.dialers[receiver]
        while dialer.queue or (dialer.link is not None and dialer.link.transport is not None
                               and dialer.link.transport.get_write_buffer_size()):
            await asyncio.sleep(0.001)
        cpu1 = _cpu()
        await asyncio.sleep(0.2)
        await transport.close()
        return (cpu1 - cpu0) / frames

    return run(main())


def measure_transport(frames: int = 20_000, sizes: tuple[int, int] = (64, 8192)) -> dict[str, Any]:
    """Per-frame CPU of sending and of receiving, at two sizes -> ``a + b * bytes`` each."""
    ctx = multiprocessing.get_context("fork")
    points = []
    for size in sizes:
        count = max(1_000, min(frames, (16 << 20) // size))  # stay below the send queue cap
        seeds = [os.urandom(32) for _ in range(2)]
        ports = _free_ports(2)
        mine, theirs = ctx.Pipe()
        receiver = ctx.Process(target=_receiver, args=(seeds, ports, count, theirs))
        receiver.start()
        try:
            send_s = _send_frames(seeds, ports, count, size)
            recv_s = mine.recv() if mine.poll(90) else float("nan")
        finally:
            receiver.join(10)
            if receiver.is_alive():
                receiver.kill()
        if not (math.isfinite(send_s) and math.isfinite(recv_s)):
            # A NaN would poison every transport cost of the model: fail loudly instead.
            raise RuntimeError(f"transport calibration at {size} B failed: the receiver "
                               f"got too few frames (send {send_s}, recv {recv_s} s/frame)")
        points.append((size, send_s * 1e9, recv_s * 1e9))
    (s0, send0, recv0), (s1, send1, recv1) = points
    send_b = max(0.0, (send1 - send0) / (s1 - s0))
    recv_b = max(0.0, (recv1 - recv0) / (s1 - s0))
    return {
        "transport_send": (round(send0 - send_b * s0, 1), round(send_b, 4)),
        "transport_recv": (round(recv0 - recv_b * s0, 1), round(recv_b, 4)),
        "points": [{"bytes": s, "send_ns": round(a, 1), "recv_ns": round(b, 1)}
                   for s, a, b in points],
        "burst": BURST,
    }


# -- 3. crypto -----------------------------------------------------------------------------


def _per_call_ns(fn: Callable[[], Any], repeat: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(repeat):
        fn()
    return (time.perf_counter_ns() - start) / repeat


def measure_crypto() -> dict[str, float]:
    key = KeyPair.generate()
    crypto = Ed25519NodeCrypto(0, key, [key.public_key])
    data = os.urandom(64)
    sig = crypto.sign(data)
    mac_key = os.urandom(32)
    digest = os.urandom(32)
    block = os.urandom(1 << 20)
    return {
        "ed25519_sign_ns": round(_per_call_ns(lambda: crypto.sign(data), 500), 1),
        "ed25519_verify_ns": round(_per_call_ns(lambda: crypto.verify(0, data, sig), 500), 1),
        "hmac_sha256_32B_ns": round(
            _per_call_ns(lambda: hmac.digest(mac_key, digest, "sha256"), 20_000), 1),
        "sha256_ns_per_byte": round(
            _per_call_ns(lambda: hashlib.sha256(block).digest(), 50) / len(block), 4),
    }


# -- 4. what a real process adds ----------------------------------------------------------


def modeled_cpu_s(model: CostModel, acct: dict[str, Any]) -> tuple[float, int]:
    """(CPU seconds the model charges for one replica's accounted traffic, messages)."""
    ns = 0.0
    msgs = 0
    for kind, (count, nbytes) in acct.get("recv", {}).items():
        if count:
            size = nbytes / count
            ns += count * (model.handle_ns(kind, int(size)) + cost_ns(model.transport_recv,
                                                                        int(size)))
            msgs += count
    encoded = acct.get("encoded", {})
    for kind, (count, nbytes) in acct.get("sent", {}).items():
        if count:
            size = nbytes / count
            # As the simulator charges it: one encoding per broadcast, transport per copy.
            encodings = encoded.get(kind, count)
            ns += (encodings * cost_ns(model.encode.get(kind), int(size))
                   + count * cost_ns(model.transport_send, int(size)))
            msgs += count
    ns += model.execute_ns(acct.get("exec_ops", 0), 0)
    return ns / 1e9, msgs


def real_run_command(protocol: str, *, clients: int = 16, payload: int = 128,
                     duration: float = 5.0) -> list[str]:
    """The ``phalanx`` command line of the short real run (N=4, loopback, ``--durability
    process``) that measures what a real replica process adds per message. It runs at a
    different load and payload than the validation, so the validation is not a fit to
    itself. The CLI turns it into ``phalanx bench``'s arguments (:attr:`CalibrateSpec.real_run`)."""
    return ["bench", "--n", "4", "--clients", str(clients), "--payload", str(payload),
            "--duration", str(duration), "--warmup", "1", "--durability", "process",
            "--no-progress", "--protocol", protocol]


def measure_runtime_overhead(model: CostModel, bench_args: argparse.Namespace) -> dict[str, Any]:
    """One short real bench (``bench_args``, see :func:`real_run_command`); per replica,
    the CPU it used beyond what the model charges, per message in or out."""
    import tempfile
    from pathlib import Path

    from phalanx.bench.run import measure
    from phalanx.runtime import run

    with tempfile.TemporaryDirectory(prefix="phalanx-calibrate-") as workdir:
        results = run(measure(bench_args, Path(workdir)))
    per_node = []
    for node in results["per_node"]:
        acct = _node_accounting(node)
        if node["cpu_s"] is None or acct is None:
            continue
        modeled, msgs = modeled_cpu_s(model, acct)
        if msgs:
            per_node.append((node["cpu_s"] - modeled) * 1e9 / msgs)
    overhead = max(0.0, float(np.median(per_node))) if per_node else 0.0
    return {"runtime_per_msg_ns": round(overhead, 1),
            "per_node_ns": [round(v, 1) for v in per_node],
            "run": {"clients": bench_args.clients, "payload": bench_args.payload,
                    "duration_s": bench_args.duration,
                    "throughput_tps": results["throughput_tps"],
                    "host_cpu_busy": results["environment"].get("host_cpu_busy")}}


def _node_accounting(node: dict[str, Any]) -> dict[str, Any] | None:
    by_type = node.get("by_type")
    if not by_type:
        return None
    return {"recv": by_type["recv"], "sent": by_type["sent"],
            "encoded": by_type.get("encoded", {}),
            "exec_ops": by_type.get("execution_ops", 0)}


# -- the command ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CalibrateSpec:
    """What ``phalanx calibrate`` measures, and how much."""

    protocol: str = "pbft"
    n: int = 4
    clients: int = 32
    payload: int = 512
    requests: int = 20_000
    """Requests through the in-process handler measurement."""
    frames: int = 20_000
    """Frames per size through the transport measurement."""
    real_run: argparse.Namespace | None = None
    """``phalanx bench``'s arguments for the real run of :func:`real_run_command` (the
    CLI, which owns those options and their defaults, parses them); None skips it."""


def calibrate(spec: CalibrateSpec) -> CostModel:
    """Run the measurements ``spec`` asks for and return the cost model."""
    handlers = measure_handlers(spec.protocol, spec.n, spec.clients, spec.payload,
                                spec.requests)
    transport = measure_transport(spec.frames)
    crypto = measure_crypto()
    timer = handlers["timer_ns"]
    model = CostModel(
        protocol=spec.protocol,
        handler=handlers["handler"],
        client_handler=handlers["client_handler"],
        client_submit=handlers["client_submit"],
        encode=handlers["encode"],
        execute=handlers["execute"],
        per_executed_op_ns=handlers["per_executed_op_ns"],
        transport_send=transport["transport_send"],
        transport_recv=transport["transport_recv"],
        timer_ns=timer,
        crypto=crypto,
        machine={"platform": platform.platform(), "python": platform.python_version(),
                 "cpu_count": os.cpu_count(),
                 "date": datetime.now(UTC).isoformat(timespec="seconds")},
        fit={**handlers["fit"], "transport": {"points": transport["points"],
                                             "burst": transport["burst"]}},
    )
    if spec.real_run is not None:
        overhead = measure_runtime_overhead(model, spec.real_run)
        model.runtime_per_msg_ns = overhead["runtime_per_msg_ns"]
        model.fit["runtime_overhead"] = overhead
    return model
