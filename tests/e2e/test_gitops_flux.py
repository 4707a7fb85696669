"""GitOps for real: Flux (source-controller + kustomize-controller, built from Go
modules) reconciles Configs from a Git repository served on loopback, and the
operator records what Flux applies.

Every wait has a deadline; Flux is nudged with ``reconcile.fluxcd.io/requestedAt``
(what ``flux reconcile`` does) after each commit, and its intervals are 5 s.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from tests.e2e.gitops_env import (
    FleetRepo,
    flux,
    git_server,
    gitops_operator,
    history,
    to_yaml,
)
from tests.e2e.operator_env import OperatorProcess, config_manifest, wait_observed, wait_until

from etcdconfig.devenv.controlplane import ControlPlane
from etcdconfig.devenv.flux import Flux
from etcdconfig.devenv.gitserver import GitServer

__all__ = ["flux", "git_server", "gitops_operator"]  # fixtures used by name

SCHEMA = {
    "type": "object",
    "required": ["retries"],
    "properties": {"retries": {"type": "integer", "maximum": 10}},
}

#: Labels kustomize-controller puts on every object it applies.
FLUX_LABELS = ("kustomize.toolkit.fluxcd.io/name", "kustomize.toolkit.fluxcd.io/namespace")


def payments(namespace: str, retries: int, cause: str) -> dict[str, Any]:
    m = config_manifest(
        "payments", namespace, {"currency": "EUR", "retries": retries}, schema=SCHEMA
    )
    m["metadata"]["annotations"] = {"etcdconfig.io/change-cause": cause}
    return m


def marker(namespace: str) -> dict[str, Any]:
    """A ConfigMap that keeps the directory in Git when the Configs are removed."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "fleet-marker", "namespace": namespace},
        "data": {"purpose": "keeps deploy/ non-empty"},
    }


@pytest.fixture
def fleet(
    control_plane: ControlPlane,
    namespace: str,
    git_server: GitServer,
    flux: Flux,
    gitops_operator: OperatorProcess,
) -> Iterator[FleetRepo]:
    repo = FleetRepo(flux, git_server.repository(f"fleet-{namespace}"), namespace)
    yield repo
    repo.uninstall()


def get_config(plane: ControlPlane, namespace: str, name: str) -> dict[str, Any] | None:
    out = plane.kubectl(
        "get",
        "configs.etcdconfig.io",
        name,
        "-n",
        namespace,
        "-o",
        "json",
        "--ignore-not-found",
        "--show-managed-fields",
    )
    return dict(json.loads(out.stdout)) if out.stdout.strip() else None


