"""``phalanx bench --netns``: the WAN in the kernel, with network namespaces and ``tc``.

Instead of delay lines in the transport (:mod:`phalanx.runtime.wan`), every endpoint of
a run gets a network namespace of its own, and the kernel does the delaying and the
rate capping:

- namespace ``<prefix>-r<i>`` for replica ``i`` and ``<prefix>-l<j>`` for load
  generator process ``j`` (one each, because load generators sit in regions of their
  own); each holds ``eth0``, one end of a veth pair, with an address in a private /24;
- namespace ``<prefix>-hub``, owned by the bench, holds the other ends, enslaved to one
  bridge ``br0`` (a star: every packet crosses exactly two veths and the bridge);
- the bench's own leg, ``<prefix>b`` in the root namespace (address ``.254``), is one
  more port of that bridge, so the bench reads every replica's HTTP API from outside;
- each endpoint shapes its own egress on ``eth0``: an HTB root with one class per
  destination, selected by a u32 filter on the destination address; each class has a
  ``netem delay`` of the link's RTT/2 (same matrix and regions as the in-transport
  emulation) and, for replicas with ``--bandwidth``, shares one parent class capped at
  that rate. Unmatched traffic (the bench's HTTP polls) goes unshaped.

So every direction is delayed once, at its sender, by the one-way delay of its link,
as in the transport. Everything is named with a run-unique prefix (``phx`` + the bench's
pid in hex + two random hex digits) and deleted on exit, also when the run fails, is
interrupted or gets SIGTERM (:class:`Testbed`). A bench killed by SIGKILL leaves its
namespaces behind: ``ip netns list | grep '^phx'`` shows them.

The plan (:class:`Topology`) is pure: it only computes addresses and the ``ip``/``tc``
command lines, so it is tested without root. :func:`probe` checks, in a scratch
namespace, that this machine can do what a plan needs (root, ``ip`` and ``tc``,
namespaces, veth, bridge, the htb qdisc, the u32 classifier and, for delays, the netem
qdisc) and names what is missing.
"""

from __future__ import annotations

import atexit
import contextlib
import gzip
import ipaddress
import json
import os
import random
import shutil
import signal
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

from phalanx.runtime.wan import WanPlan

UNSHAPED_BPS = 10_000_000_000
"""The rate of classes that must not limit anything (HTB needs one)."""
HTB_QUANTUM = 60_000
"""Bytes a class may send per round: above any GSO segment a veth hands over, so HTB
does not warn (the default, rate / r2q, is far off at 10 Gbit/s)."""
NETEM_LIMIT = 100_000
"""Packets a delay line holds: netem's default (1,000) would drop packets once more
than that are in flight on one link (e.g. 100 Mbit/s for 100 ms)."""
BENCH_HOST = 254  # the bench's own address in the subnet: .254
COMMAND_TIMEOUT_S = 10.0


class NetnsError(Exception):
    """The namespaces could not be built (or this machine cannot build them)."""


@dataclass(frozen=True)
class Endpoint:
    """One process's place in the testbed."""

    name: str  # "r0" (replica 0), "l1" (load generator 1): also its veth in the hub
    netns: str
    address: str
    region: str | None = None


def _rate(bps: float) -> str:
    return f"{max(8, round(bps))}bit"


