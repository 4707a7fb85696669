"""The resync round with its default (``--resync-full-every 10``) on a real operator:
settled Configs (nothing to change, not changed since) are skipped, so a round costs
the changed ones and a tenth of the rest; a Config changed behind the watch's back is
still reconciled at the next round, and drift of what a settled Config publishes is
still repaired, at its turn (within ten rounds)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from tests.e2e.operator_env import (
    OperatorProcess,
    apply,
    config_manifest,
    wait_observed,
    wait_until,
)
from tests.e2e.test_background_tasks import metric
from tests.e2e.test_publish import config_map

from etcdconfig.devenv.controlplane import ControlPlane
from etcdconfig.devenv.etcd import EtcdServer

CONFIGS = 20


def test_settled_configs_are_skipped_and_drift_is_still_repaired_at_their_turn(
    control_plane: ControlPlane, store_etcd: EtcdServer, crd: Path, namespace: str, tmp_path: Path
) -> None:
    plane, ns = control_plane, namespace
    op = OperatorProcess(
        plane=plane,
        etcd_endpoint=store_etcd.endpoint,
        prefix=f"/settled-{uuid.uuid4().hex[:8]}",
        workdir=tmp_path / "op",
        replica_id="settled-op",
        # after the fixture's "--resync-full-every 1": the product's default again
        extra=("--namespaces", ns, "--resync-interval", "1", "--resync-full-every", "10"),
    )
    op.start()
    try:
        op.wait_ready()
        for i in range(CONFIGS):
            publish = {"configMap": {"name": f"cm-{i}"}}
            apply(plane, config_manifest(f"c{i}", ns, {"n": i}, publish=publish))
        for i in range(CONFIGS):
            wait_observed(plane, ns, f"c{i}")

        resyncs = "etcdconfig_reconcile_duration_seconds_count"
        # a few rounds in, most Configs are settled: rounds skip them
        rounds = metric(op, "etcdconfig_resync_rounds_total")
        wait_until(
            lambda: metric(op, "etcdconfig_resync_rounds_total") >= rounds + 3, 30, "3 rounds"
        )
        skipped = metric(op, "etcdconfig_resync_skipped_total")
        start = metric(op, resyncs, trigger="resync")
        rounds = metric(op, "etcdconfig_resync_rounds_total")
        wait_until(
            lambda: metric(op, "etcdconfig_resync_rounds_total") >= rounds + 5, 30, "5 rounds"
        )
        done = metric(op, "etcdconfig_resync_rounds_total") - rounds
        reconciled = metric(op, resyncs, trigger="resync") - start
        assert metric(op, "etcdconfig_resync_skipped_total") > skipped
        # each settled Config is reconciled in full once in ten rounds: far fewer than all
        assert reconciled <= CONFIGS * (done + 1) / 2, (reconciled, done)

        # drift of a settled Config's ConfigMap: repaired at its turn, within ten rounds
        before = config_map(plane, ns, "cm-7")
        assert before is not None
        original = before["data"]["config.json"]
        plane.kubectl(
            "patch", "configmap", "cm-7", "-n", ns, "--type=merge",
            "-p", json.dumps({"data": {"config.json": '{"n": 999}'}}),
        )  # fmt: skip
        wait_until(
            lambda: (
                (config_map(plane, ns, "cm-7") or {}).get("data", {}).get("config.json") == original
            ),
            40,
            "the drifted ConfigMap repaired",
        )
    finally:
        op.stop()
