"""bench/e2e.py's pod mode: the figures of each side under their own JSON keys, and the
process mode's keys unchanged (the helpers only; a real run needs a node)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import e2e  # noqa: E402


def side(name: str, scale: float = 1.0) -> e2e.SideResult:
    return e2e.SideResult(
        side=name,
        bulk_seconds=2.0 * scale,
        create_seconds=1.0,
        bulk_cpu_s=1.0 * scale,
        rss_mb=100.0 * scale,
        rss_after_latency_mb=110.0,
        rss_peak_mb=120.0,
        latencies_ms=[10.0 * scale, 20.0 * scale],
        to_etcd_ms=[5.0],
        to_status_ms=[5.0],
        rss_start_mb=80.0,
        rss_timeline=[[0.0, 80.0]],
        superseded=0,
        unrecorded=0,
        sent=2,
        send_lag_ms_max=1.0,
        resync_during_latency=(1, 0.5),
        cpu_ms_per_update=3.0,
    )


PARAMS = e2e.QUICK


def test_the_process_mode_keys_are_unchanged() -> None:
    f = e2e.figures_from([side("baseline"), side("subject", 2)], PARAMS)
    assert not [k for k in f if k.endswith("_pod")]
    assert f["bulk_ratio_vs_noop"] == pytest.approx(2.0)
    assert f["rss_mb_1000"] == 200.0
    assert f["noop_bulk_seconds"] == 2.0
    assert e2e.goals_for(e2e.SUBJECTS["process"]) == e2e.GOALS


def test_both_modes_report_each_subject_against_the_same_baseline() -> None:
    results = [side("baseline"), side("subject", 2), side("pod", 3)]
    f = e2e.figures_from(results, PARAMS, e2e.SUBJECTS["both"])
    assert f["bulk_ratio_vs_noop"] == pytest.approx(2.0)
    assert f["bulk_ratio_vs_noop_pod"] == pytest.approx(3.0)
    assert f["rss_mb_1000_pod"] == 300.0
    assert f["apply_recorded_p99_ms_pod"] == 60.0
    process = {k for k in f if not k.startswith("noop_") and not k.endswith("_pod")}
    pod = {k.removesuffix("_pod") for k in f if k.endswith("_pod")}
    assert pod == process - {"configs", "rate", "duration_s"}
    view = e2e.side_view(f, "pod")
    assert view["bulk_ratio_vs_noop"] == f["bulk_ratio_vs_noop_pod"]
    assert view["noop_bulk_seconds"] == f["noop_bulk_seconds"]
    goals = e2e.goals_for(e2e.SUBJECTS["both"])
    assert set(goals) == set(e2e.GOALS) | {f"{k}_pod" for k in e2e.GOALS}


def test_mode_flag() -> None:
    assert e2e.parse_args([]).mode == "process"
    assert e2e.parse_args(["--mode", "both"]).mode == "both"
    with pytest.raises(SystemExit):
        e2e.parse_args(["--mode", "vm"])
