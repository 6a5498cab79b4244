"""``phalanx lab report``: regenerate ``docs/results.md`` and its plots in one command.

Steps, in order (each writes under ``OUT/results/``):

1. ``phalanx calibrate`` -> ``cost-model.json``;
2. a loopback sweep of PBFT (closed-loop clients 1, 8, 32, 128) -> ``loopback/``;
3. the same under the Azure RTT matrix, 4 regions -> ``azure4/``;
4. validation: one real N=4 loopback run and the calibrated simulation of the same run
   (same clients and payload, the same share of this shared host's CPU), and the error;
5. the simulated scaling curve N = 4 ... 97 (Azure, 4 regions round-robin, 1 Gbit/s
   per replica, one core per replica) -> ``scaling/``;
6. peer baselines from ``bench/peers/results/*.json`` if any (written by the peers'
   scripts in the same results shape);
7. ``results.md``, with every figure taken from the JSON files above.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from phalanx.bench.report import SweepReport, load_results, plot_throughput_latency, row, write_csv

AZURE = "../shared/data/latency_azure_microsoft_published/rtt_matrix_ms.csv"
AZURE_REGIONS = "East US,West US 2,North Europe,West Europe"
SCALING_N = (4, 7, 16, 31, 49, 64, 97)
SWEEPS = {  # folder under results/ -> the title of its sweep report
    "loopback": "PBFT, N=4, loopback, 512 B",
    "azure4": f"PBFT, N=4, Azure {AZURE_REGIONS}, 512 B",
}


def _phalanx(*argv: str) -> None:
    cmd = [sys.executable, "-m", "phalanx.cli", *argv]
    print("$ phalanx " + " ".join(argv), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True)


_load = load_results  # every figure below is re-judged under the current verdict rules


def run_lab(args: argparse.Namespace) -> int:
    out = Path(args.out)
    res = out / "results"
    res.mkdir(parents=True, exist_ok=True)
    quick = args.quick
    clients = "1,8,32" if quick else "1,8,32,128"
    duration = "4" if quick else "10"
    model = res / "cost-model.json"
    if not args.skip_measure:
        _phalanx("calibrate", "--out", str(model))
        _phalanx("bench", "sweep", "--clients", clients, "--duration", duration,
                 "--warmup", "2", "--durability", "process", "--out", str(res / "loopback"),
                 "--title", SWEEPS["loopback"])
        _phalanx("bench", "sweep", "--clients", clients, "--duration", duration,
                 "--warmup", "3", "--durability", "process", "--out", str(res / "azure4"),
                 "--wan", AZURE, "--regions", AZURE_REGIONS,
                 "--title", SWEEPS["azure4"])
        validate(res, model)
        scaling(res, model, quick)
    write_markdown(out, res)
    print(f"wrote {out / 'results.md'}", file=sys.stderr)
    return 0


def validate(res: Path, model: Path) -> None:
    real = res / "validation-measured.json"
    _phalanx("bench", "--n", "4", "--clients", "32", "--payload", "512", "--duration", "10",
             "--warmup", "2", "--durability", "process", "--no-progress", "--json", str(real))
    measured = _load(real)
    env = measured["environment"]
    cores = env.get("cpu_count") or 2
    ours = ((sum(n["cpu_s"] or 0 for n in measured["per_node"]) + measured["client_cpu_s"])
            / (measured["duration_s"] * cores))
    busy = env.get("host_cpu_busy") or ours
    # What the run got of the host: all of it, minus what other tenants used meanwhile.
    share = max(0.05, min(1.0, 1.0 - max(0.0, busy - ours)))
    _phalanx("sim", "--cost-model", str(model), "--n", "4", "--clients", "32", "--payload",
             "512", "--warmup", "0.5", "--duration", "1.5", "--latency-ms", "0.05",
             "--host-cores", str(cores), "--cpu-share", f"{share:.3f}",
             "--json", str(res / "validation-simulated.json"))


def scaling(res: Path, model: Path, quick: bool) -> None:
    folder = res / "scaling"
    folder.mkdir(exist_ok=True)
    sizes = SCALING_N[:4] if quick else SCALING_N
    for n in sizes:
        regions = ",".join([r.strip() for r in AZURE_REGIONS.split(",")] * 1)
        _phalanx("sim", "--cost-model", str(model), "--n", str(n), "--clients", "256",
                 "--payload", "512", "--warmup", "1.5", "--duration", "2",
                 "--wan", AZURE, "--regions", regions, "--bandwidth", "1Gbit",
                 "--no-checkers", "--json", str(folder / f"pbft-n{n}.json"))


def _rows(folder: Path) -> list[dict[str, Any]]:
    return [row(_load(p)) for p in sorted(folder.glob("*.json"))]


def _table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    head = "| " + " | ".join(title for _, title in columns) + " |"
    rule = "|" + "---|" * len(columns)
    lines = [head, rule]
    for r in rows:
        cells = []
        for key, _ in columns:
            v = r.get(key)
            if v is None:
                cells.append("—")
            elif isinstance(v, float):
                cells.append(f"{v:,.2f}" if abs(v) < 10 else f"{v:,.0f}")
            else:
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


SWEEP_COLUMNS = [("clients", "clients"), ("throughput_tps", "tx/s"), ("p50_ms", "p50 ms"),
                 ("p99_ms", "p99 ms"), ("cpu_us_per_tx", "replica CPU µs/tx (sum)"),
                 ("busiest_cpu_us_per_tx", "busiest replica CPU µs/tx"),
                 ("max_node_bytes_per_tx", "busiest node B/tx"), ("verdict", "verdict"),
                 ("resource", "bound by"), ("data_cpu_share", "data"),
                 ("consensus_cpu_share", "consensus"), ("execution_cpu_share", "execution"),
                 ("host_cpu_busy", "host CPU busy")]


def write_markdown(out: Path, res: Path) -> None:
    parts = [
        "# phalanx results",
        "",
        f"Regenerated by `make results` (= `phalanx lab report --out docs`) on "
        f"{datetime.now(UTC):%Y-%m-%d}. Raw JSON, CSV and HTML reports are in "
        "`docs/results/`. Measured on the 2-core machine this project is developed on, "
        "which other engineers' jobs share: each row says how busy the host's CPUs were "
        "(`host CPU busy`, all processes counted); compare rows of one sweep, made minutes "
        "apart, rather than absolute figures. Throughput and latency are measured at the "
        "clients over the steady window only; CPU and bytes come from each replica's "
        "accounting over the same window. PBFT runs with `--durability process` here "
        "(fsync on the one shared disk would be the bottleneck of every row).",
        "",
    ]
    for name, title in (("loopback", "PBFT on loopback (N=4, 512 B PUTs)"),
                        ("azure4", f"PBFT under the Azure matrix, 4 regions ({AZURE_REGIONS})")):
        folder = res / name / "points"
        if not folder.exists():
            continue
        # The sweep's own CSV and HTML, re-judged like the tables here.
        SweepReport.from_points(SWEEPS[name], res / name).write()
        rows = sorted(_rows(folder), key=lambda r: r["clients"] or 0)
        parts += [f"## {title}", "", f"![throughput-latency](results/{name}/"
                  "throughput_latency.png)", "", _table(rows, SWEEP_COLUMNS), ""]
        reasons = [(_load(p)["clients"], _load(p)["bottleneck"].get("reason", ""))
                   for p in sorted(folder.glob("*.json"))]
        parts += ["Bottleneck verdicts:", ""] + [f"- {c} clients: {why}"
                                               for c, why in sorted(reasons)] + [""]
    real, sim = res / "validation-measured.json", res / "validation-simulated.json"
    error_line = "not run"
    if real.exists() and sim.exists():
        m, s = _load(real), _load(sim)
        error = (s["throughput_tps"] - m["throughput_tps"]) / m["throughput_tps"]
        error_line = f"{error:+.0%}"
        parts += [
            "## Calibration check (N=4, loopback, 32 clients, 512 B)", "",
            "| | tx/s | p50 ms | replica CPU µs/tx (sum) |", "|---|---|---|---|",
            f"| measured (`phalanx bench`) | {m['throughput_tps']:,.0f} | "
            f"{m['latency_ms']['p50']} | {m['cpu_us_per_tx']} |",
            f"| simulated (`phalanx sim --cost-model`, CPU share "
            f"{s['environment'].get('cpu_share')}) | {s['throughput_tps']:,.0f} | "
            f"{s['latency_ms']['p50']} | {s['cpu_us_per_tx']} |", "",
            f"**Calibration error: {error_line}** (simulated vs measured throughput). The "
            "simulation gets the same share of the host's CPU as the measured run had "
            "(1 - the share other processes used, from the bench's `host_cpu_busy`).", "",
        ]
    scaling_dir = res / "scaling"
    if scaling_dir.exists() and list(scaling_dir.glob("*.json")):
        rows = sorted(_rows(scaling_dir), key=lambda r: r["n"])
        _plot_scaling(res / "scaling.png", rows, error_line)
        parts += [
            "## Simulated scaling, N = 4 … 97 (calibrated model)", "",
            f"Azure matrix, replicas round-robin over {AZURE_REGIONS}, 1 Gbit/s per "
            "replica, one core per replica, 256 closed-loop clients; the real PBFT cores in "
            f"the simulator, CPU charged from `results/cost-model.json`. Calibration error "
            f"at N=4: {error_line}.", "",
            "![scaling](results/scaling.png)", "",
            _table(rows, [("n", "N"), ("throughput_tps", "tx/s"), ("p50_ms", "p50 ms"),
                          ("busiest_cpu_us_per_tx", "busiest replica CPU µs/tx"),
                          ("max_node_bytes_per_tx", "busiest node B/tx"),
                          ("verdict", "verdict"), ("resource", "bound by")]), "",
        ]
    peers = Path("bench/peers/results")
    parts += ["## Peer baselines", ""]
    if peers.exists() and list(peers.glob("*.json")):
        rows = [row(_load(p)) for p in sorted(peers.glob("*.json"))]
        parts += [_table(rows, [("protocol", "system"), ("n", "N"), ("clients", "clients"),
                                ("throughput_tps", "tx/s"), ("p50_ms", "p50 ms"),
                                ("cpu_us_per_tx", "CPU µs/tx")]), ""]
    else:
        parts += ["No peer results yet (`bench/peers/results/*.json`, same JSON shape).", ""]
    (out / "results.md").write_text("\n".join(parts) + "\n")
    all_rows = []
    for name in ("loopback", "azure4"):
        folder = res / name / "points"
        if folder.exists():
            all_rows += _rows(folder)
    if all_rows:
        write_csv(res / "all.csv", all_rows)
        plot_throughput_latency(res / "all.png", all_rows, "PBFT: loopback and Azure")


def _plot_scaling(path: Path, rows: list[dict[str, Any]], error: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4), dpi=110)
    ax.plot([r["n"] for r in rows], [r["throughput_tps"] for r in rows], "o-")
    ax.set_xlabel("replicas (N)")
    ax.set_ylabel("simulated throughput (tx/s)")
    ax.set_title(f"PBFT, calibrated simulation (N=4 calibration error {error})", fontsize=9)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
