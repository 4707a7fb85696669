"""Versioned, immutable ConfigMaps (``spec.publish.configMap.versioned``), end to end: a
real API server, the operator as a process. Objects that refer to a ConfigMap —
ReplicaSets, Pods, ControllerRevisions, pin annotations — are created through the API (the
e2e control plane runs no workload controllers and no kubelet: they just exist, which is
all the collection looks at)."""

from __future__ import annotations

import json
from typing import Any

from tests.e2e.operator_env import (
    OperatorProcess,
    apply,
    config_manifest,
    crd,
    operator,
    wait_observed,
    wait_until,
)

from etcdconfig.devenv.controlplane import ControlPlane

__all__ = ["crd", "operator"]  # fixtures used by name


def versioned(name: str, ns: str, n: int, keep: int) -> dict[str, Any]:
    return config_manifest(
        name,
        ns,
        {"n": n},
        publish={"configMap": {"name": f"{name}-cm", "versioned": True, "keep": keep}},
    )


def record(plane: ControlPlane, ns: str, name: str, n: int, keep: int) -> dict[str, Any]:
    """Apply data ``{"n": n}`` and wait until its version is the head."""
    apply(plane, versioned(name, ns, n, keep))
    return wait_until(
        lambda: (lambda o: o if o["spec"]["data"] == {"n": n} else None)(
            wait_observed(plane, ns, name)
        ),
        60.0,
        f"{ns}/{name} with n={n} recorded",
    )


def config_maps(plane: ControlPlane, ns: str, config: str) -> dict[str, dict[str, Any]]:
    out = plane.kubectl(
        "get", "configmaps", "-n", ns, "-l", f"etcdconfig.io/config={config}", "-o", "json"
    )
    return {cm["metadata"]["name"]: cm for cm in json.loads(out.stdout)["items"]}


def versioned_names(plane: ControlPlane, ns: str, config: str) -> set[str]:
    return {n for n in config_maps(plane, ns, config) if n != f"{config}-cm"}


def test_each_version_is_an_immutable_configmap_and_unreferenced_old_ones_go(
    control_plane: ControlPlane, namespace: str, operator: OperatorProcess
) -> None:
    obj = record(control_plane, namespace, "pay", 1, keep=2)
    cms = config_maps(control_plane, namespace, "pay")
    assert set(cms) == {"pay-cm", "pay-cm-v1"}
    v1 = cms["pay-cm-v1"]
    assert v1["immutable"] is True
    assert v1["data"] == {"config.json": '{\n  "n": 1\n}\n'}
    assert v1["metadata"]["labels"] == {
        "app.kubernetes.io/managed-by": "etcdconfig",
        "etcdconfig.io/config": "pay",
        "etcdconfig.io/version": "1",
    }
    assert v1["metadata"]["annotations"] == {
        "etcdconfig.io/version": "1",
        "etcdconfig.io/checksum": obj["status"]["checksum"],
    }
    (owner,) = v1["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
        "Config",
        "pay",
        obj["metadata"]["uid"],
        True,
    )
    assert cms["pay-cm"]["data"] == v1["data"]  # the mutable one holds the head too

    for n in range(2, 6):
        record(control_plane, namespace, "pay", n, keep=2)
    assert versioned_names(control_plane, namespace, "pay") == {"pay-cm-v4", "pay-cm-v5"}
    assert config_maps(control_plane, namespace, "pay")["pay-cm-v5"]["data"] == {
        "config.json": '{\n  "n": 5\n}\n'
    }


def _replica_set(ns: str, cm: str) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {"name": "old-rs", "namespace": ns},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": "x"}},
            "template": {
                "metadata": {"labels": {"app": "x"}},
                "spec": {
                    "containers": [{"name": "c", "image": "none"}],
                    "volumes": [{"name": "cfg", "configMap": {"name": cm}}],
                },
            },
        },
    }


def _pod(ns: str, cm: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "old-pod", "namespace": ns},
        "spec": {
            "containers": [
                {"name": "c", "image": "none", "envFrom": [{"configMapRef": {"name": cm}}]}
            ]
        },
    }


