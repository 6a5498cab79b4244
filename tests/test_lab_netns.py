"""``phalanx bench --netns``: the plan of namespaces, veths and qdiscs (pure, always run),
the probe and the teardown (with a fake runner), and — as root, on a kernel that has
them — real namespaces, real classification by destination, a real kernel rate cap, and
real netem delays (skipped where the kernel lacks netem)."""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time

import pytest

from phalanx.bench import netns
from phalanx.bench.netns import NetnsError, Testbed, Topology, free_subnet, probe
from phalanx.runtime.wan import WanPlan

AZURE = "../shared/data/latency_azure_microsoft_published/rtt_matrix_ms.csv"
REGIONS = ("East US", "West US 2", "North Europe", "West Europe")


def _azure(n: int = 4, bandwidth: float | None = None) -> WanPlan:
    return WanPlan(AZURE, REGIONS, n, bandwidth)


def _by_parent(cmds: list[list[str]]) -> dict[str, list[str]]:
    """netem qdisc lines by their parent class."""
    return {c[c.index("parent") + 1]: c for c in cmds if "netem" in c}


def _flow_of(cmds: list[list[str]], address: str) -> str:
    (flow,) = [c[c.index("flowid") + 1] for c in cmds
               if "filter" in c and f"{address}/32" in c]
    return flow


# -- the plan ------------------------------------------------------------------------------


def test_every_endpoint_gets_its_own_namespace_and_address_in_one_subnet():
    topo = Topology("phx1234ab", "10.200.3.0/24", n=4, loadgens=2)
    assert [e.address for e in topo.replicas] == [f"10.200.3.{i}" for i in (1, 2, 3, 4)]
    assert [e.address for e in topo.loadgens] == ["10.200.3.5", "10.200.3.6"]
    assert topo.bench_address == "10.200.3.254"
    assert len({e.netns for e in topo.endpoints} | {topo.hub}) == 7
    assert len(topo.bench_link) <= 15  # an interface name in the root namespace
    assert topo.exec_prefix("replica-2") == ["ip", "netns", "exec", "phx1234ab-r2"]
    assert topo.exec_prefix("loadgen-1") == ["ip", "netns", "exec", "phx1234ab-l1"]
    assert topo.exec_prefix("loadgen-7") == [] and topo.exec_prefix("etcd") == []


def test_plain_netns_has_no_qdiscs_and_needs_no_netem():
    topo = Topology("phx1", "10.200.3.0/24", n=4, loadgens=2)
    assert not topo.needs_shaping and not topo.needs_netem
    assert not any(c[0] == "tc" for c in topo.setup_commands())


def test_each_direction_is_delayed_once_at_its_sender_by_half_the_rtt():
    plan = _azure()
    topo = Topology("phx1", "10.200.3.0/24", n=4, loadgens=2, wan=plan)
    assert topo.needs_netem
    r0, r2 = topo.replicas[0], topo.replicas[2]
    cmds = topo.shaping_commands(r0)
    netem = _by_parent(cmds)[_flow_of(cmds, r2.address)]
    expected_ms = plan.one_way_s("East US", "North Europe") * 1000
    assert float(netem[netem.index("delay") + 1].removesuffix("ms")) == pytest.approx(
        expected_ms, abs=0.001)
    assert expected_ms > 30  # a transatlantic link, not a rounding artefact
    # Load generator 1 sits in regions[(4 + 1) % 4] = West US 2 and delays its requests
    # to replica 0 by the same link's one-way delay; replica 0 its replies likewise.
    lg1 = topo.loadgens[1]
    assert lg1.region == "West US 2"
    out = topo.shaping_commands(lg1)
    back = topo.shaping_commands(r0)
    one_way = plan.one_way_s("West US 2", "East US") * 1000
    for cmds, dest in ((out, r0.address), (back, lg1.address)):
        netem = _by_parent(cmds)[_flow_of(cmds, dest)]
        assert float(netem[netem.index("delay") + 1][:-2]) == pytest.approx(one_way, abs=0.001)
    # Load generators talk only to replicas: no class for the other load generator.
    assert not [c for c in out if "filter" in c and f"{topo.loadgens[0].address}/32" in c]


