"""bench/scale.py's figures and its reading of the operator's resync log lines (the
helpers only; a real run is ``make bench``)."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import scale  # noqa: E402


def latency(ms: list[float]) -> dict[str, Any]:
    return {"latencies_ms": ms, "sent": len(ms), "unrecorded": 0}


def side(n: int, rss: float, bulk: float, subject: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "rss_mb": rss,
        "rss_start_mb": 100.0,
        "rss_peak_mb": rss + 10,
        "rss_after_mb": rss,
        "bulk_seconds": bulk,
        "bulk_cpu_s": bulk / 2,
        "quiet": latency([10.0, 20.0, 30.0]),
    }
    if subject:
        out |= {
            "during": latency([100.0, 900.0]),
            "resync_reconciles_during": 42,
            "resync_during_bulk": (7, 0.5),
            "round_overlap_s": 30.0,
            "quiet_without_round": True,
            "round_first": {"seconds": 70.0, "owned": n + 21, "reconciled": n},
            "round_steady": {"seconds": 5.0, "owned": n + 21, "reconciled": n // 10},
        }
    return out


def results(soak: bool = False) -> dict[int, dict[str, dict[str, Any]]]:
    out = {
        n: {
            "baseline": side(n, 100.0 + n * 0.01, n / 100, False),
            "subject": side(n, 100.0 + n * 0.03, n / 50, True),
        }
        for n in (1000, 10000)
    }
    if soak:
        out[10000]["subject"]["soak"] = {
            "latency": latency([5.0, 50.0]),
            "rss_first_mb": 400.0,
            "rss_last_mb": 401.0,
            "rss_max_mb": 405.0,
            "slope_mb_per_min": 0.1,
            "floor_slope_mb_per_min": 0.05,
            "timeline": [[0.0, 400.0]],
        }
    return out


def test_figures_per_size_ratios_slopes_and_goal_keys() -> None:
    p = scale.ScaleParams(sizes=(1000, 10000), soak=600.0)
    f = scale.figures_from(results(soak=True), p)
    assert f["rss_mb_10000"] == pytest.approx(400.0)
    assert f["noop_rss_mb_10000"] == pytest.approx(200.0)
    assert f["rss_ratio_vs_noop_10000"] == pytest.approx(2.0)
    assert f["bulk_ratio_vs_noop_1000"] == pytest.approx(2.0)
    # (rss - start) per Config: 30 MB over 1,000 is 30 KB
    assert f["rss_kb_per_config_1000"] == pytest.approx(30.0)
    assert f["noop_rss_kb_per_config_1000"] == pytest.approx(10.0)
    # the slope over the sizes: 0.03 MB = 30 KB per added Config, the no-op's 10
    assert f["rss_slope_kb_per_config"] == pytest.approx(30.0)
    assert f["noop_rss_slope_kb_per_config"] == pytest.approx(10.0)
    assert f["resync_round_max_s_10000"] == 70.0
    assert f["resync_round_first_reconciled_10000"] == 10000
    assert f["apply_recorded_p99_ms_resync_10000"] == 900.0
    assert f["apply_recorded_p99_ms_10000"] == 30.0
    assert f["resync_reconciles_during_bulk_1000"] == 7
    assert f["soak_rss_slope_mb_per_min"] == 0.1
    assert f["soak_rss_floor_slope_mb_per_min"] == 0.05
    assert f["apply_recorded_p99_ms_soak"] == 50.0
    goals = scale.goal_results(f, scale.goals_for(p))
    assert set(goals) == {
        "rss_ratio_vs_noop_10000",
        "bulk_ratio_vs_noop_1000",
        "bulk_ratio_vs_noop_10000",
        "apply_recorded_p99_ms_10000",
        "apply_recorded_p99_ms_resync_10000",
        "resync_round_max_s_10000",
        "soak_rss_floor_slope_mb_per_min",
    }
    assert [k for k, g in goals.items() if not g["pass"]] == [
        "rss_ratio_vs_noop_10000",
        "bulk_ratio_vs_noop_1000",
        "bulk_ratio_vs_noop_10000",
        "resync_round_max_s_10000",
    ]
    f["elapsed_s"] = 1.0
    out = io.StringIO()
    scale.render(Console(file=out, width=200), f, goals)
    text = out.getvalue()
    assert "RSS slope over 1000, 10000 Configs: 30.0 KB per added Config" in text
    assert "goals missed: rss_ratio_vs_noop_10000" in text


def test_the_soak_slope_is_of_the_second_half() -> None:
    # growth that stops halfway: a working set reached, not a leak
    samples = [(t * 60.0, 100.0 + min(t, 5)) for t in range(11)]
    assert scale.rss_slope(samples) == pytest.approx(0.0)
    leak = [(t * 60.0, 100.0 + 2 * t) for t in range(11)]
    assert scale.rss_slope(leak) == pytest.approx(2.0)


def test_the_soak_floor_ignores_the_peaks_of_each_round() -> None:
    # flat at 376 MB with a 20 MB peak every minute, the last one near the end: the
    # plain slope sees growth, the floor sees none
    samples = [(t * 5.0, 396.0 if t % 12 == 11 else 376.0) for t in range(120)]
    assert scale.rss_slope(samples) > 0.3
    assert scale.rss_floor_slope(samples) == pytest.approx(0.0)
    leak = [(t * 5.0, 376.0 + t * 0.5 / 12 + (20 if t % 12 == 11 else 0)) for t in range(120)]
    assert scale.rss_floor_slope(leak) == pytest.approx(0.5)


def test_round_lines_read_the_operators_json_log(tmp_path: Path) -> None:
    log = tmp_path / "op.log"
    lines = [
        {"ts": "2026-12-08T01:00:00.000+00:00", "msg": "resync round started", "round": 3},
        {"ts": "2026-12-08T01:00:01.000+00:00", "msg": "recorded", "config": "a/b"},
        {
            "ts": "2026-12-08T01:00:12.500+00:00",
            "msg": "resync round done",
            "round": 3,
            "seconds": 12.5,
            "owned": 10,
            "reconciled": 1,
        },
    ]
    log.write_text("\n".join(json.dumps(x) for x in lines) + "\nnot json\n")
    got = scale.round_lines(log)
    assert [(r["msg"], r["round"]) for r in got] == [
        ("resync round started", 3),
        ("resync round done", 3),
    ]
    assert got[1]["t"] - got[0]["t"] == pytest.approx(12.5)


def test_sizes_flag_says_what_is_wrong() -> None:
    with pytest.raises(SystemExit, match="expected numbers separated by commas"):
        scale.main(["--configs", "1000,lots"])
    with pytest.raises(SystemExit, match="every size must be above 0"):
        scale.main(["--configs", "0"])
