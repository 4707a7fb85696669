"""Adversarial review of versioned ConfigMaps and pod pinning
(``controller/versioned.py``, ``controller/pinning.py``, ``rollout.py``) with a fake
Kubernetes API (ConfigMaps with uid/resourceVersion preconditions, listable referrers)
and a fake store."""

from __future__ import annotations

import asyncio
import copy
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from etcdconfig import rollout
from etcdconfig.canonical import canonical_json, checksum, sha256_of
from etcdconfig.controller import pinning, publish, versioned
from etcdconfig.errors import NotFound
from etcdconfig.reconcile import parse_spec
from etcdconfig.store import Head, VersionRecord

NS, NAME, TARGET = "prod", "app", "app-cm"
_uids = itertools.count()


class FakeKube:
    def __init__(self) -> None:
        self.cms: dict[str, dict[str, Any]] = {}
        self.objects: dict[str, list[dict[str, Any]]] = {}
        self.configs: dict[str, dict[str, Any]] = {}
        self.rv = itertools.count(100)
        # plural -> coroutine run just before that list is answered (an interleaving)
        self.on_list: dict[str, Callable[[], Awaitable[None]]] = {}
        self.on_delete: Callable[[str], None] | None = None

    def put(self, cm: dict[str, Any]) -> None:
        cm = copy.deepcopy(cm)
        cm["metadata"]["uid"] = f"cm-{next(_uids)}"
        cm["metadata"]["resourceVersion"] = str(next(self.rv))
        self.cms[cm["metadata"]["name"]] = cm

    async def read_config_map(self, ns: str, name: str) -> dict[str, Any] | None:
        cm = self.cms.get(name)
        return copy.deepcopy(cm) if cm is not None else None

    async def create_config_map(self, ns: str, body: dict[str, Any]) -> bool:
        if body["metadata"]["name"] in self.cms:
            return False
        self.put(body)
        return True

    async def delete_config_map(
        self, ns: str, name: str, *, uid: str, resource_version: str
    ) -> bool:
        if self.on_delete is not None:
            self.on_delete(name)
        cm = self.cms.get(name)
        if cm is None or cm["metadata"]["uid"] != uid:
            return False
        if cm["metadata"]["resourceVersion"] != resource_version:
            return False
        del self.cms[name]
        return True

    async def patch_config_map(
        self, ns: str, name: str, patch: dict[str, Any], *, resource_version: str
    ) -> bool:
        cm = self.cms.get(name)
        if cm is None or cm["metadata"]["resourceVersion"] != resource_version:
            return False
        annotations = (patch.get("metadata") or {}).get("annotations") or {}
        cm["metadata"].setdefault("annotations", {}).update(annotations)
        cm["metadata"]["resourceVersion"] = str(next(self.rv))
        return True

    async def list_namespaced(
        self, group_version: str, plural: str, ns: str, label_selector: str = ""
    ) -> list[dict[str, Any]]:
        hook = self.on_list.pop(plural, None)
        if hook is not None:
            await hook()
        if plural == "configmaps":
            wanted = dict(p.split("=", 1) for p in label_selector.split(",") if p)
            return [
                copy.deepcopy(cm)
                for cm in self.cms.values()
                if all((cm["metadata"].get("labels") or {}).get(k) == v for k, v in wanted.items())
            ]
        return copy.deepcopy(self.objects.get(plural, []))

    async def config_pages(self, ns: str | None = None) -> AsyncIterator[list[dict[str, Any]]]:
        """The listing as one page (the real client pages it)."""
        yield await self.list_configs(ns)

    async def list_configs(self, ns: str | None = None) -> list[dict[str, Any]]:
        return copy.deepcopy(list(self.configs.values()))

    async def get_config(self, ns: str, name: str) -> dict[str, Any] | None:
        c = self.configs.get(name)
        return copy.deepcopy(c) if c is not None else None

    def event_soon(self, *a: Any) -> None:
        pass

    async def event(self, *a: Any) -> None:
        pass


class FakeStore:
    def __init__(self) -> None:
        self.records: dict[int, bytes] = {}
        self.heads: dict[int, Head] = {}

    def record(self, version: int, data: dict[str, Any], uid: str) -> Head:
        raw = canonical_json(
            {
                "format": 1,
                "version": version,
                "uid": uid,
                "generation": version,
                "checksum": checksum(data),
                "parentChecksum": None,
                "data": data,
            },
            "record",
        )
        self.records[version] = raw
        self.heads[version] = Head(
            version=version,
            uid=uid,
            generation=version,
            checksum=checksum(data),
            record_checksum=sha256_of(raw),
            recorded_at="",
        )
        return self.heads[version]

    async def get_version(
        self, ns: str, name: str, version: int, *, expected_record_checksum: str | None = None
    ) -> VersionRecord:
        raw = self.records.get(version)
        if raw is None:
            raise NotFound(f"no version {version}")
        return VersionRecord.parse(raw)


