"""Adversarial review of GitOps detection (``etcdconfig.gitops.management``): the marks
Flux v2 and Argo CD really leave on what they apply, and the marks other tools leave.

Tests named ``test_defect_*`` FAIL on the code as reviewed (the docstring says why);
the others are hypotheses that held.
"""

from __future__ import annotations

from typing import Any

from etcdconfig.gitops import Management, management
from etcdconfig.reconcile import origin_of

SPEC = {"f:spec": {"f:data": {"f:retries": {}}, "f:schema": {}}}
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def config(
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    managers: list[tuple[str, str, str, dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """managers: (manager, operation, subresource, fieldsV1)."""
    return {
        "apiVersion": "etcdconfig.io/v1alpha1",
        "kind": "Config",
        "metadata": {
            "name": "payments",
            "namespace": "prod",
            "labels": labels or {},
            "annotations": annotations or {},
            "managedFields": [
                {
                    "manager": m,
                    "operation": op,
                    "subresource": sub,
                    "time": "2026-12-07T10:00:00Z",
                    "fieldsV1": fields,
                }
                for m, op, sub, fields in managers or []
            ],
        },
        "spec": {"data": {"retries": 3}},
    }


def test_defect_recommended_instance_label_applied_by_kubectl_is_taken_for_argo_cd() -> None:
    """A Config applied by hand (``kubectl apply``) with the Kubernetes recommended labels
    — ``app.kubernetes.io/instance`` among them, as Kustomize ``commonLabels``, many
    charts and operators set it — and no Argo CD anywhere: the only spec owner is
    ``kubectl-client-side-apply``. Argo CD's own docs say the label is shared ("several
    Helm charts and operators also use this label"), which is why annotation tracking
    became the default. Argo CD always applies with field manager ``argocd-controller``
    (client-side apply too: gitops-engine passes its manager to kubectl's apply), so
    the label alone is no evidence.

    Observed: ``Management('Argo CD', 'Application payments', ...)`` — a live rollback is
    refused with "managed by Argo CD ... Roll back in Git instead" although nothing
    would revert it. Expected: None (or at least not a refusal on the label alone).
    Fix: count ``app.kubernetes.io/instance`` only together with the
    ``argocd-controller`` field manager (any entry, metadata included: Argo CD writes
    the label itself) — or with Argo's last-applied annotation."""
    obj = config(
        labels={
            "app.kubernetes.io/name": "payments",
            "app.kubernetes.io/instance": "payments-prod",
            "app.kubernetes.io/part-of": "checkout",
        },
        annotations={LAST_APPLIED: "{}"},
        managers=[("kubectl-client-side-apply", "Update", "", {**SPEC, "f:metadata": {}})],
    )
    assert management(obj) is None


def test_defect_argo_cd_custom_instance_label_key_is_not_detected() -> None:
    """Argo CD with label tracking and the custom tracking label its documentation uses
    as the example (``application.instanceLabelKey: argocd.argoproj.io/instance``), on
    a Config that Argo CD adopted with client-side apply: an Update only owns the
    fields it changed, so ``argocd-controller`` owns the label and kubectl's
    last-applied annotation, not ``spec`` (the spec in Git was already the live one).

    Observed: None — a live rollback goes through, and Argo CD (self-heal) reverts it
    at its next sync, recording Git's data again. Expected: Argo CD. Fix: treat any
    label or annotation in Argo CD's own ``argocd.argoproj.io/`` namespace, and any
    ``argocd-controller`` managedFields entry (not only one owning spec), as Argo CD's
    mark."""
    obj = config(
        labels={"argocd.argoproj.io/instance": "payments-app"},
        annotations={LAST_APPLIED: "{}"},
        managers=[
            ("kubectl-client-side-apply", "Update", "", SPEC),
            (
                "argocd-controller",
                "Update",
                "",
                {
                    "f:metadata": {
                        "f:annotations": {f"f:{LAST_APPLIED}": {}},
                        "f:labels": {"f:argocd.argoproj.io/instance": {}},
                    }
                },
            ),
        ],
    )
    managed = management(obj)
    assert managed is not None and managed.tool == "Argo CD", managed


def test_flux_labels_win_over_a_chart_instance_label() -> None:
    """helm-controller: Helm's release annotation and the chart's instance label, plus
    Flux's own labels: Flux's HelmRelease is named (held)."""
    obj = config(
        labels={
            "helm.toolkit.fluxcd.io/name": "cfg",
            "helm.toolkit.fluxcd.io/namespace": "flux-system",
            "app.kubernetes.io/instance": "cfg",
            "app.kubernetes.io/managed-by": "Helm",
        },
        annotations={"meta.helm.sh/release-name": "cfg"},
        managers=[("helm-controller", "Update", "", SPEC)],
    )
    assert management(obj) == Management(
        "Flux",
        "HelmRelease flux-system/cfg",
        ("label helm.toolkit.fluxcd.io/name=cfg", "field manager helm-controller"),
    )


def test_argo_server_side_apply_by_field_manager_alone() -> None:
    """Argo CD (annotation tracking off, custom label) with ServerSideApply=true: the
    Apply entry owns every field of the manifest, spec included (held)."""
    obj = config(
        labels={"example.com/app": "x"},
        managers=[("argocd-controller", "Apply", "", SPEC)],
    )
    assert management(obj) == Management(
        "Argo CD", "an Application", ("field manager argocd-controller",)
    )


def test_etcdconfig_cli_and_operator_managers_are_not_gitops() -> None:
    obj = config(
        managers=[
            ("etcdconfig-cli", "Update", "", SPEC),
            ("etcdconfig", "Update", "status", {"f:status": {}}),
            ("etcdconfig", "Update", "", {"f:metadata": {"f:finalizers": {}}}),
        ]
    )
    assert management(obj) is None


def test_origin_rollback_only_for_the_data_it_names() -> None:
    """The rollback annotation counts only for exactly the data it names (held)."""
    import json

    from etcdconfig.canonical import checksum

    data = {"retries": 3}
    note = json.dumps({"fromVersion": 1, "checksum": checksum(data)})
    meta = {"annotations": {"etcdconfig.io/rollback": note}}
    assert origin_of(meta, checksum(data)) == {"kind": "rollback", "fromVersion": 1}
    assert origin_of(meta, checksum({"retries": 4})) == {"kind": "apply"}


def test_defect_flux_object_with_apply_disabled_is_taken_as_reverting() -> None:
    """Flux applies nothing to an object annotated ``kustomize.toolkit.fluxcd.io/reconcile:
    disabled``, and never updates one annotated ``kustomize.toolkit.fluxcd.io/ssa:
    IfNotPresent`` (create-only): a live rollback of either is not reverted.

    Observed: both are reported as managed by Flux (the rollback is refused).
    Expected: None (not a Config Flux keeps in step with Git)."""
    labels = {
        "kustomize.toolkit.fluxcd.io/name": "apps",
        "kustomize.toolkit.fluxcd.io/namespace": "flux-system",
    }
    flux_spec = [("kustomize-controller", "Apply", "", SPEC)]
    disabled = config(
        labels=labels,
        annotations={"kustomize.toolkit.fluxcd.io/reconcile": "disabled"},
        managers=flux_spec,
    )
    create_only = config(
        labels=labels,
        annotations={"kustomize.toolkit.fluxcd.io/ssa": "IfNotPresent"},
        managers=flux_spec,
    )
    assert (management(disabled), management(create_only)) == (None, None)
