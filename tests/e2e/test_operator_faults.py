"""The operator keeps running through an etcd outage (Reconciling, then Ready),
and its integrity scan finds tampering (Intact=False, a Warning Event, a metric)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.e2e.operator_env import (
    OperatorProcess,
    apply,
    condition,
    config_manifest,
    get,
    wait_observed,
    wait_until,
)

from etcdconfig.devenv.controlplane import ControlPlane
from etcdconfig.devenv.etcd import EtcdServer
from etcdconfig.etcd import EtcdClient, EtcdSettings


async def test_etcd_outage_sets_reconciling_and_recovers(
    control_plane: ControlPlane, namespace: str, crd: Path, tmp_path: Path
) -> None:
    etcd = EtcdServer(data_dir=tmp_path / "etcd" / "data", name="outage")
    etcd.start()
    etcd.wait_healthy(30)
    op = OperatorProcess(
        plane=control_plane,
        etcd_endpoint=etcd.endpoint,
        prefix="/outage",
        workdir=tmp_path / "op",
        replica_id="outage-op",
    )
    op.start()
    try:
        op.wait_ready()
        m = config_manifest("o", namespace, {"v": 1})
        apply(control_plane, m)
        wait_observed(control_plane, namespace, "o")
        etcd.kill()
        m["spec"]["data"] = {"v": 2}
        apply(control_plane, m)

        def reconciling() -> bool:
            c = condition(get(control_plane, namespace, "o"), "Reconciling")
            return bool(c and c["status"] == "True" and c["reason"] == "EtcdUnavailable")

        wait_until(reconciling, 60, "Reconciling=True while etcd is down")
        obj = get(control_plane, namespace, "o")
        assert condition(obj, "Ready")["status"] == "False"  # type: ignore[index]
        assert obj["status"]["version"] == 1
        assert op.proc is not None and op.proc.poll() is None  # still running
        etcd.start()
        etcd.wait_healthy(30)
        obj = wait_observed(control_plane, namespace, "o", timeout=90)
        assert obj["status"]["version"] == 2
        assert condition(obj, "Reconciling")["status"] == "False"  # type: ignore[index]
    finally:
        op.stop()
        etcd.stop()


async def test_integrity_scan_reports_tampering(
    control_plane: ControlPlane, namespace: str, store_etcd: EtcdServer, crd: Path, tmp_path: Path
) -> None:
    op = OperatorProcess(
        plane=control_plane,
        etcd_endpoint=store_etcd.endpoint,
        prefix="/integrity",
        workdir=tmp_path / "op",
        replica_id="integrity-op",
        extra=("--integrity-interval", "1", "--resync-interval", "1"),
    )
    op.start()
    try:
        op.wait_ready()
        m = config_manifest("t", namespace, {"v": 1})
        apply(control_plane, m)
        wait_observed(control_plane, namespace, "t")
        m["spec"]["data"] = {"v": 2}
        apply(control_plane, m)
        obj = wait_observed(control_plane, namespace, "t")
        assert condition(obj, "Intact")["status"] == "True"  # type: ignore[index]

        client = EtcdClient(EtcdSettings(endpoints=[store_etcd.endpoint]))
        key = f"/integrity/configs/{namespace}/t/versions/{1:020d}".encode()
        kv, _ = await client.get(key)
        assert kv is not None
        record = json.loads(kv.value)
        record["data"] = {"v": 100}
        await client.put(key, json.dumps(record).encode())
        await client.close()

        def intact_false() -> dict[str, object] | None:
            c = condition(get(control_plane, namespace, "t"), "Intact")
            return c if c and c["status"] == "False" else None

        c = wait_until(intact_false, 60, "Intact=False after tampering")
        assert c["reason"] == "IntegrityViolation"
        assert "v1: checksum-mismatch" in c["message"]
        ready = condition(get(control_plane, namespace, "t"), "Ready")
        assert ready is not None and ready["status"] == "False"
        out = control_plane.kubectl(
            "get",
            "events",
            "-n",
            namespace,
            "-o",
            "json",
            "--field-selector",
            "involvedObject.name=t",
        )
        reasons = [e["reason"] for e in json.loads(out.stdout)["items"] if e["type"] == "Warning"]
        assert reasons.count("IntegrityViolation") == 1  # once per transition, not per scan
        metric = [
            line
            for line in op.metrics().splitlines()
            if line.startswith("etcdconfig_integrity_violations_total ")
        ]
        assert metric and float(metric[0].split()[-1]) >= 1
    finally:
        op.stop()