def test_commit_is_applied_by_flux_and_recorded(
    control_plane: ControlPlane,
    namespace: str,
    fleet: FleetRepo,
    gitops_operator: OperatorProcess,
) -> None:
    sha = fleet.commit(
        {
            "marker.yaml": to_yaml(marker(namespace)),
            "payments.yaml": to_yaml(payments(namespace, 3, "initial payments settings")),
        },
        "add payments",
    )
    fleet.install()

    ks = fleet.wait_applied(sha)  # wait: true -> the Config is Ready (kstatus) first
    obj = wait_observed(control_plane, namespace, "payments")
    assert obj["status"]["version"] == 1
    inventory = [e["id"] for e in ks["status"]["inventory"]["entries"]]
    assert f"{namespace}_payments_etcdconfig.io_Config" in inventory

    # Who applied it: kustomize-controller's server-side apply, as the history says.
    doc = history(gitops_operator, namespace, "payments")
    (v1,) = doc["versions"]
    assert v1["version"] == 1
    assert v1["author"]["manager"] == "kustomize-controller"
    assert v1["author"]["operation"] == "Apply"
    assert v1["author"]["source"] == "fieldManager"
    assert v1["author"]["changeCause"] == "initial payments settings"

    # What Flux puts on the object: its ownership labels, and no Git revision.
    live = get_config(control_plane, namespace, "payments")
    assert live is not None
    labels = live["metadata"].get("labels") or {}
    annotations = live["metadata"].get("annotations") or {}
    assert labels[FLUX_LABELS[0]] == fleet.name
    assert labels[FLUX_LABELS[1]] == namespace
    on_object = " ".join([*labels.values(), *annotations.values()])
    assert sha not in on_object and sha[:7] not in on_object, (labels, annotations)
    assert set(labels) == set(FLUX_LABELS), labels  # Flux adds nothing else
    assert set(annotations) == {"etcdconfig.io/change-cause"}, annotations
    managers = {
        (e["manager"], e["operation"], e.get("subresource", ""))
        for e in live["metadata"]["managedFields"]
    }
    assert managers == {
        ("kustomize-controller", "Apply", ""),  # spec, labels, the change-cause annotation
        ("kopf", "Update", ""),  # the operator's finalizer
        ("kopf", "Update", "status"),
    }, managers

    # A second commit: a new version, by the same manager, nothing else recorded.
    sha2 = fleet.commit(
        {"payments.yaml": to_yaml(payments(namespace, 5, "raise retries"))}, "raise retries"
    )
    fleet.wait_applied(sha2)
    obj = wait_observed(control_plane, namespace, "payments")
    assert obj["status"]["version"] == 2
    doc = history(gitops_operator, namespace, "payments")
    assert [v["version"] for v in doc["versions"]] == [2, 1]
    assert doc["versions"][0]["author"]["manager"] == "kustomize-controller"
    assert doc["versions"][0]["author"]["changeCause"] == "raise retries"


def test_deleting_from_git_prunes_and_history_stays(
    control_plane: ControlPlane,
    namespace: str,
    fleet: FleetRepo,
    gitops_operator: OperatorProcess,
) -> None:
    sha = fleet.commit(
        {
            "marker.yaml": to_yaml(marker(namespace)),
            "payments.yaml": to_yaml(payments(namespace, 3, "initial payments settings")),
        },
        "add payments",
    )
    fleet.install()
    fleet.wait_applied(sha)
    wait_observed(control_plane, namespace, "payments")

    sha2 = fleet.commit({"payments.yaml": None}, "remove payments")
    fleet.wait_applied(sha2)
    wait_until(
        lambda: get_config(control_plane, namespace, "payments") is None,
        60.0,
        "the pruned Config to be gone (the operator's finalizer released)",
    )
    doc = history(gitops_operator, namespace, "payments")
    assert [v["version"] for v in doc["versions"]] == [1]
    assert doc["versions"][0]["author"]["manager"] == "kustomize-controller"
    assert doc["head"]["deleted"] is True, doc["head"]
    marker_cm = control_plane.kubectl(
        "get", "configmap", "fleet-marker", "-n", namespace, "-o", "name"
    )
    assert marker_cm.stdout.strip() == "configmap/fleet-marker"


def test_health_check_waits_for_the_operator(
    control_plane: ControlPlane,
    namespace: str,
    fleet: FleetRepo,
    gitops_operator: OperatorProcess,
) -> None:
    sha = fleet.commit({"marker.yaml": to_yaml(marker(namespace))}, "marker only")
    fleet.install()
    fleet.wait_applied(sha)
    gitops_operator.pause()
    try:
        sha2 = fleet.commit(
            {"payments.yaml": to_yaml(payments(namespace, 3, "while the operator is paused"))},
            "add payments",
        )
        with pytest.raises(AssertionError, match="timed out"):
            # a Config without status reads as observedGeneration 0 (the CRD's default):
            # kstatus says InProgress, so the Kustomization is not Ready (it was at once
            # before: no status at all is Current to kstatus)
            fleet.wait_applied(sha2, timeout=15.0)
    finally:
        gitops_operator.resume_if_paused()
    fleet.wait_applied(sha2)
    assert wait_observed(control_plane, namespace, "payments")["status"]["version"] == 1
