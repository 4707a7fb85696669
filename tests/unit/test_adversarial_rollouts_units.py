"""Adversarial review of rollouts (``controller/rollouts.py``) with a fake etcd (create /
mod revisions, compare-and-swap), a fake Kubernetes API (Deployments with a pod
template, Pods, a Config with status) and a fake store head. Interleavings are made
with hooks that run just before a list is answered."""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import json
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import pytest

from etcdconfig.controller import rollouts as ro
from etcdconfig.errors import EtcdUnavailable
from etcdconfig.etcd.types import KeyValue, RangeResult, TxnResult
from etcdconfig.store import Head
from etcdconfig.store.keys import Keys

NS, NAME, UID = "prod", "web", "uid-1"
PREFIX = "/p"
PIN = "etcdconfig.io/version.web"


class FakeEtcd:
    def __init__(self) -> None:
        self.kvs: dict[bytes, KeyValue] = {}
        self.rev = 1

    def put(self, key: bytes, value: bytes) -> None:
        self.rev += 1
        old = self.kvs.get(key)
        self.kvs[key] = KeyValue(
            key=key,
            value=value,
            create_revision=old.create_revision if old else self.rev,
            mod_revision=self.rev,
            version=(old.version + 1) if old else 1,
            lease=0,
        )

    async def get(self, key: bytes, *, revision: int = 0) -> tuple[KeyValue | None, int]:
        return self.kvs.get(key), self.rev

    async def range(self, key: bytes, range_end: bytes | None = None, **_: Any) -> RangeResult:
        kvs = tuple(
            kv
            for k, kv in sorted(self.kvs.items())
            if k >= key and (range_end is None or k < range_end)
        )
        return RangeResult(kvs=kvs, revision=self.rev, more=False, count=len(kvs))

    async def txn(self, compare: Any, success: Any, failure: Any = ()) -> TxnResult:
        ok = True
        for c in compare:
            kv = self.kvs.get(c.key)
            revisions = {"create": kv.create_revision, "mod": kv.mod_revision} if kv else {}
            actual = revisions.get(c.target, 0)
            ok = ok and {"=": actual == c.value, "!=": actual != c.value,
                         "<": actual < c.value, ">": actual > c.value}[c.op]  # fmt: skip
        for op in success if ok else failure:
            self.put(op.key, op.value)
        return TxnResult(succeeded=ok, revision=self.rev, responses=())


def deployment(version: int | None, *, replicas: int = 3, complete: bool = False) -> dict[str, Any]:
    annotations = {PIN: str(version)} if version else {}
    status: dict[str, Any] = {"observedGeneration": 1}
    if complete:
        status.update(replicas=replicas, updatedReplicas=replicas, readyReplicas=replicas)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "web",
            "namespace": NS,
            "generation": 1,
            "annotations": {"etcdconfig.io/configs": NAME},
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {
                    "labels": {"app": "web", "etcdconfig.io/pinned": "true"},
                    "annotations": annotations,
                }
            },
        },
        "status": status,
    }


def crashing_pod(version: int) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"web-{version}-x",
            "labels": {"app": "web"},
            "annotations": {PIN: str(version)},
        },
        "status": {
            "containerStatuses": [
                {
                    "name": "app",
                    "restartCount": 3,
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {"terminated": {"exitCode": 1}},
                }
            ]
        },
    }


