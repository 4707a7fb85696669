"""Adversarial review of versioned ConfigMaps (``controller/versioned.py``), end to end: a
real API server and etcd, the operator as a process. Objects that refer to a ConfigMap are
created through the API (no kubelet, no workload controllers: they just exist). One
operator (test_pinning's, serving the pod webhook) runs for the whole module."""

from __future__ import annotations

import json
from typing import Any

from tests.e2e.operator_env import (
    OperatorProcess,
    apply,
    config_manifest,
    crd,
    get,
    wait_until,
)
from tests.e2e.test_pinning import create_pod, ns, pin_operator

from etcdconfig.devenv.controlplane import ControlPlane

__all__ = ["crd", "ns", "pin_operator"]  # fixtures used by name


def manifest(name: str, ns: str, n: int, keep: int, **target: Any) -> dict[str, Any]:
    return config_manifest(
        name,
        ns,
        {"n": n},
        publish={"configMap": {"name": f"{name}-cm", "versioned": True, "keep": keep, **target}},
    )


def settled(plane: ControlPlane, ns: str, name: str, n: int) -> dict[str, Any]:
    """The Config once its current generation (data ``{"n": n}``) is observed and its head
    recorded (Ready or not)."""

    def check() -> dict[str, Any] | None:
        obj = get(plane, ns, name)
        st = obj.get("status") or {}
        if obj["spec"]["data"] != {"n": n}:
            return None
        if st.get("observedGeneration") != obj["metadata"]["generation"]:
            return None
        return obj if st.get("version") else None

    return dict(wait_until(check, 60.0, f"{ns}/{name} n={n} observed"))


def config_maps(plane: ControlPlane, ns: str, config: str) -> dict[str, dict[str, Any]]:
    out = plane.kubectl(
        "get", "configmaps", "-n", ns, "-l", f"etcdconfig.io/config={config}", "-o", "json"
    )
    return {cm["metadata"]["name"]: cm for cm in json.loads(out.stdout)["items"]}


def versioned_names(plane: ControlPlane, ns: str, config: str) -> set[str]:
    return {n for n in config_maps(plane, ns, config) if n != f"{config}-cm"}


def test_held_a_key_change_leaves_a_referenced_versioned_configmap_as_it_is(
    control_plane: ControlPlane, namespace: str, pin_operator: OperatorProcess
) -> None:
    """Held: changing ``key`` raises the generation, which records a new version: the
    earlier ``<name>-v1`` (referred to through ``configMapKeyRef {key: config.json}``)
    is neither deleted nor changed."""
    apply(control_plane, manifest("kc", namespace, 1, keep=3))
    settled(control_plane, namespace, "kc", 1)
    wait_until(
        lambda: "kc-cm-v1" in versioned_names(control_plane, namespace, "kc"), 30.0, "kc-cm-v1"
    )
    before = config_maps(control_plane, namespace, "kc")["kc-cm-v1"]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "uses-v1", "namespace": namespace},
        "spec": {
            "containers": [
                {
                    "name": "c",
                    "image": "none",
                    "env": [
                        {
                            "name": "CFG",
                            "valueFrom": {
                                "configMapKeyRef": {"name": "kc-cm-v1", "key": "config.json"}
                            },
                        }
                    ],
                }
            ]
        },
    }
    apply(control_plane, pod)
    apply(control_plane, manifest("kc", namespace, 1, keep=3, key="app.json"))
    wait_until(
        lambda: (
            "app.json" in (config_maps(control_plane, namespace, "kc")["kc-cm"].get("data") or {})
        ),
        60.0,
        "kc-cm republished under app.json",
    )
    settled(control_plane, namespace, "kc", 1)
    after = config_maps(control_plane, namespace, "kc").get("kc-cm-v1")
    assert after is not None
    assert after["metadata"]["uid"] == before["metadata"]["uid"], (
        "kc-cm-v1 was deleted and re-created while a pod referred to it"
    )
    assert after["data"] == before["data"] == {"config.json": '{\n  "n": 1\n}\n'}


def test_a_pin_annotation_value_that_is_no_ascii_number_does_not_stop_the_collection(
    control_plane: ControlPlane, namespace: str, pin_operator: OperatorProcess
) -> None:
    """DEFECT: ``references`` takes ``str.isdigit()`` for a number and calls ``int()``:
    ``"²"`` is a digit for ``isdigit`` but ``int("²")`` raises ValueError. One pod in the
    namespace annotated ``etcdconfig.io/version.<config>: "²"`` (anyone who may create a
    pod) makes every collection of every versioned Config there raise: old versioned
    ConfigMaps are never deleted (unbounded growth), and the reconcile fails with an
    unhandled ValueError, so the Config's status is never updated again (generation 2
    is never observed; kopf retries every 60 s). Expected: such a value is no pin; each
    generation observed, v1 and v2 collected."""
    apply(
        control_plane,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "odd-pin",
                "namespace": namespace,
                "annotations": {"etcdconfig.io/version.uni": "\u00b2"},
            },
            "spec": {"containers": [{"name": "c", "image": "none"}]},
        },
    )
    for n in (1, 2, 3):
        apply(control_plane, manifest("uni", namespace, n, keep=1))
        settled(control_plane, namespace, "uni", n)
    wait_until(
        lambda: versioned_names(control_plane, namespace, "uni") == {"uni-cm-v3"},
        30.0,
        "uni-cm-v1 and -v2 collected (nothing refers to them)",
    )


