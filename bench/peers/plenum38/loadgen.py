"""A closed-loop load generator for an Indy Plenum pool (runs in the Python 3.8 Plenum venv).

libindy (Indy's client library) is not available here, so this is the client: it speaks
Plenum's client protocol directly. Each process opens one CurveZMQ DEALER socket per node
(the node's client stack is a ROUTER that accepts any client key), and runs ``K``
closed-loop clients on one asyncio loop. Client ``c`` writes as genesis steward
``c mod 4``: a NYM transaction for a fresh DID, signed with the steward's Ed25519 key,
sent to every node. A write counts once ``f+1`` nodes sent the same REPLY (so at least one
honest node executed it); ``f+1`` matching REQNACKs or REJECTs count as an error.

It talks to ``bench/peers/plenum_bench.py`` over its standard streams exactly as
``phalanx.bench.loadgen`` talks to ``phalanx bench``:

1. once every node has answered a read (GET_TXN), it writes ``ready K``;
2. it reads one JSON line ``{"start": t, "window_start": ws, "window_end": we}``; the
   clients start at ``t``;
3. on ``stop`` (or end of input) it writes its report to ``--out`` and exits 0.

The report lists every completion as ``[done_wall_s, latency_s]`` (a few thousand at
Plenum's rates); the bench feeds them into phalanx's own window accounting, so the
numbers are computed exactly as for phalanx.
"""

import argparse
import asyncio
import json
import os
import resource
import sys
import time

import zmq
import zmq.asyncio

CONNECT_TIMEOUT_S = 60.0
REQUEST_TIMEOUT_S = 120.0  # a write not confirmed by then counts as an error "timeout"


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def canonical(result) -> str:
    """Replies match when their results are equal as JSON values."""
    return json.dumps(result, sort_keys=True, separators=(",", ":"))


class Pending:
    """One request waiting for ``f+1`` matching answers."""

    __slots__ = ("future", "sent", "voters", "votes")

    def __init__(self, future, sent):
        self.future = future
        self.votes = {}  # answer key -> set of node names
        self.voters = set()
        self.sent = sent


class Pool:
    """DEALER sockets to every node's client stack, and the reply demultiplexer."""

    def __init__(self, pool, ctx):
        self.f = pool["f"]
        self.ctx = ctx
        self.pending = {}  # (identifier, reqId) -> Pending
        self.sockets = {}
        public, secret = zmq.curve_keypair()
        for node in pool["nodes"]:
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.IDENTITY, public)  # printable z85: Plenum decodes it as UTF-8
            sock.curve_publickey = public
            sock.curve_secretkey = secret
            sock.curve_serverkey = node["client_public_key"].encode()
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect("tcp://{}:{}".format(node["ip"], node["client_port"]))
            self.sockets[node["name"]] = sock
        self.readers = []
        self.errors = {}

    def start(self):
        loop = asyncio.get_event_loop()
        self.readers = [loop.create_task(self._read(name, sock))
                        for name, sock in self.sockets.items()]

    def close(self):
        for task in self.readers:
            task.cancel()
        for sock in self.sockets.values():
            sock.close(linger=0)

    def request(self, key, payload: bytes) -> "asyncio.Future":
        future = asyncio.get_event_loop().create_future()
        self.pending[key] = Pending(future, time.perf_counter())
        for sock in self.sockets.values():
            sock.send(payload)  # zmq.asyncio: queued without blocking (DEALER, HWM 1000)
        return future

    async def _read(self, name, sock):
        while True:
            frames = await sock.recv_multipart()
            try:
                msg = json.loads(frames[-1].decode())
            except ValueError:
                self._error("undecodable reply")
                continue
            self._answer(name, msg)

    def _error(self, reason):
        self.errors[reason] = self.errors.get(reason, 0) + 1

    def _answer(self, node, msg):
        op = msg.get("op")
        if op == "REPLY":
            result = msg.get("result") or {}
            meta = (result.get("txn") or {}).get("metadata") or {}
            key = (meta.get("from", result.get("identifier")), meta.get("reqId",
                                                                      result.get("reqId")))
            answer = ("ok", canonical(result))
        elif op in ("REQNACK", "REJECT"):
            key = (msg.get("identifier"), msg.get("reqId"))
            answer = ("error", "{}: {}".format(op, msg.get("reason", ""))[:200])
        else:
            return  # REQACK, pings and anything else carry no outcome
        pending = self.pending.get(key)
        if pending is None or node in pending.voters:
            return
        pending.voters.add(node)
        voters = pending.votes.setdefault(answer, set())
        voters.add(node)
        if len(voters) >= self.f + 1:
            del self.pending[key]
            if not pending.future.done():
                pending.future.set_result(answer)


class Steward:
    """A genesis steward: signs requests and numbers them."""

    def __init__(self, did, seed, first_req_id):
        from plenum.common.signer_did import DidSigner

        self.signer = DidSigner(identifier=did, seed=seed.encode())
        self.did = did
        self.next_req_id = first_req_id

    def request(self, operation):
        from plenum.common.constants import CURRENT_PROTOCOL_VERSION
        from plenum.common.request import Request

        req_id = self.next_req_id
        self.next_req_id += 1
        req = Request(identifier=self.did, reqId=req_id, operation=operation,
                      protocolVersion=CURRENT_PROTOCOL_VERSION)
        req.signature = self.signer.sign(req.signingPayloadState())
        return (self.did, req_id), json.dumps(req.as_dict).encode()


