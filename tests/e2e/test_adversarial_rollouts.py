"""Adversarial review of rollouts (controller/rollouts.py, docs/rollouts.md) end to end:
the e2e control plane runs no Deployment controller and no kubelet, so the test plays
both — it writes the Deployment's and the Pods' ``status`` subresource itself, which is
exactly what the operator's rollout watcher reads."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
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
from tests.e2e.test_rollouts import (
    deployment,
    get_deployment,
    gitops_apply,
    pinned_version,
    record,
)

from etcdconfig.devenv.controlplane import ControlPlane
from etcdconfig.etcd import EtcdClient, EtcdSettings, prefix_end

__all__ = ["crd", "operator"]

PIN = "etcdconfig.io/version.web"


async def await_until(
    predicate: Callable[[], Awaitable[Any]], timeout: float, what: str, interval: float = 0.2
) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await predicate()
        if last:
            return last
        await asyncio.sleep(interval)  # poll interval of a deadline-bounded wait
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


@pytest.fixture
async def rollout_records(operator: OperatorProcess) -> AsyncIterator[Any]:
    """``await rollout_records(ns)``: version -> rollout record of Config ``web``."""
    client = EtcdClient(EtcdSettings(endpoints=[operator.etcd_endpoint]))

    async def read(ns: str) -> dict[int, dict[str, Any]]:
        prefix = f"{operator.prefix}/rollouts/{ns}/web/".encode()
        result = await client.range(prefix, prefix_end(prefix))
        return {json.loads(kv.value)["version"]: json.loads(kv.value) for kv in result.kvs}

    yield read
    await client.close()


async def finished(read: Any, ns: str, version: int, timeout: float = 60.0) -> dict[str, Any]:
    """The record of ``version`` once it left Started."""

    async def done() -> dict[str, Any] | None:
        rec = (await read(ns)).get(version)
        return rec if rec is not None and rec["state"] != "Started" else None

    return dict(await await_until(done, timeout, f"rollout of v{version} finished"))


def deployment_status(plane: ControlPlane, ns: str, name: str = "web", **status: Any) -> None:
    """As the Deployment controller: status at the Deployment's current generation."""
    gen = get_deployment(plane, ns, name)["metadata"]["generation"]
    body = {"status": {"observedGeneration": gen, **status}}
    plane.kubectl(
        "patch", "deployment", name, "-n", ns, "--subresource=status", "--type=merge",
        "-p", json.dumps(body),
    )  # fmt: skip


