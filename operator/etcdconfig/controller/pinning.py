"""The pod webhook (``/pin-pod``): a pod created from a pinned template mounts the exact
version its template names (:mod:`etcdconfig.rollout` has the rules).

For each pin ``etcdconfig.io/version.<config>: "N"`` on the new pod, the Config must
exist in the pod's namespace and publish with ``versioned: true``; then every reference
to its plain ConfigMap becomes ``<name>-v<N>``. That ConfigMap is made to exist first:
the collection may have deleted it (nothing referred to it, it was beyond ``keep``) and
a pod from an old ReplicaSet brings it back — it is created again from the version's
record, which must verify (its data against its checksum).

It fails open: a pin it cannot honour (no such Config, not versioned, the version not
in the store, etcd unreachable) leaves that reference as it is, and the pod starts with
the plain ConfigMap — counted in ``etcdconfig_pod_pins_total{result}`` and logged with
the reason; the registration's ``failurePolicy: Ignore`` does the same when the
operator does not answer at all. Never raises into the admission (that would refuse the
pod). Messages name Configs, versions and ConfigMaps, never data.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from etcdconfig import metrics, rollout
from etcdconfig.controller import publish, versioned
from etcdconfig.errors import EtcdConfigError, InvalidConfig
from etcdconfig.reconcile import parse_spec

if TYPE_CHECKING:
    from etcdconfig.controller.runtime import Runtime

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Version:
    """What a versioned ConfigMap is made from: a version and its data's checksum."""

    version: int
    checksum: str


async def pin(rt: Runtime, pod: dict[str, Any], *, dryrun: bool) -> dict[str, Any] | None:
    """The pod's new ``spec`` and annotations (``{"spec": …, "annotations": …}``), or
    None when nothing is to change."""
    meta = pod.get("metadata") or {}
    ns = str(meta.get("namespace") or "")
    wanted = rollout.pins(meta.get("annotations"))
    names: dict[str, str] = {}
    for config, version in sorted(wanted.items()):
        try:
            target = await _versioned_target(rt, ns, config, version, dryrun=dryrun)
        except (EtcdConfigError, OSError) as exc:
            target = None
            reason = f"{type(exc).__name__}: {exc}"
        else:
            reason = "" if isinstance(target, tuple) else str(target)
        if not isinstance(target, tuple):
            metrics.POD_PINS.labels("skipped").inc()
            log.warning(
                "pod not pinned to its version: it starts with the plain ConfigMap",
                extra={"config": f"{ns}/{config}", "version": version, "reason": reason,
                       "pod": meta.get("name") or meta.get("generateName") or ""},
            )  # fmt: skip
            continue
        plain, versioned_name = target
        names[plain] = versioned_name
    if not names:
        return None
    spec, done = rollout.rewrite(dict(pod.get("spec") or {}), names)
    if not done:
        return None
    metrics.POD_PINS.labels("pinned").inc(len(done))
    annotations = {
        **(meta.get("annotations") or {}),
        rollout.PINNED_TO_ANNOTATION: rollout.pinned_to({k: names[k] for k in done}),
    }
    return {"spec": spec, "annotations": annotations}


async def _versioned_target(
    rt: Runtime, ns: str, config: str, version: int, *, dryrun: bool
) -> tuple[str, str] | str:
    """(plain ConfigMap, versioned ConfigMap) for the pin, the latter holding exactly
    that version (made to, unless a dry run); or why the pin cannot be honoured. A dry
    run judges as the real request would and writes nothing."""
    obj = await rt.kube.get_config(ns, config)
    if obj is None:
        return f"no Config {ns}/{config}"
    try:
        spec = parse_spec(obj.get("spec"))
    except InvalidConfig as exc:
        return f"Config {ns}/{config} has an invalid spec: {exc}"
    target = spec.publish.config_map if spec.publish else None
    if target is None or not target.versioned:
        return f"Config {ns}/{config} does not publish versioned ConfigMaps"
    assert rt.store is not None
    record = await rt.store.get_version(ns, config, version)  # verifies data vs checksum
    if record.uid != obj["metadata"]["uid"] or not isinstance(record.data, dict):
        return f"version {version} of {ns}/{config} belongs to another incarnation"
    name = versioned.versioned_name(target.name, version)
    content = _content(record.data, target, f"{ns}/{name}")
    if isinstance(content, str):
        return content
    for _ in range(publish.ATTEMPTS):
        cm = await rt.kube.read_config_map(ns, name)
        if cm is None:
            if dryrun:
                return target.name, name  # it would be published again
            body = versioned.new_config_map(
                obj, target, _Version(version, record.checksum), content
            )
            body["metadata"]["annotations"][rollout.PINNED_AT_ANNOTATION] = _now()
            if await rt.kube.create_config_map(ns, body):
                log.info(
                    "versioned ConfigMap published again for a pod pinned to it",
                    extra={"config": f"{ns}/{config}", "configMap": f"{ns}/{name}",
                           "version": version},
                )  # fmt: skip
                return target.name, name
            continue  # created meanwhile: judge it
        cm_meta = cm.get("metadata") or {}
        if publish._ownership(cm_meta, obj["metadata"], "") is not None:
            return f"ConfigMap {ns}/{name} was not published by Config {ns}/{config}"
        if not _holds(cm, version, record.checksum, content):
            return f"ConfigMap {ns}/{name} does not hold version {version} of {ns}/{config}"
        if dryrun:
            return target.name, name
        # the touch: a collection that listed the referrers before this pod exists fails
        # its delete precondition, and a later one leaves it alone for PIN_GRACE
        touched = await rt.kube.patch_config_map(
            ns,
            name,
            {"metadata": {"annotations": {rollout.PINNED_AT_ANNOTATION: _now()}}},
            resource_version=str(cm_meta.get("resourceVersion") or ""),
        )
        if touched:
            return target.name, name
    return f"ConfigMap {ns}/{name} kept changing; the pod is not pinned"


def _holds(cm: dict[str, Any], version: int, checksum: str, content: dict[str, str]) -> bool:
    """The versioned ConfigMap of exactly this version: labelled and annotated with it,
    its data's checksum the record's, immutable, holding the version's content."""
    return versioned.labelled(cm, _Version(version, checksum)) and (
        dict(cm.get("data") or {}) == content
    )


def _content(data: dict[str, Any], target: Any, where: str) -> dict[str, str] | str:
    if target.format == "flat":
        flat = publish.flat_content(data, where)
        return flat if isinstance(flat, dict) else flat.message
    return publish.json_content(data, target.key)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
