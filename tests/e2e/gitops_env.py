"""Flux in the loop: a Git server on loopback, Flux's source-controller and
kustomize-controller as local processes, and an operator, against the e2e control plane.

Fixtures (module scope: one set per test module):

- ``git_server``: :class:`~etcdconfig.devenv.gitserver.GitServer` (``git http-backend``
  on ``http://127.0.0.1:<port>``); ``git_server.repository(name)`` makes a repository
  to ``commit({path: text | None}, message)`` into.
- ``flux``: :class:`~etcdconfig.devenv.flux.Flux`, both controllers running (built from
  Go modules on first use, cached under ``~/.cache/etcdconfig``) and their CRDs applied.
- ``gitops_operator``: an :class:`~tests.e2e.operator_env.OperatorProcess` with its own
  etcd prefix, serving the admission webhook; the webhook is registered only for the
  namespaces a test asks for with ``admission(namespace)`` (elsewhere authors are
  recorded from the field manager).

:class:`FleetRepo` ties one repository to one GitRepository + Kustomization in a
namespace and waits on their conditions with deadlines.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.e2e.operator_env import (
    BIN,
    OperatorProcess,
    install_webhook,
    make_webhook_certs,
    wait_until,
)

from etcdconfig.devenv.controlplane import ControlPlane
from etcdconfig.devenv.etcd import EtcdServer
from etcdconfig.devenv.flux import Flux, FluxError, git_repository, kustomization, ready_condition
from etcdconfig.devenv.gitserver import GitRepository, GitServer
from etcdconfig.etcd import EtcdClient, EtcdSettings
from etcdconfig.store import VersionedStore

FLUX_START_TIMEOUT = 120.0


@pytest.fixture(scope="module")
def git_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitServer]:
    server = GitServer(tmp_path_factory.mktemp("git"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def flux(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flux]:
    env = Flux(control_plane, tmp_path_factory.mktemp("flux"))
    try:
        env.start(timeout=FLUX_START_TIMEOUT)
    except FluxError as exc:
        pytest.fail(f"Flux did not start: {exc}")
    try:
        yield env
    finally:
        env.stop()


@pytest.fixture(scope="module")
def gitops_operator(
    control_plane: ControlPlane,
    store_etcd: EtcdServer,
    crd: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    work = tmp_path_factory.mktemp("gitops-operator")
    op = OperatorProcess(
        plane=control_plane,
        etcd_endpoint=store_etcd.endpoint,
        prefix=f"/e2e-gitops-{uuid.uuid4().hex[:8]}",
        workdir=work / "op",
        replica_id="gitops-op",
        webhook=make_webhook_certs(work / "pki"),
    )
    op.start()
    try:
        op.wait_ready()
        yield op
    finally:
        op.stop()


@pytest.fixture
def admission(
    control_plane: ControlPlane, gitops_operator: OperatorProcess
) -> Iterator[Callable[[str], None]]:
    """``admission(namespace)``: the operator's webhook validates Configs there (a
    ValidatingWebhookConfiguration of its own, removed after the test)."""
    names: list[str] = []

    def register(namespace: str) -> None:
        assert gitops_operator.webhook is not None
        name = f"etcdconfig-gitops-{namespace}"
        install_webhook(
            control_plane, name, gitops_operator.webhook_port, gitops_operator.webhook, [namespace]
        )
        names.append(name)

    yield register
    for name in names:
        control_plane.kubectl(
            "delete", "validatingwebhookconfiguration", name, "--ignore-not-found"
        )


def etcdconfig_run(op: OperatorProcess, *args: str) -> subprocess.CompletedProcess[str]:
    """``etcdconfig ARGS`` on the admin path (the operator's etcd prefix), as a user with
    the control plane's kubeconfig; whatever it exits with."""
    return subprocess.run(
        [
            str(BIN / "etcdconfig"),
            *args,
            "--etcd-endpoints",
            op.etcd_endpoint,
            "--prefix",
            op.prefix,
        ],
        env=op.plane.client_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def etcdconfig_cli(op: OperatorProcess, *args: str) -> subprocess.CompletedProcess[str]:
    proc = etcdconfig_run(op, *args)
    if proc.returncode != 0:
        raise AssertionError(f"etcdconfig {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc


def history(op: OperatorProcess, namespace: str, name: str) -> dict[str, Any]:
    out = etcdconfig_cli(op, "history", f"{namespace}/{name}", "-o", "json")
    return dict(json.loads(out.stdout))


def records(op: OperatorProcess, namespace: str, name: str) -> list[dict[str, Any]]:
    """Every stored version record of ``namespace/name`` (data included), newest first,
    read from the operator's etcd prefix directly."""

    async def read() -> list[dict[str, Any]]:
        client = EtcdClient(EtcdSettings(endpoints=[op.etcd_endpoint]))
        try:
            found, _ = await VersionedStore(client, prefix=op.prefix).history(
                namespace, name, limit=1000
            )
            return [dict(r.raw) for r in found]
        finally:
            await client.close()

    return asyncio.run(read())


def to_yaml(*docs: dict[str, Any]) -> str:
    return yaml.safe_dump_all(list(docs), sort_keys=False)


@dataclass
class FleetRepo:
    """A Git repository that Flux reconciles into ``namespace`` from ``path``."""

    flux: Flux
    repo: GitRepository
    namespace: str
    name: str = "fleet"
    path: str = "deploy"

    def install(self, **spec: Any) -> None:
        """Apply the GitRepository and the Kustomization (``wait``, ``prune``, 5 s)."""
        objs = [
            git_repository(self.name, self.namespace, self.repo.url),
            kustomization(self.name, self.namespace, self.name, f"./{self.path}", **spec),
        ]
        self.flux.plane.kubectl("apply", "-f", "-", input=to_yaml(*objs))

    def commit(self, files: dict[str, str | None], message: str) -> str:
        """Commit ``files`` (relative to ``path``) and ask Flux to fetch at once (as
        ``flux reconcile source git`` does; the 5 s interval would get there too)."""
        sha = self.repo.commit({f"{self.path}/{k}": v for k, v in files.items()}, message)
        if self.flux.get("gitrepository", self.namespace, self.name) is not None:
            self.flux.reconcile_now("gitrepository", self.namespace, self.name)
        return sha

    def revision(self, sha: str) -> str:
        """Flux's revision string for a commit on the branch: ``main@sha1:<sha>``."""
        return f"{self.repo.branch()}@sha1:{sha}"

    def kustomization(self) -> dict[str, Any] | None:
        return self.flux.get("kustomization", self.namespace, self.name)

    def wait_applied(self, sha: str, timeout: float = 90.0) -> dict[str, Any]:
        """Wait until the Kustomization is Ready at commit ``sha`` (applied and, with
        ``wait: true``, every object healthy by kstatus)."""
        want = self.revision(sha)

        def check() -> dict[str, Any] | None:
            obj = self.kustomization()
            cond = ready_condition(obj)
            if obj is None or cond is None or cond.get("status") != "True":
                return None
            if (obj.get("status") or {}).get("lastAppliedRevision") != want:
                return None
            if cond.get("observedGeneration") != obj["metadata"]["generation"]:
                return None
            return obj

        try:
            return dict(wait_until(check, timeout, f"Kustomization {self.name} Ready at {want}"))
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}\nKustomization status: {json.dumps(self.status(), indent=1)}\n"
                + "\n".join(f"--- {n}\n{t}" for n, t in self.flux.logs().items())
            ) from None

    def reconcile(self, timeout: float = 60.0) -> dict[str, Any]:
        """One more reconcile of the Kustomization, as ``flux reconcile kustomization``
        (without ``--with-source``): wait until it has handled the request and is Ready."""
        stamp = self.flux.reconcile_now("kustomization", self.namespace, self.name)

        def handled() -> dict[str, Any] | None:
            obj = self.kustomization()
            st = (obj or {}).get("status") or {}
            cond = ready_condition(obj)
            if st.get("lastHandledReconcileAt") != stamp or cond is None:
                return None
            return obj if cond.get("status") == "True" else None

        return dict(wait_until(handled, timeout, f"Kustomization {self.name} reconciled"))

    def wait_failed(self, sha: str, timeout: float = 90.0) -> dict[str, Any]:
        """Wait until the Kustomization's last attempt was at ``sha`` and it is not
        Ready; return its Ready condition."""
        want = self.revision(sha)

        def check() -> dict[str, Any] | None:
            obj = self.kustomization()
            cond = ready_condition(obj)
            st = (obj or {}).get("status") or {}
            if cond is None or st.get("lastAttemptedRevision") != want:
                return None
            return cond if cond.get("status") == "False" else None

        try:
            return dict(wait_until(check, timeout, f"Kustomization {self.name} failed at {want}"))
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}\nKustomization status: {json.dumps(self.status(), indent=1)}"
            ) from None

    def status(self) -> dict[str, Any]:
        return {
            kind: (self.flux.get(kind, self.namespace, self.name) or {}).get("status")
            for kind in ("gitrepository", "kustomization")
        }

    def uninstall(self, timeout: float = 60.0) -> None:
        """Delete the Kustomization (Flux prunes what it applied) and the GitRepository,
        waiting while Flux still runs to release their finalizers."""
        for kind in ("kustomization", "gitrepository"):
            self.flux.plane.kubectl(
                "delete",
                kind,
                self.name,
                "-n",
                self.namespace,
                "--ignore-not-found",
                "--wait=true",
                f"--timeout={int(timeout)}s",
            )
