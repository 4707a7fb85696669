"""The pure parts of rollouts: pins, reference rewriting, windows, failure reading."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from etcdconfig import rollout
from etcdconfig.controller.rollouts import _complete, in_window, pod_failure
from etcdconfig.models import RolloutWindow
from etcdconfig.reconcile import status_recorded, with_rollout_failure


@pytest.mark.parametrize(
    ("value", "version"),
    [("7", 7), (" 7 ", 7), ("0", None), ("²", None), ("v7", None), ("-1", None), ("", None)],
)
def test_a_pin_is_a_positive_ascii_integer(value: str, version: int | None) -> None:
    assert rollout.parse_pin(value) == version


def test_consumed_names_are_split_trimmed_and_unique() -> None:
    assert rollout.consumed({rollout.CONFIGS_ANNOTATION: " payments, flags,,payments, BAD "}) == [
        "payments",
        "flags",
    ]


def test_rewrite_touches_only_the_pinned_configmaps_references() -> None:
    spec = {
        "containers": [
            {
                "name": "c",
                "envFrom": [{"configMapRef": {"name": "p"}}, {"secretRef": {"name": "p"}}],
                "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "q", "key": "k"}}}],
            }
        ],
        "volumes": [{"name": "v", "configMap": {"name": "p"}}],
    }
    out, done = rollout.rewrite(spec, {"p": "p-v3"})
    assert done == ["p"]
    assert out["containers"][0]["envFrom"] == [
        {"configMapRef": {"name": "p-v3"}},
        {"secretRef": {"name": "p"}},
    ]
    assert out["containers"][0]["env"][0]["valueFrom"]["configMapKeyRef"]["name"] == "q"
    assert out["volumes"][0]["configMap"]["name"] == "p-v3"
    assert spec["volumes"][0]["configMap"]["name"] == "p"  # the input is left as it was


@pytest.mark.parametrize(
    ("start", "end", "now", "open_", "wait_min"),
    [
        ("09:00", "17:00", "12:00", True, 0),
        ("09:00", "17:00", "08:30", False, 30),
        ("09:00", "17:00", "17:00", False, 16 * 60),
        ("22:00", "02:00", "23:30", True, 0),
        ("22:00", "02:00", "01:59", True, 0),
        ("22:00", "02:00", "03:00", False, 19 * 60),
    ],
)
def test_the_window_is_utc_and_may_span_midnight(
    start: str, end: str, now: str, open_: bool, wait_min: int
) -> None:
    at = dt.datetime(2026, 12, 7, int(now[:2]), int(now[3:]), tzinfo=dt.UTC)
    is_open, wait = in_window(RolloutWindow(start=start, end=end), at)
    assert (is_open, wait) == (open_, wait_min * 60.0)


def pod(statuses: list[dict[str, Any]], init: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"status": {"containerStatuses": statuses, "initContainerStatuses": init or []}}


def test_a_pod_failure_names_the_container_and_the_reason() -> None:
    crash = {
        "name": "app",
        "restartCount": 2,
        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
        "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}},
    }
    assert pod_failure(pod([crash])) == "container app CrashLoopBackOff (exit 1)"
    first = {"name": "app", "restartCount": 1, "state": {"running": {}},
             "lastState": {"terminated": {"exitCode": 3}}}  # fmt: skip
    assert pod_failure(pod([first])) == "container app exited 3 and restarted"
    config = {"name": "init", "state": {"waiting": {"reason": "CreateContainerConfigError"}}}
    assert pod_failure(pod([], [config])) == "container init CreateContainerConfigError"
    healthy = {"name": "app", "restartCount": 0, "state": {"running": {}}, "ready": True}
    assert pod_failure(pod([healthy])) is None
    assert (
        pod_failure(pod([{"name": "app", "state": {"waiting": {"reason": "ContainerCreating"}}}]))
        is None
    )


def deployment(version: int, *, updated: int, ready: int, total: int) -> dict[str, Any]:
    return {
        "metadata": {"name": "web", "generation": 4},
        "spec": {
            "replicas": 3,
            "template": {"metadata": {"annotations": {"etcdconfig.io/version.cfg": str(version)}}},
        },
        "status": {
            "observedGeneration": 4,
            "updatedReplicas": updated,
            "readyReplicas": ready,
            "replicas": total,
        },
    }


def test_complete_means_every_replica_of_the_version_ready_and_no_old_one_left() -> None:
    assert _complete("Deployment", deployment(7, updated=3, ready=3, total=3), "cfg", 7)
    assert not _complete("Deployment", deployment(7, updated=3, ready=3, total=4), "cfg", 7)
    assert not _complete("Deployment", deployment(7, updated=2, ready=3, total=3), "cfg", 7)
    assert not _complete("Deployment", deployment(7, updated=3, ready=2, total=3), "cfg", 7)
    assert not _complete("Deployment", deployment(6, updated=3, ready=3, total=3), "cfg", 7)


def test_a_failed_rollout_stalls_the_status_of_its_version_only() -> None:
    status = status_recorded(
        3, [], version=7, checksum="sha256:aa", recorded_at="t", head_generation=2
    )
    failed = with_rollout_failure(status, (7, "version 7 failed: Deployment/web: pod x"))
    conditions = {c["type"]: (c["status"], c["reason"]) for c in failed["conditions"]}
    assert conditions["Ready"] == ("False", "RolloutFailed")
    assert conditions["Stalled"] == ("True", "RolloutFailed")
    assert conditions["Reconciling"] == ("False", "RolloutFailed")
    assert failed["version"] == 7
    assert with_rollout_failure(status, (6, "older")) is status  # a newer version resumes
    assert with_rollout_failure(status, None) is status


def test_a_pin_of_an_earlier_incarnation_is_no_pin_of_this_one() -> None:
    from etcdconfig.controller.rollouts import _template_pin

    def w(annotations: dict[str, str]) -> dict[str, Any]:
        return {"spec": {"template": {"metadata": {"annotations": annotations}}}}

    pinned = {"etcdconfig.io/version.cfg": "1", "etcdconfig.io/uid.cfg": "uid-old"}
    assert _template_pin(w(pinned), "cfg", "uid-new") is None  # Purge, created again
    assert _template_pin(w(pinned), "cfg", "uid-old") == 1
    assert _template_pin(w({"etcdconfig.io/version.cfg": "1"}), "cfg", "uid-new") == 1
    assert _template_pin(w(pinned), "cfg") == 1  # no incarnation asked for
