"""Crash torture: random SIGKILL/restart cycles of real replicas under a ledger load.

The run (``phalanx reliability crash``):

1. a fresh ledger cluster (:class:`~phalanx.cluster.LocalCluster`, durability ``fsync``)
   whose wallets are funded at genesis, with the store failpoints enabled
   (:mod:`phalanx.storage.failpoints`); the load (:mod:`~phalanx.reliability.ledger_load`)
   starts and journals every acknowledged transfer;
2. ``cycles`` times: the cluster runs whole for a random while, then one replica — the
   current primary with probability ``primary_bias`` — or, at n >= 7, two at once (f
   down) are killed, and every ``cluster_cut_every``-th cycle all of them. A kill is a
   SIGKILL from outside at that random instant, or (share ``power_loss``) a *power cut*:
   the victim is armed to kill itself inside a durability window — after a log entry's
   ``pwrite`` and before its ``fdatasync``, or while a log generation is committed to
   LMDB — first throwing away the unsynced log bytes (``discard``) or all but a random
   prefix of them (``torn``), or nothing (``none``). After a random down time the victims
   restart on their data directories; the harness measures how long until each serves
   ``/status`` and until it has executed what the others had executed when it came back;
3. the load stops (each wallet settles its last transfer), the replicas converge, and
   the checks of :mod:`phalanx.reliability.checks` run: executed states against the
   acknowledgements, state roots, and — after a clean stop — every replica's blocks and
   tx index on disk.

``faults`` plant deliberate bugs, to show the checks catch them: ``lose-acked`` (every
store skips its ``fdatasync`` and every cycle cuts the whole cluster's power: acknowledged
transfers vanish), ``diverge`` (the last replica's execution is wrong: its roots and
blocks leave the others'), ``drop-record`` (replica 1's store silently drops tx index
records).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from phalanx.cluster import ClusterError, LocalCluster
from phalanx.config import default_options
from phalanx.core.address import Address
from phalanx.reliability import wallets as wallet_plan
from phalanx.reliability.checks import (
    BlockAudit,
    Findings,
    LoadRecord,
    StoreReader,
    check_agreement,
    check_state,
    read_journal,
)
from phalanx.reliability.common import (
    LoadProcess,
    ack_rate_gaps,
    executed,
    percentiles,
    primary_of,
    print_findings,
    run_report,
    settle,
    statuses,
)
from phalanx.storage import failpoints

FAULTS = ("lose-acked", "diverge", "drop-record")
POINT_TIMEOUT_S = {"wal_sync": 5.0, "wal_apply": 20.0}
"""How long an armed replica may take to reach its failpoint before the harness kills
it from outside (counted: ``failpoint_missed``)."""
APPLY_SHARE = 0.25  # of power cuts at one replica: inside a log generation's LMDB commit
APPLY_DELAY_MS = 30.0  # the kill comes 0..this many ms into that commit
CUTS = ("discard", "torn", "none")
DROP_EVERY = 50


@dataclass
class CrashSpec:
    """One torture run (see the module docstring)."""

    workdir: Path
    n: int = 4
    cycles: int = 30
    wallets: int = 32
    sdk_wallets: int = 2
    seed: int = 1
    power_loss: float = 0.5
    cluster_cut_every: int = 25
    primary_bias: float = 0.5
    double_kill: float = 0.5
    up_s: tuple[float, float] = (1.0, 3.0)
    down_s: tuple[float, float] = (0.0, 1.5)
    checkpoint_interval: int = 64
    wal_bytes: int = 1 << 20
    faults: tuple[str, ...] = ()
    catch_up_timeout: float = 60.0
    converge_timeout: float = 120.0
    account_timeout: float = 20.0  # for a replica's GET /account answers at the end
    drain_s: float = 60.0  # for the wallets to settle their last transfer at the end

    def validate(self) -> None:
        if self.n < 4 or self.cycles < 0 or self.wallets < 2:
            raise ValueError("need n >= 4, cycles >= 0 and at least 2 wallets")
        if not 0 <= self.sdk_wallets <= self.wallets:
            raise ValueError("--sdk-wallets must be between 0 and --wallets")
        for name in ("power_loss", "primary_bias", "double_kill"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name.replace('_', '-')} must be a share in [0, 1]")
        if not set(self.faults) <= set(FAULTS):
            raise ValueError(f"faults must be among {', '.join(FAULTS)}")
        if self.wal_bytes < 4096:
            raise ValueError("--wal-bytes must be at least 4096")

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["workdir"] = str(self.workdir)
        return doc


class TortureCluster(LocalCluster):
    """A :class:`LocalCluster` whose replica ``faulty`` (if any) runs with a planted bug."""

    faulty: int | None = None

    def node_command(self, i: Address) -> list[str]:
        command = super().node_command(i)
        if i.replica == self.faulty:
            # python -m phalanx.reliability.faulty_node diverge node --config ... --id i
            return [command[0], "-m", "phalanx.reliability.faulty_node", "diverge",
                    *command[3:]]
        return command


@dataclass
class Cycle:
    """What one cycle did and how long the victims took to come back."""

    index: int
    kind: str  # "sigkill", "power" or "cluster_cut"
    victims: list[int]
    primary: int
    at: float = 0.0  # wall time of the kill
    points: list[dict[str, Any]] = field(default_factory=list)  # power cuts: point, cut
    missed: int = 0  # armed victims that did not reach their failpoint in time
    down_s: float = 0.0
    serve_s: list[float] = field(default_factory=list)  # restart -> answers /status
    recovered_seq: list[int] = field(default_factory=list)  # executed seq once serving
    target_seq: int = 0
    catch_up_s: float | None = None  # restart -> every victim executed target_seq
    live_s: float | None = None  # restart -> the whole cluster in one view, committing
    commit_pause_s: float | None = None  # longest time without an ack after the kill

    @property
    def primary_hit(self) -> bool:
        return self.primary in self.victims


class CrashTorture:
    """Runs a :class:`CrashSpec`; :meth:`run` returns the report (a JSON object)."""

    def __init__(self, spec: CrashSpec, say: Any = print) -> None:
        spec.validate()
        self.spec = spec
        self.say = say
        self.rng = random.Random(spec.seed)
        self.workdir = spec.workdir
        self.control = self.workdir / "failpoints"
        self.findings = Findings()
        self.cycles: list[Cycle] = []
        self.unexpected_exits: list[dict[str, Any]] = []
        self.load_stopped_at = float("inf")

    # -- set-up -------------------------------------------------------------------------

    def _prepare(self) -> TortureCluster:
        spec = self.spec
        shutil.rmtree(self.workdir / "cluster", ignore_errors=True)
        shutil.rmtree(self.control, ignore_errors=True)
        self.control.mkdir(parents=True)
        for i in range(spec.n):
            options: dict[str, Any] = {"wal_bytes": spec.wal_bytes}
            if "lose-acked" in spec.faults:
                options["nosync"] = True
            if "drop-record" in spec.faults and i == 1:
                options.update(drop_prefix="Lt", drop_every=DROP_EVERY)
            failpoints.options_path(self.control, f"replica-{i}").write_text(
                json.dumps(options))
        window = max(default_options("pbft")["window"], 2 * spec.checkpoint_interval)
        cluster = TortureCluster(
            self.workdir / "cluster", spec.n, app="ledger",
            genesis=wallet_plan.genesis(spec.seed, spec.wallets),
            options={"checkpoint_interval": spec.checkpoint_interval, "window": window},
        )
        if "diverge" in spec.faults:
            cluster.faulty = spec.n - 1
        return cluster

    # -- the run ------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        spec = self.spec
        started = time.time()
        previous_env = os.environ.get(failpoints.FAILPOINTS_ENV)
        os.environ[failpoints.FAILPOINTS_ENV] = str(self.control)
        cluster = self._prepare()
        load: LoadProcess | None = None
        try:
            cluster.start()
            load = LoadProcess(cluster.config_path, self.workdir / "journal.jsonl",
                               seed=spec.seed, wallets=spec.wallets,
                               sdk_wallets=spec.sdk_wallets, drain=spec.drain_s,
                               log=self.workdir / "cluster" / "logs" / "load.log")
            load.wait_ready()
            self.say(f"crash torture: n={spec.n}, {spec.cycles} cycles, {spec.wallets} "
                     f"wallets, power-cut share {spec.power_loss:g}, whole-cluster cut every "
                     f"{spec.cluster_cut_every or '-'} cycles, planted faults "
                     f"{', '.join(spec.faults) or 'none'}; "
                     f"work dir {self.workdir}")
            for index in range(spec.cycles):
                time.sleep(self.rng.uniform(*spec.up_s))
                self._restart_the_dead(cluster)
                if not load.running:
                    self.findings.add("load_died", f"the load exited before cycle {index}")
                    break
                cycle = self._cycle(cluster, index)
                self.cycles.append(cycle)
                self.say(self._describe(cycle))
            time.sleep(self.rng.uniform(*spec.up_s))
            self.load_stopped_at = time.time()
            code = load.stop()
            if code != 0:
                self.findings.add("load_died", f"the load ended with {code}")
            record = read_journal(load.journal, spec.wallets)
            final = self._final_checks(cluster, record)
        finally:
            if load is not None:
                load.kill()
            cluster.close()
            if previous_env is None:
                os.environ.pop(failpoints.FAILPOINTS_ENV, None)
            else:
                os.environ[failpoints.FAILPOINTS_ENV] = previous_env
        audit = self._audit_stores(cluster, record, final.get("height"))
        return self._report(started, record, final, audit)

    def _restart_the_dead(self, cluster: TortureCluster) -> None:
        """A replica that exited without being killed is a finding; it is restarted."""
        for i in range(cluster.n):
            code = cluster.returncode(i)
            if code is not None:
                self.unexpected_exits.append({"replica": i, "code": code,
                                              "log": cluster.log_tail(i, 5)})
                self.findings.add("replica_exited", f"replica {i} exited with {code}")
                self._restart(cluster, i)

    def _restart(self, cluster: TortureCluster, i: int) -> float:
        failpoints.arm_path(self.control, f"replica-{i}").unlink(missing_ok=True)
        begin = time.monotonic()
        try:
            cluster.restart(i, timeout=60.0)
        except (ClusterError, TimeoutError) as exc:
            self.findings.add("restart_failed", f"replica {i}: {exc}")
        return time.monotonic() - begin

    def _cycle(self, cluster: TortureCluster, index: int) -> Cycle:
        spec, rng, n = self.spec, self.rng, self.spec.n
        before = statuses(cluster)
        primary = primary_of(before)
        whole = spec.cluster_cut_every > 0 and (index + 1) % spec.cluster_cut_every == 0
        if "lose-acked" in spec.faults:
            whole = True
        if whole:
            victims = list(range(n))
            kind = "cluster_cut"
        else:
            f = cluster.config.f
            count = 2 if f >= 2 and rng.random() < spec.double_kill else 1
            first = primary if rng.random() < spec.primary_bias else rng.randrange(n)
            victims = [first, *rng.sample([r for r in range(n) if r != first], count - 1)]
            kind = "power" if rng.random() < spec.power_loss else "sigkill"
        cycle = Cycle(index, kind, victims, primary)
        cycle.at = time.time()
        if kind == "sigkill":
            for v in victims:
                cluster.kill(v)
        else:
            self._power_cut(cluster, cycle)
        down = rng.uniform(*spec.down_s)
        time.sleep(down)
        cycle.down_s = round(time.time() - cycle.at, 3)
        restarted_at = time.monotonic()
        for v in victims:
            cycle.serve_s.append(round(self._restart(cluster, v), 3))
        now = statuses(cluster)
        cycle.recovered_seq = [executed(now[v]) for v in victims]
        others = [executed(s) for r, s in now.items() if r not in victims]
        # After a whole-cluster cut: until the cluster executes past what it had before.
        cycle.target_seq = max(others) if others else max(executed(s) for s in before.values()) + 1
        deadline = time.monotonic() + spec.catch_up_timeout
        while time.monotonic() < deadline:
            current = statuses(cluster, victims)
            if min(executed(s) for s in current.values()) >= cycle.target_seq:
                cycle.catch_up_s = round(time.monotonic() - restarted_at, 3)
                break
            time.sleep(0.05)
        else:
            self.findings.add("no_catch_up", f"cycle {index}: replicas {victims} did not "
                              f"reach seq {cycle.target_seq} within {spec.catch_up_timeout:g} s")
        # The next kill comes only once the cluster is whole again (every replica in one
        # view, the load committing): a restarted primary counts as faulty until the next
        # view (docs/pbft.md), and a second fault before then would exceed f.
        if self._wait_live(cluster, restarted_at + spec.catch_up_timeout):
            cycle.live_s = round(time.monotonic() - restarted_at, 3)
        else:
            self.findings.add("not_live", f"cycle {index}: the cluster was not whole and "
                              f"committing {spec.catch_up_timeout:g} s after the restart")
        return cycle

    def _wait_live(self, cluster: TortureCluster, deadline: float) -> bool:
        """Until every replica answers in one view and the executed seq moves on."""
        previous = None
        while time.monotonic() < deadline:
            answers = statuses(cluster)
            top = max(executed(s) for s in answers.values())
            views = {s.get("view") for s in answers.values() if s is not None}
            whole = len(views) == 1 and None not in answers.values()
            if whole and previous is not None and top > previous:
                return True
            previous = top if whole else None
            time.sleep(0.2)
        return False

    def _power_cut(self, cluster: TortureCluster, cycle: Cycle) -> None:
        """Arm every victim at once; wait for each to kill itself (or kill it)."""
        waits = {}
        for v in cycle.victims:
            point = "wal_sync" if cycle.kind == "cluster_cut" or (
                self.rng.random() >= APPLY_SHARE) else "wal_apply"
            cut = "discard" if "lose-acked" in self.spec.faults else self.rng.choice(CUTS)
            failpoints.write_arm(self.control, f"replica-{v}", point, cut, APPLY_DELAY_MS)
            cycle.points.append({"replica": v, "point": point, "cut": cut})
            pid = cluster.pids.get(v)
            if pid is not None:
                os.kill(pid, failpoints.ARM_SIGNAL)
            waits[v] = time.monotonic() + POINT_TIMEOUT_S[point]
        while waits:
            for v, deadline in list(waits.items()):
                if not cluster.alive(v):
                    del waits[v]
                elif time.monotonic() > deadline:
                    cluster.kill(v, signal.SIGKILL)
                    cycle.missed += 1
                    del waits[v]
            time.sleep(0.005)

    def _describe(self, c: Cycle) -> str:
        who = ", ".join(f"{v}{' (primary)' if v == c.primary else ''}" for v in c.victims)
        how = {"sigkill": "SIGKILL", "power": "power cut", "cluster_cut": "whole-cluster cut"}
        cuts = ""
        if c.points:
            cuts = " [" + ", ".join(f"{p['point']}/{p['cut']}" for p in c.points) + "]"
        caught = f"{c.catch_up_s:.2f} s" if c.catch_up_s is not None else "NO"
        live = f"{c.live_s:.2f} s" if c.live_s is not None else "NO"
        return (f"cycle {c.index + 1:4d}/{self.spec.cycles}: {how[c.kind]} {who}{cuts}; down "
                f"{c.down_s:.2f} s, serving after {max(c.serve_s):.2f} s, caught up with seq "
                f"{c.target_seq} after {caught}, cluster whole and committing after {live}")

    # -- the end ------------------------------------------------------------------------

    def _final_checks(self, cluster: TortureCluster, record: LoadRecord) -> dict[str, Any]:
        spec = self.spec
        self._restart_the_dead(cluster)
        answers = settle(cluster, spec.converge_timeout)
        final: dict[str, Any] = {
            "executed_seq": {r: executed(s) for r, s in answers.items()},
            "state_root": {r: s and s.get("state_root") for r, s in answers.items()},
            "block_hash": {r: s and s.get("block_hash") for r, s in answers.items()},
        }
        check_agreement(self.findings, answers)
        accounts, heights = self._accounts(cluster)
        final["height"] = max(heights) if heights else None
        check_state(self.findings, spec.seed, record, accounts)
        for anomaly in record.anomalies:
            self.findings.add("load_anomaly", json.dumps(anomaly))
        return final

    def _accounts(self, cluster: TortureCluster
                  ) -> tuple[dict[int, list[tuple[int, int] | None]], list[int]]:
        """Every wallet's executed (balance, nonce) on every replica, and their heights.
        ``GET /account`` answers once the replica holds a certified block; a replica
        that still has none after ``account_timeout`` seconds counts as unreadable."""
        accounts: dict[int, list[tuple[int, int] | None]] = {}
        heights: list[int] = []
        for replica in range(cluster.n):
            deadline = time.monotonic() + self.spec.account_timeout
            row: list[tuple[int, int] | None] = []
            for index in range(self.spec.wallets):
                address = wallet_plan.wallet(self.spec.seed, index).public_key.hex()
                body = _get_retrying(cluster, replica, f"/account/{address}", deadline)
                if body is None:
                    row.append(None)
                    continue
                state = body["executed"]
                row.append((state["balance"], state["nonce"]))
                heights.append(state["height"])
            accounts[replica] = row
        return accounts, heights

    def _audit_stores(self, cluster: TortureCluster, record: LoadRecord,
                      height: int | None) -> BlockAudit:
        """After the clean stop: every replica's blocks and tx index, from its store."""
        from phalanx.storage import Store

        index = {wallet_plan.wallet(self.spec.seed, i).public_key: i
                 for i in range(self.spec.wallets)}
        audit = BlockAudit(self.spec.seed, cluster.config.f, record, index)
        stores = {i: Store(str(cluster.dir / "data" / f"replica-{i}")) for i in range(cluster.n)}
        try:
            audit.run(self.findings, {i: StoreReader(s) for i, s in stores.items()}, height)
        finally:
            for store in stores.values():
                store.close()
        return audit

    def _report(self, started: float, record: LoadRecord, final: dict[str, Any],
                audit: BlockAudit) -> dict[str, Any]:
        stopped = self.load_stopped_at
        windows = [(c.at, self.cycles[i + 1].at if i + 1 < len(self.cycles) else stopped)
                   for i, c in enumerate(self.cycles)]
        gaps = ack_rate_gaps(record.ack_times, windows, horizon=stopped)
        for cycle, gap in zip(self.cycles, gaps, strict=True):
            cycle.commit_pause_s = None if gap is None else round(gap, 3)

        def recovery(cycles: list[Cycle]) -> dict[str, Any]:
            return {
                "cycles": len(cycles),
                "serve_s": percentiles(s for c in cycles for s in c.serve_s),
                "catch_up_s": percentiles(c.catch_up_s for c in cycles
                                          if c.catch_up_s is not None),
                "live_s": percentiles(c.live_s for c in cycles if c.live_s is not None),
                "commit_pause_s": percentiles(c.commit_pause_s for c in cycles
                                              if c.commit_pause_s is not None),
            }

        kinds: dict[str, Any] = {}
        for c in self.cycles:
            kinds[c.kind] = kinds.get(c.kind, 0) + 1
            for p in c.points:
                key = f"{p['point']}/{p['cut']}"
                kinds[key] = kinds.get(key, 0) + 1
        span = (max(record.ack_times) - min(record.ack_times)) if record.acks > 1 else 0.0
        return {
            "harness": "crash",
            "spec": self.spec.to_json(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
            "duration_s": round(time.time() - started, 1),
            "ok": not self.findings,
            "findings": self.findings.to_json(),
            "kills": {
                **kinds,
                "primary_hit": sum(c.primary_hit for c in self.cycles),
                "two_at_once": sum(len(c.victims) == 2 for c in self.cycles),
                "failpoint_missed": sum(c.missed for c in self.cycles),
                "replica_kills": sum(len(c.victims) for c in self.cycles),
            },
            "recovery": {
                "all": recovery(self.cycles),
                "primary_killed": recovery([c for c in self.cycles if c.primary_hit
                                            and c.kind != "cluster_cut"]),
                "backup_killed": recovery([c for c in self.cycles if not c.primary_hit]),
                "cluster_cut": recovery([c for c in self.cycles if c.kind == "cluster_cut"]),
            },
            "load": {
                "acknowledged": record.acks,
                "acknowledged_per_s": round(record.acks / span, 1) if span else None,
                "latency_s": percentiles(record.latencies),
                "settled_by_resend": record.consumed,
                "resends": record.retries,
                "anomalies": len(record.anomalies),
                "unfinished_at_stop": record.unfinished,
            },
            "final": final,
            "blocks": audit.summary(),
            "unexpected_exits": self.unexpected_exits,
            "cycles": [asdict(c) for c in self.cycles],
        }


def _get_retrying(cluster: LocalCluster, replica: int, path: str,
                  deadline: float) -> dict[str, Any] | None:
    """GET ``path``; a refusal (429 rate limit, 503 no certified state yet) or no answer
    is retried until ``deadline`` (monotonic), then None."""
    while True:
        try:
            body: dict[str, Any] | None = cluster.get_json(replica, path)
            return body
        except OSError:
            if time.monotonic() > deadline:
                return None
            time.sleep(0.2)
        except ValueError:
            return None


def summarize(report: dict[str, Any], console: Any) -> None:
    """The report's essentials as tables (the JSON has everything)."""
    from rich.table import Table

    spec = report["spec"]
    table = Table(title=f"crash torture: n={spec['n']}, {len(report['cycles'])} cycles "
                        f"in {report['duration_s']:.0f} s", show_header=False)
    table.add_column(justify="left")
    table.add_column(justify="right")
    kills = report["kills"]
    load = report["load"]
    rows = [
        ("replica kills (primary hit / two at once)",
         f"{kills['replica_kills']} ({kills['primary_hit']} / {kills['two_at_once']})"),
        ("SIGKILL / power-cut / whole-cluster-cut cycles",
         f"{kills.get('sigkill', 0)} / {kills.get('power', 0)} / {kills.get('cluster_cut', 0)}"),
        ("failpoints: wal_sync / wal_apply (missed)",
         f"{sum(v for k, v in kills.items() if k.startswith('wal_sync/'))} / "
         f"{sum(v for k, v in kills.items() if k.startswith('wal_apply/'))} "
         f"({kills['failpoint_missed']})"),
        ("acknowledged transfers", f"{load['acknowledged']:,}"),
        ("acknowledged per second", str(load["acknowledged_per_s"])),
        ("final executed seq / height",
         f"{max(report['final']['executed_seq'].values())} / {report['final']['height']}"),
    ]
    for name, part in report["recovery"].items():
        if part["cycles"]:
            serve, catch, pause = part["serve_s"], part["catch_up_s"], part["commit_pause_s"]
            live = part["live_s"]
            rows.append((f"{name}: serving p50/max (s)", f"{serve['p50']} / {serve['max']}"))
            rows.append((f"{name}: caught up p50/p90/max (s)",
                         f"{catch['p50']} / {catch['p90']} / {catch['max']}"))
            rows.append((f"{name}: whole and committing p50/p90/max (s)",
                         f"{live['p50']} / {live['p90']} / {live['max']}"))
            rows.append((f"{name}: longest commit pause p50/max (s)",
                         f"{pause['p50']} / {pause['max']}"))
    for row in rows:
        table.add_row(*row)
    console.print(table)
    if report["ok"]:
        console.print("[green]crash torture ok: no acknowledged transfer lost, no divergent "
                      "root or block, every transfer accounted for[/green]")
    else:
        console.print("[red]crash torture FAILED[/red]")
        print_findings(report["findings"], console, most=5)


def run_crash_command(spec: CrashSpec, json_path: str | None, console: Any) -> int:
    """``phalanx reliability crash``: 0 iff every check passed (1 with findings)."""
    return run_report("crash torture", lambda say: CrashTorture(spec, say=say).run(),
                      json_path, console, summarize)