def nym_operation(alias_bytes):
    """A NYM write for a fresh DID, its alias filled to ``alias_bytes`` characters."""
    from plenum.common.signer_did import DidSigner

    target = DidSigner(seed=os.urandom(32))
    op = {"type": "1", "dest": target.identifier, "verkey": target.verkey}
    if alias_bytes:
        op["alias"] = os.urandom(alias_bytes).hex()[:alias_bytes]
    return op


async def wait_ready(pool, steward):
    """Every node answers a GET_TXN read of domain transaction 1."""
    async def one(name, sock):
        _, payload = steward.request({"type": "3", "ledgerId": 1, "data": 1})
        while True:
            await sock.send(payload)
            try:
                frames = await asyncio.wait_for(sock.recv_multipart(), 2.0)
            except asyncio.TimeoutError:
                continue
            msg = json.loads(frames[-1].decode())
            if msg.get("op") == "REPLY":
                return
    await asyncio.wait_for(
        asyncio.gather(*(one(n, s) for n, s in pool.sockets.items())), CONNECT_TIMEOUT_S
    )


async def client_loop(pool, steward, alias_bytes, samples, errors, stopped):
    while not stopped.is_set():
        key, payload = steward.request(nym_operation(alias_bytes))
        sent = time.perf_counter()
        try:
            kind, detail = await asyncio.wait_for(pool.request(key, payload),
                                                  REQUEST_TIMEOUT_S)
        except asyncio.TimeoutError:
            pool.pending.pop(key, None)
            errors["timeout"] = errors.get("timeout", 0) + 1
            continue
        done = time.perf_counter()
        if kind == "ok":
            samples.append((done, done - sent))
        else:
            errors[detail] = errors.get(detail, 0) + 1


async def read_line(reader):
    return (await reader.readline()).decode().strip()


async def generate(args):
    with open(os.path.join(args.pool, "pool.json")) as f:
        pool_doc = json.load(f)
    loop = asyncio.get_event_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    ctx = zmq.asyncio.Context()
    # reqIds: unique per process and steward, increasing (as libindy's are).
    base = time.time_ns() // 1000 + args.first_client * 1_000_000_000
    stewards = [Steward(s["did"], s["seed"], base) for s in pool_doc["stewards"]]
    # Readiness is probed on separate sockets so no stray reply reaches the demultiplexer.
    probe = Pool(pool_doc, ctx)
    try:
        await wait_ready(probe, stewards[0])
    except asyncio.TimeoutError:
        print(f"error nodes did not answer a read within {CONNECT_TIMEOUT_S:g} s",
              flush=True)
        return 1
    finally:
        probe.close()
    pool = Pool(pool_doc, ctx)
    pool.start()
    print(f"ready {args.clients}", flush=True)

    line = await read_line(reader)
    if not line or line == "stop":
        pool.close()
        return 0
    spec = json.loads(line)
    samples = []
    errors = {}
    stopped = asyncio.Event()
    wall_offset = time.time() - time.perf_counter()
    cpu = {}

    async def sample_cpu():
        await asyncio.sleep(max(0.0, spec["window_start"] - time.time()))
        cpu["start"] = cpu_seconds()
        await asyncio.sleep(max(0.0, spec["window_end"] - time.time()))
        cpu["end"] = cpu_seconds()

    await asyncio.sleep(max(0.0, spec["start"] - time.time()))
    clients = [
        loop.create_task(client_loop(
            pool, stewards[(args.first_client + i) % len(stewards)], args.alias_bytes,
            samples, errors, stopped))
        for i in range(args.clients)
    ]
    sampler = loop.create_task(sample_cpu())
    while (await read_line(reader)) not in ("stop", ""):
        pass
    now_cpu = cpu_seconds()
    stopped.set()
    for task in [*clients, sampler]:
        task.cancel()
    await asyncio.gather(*clients, sampler, return_exceptions=True)
    pool.close()
    for reason, count in pool.errors.items():
        errors[reason] = errors.get(reason, 0) + count
    report = {
        "clients": args.clients,
        "samples": [[round(done + wall_offset, 6), round(lat, 6)] for done, lat in samples],
        "errors": errors,
        "window_cpu_s": cpu.get("end", now_cpu) - cpu.get("start", now_cpu),
        "total_cpu_s": cpu_seconds(),
    }
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(report, f)
    os.replace(tmp, args.out)
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pool", required=True, help="pool directory written by pool.py")
    p.add_argument("--clients", type=int, required=True)
    p.add_argument("--first-client", type=int, default=0)
    p.add_argument("--alias-bytes", type=int, default=0,
                   help="fill each NYM's alias to this many characters (Plenum allows 256)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if args.clients < 1 or not 0 <= args.alias_bytes <= 256:
        print("error --clients must be >= 1 and --alias-bytes in [0, 256]", flush=True)
        return 2
    # Plenum's logger writes TRACE lines to stdout at import; stdout is our protocol.
    import logging
    logging.disable(logging.CRITICAL)
    loop = asyncio.get_event_loop()
    try:
        return loop.run_until_complete(generate(args))
    finally:
        loop.close()


if __name__ == "__main__":
    sys.exit(main())
