"""Which GitOps tool manages a Config, from its labels, annotations and field managers."""

from __future__ import annotations

from typing import Any

import pytest

from etcdconfig.cli.main import gitops_refusal
from etcdconfig.gitops import Management, management


def config(
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    managers: list[tuple[str, str, dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    return {
        "apiVersion": "etcdconfig.io/v1alpha1",
        "kind": "Config",
        "metadata": {
            "name": "payments",
            "namespace": "prod",
            "labels": labels or {},
            "annotations": annotations or {},
            "managedFields": [
                {"manager": m, "operation": "Apply", "subresource": sub, "fieldsV1": fields}
                for m, sub, fields in managers or []
            ],
        },
        "spec": {"data": {}},
    }


SPEC = {"f:spec": {"f:data": {}}}
STATUS = {"f:status": {"f:version": {}}}


def test_flux_kustomization_labels_name_the_kustomization() -> None:
    obj = config(
        labels={
            "kustomize.toolkit.fluxcd.io/name": "apps",
            "kustomize.toolkit.fluxcd.io/namespace": "flux-system",
        },
        managers=[("kustomize-controller", "", SPEC), ("kopf", "status", STATUS)],
    )
    assert management(obj) == Management(
        "Flux",
        "Kustomization flux-system/apps",
        ("label kustomize.toolkit.fluxcd.io/name=apps", "field manager kustomize-controller"),
    )


def test_flux_helm_release_labels() -> None:
    obj = config(
        labels={"helm.toolkit.fluxcd.io/name": "cfg", "helm.toolkit.fluxcd.io/namespace": "ops"}
    )
    assert management(obj) == Management(
        "Flux", "HelmRelease ops/cfg", ("label helm.toolkit.fluxcd.io/name=cfg",)
    )


def test_argo_annotation_tracking_names_the_application() -> None:
    obj = config(
        annotations={
            "argocd.argoproj.io/tracking-id": "payments-app:etcdconfig.io/Config:prod/payments"
        },
        managers=[("argocd-controller", "", SPEC)],
    )
    assert management(obj) == Management(
        "Argo CD",
        "Application payments-app",
        ("annotation argocd.argoproj.io/tracking-id", "field manager argocd-controller"),
    )


def test_argo_label_tracking_needs_argo_cds_field_manager_beside_the_label() -> None:
    argo = config(
        labels={"app.kubernetes.io/instance": "payments-app"},
        managers=[("argocd-controller", "", {"f:metadata": {"f:labels": {}}})],
    )
    assert management(argo) == Management(
        "Argo CD",
        "Application payments-app",
        ("label app.kubernetes.io/instance=payments-app", "field manager argocd-controller"),
    )
    # the recommended label alone: Kustomize, Helm charts and people set it too
    assert management(config(labels={"app.kubernetes.io/instance": "payments-app"})) is None
    # `helm install` sets the same label, and the release annotations Argo CD never does
    helm = config(
        labels={"app.kubernetes.io/instance": "cfg", "app.kubernetes.io/managed-by": "Helm"},
        annotations={"meta.helm.sh/release-name": "cfg", "meta.helm.sh/release-namespace": "ops"},
    )
    assert management(helm) is None


def test_any_argo_cd_label_or_annotation_counts() -> None:
    obj = config(labels={"argocd.argoproj.io/instance": "payments-app"})
    assert management(obj) == Management(
        "Argo CD",
        "Application payments-app",
        ("label argocd.argoproj.io/instance=payments-app",),
    )


@pytest.mark.parametrize(
    "mark",
    [
        {"kustomize.toolkit.fluxcd.io/reconcile": "disabled"},
        {"kustomize.toolkit.fluxcd.io/ssa": "IfNotPresent"},
    ],
)
def test_flux_opt_outs_are_not_managed(mark: dict[str, str]) -> None:
    obj = config(
        labels={"kustomize.toolkit.fluxcd.io/name": "apps"},
        annotations=mark,
        managers=[("kustomize-controller", "", SPEC)],
    )
    assert management(obj) is None


@pytest.mark.parametrize(
    ("manager", "tool", "owner"),
    [
        ("kustomize-controller", "Flux", "a Kustomization"),
        ("helm-controller", "Flux", "a HelmRelease"),
        ("argocd-controller", "Argo CD", "an Application"),
    ],
)
def test_a_field_manager_owning_spec_is_enough(manager: str, tool: str, owner: str) -> None:
    obj = config(managers=[(manager, "", SPEC)])
    assert management(obj) == Management(tool, owner, (f"field manager {manager}",))


def test_flux_managers_that_do_not_own_spec_do_not_count() -> None:
    obj = config(
        managers=[
            ("kustomize-controller", "", {"f:metadata": {"f:labels": {}}}),
            ("kustomize-controller", "status", {"f:status": {}, "f:spec": {}}),
            ("kubectl-client-side-apply", "", SPEC),
        ]
    )
    assert management(obj) is None


def test_argo_cds_manager_counts_even_on_metadata_only() -> None:
    # Argo CD adopting an object with client-side apply owns only what it changed
    obj = config(managers=[("argocd-controller", "", {"f:metadata": {"f:labels": {}}})])
    assert management(obj) == Management(
        "Argo CD", "an Application", ("field manager argocd-controller",)
    )


def test_an_unmanaged_config() -> None:
    assert management(config()) is None
    assert management({"metadata": {}}) is None


def test_the_refusal_names_the_tool_the_evidence_and_the_print_path() -> None:
    managed = Management(
        "Flux", "Kustomization flux-system/apps", ("label kustomize.toolkit.fluxcd.io/name=apps",)
    )
    text = gitops_refusal("prod/payments", 3, managed)
    assert text == (
        "Config prod/payments is managed by Flux (Kustomization flux-system/apps; label "
        "kustomize.toolkit.fluxcd.io/name=apps): Flux would revert a live rollback at its "
        "next sync, recording Git's data again as a new version. Roll back in Git instead: "
        "etcdconfig rollback prod/payments --to 3 --print > <file in the repository>, then "
        "commit and push; --force rolls back live anyway (e.g. with the Flux sync suspended)"
    )
