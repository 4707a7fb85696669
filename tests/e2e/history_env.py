"""An operator serving the history API behind a real APIService of the local control
plane (real aggregation layer, real front-proxy certificate, real SubjectAccessReviews).

The control plane of the e2e tier has no node: the APIService's Service is an
``ExternalName`` Service naming 127.0.0.1, which kube-apiserver's aggregator resolves
directly (``proxy.ResolveCluster``); the serving certificate is issued for the name the
aggregator checks, ``<service>.<namespace>.svc``. One APIService per cluster: the
``history_api`` fixture is module-scoped and removes it at the end.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.e2e.operator_env import OperatorProcess, wait_until

from etcdconfig.devenv.controlplane import ControlPlane
from etcdconfig.devenv.etcd import EtcdServer, free_port
from etcdconfig.devenv.pki import CertificateAuthority

SERVICE = "etcdconfig-history"
APISERVICE = "v1alpha1.history.etcdconfig.io"
READER_ROLE = "etcdconfig-history-reader"


@dataclass
class HistoryApi:
    plane: ControlPlane
    operator: OperatorProcess
    port: int
    certs: Path
    service_namespace: str

    def available(self) -> str:
        out = self.plane.kubectl("get", "apiservice", APISERVICE, "-o", "json")
        for cond in json.loads(out.stdout).get("status", {}).get("conditions", []):
            if cond["type"] == "Available":
                return str(cond["status"])
        return "Unknown"

    def raw(self, path: str, kubeconfig: Path | None = None) -> Any:
        out = self.plane.kubectl("get", "--raw", path, kubeconfig=kubeconfig)
        return json.loads(out.stdout)

    def bind_reader(self, user: str, namespace: str) -> Path:
        """A kubeconfig for ``user`` bound to the reader ClusterRole in ``namespace``."""
        kubeconfig = self.plane.add_user(user)
        self.plane.kubectl(
            "create",
            "rolebinding",
            f"{user}-history",
            f"--clusterrole={READER_ROLE}",
            f"--user={user}",
            "-n",
            namespace,
        )
        return kubeconfig


def reader_role() -> dict[str, Any]:
    """The chart's ClusterRole users bind per namespace (charts/etcdconfig/templates)."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": READER_ROLE},
        "rules": [
            {
                "apiGroups": ["history.etcdconfig.io"],
                "resources": ["configversions", "confighistories"],
                "verbs": ["get", "list"],
            }
        ],
    }


def register(plane: ControlPlane, namespace: str, port: int, ca_pem: bytes) -> None:
    objects = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": SERVICE, "namespace": namespace},
            "spec": {"type": "ExternalName", "externalName": "127.0.0.1"},
        },
        {
            "apiVersion": "apiregistration.k8s.io/v1",
            "kind": "APIService",
            "metadata": {"name": APISERVICE},
            "spec": {
                "group": "history.etcdconfig.io",
                "version": "v1alpha1",
                "groupPriorityMinimum": 1000,
                "versionPriority": 15,
                "service": {"name": SERVICE, "namespace": namespace, "port": port},
                "caBundle": base64.b64encode(ca_pem).decode(),
            },
        },
        reader_role(),
    ]
    plane.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(objects))


@pytest.fixture(scope="module")
def history_api(
    control_plane: ControlPlane,
    store_etcd: EtcdServer,
    crd: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[HistoryApi]:
    # unique per set-up: pytest may tear a module's fixtures down and set them up again
    # (tests of several modules selected in an interleaved order, as the mutation runner does)
    service_ns = f"history-api-{uuid.uuid4().hex[:8]}"
    certs = tmp_path_factory.mktemp("history-api-certs")
    ca = CertificateAuthority.load_or_create(certs, "history-ca")
    ca.issue(
        certs / "serving",
        common_name=SERVICE,
        server=True,
        dns_names=(f"{SERVICE}.{service_ns}.svc",),
    )
    port = free_port()
    op = OperatorProcess(
        plane=control_plane,
        etcd_endpoint=store_etcd.endpoint,
        prefix=f"/e2e-{uuid.uuid4().hex[:8]}",
        workdir=tmp_path_factory.mktemp("history-operator"),
        extra=(
            "--history-api",
            "--history-api-addr=127.0.0.1",
            f"--history-api-port={port}",
            f"--history-api-cert-file={certs / 'serving.crt'}",
            f"--history-api-key-file={certs / 'serving.key'}",
        ),
        # the chart sets the same settings as environment variables (one, to prove them)
        env={"ETCDCONFIG_HISTORY_API_AUTHZ_TTL": "10"},
    )
    op.start()
    api = HistoryApi(
        plane=control_plane, operator=op, port=port, certs=certs, service_namespace=service_ns
    )
    try:
        op.wait_ready()
        register(control_plane, service_ns, port, ca.cert_path.read_bytes())
        wait_until(lambda: api.available() == "True", 60, "APIService Available")
        yield api
    finally:
        op.stop()
        control_plane.kubectl("delete", "apiservice", APISERVICE, "--ignore-not-found")
        control_plane.kubectl(
            "delete", "namespace", service_ns, "--ignore-not-found", "--wait=false"
        )
