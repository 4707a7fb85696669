"""Publish a Config's head into the ConfigMap named by ``spec.publish.configMap``.

The rules:

- **Only ConfigMaps etcdconfig created are written.** A ConfigMap is this Config's
  when it carries the label ``app.kubernetes.io/managed-by: etcdconfig`` *and* a
  controller ownerReference to this very Config (its uid) — both are set when the
  operator creates it, and only then. Any other ConfigMap of that name is never
  modified and never adopted (adopting would hand it to the garbage collector: it
  would be deleted with the Config, keys the operator never wrote included). The
  Config says so instead: ``Published=False``, reason ``ConfigMapNotOwned``, or
  ``ConfigMapOwnedByAnotherConfig`` naming the Config that publishes there.
- **Every write is conditional** on the ``resourceVersion`` that was read, so a
  ConfigMap replaced or changed between the read and the write is read again and
  judged again, never overwritten blindly.
- **What is published is verified**: the record's data must hash to the head's
  checksum, or nothing is written (``IntegrityViolation``).
- **Drift is repaired**: a ConfigMap annotated with the head whose key no longer
  holds the head's content (compared by checksum, so reformatting is not drift) is
  rewritten, counted in ``etcdconfig_publish_repairs_total`` and announced by an
  Event. The resync loop reconciles every Config each ``resync_interval``, which
  bounds how long drift lasts; ConfigMaps are not watched.

- **Two formats** (``spec.publish.configMap.format``): ``json`` (the default) writes
  the whole data as one JSON document under ``key``; ``flat`` writes one key per
  top-level field of the data (strings as they are, everything else as JSON text),
  so ``envFrom`` turns them into environment variables. A top-level field whose name
  is no valid ConfigMap key stops a flat publish (``InvalidConfigMapKey``). Either
  way the ConfigMap carries the head's version and checksum annotations, and keys
  the head no longer has are removed.

- **Duplicate member names are drift**: JSON such as ``{"limit": 1000, "limit": 1}``
  reads differently in different parsers, so it never counts as the head's content.
- **After a retarget, the earlier ConfigMap is left as it is** (at the version it
  carried; the operator may neither list nor delete ConfigMaps): delete it yourself,
  or it goes with the Config (its ownerReference). Deleting it automatically comes
  with the versioned ConfigMaps' garbage collection (it needs ``delete``).

Messages name ConfigMaps, Configs, versions and checksums, never data values.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from etcdconfig import metrics
from etcdconfig.canonical import MAX_SAFE_INTEGER, checksum
from etcdconfig.errors import (
    CorruptRecord,
    EtcdConfigError,
    EtcdPermissionDenied,
    EtcdUnavailable,
    InvalidConfig,
    UnsupportedFormat,
)
from etcdconfig.kube import KubeError
from etcdconfig.models import GROUP, KIND, VERSION
from etcdconfig.reconcile import status_not_published, with_intact

if TYPE_CHECKING:
    from etcdconfig.controller.runtime import Runtime
    from etcdconfig.models import ConfigMapTarget, ConfigSpec
    from etcdconfig.store import Head

log = logging.getLogger(__name__)

VERSION_ANNOTATION = "etcdconfig.io/version"
CHECKSUM_ANNOTATION = "etcdconfig.io/checksum"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "etcdconfig"
CONFIG_LABEL = "etcdconfig.io/config"

NOT_OWNED = "ConfigMapNotOwned"
OWNED_BY_ANOTHER = "ConfigMapOwnedByAnotherConfig"
INTEGRITY = "IntegrityViolation"
INVALID_KEY = "InvalidConfigMapKey"

_CONFIG_MAP_KEY = re.compile(r"^[-._a-zA-Z0-9]{1,253}$")

ATTEMPTS = 3  # reads of the ConfigMap when it keeps changing between our read and write

# (generation, reason) of the last Warning posted per Config uid: with the condition in
# status this keeps the Warning to once per generation even when the resync loop and a
# kopf handler reconcile the same Config at the same moment
_warned: dict[str, tuple[int, str]] = {}


@dataclass(frozen=True)
class Refusal:
    """Why the head is not in the ConfigMap. ``stalled``: only a user's action helps."""

    reason: str
    message: str
    stalled: bool


@dataclass(frozen=True)
class Failure:
    """A publish that did not happen: the status to report and a message for the log."""

    reason: str
    message: str
    status: dict[str, Any]


class _Changed(Exception):
    """The ConfigMap changed between our read and our write: read it again."""


