"""The fuzz driver behind ``phalanx fuzz``: seeds in, violations and shrunk traces out.

Each seed fixes a :class:`Plan` — which replicas are Byzantine and how (Borgesian,
equivocating primary, selective delivery, vote-for-everything, silent, Twins), the
protocol configuration, the network's loss/duplication/reordering, crashes and
partitions of correct replicas, the clients, and the global stabilization time (GST) at
which every fault stops. :func:`run_plan` runs it in the simulator with the protocol's
checkers after every step and the liveness checker after GST, then checks that the
correct replicas converged. A failing seed is shrunk (:func:`shrink`): delta debugging
drops faults and switches off Byzantine actions while the same property still fails,
and the smallest failing run is replayed with its event trace.

Everything is a function of the seed: ``phalanx fuzz --seed X`` replays seed X exactly.
"""

from __future__ import annotations

import contextlib
import math
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from phalanx.byzantine.adapter import fuzz_adapter
from phalanx.byzantine.behaviours import ActionBehaviour, AllBut, Borgesian, Log, Switches
from phalanx.byzantine.checkers import LivenessChecker, LivenessViolation
from phalanx.protocols.registry import protocol
from phalanx.safety import SafetyViolation
from phalanx.sim.behaviour import Behaviour
from phalanx.sim.kv_cluster import kv_simulation
from phalanx.sim.network import NetworkModel, UniformLatency
from phalanx.sim.simulator import Simulation, SimulationError, Twin
from phalanx.statemachine.kv import encode_put

STRATEGY_WEIGHTS = {
    "borgesian": 50,
    "twins": 14,
    "equivocate": 10,
    "vote_all": 10,
    "selective": 10,
    "silent": 6,
    "forge_view": 6,
    "hide_commit": 10,
    "splice_new_view": 6,
}
"""How often each Byzantine strategy is drawn (``twins`` is built by the driver)."""

LIVENESS_BOUND_TIMEOUTS = 60
"""Liveness bound after GST, in view-change timeouts: room for a few view changes with
exponential back-off (the back-off accumulated before GST does not reset at GST)."""
SETTLE_TIMEOUTS = 30
"""Simulated time after the probe requests for the correct replicas to converge (catch-up
polls back off up to 32 sync ticks of half a timeout)."""
PROBE_REQUESTS = 2


WALL_LIMIT_S = 60.0
"""Wall-clock seconds one seed may take before it counts as a hang (a core stuck in a
loop on Byzantine input); a seed normally takes well under a second."""


class SeedTimeout(BaseException):
    """Raised by the watchdog inside a hung run (a BaseException, so that the simulator
    does not wrap it as a core error)."""


@contextlib.contextmanager
def _watchdog(seconds: float | None) -> Iterator[None]:
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise SeedTimeout()

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass(frozen=True)
class FuzzConfig:
    """What ``phalanx fuzz`` was asked for."""

    protocol: str = "pbft"
    n: int | tuple[int, ...] = 4
    """Replicas; several sizes make each seed draw one (n != 3f+1 included)."""
    byzantine: int = 1
    f: int | None = None
    """Faults tolerated, which sets the quorum sizes; None: the most n replicas tolerate."""
    max_steps: int = 300_000
    """Simulated events per seed at most (a seed that hits it is counted as truncated)."""
    planted_bug: str | None = None
    strategies: tuple[str, ...] | None = None
    """Restrict the Byzantine strategies (default: the weighted mix)."""
    wall_limit: float | None = WALL_LIMIT_S

    def __post_init__(self) -> None:
        if not self.sizes:
            raise ValueError("--n needs at least one size")
        for n in self.sizes:
            if n < 1:
                raise ValueError(f"--n must be positive, got {n}")
            f = self.faults(n)
            protocol(self.protocol).quorums(n, f)  # n >= 3f+1, or ValueError saying why
            if not 0 <= self.byzantine <= f:
                raise ValueError(
                    f"--byzantine must be between 0 and f={f} for n={n}, got {self.byzantine}"
                )
        if self.max_steps < 1:
            raise ValueError("--steps must be positive")
        adapter = fuzz_adapter(self.protocol)
        bugs = adapter.planted_bugs
        if self.planted_bug is not None and self.planted_bug not in bugs:
            raise ValueError(f"unknown planted bug {self.planted_bug!r}; known: {', '.join(bugs)}")
        for name in self.strategies or ():
            if name != "twins" and name not in adapter.strategies:
                known = ", ".join(["twins", *sorted(adapter.strategies)])
                raise ValueError(f"unknown strategy {name!r}; known: {known}")

    @property
    def sizes(self) -> tuple[int, ...]:
        return (self.n,) if isinstance(self.n, int) else tuple(self.n)

    def faults(self, n: int) -> int:
        """The f of a cluster of ``n`` replicas under this configuration."""
        return protocol(self.protocol).quorums(n, self.f).f

    def describe_n(self) -> str:
        return ",".join(map(str, self.sizes))


