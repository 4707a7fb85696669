"""Adversarial review of the ConfigMap publisher (``etcdconfig.controller.publish``)
with a fake Kubernetes API and a fake store: what it writes, and what it never touches."""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

from etcdconfig.canonical import canonical_json, checksum, sha256_of
from etcdconfig.controller import publish
from etcdconfig.errors import CorruptRecord, NotFound
from etcdconfig.reconcile import parse_spec
from etcdconfig.store import Head, VersionRecord

NS, NAME, UID, CM = "prod", "payments", "uid-1", "payments-config"


class FakeKube:
    def __init__(self, cm: dict[str, Any] | None = None) -> None:
        self.cm = cm
        self.rv = 1
        self.writes: list[dict[str, Any]] = []
        self.events: list[tuple[str, str]] = []

    async def read_config_map(self, ns: str, name: str) -> dict[str, Any] | None:
        if self.cm is None:
            return None
        out = copy.deepcopy(self.cm)
        out["metadata"]["resourceVersion"] = str(self.rv)
        return out

    async def create_config_map(self, ns: str, body: dict[str, Any]) -> bool:
        if self.cm is not None:
            return False
        self.cm = copy.deepcopy(body)
        self.rv += 1
        self.writes.append(body)
        return True

    async def patch_config_map(
        self, ns: str, name: str, patch: dict[str, Any], *, resource_version: str
    ) -> bool:
        if self.cm is None or resource_version != str(self.rv):
            return False
        meta = self.cm["metadata"]
        for part in ("labels", "annotations"):
            meta.setdefault(part, {}).update(patch["metadata"].get(part) or {})
        data = self.cm.setdefault("data", {})
        for k, v in patch.get("data", {}).items():
            if v is None:
                data.pop(k, None)
            else:
                data[k] = v
        self.rv += 1
        self.writes.append(patch)
        return True

    def event_soon(self, obj: Any, type_: str, reason: str, message: str) -> None:
        self.events.append((reason, message))

    async def event(self, obj: Any, type_: str, reason: str, message: str) -> None:
        self.events.append((reason, message))


class FakeStore:
    def __init__(self) -> None:
        self.records: dict[int, bytes] = {}
        self.head_: Head | None = None

    def record(self, version: int, data: dict[str, Any], uid: str = UID) -> Head:
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
        self.head_ = Head(
            version=version,
            uid=uid,
            generation=version,
            checksum=checksum(data),
            record_checksum=sha256_of(raw),
            recorded_at="",
        )
        return self.head_

    async def head(self, ns: str, name: str) -> Head | None:
        return self.head_

    async def get_version(
        self, ns: str, name: str, version: int, *, expected_record_checksum: str | None = None
    ) -> VersionRecord:
        raw = self.records.get(version)
        if raw is None:
            raise NotFound(f"no version {version}")
        if expected_record_checksum is not None and sha256_of(raw) != expected_record_checksum:
            raise CorruptRecord("record checksum mismatch")
        return VersionRecord.parse(raw)


class FakeRuntime:
    def __init__(self, kube: FakeKube, store: FakeStore) -> None:
        self.kube, self.store = kube, store
        self.intact: dict[str, dict[str, Any]] = {}


def body(fmt: str = "json", uid: str = UID) -> dict[str, Any]:
    return {
        "metadata": {"namespace": NS, "name": NAME, "uid": uid, "generation": 1},
        "spec": {"data": {}, "publish": {"configMap": {"name": CM, "format": fmt}}},
    }


def run(rt: FakeRuntime, b: dict[str, Any], head: Head) -> publish.Failure | None:
    return asyncio.run(publish.publish(rt, b, parse_spec(b["spec"]), head))  # type: ignore[arg-type]


def ours(data: dict[str, str], head: Head, uid: str = UID) -> dict[str, Any]:
    return publish._new_config_map(
        body(uid=uid), parse_spec(body()["spec"]).publish.config_map, head, data
    )  # type: ignore[union-attr]


# --- defects ----------------------------------------------------------------------------------