async def publish(
    rt: Runtime, body: dict[str, Any], spec: ConfigSpec, head: Head
) -> Failure | None:
    """Make ``spec.publish.configMap`` carry ``head``. None: done (or nothing to publish)."""
    target = spec.publish.config_map if spec.publish else None
    if target is None or head.version == 0:
        return None
    meta = body["metadata"]
    ns, uid = meta["namespace"], meta["uid"]
    refusal: Refusal | None = None
    try:
        for _ in range(ATTEMPTS):
            try:
                refusal = await _publish_once(rt, body, target, head)
                break
            except _Changed:
                continue
        else:
            refusal = Refusal(
                "ConfigMapConflict",
                f"ConfigMap {ns}/{target.name} changed during each of {ATTEMPTS} attempts "
                "to publish; retrying",
                stalled=False,
            )
        if refusal is None and target.versioned:
            from etcdconfig.controller import versioned

            refusal = await versioned.ensure(rt, body, target, head)
    except KubeError as exc:
        refusal = Refusal("KubernetesAPIError", f"{exc}; retrying", stalled=False)
    except (CorruptRecord, UnsupportedFormat) as exc:
        # the store's own check (store/integrity.py) already names the version and the fix
        refusal = Refusal(
            INTEGRITY, f"{exc}; nothing published to ConfigMap {ns}/{target.name}", True
        )
    except EtcdConfigError as exc:
        reason = (
            "EtcdPermissionDenied"
            if isinstance(exc, EtcdPermissionDenied)
            else "EtcdUnavailable"
            if isinstance(exc, EtcdUnavailable)
            else type(exc).__name__
        )
        refusal = Refusal(reason, f"{exc}; retrying", stalled=False)
    if refusal is None:
        _warned.pop(uid, None)
        return None
    return await _refused(rt, body, target, head, refusal)


async def _publish_once(
    rt: Runtime, body: dict[str, Any], target: ConfigMapTarget, head: Head
) -> Refusal | None:
    assert rt.store is not None
    meta = body["metadata"]
    ns, name = meta["namespace"], meta["name"]
    where = f"{ns}/{target.name}"
    cm = await rt.kube.read_config_map(ns, target.name)
    if cm is None:
        content = await _verified_content(rt, ns, name, target, head)
        if isinstance(content, Refusal):
            return content
        if not await rt.kube.create_config_map(ns, _new_config_map(body, target, head, content)):
            raise _Changed  # created meanwhile (by whom? read it and judge)
        _published(rt, body, target, head, repaired=False)
        return None

    cm_meta = cm.get("metadata") or {}
    refusal = _ownership(cm_meta, meta, where)
    if refusal is not None:
        return refusal
    if cm_meta.get("deletionTimestamp"):
        return Refusal(
            "ConfigMapTerminating",
            f"ConfigMap {where} is being deleted; it is created again once it is gone",
            stalled=False,
        )
    annotations = cm_meta.get("annotations") or {}
    labels = cm_meta.get("labels") or {}
    carries_head = annotations.get(VERSION_ANNOTATION) == str(head.version) and annotations.get(
        CHECKSUM_ANNOTATION
    ) == str(head.checksum)
    current: dict[str, Any] = dict(cm.get("data") or {})
    flat = target.format == "flat"
    # json: judged by the checksum of the key's JSON (reformatting is not drift); flat:
    # judged against the verified head below, as flat text cannot be hashed back
    content_ok = not flat and _content_checksum(current.get(target.key)) == head.checksum
    if carries_head and content_ok and labels.get(CONFIG_LABEL) == name:
        return None  # up to date: nothing is written
    if await _newer_published(rt, ns, name, head, annotations):
        return None  # our head is stale: a newer reconcile published a newer version
    content = await _verified_content(rt, ns, name, target, head)
    if isinstance(content, Refusal):
        return content
    if flat:
        content_ok = current == content
        if carries_head and content_ok and labels.get(CONFIG_LABEL) == name:
            return None
    # a merge patch: null removes the keys of an earlier head (or format) that are gone
    data: dict[str, Any] = {k: None for k in current if k not in content} if flat else {}
    patch = {
        "metadata": {"labels": _labels(name), "annotations": _annotations(head)},
        "data": {**data, **content},
    }
    if not await rt.kube.patch_config_map(
        ns, target.name, patch, resource_version=str(cm_meta.get("resourceVersion") or "")
    ):
        raise _Changed
    repaired = carries_head and not content_ok
    if repaired:
        metrics.PUBLISH_REPAIRS.inc()
        log.warning(
            "published ConfigMap had drifted from the head; rewritten",
            extra={"config": f"{ns}/{name}", "configMap": where, "version": head.version},
        )
    _published(rt, body, target, head, repaired=repaired)
    return None