@dataclass(frozen=True)
class Fault:
    """A crash (``nodes`` = (replica,)) or a partition (``nodes`` = groups of replicas and twins)
    from ``at`` until ``until``; every fault ends by GST."""

    kind: str
    at: float
    until: float
    nodes: tuple[Any, ...]

    def describe(self) -> str:
        if self.kind == "crash":
            return f"crash replica {self.nodes[0]} at {self.at:.3f}s, restart at {self.until:.3f}s"
        groups = " | ".join(
            ",".join(str(node) for node in group) for group in self.nodes
        )
        return f"partition [{groups}] from {self.at:.3f}s to {self.until:.3f}s"


@dataclass(frozen=True)
class Plan:
    """Everything one seed's run consists of (a pure function of the seed)."""

    seed: int
    config: FuzzConfig
    n: int
    f: int
    byzantine: tuple[tuple[int, str], ...]
    options: Any
    latency: tuple[float, float]
    drop: float
    duplicate: float
    reorder: float
    clients: int
    requests: int
    think_time: float
    faults: tuple[Fault, ...]
    gst: float
    multicast: bool = False
    """Clients send every request to all replicas (backups hold it, not forward it)."""

    def describe(self) -> list[str]:
        lines = [
            f"cluster: n={self.n} f={self.f}",
            "byzantine: " + (", ".join(f"replica {r} ({s})" for r, s in self.byzantine) or "none"),
            f"network before GST: latency {self.latency[0] * 1e3:.1f}-"
            f"{self.latency[1] * 1e3:.1f}ms drop={self.drop} duplicate={self.duplicate} "
            f"reorder={self.reorder * 1e3:.0f}ms; GST at {self.gst:.3f}s",
            f"clients: {self.clients} x {self.requests} requests"
            f"{' (multicast)' if self.multicast else ''}; options: {self.options!r}",
        ]
        lines += [f"fault: {f.describe()}" for f in self.faults]
        return lines


