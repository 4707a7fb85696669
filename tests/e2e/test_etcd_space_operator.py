"""etcd out of space with a real operator (docs/operations.md#etcd-space): the store's
etcd has a 4 MiB ``--quota-backend-bytes`` and is filled until its NOSPACE alarm is
raised. A change then records nothing; the Config says why (``Stalled``, reason
``StoreFull``, with the sizes) with one Event; the metrics and one log line say so;
history stays readable. After the documented commands free space, the change is
recorded by itself as the next version, and the Config is Ready again."""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.e2e.operator_env import (
    BIN,
    OperatorProcess,
    apply,
    condition,
    config_manifest,
    get,
    wait_observed,
    wait_until,
)
from tests.e2e.test_background_tasks import log_records, metric

from etcdconfig.devenv.build import ensure_etcd
from etcdconfig.devenv.controlplane import ControlPlane
from etcdconfig.devenv.etcd import EtcdServer
from etcdconfig.errors import StoreFull
from etcdconfig.etcd import EtcdClient, EtcdSettings

QUOTA = 4 * 1024 * 1024


@pytest.fixture
def small_etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    server = EtcdServer(
        data_dir=tmp_path / "etcd", name="small", extra_args=(f"--quota-backend-bytes={QUOTA}",)
    )
    server.start()
    try:
        server.wait_healthy(60)
        yield server
    finally:
        server.stop()


def etcdctl(server: EtcdServer, *args: str) -> str:
    _, ctl = ensure_etcd()
    return subprocess.run(
        [str(ctl), f"--endpoints={server.endpoint}", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout


async def fill(endpoint: str) -> None:
    client = EtcdClient(EtcdSettings(endpoints=[endpoint]))
    try:
        for i in range(200):
            try:
                await client.put(f"/filler/{i:04d}".encode(), b"x" * (512 * 1024))
            except StoreFull:
                return
        raise AssertionError("etcd never ran out of space")
    finally:
        await client.close()


def test_a_full_etcd_stalls_the_change_says_why_and_records_it_once_space_is_freed(
    control_plane: ControlPlane, crd: Path, namespace: str, small_etcd: EtcdServer, tmp_path: Path
) -> None:
    plane = control_plane
    op = OperatorProcess(
        plane=plane,
        etcd_endpoint=small_etcd.endpoint,
        prefix=f"/space-{uuid.uuid4().hex[:8]}",
        workdir=tmp_path / "op",
        replica_id="space-op",
        extra=("--namespaces", namespace, "--space-check-interval", "1"),
    )
    op.start()
    try:
        op.wait_ready()
        m = config_manifest("payments", namespace, {"retries": 1})
        apply(plane, m)
        wait_observed(plane, namespace, "payments")
        wait_until(lambda: metric(op, "etcdconfig_etcd_db_quota_bytes") == QUOTA, 30, "quota")
        # the history gauges: this replica owns the one Config, one version of it
        usage = json.loads(subprocess.run(
            [str(BIN / "etcdconfig"), "usage", f"{namespace}/payments", "-o", "json",
             "--etcd-endpoints", small_etcd.endpoint, "--prefix", op.prefix],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout)  # fmt: skip
        assert usage["total"]["versions"] == 1
        assert metric(op, "etcdconfig_history_versions") == 1
        assert metric(op, "etcdconfig_history_bytes") == usage["total"]["bytes"]

        asyncio.run(fill(small_etcd.endpoint))
        wait_until(lambda: metric(op, "etcdconfig_etcd_nospace") == 1, 30, "the nospace gauge")
        m["spec"]["data"] = {"retries": 2}
        apply(plane, m)

        def stalled() -> dict[str, object] | None:
            c = condition(get(plane, namespace, "payments"), "Stalled")
            return c if c and c["status"] == "True" and c["reason"] == "StoreFull" else None

        c = wait_until(stalled, 60, "Stalled/StoreFull")
        obj = get(plane, namespace, "payments")
        message = str(c["message"])
        assert message.startswith("etcd is out of space (database ")
        assert f"of quota {QUOTA // 1024 // 1024}.0 MiB): generation 2 is not recorded (" in (
            message
        )
        assert "`etcdctl alarm disarm` (docs/operations.md#etcd-space)); it is recorded by " in (
            message
        )
        assert (obj["status"]["version"], obj["metadata"]["generation"]) == (1, 2)
        ready = condition(obj, "Ready")
        assert ready is not None and (ready["status"], ready["reason"]) == ("False", "StoreFull")
        reconciling = condition(obj, "Reconciling")
        assert reconciling is not None and reconciling["status"] == "False"
        assert metric(op, "etcdconfig_store_full_total") >= 1

        # reads keep working: the history of version 1, straight from etcd
        history = subprocess.run(
            [str(BIN / "etcdconfig"), "history", f"{namespace}/payments", "-o", "json",
             "--etcd-endpoints", small_etcd.endpoint, "--prefix", op.prefix],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        assert [v["version"] for v in json.loads(history.stdout)["versions"]] == [1]

        # one Event for the episode, however many retries
        wait_until(lambda: metric(op, "etcdconfig_store_full_total") >= 3, 60, "retries")
        events = json.loads(plane.kubectl(
            "get", "events", "-n", namespace, "--field-selector", "reason=StoreFull", "-o", "json"
        ).stdout)["items"]  # fmt: skip
        assert len(events) == 1 and events[0]["count"] in (None, 1), events
        assert events[0]["type"] == "Warning"
        outs = [r for r in log_records(op) if str(r.get("msg", "")).startswith("etcd is out")]
        assert len(outs) == 1, outs
        assert outs[0]["quota"] == QUOTA and int(str(outs[0]["dbSize"])) > QUOTA // 2

        # the admin frees space, as docs/operations.md says
        etcdctl(small_etcd, "del", "/filler/", "--prefix")
        status = json.loads(etcdctl(small_etcd, "endpoint", "status", "-w", "json"))
        etcdctl(small_etcd, "compact", str(status[0]["Status"]["header"]["revision"]), "--physical")
        etcdctl(small_etcd, "defrag")
        etcdctl(small_etcd, "alarm", "disarm")

        obj = wait_observed(plane, namespace, "payments", timeout=90)
        assert obj["status"]["version"] == 2
        stalled_now = condition(obj, "Stalled")
        assert stalled_now is not None and stalled_now["status"] == "False"
        wait_until(lambda: metric(op, "etcdconfig_etcd_nospace") == 0, 30, "the gauge back to 0")
        wait_until(
            lambda: any(
                r.get("msg") == "etcd has space again: the NOSPACE alarm is disarmed"
                for r in log_records(op)
            ),
            30,
            "the recovery log line",
        )
    finally:
        op.stop()
