"""The operator as a real process against the real control plane, for e2e tests.

Fixtures: ``crd`` (session: the Config CRD applied), ``operator`` (module: one
running operator with its own etcd prefix), ``store`` (a ``VersionedStore``
reading the store's etcd directly, not through the operator).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from etcdconfig.devenv.controlplane import ControlPlane
from etcdconfig.devenv.etcd import EtcdServer, free_port
from etcdconfig.devenv.pki import CertificateAuthority

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "crds" / "etcdconfig.io_configs.yaml"
BIN = Path(sys.executable).parent


def wait_until(
    predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)  # poll interval of a deadline-bounded wait
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


@dataclass
class WebhookCerts:
    ca_pem: bytes
    cert_file: Path
    key_file: Path


@dataclass
class OperatorProcess:
    plane: ControlPlane
    etcd_endpoint: str
    prefix: str
    workdir: Path
    replica_id: str = "op-0"
    webhook: WebhookCerts | None = None
    extra: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)  # ETCDCONFIG_* settings beyond the flags
    http_port: int = field(default_factory=free_port)
    webhook_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    paused: bool = False

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.replica_id}.log"

    def command(self) -> list[str]:
        cmd = [
            str(BIN / "etcdconfig"),
            "run",
            "--etcd-endpoints",
            self.etcd_endpoint,
            "--prefix",
            self.prefix,
            "--replica-id",
            self.replica_id,
            "--http-addr",
            "127.0.0.1",
            "--http-port",
            str(self.http_port),
            "--lock-ttl",
            "3",
            "--resync-interval",
            "5",
            # every round reconciles every Config: these tests time repairs by rounds
            "--resync-full-every",
            "1",
            "--log-format",
            "json",
        ]
        if self.webhook:
            cmd += [
                "--webhook",
                "--webhook-addr",
                "127.0.0.1",
                "--webhook-port",
                str(self.webhook_port),
                "--webhook-cert-file",
                str(self.webhook.cert_file),
                "--webhook-key-file",
                str(self.webhook.key_file),
            ]
        return [*cmd, *self.extra]

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**self.plane.client_env(), **self.env},
                start_new_session=True,
            )
        self.starts += 1

    def ready(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(
                f"operator exited ({self.proc and self.proc.returncode}):\n{self.log_tail()}"
            )
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.http_port}/readyz", timeout=1
            ) as r:
                return r.status == 200
        except OSError:
            return False

    def wait_ready(self, timeout: float = 60.0) -> None:
        wait_until(self.ready, timeout, "operator /readyz")

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics", timeout=5) as r:
            return r.read().decode()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def pause(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGSTOP)
            self.paused = True

    def resume_if_paused(self) -> None:
        if self.paused and self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
        self.paused = False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


def make_webhook_certs(directory: Path) -> WebhookCerts:
    ca = CertificateAuthority.load_or_create(directory, "webhook-ca")
    pair = ca.issue(
        directory / "webhook",
        common_name="etcdconfig-webhook",
        server=True,
        dns_names=("localhost",),
        ip_addresses=("127.0.0.1",),
    )
    return WebhookCerts(ca_pem=ca.cert_pem, cert_file=pair.cert_path, key_file=pair.key_path)


def install_webhook(
    plane: ControlPlane, name: str, port: int, certs: WebhookCerts, namespaces: list[str]
) -> None:
    import base64

    vwc = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [
            {
                "name": "validate.configs.etcdconfig.io",
                "admissionReviewVersions": ["v1"],
                "sideEffects": "NoneOnDryRun",
                "failurePolicy": "Fail",
                "timeoutSeconds": 10,
                "namespaceSelector": {
                    "matchExpressions": [
                        {
                            "key": "kubernetes.io/metadata.name",
                            "operator": "In",
                            "values": namespaces,
                        }
                    ]
                },
                "clientConfig": {
                    "url": f"https://127.0.0.1:{port}/validate-config",
                    "caBundle": base64.b64encode(certs.ca_pem).decode(),
                },
                "rules": [
                    {
                        "apiGroups": ["etcdconfig.io"],
                        "apiVersions": ["v1alpha1"],
                        "operations": ["CREATE", "UPDATE"],
                        "resources": ["configs"],
                    }
                ],
            }
        ],
    }
    plane.kubectl("apply", "-f", "-", input=yaml.safe_dump(vwc))


def config_manifest(name: str, namespace: str, data: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "etcdconfig.io/v1alpha1",
        "kind": "Config",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"data": data, **spec},
    }


def apply(
    plane: ControlPlane, manifest: dict[str, Any], *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return plane.kubectl("apply", *args, "-f", "-", input=json.dumps(manifest), check=check)


def get(plane: ControlPlane, namespace: str, name: str) -> dict[str, Any]:
    out = plane.kubectl("get", "configs.etcdconfig.io", name, "-n", namespace, "-o", "json")
    return dict(json.loads(out.stdout))


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return dict(c)
    return None


def wait_observed(
    plane: ControlPlane,
    namespace: str,
    name: str,
    *,
    ready: bool | None = True,
    timeout: float = 60.0,
) -> dict[str, Any]:
    """Wait until the operator has observed the object's current generation."""

    def check() -> dict[str, Any] | None:
        obj = get(plane, namespace, name)
        st = obj.get("status") or {}
        if st.get("observedGeneration") != obj["metadata"]["generation"]:
            return None
        c = condition(obj, "Ready")
        if ready is not None and (c is None or c["status"] != ("True" if ready else "False")):
            return None
        if c is not None and c.get("observedGeneration") != obj["metadata"]["generation"]:
            return None
        return obj

    return dict(wait_until(check, timeout, f"{namespace}/{name} observed (ready={ready})"))


@pytest.fixture(scope="session")
def crd(control_plane: ControlPlane) -> Path:
    control_plane.kubectl("apply", "-f", str(CRD))
    control_plane.kubectl(
        "wait", "--for=condition=Established", "crd/configs.etcdconfig.io", "--timeout=60s"
    )
    return CRD


@pytest.fixture(scope="module")
def operator(
    control_plane: ControlPlane,
    store_etcd: EtcdServer,
    crd: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    op = OperatorProcess(
        plane=control_plane,
        etcd_endpoint=store_etcd.endpoint,
        prefix=f"/e2e-{uuid.uuid4().hex[:8]}",
        workdir=tmp_path_factory.mktemp("operator"),
    )
    op.start()
    try:
        op.wait_ready()
        yield op
    finally:
        op.stop()