def _revision(ns: str, config: str, version: int) -> dict[str, Any]:
    """A StatefulSet's revision whose template is pinned by annotation, naming only the
    plain ConfigMap (as the rollouts leave templates)."""
    return {
        "apiVersion": "apps/v1",
        "kind": "ControllerRevision",
        "metadata": {"name": "old-rev", "namespace": ns},
        "revision": 1,
        "data": {
            "spec": {
                "template": {
                    "metadata": {"annotations": {f"etcdconfig.io/version.{config}": str(version)}},
                    "spec": {
                        "containers": [{"name": "c", "image": "none"}],
                        "volumes": [{"name": "cfg", "configMap": {"name": f"{config}-cm"}}],
                    },
                    "$patch": "replace",
                }
            }
        },
    }


def test_a_versioned_configmap_stays_while_anything_refers_to_it(
    control_plane: ControlPlane, namespace: str, operator: OperatorProcess
) -> None:
    record(control_plane, namespace, "ref", 1, keep=1)
    apply(control_plane, _replica_set(namespace, "ref-cm-v1"))
    record(control_plane, namespace, "ref", 2, keep=1)
    apply(control_plane, _pod(namespace, "ref-cm-v2"))
    record(control_plane, namespace, "ref", 3, keep=1)
    apply(control_plane, _revision(namespace, "ref", 3))
    record(control_plane, namespace, "ref", 4, keep=1)
    # v1 (a ReplicaSet's template), v2 (a Pod), v3 (a pinned revision) are referenced
    assert versioned_names(control_plane, namespace, "ref") == {
        "ref-cm-v1",
        "ref-cm-v2",
        "ref-cm-v3",
        "ref-cm-v4",
    }

    control_plane.kubectl("delete", "replicaset", "old-rs", "-n", namespace)
    # no new version: the next reconcile (the 5 s resync) collects, as one was kept
    wait_until(
        lambda: (
            versioned_names(control_plane, namespace, "ref")
            == {"ref-cm-v2", "ref-cm-v3", "ref-cm-v4"}
        ),
        30.0,
        "ref-cm-v1 deleted once its ReplicaSet is gone",
    )
    control_plane.kubectl(
        "delete", "pod", "old-pod", "-n", namespace, "--grace-period=0", "--force"
    )
    control_plane.kubectl("delete", "controllerrevision", "old-rev", "-n", namespace)
    wait_until(
        lambda: versioned_names(control_plane, namespace, "ref") == {"ref-cm-v4"},
        30.0,
        "ref-cm-v2 and -v3 deleted once nothing refers to them",
    )


def test_a_versioned_configmap_re_created_by_hand_is_replaced(
    control_plane: ControlPlane, namespace: str, operator: OperatorProcess
) -> None:
    obj = record(control_plane, namespace, "fix", 1, keep=3)
    cm = config_maps(control_plane, namespace, "fix")["fix-cm-v1"]
    control_plane.kubectl("delete", "configmap", "fix-cm-v1", "-n", namespace)
    forged = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "fix-cm-v1",
            "namespace": namespace,
            "labels": cm["metadata"]["labels"],
            "annotations": cm["metadata"]["annotations"],
            "ownerReferences": cm["metadata"]["ownerReferences"],
        },
        "immutable": True,
        "data": {"config.json": '{"n": 666}'},
    }
    apply(control_plane, forged)
    # the resync finds content that is not version 1's: deleted and created again
    wait_until(
        lambda: (
            config_maps(control_plane, namespace, "fix").get("fix-cm-v1", {}).get("data")
            == {"config.json": '{\n  "n": 1\n}\n'}
        ),
        30.0,
        "fix-cm-v1 holding version 1 again",
    )
    assert wait_observed(control_plane, namespace, "fix")["status"]["version"] == 1
    assert obj["status"]["version"] == 1


def test_a_configmap_of_that_name_not_ours_is_left_alone(
    control_plane: ControlPlane, namespace: str, operator: OperatorProcess
) -> None:
    apply(
        control_plane,
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "mine-cm-v1", "namespace": namespace},
            "data": {"x": "y"},
        },
    )
    apply(control_plane, versioned("mine", namespace, 1, keep=3))
    obj = wait_observed(control_plane, namespace, "mine", ready=False)
    published = next(c for c in obj["status"]["conditions"] if c["type"] == "Published")
    assert (published["status"], published["reason"]) == ("False", "ConfigMapNotOwned")
    assert published["message"].startswith(f"ConfigMap {namespace}/mine-cm-v1 exists and was")
    out = control_plane.kubectl("get", "configmap", "mine-cm-v1", "-n", namespace, "-o", "json")
    assert json.loads(out.stdout)["data"] == {"x": "y"}