class Topology:
    """Addresses and ``ip``/``tc`` command lines of one run's namespaces (no side effects).

    ``wan`` gives the regions and RTT matrix (None: no delays); ``bandwidth_bps`` caps
    each replica's egress (load generators are never capped, as in the transport).
    """

    def __init__(self, prefix: str, subnet: str, n: int, loadgens: int,
                 wan: WanPlan | None = None, bandwidth_bps: float | None = None) -> None:
        net = ipaddress.ip_network(subnet)
        if net.version != 4 or net.prefixlen != 24:
            raise NetnsError(f"subnet {subnet}: need an IPv4 /24")
        if n + loadgens > BENCH_HOST - 1:
            raise NetnsError(f"{n} replicas and {loadgens} load generators do not fit a /24")
        if len(prefix) + 1 > 15:
            raise NetnsError(f"prefix {prefix!r} too long for an interface name")
        self.prefix = prefix
        self.subnet = net
        self.wan = wan
        self.bandwidth_bps = bandwidth_bps if bandwidth_bps is not None else (
            wan.bandwidth_bps if wan is not None else None)
        self.hub = f"{prefix}-hub"
        self.bench_link = f"{prefix}b"
        hosts = list(net.hosts())
        self.bench_address = str(hosts[BENCH_HOST - 1])
        self.replicas = [
            Endpoint(f"r{i}", f"{prefix}-r{i}", str(hosts[i]),
                     wan.replica_region(i) if wan else None)
            for i in range(n)
        ]
        self.loadgens = [
            Endpoint(f"l{j}", f"{prefix}-l{j}", str(hosts[n + j]),
                     wan.loadgen_region(j) if wan else None)
            for j in range(loadgens)
        ]

    @property
    def endpoints(self) -> list[Endpoint]:
        return [*self.replicas, *self.loadgens]

    def endpoint(self, child: str) -> Endpoint | None:
        """The endpoint of a bench child named ``replica-<i>`` or ``loadgen-<j>``."""
        kind, _, index = child.rpartition("-")
        table = {"replica": self.replicas, "loadgen": self.loadgens}.get(kind)
        if table is None or not index.isdigit() or int(index) >= len(table):
            return None
        return table[int(index)]

    def exec_prefix(self, child: str) -> list[str]:
        """The argv prefix that starts bench child ``child`` inside its namespace."""
        endpoint = self.endpoint(child)
        return [] if endpoint is None else ["ip", "netns", "exec", endpoint.netns]

    # -- what each endpoint's egress does ------------------------------------------------

    def delays_s(self, endpoint: Endpoint) -> dict[str, float]:
        """One-way delay from ``endpoint`` to every address it talks to (seconds)."""
        replica = endpoint in self.replicas
        peers = self.endpoints if replica else self.replicas
        out = {}
        for peer in peers:
            if peer is endpoint:
                continue
            delay = 0.0
            here, there = endpoint.region, peer.region
            if self.wan is not None and here and there:
                # A load generator's cell serves both directions of its links, as in the
                # transport (which delays replies on arrival at the client): matrices
                # are not quite symmetric, and the two emulations must agree.
                src, dst = (there, here) if peer in self.loadgens else (here, there)
                delay = self.wan.one_way_s(src, dst)
            out[peer.address] = delay
        return out

    def cap_bps(self, endpoint: Endpoint) -> float | None:
        return self.bandwidth_bps if endpoint in self.replicas else None

    @property
    def needs_netem(self) -> bool:
        return any(d > 0 for e in self.endpoints for d in self.delays_s(e).values())

    @property
    def needs_shaping(self) -> bool:
        return self.needs_netem or self.bandwidth_bps is not None

    def shaping_commands(self, endpoint: Endpoint) -> list[list[str]]:
        """``tc`` lines for ``endpoint``'s egress: HTB, a class per destination under one
        (capped) parent, netem leaves, u32 filters by destination address."""
        if not self.needs_shaping:
            return []
        tc = ["tc", "-n", endpoint.netns]
        dev = ["dev", "eth0"]
        cap = self.cap_bps(endpoint)
        parent_rate = _rate(cap if cap is not None else UNSHAPED_BPS)
        quantum = ["quantum", str(HTB_QUANTUM)]
        cmds = [
            [*tc, "qdisc", "add", *dev, "root", "handle", "1:", "htb", "default", "2"],
            [*tc, "class", "add", *dev, "parent", "1:", "classid", "1:1", "htb",
             "rate", parent_rate, "ceil", parent_rate, *quantum],
            [*tc, "class", "add", *dev, "parent", "1:", "classid", "1:2", "htb",
             "rate", _rate(UNSHAPED_BPS), *quantum],
        ]
        delays = self.delays_s(endpoint)
        share = (cap if cap is not None else UNSHAPED_BPS) / max(1, len(delays))
        for k, (address, delay) in enumerate(delays.items()):
            minor = f"{k + 16:x}"  # tc class and handle numbers are hexadecimal
            cmds.append([*tc, "class", "add", *dev, "parent", "1:1", "classid", f"1:{minor}",
                         "htb", "rate", _rate(share), "ceil", parent_rate, *quantum])
            if delay > 0:
                cmds.append([*tc, "qdisc", "add", *dev, "parent", f"1:{minor}", "handle",
                             f"{minor}:", "netem", "delay", f"{delay * 1000:.3f}ms",
                             "limit", str(NETEM_LIMIT)])
            cmds.append([*tc, "filter", "add", *dev, "parent", "1:", "protocol", "ip",
                         "prio", "1", "u32", "match", "ip", "dst", f"{address}/32",
                         "flowid", f"1:{minor}"])
        return cmds

    # -- the whole testbed ---------------------------------------------------------------

    def setup_commands(self) -> list[list[str]]:
        """Every command that builds the testbed, in order."""
        hub = ["ip", "-n", self.hub]
        plen = self.subnet.prefixlen
        cmds = [
            ["ip", "netns", "add", self.hub],
            [*hub, "link", "set", "lo", "up"],
            [*hub, "link", "add", "br0", "type", "bridge"],
            [*hub, "link", "set", "br0", "up"],
        ]
        for e in self.endpoints:
            ns = ["ip", "-n", e.netns]
            cmds += [
                ["ip", "netns", "add", e.netns],
                [*ns, "link", "set", "lo", "up"],
                [*hub, "link", "add", e.name, "type", "veth", "peer", "name", "eth0",
                 "netns", e.netns],
                [*hub, "link", "set", e.name, "master", "br0", "up"],
                [*ns, "addr", "add", f"{e.address}/{plen}", "dev", "eth0"],
                [*ns, "link", "set", "eth0", "up"],
                *self.shaping_commands(e),
            ]
        cmds += [
            ["ip", "link", "add", self.bench_link, "type", "veth", "peer", "name", "bench",
             "netns", self.hub],
            [*hub, "link", "set", "bench", "master", "br0", "up"],
            ["ip", "addr", "add", f"{self.bench_address}/{plen}", "dev", self.bench_link],
            ["ip", "link", "set", self.bench_link, "up"],
        ]
        return cmds

    def teardown_commands(self) -> list[list[str]]:
        """Every command that removes what :meth:`setup_commands` may have created
        (each may fail harmlessly when its object was never made)."""
        cmds = [["ip", "netns", "del", e.netns] for e in self.endpoints]
        cmds += [["ip", "link", "del", self.bench_link], ["ip", "netns", "del", self.hub]]
        return cmds

    def to_json(self) -> dict[str, Any]:
        """What the results JSON says about the testbed."""
        return {
            "prefix": self.prefix,
            "subnet": str(self.subnet),
            "replicas": {e.name: e.address for e in self.replicas},
            "loadgens": {e.name: e.address for e in self.loadgens},
            "delays": "tc netem per destination" if self.needs_netem else None,
            "bandwidth_bps": self.bandwidth_bps,
        }


