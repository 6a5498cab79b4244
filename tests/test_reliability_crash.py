"""The crash torture on real processes, small: a few SIGKILL, power-cut and whole-cluster
cycles lose nothing; and the harness FAILS a cluster with a planted bug — acknowledged
transfers lost by stores that skip fdatasync, a replica whose execution diverges, a store
that drops tx index records (docs/reliability.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from phalanx.reliability.crash import CrashSpec, CrashTorture

pytestmark = pytest.mark.integration


def small(tmp_path: Path, **overrides) -> CrashSpec:
    spec = dict(workdir=tmp_path, n=4, cycles=3, wallets=8, sdk_wallets=1, seed=3,
                up_s=(0.5, 1.0), down_s=(0.0, 0.3), cluster_cut_every=3,
                catch_up_timeout=30.0, converge_timeout=30.0, account_timeout=10.0)
    spec.update(overrides)
    return CrashSpec(**spec)  # type: ignore[arg-type]


@pytest.mark.timeout(180)
def test_sigkill_power_cut_and_whole_cluster_cut_cycles_lose_no_acknowledged_transfer(
    tmp_path: Path,
) -> None:
    report = CrashTorture(small(tmp_path, power_loss=0.5), say=lambda _: None).run()
    assert report["ok"], report["findings"]
    kills = report["kills"]
    assert kills.get("sigkill", 0) >= 1 and kills.get("power", 0) >= 1, kills
    assert kills["cluster_cut"] == 1 and kills["failpoint_missed"] == 0
    assert report["load"]["acknowledged"] > 0 and report["load"]["anomalies"] == 0
    for cycle in report["cycles"]:
        assert cycle["catch_up_s"] is not None and max(cycle["serve_s"]) > 0
    blocks = report["blocks"]
    assert len({b["top"] for b in blocks.values()}) == 1


@pytest.mark.timeout(180)
def test_the_harness_reports_acknowledged_transfers_lost_to_a_store_skipping_fdatasync(
    tmp_path: Path,
) -> None:
    # The cluster does not recover from losing its acknowledged state: wait little.
    spec = small(tmp_path, cycles=1, faults=("lose-acked",), catch_up_timeout=5.0,
                 converge_timeout=5.0, account_timeout=3.0, drain_s=3.0)
    report = CrashTorture(spec, say=lambda _: None).run()
    assert not report["ok"]
    assert {"acked_lost", "acked_not_durable"} <= set(report["findings"])


@pytest.mark.timeout(180)
def test_the_harness_reports_a_diverging_replica_and_a_store_dropping_records(
    tmp_path: Path,
) -> None:
    # The diverging replica never certifies a block, so its accounts stay unreadable.
    spec = small(tmp_path, cycles=1, power_loss=0.0, primary_bias=0.0, account_timeout=3.0,
                 faults=("diverge", "drop-record"))
    report = CrashTorture(spec, say=lambda _: None).run()
    assert not report["ok"]
    findings = report["findings"]
    assert {"divergent_roots", "divergent_blocks", "tx_index_lost"} <= set(findings)
    assert all(e.startswith("replica 1:") for e in findings["tx_index_lost"]["examples"])
    assert "replicas [3]" in findings["divergent_roots"]["examples"][0]
