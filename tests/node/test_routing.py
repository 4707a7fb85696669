"""The chart with a three-member bundled etcd, on a node whose API server dials webhook
endpoints itself (``--enable-aggregator-routing``): admission keeps working with every
kube-proxy rule gone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from typing import TYPE_CHECKING

import pytest
import yaml
from tests.node.conftest import CHART, START_TIMEOUT, Release, image_values, wait_for

from etcdconfig.devenv import build, images
from etcdconfig.devenv.controlplane import ControlPlane

if TYPE_CHECKING:
    from collections.abc import Iterator

NS = "etcdconfig-ha"


@pytest.fixture(scope="module")
def routed(
    tmp_path_factory: pytest.TempPathFactory, built_images: dict[str, images.Image]
) -> Iterator[Release]:
    plane = ControlPlane(tmp_path_factory.mktemp("routed"), node=True, aggregator_routing=True)
    plane.start(timeout=START_TIMEOUT)
    try:
        plane.helm(
            "install",
            "etcdconfig",
            str(CHART),
            "-n",
            NS,
            "--create-namespace",
            *image_values(built_images),
            "--set=etcd.bundled.replicas=3",
            "--set=etcd.bundled.persistence.enabled=false",
            "--wait",
            "--timeout=300s",
            timeout=360,
        )
        yield Release(plane, NS, "etcdconfig")
    finally:
        plane.stop()


def _config(namespace: str, name: str, data: object, schema: object = None) -> str:
    spec: dict[str, object] = {"data": data}
    if schema is not None:
        spec["schema"] = schema
    return yaml.safe_dump(
        {
            "apiVersion": "etcdconfig.io/v1alpha1",
            "kind": "Config",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }
    )


def test_three_etcd_members_form_one_cluster_and_record_configs(routed: Release) -> None:
    members = routed.ready_pods("etcd")
    assert sorted(p["metadata"]["name"] for p in members) == [
        f"etcdconfig-etcd-{i}" for i in range(3)
    ]
    _, etcdctl = build.ensure_etcd()
    endpoints = ",".join(f"http://{p['status']['podIP']}:2379" for p in members)
    out = subprocess.run(
        [str(etcdctl), "--endpoints", endpoints, "member", "list", "-w", "json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    listed = json.loads(out.stdout)["members"]
    assert sorted(m["name"] for m in listed) == [f"etcdconfig-etcd-{i}" for i in range(3)]
    health = subprocess.run(
        [str(etcdctl), "--endpoints", endpoints, "endpoint", "health", "-w", "json"],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert [h["health"] for h in json.loads(health.stdout)] == [True, True, True]
    plane = routed.plane
    plane.kubectl("create", "namespace", "ha-app")
    plane.kubectl("apply", "-f", "-", input=_config("ha-app", "app", {"x": 1}))

    def version() -> int:
        out = plane.kubectl("get", "config", "app", "-n", "ha-app", "-o", "json")
        return int(json.loads(out.stdout).get("status", {}).get("version") or 0)

    wait_for("version 1 on the three-member etcd", lambda: version() == 1, timeout=90)


def test_the_webhook_answers_through_its_endpoint_with_no_kube_proxy_rules(
    routed: Release,
) -> None:
    plane = routed.plane
    (proxy,) = [p for p in plane.processes if p.name == "kube-proxy"]
    os.kill(proxy.pid, signal.SIGTERM)
    wait_for("kube-proxy to stop", lambda: not proxy.alive(), timeout=30)
    kube_proxy = build.ensure_kubernetes()["kube-proxy"]
    subprocess.run([str(kube_proxy), "--cleanup"], capture_output=True, check=False, timeout=60)
    nat = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True).stdout
    assert "KUBE-SERVICES" not in nat, nat
    plane.kubectl("create", "namespace", "routed-app", check=False)
    schema = {"type": "object", "properties": {"port": {"type": "integer"}}}
    bad = plane.kubectl(
        "apply",
        "--dry-run=server",
        "-f",
        "-",
        input=_config("routed-app", "bad", {"port": "eighty"}, schema),
        check=False,
    )
    assert bad.returncode != 0
    assert "denied the request" in bad.stderr and "port" in bad.stderr, bad.stderr
    good = plane.kubectl(
        "apply",
        "--dry-run=server",
        "-f",
        "-",
        input=_config("routed-app", "good", {"port": 80}, schema),
    )
    assert "created (server dry run)" in good.stdout, good.stdout
