"""What the peer baselines share: per-process accounting from the kernel, the load
generators' line protocol, and the results object of ``phalanx bench --json``.

The peers (etcd, Indy Plenum) have no phalanx ``/status``, so a node's window is taken
from the kernel instead, for its process id:

- CPU seconds: ``utime + stime`` of ``/proc/PID/stat`` (the process and all its threads);
- memory: ``VmRSS`` and ``VmHWM`` (peak) of ``/proc/PID/status``;
- bytes: the ``bytes_sent`` / ``bytes_received`` TCP counters of every socket the process
  owns, as ``ss -tinp`` reads them from the kernel (``tcp_info``); on loopback these are
  exactly the bytes the node wrote to and read from its peers and clients (``/proc/PID/io``
  would mix in its disk writes). A socket opened and closed inside the window is missed,
  so the load generators keep their connections open for the whole run.

These samples are shaped like phalanx's ``GET /status`` bodies, so phalanx's own
:func:`~phalanx.bench.results.node_window` and :func:`~phalanx.bench.results.build_results`
turn them into the results object: the numbers are computed exactly as for phalanx.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from phalanx.bench.loadgen import Recorder, Window, recorder_report
from phalanx.bench.results import (
    LoadgenReport,
    NodeWindow,
    RunSpec,
    Safety,
    build_results,
    node_window,
    to_json,
)
from phalanx.bench.run import (
    LOADGEN_EXIT_TIMEOUT_S,
    READY_TIMEOUT_S,
    LoadGenerators,
    await_ready,
    split_clients,
)

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[2]

# -- the kernel's view of a process -----------------------------------------------------------

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def proc_cpu_seconds(pid: int, proc: Path = Path("/proc")) -> float | None:
    """User plus system CPU seconds of process ``pid`` (all threads), or None if gone."""
    try:
        text = (proc / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its ')'.
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime


def proc_memory(pid: int, proc: Path = Path("/proc")) -> tuple[int | None, int | None]:
    """(rss, peak rss) of ``pid`` in bytes, from ``/proc/PID/status``."""
    try:
        text = (proc / str(pid) / "status").read_text()
    except OSError:
        return None, None
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) * 1024  # kB
    return values.get("VmRSS"), values.get("VmHWM")


_SS_PID = re.compile(r"pid=(\d+)")
_SS_SENT = re.compile(r"\bbytes_sent:(\d+)")
_SS_RECV = re.compile(r"\bbytes_received:(\d+)")


def parse_ss(text: str) -> dict[int, tuple[int, int]]:
    """``{pid: (bytes_sent, bytes_received)}`` summed over the sockets of each process, from
    the output of ``ss -tinpH`` (a socket line naming its owners, then its info line)."""
    totals: dict[int, list[int]] = {}
    owners: list[int] = []
    for line in text.splitlines():
        if "users:((" in line:
            owners = sorted({int(p) for p in _SS_PID.findall(line)})
            continue
        sent, recv = _SS_SENT.search(line), _SS_RECV.search(line)
        if not owners or (sent is None and recv is None):
            continue
        for pid in owners[:1]:  # a socket shared by several processes is counted once
            entry = totals.setdefault(pid, [0, 0])
            entry[0] += int(sent.group(1)) if sent else 0
            entry[1] += int(recv.group(1)) if recv else 0
        owners = []
    return {pid: (v[0], v[1]) for pid, v in totals.items()}


def tcp_bytes_by_pid() -> dict[int, tuple[int, int]] | None:
    """Bytes sent and received per process over its open TCP sockets (None without ss)."""
    ss = shutil.which("ss")
    if ss is None:
        return None
    try:
        out = subprocess.run([ss, "-tinpH"], capture_output=True, text=True, timeout=10,
                             check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_ss(out)


def sample_process(pid: int, tcp: dict[int, tuple[int, int]] | None) -> dict[str, Any] | None:
    """A ``GET /status``-shaped sample of process ``pid`` (None if it is gone)."""
    cpu = proc_cpu_seconds(pid)
    if cpu is None:
        return None
    rss, peak = proc_memory(pid)
    sent_recv = None if tcp is None else tcp.get(pid, (0, 0))
    return {
        "cpu_s": cpu,
        "bytes_sent": None if sent_recv is None else sent_recv[0],
        "bytes_recv": None if sent_recv is None else sent_recv[1],
        "msgs_sent": None,  # not visible from outside the process
        "rss_bytes": rss,
        "peak_rss_bytes": peak,
    }


def sample_processes(pids: dict[int, int]) -> dict[int, dict[str, Any] | None]:
    """Samples of ``{node_id: pid}``, all taken with one reading of the socket table."""
    tcp = tcp_bytes_by_pid()
    return {node: sample_process(pid, tcp) for node, pid in pids.items()}


def node_windows(
    ids: list[int], starts: dict[int, dict[str, Any] | None],
    ends: dict[int, dict[str, Any] | None],
) -> list[NodeWindow]:
    """Per-node deltas over the window, by phalanx's own rule."""
    return [node_window(i, starts.get(i), ends.get(i)) for i in ids]


