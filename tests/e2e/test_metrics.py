"""The operator's HTTP endpoints: /healthz, /readyz, and /metrics counters that move
exactly as a scenario says (apply, update, invalid update, fix)."""

from __future__ import annotations

import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.e2e.operator_env import (
    OperatorProcess,
    apply,
    config_manifest,
    crd,
    wait_observed,
    wait_until,
)

from etcdconfig.devenv.controlplane import ControlPlane
from etcdconfig.devenv.etcd import EtcdServer

SCHEMA = {
    "type": "object",
    "required": ["replicas"],
    "properties": {"replicas": {"type": "integer", "minimum": 1}},
}

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(op: OperatorProcess) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(op.metrics()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def get(op: OperatorProcess, path: str) -> tuple[int, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{op.http_port}{path}", timeout=5) as r:
        return r.status, r.read().decode()


@pytest.fixture
def op(
    control_plane: ControlPlane,
    store_etcd: EtcdServer,
    crd: Path,
    namespace: str,
    tmp_path: Path,
) -> Iterator[OperatorProcess]:
    """An operator of its own, watching only this test's namespace: no other test's
    Configs can move its counters."""
    proc = OperatorProcess(
        plane=control_plane,
        etcd_endpoint=store_etcd.endpoint,
        prefix=f"/e2e-metrics-{uuid.uuid4().hex[:8]}",
        workdir=tmp_path,
        replica_id="metrics-0",
        extra=("--namespaces", namespace),
    )
    proc.start()
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


def test_health_endpoints_answer_200(op: OperatorProcess) -> None:
    assert get(op, "/healthz") == (200, "ok\n")
    assert get(op, "/readyz") == (200, "ok\n")
    status, body = get(op, "/metrics")
    assert status == 200 and "# TYPE etcdconfig_commits_total counter" in body


def test_counters_follow_apply_update_invalid_update_and_fix(
    control_plane: ControlPlane, namespace: str, op: OperatorProcess
) -> None:
    before = scrape(op)
    assert value(before, "etcdconfig_commits_total", result="recorded") == 0
    assert value(before, "etcdconfig_members") == 1
    assert value(before, "etcdconfig_session_lost_total") == 0

    m = config_manifest("app", namespace, {"replicas": 1}, schema=SCHEMA)
    apply(control_plane, m)
    wait_observed(control_plane, namespace, "app")
    s = scrape(op)
    assert value(s, "etcdconfig_commits_total", result="recorded") == 1
    assert value(s, "etcdconfig_lock_acquire_seconds_count") == 1
    assert value(s, "etcdconfig_reconcile_duration_seconds_count", trigger="create") >= 1

    m["spec"]["data"] = {"replicas": 2}
    apply(control_plane, m)
    wait_observed(control_plane, namespace, "app")
    s = scrape(op)
    assert value(s, "etcdconfig_commits_total", result="recorded") == 2
    assert value(s, "etcdconfig_reconcile_duration_seconds_count", trigger="update") >= 1

    m["spec"]["data"] = {"replicas": 0}
    apply(control_plane, m)
    wait_observed(control_plane, namespace, "app", ready=False)
    s = scrape(op)
    assert value(s, "etcdconfig_validation_failures_total", reason="InvalidData") == 1
    assert value(s, "etcdconfig_commits_total", result="recorded") == 2

    # a resync round re-reads the invalid generation: reported once, never counted again
    rounds_seen = value(s, "etcdconfig_reconcile_duration_seconds_count", trigger="resync")
    wait_until(
        lambda: (
            value(scrape(op), "etcdconfig_reconcile_duration_seconds_count", trigger="resync")
            > rounds_seen
        ),
        30,
        "a resync round",
    )
    m["spec"]["data"] = {"replicas": 3}
    apply(control_plane, m)
    obj = wait_observed(control_plane, namespace, "app")
    assert obj["status"]["version"] == 3

    after = scrape(op)
    assert value(after, "etcdconfig_commits_total", result="recorded") == 3
    assert value(after, "etcdconfig_commits_total", result="already_recorded") == 0
    assert value(after, "etcdconfig_validation_failures_total", reason="InvalidData") == 1
    assert value(after, "etcdconfig_lock_acquire_seconds_count") == 3
    assert value(after, "etcdconfig_lock_contention_total") == 0
    for kind in ("conflict", "lost_lock", "unknown_outcome", "stale_incarnation"):
        assert value(after, "etcdconfig_commit_conflicts_total", kind=kind) == 0
    assert value(after, "etcdconfig_integrity_violations_total") == 0
    assert value(after, "etcdconfig_owned_configs") == 1
    assert value(after, "etcdconfig_members") == 1
    # the schema was compiled once and then served from the validation cache
    assert value(after, "etcdconfig_cache_hits_total", cache="validation") > 0
    assert value(after, "etcdconfig_cache_misses_total", cache="validation") >= 1