def complete(plane: ControlPlane, ns: str, replicas: int = 3) -> None:
    deployment_status(
        plane, ns, replicas=replicas, updatedReplicas=replicas, readyReplicas=replicas,
        availableReplicas=replicas,
        conditions=[{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"}],
    )  # fmt: skip


def pod_of(plane: ControlPlane, ns: str, name: str, version: int, status: dict[str, Any]) -> None:
    """A pod of the web Deployment's template at ``version``, with a kubelet's status."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": {"app": "web", "etcdconfig.io/pinned": "true"},
            "annotations": {PIN: str(version)},
        },
        "spec": {
            "automountServiceAccountToken": False,
            "containers": [{"name": "app", "image": "app:1"}],
        },
    }
    wait_until(
        lambda: plane.kubectl(
            "create", "-f", "-", input=json.dumps(pod), check=False
        ).returncode == 0,
        30.0,
        f"pod {name} created",
    )  # fmt: skip
    plane.kubectl(
        "patch", "pod", name, "-n", ns, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": status}),
    )  # fmt: skip


CRASHING = {
    "phase": "Running",
    "containerStatuses": [
        {
            "name": "app",
            "image": "app:1",
            "imageID": "",
            "ready": False,
            "restartCount": 3,
            "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off"}},
            "lastState": {
                "terminated": {
                    "exitCode": 1,
                    "reason": "Error",
                    "startedAt": "2026-01-01T00:00:00Z",
                    "finishedAt": "2026-01-01T00:00:01Z",
                }
            },
        }
    ],
}


def resync_rounds(op: OperatorProcess) -> int:
    m = re.search(r"^etcdconfig_resync_rounds_total(?:\{[^}]*\})? ([0-9.e+]+)$", op.metrics(), re.M)
    return int(float(m.group(1))) if m else 0


FAST = {"debounceSeconds": 0, "bakeSeconds": 0}


# --- defects -------------------------------------------------------------------------------


async def test_a_deployment_scaled_to_zero_does_not_fail_the_rollout(
    control_plane: ControlPlane, namespace: str, operator: OperatorProcess, rollout_records: Any
) -> None:
    """A consuming Deployment scaled to 0 (the controller writes no zero counts): its
    template is at the version and nothing is left to roll — the rollout succeeds; it
    must not fail at progressDeadlineSeconds as "not complete"."""
    dep = deployment(namespace)
    dep["spec"]["replicas"] = 0
    gitops_apply(control_plane, dep)
    record(control_plane, namespace, 1, progressDeadlineSeconds=10, **FAST)
    wait_until(lambda: pinned_version(control_plane, namespace) == "1", 30.0, "web on v1")
    deployment_status(
        control_plane, namespace,
        conditions=[{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"}],
    )  # fmt: skip
    rec = await finished(rollout_records, namespace, 1)
    assert (rec["state"], rec["reason"]) == (
        "Succeeded",
        "version 1 runs on every replica of 1 workload(s)",
    )


async def test_a_progress_deadline_of_an_older_generation_does_not_fail_the_new_version(
    control_plane: ControlPlane, namespace: str, operator: OperatorProcess, rollout_records: Any
) -> None:
    """The Deployment's last rollout (before it consumed any version) hit its own progress
    deadline. A version is pinned: the template changes, generation+1, and until the
    controller observes it the Progressing condition is about the old template. The
    watcher must not fail the new version on it (observedGeneration < generation); the
    version can only fail on its own merit — here: never completes within 10 s."""
    gitops_apply(control_plane, deployment(namespace))
    deployment_status(
        control_plane, namespace, replicas=3, updatedReplicas=3, readyReplicas=0,
        conditions=[{"type": "Progressing", "status": "False",
                     "reason": "ProgressDeadlineExceeded",
                     "message": 'ReplicaSet "web-1" has timed out progressing.'}],
    )  # fmt: skip
    record(control_plane, namespace, 1, progressDeadlineSeconds=10, **FAST)
    rec = await finished(rollout_records, namespace, 1)
    assert rec["state"] == "Failed"
    assert rec["reason"].startswith("version 1 failed: not complete after 10s"), rec["reason"]


async def test_a_crashing_pod_of_a_set_based_selector_fails_the_rollout(
    control_plane: ControlPlane, namespace: str, operator: OperatorProcess, rollout_records: Any
) -> None:
    """A Deployment selecting its pods with matchExpressions (no matchLabels): a pod of
    the version exits 1 and crash-loops. The rollout must fail — not be declared
    Succeeded because the watcher never looked at the pods."""
    dep = deployment(namespace)
    dep["spec"]["selector"] = {
        "matchExpressions": [{"key": "app", "operator": "In", "values": ["web"]}]
    }
    gitops_apply(control_plane, dep)
    pod_of(control_plane, namespace, "web-v1-a", 1, CRASHING)
    record(control_plane, namespace, 1, progressDeadlineSeconds=60, **FAST)
    wait_until(lambda: pinned_version(control_plane, namespace) == "1", 30.0, "web on v1")
    complete(
        control_plane, namespace
    )  # the other replicas Ready (a Running, crash-looping pod is counted elsewhere)
    rec = await finished(rollout_records, namespace, 1)
    assert rec["state"] == "Failed", rec
    assert rec["reason"].startswith(
        "version 1 failed: Deployment/web: pod web-v1-a container app CrashLoopBackOff"
    ), rec["reason"]


async def test_an_operator_restart_does_not_clear_a_rollout_failure_for_a_while(
    control_plane: ControlPlane, namespace: str, operator: OperatorProcess, rollout_records: Any
) -> None:
    """v1 Succeeded, v2 crashed and was RolledBack: Config Stalled/RolloutFailed, not Ready,
    until a newer version. The operator restarts (or ownership moves): the failure is in
    etcd, yet the new process's first reconcile knows nothing of it (rollout_failures is
    in memory) and writes Ready=True until the debounced rollout and the next resync put
    the stall back. Ready must not flip (its lastTransitionTime stays)."""
    gitops_apply(control_plane, deployment(namespace))
    record(control_plane, namespace, 1, progressDeadlineSeconds=120, **FAST)
    wait_until(lambda: pinned_version(control_plane, namespace) == "1", 30.0, "web on v1")
    complete(control_plane, namespace)
    assert (await finished(rollout_records, namespace, 1))["state"] == "Succeeded"

    record(control_plane, namespace, 2, progressDeadlineSeconds=120, **FAST)
    wait_until(lambda: pinned_version(control_plane, namespace) == "2", 30.0, "web on v2")
    pod_of(control_plane, namespace, "web-v2-a", 2, CRASHING)
    rec = await finished(rollout_records, namespace, 2)
    assert (rec["state"], rec["rolledBackTo"]) == ("RolledBack", 1)
    wait_until(lambda: pinned_version(control_plane, namespace) == "1", 30.0, "web back on v1")

    def stalled() -> dict[str, Any] | None:
        obj = get(control_plane, namespace, "web")
        s = condition(obj, "Stalled")
        return obj if s and (s["status"], s["reason"]) == ("True", "RolloutFailed") else None

    wait_until(stalled, 30.0, "web Stalled/RolloutFailed")
    # a resync round of the same process keeps it as it is
    start = resync_rounds(operator)
    wait_until(lambda: resync_rounds(operator) >= start + 2, 30.0, "two resync rounds")
    before = condition(wait_until(stalled, 30.0, "still stalled"), "Ready")
    assert before is not None and before["status"] == "False"

    operator.stop()
    operator.start()
    operator.wait_ready()
    wait_until(lambda: resync_rounds(operator) >= 3, 60.0, "three resync rounds after restart")
    after = condition(wait_until(stalled, 30.0, "stalled after the restart"), "Ready")
    assert after == before
    assert pinned_version(control_plane, namespace) == "1"  # never rolled forward again
    assert (await rollout_records(namespace))[2]["state"] == "RolledBack"


async def test_a_purged_and_recreated_config_rolls_its_new_version_1_out(
    control_plane: ControlPlane, namespace: str, operator: OperatorProcess
) -> None:
    """deletionPolicy Purge: deleted and created again, numbering restarts — the new
    incarnation's version 1 holds other data than the old one's version 1. The workloads
    must roll to it (their pods still mount the old incarnation's content). The pin
    ``etcdconfig.io/version.web: "1"`` names no incarnation: the template is "already
    there", nothing is applied, and the new incarnation's rollout of v1 watches pods of
    the old incarnation's v1."""

    def manifest(n: int) -> dict[str, Any]:
        return config_manifest(
            "web", namespace, {"n": n}, deletionPolicy="Purge",
            publish={"configMap": {"name": "web-cm", "versioned": True}},
            rollout={"progressDeadlineSeconds": 120, **FAST},
        )  # fmt: skip

    gitops_apply(control_plane, deployment(namespace))
    apply(control_plane, manifest(1))
    old = wait_observed(control_plane, namespace, "web")
    wait_until(lambda: pinned_version(control_plane, namespace) == "1", 30.0, "web on v1")
    complete(control_plane, namespace)
    wait_until(
        lambda: (
            get(control_plane, namespace, "web")["status"].get("rollout", {}).get("state")
            == "Succeeded"
        ),
        60.0,
        "old v1 Succeeded",
    )
    before = get_deployment(control_plane, namespace)["metadata"]["generation"]

    control_plane.kubectl(
        "delete", "configs.etcdconfig.io", "web", "-n", namespace, "--timeout=60s"
    )
    apply(control_plane, manifest(100))
    new = wait_observed(control_plane, namespace, "web")
    assert new["metadata"]["uid"] != old["metadata"]["uid"]
    assert (new["status"]["version"], new["spec"]["data"]) == (1, {"n": 100})
    # status.rollout of the new object is written after its pins were applied
    wait_until(
        lambda: (
            get(control_plane, namespace, "web")["status"].get("rollout", {}).get("version") == 1
        ),
        60.0,
        "status.rollout of the new incarnation",
    )
    after = get_deployment(control_plane, namespace)["metadata"]["generation"]
    assert after > before, "the new incarnation's v1 never rolled the Deployment"


async def test_pausing_mid_rollout_does_not_abandon_a_crashing_version(
    control_plane: ControlPlane, namespace: str, operator: OperatorProcess, rollout_records: Any
) -> None:
    """v1 Succeeded; v2 is rolling (templates at v2) when someone sets
    spec.rollout.paused: true — a new generation, recorded as v3 with v2's data, held.
    Kubernetes keeps rolling v2; a pod of v2 crash-loops. The rollout of v2 is marked
    Superseded by the held v3 and nothing watches it any more: no rollback, the Config
    stays Ready. Expected: the crash of v2's pods rolls the workloads back to v1."""
    gitops_apply(control_plane, deployment(namespace))
    record(control_plane, namespace, 1, progressDeadlineSeconds=120, **FAST)
    wait_until(lambda: pinned_version(control_plane, namespace) == "1", 30.0, "web on v1")
    complete(control_plane, namespace)
    assert (await finished(rollout_records, namespace, 1))["state"] == "Succeeded"
    record(control_plane, namespace, 2, progressDeadlineSeconds=120, **FAST)
    wait_until(lambda: pinned_version(control_plane, namespace) == "2", 30.0, "web on v2")

    record(control_plane, namespace, 2, progressDeadlineSeconds=120, paused=True, **FAST)
    wait_until(
        lambda: (lambda s: s if (s.get("version"), s.get("state")) == (3, "Paused") else None)(
            get(control_plane, namespace, "web")["status"].get("rollout") or {}
        ),
        30.0,
        "v3 Paused",
    )
    pod_of(control_plane, namespace, "web-v2-a", 2, CRASHING)
    rec = await finished(rollout_records, namespace, 2)
    assert (rec["state"], rec.get("rolledBackTo")) == ("RolledBack", 1), rec


# --- what holds ----------------------------------------------------------------------------


async def test_held_a_crash_rolls_back_and_a_newer_version_clears_the_stall(
    control_plane: ControlPlane, namespace: str, operator: OperatorProcess, rollout_records: Any
) -> None:
    gitops_apply(control_plane, deployment(namespace))
    record(control_plane, namespace, 1, progressDeadlineSeconds=120, **FAST)
    wait_until(lambda: pinned_version(control_plane, namespace) == "1", 30.0, "web on v1")
    complete(control_plane, namespace)
    assert (await finished(rollout_records, namespace, 1))["state"] == "Succeeded"
    record(control_plane, namespace, 2, progressDeadlineSeconds=120, **FAST)
    wait_until(lambda: pinned_version(control_plane, namespace) == "2", 30.0, "web on v2")
    pod_of(control_plane, namespace, "web-v2-a", 2, CRASHING)
    rec = await finished(rollout_records, namespace, 2)
    assert (rec["state"], rec["rolledBackTo"]) == ("RolledBack", 1)
    wait_until(lambda: pinned_version(control_plane, namespace) == "1", 30.0, "web back on v1")
    obj = wait_until(
        lambda: (lambda o: o if (condition(o, "Stalled") or {}).get("status") == "True" else None)(
            get(control_plane, namespace, "web")
        ),
        30.0,
        "stalled",
    )
    assert condition(obj, "Stalled")["reason"] == "RolloutFailed"  # type: ignore[index]
    record(control_plane, namespace, 3, progressDeadlineSeconds=120, **FAST)
    wait_until(lambda: pinned_version(control_plane, namespace) == "3", 30.0, "web on v3")
    obj = get(control_plane, namespace, "web")
    assert (condition(obj, "Stalled") or {}).get("status") == "False"
    assert sorted(await rollout_records(namespace)) == [1, 2, 3]
