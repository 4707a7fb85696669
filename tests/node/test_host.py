"""``dev down`` leaves the host exactly as ``dev up`` found it — also after a SIGKILLed kubelet.

The host is described by :func:`etcdconfig.devenv.network.snapshot`: links, addresses,
routes, every iptables rule and chain, the sysctls a node sets, ``kubepods`` cgroups,
the paths compiled into the binaries, network namespaces. Each test runs a pod (so the
bridge, a veth, a netns, cgroups, mounts and kube-proxy's rules all exist) before it
tears the node down.
"""

from __future__ import annotations

import json
import os
import signal
from typing import TYPE_CHECKING

import pytest
import yaml
from tests.node.conftest import START_TIMEOUT, wait_for

from etcdconfig.devenv import images, network
from etcdconfig.devenv.controlplane import ControlPlane, ControlPlaneError

if TYPE_CHECKING:
    from pathlib import Path


def _pod_running(plane: ControlPlane, pause: str) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "sleeper", "namespace": "default"},
        "spec": {
            "containers": [{"name": "sleeper", "image": pause, "imagePullPolicy": "Never"}],
            "terminationGracePeriodSeconds": 1,
        },
    }
    svc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "sleeper", "namespace": "default"},
        "spec": {"selector": {"run": "sleeper"}, "ports": [{"port": 80}]},
    }
    plane.kubectl("apply", "-f", "-", input=yaml.safe_dump_all([pod, svc]))

    def phase() -> str | None:
        out = plane.kubectl("get", "pod", "sleeper", "-o", "json", check=False)
        status = json.loads(out.stdout).get("status", {}) if out.returncode == 0 else {}
        return status.get("podIP") if status.get("phase") == "Running" else None

    ip = wait_for("the pod to run", phase, timeout=60)
    assert ip.startswith("198.19.0."), ip
    assert network.snapshot()["links"].count(network.BRIDGE) == 1


@pytest.mark.parametrize("kill_kubelet", [False, True], ids=["clean", "kubelet-sigkilled"])
def test_down_leaves_the_host_as_up_found_it(
    tmp_path: Path, built_images: dict[str, images.Image], kill_kubelet: bool
) -> None:
    before = network.snapshot()
    plane = ControlPlane(tmp_path / "dev", node=True)
    try:
        plane.start(timeout=START_TIMEOUT)
        during = network.snapshot()
        assert network.LINK in during["links"]
        _pod_running(plane, built_images["pause"].ref)
        if kill_kubelet:
            (kubelet,) = [p for p in plane.processes if p.name == "kubelet"]
            os.kill(kubelet.pid, signal.SIGKILL)
            wait_for("the kubelet to die", lambda: not kubelet.alive(), timeout=10)
    finally:
        plane.stop()
    after = network.snapshot()
    assert {k: v for k, v in after.items() if v != before[k]} == {}
    assert not (tmp_path / "dev" / "host.json").exists()


def test_a_second_node_is_refused_and_the_first_keeps_running(
    tmp_path: Path, built_images: dict[str, images.Image]
) -> None:
    """A node is one per host: a second ``up`` says which state dir runs it, and its
    clean-up touches nothing of the running node's (pods, links, rules)."""
    first = ControlPlane(tmp_path / "first", node=True)
    try:
        first.start(timeout=START_TIMEOUT)
        _pod_running(first, built_images["pause"].ref)
        during = network.snapshot()
        second = ControlPlane(tmp_path / "second", node=True)
        with pytest.raises(ControlPlaneError) as refused:
            second.start(timeout=START_TIMEOUT)
        assert str(refused.value) == (
            f"another node runs on this host (link {network.LINK} exists, state dir "
            f"{tmp_path / 'first'}): stop it first "
            f"(`etcdconfig dev --dir {tmp_path / 'first'} down`)"
        )
        assert first.running() and first.ready()
        out = first.kubectl("get", "pod", "sleeper", "-o", "jsonpath={.status.phase}")
        assert out.stdout == "Running"
        assert network.snapshot() == during
    finally:
        first.stop()
