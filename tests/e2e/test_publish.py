"""Publishing to a ConfigMap, end to end (real API server, kube-controller-manager's
garbage collector, the operator as a process, the store's etcd read directly).

- A ConfigMap the operator did not create is never written, never adopted (so the
  garbage collector never deletes it with the Config), and the Config says why.
- Two Configs on one ConfigMap: the second gets a conflict naming the first.
- A published ConfigMap changed behind the operator's back is repaired at the next
  resync, counted once, announced once.
- Nothing is published from a record whose data does not hash to the head's checksum.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from tests.e2e.operator_env import (
    OperatorProcess,
    apply,
    condition,
    config_manifest,
    crd,
    get,
    operator,
    wait_observed,
    wait_until,
)

from etcdconfig.canonical import canonical_json, checksum, loads
from etcdconfig.devenv.controlplane import ControlPlane
from etcdconfig.etcd import EtcdClient, EtcdSettings
from etcdconfig.store import VersionedStore

NOT_OWNED = (
    "ConfigMap {ns}/{cm} exists and was not created by etcdconfig (it lacks the label "
    "app.kubernetes.io/managed-by=etcdconfig or a controller ownerReference to this Config); "
    "it is left untouched: delete it, or choose another spec.publish.configMap.name"
)
OWNED_BY_ANOTHER = (
    "ConfigMap {ns}/{cm} is owned by Config {ns}/{owner}; it is left untouched: a ConfigMap "
    "is published by one Config only, choose another spec.publish.configMap.name"
)


@pytest.fixture
async def store(operator: OperatorProcess) -> AsyncIterator[VersionedStore]:
    client = EtcdClient(EtcdSettings(endpoints=[operator.etcd_endpoint]))
    yield VersionedStore(client, prefix=operator.prefix)
    await client.close()


def config_map(plane: ControlPlane, ns: str, name: str) -> dict[str, Any] | None:
    out = plane.kubectl("get", "configmap", name, "-n", ns, "-o", "json", check=False)
    if out.returncode != 0:
        assert "NotFound" in out.stderr, out.stderr
        return None
    return dict(json.loads(out.stdout))


def events(plane: ControlPlane, ns: str, name: str, reason: str) -> list[dict[str, Any]]:
    out = plane.kubectl(
        "get",
        "events",
        "-n",
        ns,
        "-o",
        "json",
        "--field-selector",
        f"involvedObject.name={name},reason={reason}",
    )
    return list(json.loads(out.stdout)["items"])


def metric(op: OperatorProcess, name: str) -> float:
    for line in op.metrics().splitlines():
        if line.startswith((name + " ", name + "{")):
            return float(line.split()[-1])
    return 0.0


def wait_resync_rounds(op: OperatorProcess, rounds: int = 2) -> None:
    """Wait until the resync loop has gone over every owned Config ``rounds`` more times."""
    owned = max(1.0, metric(op, "etcdconfig_owned_configs"))
    key = 'etcdconfig_reconcile_duration_seconds_count{trigger="resync"}'
    start = metric(op, key)
    wait_until(lambda: metric(op, key) >= start + rounds * owned, 60, f"{rounds} resync rounds")


def conditions(obj: dict[str, Any]) -> dict[str, str]:
    return {c["type"]: c["status"] for c in obj["status"]["conditions"]}


def untouched(cm: dict[str, Any]) -> dict[str, Any]:
    """What must not change on a ConfigMap the operator does not own."""
    meta = cm["metadata"]
    return {
        "uid": meta["uid"],
        "resourceVersion": meta["resourceVersion"],
        "labels": meta.get("labels"),
        "annotations": meta.get("annotations"),
        "ownerReferences": meta.get("ownerReferences"),
        "data": cm.get("data"),
    }


def test_foreign_configmap_is_never_adopted_modified_or_deleted(
    control_plane: ControlPlane, namespace: str, operator: OperatorProcess
) -> None:
    plane, ns = control_plane, namespace
    plane.kubectl(
        "create",
        "configmap",
        "settings",
        "-n",
        ns,
        '--from-literal=config.json={"owner": "team-a-value"}',
        "--from-literal=other=team-a-other-value",
    )
    foreign = config_map(plane, ns, "settings")
    assert foreign is not None
    before = untouched(foreign)
    assert before["ownerReferences"] is None

    data = {"secret": "cfg-value-7f3a"}
    apply(plane, config_manifest("app", ns, data, publish={"configMap": {"name": "settings"}}))
    obj = wait_observed(plane, ns, "app", ready=None)

    # nothing of the foreign ConfigMap changed: not its data, not its ownerReferences
    after = config_map(plane, ns, "settings")
    assert after is not None and untouched(after) == before

    # the Config says why, precisely; the version was recorded all the same
    message = NOT_OWNED.format(ns=ns, cm="settings")
    assert obj["status"]["version"] == 1
    assert obj["status"]["checksum"] == checksum(data)
    assert conditions(obj) == {
        "Ready": "False",
        "Valid": "True",
        "Recorded": "True",
        "Published": "False",
        "Intact": "True",
        "Reconciling": "False",
        "Stalled": "True",
    }
    published = condition(obj, "Published")
    assert published is not None
    assert (published["reason"], published["message"]) == ("ConfigMapNotOwned", message)
    ready = condition(obj, "Ready")
    assert ready is not None
    assert (ready["reason"], ready["message"]) == (
        "ConfigMapNotOwned",
        f"version 1 is recorded but not published: {message}",
    )
    stalled = condition(obj, "Stalled")
    assert stalled is not None
    assert (stalled["reason"], stalled["message"]) == ("ConfigMapNotOwned", message)
    recorded = condition(obj, "Recorded")
    assert recorded is not None and recorded["reason"] == "Recorded"

    # retries and resync rounds later: still untouched, still one Warning for the generation
    wait_resync_rounds(operator)
    after = config_map(plane, ns, "settings")
    assert after is not None and untouched(after) == before
    warnings = events(plane, ns, "app", "ConfigMapNotOwned")
    assert [(e["type"], e["message"]) for e in warnings] == [("Warning", message)]
    assert condition(get(plane, ns, "app"), "Published") == published
    # no data value in conditions, events or the operator's log
    everything = json.dumps(get(plane, ns, "app")["status"]["conditions"]) + json.dumps(
        [e["message"] for e in events(plane, ns, "app", "ConfigMapNotOwned")]
    )
    for value in ("cfg-value-7f3a", "team-a-value", "team-a-other-value"):
        assert value not in everything
    for value in ("team-a-value", "team-a-other-value"):
        assert value not in operator.log_text()

    # deleting the Config must not take the foreign ConfigMap with it. A canary Config
    # publishing a ConfigMap of its own, deleted after "app", proves the garbage
    # collector ran for these deletions.
    apply(plane, config_manifest("canary", ns, {"a": 1}, publish={"configMap": {"name": "c"}}))
    wait_observed(plane, ns, "canary")
    wait_until(lambda: config_map(plane, ns, "c"), 30, "the canary's ConfigMap")
    plane.kubectl("delete", "configs.etcdconfig.io", "app", "-n", ns, "--timeout=60s")
    plane.kubectl("delete", "configs.etcdconfig.io", "canary", "-n", ns, "--timeout=60s")
    wait_until(lambda: config_map(plane, ns, "c") is None, 120, "GC of the canary's ConfigMap")
    after = config_map(plane, ns, "settings")
    assert after is not None and untouched(after) == before


def test_second_config_on_the_same_configmap_gets_a_conflict(
    control_plane: ControlPlane, namespace: str, operator: OperatorProcess
) -> None:
    plane, ns = control_plane, namespace
    target = {"configMap": {"name": "shared"}}
    apply(plane, config_manifest("first", ns, {"who": "first"}, publish=target))
    first = wait_observed(plane, ns, "first")
    published = wait_until(lambda: config_map(plane, ns, "shared"), 30, "the ConfigMap")
    owner_refs = [
        {
            "apiVersion": "etcdconfig.io/v1alpha1",
            "kind": "Config",
            "name": "first",
            "uid": first["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": False,
        }
    ]
    assert published["metadata"]["ownerReferences"] == owner_refs
    assert published["metadata"]["labels"] == {
        "app.kubernetes.io/managed-by": "etcdconfig",
        "etcdconfig.io/config": "first",
    }

    apply(plane, config_manifest("second", ns, {"who": "second"}, publish=target))
    second = wait_observed(plane, ns, "second", ready=None)
    cm = config_map(plane, ns, "shared")
    assert cm is not None
    assert cm["metadata"]["resourceVersion"] == published["metadata"]["resourceVersion"]
    assert cm["metadata"]["ownerReferences"] == owner_refs
    assert json.loads(cm["data"]["config.json"]) == {"who": "first"}

    message = OWNED_BY_ANOTHER.format(ns=ns, cm="shared", owner="first")
    assert conditions(second) == {
        "Ready": "False",
        "Valid": "True",
        "Recorded": "True",
        "Published": "False",
        "Intact": "True",
        "Reconciling": "False",
        "Stalled": "True",
    }
    for type_ in ("Published", "Stalled"):
        c = condition(second, type_)
        assert c is not None
        assert (c["reason"], c["message"]) == ("ConfigMapOwnedByAnotherConfig", message)
    ready = condition(second, "Ready")
    assert ready is not None
    assert (ready["reason"], ready["message"]) == (
        "ConfigMapOwnedByAnotherConfig",
        f"version 1 is recorded but not published: {message}",
    )

    # no fight: rounds later the ConfigMap was not written, "first" is still Ready
    wait_resync_rounds(operator)
    cm = config_map(plane, ns, "shared")
    assert cm is not None
    assert cm["metadata"]["resourceVersion"] == published["metadata"]["resourceVersion"]
    ready_first = condition(get(plane, ns, "first"), "Ready")
    assert ready_first is not None and ready_first["status"] == "True"
    published_first = condition(get(plane, ns, "first"), "Published")
    assert published_first is not None
    assert (published_first["status"], published_first["message"]) == (
        "True",
        "version 1 is in ConfigMap shared",
    )
    warnings = events(plane, ns, "second", "ConfigMapOwnedByAnotherConfig")
    assert [(e["type"], e["message"]) for e in warnings] == [("Warning", message)]

    # once "first" and (by garbage collection) its ConfigMap are gone, "second" publishes
    plane.kubectl("delete", "configs.etcdconfig.io", "first", "-n", ns, "--timeout=60s")

    def second_published() -> dict[str, Any] | None:
        obj = get(plane, ns, "second")
        ready = condition(obj, "Ready")
        return obj if ready and ready["status"] == "True" else None

    obj = wait_until(second_published, 120, "second Ready after first is gone")
    published_second = condition(obj, "Published")
    assert published_second is not None
    assert (published_second["status"], published_second["reason"]) == ("True", "Published")
    cm = config_map(plane, ns, "shared")
    assert cm is not None
    assert [r["uid"] for r in cm["metadata"]["ownerReferences"]] == [obj["metadata"]["uid"]]
    assert json.loads(cm["data"]["config.json"]) == {"who": "second"}


def test_drift_is_repaired_at_the_next_resync_and_counted_once(
    control_plane: ControlPlane, namespace: str, operator: OperatorProcess
) -> None:
    plane, ns = control_plane, namespace
    data = {"retries": 3, "mode": "safe"}
    apply(plane, config_manifest("drift", ns, data, publish={"configMap": {"name": "drift-cm"}}))
    wait_observed(plane, ns, "drift")
    cm = wait_until(lambda: config_map(plane, ns, "drift-cm"), 30, "the ConfigMap")
    annotations = cm["metadata"]["annotations"]
    assert annotations == {"etcdconfig.io/version": "1", "etcdconfig.io/checksum": checksum(data)}
    repairs = metric(operator, "etcdconfig_publish_repairs_total")

    def patch(text: str) -> dict[str, Any]:
        plane.kubectl(
            "patch",
            "configmap",
            "drift-cm",
            "-n",
            ns,
            "--type=merge",
            "-p",
            json.dumps({"data": {"config.json": text}}),
        )
        out = config_map(plane, ns, "drift-cm")
        assert out is not None and out["metadata"]["annotations"] == annotations
        return out

    # the same content written differently is not drift: left as it is
    compact = patch('{"mode":"safe","retries":3}')
    wait_resync_rounds(operator)
    cm = config_map(plane, ns, "drift-cm")
    assert cm is not None
    assert cm["metadata"]["resourceVersion"] == compact["metadata"]["resourceVersion"]
    assert metric(operator, "etcdconfig_publish_repairs_total") == repairs

    # other content under unchanged annotations is drift: repaired at the next resync
    patch('{"mode": "unsafe", "retries": 99}\n')
    repaired = wait_until(
        lambda: (
            (c := config_map(plane, ns, "drift-cm"))
            and loads(c["data"]["config.json"]) == data
            and c
        ),
        30,
        "the drift repaired",
    )
    assert repaired["metadata"]["annotations"] == annotations
    assert metric(operator, "etcdconfig_publish_repairs_total") == repairs + 1

    # repaired once: rounds later nothing more was written or counted, one Event
    wait_resync_rounds(operator)
    cm = config_map(plane, ns, "drift-cm")
    assert cm is not None
    assert cm["metadata"]["resourceVersion"] == repaired["metadata"]["resourceVersion"]
    assert metric(operator, "etcdconfig_publish_repairs_total") == repairs + 1
    assert [
        e["message"] for e in events(plane, ns, "drift", "Published") if "repaired" in e["message"]
    ] == ["version 1 published to ConfigMap drift-cm (repaired drift)"]
    assert "unsafe" not in operator.log_text()


async def test_nothing_is_published_from_a_record_that_does_not_verify(
    control_plane: ControlPlane,
    namespace: str,
    operator: OperatorProcess,
    store: VersionedStore,
) -> None:
    plane, ns = control_plane, namespace
    data = {"limit": 1}
    apply(plane, config_manifest("intact", ns, data, publish={"configMap": {"name": "i-cm"}}))
    wait_observed(plane, ns, "intact")
    wait_until(lambda: config_map(plane, ns, "i-cm"), 30, "the ConfigMap")

    # the stored version 1 gets other data (its checksum field unchanged), then the
    # ConfigMap goes away, so the operator must publish again from that record
    key = store.keys.version(ns, "intact", 1)
    kv, _ = await store.client.get(key)
    assert kv is not None
    record = loads(kv.value)
    record["data"] = {"limit": 1000}
    await store.client.put(key, canonical_json(record, "record"))
    plane.kubectl("delete", "configmap", "i-cm", "-n", ns)

    def settled() -> tuple[str, dict[str, Any]] | None:
        cm = config_map(plane, ns, "i-cm")
        if cm is not None:
            return "published", cm
        obj = get(plane, ns, "intact")
        c = condition(obj, "Published")
        return ("refused", obj) if c and c["reason"] == "IntegrityViolation" else None

    outcome, obj = wait_until(settled, 30, "a publish or a refusal")
    assert outcome == "refused", f"published from a record that does not verify: {obj['data']}"
    # the store's verified read refuses the record; its message names the version
    message = (
        f"{ns}/intact version 1: data checksum mismatch (stored {checksum(data)}, computed "
        f"{checksum({'limit': 1000})}); the record was modified after it was written — run "
        f"`etcdconfig verify`; nothing published to ConfigMap {ns}/i-cm"
    )
    assert conditions(obj) == {
        "Ready": "False",
        "Valid": "True",
        "Recorded": "True",
        "Published": "False",
        "Intact": "False",
        "Reconciling": "False",
        "Stalled": "True",
    }
    for type_ in ("Published", "Intact", "Ready", "Stalled"):
        c = condition(obj, type_)
        assert c is not None
        assert (c["status"], c["reason"], c["message"]) == (
            "True" if type_ == "Stalled" else "False",
            "IntegrityViolation",
            message,
        )
    wait_resync_rounds(operator)
    assert config_map(plane, ns, "i-cm") is None
    warnings = events(plane, ns, "intact", "IntegrityViolation")
    assert [(e["type"], e["message"]) for e in warnings] == [("Warning", message)]


def test_flat_format_publishes_one_key_per_top_level_field_for_env_from(
    control_plane: ControlPlane, namespace: str, operator: OperatorProcess
) -> None:
    """format: flat -> one key per top-level field (usable with envFrom), with the same
    version/checksum annotations; keys the new head no longer has are removed; a field
    name that is no ConfigMap key stalls publishing with a reason, writing nothing."""
    plane, ns = control_plane, namespace
    publish = {"configMap": {"name": "flat-cm", "format": "flat"}}
    data: dict[str, Any] = {
        "MODE": "safe",
        "RETRIES": 3,
        "DEBUG": False,
        "limits": {"cpu": 2, "burst": [1, 2]},
    }
    apply(plane, config_manifest("flat", ns, data, publish=publish))
    wait_observed(plane, ns, "flat")
    cm = wait_until(lambda: config_map(plane, ns, "flat-cm"), 30, "the ConfigMap")
    assert cm["data"] == {
        "MODE": "safe",
        "RETRIES": "3",
        "DEBUG": "false",
        "limits": '{"burst":[1,2],"cpu":2}',
    }
    assert cm["metadata"]["annotations"] == {
        "etcdconfig.io/version": "1",
        "etcdconfig.io/checksum": checksum(data),
    }

    # a new head without a field: its key goes; a changed field: its key changes
    data2 = {"MODE": "fast", "RETRIES": 5}
    apply(plane, config_manifest("flat", ns, data2, publish=publish))
    wait_observed(plane, ns, "flat")
    cm = wait_until(
        lambda: (
            (c := config_map(plane, ns, "flat-cm"))
            and c["metadata"]["annotations"]["etcdconfig.io/version"] == "2"
            and c
        ),
        30,
        "version 2 published",
    )
    assert cm["data"] == {"MODE": "fast", "RETRIES": "5"}
    assert cm["metadata"]["annotations"]["etcdconfig.io/checksum"] == checksum(data2)
    assert condition(get(plane, ns, "flat"), "Published")["status"] == "True"  # type: ignore[index]

    # drift in one key is repaired at the next resync
    plane.kubectl(
        "patch",
        "configmap",
        "flat-cm",
        "-n",
        ns,
        "--type=merge",
        "-p",
        json.dumps({"data": {"MODE": "tampered", "EXTRA": "x"}}),
    )
    wait_until(
        lambda: (c := config_map(plane, ns, "flat-cm")) and c["data"] == cm["data"],
        30,
        "the drift repaired",
    )

    # a field name that cannot be a ConfigMap key: not published, and the Config says why
    apply(plane, config_manifest("flat", ns, {"bad key": 1}, publish=publish))
    obj = wait_observed(plane, ns, "flat", ready=False)
    published = condition(obj, "Published")
    assert published is not None and published["reason"] == "InvalidConfigMapKey"
    assert '"bad key"' in published["message"] and "format json" in published["message"]
    cm_after = config_map(plane, ns, "flat-cm")
    assert cm_after is not None and cm_after["data"] == cm["data"]