def test_json_content_with_a_duplicate_key_is_drift_and_is_repaired() -> None:
    """DEFECT (minor): drift is judged by ``checksum(json.loads(text))``, and Python's
    ``json.loads`` keeps the *last* of duplicate keys, so a ConfigMap edited to
    ``{"limit": 1000, "limit": 1}`` (head: ``{"limit": 1}``) is judged up to date and
    never repaired, though it is not the head's data: a consumer whose parser keeps
    the first duplicate (or rejects duplicates, as strict RFC 8785 / I-JSON tooling
    does) reads 1000 or fails. Observed: no write. Expected: the key rewritten.
    Fix: parse the published key with an ``object_pairs_hook`` that rejects duplicate
    names (treat as drift), or compare the text with the exact text the operator
    would write."""
    store = FakeStore()
    head = store.record(1, {"limit": 1})
    cm = ours({"config.json": '{"limit": 1000, "limit": 1}'}, head)
    kube = FakeKube(cm)
    assert run(FakeRuntime(kube, store), body(), head) is None
    assert json.loads(kube.cm["data"]["config.json"]) == {"limit": 1}
    assert "1000" not in kube.cm["data"]["config.json"]


# --- hypotheses that held ---------------------------------------------------------------------


def test_a_foreign_config_map_is_never_written() -> None:
    """Held: without the managed-by label, or with a controller ownerReference to
    another uid, the ConfigMap is left alone."""
    store = FakeStore()
    head = store.record(1, {"limit": 1})
    no_label = ours({"config.json": "{}"}, head)
    del no_label["metadata"]["labels"][publish.MANAGED_BY_LABEL]
    other_uid = ours({"config.json": "{}"}, head, uid="uid-other")
    for cm, reason in ((no_label, publish.NOT_OWNED), (other_uid, publish.OWNED_BY_ANOTHER)):
        kube = FakeKube(cm)
        failure = run(FakeRuntime(kube, store), body(), head)
        assert failure is not None and failure.reason == reason
        assert kube.writes == []


def test_json_drift_is_repaired_and_reformatting_is_not_drift() -> None:
    store = FakeStore()
    head = store.record(1, {"limit": 1, "mode": "safe"})
    kube = FakeKube(ours({"config.json": '{"mode":"safe","limit":1.0}'}, head))
    assert run(FakeRuntime(kube, store), body(), head) is None
    assert kube.writes == []
    kube.cm["data"]["config.json"] = '{"mode":"unsafe","limit":1}'  # type: ignore[index]
    assert run(FakeRuntime(kube, store), body(), head) is None
    assert json.loads(kube.cm["data"]["config.json"]) == {"limit": 1, "mode": "safe"}  # type: ignore[index]


def test_a_tampered_head_record_publishes_nothing() -> None:
    store = FakeStore()
    head = store.record(1, {"limit": 1})
    raw = json.loads(store.records[1])
    raw["data"] = {"limit": 1000}
    raw["checksum"] = checksum(raw["data"])
    store.records[1] = json.dumps(raw).encode()
    kube = FakeKube()
    failure = run(FakeRuntime(kube, store), body(), head)
    assert failure is not None and failure.reason == publish.INTEGRITY
    assert kube.cm is None


def test_flat_removes_added_keys_and_a_stale_head_never_overwrites_a_newer_version() -> None:
    store = FakeStore()
    old = store.record(1, {"A": "1"})
    new = store.record(2, {"A": "2"})
    kube = FakeKube()
    assert run(FakeRuntime(kube, store), body("flat"), new) is None
    kube.cm["data"]["EXTRA"] = "x"  # type: ignore[index]
    assert run(FakeRuntime(kube, store), body("flat"), new) is None
    assert kube.cm["data"] == {"A": "2"}  # type: ignore[index]
    writes = len(kube.writes)
    assert run(FakeRuntime(kube, store), body("flat"), old) is None  # a stale reconcile
    assert len(kube.writes) == writes and kube.cm["data"] == {"A": "2"}  # type: ignore[index]


class NamedKube(FakeKube):
    """ConfigMaps by name (FakeKube holds one)."""

    def __init__(self) -> None:
        super().__init__()
        self.cms: dict[str, FakeKube] = {}

    def _one(self, name: str) -> FakeKube:
        return self.cms.setdefault(name, FakeKube())

    async def read_config_map(self, ns: str, name: str) -> dict[str, Any] | None:
        return await self._one(name).read_config_map(ns, name)

    async def create_config_map(self, ns: str, body: dict[str, Any]) -> bool:
        return await self._one(body["metadata"]["name"]).create_config_map(ns, body)

    async def patch_config_map(
        self, ns: str, name: str, patch: dict[str, Any], *, resource_version: str
    ) -> bool:
        return await self._one(name).patch_config_map(
            ns, name, patch, resource_version=resource_version
        )
