"""Node tier: the product as users run it — pods from locally built images, installed by
Helm — on a real single-node cluster (the control plane plus containerd, the kubelet,
kube-proxy and CoreDNS, :mod:`etcdconfig.devenv.node`). Needs root (network devices,
iptables, cgroups); a node is one per host, so each module starts and stops its own.

Fixtures:

- ``built_images`` (session): every image, built offline and cached
  (:mod:`etcdconfig.devenv.images`): ``{"operator": Image, "etcd": ..., "pause": ...}``.
- ``node_cluster`` (module): a :class:`ControlPlane` with ``node=True``, Ready; the API
  server writes an audit log of every request by the operator's ServiceAccount
  (``audit_log(plane)``), so a test can prove which permissions the pods really use.
- ``release`` (module): ``helm install`` of charts/etcdconfig into ``etcdconfig-system``
  with the local images, 2 operator replicas, the webhook on and the bundled etcd
  (1 member, on a PersistentVolume of the node: a ``helm uninstall`` keeps its claim,
  as in a cluster with a storage provisioner), waited for with ``--wait``.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from etcdconfig.devenv import images, network
from etcdconfig.devenv.controlplane import ControlPlane

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "etcdconfig"
RELEASE = "etcdconfig"
RELEASE_NS = "etcdconfig-system"
START_TIMEOUT = 240.0
OPERATOR_SA = f"system:serviceaccount:{RELEASE_NS}:{RELEASE}"
AUDIT_POLICY = f"""\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  users: ["{OPERATOR_SA}"]
- level: None
"""


def audit_log(plane: ControlPlane) -> list[dict[str, Any]]:
    """The API server's audit events (requests by the operator's ServiceAccount)."""
    path = plane.state_dir / "audit.log"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


if os.geteuid() != 0:  # a node needs root; CI runs as root, so this never skips there
    pytest.skip("the node tier needs root", allow_module_level=True)


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60.0, every: float = 0.2) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


@pytest.fixture(scope="session")
def built_images() -> dict[str, images.Image]:
    return images.ensure_images()


@pytest.fixture(scope="session", autouse=True)
def iptables_as_found() -> Iterator[None]:
    """Every test of this tier asserts that its ``dev down`` left the host as it found it;
    when one fails — or a mutant (``make mutants``, M26) breaks that on purpose — this puts
    the iptables rules and chains back as they were before the session, so the next run
    on this host starts from a clean one."""
    before = network._iptables_save()
    yield
    network._restore_iptables(before)


@pytest.fixture(scope="module")
def node_cluster(
    tmp_path_factory: pytest.TempPathFactory, built_images: dict[str, images.Image]
) -> Iterator[ControlPlane]:
    reuse = os.environ.get("ETCDCONFIG_NODE_CLUSTER")
    if reuse:  # a node started with `python -m etcdconfig.devenv --dir DIR up` (left running)
        plane = ControlPlane(Path(reuse))
        if not (plane.running() and plane.ready()):
            pytest.fail(f"ETCDCONFIG_NODE_CLUSTER={reuse}: no ready node cluster there")
        yield plane
        return
    state = tmp_path_factory.mktemp("node")
    policy = state / "audit-policy.yaml"
    policy.write_text(AUDIT_POLICY)
    plane = ControlPlane(
        state,
        node=True,
        extra_apiserver_args=(
            f"--audit-policy-file={policy}",
            f"--audit-log-path={state / 'audit.log'}",
        ),
    )
    plane.start(timeout=START_TIMEOUT)
    try:
        yield plane
    finally:
        plane.stop()


def image_values(built: dict[str, images.Image], operator_ref: str | None = None) -> list[str]:
    """``--set`` flags pointing the chart at the local images (never pulled)."""
    repo, _, tag = (operator_ref or built["operator"].ref).rpartition(":")
    etcd_repo, _, etcd_tag = built["etcd"].ref.rpartition(":")
    return [
        f"--set=image.repository={repo}",
        f"--set-string=image.tag={tag}",  # a tag of digits alone is still a string
        "--set=image.pullPolicy=Never",
        "--set=etcd.bundled.enabled=true",
        f"--set=etcd.bundled.image.repository={etcd_repo}",
        f"--set-string=etcd.bundled.image.tag={etcd_tag}",
        "--set=etcd.bundled.image.pullPolicy=Never",
    ]


@dataclass
class Release:
    plane: ControlPlane
    namespace: str
    name: str

    def settle(self) -> None:
        """Wait until the operator Deployment and the etcd StatefulSet are fully rolled out,
        every operator replica is Ready and the webhook answers (after a test deleted or
        replaced pods)."""
        for kind in (f"deployment/{self.name}", f"statefulset/{self.name}-etcd"):
            self.plane.kubectl(
                "rollout", "status", kind, "-n", self.namespace, "--timeout=180s", timeout=200
            )
        wait_for("2 Ready operator pods", lambda: len(self.ready_pods()) == 2, timeout=60)
        # Ready pods are not yet reachable: the EndpointSlice and then kube-proxy's rules
        # follow; the webhook answers a server-side dry run once the path is complete
        probe = json.dumps(
            {
                "apiVersion": "etcdconfig.io/v1alpha1",
                "kind": "Config",
                "metadata": {"name": "settle-probe", "namespace": "default"},
                "spec": {"data": {}},
            }
        )
        wait_for(
            "the webhook to answer through its Service",
            lambda: (
                self.plane.kubectl(
                    "create", "--dry-run=server", "-f", "-", input=probe, check=False
                ).returncode
                == 0
            ),
            timeout=60,
        )

    def pods(self, component: str = "operator") -> list[dict[str, Any]]:
        selector = f"app.kubernetes.io/instance={self.name},app.kubernetes.io/component={component}"
        out = self.plane.kubectl("get", "pods", "-n", self.namespace, "-l", selector, "-o", "json")
        return [
            p for p in json.loads(out.stdout)["items"] if not p["metadata"].get("deletionTimestamp")
        ]

    def ready_pods(self, component: str = "operator") -> list[dict[str, Any]]:
        return [
            p
            for p in self.pods(component)
            if any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in p.get("status", {}).get("conditions", [])
            )
        ]

    def etcd_endpoint(self) -> str:
        """The bundled etcd, reached from the host at its pod IP (routed over the bridge)."""
        pods = self.ready_pods("etcd")
        assert pods, "no Ready bundled etcd pod"
        return f"http://{pods[0]['status']['podIP']}:2379"

    def cli(self, *args: str, check: bool = True) -> Any:
        """``etcdconfig`` against the bundled etcd; JSON output parsed."""
        import subprocess
        import sys

        proc = subprocess.run(
            [
                str(Path(sys.executable).parent / "etcdconfig"),
                *args,
                "--etcd-endpoints",
                self.etcd_endpoint(),
                "-o",
                "json",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if check:
            assert proc.returncode == 0, proc.stderr + proc.stdout
        return json.loads(proc.stdout) if proc.stdout.strip() else None


@pytest.fixture(scope="module")
def release(node_cluster: ControlPlane, built_images: dict[str, images.Image]) -> Release:
    if node_cluster.helm("status", RELEASE, "-n", RELEASE_NS, check=False).returncode == 0:
        reused = Release(node_cluster, RELEASE_NS, RELEASE)  # a reused cluster
        reused.settle()
        return reused
    etcd_volume(node_cluster, "etcd-0")
    node_cluster.helm(
        "install",
        RELEASE,
        str(CHART),
        "--namespace",
        RELEASE_NS,
        "--create-namespace",
        *image_values(built_images),
        "--set=etcd.bundled.persistence.enabled=true",
        "--wait",
        "--timeout=240s",
        timeout=300,
    )
    installed = Release(node_cluster, RELEASE_NS, RELEASE)
    installed.settle()
    return installed


def etcd_volume(plane: ControlPlane, name: str, size: str = "1Gi") -> None:
    """A hostPath PersistentVolume in the node's directory, owned by the etcd image's uid
    (a hostPath volume gets no fsGroup), for the bundled etcd's claim to bind to."""
    path = plane.state_dir / "node" / "volumes" / name
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, 10001, 10001)
    pv = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": f"etcdconfig-dev-{name}"},
        "spec": {
            "capacity": {"storage": size},
            "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain",
            "hostPath": {"path": str(path), "type": "Directory"},
        },
    }
    plane.kubectl("apply", "-f", "-", input=json.dumps(pv))


@pytest.fixture
def namespace(node_cluster: ControlPlane) -> Iterator[str]:
    name = f"node-{uuid.uuid4().hex[:8]}"
    node_cluster.kubectl("create", "namespace", name)
    yield name
    node_cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found")