def test_held_a_pod_of_a_cronjob_template_and_an_ephemeral_container_keep_their_versions(
    control_plane: ControlPlane, namespace: str, pin_operator: OperatorProcess
) -> None:
    """Held: a CronJob's jobTemplate pin annotation and a reference in a projected volume
    keep versions; an unreferenced one goes."""
    apply(control_plane, manifest("cj", namespace, 1, keep=1))
    settled(control_plane, namespace, "cj", 1)
    apply(
        control_plane,
        {
            "apiVersion": "batch/v1",
            "kind": "CronJob",
            "metadata": {"name": "cj", "namespace": namespace},
            "spec": {
                "schedule": "0 0 1 1 *",
                "suspend": True,
                "jobTemplate": {
                    "spec": {
                        "template": {
                            "metadata": {"annotations": {"etcdconfig.io/version.cj": "1"}},
                            "spec": {
                                "restartPolicy": "Never",
                                "containers": [{"name": "c", "image": "none"}],
                            },
                        }
                    }
                },
            },
        },
    )
    for n in (2, 3):
        apply(control_plane, manifest("cj", namespace, n, keep=1))
        settled(control_plane, namespace, "cj", n)
        if n == 2:
            apply(
                control_plane,
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": "proj", "namespace": namespace},
                    "spec": {
                        "containers": [{"name": "c", "image": "none"}],
                        "volumes": [
                            {
                                "name": "p",
                                "projected": {"sources": [{"configMap": {"name": "cj-cm-v2"}}]},
                            }
                        ],
                    },
                },
            )
    apply(control_plane, manifest("cj", namespace, 4, keep=1))
    settled(control_plane, namespace, "cj", 4)
    wait_until(
        lambda: (
            versioned_names(control_plane, namespace, "cj") == {"cj-cm-v1", "cj-cm-v2", "cj-cm-v4"}
        ),
        30.0,
        "v1 (CronJob pin) and v2 (projected volume) kept, v3 collected",
    )


def test_a_pod_pinned_to_version_1_never_mounts_another_versions_data(
    control_plane: ControlPlane, ns: str, pin_operator: OperatorProcess
) -> None:
    """DEFECT: the webhook pins to an existing ``<name>-vN`` after checking only whose
    it is, not that it holds version N. Here the Config first published its plain
    ConfigMap as ``rt-cm-v1`` (versions 1 and 2: it holds ``{"n": 2}``), then was
    retargeted to ``rt-cm`` with ``versioned: true``; the earlier ConfigMap is left as it
    is (documented), owned by the Config. A pod pinned to version 1 is rewritten to
    ``rt-cm-v1`` and mounts version 2's data. Expected: pinned to version 1's data
    (re-created from the record) or left on the plain ConfigMap. Fix: require the
    ``etcdconfig.io/version`` label and annotation == N, ``immutable``, and the checksum
    annotation == the record's checksum before pinning."""
    for n in (1, 2):
        apply(
            control_plane,
            config_manifest("rt", ns, {"n": n}, publish={"configMap": {"name": "rt-cm-v1"}}),
        )
        settled(control_plane, ns, "rt", n)
    wait_until(
        lambda: (
            (config_maps(control_plane, ns, "rt").get("rt-cm-v1") or {}).get("data")
            == {"config.json": '{\n  "n": 2\n}\n'}
        ),
        30.0,
        "rt-cm-v1 (plain) holding n=2",
    )
    apply(
        control_plane,
        config_manifest(
            "rt", ns, {"n": 2}, publish={"configMap": {"name": "rt-cm", "versioned": True}}
        ),
    )
    obj = settled(control_plane, ns, "rt", 2)
    assert obj["status"]["version"] == 3
    wait_until(
        lambda: "rt-cm-v3" in config_maps(control_plane, ns, "rt"), 30.0, "rt-cm-v3 published"
    )
    p = create_pod(
        control_plane,
        ns,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "pinned-v1",
                "labels": {"etcdconfig.io/pinned": "true"},
                "annotations": {"etcdconfig.io/version.rt": "1"},
            },
            "spec": {
                "containers": [
                    {"name": "c", "image": "none", "envFrom": [{"configMapRef": {"name": "rt-cm"}}]}
                ]
            },
        },
    )
    used = p["spec"]["containers"][0]["envFrom"][0]["configMapRef"]["name"]
    if used != "rt-cm":
        assert used == "rt-cm-v1"
        assert config_maps(control_plane, ns, "rt")["rt-cm-v1"]["data"] == {
            "config.json": '{\n  "n": 1\n}\n'
        }, "a pod pinned to version 1 mounts version 2's data"