class FakeRuntime:
    def __init__(self) -> None:
        self.kube, self.store = FakeKube(), FakeStore()
        self.intact: dict[str, Any] = {}


def config(uid: str, keep: int = 1, fmt: str = "json") -> dict[str, Any]:
    return {
        "apiVersion": "etcdconfig.io/v1alpha1",
        "kind": "Config",
        "metadata": {"namespace": NS, "name": NAME, "uid": uid, "generation": 1},
        "spec": {
            "data": {},
            "publish": {
                "configMap": {"name": TARGET, "versioned": True, "keep": keep, "format": fmt}
            },
        },
    }


def target_of(body: dict[str, Any]) -> Any:
    return parse_spec(body["spec"]).publish.config_map  # type: ignore[union-attr]


def world(versions: int, keep: int = 1) -> tuple[FakeRuntime, dict[str, Any], Head]:
    """A Config with versions 1..``versions`` (data ``{"n": v}``), each published as its
    versioned ConfigMap; the last is the head."""
    rt = FakeRuntime()
    uid = f"uid-{next(_uids)}"
    body = config(uid, keep)
    rt.kube.configs[NAME] = body
    target = target_of(body)
    head = None
    for v in range(1, versions + 1):
        head = rt.store.record(v, {"n": v}, uid)
        rt.kube.put(
            versioned.new_config_map(
                body, target, head, publish.json_content({"n": v}, "config.json")
            )
        )
    assert head is not None
    return rt, body, head


def pinned_pod(version: str) -> dict[str, Any]:
    return {
        "metadata": {
            "namespace": NS,
            "name": "p",
            "annotations": {f"{rollout.PIN_PREFIX}{NAME}": version},
        },
        "spec": {
            "containers": [
                {"name": "c", "image": "none", "envFrom": [{"configMapRef": {"name": TARGET}}]}
            ]
        },
    }


def refs(pod_spec: dict[str, Any]) -> list[str]:
    return [e["configMapRef"]["name"] for e in pod_spec["containers"][0]["envFrom"]]


# --- defects ----------------------------------------------------------------------------------


def test_a_pod_admitted_during_a_collection_keeps_the_version_it_was_pinned_to() -> None:
    """DEFECT: the collection lists the referrers, then deletes. The pod webhook, when
    ``<name>-vN`` exists, returns at once (no write, nothing the collection's
    preconditions could see). A pod pinned to v1 admitted after the collection listed
    Pods and before its delete is persisted referring to ``app-cm-v1``, which the
    collection then deletes (its uid and resourceVersion unchanged): the pod's
    ConfigMap is gone (ContainerCreating forever on a real node, or a fail-open
    re-creation only for pods admitted later). Observed: deleted. Expected: kept.
    Fix: have the webhook touch the ConfigMap it pins to (e.g. patch an annotation
    ``etcdconfig.io/pinned-at``), so the collection's resourceVersion precondition
    fails; or delete in two phases (mark, then delete on a later collection if still
    unreferenced and the mark outlived the webhook timeout)."""
    rt, body, head = world(2, keep=1)

    async def admit_pod() -> None:
        changed = await pinning.pin(rt, pinned_pod("1"), dryrun=False)  # type: ignore[arg-type]
        assert changed is not None
        pod = {**pinned_pod("1"), "spec": changed["spec"]}
        assert refs(pod["spec"]) == ["app-cm-v1"]
        rt.kube.objects.setdefault("pods", []).append(pod)  # the API server persists it

    rt.kube.on_list["cronjobs"] = admit_pod  # the last referrer list: pods were listed
    done = asyncio.run(versioned.collect(rt, body, target_of(body), head))  # type: ignore[arg-type]
    assert "app-cm-v1" in rt.kube.cms, f"deleted while a pod refers to it: {done}"


def test_a_pin_value_the_webhook_honours_is_a_reference_for_the_collection() -> None:
    """DEFECT: ``rollout.pins`` strips the value (``" 1"`` pins to version 1: the
    webhook rewrites such pods to ``app-cm-v1``) but ``versioned.references`` does not
    (``" 1".isdigit()`` is False): a ReplicaSet whose template carries ``" 1"`` does
    not keep ``app-cm-v1``, whose pods the webhook pins to it. Expected: both read the
    same pins (share one parser)."""
    annotations = {f"{rollout.PIN_PREFIX}{NAME}": " 1"}
    assert rollout.pins(annotations) == {NAME: 1}
    template = {"template": {"metadata": {"annotations": annotations}}}
    assert list(versioned.references(template, {NAME: TARGET})) == ["app-cm-v1"]


