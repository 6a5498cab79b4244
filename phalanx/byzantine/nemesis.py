"""The nemesis for real processes: ``phalanx bench --nemesis FILE``.

A schedule (TOML or JSON) lists faults at times relative to the start of the measured
window::

    [[event]]
    at = 2.0
    action = "kill"          # SIGKILL
    replica = "primary"      # or a replica id
    [[event]]
    at = 4.0
    action = "restart"       # start it again on its data directory
    replica = "killed"       # the last one killed (or "stopped" for cont), or an id
    [[event]]
    at = 5.0
    action = "stop"          # SIGSTOP; "cont" sends SIGCONT
    replica = 2
    [[event]]
    at = 7.0
    action = "partition"     # replicas in different groups cannot talk
    groups = [[0, 1], [2, 3]]
    [[event]]
    at = 9.0
    action = "slow"          # add delay_ms to the link, both directions
    link = [0, 3]
    delay_ms = 50
    [[event]]
    at = 11.0
    action = "heal"          # end every partition and slow link

Kills and stops are signals to the replica processes; partitions and slow links are
written to per-replica control files that each replica's transport re-reads on SIGUSR1
(:mod:`phalanx.runtime.linkfaults`), so no root and no iptables/tc are needed. At the end
of the window every stopped replica is continued and every link healed; the bench's
safety checks (state roots, log digests of the replicas alive at the end) follow.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
import tomllib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from phalanx.protocols.registry import protocol
from phalanx.runtime.linkfaults import write_control

ACTIONS = ("kill", "restart", "stop", "cont", "partition", "slow", "heal")
RESTART_TIMEOUT_S = 15.0


class NemesisError(ValueError):
    """A schedule that cannot be run (the message says which event and why)."""


@dataclass(frozen=True)
class Event:
    at: float
    action: str
    replica: int | str | None = None  # an id, or "primary"/"killed"/"stopped" (when it fires)
    groups: tuple[tuple[int, ...], ...] = ()
    link: tuple[int, int] | None = None
    delay_ms: float = 0.0


def load_schedule(path: str | Path, n: int, duration: float) -> list[Event]:
    """Parse and check a schedule file (``.toml`` or ``.json``) for ``n`` replicas and a
    window of ``duration`` seconds; events come back sorted by time."""
    path = Path(path)
    try:
        text = path.read_text()
        raw = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (OSError, ValueError) as exc:
        raise NemesisError(f"nemesis schedule {path}: {exc}") from None
    items = raw.get("event", raw.get("events")) if isinstance(raw, dict) else raw
    if not isinstance(items, list) or not items:
        raise NemesisError(f"nemesis schedule {path}: expected a list of [[event]] tables")
    return sorted((parse_event(item, i, n, duration) for i, item in enumerate(items)),
                  key=lambda e: e.at)


def parse_event(item: Any, index: int, n: int, duration: float) -> Event:
    where = f"nemesis event #{index + 1}"
    if not isinstance(item, dict):
        raise NemesisError(f"{where}: expected a table, got {item!r}")
    unknown = set(item) - {"at", "action", "replica", "groups", "link", "delay_ms"}
    if unknown:
        raise NemesisError(f"{where}: unknown keys {sorted(unknown)}")
    action = item.get("action")
    if action not in ACTIONS:
        raise NemesisError(f"{where}: action must be one of {', '.join(ACTIONS)}, got {action!r}")
    at = item.get("at")
    if not isinstance(at, int | float) or not 0 <= at < duration:
        raise NemesisError(f"{where}: 'at' must be within the measured window [0, {duration:g})")

    def replica_id(value: Any) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < n:
            raise NemesisError(f"{where}: no replica {value!r} (n={n})")
        return value

    replica: int | str | None = None
    groups: tuple[tuple[int, ...], ...] = ()
    link = None
    delay = 0.0
    if action in ("kill", "restart", "stop", "cont"):
        value = item.get("replica")
        # Names resolved when the event fires: the primary then, or the replica the last
        # kill (stop) hit — a view change may have moved the primary in between.
        symbolic = {"kill": "primary", "stop": "primary", "restart": "killed", "cont": "stopped"}
        replica = value if value == symbolic[action] else replica_id(value)
    elif action == "partition":
        raw_groups = item.get("groups")
        if not isinstance(raw_groups, list) or len(raw_groups) < 2:
            raise NemesisError(f"{where}: 'groups' must list at least two groups of replicas")
        groups = tuple(tuple(replica_id(r) for r in g) for g in raw_groups)
        members = [r for g in groups for r in g]
        if len(members) != len(set(members)):
            raise NemesisError(f"{where}: a replica is in two groups")
    elif action == "slow":
        raw_link = item.get("link")
        if not isinstance(raw_link, list) or len(raw_link) != 2:
            raise NemesisError(f"{where}: 'link' must be two replica ids")
        link = (replica_id(raw_link[0]), replica_id(raw_link[1]))
        raw_delay = item.get("delay_ms")
        if not isinstance(raw_delay, int | float) or not 0 < raw_delay <= 60_000:
            raise NemesisError(f"{where}: 'delay_ms' must be in (0, 60000]")
        delay = raw_delay
    return Event(float(at), action, replica, groups, link, float(delay))


class NemesisCluster(Protocol):
    """What the nemesis needs from the bench's cluster."""

    config: Any
    killed: set[int]
    children: Any

    def kill(self, replica_id: int) -> None: ...

    async def restart(self, replica_id: int) -> None: ...

    async def statuses(self, ids: list[int]) -> dict[int, dict[str, Any] | None]: ...

    async def status(self, replica_id: int, timeout: float = ...) -> dict[str, Any] | None: ...