def test_every_link_gets_the_same_delay_as_in_the_transport_emulation():
    plan = _azure(n=5)  # 5 replicas over 4 regions: two share East US
    topo = Topology("phx1", "10.200.3.0/24", n=5, loadgens=3, wan=plan)
    address = {e.address: i for i, e in enumerate(topo.replicas)}
    for i, replica in enumerate(topo.replicas):
        transport = plan.replica_shaper(i).out_delays
        kernel = topo.delays_s(replica)
        assert {address[a]: d for a, d in kernel.items() if a in address} == {
            r: d for r, d in transport.items() if r != i}
        for j, lg in enumerate(topo.loadgens):  # replies: delayed on arrival in the transport
            assert kernel[lg.address] == plan.loadgen_shaper(j).in_delays[i]
    for j, lg in enumerate(topo.loadgens):
        kernel = topo.delays_s(lg)
        assert {address[a]: d for a, d in kernel.items()} == plan.loadgen_shaper(j).out_delays
    # Same-region links get the matrix's same-region delay (0.25 ms one way), not zero.
    assert topo.delays_s(topo.replicas[0])[topo.replicas[4].address] == pytest.approx(0.00025)


def test_bandwidth_caps_replicas_egress_in_one_parent_class_and_never_load_generators():
    topo = Topology("phx1", "10.200.3.0/24", n=4, loadgens=2, wan=_azure(bandwidth=8e6))
    r1 = topo.shaping_commands(topo.replicas[1])
    parent = next(c for c in r1 if "classid" in c and c[c.index("classid") + 1] == "1:1")
    assert parent[parent.index("rate") + 1] == "8000000bit" == parent[parent.index("ceil") + 1]
    children = [c for c in r1 if "class" in c and "parent" in c and
                c[c.index("parent") + 1] == "1:1"]
    assert len(children) == 5  # 3 other replicas + 2 load generators, each may borrow all
    assert all(c[c.index("ceil") + 1] == "8000000bit" for c in children)
    lg = topo.shaping_commands(topo.loadgens[0])
    lg_parent = next(c for c in lg if "classid" in c and c[c.index("classid") + 1] == "1:1")
    assert lg_parent[lg_parent.index("rate") + 1] == f"{netns.UNSHAPED_BPS}bit"
    # Unmatched traffic (the bench's HTTP polls) takes the unshaped default class 1:2.
    assert r1[0][-2:] == ["default", "2"]


def test_teardown_removes_every_namespace_and_link_setup_creates():
    topo = Topology("phx1", "10.200.3.0/24", n=3, loadgens=1, wan=_azure(3, 1e8))
    setup, teardown = topo.setup_commands(), topo.teardown_commands()
    made = {c[3] for c in setup if c[:3] == ["ip", "netns", "add"]}
    deleted = {c[3] for c in teardown if c[:3] == ["ip", "netns", "del"]}
    assert made == deleted == {topo.hub, *(e.netns for e in topo.endpoints)}
    root_links = {c[3] for c in setup if c[:3] == ["ip", "link", "add"]}
    assert root_links == {topo.bench_link}
    assert ["ip", "link", "del", topo.bench_link] in teardown


def test_free_subnet_avoids_every_route_of_the_root_namespace():
    routes = ["default", "192.0.2.0/24", "10.128.0.0/10", "not a route"]
    for seed in range(50):
        chosen = ipaddress.ip_network(free_subnet(routes, random.Random(seed)))
        assert chosen.prefixlen == 24 and chosen.subnet_of(ipaddress.ip_network("10.0.0.0/8"))
        assert not chosen.overlaps(ipaddress.ip_network("10.128.0.0/10"))
    with pytest.raises(NetnsError, match="no free"):
        free_subnet(["10.128.0.0/9"])


def test_topology_refuses_what_does_not_fit():
    with pytest.raises(NetnsError, match="/24"):
        Topology("phx1", "10.200.3.0/25", n=4, loadgens=1)
    with pytest.raises(NetnsError, match="do not fit"):
        Topology("phx1", "10.200.3.0/24", n=250, loadgens=4)