# -- load generators ------------------------------------------------------------------------


def report_from_samples(doc: dict[str, Any], window: Window) -> LoadgenReport:
    """A load generator's report from its raw completions ``[[done_wall_s, latency_s], ...]``
    (what the Python 3.8 Plenum client writes), windowed by phalanx's own :class:`Recorder`."""
    recorder = Recorder(window)
    for done_wall, latency_s in doc["samples"]:
        recorder.completed(float(done_wall), float(latency_s))
    for reason, count in doc.get("errors", {}).items():
        recorder.errors[str(reason)] = recorder.errors.get(str(reason), 0) + int(count)
    return recorder_report(recorder, int(doc["clients"]), float(doc.get("window_cpu_s", 0.0)),
                           float(doc.get("total_cpu_s", 0.0)))


class PeerLoadGenerators(LoadGenerators):
    """phalanx's load-generator orchestration (same line protocol: ``ready K``, one JSON
    window line, ``stop``) for load generators that are not ``phalanx.bench.loadgen``.

    ``argv(index, clients, first_client, out)`` gives each process's command line; a report
    holding raw ``samples`` is windowed here (:func:`report_from_samples`)."""

    exit_timeout_s = LOADGEN_EXIT_TIMEOUT_S + 120  # peer clients (Plenum's, Python 3.8) exit slowly

    def __init__(self, children: Any, workdir: Path, argv: Any) -> None:
        super().__init__(children, workdir)
        self.argv = argv
        self.window: Window | None = None

    async def start_procs(self, clients: int, procs: int) -> None:
        first = 0
        for index, count in enumerate(split_clients(clients, procs)):
            name = f"loadgen-{index}"
            out = self._report_path(name)
            out.unlink(missing_ok=True)
            await self.children.start(name, self.argv(index, count, first, out),
                                      self.workdir / "logs" / f"{name}.log", pipes=True)
            self.names.append(name)
            first += count
        await await_ready(self.children, self.names, self.workdir, READY_TIMEOUT_S + 60)

    async def go(self, start: float, window_start: float, window_end: float) -> None:
        self.window = Window(start, window_start, window_end)
        await super().go(start, window_start, window_end)

    def _report(self, doc: dict[str, Any]) -> LoadgenReport:
        if "samples" in doc:
            assert self.window is not None
            return report_from_samples(doc, self.window)
        return LoadgenReport.from_json(doc)


# -- results -------------------------------------------------------------------------------


def peer_results(
    spec: RunSpec,
    reports: list[LoadgenReport],
    nodes: list[NodeWindow],
    safety: Safety,
    env: dict[str, Any],
    peer: dict[str, Any],
) -> dict[str, Any]:
    """The results object of ``phalanx bench --json`` for a peer system, plus ``peer``
    (what was run: software, version, settings, how each figure was measured)."""
    results = build_results(spec, reports, nodes, safety, env)
    results["peer"] = peer
    return results


def write_json(results: dict[str, Any], path: Path) -> None:
    """Write ``results`` as phalanx bench does (indented JSON), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(to_json(results) + "\n")
    os.replace(tmp, path)


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        print(f"{what} needs root (apt-get); install it by hand or run as root",
              file=sys.stderr)
        raise SystemExit(2)