class FakeKube:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config: dict[str, Any] | None = config
        self.deployments: list[dict[str, Any]] = []
        self.pods: list[dict[str, Any]] = []
        self.status_patches: list[dict[str, Any]] = []
        self.applied: list[str] = []
        self.on_list: dict[str, Callable[[], Awaitable[None]]] = {}

    async def get_config(self, ns: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.config)

    async def list_namespaced(
        self, group_version: str, plural: str, ns: str, label_selector: str = ""
    ) -> list[dict[str, Any]]:
        hook = self.on_list.pop(plural, None)
        if hook is not None:
            await hook()
        if plural == "deployments":
            return copy.deepcopy(self.deployments)
        if plural == "pods":
            return copy.deepcopy(self.pods)
        return []

    def pin(self, version: int) -> None:
        for d in self.deployments:
            d["spec"]["template"]["metadata"]["annotations"][PIN] = str(version)
            d["metadata"]["generation"] += 1

    async def apply(
        self, body: dict[str, Any], plural: str, *, field_manager: str
    ) -> dict[str, Any]:
        version = body["spec"]["template"]["metadata"]["annotations"][PIN]
        self.applied.append(version)
        self.pin(int(version))
        return body

    async def patch_status(self, ns: str, name: str, patch: dict[str, Any]) -> None:
        self.status_patches.append(copy.deepcopy(patch))
        assert self.config is not None
        self.config.setdefault("status", {}).update(copy.deepcopy(patch))

    async def event(self, *a: Any) -> None:
        pass


def config_body(version: int, **rollout: Any) -> dict[str, Any]:
    now = "2026-01-01T00:00:00Z"
    return {
        "apiVersion": "etcdconfig.io/v1alpha1",
        "kind": "Config",
        "metadata": {"name": NAME, "namespace": NS, "uid": UID, "generation": version},
        "spec": {
            "data": {"n": version},
            "publish": {"configMap": {"name": "web-cm", "versioned": True}},
            "rollout": {"debounceSeconds": 0, "bakeSeconds": 0, **rollout},
        },
        "status": {
            "version": version,
            "observedGeneration": version,
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "Recorded", "message": "",
                 "observedGeneration": version, "lastTransitionTime": now},
                {"type": "Reconciling", "status": "False", "reason": "Recorded", "message": "",
                 "observedGeneration": version, "lastTransitionTime": now},
                {"type": "Stalled", "status": "False", "reason": "Recorded", "message": "",
                 "observedGeneration": version, "lastTransitionTime": now},
            ],
        },
    }  # fmt: skip


class FakeStore:
    def __init__(self, version: int) -> None:
        self.version = version
        self.keys = Keys(PREFIX)

    async def head(self, ns: str, name: str) -> Head:
        return Head(version=self.version, uid=UID, generation=self.version, checksum="c",
                    record_checksum=f"r{self.version}", recorded_at="")  # fmt: skip


class Membership:
    def __init__(self) -> None:
        self.mine = True

    def owns(self, uid: str) -> bool:
        return self.mine


def world(head: int) -> tuple[Any, FakeKube, FakeEtcd, FakeStore]:
    kube = FakeKube(config_body(head))
    etcd = FakeEtcd()
    store = FakeStore(head)
    rt = SimpleNamespace(
        kube=kube,
        store=store,
        client=etcd,
        settings=SimpleNamespace(etcd_prefix=PREFIX, replica_id="r0"),
        stopping=False,
        rollout_failures={},
        recheck=set(),
        note_usage=lambda uid, sizes: None,
        space=None,
        membership=Membership(),
    )
    return rt, kube, etcd, store


def put_record(etcd: FakeEtcd, version: int, state: str, **extra: Any) -> dict[str, Any]:
    rec = {
        "config": f"{NS}/{NAME}",
        "uid": UID,
        "version": version,
        "targets": ["Deployment/web"],
        "startedAt": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
        "startedBy": "r0",
        "state": state,
        **extra,
    }
    etcd.put(ro.rollout_key(PREFIX, NS, NAME, UID, version), json.dumps(rec).encode())
    return rec


def state_of(etcd: FakeEtcd, version: int) -> str:
    kv = etcd.kvs[ro.rollout_key(PREFIX, NS, NAME, UID, version)]
    return str(json.loads(kv.value)["state"])


def settings(**kw: Any) -> Any:
    from etcdconfig.reconcile import parse_spec

    return parse_spec(config_body(1, **kw)["spec"]).rollout


@pytest.fixture(autouse=True)
def fast_watch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ro, "WATCH_INTERVAL", 0.0)


# --- defects -----------------------------------------------------------------------------


