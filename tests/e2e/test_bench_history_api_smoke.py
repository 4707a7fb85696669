"""The history API benchmark runs end to end and reports every figure (no timing
assertions). It starts its own control plane, store etcd and operator (bench/_cluster.py),
so it belongs to the tier that has the Kubernetes binaries; it uses none of this tier's
fixtures."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench" / "history_api.py"
BASELINES = ("etcd_history", "etcd_get")
THROUGH_THE_API = (
    "admin_list",
    "admin_get",
    "admin_table",
    "reader_list_cached",
    "reader_get_cached",
    "reader_table_cached",
    "reader_list_uncached",
    "reader_get_uncached",
)


def number(report: dict[str, object], key: str) -> float:
    value = report[key]
    assert isinstance(value, int | float) and not isinstance(value, bool), (key, value)
    assert math.isfinite(value), (key, value)
    return float(value)


def test_quick_json_run_reports_every_figure_against_the_etcd_baseline() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--json"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT / "operator")},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)  # stdout holds the JSON object and nothing else
    rounds = number(report, "rounds")
    assert rounds > 0
    assert number(report, "versions") > 0
    assert number(report, "elapsed_s") > 0
    for key in (*BASELINES, *THROUGH_THE_API):
        assert number(report, f"{key}_samples") == rounds, key
        p50, p99 = number(report, f"{key}_p50_ms"), number(report, f"{key}_p99_ms")
        assert 0 < p50 <= p99, (key, p50, p99)
    for key in THROUGH_THE_API:
        assert number(report, f"{key}_p50_ratio") > 0, key
        assert number(report, f"{key}_p99_ratio") > 0, key
    for key in BASELINES:
        assert f"{key}_p50_ratio" not in report
    number(report, "reader_list_review_ms")
    number(report, "reader_get_review_ms")
