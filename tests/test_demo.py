"""The demos' reading of their load: the view change is the longest pause in commits
after the primary's kill, not the first commit after it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from phalanx.demo.load import LoadLog, view_change


def log_of(commit_times: list[float], kill_at: float) -> LoadLog:
    return LoadLog(completions=[(t, 0.01) for t in commit_times], kill_at=kill_at)


def test_commits_prepared_before_the_kill_do_not_mark_the_new_view() -> None:
    # Two requests the backups had prepared commit right after the kill at t=10; the
    # new view's commits start after the long pause, at t=11.5.
    log = log_of([9.0, 9.5, 10.01, 10.02, 11.5, 11.6, 11.7], kill_at=10.0)
    resumed, after = view_change(log)
    assert resumed is not None and abs(resumed - 1.5) < 1e-9
    assert after == 3


def test_no_commit_after_the_kill_means_no_view_change() -> None:
    assert view_change(log_of([9.0, 9.5], kill_at=10.0)) == (None, 0)


def test_refusals_are_counted_by_reason() -> None:
    log = LoadLog()
    for reason in ("stale_nonce", "stale_nonce", "insufficient_funds"):
        log.reject(reason)
    assert log.rejected == {"stale_nonce": 2, "insufficient_funds": 1}
    assert log_of([1.0, 2.0], kill_at=0.0).latencies() == [0.01, 0.01]


@pytest.mark.integration
@pytest.mark.timeout(150)
def test_kv_demo_runs_the_key_value_store_through_a_primary_crash() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "phalanx.cli", "demo", "--app", "kv", "--duration", "3",
         "--clients", "4"],
        capture_output=True, text=True, timeout=140,
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    # "demo ok": commits went on after a view change, and the restarted replica caught
    # up to the same executed seq and state root as the others.
    assert "SIGKILL replica 0" in out and "demo ok" in out