def test_a_workload_scaled_to_zero_is_complete_at_the_version() -> None:
    """The Deployment controller omits zero counts from status (omitempty): a Deployment
    with replicas 0, observed, at the version has no updatedReplicas/readyReplicas/replicas.
    Nothing is left to roll: the rollout is complete, not failed at its deadline."""
    w = deployment(2, replicas=0)
    w["status"] = {"observedGeneration": 1}
    assert ro._complete("Deployment", w, NAME, 2) is True


async def test_a_rollback_decided_for_an_old_head_does_not_undo_the_new_heads_rollout() -> None:
    """v1 Succeeded, v2 rolling. The watcher of v2 has checked the head (v2) and is
    reading pods when v3 is recorded and rolled out (record Started, template at v3). A
    v2 pod crashes: v2 is RolledBack — but the workloads must stay on the head v3, not be
    pinned back to v1 (that undoes v3 and restarts every pod twice)."""
    rt, kube, etcd, store = world(head=2)
    put_record(etcd, 1, "Succeeded")
    rec2 = put_record(etcd, 2, "Started")
    kube.deployments = [deployment(2)]
    kube.pods = [crashing_pod(2)]

    async def v3_recorded_and_rolled() -> None:
        store.version = 3
        kube.config = config_body(3)
        put_record(etcd, 3, "Started")
        kube.pin(3)

    kube.on_list["pods"] = v3_recorded_and_rolled
    rollouts = ro.Rollouts(rt)  # type: ignore[arg-type]
    await asyncio.wait_for(rollouts._watch(NS, NAME, UID, 2, rec2, settings()), 10)
    assert [d["spec"]["template"]["metadata"]["annotations"][PIN] for d in kube.deployments] == [
        "3"
    ]


async def test_a_rollback_decided_for_an_old_head_does_not_stall_the_new_head() -> None:
    """Same interleaving: the Config's status reports v3 (Ready); the failure of v2 must
    not stall it (with_rollout_failure: "a newer version clears it"), nor say the
    rollout of v2 is the rollout in status.rollout."""
    rt, kube, etcd, store = world(head=2)
    put_record(etcd, 1, "Succeeded")
    rec2 = put_record(etcd, 2, "Started")
    kube.deployments = [deployment(2)]
    kube.pods = [crashing_pod(2)]

    async def v3_recorded_and_rolled() -> None:
        store.version = 3
        kube.config = config_body(3)
        put_record(etcd, 3, "Started")
        kube.pin(3)

    kube.on_list["pods"] = v3_recorded_and_rolled
    rollouts = ro.Rollouts(rt)  # type: ignore[arg-type]
    await asyncio.wait_for(rollouts._watch(NS, NAME, UID, 2, rec2, settings()), 10)
    assert kube.config is not None
    stalled = next(c for c in kube.config["status"]["conditions"] if c["type"] == "Stalled")
    assert (stalled["status"], kube.config["status"].get("rollout", {}).get("version")) == (
        "False",
        None,
    )


async def test_a_watcher_that_lost_the_verdict_does_not_report_succeeded() -> None:
    """Two watchers of one version (an owner hand-over: the old owner's watcher still runs):
    the other one finished it RolledBack first; this one's compare-and-swap to Succeeded
    loses — the record says RolledBack, so status.rollout must not say Succeeded."""
    rt, kube, etcd, _ = world(head=2)
    put_record(etcd, 1, "Succeeded")
    rec2 = put_record(etcd, 2, "Started")
    kube.deployments = [deployment(2, complete=True)]

    async def other_replica_rolls_back() -> None:
        key = ro.rollout_key(PREFIX, NS, NAME, UID, 2)
        done = dict(rec2, state="RolledBack", rolledBackTo=1, reason="version 2 failed: ...")
        etcd.put(key, json.dumps(done).encode())

    kube.on_list["pods"] = other_replica_rolls_back
    rollouts = ro.Rollouts(rt)  # type: ignore[arg-type]
    await asyncio.wait_for(rollouts._watch(NS, NAME, UID, 2, rec2, settings()), 10)
    assert state_of(etcd, 2) == "RolledBack"
    reported = [p["rollout"]["state"] for p in kube.status_patches if "rollout" in p]
    assert "Succeeded" not in reported, reported


