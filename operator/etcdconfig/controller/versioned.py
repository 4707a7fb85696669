"""Versioned, immutable ConfigMaps: ``<name>-v<N>`` for each recorded version N, and their
garbage collection (``spec.publish.configMap.versioned``).

Publishing: once the mutable ConfigMap carries the head, the head's versioned ConfigMap
is made to exist: created ``immutable: true`` with the same content (format, key) from a
record that verifies against the head, the labels ``app.kubernetes.io/managed-by:
etcdconfig``, ``etcdconfig.io/config`` and ``etcdconfig.io/version``, the version and
checksum annotations, and a controller ownerReference to the Config (so it goes with the
Config). The ownership rules are the mutable ConfigMap's: one that this Config did not
create is never touched. One of ours whose content is not the version's (it can only have
been deleted and re-created by someone: an immutable ConfigMap cannot change) is deleted
— only as it was read — and created again.

Collection: the versioned ConfigMaps of this Config (by label, then by ownerReference
uid and name) beyond the newest ``keep``, never the head's, are deleted when nothing in
the namespace refers to them. A reference is:

- a ConfigMap name in a pod spec or pod template — volumes (``configMap``, projected
  ``sources[].configMap``), ``envFrom[].configMapRef``, ``env[].valueFrom.configMapKeyRef``
  — of a Pod, ReplicaSet (the Deployment's revision history: Kubernetes deletes
  ReplicaSets beyond ``revisionHistoryLimit`` itself), ControllerRevision (StatefulSets'
  and DaemonSets' history, whose ``data`` holds the template), Deployment, StatefulSet,
  DaemonSet, Job or CronJob;
- a pod-template or pod annotation ``etcdconfig.io/version.<config>: "N"``: a pod made from
  that template is pinned to ``<name>-vN`` (the rollouts' pinning), even while its
  spec names only the plain ConfigMap.

Each deletion carries the ConfigMap's uid and resourceVersion as preconditions. A
collection runs after a new versioned ConfigMap was created, and again on later
reconciles while an earlier one kept a ConfigMap only because something referred to it.
Messages name ConfigMaps and versions, never data.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from etcdconfig import metrics
from etcdconfig.controller import publish as mutable
from etcdconfig.rollout import PIN_GRACE, PIN_PREFIX, PINNED_AT_ANNOTATION, parse_pin

if TYPE_CHECKING:
    from collections.abc import Iterator

    from etcdconfig.controller.publish import Refusal
    from etcdconfig.controller.runtime import Runtime
    from etcdconfig.models import ConfigMapTarget
    from etcdconfig.store import Head

log = logging.getLogger(__name__)

VERSION_LABEL = "etcdconfig.io/version"

#: (group/version, plural) of every kind whose objects may refer to a ConfigMap
REFERRERS = (
    ("v1", "pods"),
    ("apps/v1", "replicasets"),
    ("apps/v1", "controllerrevisions"),
    ("apps/v1", "deployments"),
    ("apps/v1", "statefulsets"),
    ("apps/v1", "daemonsets"),
    ("batch/v1", "jobs"),
    ("batch/v1", "cronjobs"),
)
_REF_KEYS = ("configMap", "configMapRef", "configMapKeyRef")

# uids of Configs whose last collection left nothing to do: collected again only when a
# new versioned ConfigMap is created (not on every reconcile). Absent (the operator's
# start, a ConfigMap kept because something referred to it, a failed collection): the
# next reconcile collects.
_clean: set[str] = set()


def versioned_name(target: str, version: int) -> str:
    return f"{target}-v{version}"


def references(obj: Any, pins: dict[str, str]) -> Iterator[str]:
    """The ConfigMap names ``obj`` (any object, walked whole) refers to: by name where a
    pod spec names one, and ``<pins[config]>-v<N>`` for each pin annotation
    ``etcdconfig.io/version.<config>: "N"`` of a Config in ``pins`` (config -> the
    ConfigMap it publishes)."""
    stack = [obj]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            for key, value in node.items():
                if key in _REF_KEYS and isinstance(value, dict):
                    name = value.get("name")
                    if isinstance(name, str) and name:
                        yield name
                if key == "annotations" and isinstance(value, dict):
                    for akey, avalue in value.items():
                        if not isinstance(akey, str) or not akey.startswith(PIN_PREFIX):
                            continue
                        target = pins.get(akey[len(PIN_PREFIX) :])
                        version = parse_pin(avalue)
                        if target is not None and version is not None:
                            yield versioned_name(target, version)
                if isinstance(value, (dict, list)):
                    stack.append(value)


@dataclass(frozen=True)
class Collected:
    deleted: list[str]
    #: kept because something refers to it, a pod was pinned to it lately, or its
    #: deletion lost its precondition: the next reconcile collects again
    kept_referenced: list[str]


async def ensure(
    rt: Runtime, body: dict[str, Any], target: ConfigMapTarget, head: Head
) -> Refusal | None:
    """Make the head's versioned ConfigMap exist with the head's content; then collect."""
    meta = body["metadata"]
    ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
    cm_name = versioned_name(target.name, head.version)
    where = f"{ns}/{cm_name}"
    created = False
    for _ in range(mutable.ATTEMPTS):
        cm = await rt.kube.read_config_map(ns, cm_name)
        cm_meta = (cm or {}).get("metadata") or {}
        if cm is not None:
            refusal = mutable._ownership(cm_meta, meta, where)
            if refusal is not None:
                return refusal
            if VERSION_LABEL not in (cm_meta.get("labels") or {}):
                return mutable.Refusal(
                    "ConfigMapNotVersioned",
                    f"ConfigMap {where} was published by this Config but is no versioned "
                    f"ConfigMap (no {VERSION_LABEL} label: an earlier plain ConfigMap of that "
                    "name); it is left untouched: delete it, or choose another "
                    "spec.publish.configMap.name",
                    stalled=True,
                )
            if labelled(cm, head) and target.format == "json":
                # json is judged by the checksum of the key's JSON: no etcd read
                data = dict(cm.get("data") or {})
                if set(data) == {target.key} and (
                    mutable._content_checksum(data[target.key]) == head.checksum
                ):
                    break
        content = await mutable._verified_content(rt, ns, name, target, head)
        if not isinstance(content, dict):
            return content
        if cm is None:
            if await rt.kube.create_config_map(ns, new_config_map(body, target, head, content)):
                created = True
                break
            continue  # created meanwhile: read it and judge it
        if labelled(cm, head) and dict(cm.get("data") or {}) == content:
            break
        if cm_meta.get("deletionTimestamp"):
            return mutable.Refusal(
                "ConfigMapTerminating",
                f"ConfigMap {where} is being deleted; it is created again once it is gone",
                stalled=False,
            )
        if await rt.kube.delete_config_map(
            ns,
            cm_name,
            uid=str(cm_meta.get("uid")),
            resource_version=str(cm_meta.get("resourceVersion")),
        ):
            metrics.PUBLISH_REPAIRS.inc()
            log.warning(
                "versioned ConfigMap did not hold its version; deleted to be re-created",
                extra={"config": f"{ns}/{name}", "configMap": where, "version": head.version},
            )
        # read again: gone (create it) or changed (judge it again)
    else:
        return mutable.Refusal(
            "ConfigMapConflict",
            f"ConfigMap {where} changed during each of {mutable.ATTEMPTS} attempts to "
            "publish it; retrying",
            stalled=False,
        )
    if created or uid not in _clean:
        _clean.discard(uid)  # a failing collection is tried again on the next reconcile
        done = await collect(rt, body, target, head)
        if not done.kept_referenced:
            _clean.add(uid)
    return None


def labelled(cm: dict[str, Any], head: VersionLike) -> bool:
    """Annotated and labelled with ``head``'s version and checksum, and immutable."""
    cm_meta = cm.get("metadata") or {}
    annotations = cm_meta.get("annotations") or {}
    labels = cm_meta.get("labels") or {}
    return (
        annotations.get(mutable.VERSION_ANNOTATION) == str(head.version)
        and annotations.get(mutable.CHECKSUM_ANNOTATION) == str(head.checksum)
        and labels.get(VERSION_LABEL) == str(head.version)
        and cm.get("immutable") is True
    )


