"""The whole user path, end to end: kubectl → API server → operator → etcd.

Every assertion about the store reads etcd directly, not through the operator.
"""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest
from tests.e2e.operator_env import (
    BIN,
    OperatorProcess,
    apply,
    condition,
    config_manifest,
    crd,
    get,
    install_webhook,
    make_webhook_certs,
    operator,
    wait_observed,
    wait_until,
)
from tests.integration.helpers import assert_history_invariants

from etcdconfig.canonical import checksum
from etcdconfig.devenv.controlplane import ControlPlane
from etcdconfig.etcd import EtcdClient, EtcdSettings
from etcdconfig.store import VersionedStore

SCHEMA = {
    "type": "object",
    "required": ["replicas"],
    "properties": {"replicas": {"type": "integer", "minimum": 1}, "mode": {"enum": ["a", "b"]}},
}


@pytest.fixture
async def store(operator: OperatorProcess) -> AsyncIterator[VersionedStore]:
    client = EtcdClient(EtcdSettings(endpoints=[operator.etcd_endpoint]))
    yield VersionedStore(client, prefix=operator.prefix)
    await client.close()


def cli(op: OperatorProcess, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(BIN / "etcdconfig"), *args],
        env={
            **op.plane.client_env(),
            "ETCDCONFIG_ETCD_ENDPOINTS": op.etcd_endpoint,
            "ETCDCONFIG_ETCD_PREFIX": op.prefix,
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"etcdconfig {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc


def events(plane: ControlPlane, namespace: str, name: str) -> list[dict[str, Any]]:
    out = plane.kubectl(
        "get",
        "events",
        "-n",
        namespace,
        "-o",
        "json",
        "--field-selector",
        f"involvedObject.name={name}",
    )
    return list(json.loads(out.stdout)["items"])


async def test_apply_update_invalid_fix_delete_and_recreate(
    control_plane: ControlPlane,
    namespace: str,
    operator: OperatorProcess,
    store: VersionedStore,
) -> None:
    m = config_manifest("app", namespace, {"replicas": 1, "mode": "a"}, schema=SCHEMA)
    apply(control_plane, m)
    obj = wait_observed(control_plane, namespace, "app")
    head = await store.head(namespace, "app")
    assert head is not None and (head.version, head.generation, head.uid) == (
        1,
        1,
        obj["metadata"]["uid"],
    )
    assert obj["status"]["version"] == 1
    assert obj["status"]["checksum"] == head.checksum == checksum({"replicas": 1, "mode": "a"})
    assert {c["type"]: c["status"] for c in obj["status"]["conditions"]} == {
        "Ready": "True",
        "Valid": "True",
        "Recorded": "True",
        "Intact": "True",
        "Reconciling": "False",
        "Stalled": "False",
    }
    control_plane.kubectl(
        "wait",
        "--for=condition=Ready",
        "configs.etcdconfig.io/app",
        "-n",
        namespace,
        "--timeout=30s",
    )

    # update -> version 2 with the right diff
    m["spec"]["data"] = {"replicas": 3, "mode": "a"}
    apply(control_plane, m)
    obj = wait_observed(control_plane, namespace, "app")
    assert obj["status"]["version"] == 2
    diff = cli(operator, "diff", f"{namespace}/app", "1", "2", check=False)
    assert diff.returncode == 1  # like diff(1): the versions differ
    assert "-replicas: 1\n+replicas: 3\n" in diff.stdout

    # invalid update (webhook off) -> Valid=False, every error with its path, head unchanged
    m["spec"]["data"] = {"replicas": 0, "mode": "c"}
    apply(control_plane, m)
    obj = wait_observed(control_plane, namespace, "app", ready=False)
    valid = condition(obj, "Valid")
    assert valid is not None and valid["status"] == "False" and valid["reason"] == "InvalidData"
    assert (
        valid["message"]
        == 'spec.data.mode: must be one of "a", "b"; spec.data.replicas: violates minimum 1'
    )
    assert condition(obj, "Stalled")["status"] == "True"  # type: ignore[index]
    assert obj["status"]["version"] == 2
    head = await store.head(namespace, "app")
    assert head is not None and head.version == 2
    warnings = [e for e in events(control_plane, namespace, "app") if e["type"] == "Warning"]
    assert [e["reason"] for e in warnings] == ["InvalidData"]
    assert "generation 3 not recorded: spec.data.mode" in warnings[0]["message"]

    # fixed -> version 3
    m["spec"]["data"] = {"replicas": 2, "mode": "b"}
    apply(control_plane, m)
    obj = wait_observed(control_plane, namespace, "app")
    assert obj["status"]["version"] == 3

    # GitOps-clean: the applied manifest shows no drift, metadata has only our finalizer
    diff_proc = control_plane.kubectl("diff", "-f", "-", input=json.dumps(m), check=False)
    assert diff_proc.returncode == 0, diff_proc.stdout
    meta = obj["metadata"]
    assert meta["finalizers"] == ["etcdconfig.io/finalizer"]
    assert not [k for k in meta.get("annotations", {}) if "kopf" in k]
    assert obj["spec"] == m["spec"]

    # delete with Retain -> tombstone, history kept
    old_uid = meta["uid"]
    control_plane.kubectl(
        "delete", "configs.etcdconfig.io", "app", "-n", namespace, "--timeout=60s"
    )
    head = await store.head(namespace, "app")
    assert head is not None and head.deleted and head.uid == old_uid and head.version == 3
    records, _ = await store.history(namespace, "app")
    assert [r.version for r in records] == [3, 2, 1]

    # re-created -> numbering continues, new uid recorded
    apply(control_plane, m)
    obj = wait_observed(control_plane, namespace, "app")
    assert obj["status"]["version"] == 4
    v4 = await store.get_version(namespace, "app", 4)
    assert v4.uid == obj["metadata"]["uid"] != old_uid
    assert await store.verify(namespace, "app") == []


async def test_purge_removes_history(
    control_plane: ControlPlane,
    namespace: str,
    operator: OperatorProcess,
    store: VersionedStore,
) -> None:
    m = config_manifest("gone", namespace, {"a": 1}, deletionPolicy="Purge")
    apply(control_plane, m)
    wait_observed(control_plane, namespace, "gone")
    m["spec"]["data"] = {"a": 2}
    apply(control_plane, m)
    wait_observed(control_plane, namespace, "gone")
    control_plane.kubectl(
        "delete", "configs.etcdconfig.io", "gone", "-n", namespace, "--timeout=60s"
    )
    records, _ = await store.history(namespace, "gone")
    assert records == []
    head = await store.head(namespace, "gone")
    assert head is not None and head.deleted and head.purged and head.version == 0


async def test_fifty_rapid_updates_record_a_gapless_history(
    control_plane: ControlPlane,
    namespace: str,
    operator: OperatorProcess,
    store: VersionedStore,
) -> None:
    apply(control_plane, config_manifest("busy", namespace, {"n": 0}))
    for n in range(1, 51):
        control_plane.kubectl(
            "patch",
            "configs.etcdconfig.io",
            "busy",
            "-n",
            namespace,
            "--type=merge",
            "-p",
            json.dumps({"spec": {"data": {"n": n}}}),
        )
    obj = wait_observed(control_plane, namespace, "busy", timeout=90)
    final = obj["metadata"]["generation"]
    assert final == 51
    gens = await assert_history_invariants(
        store.client, operator.prefix, namespace, "busy", final_generation=final
    )
    head = await store.head(namespace, "busy")
    assert head is not None
    assert obj["status"]["version"] == head.version == len(gens)
    assert obj["status"]["checksum"] == head.checksum == checksum({"n": 50})


async def test_operator_killed_mid_stream_recovers_without_loss_or_duplicates(
    control_plane: ControlPlane,
    namespace: str,
    operator: OperatorProcess,
    store: VersionedStore,
) -> None:
    apply(control_plane, config_manifest("crash", namespace, {"n": 0}))
    wait_observed(control_plane, namespace, "crash")
    done = threading.Event()

    def writer() -> None:
        for n in range(1, 31):
            control_plane.kubectl(
                "patch",
                "configs.etcdconfig.io",
                "crash",
                "-n",
                namespace,
                "--type=merge",
                "-p",
                json.dumps({"spec": {"data": {"n": n}}}),
            )
        done.set()

    t = threading.Thread(target=writer)
    t.start()
    wait_until(
        lambda: get(control_plane, namespace, "crash")["metadata"]["generation"] >= 10,
        60,
        "10 updates",
    )
    operator.kill()
    operator.start()
    t.join(120)
    assert done.is_set()
    operator.wait_ready()
    obj = wait_observed(control_plane, namespace, "crash", timeout=90)
    assert obj["metadata"]["generation"] == 31
    await assert_history_invariants(
        store.client, operator.prefix, namespace, "crash", final_generation=31
    )
    head = await store.head(namespace, "crash")
    assert head is not None and obj["status"]["version"] == head.version


async def test_rollback_records_a_new_version_equal_to_the_old_one(
    control_plane: ControlPlane,
    namespace: str,
    operator: OperatorProcess,
    store: VersionedStore,
) -> None:
    m = config_manifest("rb", namespace, {"color": "blue", "size": 1})
    apply(control_plane, m)
    wait_observed(control_plane, namespace, "rb")
    m["spec"]["data"] = {"color": "red"}
    apply(control_plane, m)
    wait_observed(control_plane, namespace, "rb")

    dry = cli(operator, "rollback", f"{namespace}/rb", "--to", "1", "--dry-run").stdout
    assert "+color: blue" in dry and "dry run" in dry
    printed = json.loads(
        cli(operator, "rollback", f"{namespace}/rb", "--to", "1", "--print", "-o", "json").stdout
    )
    assert printed["spec"]["data"] == {"color": "blue", "size": 1}

    cli(operator, "rollback", f"{namespace}/rb", "--to", "1")
    obj = wait_observed(control_plane, namespace, "rb")
    assert obj["status"]["version"] == 3
    v3 = await store.get_version(namespace, "rb", 3)
    v1 = await store.get_version(namespace, "rb", 1)
    assert v3.data == v1.data and v3.checksum == v1.checksum
    assert v3.origin == {"kind": "rollback", "fromVersion": 1}
    assert v3.author["changeCause"] == "rollback to version 1"
    history = json.loads(cli(operator, "history", f"{namespace}/rb", "-o", "json").stdout)
    assert [v["version"] for v in history["versions"]] == [3, 2, 1]


async def test_published_configmap_follows_the_head_only(
    control_plane: ControlPlane,
    namespace: str,
    operator: OperatorProcess,
    store: VersionedStore,
) -> None:
    m = config_manifest("pub", namespace, {"k": "v1"}, publish={"configMap": {"name": "pub-cm"}})
    apply(control_plane, m)
    wait_observed(control_plane, namespace, "pub")

    def cm() -> dict[str, Any]:
        out = control_plane.kubectl(
            "get", "configmap", "pub-cm", "-n", namespace, "-o", "json", check=False
        )
        return json.loads(out.stdout) if out.returncode == 0 else {}

    first = wait_until(cm, 30, "the ConfigMap")
    assert json.loads(first["data"]["config.json"]) == {"k": "v1"}
    assert first["metadata"]["annotations"]["etcdconfig.io/version"] == "1"
    assert first["metadata"]["ownerReferences"][0]["kind"] == "Config"
    # a resync round later, nothing changed: the ConfigMap is not rewritten
    rounds = operator.metrics().count(
        'etcdconfig_reconcile_duration_seconds_count{trigger="resync"}'
    )
    assert rounds == 1
    wait_until(lambda: _resync_count(operator) >= 2, 30, "two resync reconciles")
    assert cm()["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
    m["spec"]["data"] = {"k": "v2"}
    apply(control_plane, m)
    wait_observed(control_plane, namespace, "pub")
    second = wait_until(
        lambda: (c := cm()) and c["metadata"]["annotations"]["etcdconfig.io/version"] == "2" and c,
        30,
        "v2 published",
    )
    assert json.loads(second["data"]["config.json"]) == {"k": "v2"}


def _resync_count(op: OperatorProcess) -> float:
    for line in op.metrics().splitlines():
        if line.startswith('etcdconfig_reconcile_duration_seconds_count{trigger="resync"}'):
            return float(line.split()[-1])
    return 0.0


async def test_webhook_rejects_invalid_configs_at_apply_time(
    control_plane: ControlPlane,
    namespace: str,
    store_etcd: Any,
    crd: Any,
    tmp_path: Any,
) -> None:
    certs = make_webhook_certs(tmp_path / "pki")
    op = OperatorProcess(
        plane=control_plane,
        etcd_endpoint=store_etcd.endpoint,
        prefix="/e2e-webhook",
        workdir=tmp_path / "op",
        replica_id="webhook-op",
        webhook=certs,
    )
    op.start()
    try:
        op.wait_ready()
        install_webhook(
            control_plane, f"etcdconfig-{namespace}", op.webhook_port, certs, [namespace]
        )
        bad = config_manifest("w", namespace, {"replicas": 0}, schema=SCHEMA)
        dry = apply(control_plane, bad, "--dry-run=server", check=False)
        assert dry.returncode != 0
        assert (
            'admission webhook "validate.configs.etcdconfig.io" denied the request: '
            "InvalidData: spec.data.replicas: violates minimum 1" in dry.stderr
        )
        real = apply(control_plane, bad, check=False)
        assert real.returncode != 0 and "violates minimum 1" in real.stderr
        good = config_manifest("w", namespace, {"replicas": 2}, schema=SCHEMA)
        assert apply(control_plane, good, "--dry-run=server").returncode == 0
        apply(control_plane, good)
        wait_observed(control_plane, namespace, "w")
    finally:
        control_plane.kubectl(
            "delete",
            "validatingwebhookconfiguration",
            f"etcdconfig-{namespace}",
            "--ignore-not-found",
        )
        op.stop()
