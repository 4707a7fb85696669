"""The pod webhook pins pods to an exact version (docs/rollouts.md), end to end: a real
API server calling the operator's mutating webhook on pod creation. Pods are created
through the API (the e2e control plane has no kubelet: they stay Pending, which is all
the webhook sees); the node tier runs the same through Deployments."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.e2e.operator_env import (
    OperatorProcess,
    apply,
    config_manifest,
    crd,
    make_webhook_certs,
    wait_observed,
    wait_until,
)

from etcdconfig.devenv.controlplane import ControlPlane
from etcdconfig.devenv.etcd import EtcdServer

__all__ = ["crd"]

PINNED = "etcdconfig.io/pinned"


@pytest.fixture(scope="module")
def pin_operator(
    control_plane: ControlPlane,
    store_etcd: EtcdServer,
    crd: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    """An operator serving the pod webhook, registered (failurePolicy Ignore, 3 s) for
    pods labelled etcdconfig.io/pinned in namespaces labelled for this module."""
    work = tmp_path_factory.mktemp("pinning")
    certs = make_webhook_certs(work / "pki")
    op = OperatorProcess(
        plane=control_plane,
        etcd_endpoint=store_etcd.endpoint,
        prefix=f"/e2e-pin-{uuid.uuid4().hex[:6]}",
        workdir=work / "op",
        replica_id="pin-op",
        webhook=certs,
    )
    op.start()
    name = f"etcdconfig-pin-{uuid.uuid4().hex[:6]}"
    mwc = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [
            {
                "name": "pin.pods.etcdconfig.io",
                "admissionReviewVersions": ["v1"],
                "sideEffects": "NoneOnDryRun",
                "failurePolicy": "Ignore",
                "timeoutSeconds": 3,
                "reinvocationPolicy": "IfNeeded",
                "namespaceSelector": {"matchLabels": {"e2e-pinning": name}},
                "objectSelector": {"matchLabels": {PINNED: "true"}},
                "clientConfig": {
                    "url": f"https://127.0.0.1:{op.webhook_port}/pin-pod",
                    "caBundle": base64.b64encode(certs.ca_pem).decode(),
                },
                "rules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE"],
                        "resources": ["pods"],
                    }
                ],
            }
        ],
    }
    try:
        op.wait_ready()
        control_plane.kubectl("apply", "-f", "-", input=yaml.safe_dump(mwc))
        op.mwc_name = name  # type: ignore[attr-defined]
        yield op
    finally:
        control_plane.kubectl("delete", "mutatingwebhookconfiguration", name, "--ignore-not-found")
        op.stop()


@pytest.fixture
def ns(control_plane: ControlPlane, namespace: str, pin_operator: OperatorProcess) -> str:
    control_plane.kubectl(
        "label",
        "namespace",
        namespace,
        f"e2e-pinning={pin_operator.mwc_name}",  # type: ignore[attr-defined]
    )
    return namespace


def record(plane: ControlPlane, ns: str, n: int, keep: int = 3) -> dict[str, Any]:
    apply(
        plane,
        config_manifest(
            "app",
            ns,
            {"n": n},
            publish={"configMap": {"name": "app-cm", "versioned": True, "keep": keep}},
        ),
    )
    return wait_until(
        lambda: (lambda o: o if o["spec"]["data"] == {"n": n} else None)(
            wait_observed(plane, ns, "app")
        ),
        60.0,
        f"app with n={n} recorded",
    )


def pod(name: str, pins: dict[str, str], labelled: bool = True) -> dict[str, Any]:
    """A pod that refers to app-cm in every way a pod can, and to other-cm once."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": {PINNED: "true"} if labelled else {},
            "annotations": {f"etcdconfig.io/version.{k}": v for k, v in pins.items()},
        },
        "spec": {
            "initContainers": [
                {"name": "init", "image": "none", "envFrom": [{"configMapRef": {"name": "app-cm"}}]}
            ],
            "containers": [
                {
                    "name": "c",
                    "image": "none",
                    "envFrom": [
                        {"configMapRef": {"name": "app-cm"}},
                        {"configMapRef": {"name": "other-cm"}},
                    ],
                    "env": [
                        {
                            "name": "N",
                            "valueFrom": {"configMapKeyRef": {"name": "app-cm", "key": "n"}},
                        }
                    ],
                }
            ],
            "volumes": [
                {"name": "cfg", "configMap": {"name": "app-cm"}},
                {
                    "name": "all",
                    "projected": {"sources": [{"configMap": {"name": "app-cm"}}]},
                },
            ],
        },
    }


