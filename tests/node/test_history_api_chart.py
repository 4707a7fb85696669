"""The history API as users get it from the chart: the APIService, its Service to the
operator pods, the serving certificate the chart made, the operator's own RBAC
(SubjectAccessReviews, the front-proxy ConfigMap) and the reader ClusterRole bound
per namespace; read with kubectl and the plugin, a kubeconfig alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from tests.node.conftest import Release, wait_for

from etcdconfig.devenv import build

APISERVICE = "v1alpha1.history.etcdconfig.io"
BIN = Path(sys.executable).parent


def available(release: Release) -> str:
    out = release.plane.kubectl("get", "apiservice", APISERVICE, "-o", "json", check=False)
    if out.returncode != 0:
        return "absent"
    for cond in json.loads(out.stdout).get("status", {}).get("conditions", []):
        if cond["type"] == "Available":
            return str(cond["status"])
    return "Unknown"


def plugin(release: Release, kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in release.plane.client_env(kubeconfig).items()
        if not k.startswith("ETCDCONFIG_")
    }
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(
        [str(build.ensure_kubectl()), "etcdconfig", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def apply_config(release: Release, namespace: str, data: dict[str, Any]) -> None:
    manifest = {
        "apiVersion": "etcdconfig.io/v1alpha1",
        "kind": "Config",
        "metadata": {"name": "app", "namespace": namespace},
        "spec": {"data": data},
    }
    release.plane.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest))


def head_version(release: Release, namespace: str) -> int:
    out = release.plane.kubectl("get", "config", "app", "-n", namespace, "-o", "json")
    obj = json.loads(out.stdout)
    status = obj.get("status") or {}
    if status.get("observedGeneration") != obj["metadata"]["generation"]:
        return 0
    return int(status.get("version") or 0)


def test_a_user_reads_history_through_the_charts_apiservice(
    release: Release, namespace: str
) -> None:
    plane = release.plane
    wait_for("the APIService Available", lambda: available(release) == "True", timeout=120)
    apply_config(release, namespace, {"greeting": "hello"})
    wait_for("version 1", lambda: head_version(release, namespace) == 1)
    apply_config(release, namespace, {"greeting": "bonjour"})
    wait_for("version 2", lambda: head_version(release, namespace) == 2)

    user = f"reader-{namespace}"
    kubeconfig = plane.add_user(user)
    plane.kubectl(
        "create",
        "rolebinding",
        "history-reader",
        "--clusterrole=etcdconfig-history-reader",
        f"--user={user}",
        "-n",
        namespace,
    )
    plane.kubectl(
        "config", "set-context", "--current", f"--namespace={namespace}", kubeconfig=kubeconfig
    )

    def listed() -> list[str]:
        out = plane.kubectl(
            "get", "configversions", "-l", "etcdconfig.io/config=app", "-o", "name",
            kubeconfig=kubeconfig, check=False,
        )  # fmt: skip
        return out.stdout.split() if out.returncode == 0 else []

    names = wait_for("the reader's binding in effect", listed)
    assert names == [
        "configversion.history.etcdconfig.io/app.v2",
        "configversion.history.etcdconfig.io/app.v1",
    ]
    served = json.loads(
        plane.kubectl("get", "configversion", "app.v1", "-o", "json", kubeconfig=kubeconfig).stdout
    )
    assert served["verified"] is True and served["data"] == {"greeting": "hello"}
    assert served["recordedBy"] in {p["metadata"]["name"] for p in release.ready_pods()}
    # the record as the admin reads it from the bundled etcd, field for field
    stored = release.cli("show", f"{namespace}/app", "--version", "1", "--full")
    envelope = ("apiVersion", "kind", "metadata", "config", "verified")
    assert {k: v for k, v in served.items() if k not in envelope} == stored

    # the plugin with the kubeconfig alone: the context's namespace, no etcd anywhere
    history = plugin(release, kubeconfig, "history", "app", "-o", "json")
    assert history.returncode == 0, history.stderr
    doc = json.loads(history.stdout)
    assert doc["config"] == f"{namespace}/app"
    assert [v["version"] for v in doc["versions"]] == [2, 1]
    diff = plugin(release, kubeconfig, "diff", "app", "1", "2", "--no-color")
    assert diff.returncode == 1 and "+greeting: bonjour" in diff.stdout

    # another namespace: the standard Forbidden, from the API server and from the plugin
    theirs = plane.kubectl(
        "get", "configversions", "-n", release.namespace, kubeconfig=kubeconfig, check=False
    )
    assert theirs.returncode == 1
    assert theirs.stderr.strip() == (
        "Error from server (Forbidden): configversions.history.etcdconfig.io is forbidden: "
        f'User "{user}" cannot list resource "configversions" in API group '
        f'"history.etcdconfig.io" in the namespace "{release.namespace}"'
    )
    refused = plugin(release, kubeconfig, "history", f"{release.namespace}/anything")
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: Error from server (Forbidden): ")