def make_plan(config: FuzzConfig, seed: int) -> Plan:
    """The plan of ``seed``: drawn from its own RNG, so it never depends on the run."""
    spec = fuzz_adapter(config.protocol)
    rng = random.Random(f"phalanx/fuzz/plan/{seed}")
    sizes = config.sizes
    # Drawn apart, so that a single size leaves every other choice of a seed as it was.
    n = sizes[0] if len(sizes) == 1 else random.Random(f"phalanx/fuzz/n/{seed}").choice(sizes)
    names = config.strategies or tuple(STRATEGY_WEIGHTS)
    weights = [STRATEGY_WEIGHTS.get(s, 10) for s in names]
    byzantine_ids = sorted(rng.sample(range(n), config.byzantine))
    byzantine = tuple((r, rng.choices(names, weights)[0]) for r in byzantine_ids)
    correct = [r for r in range(n) if r not in byzantine_ids]
    gst = rng.uniform(1.0, 4.0)
    faults: list[Fault] = []
    for r, strategy in byzantine:
        if strategy == "twins":
            # Twins: successive partitions, each putting the twins in different parts.
            at = rng.uniform(0.0, 0.3)
            for _ in range(rng.randint(1, 3)):
                until = min(gst, at + rng.uniform(0.3, 1.5))
                shuffled = rng.sample(correct, len(correct))
                cut = rng.randint(0, len(correct))
                groups = ((r, *sorted(shuffled[:cut])), (Twin(r), *sorted(shuffled[cut:])))
                faults.append(Fault("partition", at, until, groups))
                at = until
                if at >= gst:
                    break
    # Drawn apart (so that the other choices of a seed stay as they were): half the
    # partitions cut the cluster into halves, the cut where quorums that do not
    # intersect in a correct replica would let both sides decide.
    halves = random.Random(f"phalanx/fuzz/halves/{seed}")
    for _ in range(rng.choice((0, 0, 1, 1, 2, 3))):
        at = rng.uniform(0.0, gst * 0.8)
        until = rng.uniform(at + 0.05, gst)
        if correct and rng.random() < 0.5:
            faults.append(Fault("crash", at, until, (rng.choice(correct),)))
        else:
            replicas = rng.sample(range(n), n)
            cut = rng.randint(1, n - 1)
            if halves.random() < 0.5:
                # Long enough (up to GST) for the side without the primary to elect one.
                cut, until = n // 2, max(until, min(gst, at + 1.5))
            faults.append(
                Fault("partition", at, until, (tuple(sorted(replicas[:cut])),
                                              tuple(sorted(replicas[cut:]))))
            )
    plan = Plan(
        seed=seed,
        config=config,
        n=n,
        f=config.faults(n),
        byzantine=byzantine,
        options=spec.make_options(rng),
        latency=(0.001, rng.choice((0.002, 0.01, 0.03))),
        drop=rng.choice((0.0, 0.0, 0.01, 0.05)),
        duplicate=rng.choice((0.0, 0.02)),
        reorder=rng.choice((0.0, 0.0, 0.01)),
        clients=rng.randint(1, 3),
        requests=rng.randint(3, 12),
        think_time=rng.choice((0.0, 0.0, 0.05, 0.3)),
        faults=tuple(faults),
        gst=gst,
        # Drawn apart, so that adding it left every other choice of a seed as it was.
        multicast=random.Random(f"phalanx/fuzz/multicast/{seed}").random() < 0.5,
    )
    if correct and any(s in spec.needs_lagging_replica for _, s in byzantine):
        plan = _with_lagging_replica(plan, correct, random.Random(f"phalanx/fuzz/lagging/{seed}"))
    return plan


def _with_lagging_replica(plan: Plan, correct: list[int], rng: random.Random) -> Plan:
    """The plan with a correct replica that misses a view change and work in flight
    meanwhile: it is down from early on until after the others changed view (GST waits
    for it), and the clients keep sending."""
    at = rng.uniform(0.1, 0.4)
    until = at + rng.uniform(1.5, 3.0)
    crash = Fault("crash", at, until, (rng.choice(correct),))
    # 100 requests 100 ms apart: about ten simulated seconds of load.
    return replace(plan, faults=(*plan.faults, crash), gst=max(plan.gst, until),
                   requests=max(plan.requests, 100), think_time=0.1)


@dataclass
class Outcome:
    """The result of one run."""

    seed: int
    events: int
    sim_time: float
    violation: str | None = None  # property name; None when every check passed
    detail: str = ""
    truncated: bool = False
    actions: dict[int, int] = field(default_factory=dict)  # Byzantine replica -> actions taken
    trace_hash: str = ""

    @property
    def failed(self) -> bool:
        return self.violation is not None