def create_pod(plane: ControlPlane, ns: str, manifest: dict[str, Any]) -> dict[str, Any]:
    out = plane.kubectl("create", "-n", ns, "-o", "json", "-f", "-", input=json.dumps(manifest))
    return dict(json.loads(out.stdout))


def refs(p: dict[str, Any]) -> list[str]:
    spec = p["spec"]
    c = spec["containers"][0]
    return [
        spec["initContainers"][0]["envFrom"][0]["configMapRef"]["name"],
        c["envFrom"][0]["configMapRef"]["name"],
        c["envFrom"][1]["configMapRef"]["name"],
        c["env"][0]["valueFrom"]["configMapKeyRef"]["name"],
        spec["volumes"][0]["configMap"]["name"],
        spec["volumes"][1]["projected"]["sources"][0]["configMap"]["name"],
    ]


def test_a_pinned_pod_mounts_its_version(
    control_plane: ControlPlane, ns: str, pin_operator: OperatorProcess
) -> None:
    record(control_plane, ns, 1)
    record(control_plane, ns, 2)
    p1 = create_pod(control_plane, ns, pod("on-v1", {"app": "1"}))
    assert refs(p1) == ["app-cm-v1", "app-cm-v1", "other-cm", "app-cm-v1", "app-cm-v1", "app-cm-v1"]
    assert p1["metadata"]["annotations"]["etcdconfig.io/pinned-to"] == "app-cm=app-cm-v1"
    p2 = create_pod(control_plane, ns, pod("on-v2", {"app": "2"}))
    assert refs(p2) == ["app-cm-v2", "app-cm-v2", "other-cm", "app-cm-v2", "app-cm-v2", "app-cm-v2"]


def test_pods_without_the_label_or_a_valid_pin_start_unchanged(
    control_plane: ControlPlane, ns: str, pin_operator: OperatorProcess
) -> None:
    record(control_plane, ns, 1)
    plain = ["app-cm", "app-cm", "other-cm", "app-cm", "app-cm", "app-cm"]
    unlabelled = create_pod(control_plane, ns, pod("unlabelled", {"app": "1"}, labelled=False))
    assert refs(unlabelled) == plain  # the objectSelector: the webhook never sees it
    assert "etcdconfig.io/pinned-to" not in unlabelled["metadata"]["annotations"]
    before = metric(pin_operator, "skipped")
    for name, pins in (("no-version", {"app": "7"}), ("no-config", {"nope": "1"})):
        created = create_pod(control_plane, ns, pod(name, pins))
        assert refs(created) == plain, name  # fail open: admitted, with the plain ConfigMap
    assert metric(pin_operator, "skipped") == before + 2


def test_a_collected_version_is_published_again_for_a_pod_pinned_to_it(
    control_plane: ControlPlane, ns: str, pin_operator: OperatorProcess
) -> None:
    first = record(control_plane, ns, 1, keep=1)
    for n in (2, 3):
        record(control_plane, ns, n, keep=1)
    out = control_plane.kubectl("get", "configmap", "app-cm-v1", "-n", ns, "--ignore-not-found")
    assert out.stdout == ""  # collected: nothing referred to it
    p = create_pod(control_plane, ns, pod("old", {"app": "1"}))
    assert refs(p)[0] == "app-cm-v1"
    cm = json.loads(
        control_plane.kubectl("get", "configmap", "app-cm-v1", "-n", ns, "-o", "json").stdout
    )
    assert cm["immutable"] is True
    assert cm["data"] == {"config.json": '{\n  "n": 1\n}\n'}
    assert cm["metadata"]["annotations"]["etcdconfig.io/checksum"] == first["status"]["checksum"]
    assert cm["metadata"]["ownerReferences"][0]["uid"] == first["metadata"]["uid"]


