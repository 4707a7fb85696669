"""Adversarial review of the integrity scan's status (``reconcile.status_integrity``,
called from ``Resync.verify_one``), against a real etcd.

A scan that finds a violation sets ``Intact=False``, ``Ready=False`` and
``Stalled=True`` (kstatus: Failed; Argo CD: Degraded) "until it is repaired"
(docs/gitops.md); a later clean scan restores. The scan verifies the store, then
re-reads the object, then patches status guarded by that resourceVersion. Normal
reconciles run beside it: the resync loop's (guarded by resourceVersion) and kopf's
handler (patched by kopf WITHOUT a resourceVersion guard).

The Kubernetes side is an in-memory object that behaves as the API server does for
these calls (resourceVersion bumped on every write; a guarded status merge-patch of
a stale copy is dropped with 409); kopf's handler is the real one
(``handlers.build_registry``). Interleavings are forced with gates on our own code,
never with sleeps. Tests named ``test_defect_*`` FAIL on the code as reviewed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import kopf
import pytest

from etcdconfig.controller.handlers import build_registry
from etcdconfig.controller.loops import Resync
from etcdconfig.controller.reconciler import Reconciler
from etcdconfig.controller.runtime import Runtime
from etcdconfig.controller.supervisor import Supervisor
from etcdconfig.devenv.etcd import EtcdServer
from etcdconfig.etcd import EtcdClient
from etcdconfig.models import FINALIZER
from etcdconfig.settings import Settings
from etcdconfig.store.keys import Keys

NS, NAME, UID = "prod", "payments", "uid-integrity-1"


class ApiObject:
    """The Config as the API server keeps it: spec by generation, status, resourceVersion."""

    def __init__(self) -> None:
        self.rv = 1
        self.generation = 1
        self.status: dict[str, Any] = {}
        self.patches: list[tuple[str, dict[str, Any]]] = []  # (who, status)

    def get(self) -> dict[str, Any]:
        return {
            "metadata": {
                "namespace": NS,
                "name": NAME,
                "uid": UID,
                "generation": self.generation,
                "resourceVersion": str(self.rv),
                "finalizers": [FINALIZER],
            },
            "spec": {"data": {"retries": self.generation}},
            "status": json.loads(json.dumps(self.status)),
        }

    def patch(self, who: str, status: dict[str, Any], resource_version: str | None) -> bool:
        if resource_version is not None and resource_version != str(self.rv):
            return False  # 409
        self.status.update(json.loads(json.dumps(status)))  # merge patch: lists replaced
        self.rv += 1
        self.patches.append((who, status))
        return True

    async def kopf_handles(
        self, rt: Runtime, reason: str, body: dict[str, Any] | None = None
    ) -> None:
        """kopf runs the real ``reconcile`` handler on ``body`` (the object as the event
        carried it; now by default), then merge-patches ``patch.status`` unguarded."""
        fn = next(h.fn for h in build_registry(rt, Reconciler(rt))._changing.get_all_handlers())
        patch = kopf.Patch()
        with contextlib.suppress(kopf.TemporaryError):
            await fn(
                body=kopf.Body(body if body is not None else self.get()),
                patch=patch,
                reason=reason,
                retry=0,
            )
        if patch.get("status"):
            self.patch("kopf", dict(patch["status"]), None)


class ApiKube:
    def __init__(self, obj: ApiObject) -> None:
        self.obj = obj
        self.events: list[tuple[str, str]] = []
        self.api = None

    async def get_config(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.obj.get()

    async def config_pages(
        self, namespace: str | None = None
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """The listing as one page (the real client pages it)."""
        yield await self.list_configs(namespace)

    async def list_configs(self, namespace: str | None = None) -> list[dict[str, Any]]:
        return [self.obj.get()]

    async def add_finalizer(self, obj: dict[str, Any], finalizer: str) -> str | None:
        return str(obj["metadata"]["resourceVersion"])

    async def patch_status(
        self, ns: str, name: str, status: dict[str, Any], *, resource_version: str | None = None
    ) -> bool:
        return self.obj.patch("resync", status, resource_version)

    def event_soon(self, obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
        self.events.append((reason, message))

    async def event(self, obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
        self.events.append((reason, message))

    async def check_crd(self) -> None:
        return None

    async def close(self) -> None:
        return None


class Gate:
    def __init__(self) -> None:
        self.reached = asyncio.Event()
        self.go = asyncio.Event()

    async def pause(self) -> None:
        self.reached.set()
        await self.go.wait()


@pytest.fixture
async def rt(etcd_server: EtcdServer, prefix: str) -> AsyncIterator[Runtime]:
    settings = Settings(
        etcd_endpoints=[etcd_server.endpoint],
        etcd_prefix=prefix,
        replica_id="r0",
        lock_ttl=5,
        acquire_timeout=10,
        hold_timeout=20,
        http_addr="127.0.0.1",
        http_port=0,
    )
    client = EtcdClient(settings.etcd())
    await client.connect(write=True)
    runtime = Runtime(
        settings=settings,
        client=client,
        kube=ApiKube(ApiObject()),  # type: ignore[arg-type]
        supervisor=Supervisor(initial_backoff=0.2),
    )
    await runtime.start()
    try:
        yield runtime
    finally:
        await runtime.stop()
        await client.close()


def api(rt: Runtime) -> ApiObject:
    return rt.kube.obj  # type: ignore[attr-defined,no-any-return]


def cond(obj: ApiObject, type_: str) -> dict[str, Any]:
    found = next((c for c in obj.status.get("conditions") or [] if c["type"] == type_), None)
    assert found is not None, (type_, obj.status)
    return found


def summary(obj: ApiObject) -> dict[str, tuple[str, str]]:
    """Status and reason of the conditions a scan sets (Reconciling: its status only)."""
    out = {
        t: (cond(obj, t)["status"], cond(obj, t)["reason"]) for t in ("Ready", "Intact", "Stalled")
    }
    out["Reconciling"] = (cond(obj, "Reconciling")["status"], "-")
    return out


VIOLATED = {
    "Ready": ("False", "IntegrityViolation"),
    "Intact": ("False", "IntegrityViolation"),
    "Stalled": ("True", "IntegrityViolation"),
    "Reconciling": ("False", "-"),
}


async def record_two_versions(rt: Runtime) -> ApiObject:
    obj = api(rt)
    await obj.kopf_handles(rt, "create")
    obj.generation = 2
    obj.rv += 1
    await obj.kopf_handles(rt, "update")
    assert obj.status["version"] == 2
    assert cond(obj, "Ready")["status"] == "True"
    return obj


async def tamper_version(rt: Runtime, version: int) -> bytes:
    """Change a stored version's data behind the operator's back; returns the original."""
    key = Keys(rt.settings.etcd_prefix).version(NS, NAME, version)
    kv, _ = await rt.client.get(key)
    assert kv is not None
    record = json.loads(kv.value)
    record["data"] = {"retries": 999}
    await rt.client.put(key, json.dumps(record).encode())
    return bytes(kv.value)


# --- defects ------------------------------------------------------------------------------------


async def test_defect_next_resync_reconcile_clears_stalled_while_the_violation_stands(
    rt: Runtime,
) -> None:
    """A scan finds version 1 tampered: Stalled=True/IntegrityViolation, Ready=False,
    Intact=False, as docs/gitops.md promises ("Failed, the same message, until it is
    repaired"). The very next resync round (every ``--resync-interval``, 60 s; the scan
    runs only every ``--integrity-interval``, 600 s) reconciles the unchanged Config:
    ``status_recorded`` keeps Intact=False and Ready=False but writes
    ``Stalled=False`` (reason Recorded) and ``Reconciling=False``. Nothing was repaired.

    Observed: Stalled False for ~9 of every 10 minutes while the store is still
    tampered: kstatus (cli-utils v0.37.2, the bundled binary) then says InProgress with
    the Intact message instead of Failed (a Flux health check waits for its timeout
    instead of failing at once, as documented), and the conditions contradict each
    other (Intact False, Stalled False, Reconciling False). Expected: Stalled stays
    True while Intact is False. Fix: in ``status_recorded`` (and
    ``status_not_published``), when the kept ``Intact`` is False set ``Stalled=True``,
    ``Reconciling=False`` with reason IntegrityViolation, as ``status_integrity`` does."""
    obj = await record_two_versions(rt)
    await tamper_version(rt, 1)
    resync = Resync(rt, Reconciler(rt))
    await resync.verify_one(obj.get())
    assert summary(obj) == VIOLATED

    await resync.reconcile_one(obj.get())  # the next periodic round, nothing changed

    problems = await rt.store.verify(NS, NAME)  # type: ignore[union-attr]
    assert sorted(p.kind for p in problems) == ["chain-broken", "checksum-mismatch"]  # tampered
    assert summary(obj) == VIOLATED, summary(obj)


async def test_defect_kopf_status_computed_before_the_scan_erases_the_violation(
    rt: Runtime,
) -> None:
    """Interleaving: the user changes the spec (generation 3); kopf's handler starts on
    that event's body (status before the scan: Intact True) and reads the head. Meanwhile
    the resync loop's scan finds version 1 tampered and patches Intact=False,
    Stalled=True (guarded: the object is at the resourceVersion it re-read). The
    handler then records v3 and kopf patches ITS status — without a resourceVersion
    guard — built from the pre-scan conditions (``b.keep("Intact")``).

    Observed: Intact True, Ready True, Stalled False: the violation the scan found is
    erased, and it stays erased until the next scan (``--integrity-interval``, 10 min),
    although version 1 still does not verify. Expected: Intact=False (and Ready=False)
    survive a reconcile that did not re-verify. Fix: do not carry ``Intact`` through the
    status the handler read: keep the scan's verdict outside the status kopf
    overwrites (e.g. in etcd, keyed by the head's recordChecksum, or in memory per
    replica) and derive Intact from it in every status builder; or re-read the object
    in the handler just before returning and take ``Intact`` from it."""
    obj = await record_two_versions(rt)
    await tamper_version(rt, 1)
    assert rt.store is not None
    obj.generation = 3
    obj.rv += 1
    event_body = obj.get()  # what kopf's watch event carries
    gate = Gate()
    real_head = rt.store.head

    async def head_then_gate(ns: str, name: str, **kw: Any) -> Any:
        head = await real_head(ns, name, **kw)
        if not gate.reached.is_set():
            await gate.pause()
        return head

    rt.store.head = head_then_gate  # type: ignore[method-assign]
    handler = asyncio.create_task(obj.kopf_handles(rt, "update", event_body))
    try:
        await asyncio.wait_for(gate.reached.wait(), 10)
        await Resync(rt, Reconciler(rt)).verify_one(obj.get())  # the scan, meanwhile
        assert summary(obj) == VIOLATED
    finally:
        gate.go.set()
        await asyncio.wait_for(handler, 20)
    rt.store.head = real_head  # type: ignore[method-assign]

    assert obj.status["version"] == 3  # v3 recorded
    problems = await rt.store.verify(NS, NAME)
    assert sorted(p.kind for p in problems) == ["chain-broken", "checksum-mismatch"]  # v1 still
    assert (cond(obj, "Intact")["status"], cond(obj, "Ready")["status"]) == ("False", "False"), (
        summary(obj)
    )


async def test_defect_stale_clean_scan_clears_a_violation_reported_after_it(
    rt: Runtime,
) -> None:
    """Interleaving: the scan verifies the store (clean). Before it re-reads the object,
    the head key is damaged and the resync loop's reconcile (or kopf's) reports it:
    ``status_corrupt`` — Intact=False, Stalled=True, Ready=False, IntegrityViolation.
    The scan then re-reads the object (now carrying that status), computes
    ``status_integrity(.., problems=[])`` from its stale clean verdict and patches with
    the resourceVersion it just read, so the guard passes.

    Observed: Intact True "every stored version ... verified", Stalled False, Ready True
    ("version 2 is the head") on a Config whose head cannot even be parsed — until
    the next reconcile reports it again. Expected: a clean verdict never clears a
    violation reported after the verification began. Fix: read the object (its
    resourceVersion) BEFORE verifying and patch guarded by that resourceVersion, so
    any status written meanwhile makes the scan's patch fail with 409 (its result is
    then dropped, or the scan re-run)."""
    obj = await record_two_versions(rt)
    assert rt.store is not None
    resync = Resync(rt, Reconciler(rt))
    real_verify = rt.store.verify
    head_key = Keys(rt.settings.etcd_prefix).head(NS, NAME)

    async def verify_then_damage(ns: str, name: str) -> Any:
        problems = await real_verify(ns, name)
        assert problems == []
        # after the verification, before the scan re-reads the object
        await rt.client.put(head_key, b'{"format": 1, "version": "two"')
        await resync.reconcile_one(obj.get())
        assert summary(obj) == VIOLATED, summary(obj)
        return problems

    rt.store.verify = verify_then_damage  # type: ignore[method-assign]
    await resync.verify_one(obj.get())
    rt.store.verify = real_verify  # type: ignore[method-assign]

    assert [p.kind for p in await rt.store.verify(NS, NAME)] == ["corrupt-head"]
    assert summary(obj) == VIOLATED, summary(obj)


# --- hypotheses that held -----------------------------------------------------------------------


async def test_clean_scan_after_repair_restores_ready(rt: Runtime) -> None:
    obj = await record_two_versions(rt)
    original = await tamper_version(rt, 1)
    resync = Resync(rt, Reconciler(rt))
    await resync.verify_one(obj.get())
    assert summary(obj) == VIOLATED
    key = Keys(rt.settings.etcd_prefix).version(NS, NAME, 1)
    await rt.client.put(key, original)  # restored from a backup
    await resync.verify_one(obj.get())
    assert summary(obj) == {
        "Ready": ("True", "Recorded"),
        "Intact": ("True", "Verified"),
        "Stalled": ("False", "Verified"),
        "Reconciling": ("False", "-"),
    }
    assert obj.status["version"] == 2


async def test_scan_patch_of_a_copy_changed_meanwhile_is_dropped(rt: Runtime) -> None:
    """A guarded status write of the scan that lost the race to another write (409)
    is dropped, never forced: the newer status stands."""
    obj = await record_two_versions(rt)
    await tamper_version(rt, 1)
    assert rt.store is not None
    real_get = rt.kube.get_config

    async def get_then_someone_writes(ns: str, name: str) -> Any:
        fresh = await real_get(ns, name)
        obj.patch("other", {"note": "newer"}, None)
        return fresh

    rt.kube.get_config = get_then_someone_writes  # type: ignore[method-assign]
    await Resync(rt, Reconciler(rt)).verify_one(obj.get())
    assert [who for who, _ in obj.patches][-1] == "other"
    assert cond(obj, "Intact")["status"] == "True"


async def test_a_violation_whose_patch_lost_the_race_is_written_again(rt: Runtime) -> None:
    """A violation is never dropped for a 409: the scan re-reads the object and writes
    it onto the newer status (a clean verdict, in contrast, is dropped: it may be stale)."""
    obj = await record_two_versions(rt)
    await tamper_version(rt, 1)
    real_get = rt.kube.get_config
    reads = 0

    async def someone_writes_after_the_first_read(ns: str, name: str) -> Any:
        nonlocal reads
        fresh = await real_get(ns, name)
        reads += 1
        if reads == 1:
            obj.patch("other", {"note": "newer"}, None)
        return fresh

    rt.kube.get_config = someone_writes_after_the_first_read  # type: ignore[method-assign]
    await Resync(rt, Reconciler(rt)).verify_one(obj.get())
    assert [who for who, _ in obj.patches][-2:] == ["other", "resync"]
    assert obj.status["note"] == "newer"
    assert summary(obj) == VIOLATED


async def test_a_corrupt_head_is_reported_by_the_scan_although_its_usage_cannot_be_read(
    rt: Runtime,
) -> None:
    """The scan also prunes rollout records and reads the usage index, which needs the
    head: with the head corrupt that bookkeeping fails, and the violation the scan found
    must be reported all the same."""
    obj = await record_two_versions(rt)
    head_key = Keys(rt.settings.etcd_prefix).head(NS, NAME)
    await rt.client.put(head_key, b'{"format": 1, "version": "two"')
    await Resync(rt, Reconciler(rt)).verify_one(obj.get())
    assert summary(obj) == VIOLATED, summary(obj)
