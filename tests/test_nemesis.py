"""The real-process nemesis: schedule parsing, in-process link faults, and one short
``phalanx bench --nemesis`` run (SIGKILL/restart, SIGSTOP/SIGCONT, a partition and a
slowed link) that must end with equal state roots and consistent logs everywhere."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_bench import _free_port_range

from phalanx.byzantine.nemesis import NemesisError, load_schedule
from phalanx.runtime.linkfaults import LinkFaults, read_control, write_control
from phalanx.runtime.wan import Shaper

SCHEDULE = """
[[event]]
at = 0.5
action = "partition"
groups = [[0, 1], [2, 3]]
[[event]]
at = 1.5
action = "heal"
[[event]]
at = 1.8
action = "slow"
link = [0, 2]
delay_ms = 30
[[event]]
at = 2.2
action = "stop"
replica = 3
[[event]]
at = 3.0
action = "cont"
replica = 3
[[event]]
at = 3.3
action = "kill"
replica = "primary"
[[event]]
at = 4.5
action = "restart"
replica = "killed"
[[event]]
at = 5.0
action = "heal"
"""


def test_schedule_parses_sorts_and_resolves_primary_later(tmp_path: Path):
    path = tmp_path / "s.toml"
    path.write_text(SCHEDULE)
    events = load_schedule(path, n=4, duration=8.0)
    assert [e.action for e in events][:3] == ["partition", "heal", "slow"]
    assert events[0].groups == ((0, 1), (2, 3))
    assert next(e for e in events if e.action == "kill").replica == "primary"
    assert next(e for e in events if e.action == "restart").replica == "killed"
    as_json = tmp_path / "s.json"
    as_json.write_text(json.dumps([{"at": 1, "action": "kill", "replica": 2}]))
    assert load_schedule(as_json, n=4, duration=8.0)[0].replica == 2


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ({"at": 1, "action": "explode", "replica": 0}, "action must be one of"),
        ({"at": 9, "action": "kill", "replica": 0}, "within the measured window"),
        ({"at": 1, "action": "kill", "replica": 4}, "no replica 4"),
        ({"at": 1, "action": "restart", "replica": "primary"}, "no replica"),
        ({"at": 1, "action": "kill", "replica": "killed"}, "no replica"),
        ({"at": 1, "action": "cont", "replica": "killed"}, "no replica"),
        ({"at": 1, "action": "partition", "groups": [[0, 1], [1, 2]]}, "two groups"),
        ({"at": 1, "action": "slow", "link": [0, 1], "delay_ms": -5}, "delay_ms"),
        ({"at": 1, "action": "kill", "replica": 0, "when": 2}, "unknown keys"),
    ],
)
def test_bad_schedules_are_refused_with_the_event_named(tmp_path: Path, event, message):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"event": [event]}))
    with pytest.raises(NemesisError, match=message):
        load_schedule(path, n=4, duration=8.0)


def test_link_faults_drop_blocked_links_and_delay_slowed_ones(tmp_path: Path):
    write_control(tmp_path, 1, {2}, {3: 20.0})
    blocked, delays = read_control(tmp_path / "replica-1.json")
    assert blocked == {2} and delays == {3: 0.02}

    async def main() -> list[tuple[int, float]]:
        loop = asyncio.get_running_loop()
        faults = LinkFaults(Shaper({0: 0.01}, {}))  # keeps the WAN delay it wraps
        faults.apply(blocked, delays)
        got: list[tuple[int, float]] = []
        start = loop.time()
        for dest in (0, 2, 3, 4):
            faults.send(dest, 10, lambda d: got.append((d, loop.time() - start)), dest)
        await asyncio.sleep(0.1)
        assert faults.dropped == 1
        faults.apply(frozenset(), {})  # healed
        faults.send(2, 10, lambda d: got.append((d, -1.0)), 2)
        return got

    got = dict(asyncio.run(main()))
    assert 2 in got and got[2] == -1.0  # delivered only once healed
    assert got[4] < 0.01 <= got[0] and got[3] >= 0.02


@pytest.mark.integration
def test_bench_with_a_nemesis_ends_safe_with_every_fault_applied(tmp_path: Path):
    schedule = tmp_path / "nemesis.toml"
    schedule.write_text(SCHEDULE)
    out = tmp_path / "out.json"
    proc = subprocess.run(
        [sys.executable, "-m", "phalanx.cli", "bench", "--n", "4", "--clients", "8",
         "--duration", "7", "--warmup", "1", "--durability", "process",
         "--base-port", str(_free_port_range(8)), "--dir", str(tmp_path / "work"),
         "--nemesis", str(schedule), "--json", str(out)],
        capture_output=True, text=True, timeout=150,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())
    applied = [e["action"] for e in results["nemesis"]["events"]]
    assert applied == ["partition", "heal", "slow", "stop", "cont", "kill", "restart", "heal"]
    assert all("error" not in e and "skipped" not in e for e in results["nemesis"]["events"])
    assert len(results["nemesis"]["killed"]) == 1  # the primary when the kill fired
    safety = results["safety"]
    assert safety["state_roots_equal"] and safety["logs_consistent"] and safety["converged"]
    assert set(safety["executed_seq"]) == {"0", "1", "2", "3"}  # the restarted one too
    assert results["committed_tx"] > 0
    logs = (tmp_path / "work" / "logs").glob("replica-*.log")
    assert any("blocked [2, 3]" in p.read_text() for p in logs)
