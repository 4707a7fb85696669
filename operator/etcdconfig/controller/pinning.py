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
    """(plain ConfigMap, versioned ConfigMap) for the pin, the latter made to exist; or
    why the pin cannot be honoured."""
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
    name = versioned.versioned_name(target.name, version)
    cm = await rt.kube.read_config_map(ns, name)
    if cm is not None:
        if publish._ownership(cm.get("metadata") or {}, obj["metadata"], "") is not None:
            return f"ConfigMap {ns}/{name} was not published by Config {ns}/{config}"
        return target.name, name
    if dryrun:
        return target.name, name  # a dry run creates nothing
    assert rt.store is not None
    record = await rt.store.get_version(ns, config, version)  # verifies data vs checksum
    if record.uid != obj["metadata"]["uid"] or not isinstance(record.data, dict):
        return f"version {version} of {ns}/{config} belongs to another incarnation"
    content: dict[str, str] | publish.Refusal
    if target.format == "flat":
        content = publish.flat_content(record.data, f"{ns}/{name}")
    else:
        content = publish.json_content(record.data, target.key)
    if not isinstance(content, dict):
        return content.message
    body = versioned.new_config_map(obj, target, _Version(version, record.checksum), content)
    if await rt.kube.create_config_map(ns, body):
        log.info(
            "versioned ConfigMap created again for a pod pinned to it",
            extra={"config": f"{ns}/{config}", "configMap": f"{ns}/{name}", "version": version},
        )
    return target.name, name