def test_with_the_operator_down_pods_still_start(
    control_plane: ControlPlane, ns: str, pin_operator: OperatorProcess
) -> None:
    record(control_plane, ns, 1)
    pin_operator.pause()
    try:
        p = create_pod(control_plane, ns, pod("while-down", {"app": "1"}))
    finally:
        pin_operator.resume_if_paused()
    assert refs(p)[0] == "app-cm"  # failurePolicy Ignore: admitted after the 3 s timeout
    assert "etcdconfig.io/pinned-to" not in p["metadata"]["annotations"]


def metric(op: OperatorProcess, result: str) -> float:
    for line in op.metrics().splitlines():
        if line.startswith(f'etcdconfig_pod_pins_total{{result="{result}"}}'):
            return float(line.split()[-1])
    return 0.0


def test_a_configmap_of_the_versioned_name_not_published_by_the_config_is_not_used(
    control_plane: ControlPlane, ns: str, pin_operator: OperatorProcess
) -> None:
    record(control_plane, ns, 1)
    apply(
        control_plane,
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "app-cm-v9", "namespace": ns},
            "data": {"config.json": '{"n": 666}'},
        },
    )
    p = create_pod(control_plane, ns, pod("foreign", {"app": "9"}))
    assert refs(p)[0] == "app-cm"  # not someone's look-alike: the plain ConfigMap


def test_pods_started_while_the_operator_was_down_are_reported_once_it_is_back(
    control_plane: ControlPlane, ns: str, pin_operator: OperatorProcess
) -> None:
    """A Deployment rolled by the Config (its template pinned), and a pod of it created
    while the operator does not answer: admitted unpinned (fail open); once the operator
    is back, its rollout check (each resync) counts it and a Warning Event names it."""
    deploy = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "app", "namespace": ns,
                     "annotations": {"etcdconfig.io/configs": "app"}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "app"}},
            "template": {
                "metadata": {"labels": {"app": "app"}},
                "spec": {"containers": [{"name": "c", "image": "none"}]},
            },
        },
    }  # fmt: skip
    apply(control_plane, deploy)
    apply(
        control_plane,
        config_manifest(
            "app",
            ns,
            {"n": 1},
            publish={"configMap": {"name": "app-cm", "versioned": True}},
            rollout={"debounceSeconds": 0},
        ),
    )
    wait_until(
        lambda: (
            (
                json.loads(
                    control_plane.kubectl("get", "deployment", "app", "-n", ns, "-o", "json").stdout
                )["spec"]["template"]["metadata"].get("annotations", {})
            ).get("etcdconfig.io/version.app")
            == "1"
        ),
        30.0,
        "the template pinned to v1",
    )
    down = pod("while-down", {"app": "1"})
    down["metadata"]["labels"]["app"] = "app"
    pin_operator.pause()
    try:
        created = create_pod(control_plane, ns, down)
    finally:
        pin_operator.resume_if_paused()
    assert refs(created)[0] == "app-cm"

    def reported() -> list[dict[str, Any]]:
        out = control_plane.kubectl(
            "get", "events", "-n", ns, "--field-selector", "reason=PodsNotPinned", "-o", "json"
        )
        return list(json.loads(out.stdout)["items"])

    (event,) = wait_until(reported, 30.0, "a PodsNotPinned Event")
    assert event["involvedObject"]["name"] == "app"
    assert event["message"] == (
        "1 pod(s) run on ConfigMap app-cm, not on their template's version (created while "
        "the pod webhook did not answer?): while-down; they get it when they are replaced "
        "(kubectl rollout restart)"
    )
    line = f'etcdconfig_unpinned_pods{{config="app",namespace="{ns}"}} 1.0'
    assert line in pin_operator.metrics().splitlines()