def _ownership(cm_meta: dict[str, Any], meta: dict[str, Any], where: str) -> Refusal | None:
    """None if this Config's operator created the ConfigMap; else why it must not touch it."""
    controller = next(
        (r for r in cm_meta.get("ownerReferences") or [] if r.get("controller")), None
    )
    by_config = (
        controller is not None
        and controller.get("kind") == KIND
        and str(controller.get("apiVersion", "")).split("/")[0] == GROUP
    )
    if by_config and controller is not None and controller.get("uid") != meta["uid"]:
        owner = f"{meta['namespace']}/{controller.get('name')}"
        if controller.get("name") == meta["name"]:
            return Refusal(
                OWNED_BY_ANOTHER,
                f"ConfigMap {where} is owned by Config {owner} (uid {controller.get('uid')}), "
                "an earlier Config of this name that was deleted; it is published again once "
                "Kubernetes has garbage-collected it",
                stalled=False,
            )
        return Refusal(
            OWNED_BY_ANOTHER,
            f"ConfigMap {where} is owned by Config {owner}; it is left untouched: "
            "a ConfigMap is published by one Config only, choose another "
            "spec.publish.configMap.name",
            stalled=True,
        )
    if by_config and (cm_meta.get("labels") or {}).get(MANAGED_BY_LABEL) == MANAGED_BY:
        return None
    return Refusal(
        NOT_OWNED,
        f"ConfigMap {where} exists and was not created by etcdconfig (it lacks the label "
        f"{MANAGED_BY_LABEL}={MANAGED_BY} or a controller ownerReference to this Config); "
        "it is left untouched: delete it, or choose another spec.publish.configMap.name",
        stalled=True,
    )


async def _newer_published(
    rt: Runtime, ns: str, name: str, head: Head, annotations: dict[str, Any]
) -> bool:
    """True if the ConfigMap carries a newer version than ``head`` and the store
    confirms one (versions of one uid only grow); a made-up annotation is not trusted."""
    assert rt.store is not None
    try:
        annotated = int(annotations.get(VERSION_ANNOTATION) or 0)
    except ValueError:
        return False
    if annotated <= head.version:
        return False
    fresh = await rt.store.head(ns, name)
    return fresh is not None and fresh.uid == head.uid and fresh.version >= annotated


async def _verified_content(
    rt: Runtime, ns: str, name: str, target: ConfigMapTarget, head: Head
) -> dict[str, str] | Refusal:
    """The head's data as the ConfigMap holds it (its ``data``), from a record that verifies.

    The store's read verifies the record (its data against its checksum, the stored
    bytes against the head's ``recordChecksum``) and raises ``CorruptRecord``; the
    checks here hold the record to the head this reconcile acted on."""
    assert rt.store is not None
    record = await rt.store.get_version(
        ns, name, head.version, expected_record_checksum=head.record_checksum
    )
    data = record.raw.get("data")
    problem = None
    if record.version != head.version or record.uid != head.uid:
        problem = (
            f"the record stored as version {head.version} is version {record.version} "
            f"of uid {record.uid}"
        )
    elif head.checksum is None or record.checksum != head.checksum:
        problem = (
            f"version {head.version} has checksum {record.checksum}, the head says {head.checksum}"
        )
    elif not isinstance(data, dict):
        problem = f"version {head.version} holds no JSON object"
    else:
        try:
            actual = checksum(data)
        except InvalidConfig:
            actual = "no canonical form"
        if actual != head.checksum:
            problem = f"the data of version {head.version} hashes to {actual}, not {head.checksum}"
    if problem is not None:
        return Refusal(
            INTEGRITY,
            f"{problem}; nothing published to ConfigMap {ns}/{target.name}: "
            f"run `etcdconfig verify {ns}/{name}` and repair the store",
            stalled=True,
        )
    assert isinstance(data, dict)  # checked above
    if target.format == "flat":
        return flat_content(data, f"{ns}/{target.name}")
    return json_content(data, target.key)


