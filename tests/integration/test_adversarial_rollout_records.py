"""Adversarial review of the rollout records (docs/rollouts.md, "Durable, once" and
"Shown with the history") on a REAL etcd: the records created by ``Rollouts``
(controller/rollouts.py), pruned by the store's commit (retention) and by a Purge
(store/store.py), and shown by ``etcdconfig history``.

The Kubernetes side is a small in-memory stand-in (a Config, Deployments, Pods, status
patches, events); the etcd, the ``VersionedStore`` and the ``Rollouts`` under review are
the real ones. Interleavings are made with hooks that run when the stand-in (or a thin
wrapper of the real etcd client) is called at a chosen point of the code under review.

Tests named ``test_review_*`` proved a defect of the code as reviewed (each fixed; each
fix has a mutant in tests/mutation/mutants.py, M71-M77, that its test kills). Tests
named ``test_held_*`` assert what was attacked and held.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from tests.integration.helpers import admin_cli
from tests.integration.test_store import change

from etcdconfig.concurrency import ConfigLocks, Session
from etcdconfig.controller import rollouts as ro
from etcdconfig.devenv.etcd import EtcdServer
from etcdconfig.etcd import EtcdClient
from etcdconfig.reconcile import parse_spec
from etcdconfig.store import VersionedStore

NS, NAME = "prod", "payments"
PIN = f"etcdconfig.io/version.{NAME}"
MARK = f"etcdconfig.io/uid.{NAME}"
BIN = Path(sys.executable).parent

Hook = Callable[[], Awaitable[None]]


# --- the stand-ins -------------------------------------------------------------------------


def config_body(uid: str, version: int, **rollout: Any) -> dict[str, Any]:
    now = "2026-01-01T00:00:00Z"
    return {
        "apiVersion": "etcdconfig.io/v1alpha1",
        "kind": "Config",
        "metadata": {"name": NAME, "namespace": NS, "uid": uid, "generation": version,
                     "resourceVersion": "1"},
        "spec": {
            "data": {"replicas": version},
            "publish": {"configMap": {"name": "payments-config", "versioned": True}},
            "rollout": {"debounceSeconds": 0, "bakeSeconds": 0, **rollout},
        },
        "status": {
            "version": version,
            "observedGeneration": version,
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "Recorded", "message": "",
                 "observedGeneration": version, "lastTransitionTime": now},
                {"type": "Stalled", "status": "False", "reason": "Recorded", "message": "",
                 "observedGeneration": version, "lastTransitionTime": now},
            ],
        },
    }  # fmt: skip


def deployment(uid: str, version: int | None) -> dict[str, Any]:
    annotations = {PIN: str(version), MARK: uid} if version else {}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "api",
            "namespace": NS,
            "generation": 1,
            "annotations": {"etcdconfig.io/configs": NAME},
        },
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "api"}},
            "template": {
                "metadata": {
                    "labels": {"app": "api", "etcdconfig.io/pinned": "true"},
                    "annotations": annotations,
                }
            },
        },
        "status": {"observedGeneration": 1},
    }


def crashing_pod(uid: str, version: int) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"api-v{version}-x",
            "labels": {"app": "api"},
            "annotations": {PIN: str(version), MARK: uid},
        },
        "status": {
            "containerStatuses": [
                {
                    "name": "api",
                    "restartCount": 2,
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {"terminated": {"exitCode": 3}},
                }
            ]
        },
    }


class Kube:
    """The Kubernetes API as the rollout controller uses it. ``on_list[plural]`` runs
    once, just before that list is answered (an interleaving point)."""

    def __init__(self, config: dict[str, Any] | None) -> None:
        self.config = config
        self.deployments: list[dict[str, Any]] = []
        self.pods: list[dict[str, Any]] = []
        self.applied: list[tuple[str, str]] = []  # (version, uid) per apply
        self.events: list[tuple[str, str, str]] = []
        self.status_patches: list[dict[str, Any]] = []
        self.on_list: dict[str, Hook] = {}

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

    async def apply(
        self, body: dict[str, Any], plural: str, *, field_manager: str
    ) -> dict[str, Any]:
        annotations = body["spec"]["template"]["metadata"]["annotations"]
        self.applied.append((annotations[PIN], annotations[MARK]))
        for d in self.deployments:
            d["spec"]["template"]["metadata"]["annotations"].update(annotations)
            d["metadata"]["generation"] += 1
        return body

    async def patch_status(
        self, ns: str, name: str, patch: dict[str, Any], resource_version: str | None = None
    ) -> None:
        self.status_patches.append(copy.deepcopy(patch))
        if self.config is not None:
            self.config.setdefault("status", {}).update(copy.deepcopy(patch))

    async def event(self, obj: Any, type_: str, reason: str, message: str) -> None:
        self.events.append((type_, reason, message))


class Membership:
    def __init__(self, mine: bool = True) -> None:
        self.mine = mine

    def owns(self, uid: str) -> bool:
        return self.mine


class HookedClient:
    """The real etcd client, with ``after_range`` run once after a range of the given
    key prefix returns (an interleaving point inside the code under review)."""

    def __init__(self, real: EtcdClient) -> None:
        self.real = real
        self.after_range: tuple[bytes, Hook] | None = None

    async def range(self, key: bytes, *args: Any, **kw: Any) -> Any:
        result = await self.real.range(key, *args, **kw)
        if self.after_range is not None and key.startswith(self.after_range[0]):
            hook = self.after_range[1]
            self.after_range = None
            await hook()
        return result

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.real, attr)


def replica(
    client: Any, store: VersionedStore, kube: Kube, prefix: str, replica_id: str
) -> tuple[ro.Rollouts, Any]:
    rt = SimpleNamespace(
        kube=kube,
        store=store,
        client=client,
        settings=SimpleNamespace(etcd_prefix=prefix, replica_id=replica_id),
        stopping=False,
        rollout_failures={},
        recheck=set(),
        note_usage=lambda uid, sizes: None,
        space=None,
        membership=Membership(),
    )
    return ro.Rollouts(rt), rt  # type: ignore[arg-type]


def settings(**kw: Any) -> Any:
    return parse_spec(config_body("x", 1, **kw)["spec"]).rollout


@pytest.fixture(autouse=True)
def fast_watch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ro, "WATCH_INTERVAL", 0.0)


@pytest.fixture
async def env(client: EtcdClient, prefix: str) -> Any:
    session = await Session(client, ttl=10).start()
    locks = ConfigLocks(session, prefix=prefix, identity="test")
    store = VersionedStore(client, prefix=prefix, replica_id="test-replica")
    yield store, locks
    await session.close()


async def put_record(
    store: VersionedStore, uid: str, version: int, state: str, **extra: Any
) -> dict[str, Any]:
    """A rollout record exactly as ``Rollouts._record`` / ``_finish`` write it."""
    record = {
        "config": f"{NS}/{NAME}",
        "uid": uid,
        "version": version,
        "targets": ["Deployment/api"],
        "startedAt": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
        "startedBy": "r0",
        "state": state,
        **extra,
    }
    key = store.keys.rollout(NS, NAME, uid, version)
    await store.client.put(key, json.dumps(record, sort_keys=True).encode())
    return record


async def raw_records(store: VersionedStore, uid: str | None = None) -> list[bytes]:
    """Every key under the rollout records of prod/payments (of ``uid`` if given)."""
    prefix = store.keys.rollouts_of(NS, NAME, uid) if uid else store.keys.rollouts(NS, NAME)
    res = await store.client.range(prefix, store.keys.end(prefix))
    return [kv.key for kv in res.kvs]


async def record_state(store: VersionedStore, uid: str, version: int) -> dict[str, Any] | None:
    kv, _ = await store.client.get(store.keys.rollout(NS, NAME, uid, version))
    return None if kv is None else dict(json.loads(kv.value))


async def versions(store: VersionedStore) -> list[tuple[str, int]]:
    records, _ = await store.history(NS, NAME, limit=1000)
    return sorted((r.uid, r.version) for r in records)


# --- defects -------------------------------------------------------------------------------


async def test_review_retention_by_a_later_incarnation_orphans_the_earlier_ones_records(
    env: Any,
) -> None:
    """Retain keeps uid-1's versions 1..2 and their rollout records. The Config is created
    again (uid-2), which continues the numbering; its commits with ``maxVersions: 1``
    prune *every* version below the one kept — uid-1's included — but delete only
    uid-2's rollout records (``rollouts_of(uid)``). uid-1's records outlive the versions
    they describe, and nothing can ever delete them: uid-1 is deleted (a Purge of it is
    recorded already), and uid-2's retention and Purge cover uid-2's prefix only.
    docs/rollouts.md: "The records live and die with the versions they describe"."""
    store, locks = env
    await store.record(change(1), locks)
    await put_record(store, "uid-1", 1, "Succeeded")
    await store.record(change(2), locks)
    await put_record(store, "uid-1", 2, "Succeeded")
    async with locks.hold(NS, NAME) as mutex:
        await store.delete(NS, NAME, "uid-1", mutex, purge=False)  # Retain

    await store.record(change(1, uid="uid-2", max_versions=1), locks)  # version 3
    await store.record(change(2, uid="uid-2", max_versions=1), locks)  # version 4
    assert await versions(store) == [("uid-2", 4)]  # uid-1's versions were pruned ...
    # ... and so must their rollout records be: the integrity scan (Resync.verify_one)
    # prunes every incarnation's records below the oldest retained version
    assert await store.prune_rollouts(NS, NAME) == 2
    assert await raw_records(store, "uid-1") == []
    assert await store.prune_rollouts(NS, NAME) == 0


async def test_review_a_purge_during_a_roll_leaves_a_record_nothing_ever_deletes(
    env: Any, prefix: str
) -> None:
    """The debounce timer fires: ``roll`` reads the Config (live) and the head (v1 of
    uid-1), then lists the consuming workloads. Meanwhile the Config is deleted with
    ``deletionPolicy: Purge`` and the finalizer (another task; it cancels no rollout
    timer) purges uid-1's versions and rollout records. ``roll`` goes on with the head it
    read: it creates the record of v1 after the Purge. That record describes a purged
    version of a deleted incarnation and no later operation deletes it (the Purge is
    recorded; a re-created Config's retention and Purge touch only its own uid): the very
    leak the commit ef72d8a set out to close. Fix: create the record with a compare on
    the head (its mod revision as read) or on the uid's incarnation record (not deleted),
    in the same transaction."""
    store, locks = env
    await store.record(change(1), locks)
    kube = Kube(config_body("uid-1", 1))
    kube.deployments = [deployment("uid-1", None)]
    rollouts, _ = replica(store.client, store, kube, prefix, "r0")

    async def purge() -> None:
        async with locks.hold(NS, NAME) as mutex:
            await store.delete(NS, NAME, "uid-1", mutex, purge=True)
        kube.config = None  # the finalizer done, the object is gone

    kube.on_list["deployments"] = purge
    try:
        await asyncio.wait_for(rollouts.roll(NS, NAME, "uid-1"), 20)
    finally:
        await rollouts.close()
    assert await versions(store) == []  # the Purge happened
    # nothing of the purged incarnation may remain under its rollout records
    assert await raw_records(store, "uid-1") == []


async def test_review_a_hand_over_leaves_the_new_owner_reporting_a_rolled_back_head_ready(
    env: Any, prefix: str
) -> None:
    """Two replicas, one Config. Replica B owns it, records v2 and reconciles: ``failure``
    reads the record of v2 (Started) and remembers "no failure" for v2 (``_known``).
    Ownership moves to A; A's watcher sees a v2 pod crash and finishes the record
    RolledBack to v1. Ownership moves back to B; B's next reconcile asks ``failure`` for
    v2 again and gets the cached "no failure": the Config is reported Ready=True while
    etcd says its head was rolled back ("the Config stays stalled — also after a restart
    or a hand-over (the reconcile reads the head's record once per version)"). Fix: drop
    ``_known``/``rollout_failures`` of a uid when its ownership is lost (or re-read a
    record that was Started)."""
    store, locks = env
    await store.record(change(1), locks)
    await store.record(change(2), locks)
    await put_record(store, "uid-1", 1, "Succeeded")
    rec2 = await put_record(store, "uid-1", 2, "Started")
    kube = Kube(config_body("uid-1", 2))
    kube.deployments = [deployment("uid-1", 2)]
    kube.pods = [crashing_pod("uid-1", 2)]
    a, rt_a = replica(store.client, store, kube, prefix, "replica-a")
    b, rt_b = replica(store.client, store, kube, prefix, "replica-b")
    try:
        rt_a.membership.mine = False
        assert await b.failure(NS, NAME, "uid-1", 2) is None  # B owns: Started, no failure
        rt_b.membership.mine, rt_a.membership.mine = False, True  # hand-over to A
        await asyncio.wait_for(a._watch(NS, NAME, "uid-1", 2, rec2, settings()), 20)
        stored = await record_state(store, "uid-1", 2)
        assert stored is not None and stored["state"] == "RolledBack"
        rt_b.membership.mine, rt_a.membership.mine = True, False  # and back to B
        found = await b.failure(NS, NAME, "uid-1", 2)
        assert found is not None and found[0] == 2, (
            f"etcd says v2 was {stored['state']} ({stored['reason']}); "
            f"the new owner reports failure={found!r}"
        )
    finally:
        await a.close()
        await b.close()


async def test_review_a_record_that_is_not_an_object_kills_the_rollback(
    env: Any, prefix: str
) -> None:
    """A record under the uid's prefix that is valid JSON but not an object (``[]``; the
    history skips it: ``Outcome.parse(b"[]") is None``, tested) makes
    ``_last_succeeded`` raise AttributeError (``list.get``): the watcher of v3 dies in
    ``_fail`` with v3's pods crashing, the record stays Started, nothing is rolled back
    to v2 (Succeeded), no event — and every resync re-attaches a watcher that dies the
    same way. Fix: skip a record that is not a dict, as ``Outcome.from_json`` does."""
    store, locks = env
    for g in (1, 2, 3):
        await store.record(change(g), locks)
    await store.client.put(store.keys.rollout(NS, NAME, "uid-1", 1), b"[]")
    await put_record(store, "uid-1", 2, "Succeeded")
    rec3 = await put_record(store, "uid-1", 3, "Started")
    kube = Kube(config_body("uid-1", 3))
    kube.deployments = [deployment("uid-1", 3)]
    kube.pods = [crashing_pod("uid-1", 3)]
    rollouts, _ = replica(store.client, store, kube, prefix, "r0")
    watch = asyncio.ensure_future(rollouts._watch(NS, NAME, "uid-1", 3, rec3, settings()))
    (outcome,) = await asyncio.wait_for(asyncio.gather(watch, return_exceptions=True), 20)
    await rollouts.close()
    stored = await record_state(store, "uid-1", 3)
    assert stored is not None
    assert (stored["state"], stored.get("rolledBackTo"), kube.applied) == (
        "RolledBack",
        2,
        [("2", "uid-1")],
    ), f"the watcher ended with {outcome!r}"


async def test_review_a_head_record_that_is_not_an_object_breaks_the_reconcile(
    env: Any, prefix: str
) -> None:
    """The head's record holds ``null`` (valid JSON, no object): ``_read_record`` does
    ``dict(None)`` and raises TypeError — not an EtcdConfigError, so the reconcile's
    ``_rollout_failure`` does not catch it and every reconcile of the Config fails,
    while ``etcdconfig history`` simply skips that record. Fix: ``_read_record`` returns
    None for anything that is not a JSON object."""
    store, locks = env
    await store.record(change(1), locks)
    await store.client.put(store.keys.rollout(NS, NAME, "uid-1", 1), b"null")
    rollouts, _ = replica(store.client, store, Kube(config_body("uid-1", 1)), prefix, "r0")
    try:
        assert await rollouts.failure(NS, NAME, "uid-1", 1) is None
    finally:
        await rollouts.close()


async def test_review_a_rollback_is_recorded_to_a_version_pruned_meanwhile(
    env: Any, prefix: str
) -> None:
    """``maxVersions: 2``. v1 Succeeded, v2 rolls and crashes. The watcher's ``_fail``
    picks v1 with ``_last_succeeded``; before it finishes the record, v3 is recorded
    (a reconcile on the same replica; v3 not rolled yet) and its commit prunes v1 — the
    version and its rollout record ("nothing can roll back to a pruned version"). The
    compare-and-swap of v2's record covers only v2's record, so v2 is recorded
    "RolledBack to v1" and the workloads are pinned to v1, a version the store no
    longer holds: the pod webhook cannot honour that pin and starts the new pods on the
    plain ConfigMap, i.e. on the head v3 that was never rolled out. Fix: the
    RolledBack transaction also compares the target's rollout record (its mod revision
    as ``_last_succeeded`` read it), and picks again when it moved."""
    store, locks = env
    await store.record(change(1, max_versions=2), locks)
    await store.record(change(2, max_versions=2), locks)
    await put_record(store, "uid-1", 1, "Succeeded")
    rec2 = await put_record(store, "uid-1", 2, "Started")
    kube = Kube(config_body("uid-1", 2))
    kube.deployments = [deployment("uid-1", 2)]
    kube.pods = [crashing_pod("uid-1", 2)]
    hooked = HookedClient(store.client)
    rollouts, _ = replica(hooked, store, kube, prefix, "r0")

    async def v3_recorded() -> None:
        await store.record(change(3, max_versions=2), locks)  # keeps 2 and 3

    # after _last_succeeded's range of uid-1's records has been answered
    hooked.after_range = (store.keys.rollouts_of(NS, NAME, "uid-1"), v3_recorded)
    try:
        await asyncio.wait_for(rollouts._watch(NS, NAME, "uid-1", 2, rec2, settings()), 20)
    finally:
        await rollouts.close()
    kept = {v for _, v in await versions(store)}
    assert kept == {2, 3}
    stored = await record_state(store, "uid-1", 2)
    assert stored is not None and stored["state"] in ("RolledBack", "Failed")
    back = stored.get("rolledBackTo")
    pinned = {int(v) for v, _ in kube.applied}
    assert (back is None or back in kept) and pinned <= kept, (
        f"v2 recorded {stored['state']} to {back}, workloads pinned to {sorted(pinned)}; "
        f"the store holds versions {sorted(kept)}"
    )


async def test_review_pruning_the_watched_versions_record_silences_its_failure(
    env: Any, prefix: str
) -> None:
    """``maxVersions: 1``, ``paused``. v2's rollout is under way (Started, watched); v3 is
    recorded and held by ``paused``, so — as documented — v2 is watched on ("a newer
    version held by paused ... leaves the running one watched (and rolled back if it
    breaks)"). But v3's commit pruned v2's *Started* record with v2. When v2's pods
    crash, ``_fail`` finds no record to finish, takes that for "another replica
    finished it first" and returns: no Failed outcome, no RolloutFailed event, no metric,
    and nobody watches v2 any more while the workloads keep crashing on it. Fix: never
    prune a record that is still Started (or let ``_fail``/``_finish`` tell "pruned"
    from "decided by another replica" and still report the failure)."""
    store, locks = env
    await store.record(change(1, max_versions=1), locks)
    await store.record(change(2, max_versions=1), locks)
    rec2 = await put_record(store, "uid-1", 2, "Started")
    kube = Kube(config_body("uid-1", 2, paused=False))
    kube.deployments = [deployment("uid-1", 2)]
    rollouts, _ = replica(store.client, store, kube, prefix, "r0")

    async def v3_recorded_held_and_v2_crashes() -> None:
        await store.record(change(3, max_versions=1), locks)
        kube.config = config_body("uid-1", 3, paused=True)
        kube.pods = [crashing_pod("uid-1", 2)]

    kube.on_list["deployments"] = v3_recorded_held_and_v2_crashes
    try:
        await asyncio.wait_for(
            rollouts._watch(NS, NAME, "uid-1", 2, rec2, settings(paused=True)), 20
        )
    finally:
        await rollouts.close()
    failed = [e for e in kube.events if e[1] == "RolloutFailed"]
    assert failed, (
        f"v2's pods crash and nothing says so; records: {await raw_records(store, 'uid-1')}"
    )


# --- what held -----------------------------------------------------------------------------


async def test_held_two_replicas_start_a_version_once_and_decide_it_once(
    env: Any, prefix: str
) -> None:
    """Two replicas (an ownership hand-over in flight) roll the same head concurrently:
    exactly one record is created; then both watchers race to an outcome — one wins, the
    other's compare-and-swap loses and leaves the winner's outcome as it is."""
    store, locks = env
    await store.record(change(1), locks)
    head = await store.head(NS, NAME)
    assert head is not None
    kube = Kube(config_body("uid-1", 1))
    kube.deployments = [deployment("uid-1", None)]
    a, _ = replica(store.client, store, kube, prefix, "replica-a")
    b, _ = replica(store.client, store, kube, prefix, "replica-b")
    try:
        created = await asyncio.gather(
            *(r._record(NS, NAME, "uid-1", head, kube_list(kube)) for r in (a, b, a, b))
        )
        assert sorted(created) == [False, False, False, True]
        first = await record_state(store, "uid-1", 1)
        assert first is not None and first["state"] == "Started"
        won = await asyncio.gather(
            a._finish(NS, NAME, "uid-1", 1, "Succeeded", "ok"),
            b._finish(NS, NAME, "uid-1", 1, "Failed", "bad"),
        )
        assert sorted(won) == sorted([ro.DECIDED, ro.FINISHED])
        final = await record_state(store, "uid-1", 1)
        assert final is not None
        assert final["state"] == ("Succeeded" if won[0] == ro.FINISHED else "Failed")
        assert final["startedBy"] == first["startedBy"]
    finally:
        await a.close()
        await b.close()


def kube_list(kube: Kube) -> list[tuple[str, Any]]:
    return [("Deployment", d) for d in kube.deployments]


async def test_held_a_rolled_back_head_is_not_rolled_forward_by_another_replicas_resync(
    env: Any, prefix: str
) -> None:
    """A rolled v2 back to v1; then B (the new owner, fresh) resyncs: ``roll`` reads the
    record, keeps the workloads on v1 and reports RolledBack — never pins v2 again."""
    store, locks = env
    await store.record(change(1), locks)
    await store.record(change(2), locks)
    await put_record(store, "uid-1", 1, "Succeeded")
    rec2 = await put_record(store, "uid-1", 2, "Started")
    kube = Kube(config_body("uid-1", 2))
    kube.deployments = [deployment("uid-1", 2)]
    kube.pods = [crashing_pod("uid-1", 2)]
    a, rt_a = replica(store.client, store, kube, prefix, "replica-a")
    b, rt_b = replica(store.client, store, kube, prefix, "replica-b")
    try:
        rt_b.membership.mine = False
        await asyncio.wait_for(a._watch(NS, NAME, "uid-1", 2, rec2, settings()), 20)
        assert kube.applied == [("1", "uid-1")]
        rt_a.membership.mine, rt_b.membership.mine = False, True
        await asyncio.wait_for(b.roll(NS, NAME, "uid-1"), 20)
        assert kube.applied == [("1", "uid-1")]
        assert kube.config is not None and kube.config["status"]["rollout"]["state"] == (
            "RolledBack"
        )
        found = await b.failure(NS, NAME, "uid-1", 2)
        assert found is not None and found[0] == 2
    finally:
        await a.close()
        await b.close()


async def test_held_retention_of_the_own_uid_prunes_exactly_the_records_below_the_kept(
    env: Any,
) -> None:
    """The commit deletes the uid's records strictly below the oldest kept version, in
    the same transaction; the records of kept versions (and of another uid) stay."""
    store, locks = env
    for g in range(1, 6):
        await store.record(change(g, max_versions=10), locks)
        await put_record(store, "uid-1", g, "Succeeded")
    await put_record(store, "uid-9", 1, "Succeeded")  # another incarnation's
    await store.record(change(6, max_versions=3), locks)  # keeps 4, 5, 6
    outcomes = await store.rollouts(NS, NAME)
    assert sorted((o.uid, o.version) for o in outcomes) == [
        ("uid-1", 4), ("uid-1", 5), ("uid-9", 1),
    ]  # fmt: skip


def history_cli(etcd: EtcdServer, prefix: str, *args: str) -> str:
    proc = admin_cli(etcd.endpoint, prefix, "history", f"{NS}/{NAME}", *args)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


async def test_held_history_matches_outcomes_by_uid_and_version_across_incarnations(
    env: Any, etcd_server: EtcdServer, prefix: str
) -> None:
    """Retain-deleted uid-1 (v1, v2), re-created as uid-2 (v3). A record of uid-2 at a
    version number uid-1 recorded (v2: written by a stale replica) and one of uid-1 at
    uid-2's number (v3) are shown for neither: each row shows its own (uid, version)."""
    store, locks = env
    await store.record(change(1), locks)
    await put_record(store, "uid-1", 1, "Succeeded")
    await store.record(change(2), locks)
    await put_record(store, "uid-1", 2, "RolledBack", rolledBackTo=1)
    async with locks.hold(NS, NAME) as mutex:
        await store.delete(NS, NAME, "uid-1", mutex, purge=False)
    await store.record(change(1, uid="uid-2"), locks)  # version 3
    await put_record(store, "uid-2", 2, "Failed")
    await put_record(store, "uid-1", 3, "Failed")
    rows = {}
    for line in history_cli(etcd_server, prefix).splitlines()[1:]:
        if line.split()[0] != "-":
            rows[line.split()[0]] = line.rstrip()
    assert rows["3"].endswith("apply")  # uid-2's v3: never rolled out
    assert rows["2"].endswith("RolledBack to v1")
    assert rows["1"].endswith("Succeeded")
    doc = json.loads(history_cli(etcd_server, prefix, "-o", "json"))
    assert [(o["uid"], o["version"]) for o in doc["rollouts"]] == [
        ("uid-1", 2), ("uid-1", 1),
    ]  # fmt: skip
