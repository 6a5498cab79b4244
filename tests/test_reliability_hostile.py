"""The hostile-input harness on real processes, small: a few thousand adversarial frames
and a few hundred HTTP requests of every kind against a loaded cluster — no crash, no
5xx, bounded memory, the load keeps committing, every refusal counted (malformed HTTP
and slow-loris connections on the HTTP port included)."""

from __future__ import annotations

from pathlib import Path

import pytest

from phalanx.reliability.hostile import HostileInput, HostileSpec

pytestmark = pytest.mark.integration

@pytest.mark.timeout(180)
def test_adversarial_frames_and_requests_are_dropped_counted_and_survived(
    tmp_path: Path,
) -> None:
    spec = HostileSpec(tmp_path, frames=2_000, http_requests=400, wallets=8, slowloris=20,
                       fat_slowloris=4, partial_mib=0.25, hold_s=2.0)
    report = HostileInput(spec, say=lambda _: None).run()
    assert report["findings"] == {}, report["findings"]
    totals = report["totals"]
    assert totals["frames"] >= 2_000 and totals["http_requests"] >= 400
    assert totals["http_5xx"] == 0 and totals["replicas_alive_at_end"] == 4
    phases = {p["name"]: p for p in report["phases"]}
    for name in ("preauth_garbage", "hello_fuzz", "bad_confirm", "break_link",
                 "auth_garbage", "auth_replica_only", "auth_requests", "slowloris_handshake",
                 "fat_slowloris", "raw_malformed", "slowloris_http"):
        assert phases[name]["counted"] >= phases[name]["units"] > 0, phases[name]
    assert phases["rate"]["statuses"].get(429, 0) > 0
    flood = phases["connection_flood"]
    assert flood["statuses"].get(503, 0) >= 8 and flood["counted"] >= flood["statuses"][503]
    assert all(p["acks"] > 0 for p in report["phases"] if p["ended"] - p["started"] > 2)


class _Cluster:
    """What the verdict reads of a LocalCluster: who is alive."""

    n = 2

    def __init__(self, dead: set[int]) -> None:
        self.dead = dead

    def alive(self, i: int) -> bool:
        return i not in self.dead

    def returncode(self, i: int) -> int | None:
        return -9 if i in self.dead else None


def test_the_verdict_reports_uncounted_drops_5xx_crashes_exceptions_and_stalls(
    tmp_path: Path,
) -> None:
    from phalanx.reliability.checks import LoadRecord
    from phalanx.reliability.hostile import Phase

    harness = HostileInput(HostileSpec(tmp_path), say=lambda _: None)
    counted = Phase("auth_garbage", "wire", "", 10.0, 13.0, units=500, counted=500)
    silent = Phase("auth_requests", "wire", "", 13.0, 16.0, units=500, counted=481)
    http = Phase("tx_fuzz", "http", "", 16.0, 19.0, units=10, statuses={400: 9, 500: 1},
                 counted=9)
    harness.phases = [counted, silent, http]
    load = LoadRecord(1)
    load.ack_times.extend([11.0, 12.0, 14.0])  # nothing committed during tx_fuzz
    harness._judge(_Cluster({1}), {}, {"core_exceptions": 0}, {"core_exceptions": 2}, load)
    found = harness.findings.to_json()
    assert set(found) == {"crashed", "core_exceptions", "uncounted", "http_5xx", "stalled"}
    assert [e.split(":")[0] for e in found["uncounted"]["examples"]] == ["auth_requests"]
    assert found["stalled"]["examples"][0].startswith("tx_fuzz")


def test_the_verdict_takes_a_counted_503_for_a_refusal_and_an_uncounted_one_as_uncounted(
    tmp_path: Path,
) -> None:
    from phalanx.reliability.checks import LoadRecord
    from phalanx.reliability.hostile import Phase

    harness = HostileInput(HostileSpec(tmp_path), say=lambda _: None)
    counted = Phase("connection_flood", "http", "", 10.0, 11.0, units=30,
                    statuses={200: 20, 503: 10}, counted=10)
    silent = Phase("connection_flood", "http", "", 11.0, 12.0, units=30,
                   statuses={200: 20, 503: 10}, counted=0)
    harness.phases = [counted]
    harness._judge(_Cluster(set()), {}, {}, {}, LoadRecord(1))
    assert harness.findings.to_json() == {}
    harness.phases = [silent]
    harness._judge(_Cluster(set()), {}, {}, {}, LoadRecord(1))
    assert set(harness.findings.to_json()) == {"uncounted"}