def test_a_pin_value_that_isdigit_but_no_int_does_not_break_the_collection() -> None:
    """DEFECT (see the e2e test): ``"²".isdigit()`` is True, ``int("²")`` raises
    ValueError: one pod annotated so makes ``collect`` (hence the reconcile of every
    versioned Config of the namespace) raise. Expected: no pin, v1 collected."""
    rt, body, head = world(2, keep=1)
    rt.kube.objects["pods"] = [
        {"metadata": {"annotations": {f"{rollout.PIN_PREFIX}{NAME}": "\u00b2"}}, "spec": {}}
    ]
    done = asyncio.run(versioned.collect(rt, body, target_of(body), head))  # type: ignore[arg-type]
    assert done.deleted == ["app-cm-v1"]


def test_the_webhook_never_pins_to_a_configmap_that_does_not_hold_the_version() -> None:
    """DEFECT: when ``<name>-vN`` exists the webhook checks only whose it is (managed-by
    label and controller ownerReference), not that it is version N: no version
    label/annotation, no checksum, not even ``immutable``. The Config's own earlier
    plain ConfigMap (it published to ``app-cm-v1`` before a retarget to ``app-cm``,
    left as it is, holding version 5), or one deleted and re-created with the owner
    copied (only the head's is ever repaired), gets pods pinned to version 1 with
    version 5's data. Expected: not pinned to it (re-created from the record, or fail
    open to the plain ConfigMap)."""
    rt, body, _ = world(1, keep=3)
    del rt.kube.cms["app-cm-v1"]
    head5 = rt.store.record(5, {"n": 5}, body["metadata"]["uid"])
    old_plain = publish._new_config_map(
        body, target_of(body), head5, publish.json_content({"n": 5}, "config.json")
    )
    old_plain["metadata"]["name"] = "app-cm-v1"  # its earlier spec.publish.configMap.name
    rt.kube.put(old_plain)
    changed = asyncio.run(pinning.pin(rt, pinned_pod("1"), dryrun=False))  # type: ignore[arg-type]
    pinned_to = refs(changed["spec"])[0] if changed else TARGET
    if pinned_to == "app-cm-v1":
        assert rt.kube.cms["app-cm-v1"]["data"] == publish.json_content({"n": 1}, "config.json")


def test_a_dry_run_pins_as_the_real_request_would() -> None:
    """DEFECT (minor): on a dry run the webhook rewrites to ``<name>-vN`` whenever that
    ConfigMap is missing, without asking the store: a pin to a version that does not
    exist (or that belongs to an earlier incarnation) shows pinned under
    ``--dry-run=server`` while the real create starts with the plain ConfigMap.
    Expected: the same outcome (read the record; just do not create)."""
    rt, _, _ = world(2, keep=3)
    dry = asyncio.run(pinning.pin(rt, pinned_pod("7"), dryrun=True))  # type: ignore[arg-type]
    real = asyncio.run(pinning.pin(rt, pinned_pod("7"), dryrun=False))  # type: ignore[arg-type]
    assert real is None
    assert dry == real


def test_a_deletion_that_lost_its_precondition_is_tried_again() -> None:
    """DEFECT (minor): when a collection's delete loses its precondition (the
    ConfigMap's metadata changed between list and delete: a label added, kubectl
    annotate) it counts neither as deleted nor as kept, so the Config is marked clean
    and the ConfigMap is not collected again until the next version is recorded.
    Expected: a later reconcile collects it."""
    rt, body, head = world(3, keep=1)
    target = target_of(body)
    touched: list[str] = []

    def touch(name: str) -> None:
        if name == "app-cm-v1" and not touched:
            touched.append(name)
            rt.kube.cms[name]["metadata"]["resourceVersion"] = str(next(rt.kube.rv))

    rt.kube.on_delete = touch
    assert asyncio.run(versioned.ensure(rt, body, target, head)) is None  # type: ignore[arg-type]
    assert set(rt.kube.cms) == {"app-cm-v1", "app-cm-v3"}
    assert asyncio.run(versioned.ensure(rt, body, target, head)) is None  # type: ignore[arg-type]
    assert set(rt.kube.cms) == {"app-cm-v3"}


# --- hypotheses that held ---------------------------------------------------------------------


def test_held_references_walk_ephemeral_containers_cronjobs_and_projected_volumes() -> None:
    spec = {
        "ephemeralContainers": [{"envFrom": [{"configMapRef": {"name": "a"}}]}],
        "jobTemplate": {
            "spec": {
                "template": {
                    "metadata": {"annotations": {f"{rollout.PIN_PREFIX}{NAME}": "4"}},
                    "spec": {
                        "volumes": [{"projected": {"sources": [{"configMap": {"name": "b"}}]}}]
                    },
                }
            }
        },
    }
    assert sorted(versioned.references(spec, {NAME: TARGET})) == ["a", "app-cm-v4", "b"]