def run_plan(
    plan: Plan,
    *,
    disabled: dict[int, Switches] | None = None,
    record: bool = False,
    log: Log | None = None,
) -> tuple[Outcome, Simulation]:
    """Run ``plan`` with the Byzantine actions in ``disabled`` switched off."""
    config = plan.config
    spec = fuzz_adapter(config.protocol)
    network = NetworkModel(
        latency=UniformLatency(*plan.latency), drop=plan.drop, duplicate=plan.duplicate,
        reorder=plan.reorder,
    )
    sim = kv_simulation(
        config.protocol, plan.n, plan.seed, network, plan.options, 0.3, f=plan.f,
        multicast=plan.multicast, record_trace=record,
        make_replica=spec.planted_bugs[config.planted_bug] if config.planted_bug else None,
    )
    behaviours: dict[int, Behaviour] = {}
    for replica, strategy in plan.byzantine:
        off = (disabled or {}).get(replica, frozenset())
        if strategy == "twins":
            behaviour: Behaviour = Behaviour()
        else:
            behaviour = spec.strategies[strategy](replica, plan.seed, off, log)
        sim.set_byzantine(replica, behaviour)
        behaviours[replica] = behaviour
        if strategy == "twins":
            sim.add_twin(replica)
    sim.add_clients(plan.clients, _ops, plan.requests, think_time=plan.think_time)
    for behaviour in behaviours.values():
        if isinstance(behaviour, ActionBehaviour):
            behaviour.attach(sim)
    for fault in plan.faults:
        if fault.kind == "crash":
            sim.crash(fault.nodes[0], at=fault.at)
            sim.restart(fault.nodes[0], at=fault.until)
        else:
            sim.partition(fault.nodes, at=fault.at, heal_at=fault.until)
    clean = NetworkModel(latency=network.latency)
    sim.call_at(plan.gst, lambda s: setattr(s.network, "model", clean))
    timeout = spec.view_change_timeout
    bound = LIVENESS_BOUND_TIMEOUTS * timeout
    horizon = plan.gst + bound + timeout
    LivenessChecker(plan.gst, bound).install(sim, horizon)

    outcome = Outcome(plan.seed, 0, 0.0)
    try:
        with _watchdog(config.wall_limit):
            _run_checked(sim, plan, outcome, list(behaviours.values()), bound, horizon, timeout)
    except SeedTimeout:
        outcome.violation = "hang"
        outcome.detail = (
            f"seed={plan.seed}: no progress for {config.wall_limit:.0f}s of wall-clock time at "
            f"t={sim.now:.6f}s, event #{sim.events_processed} (a core, or a Byzantine "
            "behaviour around it, loops on some input)"
        )
    except SafetyViolation as exc:
        outcome.violation, outcome.detail = exc.property_name, str(exc)
    except SimulationError as exc:
        outcome.violation, outcome.detail = "crash", str(exc)
    outcome.events = sim.events_processed
    outcome.sim_time = sim.now
    outcome.trace_hash = sim.trace_hash()
    outcome.actions = {
        r: b.actions for r, b in behaviours.items() if isinstance(b, ActionBehaviour)
    }
    return outcome, sim


def _run_checked(
    sim: Simulation, plan: Plan, outcome: Outcome, behaviours: list[Behaviour], bound: float,
    horizon: float, timeout: float,
) -> None:
    """Run to GST and the clients' completion, probe, settle, check convergence. Raises
    what the checkers raise; a run cut by ``max_steps`` is marked truncated."""
    max_steps = plan.config.max_steps
    reason = sim.run(
        until=horizon,
        max_events=max_steps,
        stop_when=lambda: sim.now >= plan.gst and sim.all_clients_done(),
    )
    if reason == "max_events":
        outcome.truncated = True
        return
    if not sim.all_clients_done():
        raise LivenessViolation("liveness", sim.liveness_report(), sim.seed, sim.now)
    # A replica that missed the last slots (cut off until GST) learns of them only from
    # later traffic: a probe client after GST; then every correct replica must converge.
    sim.add_clients(1, _ops, PROBE_REQUESTS)
    LivenessChecker(sim.now, bound).install(sim, sim.now + bound + timeout)
    reason = sim.run(until=sim.now + bound + timeout,
                     max_events=max_steps - sim.events_processed,
                     stop_when=sim.all_clients_done)
    if reason != "max_events":
        # Settling: the Byzantine replicas keep running their (rewritten) cores but stop
        # unprompted bursts, which only cost time once the probe requests committed.
        for behaviour in behaviours:
            if isinstance(behaviour, Borgesian):
                behaviour.until = sim.now
        settle = sim.now + SETTLE_TIMEOUTS * timeout
        reason = sim.run(until=settle, max_events=max_steps - sim.events_processed)
    if reason == "max_events":
        outcome.truncated = True
        return
    _check_converged(sim)