async def test_a_replica_that_no_longer_owns_the_config_stops_watching_and_writing() -> None:
    """Ownership moves to another replica mid-rollout: the old owner's watcher must not
    keep writing status.rollout (the new owner does) — nor decide the rollout."""
    rt, kube, etcd, _ = world(head=2)
    put_record(etcd, 1, "Succeeded")
    rec2 = put_record(etcd, 2, "Started")
    kube.deployments = [deployment(2)]  # rolling: 0/3 updated
    rt.membership.mine = False  # the hand-over happened before this poll
    polls = 0

    async def count() -> None:
        nonlocal polls
        polls += 1
        if polls >= 5:
            rt.stopping = True

    def hook_forever() -> None:
        async def again() -> None:
            await count()
            kube.on_list["pods"] = again

        kube.on_list["pods"] = again

    hook_forever()
    rollouts = ro.Rollouts(rt)  # type: ignore[arg-type]
    await asyncio.wait_for(rollouts._watch(NS, NAME, UID, 2, rec2, settings()), 10)
    assert kube.status_patches == []


# --- what holds ----------------------------------------------------------------------------


async def test_held_a_crash_of_the_head_rolls_back_to_the_last_succeeded_once() -> None:
    rt, kube, etcd, _ = world(head=3)
    put_record(etcd, 1, "Succeeded")
    put_record(etcd, 2, "Superseded")
    rec3 = put_record(etcd, 3, "Started")
    kube.deployments = [deployment(3)]
    kube.pods = [crashing_pod(3)]
    rollouts = ro.Rollouts(rt)  # type: ignore[arg-type]
    await asyncio.wait_for(rollouts._watch(NS, NAME, UID, 3, rec3, settings()), 10)
    assert state_of(etcd, 3) == "RolledBack"
    assert kube.applied == ["1"]
    assert rt.rollout_failures[UID][0] == 3
    # a resync rolls the failed head again: it is never rolled forward
    await rollouts.roll(NS, NAME, UID)
    assert kube.applied == ["1"]
    assert state_of(etcd, 3) == "RolledBack"
    await rollouts.close()


async def test_one_record_per_version_and_one_outcome_per_record() -> None:
    """The record is created only if absent, and moved from Started only once: a second
    replica's start and a second outcome change nothing (the two compares in etcd)."""
    rt, _kube, etcd, store = world(2)
    rollouts = ro.Rollouts(rt)
    head = await store.head(NS, NAME)
    assert await rollouts._record(NS, NAME, UID, head, []) is True
    first = etcd.kvs[ro.rollout_key(PREFIX, NS, NAME, UID, 2)].value
    rt.settings.replica_id = "r1"
    assert await rollouts._record(NS, NAME, UID, head, []) is False
    assert etcd.kvs[ro.rollout_key(PREFIX, NS, NAME, UID, 2)].value == first

    real_get = etcd.get

    async def get_then_decided_elsewhere(key: bytes, **kw: Any) -> Any:
        found = await real_get(key, **kw)
        if key == ro.rollout_key(PREFIX, NS, NAME, UID, 2) and state_of(etcd, 2) == "Started":
            put_record(etcd, 2, "RolledBack", reason="decided by r0", rolledBackTo=1)
        return found

    etcd.get = get_then_decided_elsewhere  # type: ignore[method-assign]
    assert await rollouts._finish(NS, NAME, UID, 2, "Succeeded", "late") == ro.DECIDED
    assert state_of(etcd, 2) == "RolledBack"


async def test_a_rollout_that_fails_transiently_asks_the_next_resync_round_for_it() -> None:
    rt, _kube, _etcd, _store = world(2)
    rollouts = ro.Rollouts(rt)

    async def etcd_away(ns: str, name: str, uid: str) -> float | None:
        raise EtcdUnavailable("etcd txn failed: connection refused")

    rollouts.roll = etcd_away  # type: ignore[method-assign]
    await rollouts._after(0, NS, NAME, UID)
    assert rt.recheck == {UID}
    await rollouts.close()