@dataclass
class Nemesis:
    """Runs a schedule against a bench cluster and records what it did."""

    events: list[Event]
    control_dir: Path
    applied: list[dict[str, Any]] = field(default_factory=list)
    stopped: set[int] = field(default_factory=set)
    killed_ever: set[int] = field(default_factory=set)
    last_killed: int | None = None
    last_stopped: int | None = None
    last_status: dict[int, dict[str, Any] | None] = field(default_factory=dict)
    _blocked: dict[int, set[int]] = field(default_factory=dict)
    _delays: dict[int, dict[int, float]] = field(default_factory=dict)

    def prepare(self, n: int) -> None:
        """Create the control files (no faults) before the replicas start."""
        self.control_dir.mkdir(parents=True, exist_ok=True)
        for r in range(n):
            self._blocked[r], self._delays[r] = set(), {}
            write_control(self.control_dir, r, set(), {})

    async def run(self, cluster: NemesisCluster, window_start: float,
                  sleep_until: Callable[[float], Awaitable[None]]) -> None:
        for event in self.events:
            await sleep_until(window_start + event.at)
            began = time.time() - window_start
            detail = await self._apply(cluster, event)
            self.applied.append({"at_s": round(began, 3), "action": event.action, **detail,
                                 "took_s": round(time.time() - window_start - began, 3)})

    async def finish(self, cluster: NemesisCluster) -> None:
        """End of the window: continue stopped replicas, heal every link."""
        for r in sorted(self.stopped):
            self._signal(cluster, r, signal.SIGCONT)
        self.stopped.clear()
        self._heal(cluster)

    def report(self) -> dict[str, Any]:
        return {"events": self.applied, "killed": sorted(self.killed_ever)}

    # -- actions ------------------------------------------------------------------------

    async def _apply(self, cluster: NemesisCluster, event: Event) -> dict[str, Any]:
        action = event.action
        if action in ("kill", "stop", "restart", "cont"):
            try:
                r = await self._target(cluster, event.replica)
            except NemesisError as e:
                return {"skipped": str(e)}
            if action == "kill":
                # Its counters up to now stand for its share of the window.
                self.last_status[r] = await cluster.status(r, timeout=1.0)
                self.stopped.discard(r)
                cluster.kill(r)
                self.killed_ever.add(r)
                self.last_killed = r
            elif action == "restart":
                if r not in cluster.killed:
                    return {"replica": r, "skipped": "not killed"}
                await cluster.restart(r)
                # It reads its link faults as it starts; signalling it before its handler
                # is installed would kill it, so wait until it serves /status.
                deadline = time.monotonic() + RESTART_TIMEOUT_S
                while await cluster.status(r, timeout=1.0) is None:
                    if time.monotonic() > deadline:
                        return {"replica": r, "error": "did not answer /status after restart"}
                    await asyncio.sleep(0.1)
            elif action == "stop":
                self._signal(cluster, r, signal.SIGSTOP)
                self.stopped.add(r)
                self.last_stopped = r
            else:
                self._signal(cluster, r, signal.SIGCONT)
                self.stopped.discard(r)
            return {"replica": r}
        if action == "partition":
            side = {r: i for i, group in enumerate(event.groups) for r in group}
            for a, ga in side.items():
                for b, gb in side.items():
                    if ga != gb:
                        self._blocked[a].add(b)
            self._push(cluster)
            return {"groups": [list(g) for g in event.groups]}
        if action == "slow":
            a, b = event.link or (0, 0)
            self._delays[a][b] = event.delay_ms
            self._delays[b][a] = event.delay_ms
            self._push(cluster)
            return {"link": [a, b], "delay_ms": event.delay_ms}
        self._heal(cluster)
        return {}

    async def _target(self, cluster: NemesisCluster, replica: int | str | None) -> int:
        if replica in ("killed", "stopped"):
            last = self.last_killed if replica == "killed" else self.last_stopped
            if last is None:
                raise NemesisError(f"no replica was {replica} before this event")
            return last
        if replica == "primary":
            # The leader most live replicas name, in the protocol's words.
            live = [r.id for r in cluster.config.replicas if r.id not in cluster.killed]
            spec = protocol(cluster.config.protocol)
            return spec.fault_target(await cluster.statuses(live))
        assert isinstance(replica, int)
        return replica

    def _heal(self, cluster: NemesisCluster) -> None:
        for r in self._blocked:
            self._blocked[r].clear()
            self._delays[r].clear()
        self._push(cluster)

    def _push(self, cluster: NemesisCluster) -> None:
        for r in self._blocked:
            write_control(self.control_dir, r, self._blocked[r], self._delays[r])
        for r in self._blocked:
            if r not in cluster.killed:
                self._signal(cluster, r, signal.SIGUSR1)

    def _signal(self, cluster: NemesisCluster, replica: int, sig: int) -> None:
        proc = cluster.children.procs.get(f"replica-{replica}")
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, sig)


def make_nemesis(schedule: str | Path, n: int, duration: float, workdir: Path) -> Nemesis:
    """Load ``schedule`` and prepare the control files in ``workdir``."""
    nemesis = Nemesis(load_schedule(schedule, n, duration), workdir / "nemesis")
    nemesis.prepare(n)
    return nemesis
