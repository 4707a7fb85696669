"""The local control plane behaves like a real cluster: CRDs, watches, Helm, RBAC,
namespace deletion and garbage collection, version reporting."""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from etcdconfig.devenv import build

if TYPE_CHECKING:
    from etcdconfig.devenv.controlplane import ControlPlane
    from etcdconfig.devenv.etcd import EtcdServer

CHART = Path(__file__).resolve().parent / "charts" / "greeter"
GROUP = "e2e.etcdconfig.io"

CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": f"widgets.{GROUP}"},
    "spec": {
        "group": GROUP,
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "properties": {"size": {"type": "integer", "minimum": 1}},
                                "required": ["size"],
                            },
                            "status": {
                                "type": "object",
                                "x-kubernetes-preserve-unknown-fields": True,
                            },
                        },
                    }
                },
            }
        ],
    },
}


def widget(name: str, namespace: str, size: int) -> str:
    return json.dumps(
        {
            "apiVersion": f"{GROUP}/v1",
            "kind": "Widget",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"size": size},
        }
    )


def apply_crd(cp: ControlPlane) -> None:
    cp.kubectl("apply", "-f", "-", input=json.dumps(CRD))
    cp.kubectl("wait", "--for=condition=Established", f"crd/widgets.{GROUP}", "--timeout=30s")


