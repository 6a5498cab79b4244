"""Sweep outputs: one CSV row per run, throughput-latency plots (matplotlib PNG) and
one self-contained HTML page.

Everything is computed from results objects (``phalanx bench --json`` or
``phalanx sim --cost-model``), so a plot never shows a number the JSON does not hold.
"""

from __future__ import annotations

import contextlib
import csv
import html
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from phalanx.bench.results import reverdict

CSV_COLUMNS: tuple[str, ...] = (
    "protocol", "n", "f", "clients", "rate_tps", "payload_bytes", "duration_s", "committed_tx",
    "throughput_tps", "p50_ms", "p90_ms", "p99_ms", "cpu_us_per_tx", "max_node_bytes_per_tx",
    "verdict", "resource", "busiest_node", "busiest_cpu_us_per_tx", "data_cpu_share",
    "consensus_cpu_share", "execution_cpu_share", "safe", "host_cpu_busy", "source",
)


def judged(results: dict[str, Any]) -> dict[str, Any]:
    """``results`` with its bottleneck verdict recomputed, under the current rules, from
    the per-node figures it stores (a results object keeps the verdict of the day it was
    written; every report re-judges, so no two reports can disagree). A peer baseline
    without per-node accounting keeps its own verdict."""
    if "per_node" in results and results.get("committed_tx") is not None:
        with contextlib.suppress(KeyError, TypeError):
            results = {**results, "bottleneck": reverdict(results)}
    return results


def load_results(path: str | Path) -> dict[str, Any]:
    """A results JSON file, :func:`judged`."""
    return judged(json.loads(Path(path).read_text()))


def row(results: dict[str, Any]) -> dict[str, Any]:
    """The CSV row of one results object (judge it first: see :func:`judged`)."""
    neck = results.get("bottleneck", {})
    evidence = neck.get("evidence", {})
    latency = results.get("latency_ms", {})
    safety = results.get("safety", {})
    return {
        "protocol": results.get("protocol"),
        "n": results.get("n"),
        "f": results.get("f"),
        "clients": results.get("clients"),
        "rate_tps": (results.get("load") or {}).get("rate_tps"),
        "payload_bytes": results.get("payload_bytes"),
        "duration_s": results.get("duration_s"),
        "committed_tx": results.get("committed_tx"),
        "throughput_tps": results.get("throughput_tps"),
        "p50_ms": latency.get("p50"),
        "p90_ms": latency.get("p90"),
        "p99_ms": latency.get("p99"),
        "cpu_us_per_tx": results.get("cpu_us_per_tx"),
        "max_node_bytes_per_tx": results.get("max_node_bytes_per_tx"),
        "verdict": neck.get("verdict"),
        "resource": neck.get("resource"),
        "busiest_node": neck.get("busiest_node"),
        "busiest_cpu_us_per_tx": evidence.get("cpu_us_per_tx"),
        "data_cpu_share": (neck.get("data") or {}).get("cpu_share"),
        "consensus_cpu_share": (neck.get("consensus") or {}).get("cpu_share"),
        "execution_cpu_share": (neck.get("execution") or {}).get("cpu_share"),
        "safe": _safe(safety),
        "host_cpu_busy": (results.get("environment") or {}).get("host_cpu_busy"),
        "source": "simulated" if results.get("simulated") else "measured",
    }


def _safe(safety: dict[str, Any]) -> bool | None:
    """Both safety properties held; ``None`` (unknown) when a result does not say."""
    roots, logs = safety.get("state_roots_equal"), safety.get("logs_consistent")
    if roots is None or logs is None:
        return None
    return bool(roots and logs)