def _check_converged(sim: Simulation) -> None:
    """After GST and the settle time, the live correct replicas hold the same state."""
    heights: dict[int, tuple[int, str]] = {}
    for r in sim.correct_replicas:
        core = sim.replica(r)
        if core is not None:
            # ReplicaCore has no executed position (a protocol without a total order
            # would have none); every fuzzed protocol today is PBFT, whose replica does.
            executed = core.last_executed  # type: ignore[attr-defined]  # PBFT's, see above
            heights[r] = (executed, core.state_digest().hex()[:16])
    if len(set(heights.values())) > 1:
        raise LivenessViolation(
            "convergence", f"correct replicas differ after settling: {heights}", sim.seed, sim.now
        )


def _ops(client: int, i: int) -> bytes:
    return encode_put(f"k{client}:{i % 4}".encode(), f"v{client}:{i}".encode())


# -- shrinking --------------------------------------------------------------------------


@dataclass
class Shrunk:
    plan: Plan
    disabled: dict[int, Switches]
    outcome: Outcome
    runs: int
    kept_actions: int
    total_actions: int


def shrink(plan: Plan, failure: Outcome, *, max_runs: int = 120,
           max_seconds: float = 60.0) -> Shrunk:
    """Delta-debug the fault schedule, then the Byzantine actions, keeping the same
    violated property. Bounded by ``max_runs`` re-runs and ``max_seconds``."""
    deadline = time.monotonic() + max_seconds
    runs = 0
    original = plan

    def fails(candidate: Plan, disabled: dict[int, Switches]) -> bool:
        nonlocal runs
        if runs >= max_runs or time.monotonic() > deadline:
            return False
        runs += 1
        outcome, _ = run_plan(candidate, disabled=disabled)
        return outcome.violation == failure.violation

    faults = _ddmin(list(plan.faults), lambda fs: fails(replace(plan, faults=tuple(fs)), {}))
    plan = replace(plan, faults=tuple(faults))
    universe = [(r, k) for r, count in sorted(failure.actions.items()) for k in range(count)]

    def disabled_for(kept: Sequence[tuple[int, int]]) -> dict[int, Switches]:
        return {r: AllBut(frozenset(k for q, k in kept if q == r)) for r in failure.actions}

    kept = _ddmin(universe, lambda ks: fails(plan, disabled_for(ks)))
    disabled = disabled_for(kept)
    outcome, _ = run_plan(plan, disabled=disabled)
    runs += 1
    if outcome.violation != failure.violation:
        # Every accepted step failed, but action indices shift between runs; if the
        # combination does not, fall back to the seed's own run (exact by construction).
        plan, disabled, outcome, kept = original, {}, failure, universe
    return Shrunk(plan, disabled, outcome, runs, len(kept), len(universe))