class LineReader:
    """A subprocess whose stdout lines can be read with a deadline."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            args, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def next_line(self, timeout: float) -> str:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no output within {timeout}s") from None

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.thread.join(timeout=10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


def test_server_reports_the_built_version(control_plane: ControlPlane) -> None:
    out = control_plane.kubectl("version", "-o", "json").stdout
    server = json.loads(out)["serverVersion"]
    assert server["gitVersion"] == build.KUBERNETES_VERSION
    assert (server["major"], server["minor"]) == ("1", build.KUBECTL_MINOR)


def test_crd_object_apply_wait_and_watch_sees_update(
    control_plane: ControlPlane, namespace: str
) -> None:
    cp = control_plane
    apply_crd(cp)
    cp.kubectl("apply", "-f", "-", input=widget("w1", namespace, 1))
    cp.kubectl(
        "wait", "-n", namespace, "--for=jsonpath={.spec.size}=1", "widget/w1", "--timeout=30s"
    )

    # `get --watch` lists (printing the current object) and then watches from the
    # listed resourceVersion: once the first line is out, no later update can be missed.
    template = "jsonpath={.metadata.generation} {.spec.size}{'\\n'}"
    kubectl = str(build.ensure_kubectl())
    watch = LineReader(
        [kubectl, "get", "widget", "w1", "-n", namespace, "--watch", "-o", template],
        env=cp.client_env(),
    )
    try:
        assert watch.next_line(timeout=30) == "1 1\n"
        cp.kubectl("apply", "-f", "-", input=widget("w1", namespace, 3))
        assert watch.next_line(timeout=30) == "2 3\n"
    finally:
        watch.close()

    cp.kubectl(
        "patch", "-n", namespace, "widget/w1", "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
    )  # fmt: skip
    cp.kubectl("wait", "-n", namespace, "--for=condition=Ready", "widget/w1", "--timeout=30s")
    got = json.loads(cp.kubectl("get", "-n", namespace, "widget/w1", "-o", "json").stdout)
    assert got["spec"] == {"size": 3}


def test_crd_schema_rejects_invalid_object(control_plane: ControlPlane, namespace: str) -> None:
    apply_crd(control_plane)
    result = control_plane.kubectl(
        "apply", "-f", "-", input=widget("bad", namespace, 0), check=False
    )
    assert result.returncode == 1
    assert (
        "spec.size: Invalid value: 0: spec.size in body should be greater than or equal to 1"
        in (result.stderr)
    )


def configmap_data(cp: ControlPlane, namespace: str, name: str) -> dict[str, str]:
    out = cp.kubectl("get", "configmap", name, "-n", namespace, "-o", "json").stdout
    data: dict[str, str] = json.loads(out)["data"]
    return data


def test_helm_install_upgrade_uninstall(control_plane: ControlPlane, namespace: str) -> None:
    cp = control_plane
    cp.helm("install", "demo", str(CHART), "-n", namespace, "--wait", "--timeout=60s")
    assert configmap_data(cp, namespace, "demo-greeter") == {"greeting": "hello", "revision": "1"}

    cp.helm(
        "upgrade", "demo", str(CHART), "-n", namespace, "--set", "greeting=bonjour",
        "--set", "extraKeys.colour=blue", "--wait", "--timeout=60s",
    )  # fmt: skip
    assert configmap_data(cp, namespace, "demo-greeter") == {
        "greeting": "bonjour",
        "revision": "2",
        "colour": "blue",
    }
    releases = json.loads(cp.helm("list", "-n", namespace, "-o", "json").stdout)
    assert [(r["name"], r["revision"], r["status"]) for r in releases] == [
        ("demo", "2", "deployed")
    ]

    cp.helm("uninstall", "demo", "-n", namespace, "--wait", "--timeout=60s")
    gone = cp.kubectl("get", "configmap", "demo-greeter", "-n", namespace, check=False)
    assert gone.returncode == 1
    assert 'configmaps "demo-greeter" not found' in gone.stderr
    assert json.loads(cp.helm("list", "-n", namespace, "-o", "json").stdout) == []


def test_non_admin_user_is_limited_to_what_rbac_grants(
    control_plane: ControlPlane, namespace: str
) -> None:
    cp = control_plane
    alice = cp.add_user("alice", groups=["e2e:readers"])
    rbac = "rbac.authorization.k8s.io"
    role = {
        "apiVersion": f"{rbac}/v1",
        "kind": "Role",
        "metadata": {"name": "configmap-reader", "namespace": namespace},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}],
    }
    binding = {
        "apiVersion": f"{rbac}/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "readers", "namespace": namespace},
        "roleRef": {"apiGroup": rbac, "kind": "Role", "name": "configmap-reader"},
        "subjects": [{"apiGroup": rbac, "kind": "Group", "name": "e2e:readers"}],
    }
    cp.kubectl("apply", "-f", "-", input=yaml.safe_dump_all([role, binding]))
    cp.kubectl("create", "configmap", "visible", "-n", namespace, "--from-literal=k=v")

    def can_i(*args: str) -> tuple[int, str]:
        r = cp.kubectl("auth", "can-i", *args, kubeconfig=alice, check=False)
        return r.returncode, r.stdout.strip()

    assert can_i("list", "configmaps", "-n", namespace) == (0, "yes")
    assert can_i("create", "configmaps", "-n", namespace) == (1, "no")
    assert can_i("get", "secrets", "-n", namespace) == (1, "no")
    assert can_i("list", "configmaps", "-n", "default") == (1, "no")

    got = cp.kubectl("get", "configmap", "visible", "-n", namespace, "-o", "json", kubeconfig=alice)
    assert json.loads(got.stdout)["data"] == {"k": "v"}
    denied = cp.kubectl(
        "create", "configmap", "sneaky", "-n", namespace, kubeconfig=alice, check=False
    )
    assert denied.returncode == 1
    assert (
        'configmaps is forbidden: User "alice" cannot create resource "configmaps" in API group ""'
        f' in the namespace "{namespace}"'
    ) in denied.stderr
    assert cp.kubectl("get", "configmap", "sneaky", "-n", namespace, check=False).returncode == 1


def test_namespace_deletion_completes(control_plane: ControlPlane) -> None:
    cp = control_plane
    apply_crd(cp)
    doomed = f"e2e-doomed-{uuid.uuid4().hex[:8]}"
    cp.kubectl("create", "namespace", doomed)
    cp.kubectl("create", "configmap", "c", "-n", doomed, "--from-literal=k=v")
    cp.kubectl("apply", "-f", "-", input=widget("w", doomed, 2))

    cp.kubectl("delete", "namespace", doomed, "--wait=false")
    # the namespace controller (in kube-controller-manager) empties it, then it goes
    cp.kubectl("wait", "--for=delete", f"namespace/{doomed}", "--timeout=90s")
    result = cp.kubectl("get", "namespace", doomed, check=False)
    assert result.returncode == 1
    assert f'namespaces "{doomed}" not found' in result.stderr


def test_garbage_collector_deletes_dependents(control_plane: ControlPlane, namespace: str) -> None:
    cp = control_plane
    cp.kubectl("create", "configmap", "owner", "-n", namespace)
    uid = cp.kubectl(
        "get", "configmap", "owner", "-n", namespace, "-o", "jsonpath={.metadata.uid}"
    ).stdout
    dependent = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "dependent",
            "namespace": namespace,
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}
            ],
        },
    }
    cp.kubectl("apply", "-f", "-", input=json.dumps(dependent))
    cp.kubectl("delete", "configmap", "owner", "-n", namespace)
    cp.kubectl("wait", "--for=delete", "-n", namespace, "configmap/dependent", "--timeout=60s")


def test_store_etcd_is_separate_from_the_control_planes(
    control_plane: ControlPlane, store_etcd: EtcdServer
) -> None:
    assert store_etcd.endpoint != control_plane.etcd_endpoint
    assert control_plane.etcd_endpoint.startswith("127.0.0.1:")
