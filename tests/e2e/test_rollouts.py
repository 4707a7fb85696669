"""Rollouts to consuming workloads (docs/rollouts.md), end to end on the e2e control plane:
the operator pins the pod templates of the Deployments that name a Config, once per
version, coalescing bursts, held by pause and by the window, with no drift for a GitOps
tool's server-side apply. (The e2e control plane runs no Deployment controller: the
templates are what is checked here; the node tier runs the pods.)"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import yaml
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
from etcdconfig.etcd import EtcdClient, EtcdSettings, prefix_end

__all__ = ["crd", "operator"]

PIN = "etcdconfig.io/version.web"


def web_config(ns: str, n: int, **rollout: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"publish": {"configMap": {"name": "web-cm", "versioned": True}}}
    if rollout:
        spec["rollout"] = rollout
    return config_manifest("web", ns, {"n": n}, **spec)


def deployment(ns: str, name: str = "web", configs: str = "web") -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": ns,
            "annotations": {"etcdconfig.io/configs": configs},
        },
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "containers": [{"name": "app", "image": "app:1"}],
                    "volumes": [{"name": "cfg", "configMap": {"name": "web-cm"}}],
                },
            },
        },
    }


def gitops_apply(plane: ControlPlane, manifest: dict[str, Any]) -> None:
    """As Flux applies: server-side, field manager kustomize-controller, forced."""
    plane.kubectl(
        "apply", "--server-side", "--force-conflicts", "--field-manager=kustomize-controller",
        "-f", "-", input=yaml.safe_dump(manifest),
    )  # fmt: skip


def get_deployment(plane: ControlPlane, ns: str, name: str = "web") -> dict[str, Any]:
    out = plane.kubectl("get", "deployment", name, "-n", ns, "-o", "json", "--show-managed-fields")
    return dict(json.loads(out.stdout))


def pinned_version(plane: ControlPlane, ns: str, name: str = "web") -> str | None:
    meta = get_deployment(plane, ns, name)["spec"]["template"]["metadata"]
    return (meta.get("annotations") or {}).get(PIN)


def record(plane: ControlPlane, ns: str, n: int, **rollout: Any) -> dict[str, Any]:
    apply(plane, web_config(ns, n, **rollout))
    return wait_until(
        lambda: (lambda o: o if o["spec"]["data"] == {"n": n} else None)(
            wait_observed(plane, ns, "web")
        ),
        60.0,
        f"web with n={n} recorded",
    )


def rollout_status(plane: ControlPlane, ns: str) -> dict[str, Any]:
    out = plane.kubectl("get", "configs.etcdconfig.io", "web", "-n", ns, "-o", "json")
    return dict((json.loads(out.stdout).get("status") or {}).get("rollout") or {})


@pytest.fixture
async def records(operator: OperatorProcess) -> AsyncIterator[Any]:
    """``await records(ns)``: the versions with a rollout record in etcd."""
    client = EtcdClient(EtcdSettings(endpoints=[operator.etcd_endpoint]))

    async def read(ns: str) -> list[int]:
        prefix = f"{operator.prefix}/rollouts/{ns}/web/".encode()
        result = await client.range(prefix, prefix_end(prefix))
        return sorted(json.loads(kv.value)["version"] for kv in result.kvs)

    yield read
    await client.close()


async def test_a_recorded_version_pins_the_consuming_templates_once(
    control_plane: ControlPlane, namespace: str, operator: OperatorProcess, records: Any
) -> None:
    gitops_apply(control_plane, deployment(namespace))
    gitops_apply(control_plane, deployment(namespace, "other", configs="something-else"))
    record(control_plane, namespace, 1, debounceSeconds=0)
    wait_until(lambda: pinned_version(control_plane, namespace) == "1", 30.0, "web on v1")
    dep = get_deployment(control_plane, namespace)
    assert dep["spec"]["template"]["metadata"]["labels"] == {
        "app": "web",
        "etcdconfig.io/pinned": "true",
    }
    (ours,) = [m for m in dep["metadata"]["managedFields"] if m["manager"] == "etcdconfig-rollout"]
    assert ours["operation"] == "Apply"
    assert ours["fieldsV1"] == {
        "f:spec": {
            "f:template": {
                "f:metadata": {
                    "f:annotations": {f"f:{PIN}": {}},
                    "f:labels": {"f:etcdconfig.io/pinned": {}},
                }
            }
        }
    }
    assert pinned_version(control_plane, namespace, "other") is None  # names another Config
    status = wait_until(
        lambda: (lambda s: s if s.get("version") == 1 else None)(
            rollout_status(control_plane, namespace)
        ),
        30.0,
        "status.rollout at v1",
    )
    assert (status["state"], status["summary"]) == ("Rolling", "Deployment/web 0/3 on v1")
    assert [(t["kind"], t["name"], t["version"]) for t in status["targets"]] == [
        ("Deployment", "web", 1)
    ]
    assert await records(namespace) == [1]

    # the GitOps tool applies its unchanged manifest again: no change, nothing lost
    before = get_deployment(control_plane, namespace)["metadata"]["generation"]
    diff = control_plane.kubectl(
        "diff", "--server-side", "--field-manager=kustomize-controller", "--force-conflicts",
        "-f", "-", input=yaml.safe_dump(deployment(namespace)), check=False,
    )  # fmt: skip
    assert (diff.returncode, diff.stdout) == (0, ""), diff.stdout
    gitops_apply(control_plane, deployment(namespace))
    after = get_deployment(control_plane, namespace)
    assert after["metadata"]["generation"] == before
    assert pinned_version(control_plane, namespace) == "1"


async def test_a_burst_of_versions_rolls_out_once_to_the_last(
    control_plane: ControlPlane, namespace: str, operator: OperatorProcess, records: Any
) -> None:
    gitops_apply(control_plane, deployment(namespace))
    record(control_plane, namespace, 1, debounceSeconds=0)
    wait_until(lambda: pinned_version(control_plane, namespace) == "1", 30.0, "web on v1")
    # ten updates, each recorded, well within the 5 s debounce of one another
    for n in range(2, 12):
        record(control_plane, namespace, n, debounceSeconds=5)
    head = wait_observed(control_plane, namespace, "web")["status"]["version"]
    assert head == 11
    wait_until(lambda: pinned_version(control_plane, namespace) == "11", 30.0, "web on v11")
    assert await records(namespace) == [1, 11]


async def test_paused_and_out_of_window_rollouts_wait(
    control_plane: ControlPlane, namespace: str, operator: OperatorProcess, records: Any
) -> None:
    gitops_apply(control_plane, deployment(namespace))
    record(control_plane, namespace, 1, debounceSeconds=0)
    wait_until(lambda: pinned_version(control_plane, namespace) == "1", 30.0, "web on v1")

    record(control_plane, namespace, 2, debounceSeconds=0, paused=True)
    wait_until(
        lambda: rollout_status(control_plane, namespace).get("state") == "Paused",
        30.0,
        "status.rollout Paused",
    )
    assert pinned_version(control_plane, namespace) == "1"

    now = dt.datetime.now(dt.UTC)
    closed = {  # a window that opened an hour from now and closes two hours from now
        "start": (now + dt.timedelta(hours=1)).strftime("%H:%M"),
        "end": (now + dt.timedelta(hours=2)).strftime("%H:%M"),
    }
    record(control_plane, namespace, 3, debounceSeconds=0, window=closed)
    status = wait_until(
        lambda: (lambda s: s if s.get("state") == "Held" and s.get("version") == 3 else None)(
            rollout_status(control_plane, namespace)
        ),
        30.0,
        "status.rollout Held",
    )
    assert status["message"].startswith("outside spec.rollout.window; it opens in ")
    assert pinned_version(control_plane, namespace) == "1"
    assert await records(namespace) == [1]

    record(control_plane, namespace, 4, debounceSeconds=0)  # neither paused nor held
    wait_until(lambda: pinned_version(control_plane, namespace) == "4", 30.0, "web on v4")
    assert await records(namespace) == [1, 4]