# -- probe and teardown with a fake runner -------------------------------------------------


class FakeRunner:
    """Records command lines; fails those containing ``fail_on`` like the kernel would."""

    def __init__(self, fail_on: str | None = None, stderr: str = "") -> None:
        self.calls: list[list[str]] = []
        self.fail_on = fail_on
        self.stderr = stderr

    def __call__(self, argv):
        self.calls.append(list(argv))
        failed = self.fail_on is not None and self.fail_on in argv
        return subprocess.CompletedProcess(argv, 2 if failed else 0, "", self.stderr
                                           if failed else "")


def test_probe_names_a_missing_netem_and_always_deletes_its_scratch_namespace(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(netns, "_kernel_option", lambda name: "n")
    runner = FakeRunner("netem", "Error: Specified qdisc kind is unknown.")
    missing = probe(need_shaping=True, need_netem=True, runner=runner, prefix="phxt")
    assert len(missing) == 1
    assert "netem" in missing[0] and "CONFIG_NET_SCH_NETEM" in missing[0]
    assert "Specified qdisc kind is unknown" in missing[0]
    assert runner.calls[0] == ["ip", "netns", "add", "phxt-probe"]
    assert runner.calls[-1] == ["ip", "netns", "del", "phxt-probe"]
    # Without delays, netem is not even tried.
    runner = FakeRunner("netem")
    assert probe(need_shaping=True, need_netem=False, runner=runner, prefix="phxt") == []
    assert not any("netem" in c for c in runner.calls)


def test_probe_without_root_says_so(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    runner = FakeRunner()
    (missing,) = probe(True, True, runner)
    assert missing.startswith("root")
    assert runner.calls == []  # nothing tried


def test_build_fails_with_one_clear_error_listing_what_is_missing(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(netns, "_kernel_option", lambda name: None)
    runner = FakeRunner("netem", "Error: Specified qdisc kind is unknown.")
    with pytest.raises(NetnsError, match=r"--netns cannot run .*netem.*transport emulates"):
        netns.build(4, 2, _azure(), None, runner)


def test_a_failed_setup_tears_down_what_it_built_and_restores_sigterm():
    topo = Topology("phxt", "10.200.3.0/24", n=2, loadgens=1, wan=_azure(2, 1e7))
    before = signal.getsignal(signal.SIGTERM)
    runner = FakeRunner("u32", "Error: classifier kind unknown")
    with pytest.raises(NetnsError, match="u32"), Testbed(topo, runner):
        pass
    assert runner.calls[-len(topo.teardown_commands()):] == topo.teardown_commands()
    assert signal.getsignal(signal.SIGTERM) == before


def test_the_testbed_is_torn_down_once_even_when_the_run_raises():
    topo = Topology("phxt", "10.200.3.0/24", n=2, loadgens=1)
    runner = FakeRunner()
    with pytest.raises(KeyboardInterrupt), Testbed(topo, runner) as bed:
        assert signal.getsignal(signal.SIGTERM) is netns._exit_on_sigterm
        raise KeyboardInterrupt
    bed.teardown()  # idempotent
    deletes = [c for c in runner.calls if c[:3] == ["ip", "netns", "del"]]
    assert len(deletes) == len(topo.endpoints) + 1


# -- real namespaces (root, on a kernel that has them) -------------------------------------


def _can(shaping: bool, delays: bool) -> list[str]:
    if sys.platform != "linux":
        return ["Linux"]
    return probe(shaping, delays)


needs_netns = pytest.mark.skipif(bool(_can(True, False)),
                                 reason="needs root, namespaces, veth, bridge, htb and u32")
needs_netem = pytest.mark.skipif(bool(_can(True, True)), reason="needs the netem qdisc too")


def _in(ns: str, code: str, timeout: float = 10.0) -> str:
    out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code],
                         capture_output=True, text=True, timeout=timeout, check=True)
    return out.stdout


def _leftovers(prefix: str) -> list[str]:
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
    return [line for line in (names + links).splitlines() if line.startswith(prefix)]


def _packets_by_class(ns: str) -> dict[str, int]:
    """Packets each HTB class of ``ns``'s eth0 sent (``tc -s class show``; this tc has no
    JSON output for classes)."""
    text = subprocess.run(["tc", "-n", ns, "-s", "class", "show", "dev", "eth0"],
                          capture_output=True, text=True, check=True).stdout
    sent: dict[str, int] = {}
    handle = None
    for line in text.splitlines():
        words = line.split()
        if words[:2] == ["class", "htb"]:
            handle = words[2]
        elif words[:1] == ["Sent"] and handle is not None:
            sent[handle] = int(words[3])
    return sent


@needs_netns
def test_real_namespaces_classify_by_destination_and_vanish_afterwards():
    topo = Topology(netns.run_prefix(), free_subnet(netns.root_routes()), n=2, loadgens=1,
                    bandwidth_bps=50e6)
    r0, r1, lg = topo.replicas[0], topo.replicas[1], topo.loadgens[0]
    with Testbed(topo):
        assert len(_leftovers(topo.prefix)) == 5  # 4 namespaces + the bench's leg
        _in(r0.netns, "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                      f"for _ in range(20): s.sendto(b'x' * 1000, ('{r1.address}', 9))")
        sent = _packets_by_class(r0.netns)
        cmds = topo.shaping_commands(r0)
        assert sent[_flow_of(cmds, r1.address)] >= 20
        assert sent[_flow_of(cmds, lg.address)] == 0
        # The bench (root namespace) reaches a replica's address through its leg.
        with socket.socket() as bench:
            bench.settimeout(2)
            assert bench.connect_ex((r0.address, 9)) == errno.ECONNREFUSED  # r0 answered
    assert _leftovers(topo.prefix) == []


@needs_netem
def test_netem_delays_a_connection_by_the_matrix_rtt(tmp_path):
    matrix = tmp_path / "m.csv"
    matrix.write_text("src_region\\dst_region,a,b\na,,40\nb,40,\n")
    plan = WanPlan(str(matrix), ("a", "b"), 2)
    topo = Topology(netns.run_prefix(), free_subnet(netns.root_routes()), n=2, loadgens=0,
                    wan=plan)
    r0, r1 = topo.replicas
    with Testbed(topo):
        server = subprocess.Popen(
            ["ip", "netns", "exec", r1.netns, sys.executable, "-c",
             "import socket,time\ns = socket.create_server(('" + r1.address + "', 7001))\n"
             "print('up', flush=True)\nc, _ = s.accept()\ntime.sleep(0.5)"],
            stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout is not None and server.stdout.readline().strip() == "up"
            rtt = float(_in(r0.netns, "import socket,time\nt = time.perf_counter()\n"
                            f"socket.create_connection(('{r1.address}', 7001))\n"
                            "print(time.perf_counter() - t)"))
        finally:
            server.kill()
            server.wait()
    assert 0.035 < rtt < 0.5  # SYN and SYN-ACK each waited 20 ms in the kernel


@needs_netns
@pytest.mark.integration
def test_bench_in_namespaces_with_a_kernel_rate_cap_is_called_data(tmp_path):
    out = tmp_path / "r.json"
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "phalanx.cli", "bench", "--netns", "--bandwidth", "2Mbit",
         "--n", "4", "--clients", "8", "--duration", "2", "--warmup", "1",
         "--durability", "process", "--no-progress", "--base-port", "17650",
         "--json", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(out.read_text())
    assert results["environment"]["wan_emulation"] == "netns"
    assert set(results["netns"]["replicas"]) == {"r0", "r1", "r2", "r3"}
    neck = results["bottleneck"]
    assert (neck["verdict"], neck["resource"]) == ("data", "network")
    # The processes do no pacing under --netns: only the kernel's HTB held the primary
    # to its 2 Mbit/s (payload bytes stay under the cap, which counts headers too).
    assert 0.7 <= neck["evidence"]["link_utilisation"] <= 1.05
    assert _leftovers(results["netns"]["prefix"]) == []
    assert time.monotonic() - start < 60