def write_csv(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow(r)


def series_key(r: dict[str, Any]) -> str:
    return f"{r['protocol']} n={r['n']}"


def plot_throughput_latency(path: Path, rows: Sequence[dict[str, Any]], title: str) -> None:
    """p50 (solid) and p99 (dashed) latency against throughput, one colour per series;
    each point is labelled with its load."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    series: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r["throughput_tps"] and r["p50_ms"] is not None:
            series.setdefault(series_key(r), []).append(r)
    for index, (name, points) in enumerate(series.items()):
        points.sort(key=lambda r: (r["rate_tps"] or 0, r["clients"] or 0))
        colour = f"C{index}"
        xs = [p["throughput_tps"] for p in points]
        ax.plot(xs, [p["p50_ms"] for p in points], "o-", color=colour, label=f"{name} p50")
        ax.plot(xs, [p["p99_ms"] for p in points], "x--", color=colour, alpha=0.6,
                label=f"{name} p99")
        for p in points:
            load = f"{p['rate_tps']:g}/s" if p["rate_tps"] else f"{p['clients']}c"
            ax.annotate(load, (p["throughput_tps"], p["p50_ms"]), textcoords="offset points",
                        xytext=(4, 4), fontsize=7)
    ax.set_xlabel("throughput (committed tx/s, measured at the clients)")
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    if series:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def html_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(r.get(c)))}</td>" for c in columns) + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 10 else f"{value:,.0f}"
    return str(value)


_STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
          "table{border-collapse:collapse;font-size:13px}"
          "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}"
          "th{background:#f3f3f3}")

HTML_COLUMNS = ("protocol", "n", "clients", "rate_tps", "throughput_tps", "p50_ms", "p99_ms",
                "cpu_us_per_tx", "max_node_bytes_per_tx", "verdict", "resource",
                "busiest_node", "busiest_cpu_us_per_tx", "data_cpu_share",
                "consensus_cpu_share", "execution_cpu_share", "safe", "host_cpu_busy")


class SweepReport:
    """Collects the runs of one sweep and writes its CSV, PNG and HTML into ``out``."""

    def __init__(self, title: str, out: Path) -> None:
        self.title = title
        self.out = out
        self.rows: list[dict[str, Any]] = []
        self.reasons: list[tuple[str, str]] = []

    @classmethod
    def from_points(cls, title: str, out: Path) -> SweepReport:
        """The report of the runs a sweep left in ``out/points/*.json``, re-judged (to
        rewrite a report after the verdict rules changed, without re-running it)."""
        report = cls(title, out)
        runs = [load_results(p) for p in sorted(Path(out, "points").glob("*.json"))]
        runs.sort(key=lambda r: (r.get("protocol") or "", r.get("n") or 0,
                                 (r.get("load") or {}).get("rate_tps") or 0,
                                 r.get("clients") or 0))
        for results in runs:
            point = {"protocol": results.get("protocol"), "n": results.get("n"),
                     "clients": results.get("clients"),
                     "rate": (results.get("load") or {}).get("rate_tps")}
            report.add(point, results)
        return report

    def add(self, point: dict[str, Any], results: dict[str, Any]) -> None:
        results = judged(results)
        r = row(results)
        self.rows.append(r)
        neck = results.get("bottleneck", {})
        load = f"rate {point['rate']:g}/s" if point.get("rate") else f"{point['clients']} clients"
        self.reasons.append((f"{series_key(r)}, {load}",
                             f"{neck.get('verdict')}: {neck.get('reason', '')}"))

    def write(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        write_csv(self.out / "sweep.csv", self.rows)
        plot_throughput_latency(self.out / "throughput_latency.png", self.rows, self.title)
        reasons = "".join(f"<li><b>{html.escape(k)}</b> — {html.escape(v)}</li>"
                          for k, v in self.reasons)
        page = (
            f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}"
            f"</title><style>{_STYLE}</style></head><body><h1>{html.escape(self.title)}</h1>"
            "<p>Each point is one <code>phalanx bench</code> run: throughput and latency "
            "measured at the clients over the steady window; CPU and bytes from each "
            "replica's accounting over the same window.</p>"
            "<img src='throughput_latency.png' alt='throughput-latency'>"
            f"<h2>Runs</h2>{html_table(self.rows, HTML_COLUMNS)}"
            f"<h2>Bottleneck verdicts</h2><ul>{reasons}</ul>"
            "<p>Raw results: <code>points/*.json</code>; all rows: "
            "<a href='sweep.csv'>sweep.csv</a>.</p></body></html>"
        )
        (self.out / "report.html").write_text(page)