class VersionLike(Protocol):
    """A version and its data's checksum: a Head, or what the pod webhook reads."""

    @property
    def version(self) -> int: ...

    @property
    def checksum(self) -> str | None: ...


def new_config_map(
    owner: dict[str, Any], target: ConfigMapTarget, head: VersionLike, content: dict[str, str]
) -> dict[str, Any]:
    """The immutable ConfigMap ``<name>-v<N>`` of ``head``'s version, owned by ``owner``."""
    cm = mutable._new_config_map(owner, target, head, content)  # type: ignore[arg-type]
    cm["metadata"]["name"] = versioned_name(target.name, head.version)
    cm["metadata"]["labels"][VERSION_LABEL] = str(head.version)
    cm["immutable"] = True
    return cm


_VERSION_SUFFIX = re.compile(r"-v([1-9][0-9]*)$")


async def collect(
    rt: Runtime, body: dict[str, Any], target: ConfigMapTarget, head: Head
) -> Collected:
    """Delete this Config's versioned ConfigMaps beyond the newest ``target.keep`` (never
    the head's) that nothing in the namespace refers to."""
    meta = body["metadata"]
    ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
    selector = f"{mutable.MANAGED_BY_LABEL}={mutable.MANAGED_BY},{mutable.CONFIG_LABEL}={name}"
    ours: list[tuple[int, dict[str, Any]]] = []
    for cm in await rt.kube.list_namespaced("v1", "configmaps", ns, selector):
        cm_meta = cm.get("metadata") or {}
        match = _VERSION_SUFFIX.search(str(cm_meta.get("name", "")))
        if match is None or cm_meta["name"] != versioned_name(target.name, int(match[1])):
            continue
        if (cm_meta.get("labels") or {}).get(VERSION_LABEL) != match[1]:
            continue  # not a versioned ConfigMap (e.g. an earlier plain one of that name)
        if mutable._ownership(cm_meta, meta, "") is not None or cm_meta.get("deletionTimestamp"):
            continue  # not this Config's (another uid, or not created by etcdconfig)
        ours.append((int(match[1]), cm))
    ours.sort(key=lambda item: item[0], reverse=True)
    candidates = [(v, cm) for v, cm in ours[target.keep :] if v != head.version]
    if not candidates:
        return Collected([], [])
    pins = await _pins(rt, ns)
    referenced: set[str] = set()
    for group_version, plural in REFERRERS:
        for obj in await rt.kube.list_namespaced(group_version, plural, ns):
            referenced.update(references(obj.get("spec"), pins))
            referenced.update(references(obj.get("data"), pins))
            referenced.update(references({"annotations": _annotations(obj)}, pins))
    deleted, kept, failed = [], [], []
    now = dt.datetime.now(dt.UTC)
    for version, cm in candidates:
        cm_meta = cm["metadata"]
        if cm_meta["name"] in referenced or _pinned_lately(cm_meta, now):
            kept.append(cm_meta["name"])
            continue
        if not await rt.kube.delete_config_map(
            ns,
            cm_meta["name"],
            uid=str(cm_meta.get("uid")),
            resource_version=str(cm_meta.get("resourceVersion")),
        ):
            failed.append(cm_meta["name"])  # changed meanwhile (pinned?): judged next time
        else:
            deleted.append(cm_meta["name"])
            metrics.VERSIONED_CONFIGMAPS_DELETED.inc()
            log.info(
                "versioned ConfigMap deleted: nothing refers to it",
                extra={"config": f"{ns}/{name}", "configMap": f"{ns}/{cm_meta['name']}",
                       "version": version, "uid": uid},
            )  # fmt: skip
    return Collected(deleted, kept + failed)


def _pinned_lately(cm_meta: dict[str, Any], now: dt.datetime) -> bool:
    """The pod webhook pinned a pod to it less than PIN_GRACE seconds ago (that pod may
    not be persisted yet, so no list shows it)."""
    stamp = (cm_meta.get("annotations") or {}).get(PINNED_AT_ANNOTATION)
    try:
        at = dt.datetime.fromisoformat(str(stamp))
    except ValueError:
        return False
    if at.tzinfo is None:
        return False
    return (now - at).total_seconds() < PIN_GRACE


def _annotations(obj: dict[str, Any]) -> dict[str, Any]:
    return dict((obj.get("metadata") or {}).get("annotations") or {})


async def _pins(rt: Runtime, ns: str) -> dict[str, str]:
    """config name -> the ConfigMap it publishes, for every versioned Config in ``ns``
    (what a pin annotation names)."""
    out: dict[str, str] = {}
    for config in await rt.kube.list_configs(ns):
        target = (((config.get("spec") or {}).get("publish") or {}).get("configMap")) or {}
        if target.get("versioned") and isinstance(target.get("name"), str):
            out[config["metadata"]["name"]] = target["name"]
    return out
