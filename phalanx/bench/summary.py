"""The summary ``phalanx bench`` (and ``phalanx sim --cost-model``) prints: a results
object of :mod:`phalanx.bench.results` as rich tables, one honest page per run."""

from __future__ import annotations

from typing import Any

from phalanx.bench.results import LATENCY_KEYS, per_tx


def _fmt(value: float | None, spec: str = ",.1f", unit: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{unit}"


def _mib(value: float | None) -> str:
    return "—" if value is None else f"{value / (1 << 20):,.1f}"


def render_summary(results: dict[str, Any], console: Any = None) -> None:
    """Print one honest summary of ``results`` (rich tables) to ``console`` or stdout."""
    from rich.console import Console
    from rich.table import Table

    # Wide enough for the per-node table even when stdout is not a terminal.
    console = console or Console(width=max(100, Console().width))
    latency = results["latency_ms"]
    safety = results["safety"]
    env = results["environment"]
    duration = results["duration_s"]

    head = Table(title=f"phalanx bench — {results['protocol']}", show_header=False)
    head.add_column("", style="bold")
    head.add_column("")
    head.add_row("committee", f"n={results['n']} f={results['f']}")
    head.add_row(
        "load",
        f"{results['clients']} closed-loop clients in {results['client_procs']} process(es), "
        f"{results['payload_bytes']} B values",
    )
    head.add_row("window", f"{duration:g} s after {results['warmup_s']:g} s warm-up")
    head.add_row("committed", f"{results['committed_tx']:,} tx")
    head.add_row("throughput", _fmt(results["throughput_tps"], ",.0f", " tx/s"))
    head.add_row(
        "latency p50 / p90 / p99",
        " / ".join(_fmt(latency[k], ",.1f") for k in LATENCY_KEYS) + " ms",
    )
    head.add_row("replica CPU per tx (sum)", _fmt(results["cpu_us_per_tx"], ",.0f", " µs"))
    head.add_row(
        "bytes per tx (busiest node)", _fmt(results["max_node_bytes_per_tx"], ",.0f", " B")
    )
    client_share = results["client_cpu_s"] / duration / max(1, results["client_procs"])
    head.add_row("load-generator CPU", f"{results['client_cpu_s']:.1f} s ({client_share:.0%} of a "
                 "core per process)")
    if "fault" in results:
        fault = results["fault"]
        head.add_row(
            "fault",
            f"replica {fault['replica']} killed at +{fault['at_s']:.2f} s: "
            f"{fault['committed_before']:,} tx before "
            f"({_fmt(fault['throughput_before_tps'], ',.0f')} tx/s), "
            f"{fault['committed_after']:,} after ({_fmt(fault['throughput_after_tps'], ',.0f')}"
            " tx/s)",
        )
    head.add_row("longest stall", f"{results['longest_stall_s']:.1f} s")

    def yes_no(ok: bool) -> str:
        return "[green]yes[/green]" if ok else "[red]NO[/red]"

    head.add_row(
        "safety",
        f"state roots equal: {yes_no(safety['state_roots_equal'])}, "
        f"logs consistent: {yes_no(safety['logs_consistent'])} "
        f"({safety['compared_seqs']:,} seqs compared)",
    )
    neck = results["bottleneck"]
    head.add_row("bottleneck", f"[bold]{neck['verdict']}[/bold]"
                 + (f" ({neck['resource']}): {neck['reason']}" if neck.get("resource") else
                    f": {neck.get('reason', '')}"))
    head.add_row(
        "environment",
        f"Python {env['python']}, {env['cpu_count']} CPUs"
        + (f" ({env['host_cpu_busy']:.0%} busy in the window)"
           if env.get("host_cpu_busy") is not None else "")
        + f", uvloop {env['uvloop']}, commit {(env['commit'] or '?')[:12]}",
    )
    console.print(head)

    nodes = Table(title="per replica over the window")
    for name in ("id", "CPU s", "CPU share", "core use", "sent MiB", "recv MiB", "msgs sent",
                 "bytes/tx", "peak RSS MiB"):
        nodes.add_column(name, justify="right")
    committed = results["committed_tx"]
    for node in results["per_node"]:
        total = (
            node["bytes_sent"] + node["bytes_recv"]
            if node["bytes_sent"] is not None and node["bytes_recv"] is not None
            else None
        )
        nodes.add_row(
            f"{node['id']}{' killed' if node['killed'] else ''}",
            _fmt(node["cpu_s"], ".2f"),
            _fmt(None if node["cpu_share"] is None else node["cpu_share"] * 100, ".0f", "%"),
            _fmt(None if node["cpu_s"] is None else node["cpu_s"] / duration * 100, ".0f", "%"),
            _mib(node["bytes_sent"]),
            _mib(node["bytes_recv"]),
            _fmt(node["msgs_sent"], ",.0f"),
            _fmt(per_tx(total, committed), ",.0f"),
            _mib(node["peak_rss_bytes"]),
        )
    console.print(nodes)
    for warning in results["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {warning}")
