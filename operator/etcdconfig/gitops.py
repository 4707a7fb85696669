"""Which GitOps tool, if any, keeps a Config in step with Git.

A live change to such a Config (``etcdconfig rollback`` without ``--print``) lasts only
until the tool's next reconcile, which applies Git's version again: a rollback that
silently undoes itself, recorded as two versions. :func:`management` reads the marks
the tools leave on what they apply, from the object alone (no access to the tools'
own objects is needed):

==========================  =======================================================
Flux kustomize-controller   labels ``kustomize.toolkit.fluxcd.io/name`` and
                            ``/namespace``; field manager ``kustomize-controller``
Flux helm-controller        labels ``helm.toolkit.fluxcd.io/name`` and
                            ``/namespace``; field manager ``helm-controller``
Argo CD                     annotation ``argocd.argoproj.io/tracking-id`` (annotation
                            tracking, the default since 3.0); label
                            ``app.kubernetes.io/instance`` without Helm's
                            ``meta.helm.sh/release-name`` annotation (label tracking:
                            Helm itself sets both, Argo CD's rendering only the
                            label); field manager ``argocd-controller`` (server-side
                            apply)
==========================  =======================================================

Field managers count only for entries that own part of ``spec`` (a tool that wrote
only status or metadata does not revert data). A Config that a tool once managed and
no longer does (a Kustomization deleted with ``prune: false``) keeps the marks: the
refusal names them, and ``--force`` is the way past it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

FLUX_KUSTOMIZE = ("kustomize.toolkit.fluxcd.io/name", "kustomize.toolkit.fluxcd.io/namespace")
FLUX_HELM = ("helm.toolkit.fluxcd.io/name", "helm.toolkit.fluxcd.io/namespace")
ARGO_TRACKING_ID = "argocd.argoproj.io/tracking-id"
ARGO_INSTANCE = "app.kubernetes.io/instance"
HELM_RELEASE = "meta.helm.sh/release-name"

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


def _spec_managers(meta: dict[str, Any]) -> list[str]:
    out = []
    for entry in meta.get("managedFields") or []:
        if not isinstance(entry, dict) or entry.get("subresource"):
            continue
        fields = entry.get("fieldsV1")
        if isinstance(fields, dict) and "f:spec" in fields:
            out.append(str(entry.get("manager", "")))
    return out


def management(obj: dict[str, Any]) -> Management | None:
    """The GitOps tool that manages ``obj``, or None. Labels and annotations name the
    tool's object; a field manager alone names only the tool."""
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    managers = _spec_managers(meta)

    def by_manager(name: str) -> list[str]:
        return [f"field manager {name}"] if name in managers else []

    for keys, manager, kind in (
        (FLUX_KUSTOMIZE, "kustomize-controller", "Kustomization"),
        (FLUX_HELM, "helm-controller", "HelmRelease"),
    ):
        name_key, ns_key = keys
        if name_key in labels:
            ns = labels.get(ns_key) or meta.get("namespace") or ""
            owner = f"{kind} {ns}/{labels[name_key]}" if ns else f"{kind} {labels[name_key]}"
            evidence = [f"label {name_key}={labels[name_key]}", *by_manager(manager)]
            return Management("Flux", owner, tuple(evidence))

    if ARGO_TRACKING_ID in annotations:
        app = str(annotations[ARGO_TRACKING_ID]).split(":", 1)[0]
        evidence = [f"annotation {ARGO_TRACKING_ID}", *by_manager("argocd-controller")]
        return Management("Argo CD", f"Application {app}", tuple(evidence))
    if ARGO_INSTANCE in labels and HELM_RELEASE not in annotations:
        evidence = [f"label {ARGO_INSTANCE}={labels[ARGO_INSTANCE]}"]
        evidence += by_manager("argocd-controller")
        return Management("Argo CD", f"Application {labels[ARGO_INSTANCE]}", tuple(evidence))

    for manager in managers:
        if manager in MANAGERS:
            tool, kind = MANAGERS[manager]
            article = "an" if kind[0] in "AEIOU" else "a"
            return Management(tool, f"{article} {kind}", (f"field manager {manager}",))
    return None
