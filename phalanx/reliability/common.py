"""What the three harnesses share: the ledger load process, cluster polls, summaries."""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from phalanx.cluster import ClusterError, LocalCluster


class HarnessError(RuntimeError):
    """The harness could not run its experiment (not a finding about phalanx)."""


def percentiles(values: Iterable[float], points: tuple[float, ...] = (0.5, 0.9, 0.99)
                ) -> dict[str, float | int | None]:
    """Nearest-rank percentiles, the maximum and the count (None when empty)."""
    ordered = sorted(values)
    summary: dict[str, float | int | None] = {"count": len(ordered)}
    for p in points:
        rank = max(0, min(len(ordered) - 1, math.ceil(p * len(ordered)) - 1))
        summary[f"p{round(p * 100):d}"] = round(ordered[rank], 4) if ordered else None
    summary["max"] = round(ordered[-1], 4) if ordered else None
    return summary


def statuses(cluster: LocalCluster, ids: Iterable[int] | None = None,
             timeout: float = 2.0) -> dict[int, dict[str, Any] | None]:
    """``/status`` of the replicas (None for one that does not answer)."""
    answers: dict[int, dict[str, Any] | None] = {}
    for i in range(cluster.n) if ids is None else ids:
        try:
            answers[i] = cluster.status(i, timeout=timeout)
        except (OSError, ValueError):
            answers[i] = None
    return answers


def primary_of(answers: dict[int, dict[str, Any] | None]) -> int:
    """The primary most replicas name (0 if none says)."""
    votes: dict[int, int] = {}
    for status in answers.values():
        if status is not None and isinstance(status.get("primary"), int):
            votes[status["primary"]] = votes.get(status["primary"], 0) + 1
    return max(votes, key=lambda p: votes[p]) if votes else 0


def executed(status: dict[str, Any] | None) -> int:
    value = status.get("executed_seq") if status else None
    return value if isinstance(value, int) else -1


def settle(cluster: LocalCluster, timeout: float) -> dict[int, dict[str, Any] | None]:
    """Wait (the load stopped) until every replica reports one executed seq, the same in
    two polls in a row; returns the last statuses, whether or not that happened in time.
    Unlike :meth:`LocalCluster.wait_converged` it does not wait for equal state roots:
    replicas at one seq with different roots have diverged, and waiting cannot help."""
    deadline = time.monotonic() + timeout
    previous: set[int] | None = None
    while True:
        answers = statuses(cluster)
        seqs = {executed(s) for s in answers.values()}
        if len(seqs) == 1 and -1 not in seqs and seqs == previous:
            return answers
        if time.monotonic() > deadline:
            return answers
        previous = seqs
        time.sleep(0.3)


def process_memory(pid: int) -> dict[str, int] | None:
    """Resident memory of process ``pid`` in bytes (Linux ``/proc``): ``anon`` (heap,
    what a leak grows), ``file`` (mapped file pages — LMDB's memory map: the page cache,
    reclaimable) and ``total``; None if it cannot be read."""
    fields = {"RssAnon:": "anon", "RssFile:": "file", "RssShmem:": "shmem"}
    memory = {"anon": 0, "file": 0, "shmem": 0}
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:  # "RssAnon:\t   31792 kB"
                parts = line.split()
                if parts and parts[0] in fields:
                    memory[fields[parts[0]]] = int(parts[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    memory["total"] = memory["anon"] + memory["file"] + memory["shmem"]
    return memory


def write_json(path: str | os.PathLike[str], doc: Any) -> None:
    Path(path).write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")


class LoadProcess:
    """The ledger load (:mod:`phalanx.reliability.ledger_load`) as a child process."""

    def __init__(self, config_path: Path, journal: Path, *, seed: int, wallets: int,
                 sdk_wallets: int, log: Path, drain: float = 60.0) -> None:
        self.journal = journal
        self.drain = drain
        journal.unlink(missing_ok=True)
        self._log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "phalanx.reliability.ledger_load",
             "--config", str(config_path), "--seed", str(seed), "--wallets", str(wallets),
             "--sdk-wallets", str(sdk_wallets), "--journal", str(journal),
             "--drain", str(drain)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = self.proc.stdout.readline().decode().strip()  # the child times out itself
        if not line.startswith("ready") or time.monotonic() > deadline:
            self.kill()
            raise HarnessError(f"the ledger load did not start: {line or 'no answer'} "
                               f"(see {self._log.name})")

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int | None:
        """Ask the wallets to finish; returns the exit code (None: it had to be killed)."""
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.write(b"stop\n")
                self.proc.stdin.close()
        try:
            code: int | None = self.proc.wait(self.drain + 30)
        except subprocess.TimeoutExpired:
            self.kill()
            code = None
        self._log.close()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def ack_rate_gaps(ack_times: Iterable[float], windows: list[tuple[float, float]],
                  horizon: float = float("inf")) -> Iterator[float | None]:
    """For each (start, end) window: the longest time without an acknowledgement that
    begins in it — from ``start`` or an acknowledgement inside, to the next one, which may
    come after ``end`` (a stall that outlasts its window counts whole) but not after
    ``horizon`` (when the load stopped). None if no acknowledgement came after ``start``."""
    import numpy as np

    times = np.sort(np.fromiter(ack_times, dtype=float))
    times = times[times < horizon]
    for start, end in windows:
        lo, hi = np.searchsorted(times, [start, end])
        closing = times[hi:hi + 1]  # the first acknowledgement at or after the end
        edges = np.concatenate(([start], times[lo:hi], closing))
        yield float(np.max(np.diff(edges))) if len(edges) > 1 else None


def print_findings(findings: dict[str, Any], console: Any, most: int) -> None:
    """Each kind of finding with its count and up to ``most`` examples."""
    for kind, found in findings.items():
        console.print(f"  [red]{kind}[/red]: {found['count']}", highlight=False)
        for example in found["examples"][:most]:
            console.print(f"    {example}", highlight=False, markup=False, soft_wrap=True)


def run_report(
    title: str,
    run: Callable[[Callable[[str], None]], dict[str, Any]],
    json_path: str | None,
    console: Any,
    summarize: Callable[[dict[str, Any], Any], None],
    also: Callable[[dict[str, Any]], None] | None = None,
) -> int:
    """A harness's CLI command: ``run(say)`` with its progress lines on ``console``, the
    report written to ``json_path`` (and given to ``also``), then summarized. Returns 0
    iff every check passed, 1 with findings, 2 if the harness could not run."""
    try:
        report = run(lambda line: console.print(line, highlight=False, markup=False))
    except (HarnessError, ClusterError, TimeoutError) as exc:
        console.print(f"[red]{title} could not run: {exc}[/red]", soft_wrap=True)
        return 2
    if json_path:
        write_json(json_path, report)
    if also is not None:
        also(report)
    summarize(report, console)
    return 0 if report["ok"] else 1
