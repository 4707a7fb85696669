"""Which GitOps tool, if any, keeps a Config in step with Git.

A live change to such a Config (``etcdconfig rollback`` without ``--print``) lasts only
until the tool's next reconcile, which applies Git's version again: a rollback that
silently undoes itself, recorded as two versions. :func:`management` reads the marks
the tools leave on what they apply, from the object alone (no access to the tools'
own objects is needed):

==========================  =======================================================
Flux kustomize-controller   labels ``kustomize.toolkit.fluxcd.io/name`` and
                            ``/namespace``; field manager ``kustomize-controller``
                            owning part of ``spec``
Flux helm-controller        labels ``helm.toolkit.fluxcd.io/name`` and
                            ``/namespace``; field manager ``helm-controller``
                            owning part of ``spec``
Argo CD                     annotation ``argocd.argoproj.io/tracking-id`` (annotation
                            tracking, the default since 3.0); any other label or
                            annotation under ``argocd.argoproj.io/`` (a custom
                            tracking label such as ``argocd.argoproj.io/instance``,
                            sync options); any ``managedFields`` entry of
                            ``argocd-controller`` (its server-side apply, and the
                            client-side apply that adopts an object, which may own
                            only metadata); the recommended label
                            ``app.kubernetes.io/instance`` only beside that field
                            manager (Kustomize, Helm charts and people set it too)
==========================  =======================================================

Flux's per-object opt-outs count as not managed: ``kustomize.toolkit.fluxcd.io/reconcile:
disabled`` (Flux no longer applies the object) and ``kustomize.toolkit.fluxcd.io/ssa:
IfNotPresent`` (it only creates it when missing), as a label or an annotation.

A Config that a tool once managed and no longer does (a Kustomization deleted with
``prune: false``) keeps the marks: the refusal names them, and ``--force`` is the way
past it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

FLUX_KUSTOMIZE = ("kustomize.toolkit.fluxcd.io/name", "kustomize.toolkit.fluxcd.io/namespace")
FLUX_HELM = ("helm.toolkit.fluxcd.io/name", "helm.toolkit.fluxcd.io/namespace")
ARGO_TRACKING_ID = "argocd.argoproj.io/tracking-id"
ARGO_INSTANCE = "app.kubernetes.io/instance"
HELM_RELEASE = "meta.helm.sh/release-name"
ARGO_PREFIX = "argocd.argoproj.io/"
ARGO_CUSTOM_INSTANCE = "argocd.argoproj.io/instance"  # the docs' custom tracking label
FLUX_RECONCILE = "kustomize.toolkit.fluxcd.io/reconcile"
FLUX_SSA = "kustomize.toolkit.fluxcd.io/ssa"

#: field manager -> (tool, kind of the tool's object that applies it)
MANAGERS = {
    "kustomize-controller": ("Flux", "Kustomization"),
    "helm-controller": ("Flux", "HelmRelease"),
    "argocd-controller": ("Argo CD", "Application"),
}


@dataclass(frozen=True)
class Management:
    """``tool`` (``Flux`` or ``Argo CD``) applies the object through ``owner`` (e.g.
    ``Kustomization flux-system/apps``, or just the kind when only the field manager
    says so); ``evidence`` lists the marks found, as they would be searched for."""

    tool: str
    owner: str
    evidence: tuple[str, ...] = field(default=())

    def describe(self) -> str:
        return f"{self.tool} ({self.owner}; {', '.join(self.evidence)})"


def _managers(meta: dict[str, Any], *, spec_only: bool) -> list[str]:
    out = []
    for entry in meta.get("managedFields") or []:
        if not isinstance(entry, dict) or entry.get("subresource"):
            continue
        fields = entry.get("fieldsV1")
        if not spec_only or (isinstance(fields, dict) and "f:spec" in fields):
            out.append(str(entry.get("manager", "")))
    return out


def _flux_opted_out(labels: dict[str, Any], annotations: dict[str, Any]) -> str | None:
    """Flux's per-object opt-outs: it never applies the object again (``reconcile:
    disabled``), or only creates it when missing (``ssa: IfNotPresent``)."""
    marks = {**labels, **annotations}
    if str(marks.get(FLUX_RECONCILE, "")).lower() == "disabled":
        return f"{FLUX_RECONCILE}: disabled"
    if str(marks.get(FLUX_SSA, "")).lower() == "ifnotpresent":
        return f"{FLUX_SSA}: IfNotPresent"
    return None


def management(obj: dict[str, Any]) -> Management | None:
    """The GitOps tool that would revert a live change of ``obj``, or None. Labels and
    annotations name the tool's object; a field manager alone names only the tool."""
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    spec_managers = _managers(meta, spec_only=True)
    any_managers = _managers(meta, spec_only=False)

    def by_manager(name: str, managers: list[str]) -> list[str]:
        return [f"field manager {name}"] if name in managers else []

    flux_off = _flux_opted_out(labels, annotations)
    for keys, manager, kind in (
        (FLUX_KUSTOMIZE, "kustomize-controller", "Kustomization"),
        (FLUX_HELM, "helm-controller", "HelmRelease"),
    ):
        name_key, ns_key = keys
        if name_key in labels and flux_off is None:
            ns = labels.get(ns_key) or meta.get("namespace") or ""
            owner = f"{kind} {ns}/{labels[name_key]}" if ns else f"{kind} {labels[name_key]}"
            evidence = [f"label {name_key}={labels[name_key]}", *by_manager(manager, spec_managers)]
            return Management("Flux", owner, tuple(evidence))

    argo = by_manager("argocd-controller", any_managers)
    if ARGO_TRACKING_ID in annotations:
        app = str(annotations[ARGO_TRACKING_ID]).split(":", 1)[0]
        evidence = [f"annotation {ARGO_TRACKING_ID}", *argo]
        return Management("Argo CD", f"Application {app}", tuple(evidence))
    argo_marks = sorted(
        f"{what} {key}" + (f"={value}" if what == "label" else "")
        for what, marks in (("label", labels), ("annotation", annotations))
        for key, value in marks.items()
        if str(key).startswith(ARGO_PREFIX)
    )
    instance = labels.get(ARGO_INSTANCE)
    if isinstance(instance, str) and argo and HELM_RELEASE not in annotations:
        # the recommended label alone is set by Kustomize, Helm charts, people: only with
        # Argo CD's field manager beside it is it Argo CD's label tracking
        evidence = [f"label {ARGO_INSTANCE}={instance}", *argo]
        return Management("Argo CD", f"Application {instance}", tuple(evidence))
    if argo_marks or argo:
        custom = labels.get(ARGO_CUSTOM_INSTANCE)
        owner = f"Application {custom}" if custom else "an Application"
        return Management("Argo CD", owner, tuple([*argo_marks, *argo]))

    for manager in spec_managers:
        if manager in MANAGERS and (MANAGERS[manager][0] != "Flux" or flux_off is None):
            tool, kind = MANAGERS[manager]
            article = "an" if kind[0] in "AEIOU" else "a"
            return Management(tool, f"{article} {kind}", (f"field manager {manager}",))
    return None
