"""The store benchmark runs end to end and reports every figure (no timing assertions)."""

from __future__ import annotations

import asyncio
import json
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from etcdconfig.devenv.etcd import EtcdServer
from etcdconfig.etcd import EtcdClient, EtcdSettings, prefix_end

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench" / "store.py"
FIGURES = (
    "commit_p50_ratio",
    "commit_p99_ratio",
    "writes_per_version",
    "throughput_ratio_1",
    "throughput_ratio_4",
    "throughput_ratio_16",
    "failed_cas_per_commit",
)


@pytest.fixture
def fresh_etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    server = EtcdServer(data_dir=tmp_path / "data", name="bench-smoke")
    server.start()
    try:
        server.wait_healthy(60)
        yield server
    finally:
        server.stop()


async def test_quick_json_run_reports_every_figure_as_a_number_and_cleans_up(
    fresh_etcd: EtcdServer,
) -> None:
    prefix = "/bench-smoke"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(BENCH),
        "--quick",
        "--json",
        "--endpoint",
        fresh_etcd.endpoint,
        "--prefix",
        prefix,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT / "operator")},
    )
    try:
        async with asyncio.timeout(180):
            stdout, stderr = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, stderr.decode()
    report = json.loads(stdout)  # stdout holds the JSON object and nothing else
    for key in FIGURES:
        value = report[key]
        assert isinstance(value, int | float) and not isinstance(value, bool), (key, value)
        assert math.isfinite(value), (key, value)
        assert report["goals"][key]["pass"] in (True, False)
    # the benchmark deletes what it wrote
    async with EtcdClient(EtcdSettings(endpoints=[fresh_etcd.endpoint])) as client:
        left = await client.range(prefix.encode(), prefix_end(prefix.encode()), count_only=True)
    assert left.count == 0