def _ddmin(items: list[Any], fails: Callable[[list[Any]], bool]) -> list[Any]:
    """Zeller's ddmin (complements only): a smaller list for which ``fails`` holds."""
    granularity = 2
    while len(items) >= 2:
        size = math.ceil(len(items) / granularity)
        chunks = [items[i : i + size] for i in range(0, len(items), size)]
        for chunk in chunks:
            drop = set(map(id, chunk))
            complement = [x for x in items if id(x) not in drop]
            if fails(complement):
                items = complement
                granularity = max(granularity - 1, 2)
                break
        else:
            if granularity >= len(items):
                break
            granularity = min(len(items), granularity * 2)
    if len(items) == 1 and fails([]):
        return []
    return items


def explain(shrunk: Shrunk, tail: int = 40) -> list[str]:
    """The shrunk run, replayed with its trace: plan, Byzantine actions, last events."""
    log: Log = []
    outcome, sim = run_plan(shrunk.plan, disabled=shrunk.disabled, record=True, log=log)
    lines = [f"  shrunk in {shrunk.runs} re-runs: {len(shrunk.plan.faults)} faults, "
             f"{shrunk.kept_actions} of {shrunk.total_actions} Byzantine actions kept"]
    lines += [f"  {line}" for line in shrunk.plan.describe()]
    if log:
        lines.append(f"  Byzantine actions ({len(log)}, last {min(len(log), tail)}):")
        lines += [f"    t={at:.6f} #{k} {what}" for k, at, what in log[-tail:]]
    trace = sim.trace or []
    lines.append(f"  last {min(len(trace), tail)} of {len(trace)} events:")
    lines += [f"    {line}" for line in trace[-tail:]]
    verdict = f"{outcome.violation}: {outcome.detail}" if outcome.failed else "no violation"
    lines.append(f"  -> {verdict}")
    return lines


# -- sweeps -----------------------------------------------------------------------------


@dataclass
class Summary:
    seeds: int = 0
    steps: int = 0
    violations: int = 0
    truncated: int = 0
    by_property: Counter[str] = field(default_factory=Counter)
    by_strategy: Counter[str] = field(default_factory=Counter)
    failing: list[int] = field(default_factory=list)
    truncated_seeds: list[int] = field(default_factory=list)
    """Seeds cut by ``max_steps``: checked only up to the cap (named, so that a seed
    that storms, like two Byzantine replicas echoing each other, can be replayed)."""
    seconds: float = 0.0

    def line(self, config: FuzzConfig) -> str:
        props = ", ".join(f"{k}={v}" for k, v in sorted(self.by_property.items()))
        strategies = ", ".join(f"{k}={v}" for k, v in sorted(self.by_strategy.items()))
        return (
            f"fuzz {config.protocol} n={config.describe_n()}"
            f"{'' if config.f is None else f' f={config.f}'} byzantine={config.byzantine}"
            f"{' bug=' + config.planted_bug if config.planted_bug else ''}: "
            f"seeds={self.seeds} steps={self.steps} violations={self.violations}"
            f"{' (' + props + ')' if props else ''} truncated={self.truncated} "
            f"strategies[{strategies}] in {self.seconds:.1f}s"
        )


def sweep(
    config: FuzzConfig,
    seeds: Iterator[int] | Sequence[int],
    *,
    stop_at_first: bool = False,
    on_result: Callable[[Plan, Outcome], None] | None = None,
) -> Summary:
    """Run every seed; ``on_result`` sees each (e.g. to print and shrink failures)."""
    summary = Summary()
    started = time.monotonic()
    for seed in seeds:
        plan = make_plan(config, seed)
        outcome, _ = run_plan(plan)
        summary.seeds += 1
        summary.steps += outcome.events
        summary.truncated += outcome.truncated
        if outcome.truncated:
            summary.truncated_seeds.append(seed)
        for _, strategy in plan.byzantine:
            summary.by_strategy[strategy] += 1
        if outcome.failed:
            summary.violations += 1
            summary.by_property[outcome.violation or "?"] += 1
            summary.failing.append(seed)
        if on_result is not None:
            on_result(plan, outcome)
        if outcome.failed and stop_at_first:
            break
    summary.seconds = time.monotonic() - started
    return summary
