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
                    "f:annotations": {f"f:{PIN}": {}, "f:etcdconfig.io/uid.web": {}},
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


def complete(plane: ControlPlane, ns: str, name: str = "web") -> None:
    """Do what the Deployment controller would: every replica of the current template
    updated and Ready."""
    gen = get_deployment(plane, ns, name)["metadata"]["generation"]
    status = {"observedGeneration": gen, "replicas": 3, "updatedReplicas": 3,
              "readyReplicas": 3, "availableReplicas": 3}  # fmt: skip
    plane.kubectl(
        "patch", "deployment", name, "-n", ns, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": status}),
    )  # fmt: skip


def resync_rounds(op: OperatorProcess) -> float:
    for line in op.metrics().splitlines():
        if line.startswith("etcdconfig_resync_rounds_total"):
            return float(line.split()[-1])
    return 0.0


def etcdconfig(plane: ControlPlane, *args: str) -> Any:
    import subprocess

    from tests.e2e.operator_env import BIN

    return subprocess.run(
        [str(BIN / "etcdconfig"), *args],
        env=plane.client_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_a_crashing_pod_of_the_version_rolls_back_to_the_last_healthy_one(
    control_plane: ControlPlane, namespace: str, operator: OperatorProcess, records: Any
) -> None:
    """The controllers are simulated: the Deployment's status is written as its controller
    would, and a pod of the new version with a crash-looping container (the node tier
    runs the real thing)."""
    fast = {"debounceSeconds": 0, "bakeSeconds": 0, "progressDeadlineSeconds": 120}
    gitops_apply(control_plane, deployment(namespace))
    record(control_plane, namespace, 1, **fast)
    wait_until(lambda: pinned_version(control_plane, namespace) == "1", 30.0, "web on v1")
    complete(control_plane, namespace)
    ok = etcdconfig(control_plane, "rollout", "status", f"{namespace}/web", "--timeout", "60")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.splitlines()[-1] == (
        f"rollout of {namespace}/web version 1 succeeded: Deployment/web 3/3 on v1"
    )

    record(control_plane, namespace, 2, **fast)
    wait_until(lambda: pinned_version(control_plane, namespace) == "2", 30.0, "web on v2")
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "web-v2-a",
            "namespace": namespace,
            "labels": {"app": "web"},
            "annotations": {PIN: "2"},
        },
        "spec": {"containers": [{"name": "app", "image": "app:1"}]},
    }
    control_plane.kubectl("create", "-f", "-", input=json.dumps(pod))
    crash = {
        "phase": "Running",
        "containerStatuses": [{
            "name": "app", "image": "app:1", "imageID": "", "ready": False, "restartCount": 2,
            "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {"terminated": {"exitCode": 3, "reason": "Error"}},
        }],
    }  # fmt: skip
    control_plane.kubectl(
        "patch", "pod", "web-v2-a", "-n", namespace, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": crash}),
    )  # fmt: skip
    wait_until(lambda: pinned_version(control_plane, namespace) == "1", 30.0, "web back on v1")
    failed = etcdconfig(control_plane, "rollout", "status", f"{namespace}/web", "--no-watch")
    message = (
        "version 2 failed: Deployment/web: pod web-v2-a container app CrashLoopBackOff "
        "(exit 3); rolled back to version 1"
    )
    assert (failed.returncode, failed.stdout) == (
        1,
        f"rollout of {namespace}/web version 2 rolled back: {message}\n",
    )
    obj = wait_observed(control_plane, namespace, "web", ready=False)
    stalled = next(c for c in obj["status"]["conditions"] if c["type"] == "Stalled")
    assert (stalled["status"], stalled["reason"], stalled["message"]) == (
        "True",
        "RolloutFailed",
        message,
    )
    assert obj["spec"]["data"] == {"n": 2}
    assert await records(namespace) == [1, 2]
    # two more resync rounds (each schedules the head again) roll nothing forward
    rounds = resync_rounds(operator)
    wait_until(lambda: resync_rounds(operator) >= rounds + 2, 30.0, "two resync rounds")
    assert pinned_version(control_plane, namespace) == "1"
    assert wait_observed(control_plane, namespace, "web", ready=False)["status"]["version"] == 2

    # a new version resumes
    apply(control_plane, web_config(namespace, 3, **fast))
    wait_until(lambda: pinned_version(control_plane, namespace) == "3", 30.0, "web on v3")
    complete(control_plane, namespace)
    done = etcdconfig(control_plane, "rollout", "status", f"{namespace}/web", "--timeout", "60")
    assert done.returncode == 0, done.stdout + done.stderr
    obj = wait_observed(control_plane, namespace, "web")
    stalled = next(c for c in obj["status"]["conditions"] if c["type"] == "Stalled")
    assert stalled["status"] == "False"


async def test_a_rollout_undo_is_kept_and_a_new_consumer_is_pinned(
    control_plane: ControlPlane, namespace: str, operator: OperatorProcess, records: Any
) -> None:
    fast = {"debounceSeconds": 0, "bakeSeconds": 0}
    gitops_apply(control_plane, deployment(namespace))
    record(control_plane, namespace, 1, **fast)
    wait_until(lambda: pinned_version(control_plane, namespace) == "1", 30.0, "web on v1")
    complete(control_plane, namespace)
    wait_until(lambda: rollout_status(control_plane, namespace).get("state") == "Succeeded",
               30.0, "v1 succeeded")  # fmt: skip
    record(control_plane, namespace, 2, **fast)
    wait_until(lambda: pinned_version(control_plane, namespace) == "2", 30.0, "web on v2")
    complete(control_plane, namespace)
    wait_until(
        lambda: (lambda r: r.get("version") == 2 and r.get("state") == "Succeeded")(
            rollout_status(control_plane, namespace)
        ),
        30.0,
        "v2 succeeded",
    )
    # what `kubectl rollout undo` does to the template: the older pin comes back
    undo = {"spec": {"template": {"metadata": {"annotations": {PIN: "1"}}}}}
    control_plane.kubectl(
        "patch", "deployment", "web", "-n", namespace, "--type=merge",
        "--field-manager=kubectl-rollout", "-p", json.dumps(undo),
    )  # fmt: skip
    gitops_apply(control_plane, deployment(namespace, "late"))  # a new consumer
    wait_until(lambda: pinned_version(control_plane, namespace, "late") == "2", 30.0, "late on v2")
    rounds = resync_rounds(operator)
    wait_until(lambda: resync_rounds(operator) >= rounds + 2, 30.0, "two resync rounds")
    assert pinned_version(control_plane, namespace) == "1"  # the undo stands
    assert await records(namespace) == [1, 2]
