"""``phalanx fuzz``: run seeds, print failing seeds with shrunk traces, replay one seed.

Exit status: 0 when every seed passed every checker, 1 when any violation was found.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TextIO

from phalanx.byzantine.adapter import fuzzable
from phalanx.byzantine.fuzz import (
    STRATEGY_WEIGHTS,
    FuzzConfig,
    Outcome,
    Plan,
    Shrunk,
    explain,
    make_plan,
    run_plan,
    shrink,
    sweep,
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--protocol", default="pbft", choices=fuzzable())
    p.add_argument("--n", type=_sizes, default=(4,),
                   help="replicas; a comma-separated list (e.g. 4,5,6,8) makes each seed draw "
                        "one (default: 4)")
    p.add_argument("--f", type=int, default=None,
                   help="faults tolerated, which sets the quorum sizes (default: the most n "
                        "replicas tolerate, (n-1)//3)")
    p.add_argument("--byzantine", type=int, default=1, help="Byzantine replicas (<= f)")
    p.add_argument("--seeds", type=int, default=100, help="how many seeds to run")
    p.add_argument("--first", type=int, default=0, help="first seed of the sweep")
    p.add_argument("--seed", type=int, default=None,
                   help="replay this one seed exactly, with its trace")
    p.add_argument("--steps", type=int, default=300_000,
                   help="simulated events per seed at most")
    p.add_argument("--bug", default=None, help="switch on a planted bug (fuzzer self-test)")
    p.add_argument("--strategy", default=None,
                   help=f"comma-separated Byzantine strategies ({', '.join(STRATEGY_WEIGHTS)})")
    p.add_argument("--no-shrink", action="store_true", help="print failing seeds unshrunk")
    p.add_argument("--shrink-runs", type=int, default=120, help="re-runs per shrink at most")
    p.add_argument("--stop", action="store_true", help="stop at the first failing seed")
    p.add_argument("--progress", type=int, default=0, help="a progress line every N seeds")
    p.add_argument("--json", help="also write the summary as JSON")


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number of replicas or a comma-separated list, got {text!r}"
        ) from None
    return sizes


def run_fuzz(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    config = FuzzConfig(
        protocol=args.protocol,
        n=args.n[0] if len(args.n) == 1 else tuple(args.n),
        f=args.f,
        byzantine=args.byzantine,
        max_steps=args.steps,
        planted_bug=args.bug,
        strategies=tuple(s.strip() for s in args.strategy.split(",")) if args.strategy else None,
    )
    if args.seed is not None:
        return _replay(config, args.seed, out)
    if args.seeds < 1:
        raise ValueError("--seeds must be positive")
    done = 0

    def on_result(plan: Plan, outcome: Outcome) -> None:
        nonlocal done
        done += 1
        if outcome.failed:
            strategies = ", ".join(f"{r}:{s}" for r, s in plan.byzantine)
            print(f"FAIL seed={plan.seed} [{strategies}] {outcome.violation}: {outcome.detail}",
                  file=out, flush=True)
            if not args.no_shrink:
                shrunk: Shrunk = shrink(plan, outcome, max_runs=args.shrink_runs)
                print("\n".join(explain(shrunk)), file=out, flush=True)
        if args.progress and done % args.progress == 0:
            print(f"... {done} seeds", file=out, flush=True)

    seeds = range(args.first, args.first + args.seeds)
    summary = sweep(config, seeds, stop_at_first=args.stop, on_result=on_result)
    if summary.failing:
        print(f"failing seeds: {' '.join(map(str, summary.failing))} "
              f"(replay: phalanx fuzz --seed N{_flags(config)})", file=out)
    if summary.truncated_seeds:
        print(f"truncated seeds (checked up to --steps {config.max_steps} events only): "
              f"{' '.join(map(str, summary.truncated_seeds))} "
              f"(replay: phalanx fuzz --seed N{_flags(config)})", file=out)
    print(summary.line(config), file=out, flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "protocol": config.protocol, "n": config.n, "f": config.f,
            "byzantine": config.byzantine,
            "planted_bug": config.planted_bug, "seeds": summary.seeds, "first": args.first,
            "steps": summary.steps, "violations": summary.violations,
            "by_property": dict(summary.by_property), "by_strategy": dict(summary.by_strategy),
            "truncated": summary.truncated, "truncated_seeds": summary.truncated_seeds,
            "failing": summary.failing,
            "seconds": round(summary.seconds, 1),
        }, indent=2, sort_keys=True) + "\n")
    return 1 if summary.violations else 0


def _replay(config: FuzzConfig, seed: int, out: TextIO) -> int:
    """Run one seed and print its plan, Byzantine actions, last events and verdict."""
    plan = make_plan(config, seed)
    outcome, _ = run_plan(plan)
    print(f"seed={seed} events={outcome.events} sim_time={outcome.sim_time:.6f}s "
          f"trace={outcome.trace_hash}", file=out)
    shrunk = Shrunk(plan, {}, outcome, 0, sum(outcome.actions.values()),
                    sum(outcome.actions.values()))
    lines = explain(shrunk)
    print("\n".join(lines[1:]), file=out)  # the replay itself, nothing was shrunk
    verdict = f"{outcome.violation}" if outcome.failed else "ok"
    print(f"fuzz {config.protocol} n={plan.n} f={plan.f} byzantine={config.byzantine}: seeds=1 "
          f"steps={outcome.events} violations={int(outcome.failed)} ({verdict})", file=out)
    return 1 if outcome.failed else 0


def _flags(config: FuzzConfig) -> str:
    flags = f" --protocol {config.protocol} --n {config.describe_n()}"
    if config.f is not None:
        flags += f" --f {config.f}"
    flags += f" --byzantine {config.byzantine}"
    if config.planted_bug:
        flags += f" --bug {config.planted_bug}"
    if config.strategies:
        flags += f" --strategy {','.join(config.strategies)}"
    if config.max_steps != FuzzConfig.max_steps:
        flags += f" --steps {config.max_steps}"
    return flags