def test_held_the_collection_never_deletes_another_incarnations_or_the_head() -> None:
    rt, body, head = world(3, keep=1)
    other = config("uid-other")
    rt.kube.cms["app-cm-v1"]["metadata"]["ownerReferences"][0]["uid"] = "uid-other"
    done = asyncio.run(versioned.collect(rt, body, target_of(body), head))  # type: ignore[arg-type]
    assert done.deleted == ["app-cm-v2"]
    assert set(rt.kube.cms) == {"app-cm-v1", "app-cm-v3"}
    assert other["metadata"]["uid"] == "uid-other"


def test_held_the_webhook_refuses_a_version_of_another_incarnation() -> None:
    rt, _, _ = world(2, keep=1)
    del rt.kube.cms["app-cm-v1"]
    rt.store.record(1, {"n": 666}, "uid-earlier")  # Retain, then re-create: v1 is not ours
    assert asyncio.run(pinning.pin(rt, pinned_pod("1"), dryrun=False)) is None  # type: ignore[arg-type]
    assert "app-cm-v1" not in rt.kube.cms


def test_a_faithful_copy_owned_by_another_config_is_not_pinned_to() -> None:
    """A ConfigMap of the versioned name that holds exactly version 1 (labels,
    annotations, content, immutable) but belongs to another Config (its ownerReference):
    not this Config's, so no pod is pinned to it (the ownership check, not only the
    content check, guards the pin)."""
    rt, _body, _head = world(2, keep=3)
    cm = rt.kube.cms["app-cm-v1"]
    cm["metadata"]["ownerReferences"][0]["uid"] = "uid-of-another-config"
    changed = asyncio.run(pinning.pin(rt, pinned_pod("1"), dryrun=False))  # type: ignore[arg-type]
    assert changed is None


def test_a_configmap_pinned_to_lately_is_not_collected() -> None:
    """A pod was pinned to app-cm-v1 a moment ago (the webhook's etcdconfig.io/pinned-at):
    it may not be persisted yet, so no list shows it; the collection leaves the
    ConfigMap alone for the grace period, then collects it."""
    import datetime as dt

    rt, body, head = world(3, keep=1)
    now = dt.datetime.now(dt.UTC)
    rt.kube.cms["app-cm-v1"]["metadata"].setdefault("annotations", {})[
        rollout.PINNED_AT_ANNOTATION
    ] = now.isoformat(timespec="seconds")
    done = asyncio.run(versioned.collect(rt, body, target_of(body), head))  # type: ignore[arg-type]
    assert (sorted(done.deleted), done.kept_referenced) == (["app-cm-v2"], ["app-cm-v1"])
    old = now - dt.timedelta(seconds=rollout.PIN_GRACE + 1)
    rt.kube.cms["app-cm-v1"]["metadata"]["annotations"][rollout.PINNED_AT_ANNOTATION] = (
        old.isoformat(timespec="seconds")
    )
    done = asyncio.run(versioned.collect(rt, body, target_of(body), head))  # type: ignore[arg-type]
    assert done.deleted == ["app-cm-v1"]


def test_a_plain_configmap_of_the_versioned_name_is_refused_and_left_untouched() -> None:
    """An earlier plain ConfigMap of this Config holds the name ``app-cm-v1`` (it
    published ``app-cm-v1`` as its plain name once): publishing version 1 versioned
    refuses, naming it, and neither rewrites nor deletes what consumers may still read."""
    rt = FakeRuntime()
    body = config(f"uid-{next(_uids)}")
    rt.kube.configs[NAME] = body
    head = rt.store.record(1, {"n": 1}, body["metadata"]["uid"])
    plain = versioned.new_config_map(
        body, target_of(body), head, publish.json_content({"n": 0}, "config.json")
    )
    del plain["metadata"]["labels"][versioned.VERSION_LABEL]
    rt.kube.put(plain)
    before = copy.deepcopy(rt.kube.cms)
    refusal = asyncio.run(versioned.ensure(rt, body, target_of(body), head))  # type: ignore[arg-type]
    assert refusal is not None
    assert (refusal.reason, refusal.stalled) == ("ConfigMapNotVersioned", True)
    assert refusal.message == (
        f"ConfigMap {NS}/app-cm-v1 was published by this Config but is no versioned "
        f"ConfigMap (no {versioned.VERSION_LABEL} label: an earlier plain ConfigMap of that "
        "name); it is left untouched: delete it, or choose another spec.publish.configMap.name"
    )
    assert rt.kube.cms == before