# -- effects: probing, building, tearing down ---------------------------------------------


Runner = Callable[[Sequence[str]], subprocess.CompletedProcess[str]]


def run_command(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """Run one ``ip``/``tc`` command line, capturing its output."""
    return subprocess.run(list(argv), capture_output=True, text=True,
                          timeout=COMMAND_TIMEOUT_S, check=False)


def run_prefix() -> str:
    """A prefix no other run uses: ``phx``, this pid in hex, two random hex digits."""
    return f"phx{os.getpid():x}{random.randrange(256):02x}"


def free_subnet(routes: Sequence[str], rng: random.Random | None = None) -> str:
    """A /24 in 10.128.0.0/9 that overlaps none of ``routes`` (the destinations of the
    root namespace's routes, e.g. another run's testbed)."""
    rng = rng or random.Random()
    taken = []
    for dst in routes:
        with contextlib.suppress(ValueError):
            taken.append(ipaddress.ip_network("0.0.0.0/0" if dst == "default" else dst,
                                              strict=False))
    taken = [t for t in taken if t.prefixlen > 0]  # the default route overlaps everything
    for _ in range(1000):
        candidate = ipaddress.ip_network(f"10.{rng.randrange(128, 256)}.{rng.randrange(256)}.0/24")
        if not any(candidate.overlaps(t) for t in taken if t.version == 4):
            return str(candidate)
    raise NetnsError("no free /24 in 10.128.0.0/9")


def root_routes(runner: Runner = run_command) -> list[str]:
    """Destinations of the IPv4 routes of the root namespace (all tables)."""
    out = runner(["ip", "-j", "-4", "route", "show", "table", "all"])
    if out.returncode != 0:
        return []
    try:
        return [r.get("dst", "") for r in json.loads(out.stdout or "[]")]
    except ValueError:
        return []


def _kernel_option(name: str) -> str | None:
    """``y``/``m``/``n`` for a kernel config option, None when /proc/config.gz is absent."""
    try:
        with gzip.open("/proc/config.gz", "rt") as fh:
            text = fh.read()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(f"{name}="):
            return line.split("=", 1)[1]
        if line == f"# {name} is not set":
            return "n"
    return "n"


def probe(need_shaping: bool, need_netem: bool, runner: Runner = run_command,
          prefix: str | None = None) -> list[str]:
    """What this machine lacks for a testbed (empty: nothing). Tries each feature once in
    a scratch namespace, which is always deleted."""
    if os.geteuid() != 0:
        return ["root: --netns creates network namespaces and qdiscs (run as root)"]
    missing = [f"the {tool!r} command (Debian package iproute2)"
               for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        return missing
    scratch = f"{prefix or run_prefix()}-probe"
    made = runner(["ip", "netns", "add", scratch])
    if made.returncode != 0:
        return [f"network namespaces (ip netns add: {made.stderr.strip()})"]
    try:
        ip, tc = ["ip", "-n", scratch], ["tc", "-n", scratch]
        checks: list[tuple[str, list[str], str | None]] = [
            ("veth pairs", [*ip, "link", "add", "vetha", "type", "veth", "peer", "name", "vethb"],
             "CONFIG_VETH"),
            ("bridges", [*ip, "link", "add", "br0", "type", "bridge"], "CONFIG_BRIDGE"),
        ]
        if need_shaping:
            checks += [
                ("the htb qdisc", [*tc, "qdisc", "add", "dev", "vetha", "root", "handle", "1:",
                                   "htb", "default", "2"], "CONFIG_NET_SCH_HTB"),
                ("the u32 classifier", [*tc, "filter", "add", "dev", "vetha", "parent", "1:",
                                        "protocol", "ip", "prio", "1", "u32", "match", "ip",
                                        "dst", "10.0.0.1/32", "flowid", "1:2"],
                 "CONFIG_NET_CLS_U32"),
            ]
        if need_netem:
            checks.append(("the netem qdisc (tc netem delays)",
                           [*tc, "qdisc", "add", "dev", "vethb", "root", "netem", "delay", "1ms"],
                           "CONFIG_NET_SCH_NETEM"))
        for what, argv, option in checks:
            out = runner(argv)
            if out.returncode != 0:
                detail = f"`{' '.join(argv[3:])}` says {out.stderr.strip()!r}"
                if option is not None and _kernel_option(option) == "n":
                    detail += f"; this kernel is built without {option}"
                missing.append(f"{what}: {detail}")
    finally:
        runner(["ip", "netns", "del", scratch])
    return missing


class Testbed:
    """Builds a :class:`Topology` on entry and removes it on exit, whatever happened.

    While it exists, SIGTERM is turned into :class:`SystemExit` (so ``finally`` blocks,
    and this teardown, run) and an ``atexit`` hook is the last resort.
    """

    __test__ = False  # not a pytest test class, despite its name

    def __init__(self, topology: Topology, runner: Runner = run_command) -> None:
        self.topology = topology
        self.runner = runner
        self._previous_sigterm: Any = None
        self._up = False

    def __enter__(self) -> Testbed:
        return self.up()

    def up(self) -> Testbed:
        """Build the testbed (on failure, remove what was built and raise)."""
        self._up = True
        atexit.register(self.teardown)
        with contextlib.suppress(ValueError):  # not the main thread: leave SIGTERM be
            self._previous_sigterm = signal.signal(signal.SIGTERM, _exit_on_sigterm)
        try:
            for argv in self.topology.setup_commands():
                out = self.runner(argv)
                if out.returncode != 0:
                    raise NetnsError(f"`{' '.join(argv)}` failed: {out.stderr.strip()}")
        except BaseException:
            self.teardown()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.teardown()

    def teardown(self) -> None:
        """Delete every namespace and link of the topology (idempotent)."""
        if not self._up:
            return
        self._up = False
        for argv in self.topology.teardown_commands():
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                self.runner(argv)
        atexit.unregister(self.teardown)
        if self._previous_sigterm is not None:
            with contextlib.suppress(ValueError):
                signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def build(n: int, loadgens: int, wan: WanPlan | None, bandwidth_bps: float | None,
          runner: Runner = run_command) -> Testbed:
    """A :class:`Testbed` (not yet entered) for this run, after checking that the machine
    can build it; raises :class:`NetnsError` naming everything that is missing."""
    prefix = run_prefix()
    topology = Topology(prefix, free_subnet(root_routes(runner)), n, loadgens, wan,
                        bandwidth_bps)
    missing = probe(topology.needs_shaping, topology.needs_netem, runner, prefix)
    if missing:
        raise NetnsError("--netns cannot run on this machine; missing: " + "; ".join(missing)
                         + (". (Without --netns the transport emulates the same WAN.)"
                            if wan is not None else ""))
    return Testbed(topology, runner)
