"""The soak harness: its verdicts on synthetic series (flat passes; growing memory or
disk, drifting p99, an unsustained load fail), and a short real soak (saturation measured
by a tiny bench, two view changes by SIGSTOP, samples, plot)."""

from __future__ import annotations

from pathlib import Path

import pytest

from phalanx.reliability.checks import Findings
from phalanx.reliability.soak import (
    Sample,
    Soak,
    SoakSpec,
    interval_series,
    judge,
    mark_disturbed,
    plot,
)


def series(p99: list[float], tps: float = 100.0, backlog: int = 0) -> list[dict]:
    return [{"start_s": 10.0 * i, "end_s": 10.0 * (i + 1), "throughput_tps": tps,
             "p50_ms": 1.0, "p99_ms": v, "errors": 0, "backlog": backlog,
             "view_change": False} for i, v in enumerate(p99)]


def samples(anon: list[float], disk: list[float]) -> list[Sample]:
    return [Sample(1000.0 + 10 * i, {0: a}, {0: 10.0}, {0: d}, {0: i}, {0: 0})
            for i, (a, d) in enumerate(zip(anon, disk, strict=True))]


def verdict(anon: list[float], disk: list[float], p99: list[float], tps: float = 100.0
            ) -> Findings:
    spec = SoakSpec(Path("."), warmup_s=0.0)
    findings = Findings()
    judge(samples(anon, disk), series(p99, tps), 1000.0, 100.0, spec, findings)
    return findings


def test_flat_memory_bounded_disk_and_steady_latency_pass() -> None:
    assert not verdict([60, 62, 61, 60, 63, 61], [40, 41, 40, 42, 41, 41], [9, 10, 9, 10, 9, 11])


def test_memory_that_steps_up_once_and_stays_is_not_a_leak() -> None:
    # A burst (a view change's backlog) raises the allocator's high-water mark for good.
    assert not verdict([60, 61, 78, 79, 78, 79], [40] * 6, [10] * 6)


def test_growing_memory_growing_disk_drifting_p99_and_underload_fail() -> None:
    findings = verdict([60, 70, 80, 90, 100, 110], [40, 60, 80, 100, 120, 140],
                       [9, 10, 15, 20, 25, 30], tps=80.0)
    assert set(findings.counts) == {"rss_growth", "disk_growth", "p99_drift", "underload"}


def test_intervals_are_disturbed_from_a_view_change_until_the_backlog_drains() -> None:
    points = series([5] * 8)
    for point, backlog in zip(points, [0, 0, 900, 400, 30, 0, 0, 0], strict=True):
        point["backlog"] = backlog
    assert mark_disturbed(points, [21.0], rate=1000.0) == [19.0]
    assert [p["view_change"] for p in points] == [False, False, True, True, False, False,
                                                  False, False]


def test_an_interval_not_every_load_generator_reported_is_left_out() -> None:
    from phalanx.bench.results import LatencyHistogram

    hist = LatencyHistogram()
    hist.record_us(1000.0)

    def line(t: float) -> dict:
        return {"t": t, "completed": 10, "errors": {}, "backlog": 0,
                "histogram": hist.to_json()}

    lines = [(0, line(110.0)), (1, line(110.0)), (0, line(120.0)), (1, line(120.0)),
             (0, line(130.0))]  # generator 1 was stopped before its third report
    series = interval_series(lines, go=100.0, interval=10.0)
    assert [(p["start_s"], p["throughput_tps"]) for p in series] == [(0.0, 2.0), (10.0, 2.0)]


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_a_short_soak_samples_changes_views_agrees_and_plots(tmp_path: Path) -> None:
    spec = SoakSpec(tmp_path, duration_s=12.0, load=0.3, saturation_duration_s=2.0,
                    view_change_every_s=5.0, stop_s=3.0, interval_s=2.0, warmup_s=0.0,
                    clients=16)
    report = Soak(spec, say=lambda _: None).run()
    assert report["saturation_tps"] > 0
    changes = report["view_changes"]
    assert len(changes) == 2 and all(c["view_after"] > c["view_before"] for c in changes)
    assert not {"divergent_roots", "not_converged", "replica_exited"} & set(report["findings"])
    assert len(report["samples"]) >= 5 and len(report["intervals"]) >= 5
    assert all(len(s["anon_mib"]) == 4 and len(s["disk_mib"]) == 4 for s in report["samples"])
    plot(report, tmp_path / "soak.png")
    assert (tmp_path / "soak.png").stat().st_size > 10_000
