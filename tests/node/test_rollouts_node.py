"""Rollouts on a real node (docs/rollouts.md): the chart installed by Helm from the local
images, a Deployment of 3 replicas of a small app that reads its config file and exits
non-zero when the config is bad (retries > 8), and the operator rolling each recorded
version out: a good change reaches every pod (the file each pod mounts holds exactly
that version), a bad one is rolled back automatically without taking a replica down,
and a fixed generation rolls forward again.

The app runs from the operator's image (it has Python): nothing else to build."""

from __future__ import annotations

import json
from typing import Any

import yaml
from tests.node.conftest import Release, wait_for

from etcdconfig.devenv import demo_rollout, images

NS = "shop"
#: the app: read the config, refuse a bad one (exit 3), else run and say it is ready (the
#: file its readiness probe reads) — the demo's own (make demo-rollout)
APP = demo_rollout.APP


def config(retries: int, cause: str) -> dict[str, Any]:
    return {
        "apiVersion": "etcdconfig.io/v1alpha1",
        "kind": "Config",
        "metadata": {
            "name": "app",
            "namespace": NS,
            "annotations": {"etcdconfig.io/change-cause": cause},
        },
        "spec": {
            "data": {"retries": retries},
            "publish": {"configMap": {"name": "app-config", "versioned": True, "keep": 2}},
            "rollout": {"debounceSeconds": 0, "bakeSeconds": 5, "progressDeadlineSeconds": 120},
        },
    }


def deployment(image: str) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "app",
            "namespace": NS,
            "annotations": {"etcdconfig.io/configs": "app"},
        },
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "app"}},
            "strategy": {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": {"app": "app"}},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [
                        {
                            "name": "app",
                            "image": image,
                            "imagePullPolicy": "Never",
                            "command": ["python", "-c", APP],
                            # Ready only once the config is accepted: else a pod that
                            # crashes a second after start counts as Ready in between
                            # and the rolling update replaces the old pods with it
                            "readinessProbe": demo_rollout.READINESS_PROBE,
                            "volumeMounts": [{"name": "cfg", "mountPath": "/etc/app"}],
                        }
                    ],
                    "volumes": [{"name": "cfg", "configMap": {"name": "app-config"}}],
                },
            },
        },
    }


def apply(release: Release, obj: dict[str, Any]) -> None:
    release.plane.kubectl(
        "apply", "--server-side", "--field-manager=kustomize-controller", "--force-conflicts",
        "-f", "-", input=yaml.safe_dump(obj),
    )  # fmt: skip


def get(release: Release, kind: str, name: str) -> dict[str, Any]:
    out = release.plane.kubectl("get", kind, name, "-n", NS, "-o", "json")
    return dict(json.loads(out.stdout))


def rollout(release: Release) -> dict[str, Any]:
    return dict(
        (get(release, "configs.etcdconfig.io", "app").get("status") or {}).get("rollout") or {}
    )


def app_pods(release: Release) -> list[dict[str, Any]]:
    out = release.plane.kubectl("get", "pods", "-n", NS, "-l", "app=app", "-o", "json")
    return [
        p for p in json.loads(out.stdout)["items"] if not p["metadata"].get("deletionTimestamp")
    ]


def wait_rolled(
    release: Release, version: int, state: str, timeout: float = 180.0
) -> dict[str, Any]:
    return dict(
        wait_for(
            f"the rollout of version {version} {state}",
            lambda: (
                lambda r: r if (r.get("version"), r.get("state")) == (version, state) else None
            )(rollout(release)),
            timeout=timeout,
        )
    )


def mounted(release: Release, pod: str) -> dict[str, Any]:
    out = release.plane.kubectl("exec", "-n", NS, pod, "--", "cat", "/etc/app/config.json")
    return dict(json.loads(out.stdout))


def test_rollouts_reach_every_pod_and_a_bad_change_is_rolled_back(
    release: Release, built_images: dict[str, images.Image]
) -> None:
    plane = release.plane
    plane.kubectl("create", "namespace", NS)
    apply(release, config(3, "three retries"))
    apply(release, deployment(built_images["operator"].ref))

    # v1 everywhere: each pod pinned to app-config-v1 and mounting exactly that data
    wait_rolled(release, 1, "Succeeded")
    pods = app_pods(release)
    assert len(pods) == 3
    for p in pods:
        assert p["metadata"]["annotations"]["etcdconfig.io/pinned-to"] == "app-config=app-config-v1"
        assert p["spec"]["volumes"][0]["configMap"]["name"] == "app-config-v1"
        assert mounted(release, p["metadata"]["name"]) == {"retries": 3}

    # a good change: v2 on every pod, the old pods gone
    apply(release, config(5, "five retries"))
    done = wait_rolled(release, 2, "Succeeded")
    assert done["summary"] == "Deployment/app 3/3 on v2"
    wait_for("only v2 pods", lambda: {
        p["metadata"]["annotations"].get("etcdconfig.io/pinned-to") for p in app_pods(release)
    } == {"app-config=app-config-v2"}, timeout=60)  # fmt: skip
    for p in app_pods(release):
        assert mounted(release, p["metadata"]["name"]) == {"retries": 5}

    # a bad change: the new pod crashes, the operator rolls back to v2; with maxUnavailable
    # 0 no replica of v2 is ever taken down
    apply(release, config(9, "nine retries"))
    lowest = [3]

    def rolled_back() -> dict[str, Any] | None:
        dep = get(release, "deployment", "app")
        lowest[0] = min(lowest[0], (dep.get("status") or {}).get("readyReplicas") or 0)
        r = rollout(release)
        return r if (r.get("version"), r.get("state")) == (3, "RolledBack") else None

    failed = dict(wait_for("the rollback of version 3", rolled_back, timeout=180))
    assert failed["message"].startswith("version 3 failed: Deployment/app: pod app-")
    assert failed["message"].endswith("; rolled back to version 2")
    assert lowest[0] == 3, lowest
    cfg = get(release, "configs.etcdconfig.io", "app")
    stalled = next(c for c in cfg["status"]["conditions"] if c["type"] == "Stalled")
    assert (stalled["status"], stalled["reason"]) == ("True", "RolloutFailed")
    assert stalled["message"] == failed["message"]
    assert cfg["spec"]["data"] == {"retries": 9}  # the desired state is not touched
    template = get(release, "deployment", "app")["spec"]["template"]["metadata"]
    assert template["annotations"]["etcdconfig.io/version.app"] == "2"
    wait_for("only v2 pods again", lambda: (lambda ps: len(ps) == 3 and {
        p["metadata"]["annotations"].get("etcdconfig.io/pinned-to") for p in ps
    } == {"app-config=app-config-v2"})(app_pods(release)), timeout=120)  # fmt: skip
    events = json.loads(plane.kubectl(
        "get", "events", "-n", NS, "--field-selector", "reason=RolloutFailed", "-o", "json"
    ).stdout)["items"]  # fmt: skip
    assert [e["message"] for e in events] == [failed["message"]]

    # a fixed generation rolls forward
    apply(release, config(6, "six retries"))
    wait_rolled(release, 4, "Succeeded")
    cfg = get(release, "configs.etcdconfig.io", "app")
    stalled = next(c for c in cfg["status"]["conditions"] if c["type"] == "Stalled")
    assert stalled["status"] == "False"
    for p in app_pods(release):
        assert mounted(release, p["metadata"]["name"]) == {"retries": 6}