def json_content(data: dict[str, Any], key: str) -> dict[str, str]:
    """Format json: the whole data as one JSON document (indented, keys sorted)."""
    return {key: json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"}


def flat_content(data: dict[str, Any], where: str = "") -> dict[str, str] | Refusal:
    """One ConfigMap key per top-level field: strings as they are, numbers, booleans and
    null as their JSON text, objects and arrays as compact JSON (keys sorted)."""
    bad = sorted(k for k in data if not _CONFIG_MAP_KEY.match(k))
    if bad:
        shown = ", ".join(json.dumps(k, ensure_ascii=False) for k in bad[:5])
        return Refusal(
            INVALID_KEY,
            f"publish.configMap.format is flat, but the top-level field(s) {shown} of data "
            "are no valid ConfigMap key (letters, digits, '-', '_', '.'); nothing published "
            f"to ConfigMap {where}: rename them, or use format json",
            stalled=True,
        )
    return {
        k: v
        if isinstance(v, str)
        else json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        for k, v in data.items()
    }


class _DuplicateName(ValueError):
    """A JSON object names a member twice."""


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _DuplicateName(key)
        obj[key] = value
    return obj


def _parse_int(text: str) -> int | float:
    # as etcdconfig.canonical.loads: integer digits beyond 2^53 are the float they came from
    n = int(text)
    return float(n) if abs(n) > MAX_SAFE_INTEGER else n


def _content_checksum(text: Any) -> str | None:
    """The checksum of the JSON in a ConfigMap key; None if it holds no JSON, or JSON
    that parsers read differently: an object naming a member twice (Python keeps the
    last, others the first or refuse it), which is drift, never the head's data."""
    if not isinstance(text, str):
        return None
    try:
        return checksum(json.loads(text, parse_int=_parse_int, object_pairs_hook=_unique_members))
    except (ValueError, InvalidConfig, RecursionError):
        return None


def _labels(name: str) -> dict[str, str]:
    return {MANAGED_BY_LABEL: MANAGED_BY, CONFIG_LABEL: name}


def _annotations(head: Head) -> dict[str, str]:
    return {VERSION_ANNOTATION: str(head.version), CHECKSUM_ANNOTATION: str(head.checksum)}


def _new_config_map(
    owner: dict[str, Any], target: ConfigMapTarget, head: Head, content: dict[str, str]
) -> dict[str, Any]:
    meta = owner["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": target.name,
            "namespace": meta["namespace"],
            "labels": _labels(meta["name"]),
            "annotations": _annotations(head),
            "ownerReferences": [
                {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": KIND,
                    "name": meta["name"],
                    "uid": meta["uid"],
                    "controller": True,
                    "blockOwnerDeletion": False,
                }
            ],
        },
        "data": content,
    }


def _published(
    rt: Runtime, body: dict[str, Any], target: ConfigMapTarget, head: Head, *, repaired: bool
) -> None:
    _warned.pop(body["metadata"]["uid"], None)
    rt.kube.event_soon(
        body,
        "Normal",
        "Published",
        f"version {head.version} published to ConfigMap {target.name}"
        + (" (repaired drift)" if repaired else ""),
    )


async def _refused(
    rt: Runtime, body: dict[str, Any], target: ConfigMapTarget, head: Head, refusal: Refusal
) -> Failure:
    meta = body["metadata"]
    uid = meta["uid"]
    generation = int(meta.get("generation") or 1)
    previous = with_intact(
        list((body.get("status") or {}).get("conditions") or []), rt.intact.get(uid)
    )
    extra = {
        "config": f"{meta['namespace']}/{meta['name']}",
        "configMap": f"{meta['namespace']}/{target.name}",
        "reason": refusal.reason,
        "version": head.version,
    }
    if refusal.stalled:
        old = next((c for c in previous if c.get("type") == "Published"), None)
        said = (
            old is not None
            and old.get("status") == "False"
            and old.get("reason") == refusal.reason
            and old.get("observedGeneration") == generation
        )
        if not said and _warned.get(uid) != (generation, refusal.reason):
            _warned[uid] = (generation, refusal.reason)
            metrics.PUBLISH_REFUSALS.labels(refusal.reason).inc()
            if refusal.reason == INTEGRITY:
                metrics.INTEGRITY_VIOLATIONS.inc()
            log.warning("head not published", extra={**extra, "error": refusal.message})
            await rt.kube.event(body, "Warning", refusal.reason, refusal.message)
    else:
        log.warning(
            "could not publish the head; will retry", extra={**extra, "error": refusal.message}
        )
    status = status_not_published(
        generation,
        previous,
        version=head.version,
        checksum=head.checksum,
        recorded_at=head.recorded_at,
        head_generation=head.generation,
        reason=refusal.reason,
        message=refusal.message,
        stalled=refusal.stalled,
    )
    return Failure(refusal.reason, refusal.message, status)
