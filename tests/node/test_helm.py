"""The chart installed by Helm on a real node: the operator runs as pods from its own image.

Everything here is judged from the running system: pod conditions the kubelet reports
from the chart's real probes, the container's own ``/proc/self/status``, the webhook
answering through its Service, the store read back from the bundled etcd pod.
"""

from __future__ import annotations

import json
import time
import urllib.request
from typing import TYPE_CHECKING, Any

import yaml
from tests.node.conftest import Release, wait_for

if TYPE_CHECKING:
    from etcdconfig.devenv.controlplane import ControlPlane


def config(namespace: str, name: str, data: dict[str, Any]) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "etcdconfig.io/v1alpha1",
            "kind": "Config",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"data": data},
        }
    )


def status_of(plane: ControlPlane, namespace: str, name: str) -> dict[str, Any]:
    out = plane.kubectl("get", "config", name, "-n", namespace, "-o", "json", check=False)
    return json.loads(out.stdout).get("status", {}) if out.returncode == 0 else {}


def recorded(plane: ControlPlane, namespace: str, name: str, generation: int) -> dict[str, Any]:
    """The status once the operator has recorded ``generation`` (else {})."""
    status = status_of(plane, namespace, name)
    return (
        status
        if status.get("observedGeneration", 0) >= generation and status.get("version")
        else {}
    )


def generation(plane: ControlPlane, namespace: str, name: str) -> int:
    out = plane.kubectl("get", "config", name, "-n", namespace, "-o", "json")
    return int(json.loads(out.stdout)["metadata"]["generation"])


def test_operator_replicas_are_ready_through_their_real_probes(release: Release) -> None:
    pods = release.ready_pods()
    assert len(pods) == 2, [p["metadata"]["name"] for p in release.pods()]
    for pod in pods:
        (container,) = pod["status"]["containerStatuses"]
        assert container["ready"] is True
        assert container["restartCount"] == 0
        assert container["image"].startswith("etcdconfig.local/etcdconfig:")
        spec = next(c for c in pod["spec"]["containers"] if c["name"] == container["name"])
        assert spec["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert spec["livenessProbe"]["httpGet"]["path"] == "/healthz"
    (etcd,) = release.ready_pods("etcd")
    assert etcd["metadata"]["name"] == f"{release.name}-etcd-0"


def test_a_config_is_recorded_by_an_operator_pod_and_kept_in_the_bundled_etcd(
    release: Release, namespace: str
) -> None:
    plane = release.plane
    plane.kubectl("apply", "-f", "-", input=config(namespace, "app", {"greeting": "hello"}))
    status = wait_for("version 1 recorded", lambda: recorded(plane, namespace, "app", 1))
    assert status["version"] == 1
    history = release.cli("history", f"{namespace}/app")
    assert [v["version"] for v in history["versions"]] == [1]
    (version,) = history["versions"]
    assert version["recordedBy"] in {p["metadata"]["name"] for p in release.ready_pods()}
    shown = release.cli("show", f"{namespace}/app")
    assert shown["data"] == {"greeting": "hello"}
    assert release.cli("verify", f"{namespace}/app") == {
        "checked": 1,
        "intact": True,
        "problems": [],
    }


def test_the_webhook_refuses_an_invalid_config_through_its_service(
    release: Release, namespace: str
) -> None:
    bad = yaml.safe_dump(
        {
            "apiVersion": "etcdconfig.io/v1alpha1",
            "kind": "Config",
            "metadata": {"name": "bad", "namespace": namespace},
            "spec": {
                "data": {"port": "eighty"},
                "schema": {"type": "object", "properties": {"port": {"type": "integer"}}},
            },
        }
    )
    out = release.plane.kubectl("apply", "-f", "-", input=bad, check=False)
    assert out.returncode != 0
    assert "admission webhook" in out.stderr and "denied the request" in out.stderr, out.stderr
    assert "port" in out.stderr
    missing = release.plane.kubectl("get", "config", "bad", "-n", namespace, check=False)
    assert "NotFound" in missing.stderr


def test_the_container_runs_unprivileged_as_seen_from_inside(release: Release) -> None:
    pod = release.ready_pods()[0]["metadata"]["name"]
    status = release.plane.kubectl(
        "exec", "-n", release.namespace, pod, "--", "cat", "/proc/self/status"
    ).stdout
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    fields = {k: v.split() for k, v in fields.items()}
    assert fields["Uid"] == ["10001"] * 4, fields["Uid"]
    assert fields["Gid"] == ["10001"] * 4, fields["Gid"]
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(fields[cap][0], 16) == 0, (cap, fields[cap])
    assert fields["NoNewPrivs"] == ["1"]
    assert fields["Seccomp"] == ["2"]  # 2 = filter mode: the RuntimeDefault profile
    write = release.plane.kubectl(
        "exec", "-n", release.namespace, pod, "--", "touch", "/etcdconfig-probe", check=False
    )
    assert write.returncode != 0
    assert "Read-only file system" in write.stderr, write.stderr


def test_metrics_are_scraped_through_the_service(release: Release) -> None:
    out = release.plane.kubectl(
        "get", "service", f"{release.name}-metrics", "-n", release.namespace, "-o", "json"
    )
    metrics = json.loads(out.stdout)
    (port,) = (p["port"] for p in metrics["spec"]["ports"] if p["name"] == "http-metrics")
    url = f"http://{metrics['spec']['clusterIP']}:{port}/metrics"

    def scrape() -> str:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return str(resp.read().decode())
        except OSError:
            return ""

    body = wait_for(f"a scrape of {url}", scrape)
    assert "etcdconfig_members 2.0" in body.splitlines()
    assert "etcdconfig_background_task_up" in body


def _owner(release: Release, namespace: str, name: str) -> str:
    """The operator pod that records ``namespace/name`` (its status says who recorded it)."""
    history = release.cli("history", f"{namespace}/{name}")
    newest = max(history["versions"], key=lambda v: v["version"])
    return str(newest["recordedBy"])


def test_sigterm_hands_the_configs_over_at_once(release: Release, namespace: str) -> None:
    plane = release.plane
    plane.kubectl("apply", "-f", "-", input=config(namespace, "handover", {"n": 0}))
    wait_for("version 1", lambda: recorded(plane, namespace, "handover", 1))
    owner = _owner(release, namespace, "handover")
    members_before = {m["replica"] for m in release.cli("members")["members"]}
    assert owner in members_before, (owner, members_before)
    start = time.monotonic()
    plane.kubectl("delete", "pod", "-n", release.namespace, owner, "--wait=false")
    wait_for(
        f"{owner} to leave membership",
        lambda: owner not in {m["replica"] for m in release.cli("members")["members"]},
        timeout=10,
    )
    left = time.monotonic() - start
    plane.kubectl("apply", "-f", "-", input=config(namespace, "handover", {"n": 1}))
    gen = generation(plane, namespace, "handover")
    wait_for("version 2 by another replica", lambda: recorded(plane, namespace, "handover", gen))
    took_over = time.monotonic() - start
    assert _owner(release, namespace, "handover") != owner
    lock_ttl = 10.0  # the chart's operator.lockTTL
    assert left < lock_ttl / 2, f"left membership after {left:.2f}s"
    assert took_over < lock_ttl, f"another replica recorded after {took_over:.2f}s"
    release.settle()
    print(f"SIGTERM: left membership in {left:.2f}s, next version by another in {took_over:.2f}s")
