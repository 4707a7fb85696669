"""Changing ``spec.publish.configMap.name`` end to end: the ConfigMap published before
is kept in step with the head (the operator has no delete on ConfigMaps), recorded on
the new one (``etcdconfig.io/supersedes``), and forgotten once the user deletes it."""

from __future__ import annotations

import json
from typing import Any

from tests.e2e.operator_env import (
    OperatorProcess,
    apply,
    config_manifest,
    operator,
    wait_observed,
    wait_until,
)

from etcdconfig.canonical import checksum, loads
from etcdconfig.devenv.controlplane import ControlPlane

SUPERSEDES = "etcdconfig.io/supersedes"


def config_map(plane: ControlPlane, ns: str, name: str) -> dict[str, Any] | None:
    out = plane.kubectl("get", "configmap", name, "-n", ns, "-o", "json", check=False)
    if out.returncode != 0:
        assert "NotFound" in out.stderr, out.stderr
        return None
    return dict(json.loads(out.stdout))


def carries(plane: ControlPlane, ns: str, name: str, version: int, data: dict[str, Any]) -> Any:
    cm = config_map(plane, ns, name)
    if cm is None:
        return None
    ann = cm["metadata"].get("annotations") or {}
    ok = ann.get("etcdconfig.io/version") == str(version) and ann.get(
        "etcdconfig.io/checksum"
    ) == checksum(data)
    return cm if ok and loads(cm["data"]["config.json"]) == data else None


def test_retargeted_publish_keeps_the_earlier_config_map_in_step_until_it_is_deleted(
    control_plane: ControlPlane,
    namespace: str,
    operator: OperatorProcess,
) -> None:
    plane, ns = control_plane, namespace

    def publish(data: dict[str, Any], target: str) -> None:
        apply(plane, config_manifest("moving", ns, data, publish={"configMap": {"name": target}}))
        wait_observed(plane, ns, "moving")

    publish({"v": 1}, "moving-a")
    wait_until(lambda: carries(plane, ns, "moving-a", 1, {"v": 1}), 30, "moving-a at v1")

    publish({"v": 2}, "moving-b")
    new = wait_until(lambda: carries(plane, ns, "moving-b", 2, {"v": 2}), 30, "moving-b at v2")
    assert new["metadata"]["annotations"][SUPERSEDES] == "moving-a"
    wait_until(lambda: carries(plane, ns, "moving-a", 2, {"v": 2}), 30, "moving-a kept in step")

    def announced() -> list[dict[str, Any]]:
        out = plane.kubectl(
            "get",
            "events",
            "-n",
            ns,
            "-o",
            "json",
            "--field-selector",
            "involvedObject.name=moving,reason=PublishedToEarlierConfigMap",
        )
        return list(json.loads(out.stdout)["items"])

    (event, *_) = wait_until(announced, 30, "the PublishedToEarlierConfigMap Event")
    assert "ConfigMap moving-a" in event["message"]

    # the user deletes the old one: it stays gone, and the new one stops naming it
    plane.kubectl("delete", "configmap", "moving-a", "-n", ns)
    publish({"v": 3}, "moving-b")
    new = wait_until(lambda: carries(plane, ns, "moving-b", 3, {"v": 3}), 30, "moving-b at v3")

    def supersedes() -> Any:
        cm = config_map(plane, ns, "moving-b")
        return cm is not None and (cm["metadata"].get("annotations") or {}).get(SUPERSEDES)

    wait_until(lambda: not supersedes(), 30, "the supersedes annotation removed")
    assert config_map(plane, ns, "moving-a") is None
