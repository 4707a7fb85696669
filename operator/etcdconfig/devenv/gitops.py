"""``etcdconfig dev up --gitops``: Flux and a Git repository in the loop of the local cluster.

After the control plane is up: a Git server (``git http-backend`` on
``http://127.0.0.1:<port>``, :mod:`etcdconfig.devenv.gitserver`) serving one repository,
``fleet``, seeded with a namespace (``gitops-demo``) and the sample ``payments`` Config;
Flux's source-controller and kustomize-controller (built from Go modules,
:mod:`etcdconfig.devenv.flux`) and their CRDs; a ``GitRepository`` and a ``Kustomization``
``flux-system/fleet`` that apply ``./deploy`` of the repository's ``main`` branch every
30 s, with ``wait: true`` (Flux's kstatus health checks: the Kustomization is Ready only
once the operator has recorded every Config) and ``prune: true``.

Without a node (``--no-node``) the Config CRD is applied from ``crds/`` (run an operator
by hand: ``etcdconfig run``); with a node the Helm chart brings it (``make demo`` reuses
this cluster), and Flux retries until it exists.

All three processes are the cluster's own (``dev status`` lists them, ``dev down`` stops
them). The working clone to commit in is ``<state_dir>/gitops/work/fleet``; a push there
goes to the served repository over the file system, and ``etcdconfig dev gitops-sync``
(or the 30 s interval) makes Flux fetch it.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from etcdconfig.devenv.etcd import free_port
from etcdconfig.devenv.flux import Flux, git_repository, kustomization
from etcdconfig.devenv.gitserver import GitRepository, GitServer, GitServerError

if TYPE_CHECKING:
    from etcdconfig.devenv.controlplane import ControlPlane

NAMESPACE = "flux-system"
NAME = "fleet"
DEMO_NAMESPACE = "gitops-demo"
EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
CRDS = Path(__file__).resolve().parents[3] / "crds"


def state_dir(plane: ControlPlane) -> Path:
    return plane.state_dir / "gitops"


def _seed() -> dict[str, str | None]:
    """The repository's first commit: the demo namespace and the sample Config in it."""
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": DEMO_NAMESPACE}}
    files: dict[str, str | None] = {"deploy/namespace.yaml": yaml.safe_dump(ns, sort_keys=False)}
    sample = EXAMPLES / "payments.yaml"
    if sample.is_file():
        config = yaml.safe_load(sample.read_text())
        config["metadata"]["namespace"] = DEMO_NAMESPACE
        files["deploy/payments.yaml"] = yaml.safe_dump(config, sort_keys=False)
    return files


def start(plane: ControlPlane, timeout: float = 180.0) -> dict[str, Any]:
    """Start the Git server and Flux as the cluster's processes, seed the repository and
    point Flux at it; return what ``up`` prints (URLs, paths)."""
    root = state_dir(plane)
    if root.exists():  # a previous `up --gitops`: its repository went with its cluster
        shutil.rmtree(root)
    server = GitServer(root)
    repo = GitRepository(server, NAME)
    repo.create()
    sha = repo.commit(_seed(), "seed: the gitops-demo namespace and the payments Config")
    port = free_port()
    plane.spawn(
        "git-server",
        Path(sys.executable),
        ["-m", "etcdconfig.devenv.gitserver", str(root), "--port", str(port)],
    )
    url = f"http://127.0.0.1:{port}/{NAME}.git"
    flux = Flux(plane, root / "flux", log_level="info", log_dir=plane.log_dir)
    flux.start(timeout=timeout, launcher=plane.spawn)
    objs = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
        git_repository(NAME, NAMESPACE, url, interval="30s"),
        kustomization(NAME, NAMESPACE, NAME, "./deploy", interval="30s", timeout="2m"),
    ]
    crd = CRDS / "etcdconfig.io_configs.yaml"
    if not plane.node and crd.is_file():
        # process-only: the operator is run by hand and nothing else installs the CRD;
        # with a node the chart does (`make demo` reuses this cluster): Flux retries
        plane.kubectl("apply", "--server-side", "--field-manager=etcdconfig-devenv", "-f", str(crd))
    plane.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(objs, sort_keys=False))
    return {"url": url, "work": str(repo.work), "seed": sha}


def sync(plane: ControlPlane) -> str:
    """``flux reconcile source git fleet``: fetch now (then the Kustomization follows)."""
    if not (state_dir(plane) / "repos" / f"{NAME}.git").is_dir():
        raise GitServerError("no GitOps repository here: start with `dev up --gitops`")
    return Flux(plane, state_dir(plane) / "flux").reconcile_now("gitrepository", NAMESPACE, NAME)
