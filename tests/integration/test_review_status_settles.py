"""Review of commit 3310537 (the ``Recorded`` message chosen from state: "recorded as
version V" iff the head's generation is the object's generation). Does an equal status
now hide something from the resync loop (``Resync.reconcile_one`` settles a Config
whose status does not differ, ``Resync._skip`` then skips it while its resourceVersion
stands)? Real etcd, the real Runtime/Reconciler/Resync; the in-memory API server of
``test_adversarial_resync_queue``. Every ``test_review_*`` is a case checked that holds.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from tests.integration.test_adversarial_resync_queue import (  # noqa: F401 (fixture)
    NS,
    Api,
    Counting,
    Factory,
    Gate,
    Obj,
    kopf_reconciles,
    make_rt,
    uid_owned_by,
    versions,
    wait_until,
)

from etcdconfig.controller import publish as publish_mod
from etcdconfig.controller.loops import Resync, _spread
from etcdconfig.controller.reconciler import Reconciler, RetryLater
from etcdconfig.controller.runtime import Runtime
from etcdconfig.reconcile import status_differs
from etcdconfig.store.keys import Keys


class SpecObj(Obj):
    """An ``Obj`` whose spec the test sets (data, publish)."""

    def __init__(self, api: Api, name: str, uid: str, spec: dict[str, Any]) -> None:
        super().__init__(api, name, uid)
        self.spec = spec

    def get(self) -> dict[str, Any]:
        body = super().get()
        body["spec"] = json.loads(json.dumps(self.spec))
        return body

    def apply(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.change_spec()


def add(api: Api, name: str, uid: str, spec: dict[str, Any]) -> SpecObj:
    obj = SpecObj(api, name, uid, spec)
    api.objs[name] = obj
    return obj


def cond(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == type_)


def recorded_message(api: Api, name: str) -> str:
    return str(cond(api.objs[name].status, "Recorded")["message"])


async def to_skipping_round(resync: Resync, uid: str, every: int) -> None:
    """Rounds until the next one is one in which ``uid``'s full check is not due."""
    while (resync.rounds + _spread(uid)) % every == 0:
        await resync.once()


# --- 1. a generation another replica recorded ------------------------------------------------


async def test_review_a_generation_another_replica_recorded_settles_with_its_state(
    make_rt: Factory,  # noqa: F811 (the fixture imported above)
) -> None:
    """r1 records generations 1 and 2 on their events (commit path, its status patched
    unguarded); r0 owns the Config and its resync reconciles it (the path that finds the
    generation recorded). Both build the same status, so r0's round patches nothing and
    settles it; the status says 'recorded as' for a version r1 wrote (the message now
    states the head's generation, not who wrote it; the Recorded *event* still comes
    only from the writer)."""
    api = Api()
    r0 = await make_rt("r0", api)
    r1 = await make_rt("r1", api)
    assert r0.membership is not None
    await wait_until(lambda: r0.membership.members == ("r0", "r1"), 10, "r0 sees r1")  # type: ignore[union-attr]
    uid = uid_owned_by(("r0", "r1"), "r0", "other")
    obj = api.add("c", uid)
    await kopf_reconciles(r1, obj.get())
    resync = Resync(r0, Reconciler(r0))
    patched = len(api.patches)
    await resync.once()
    assert api.patches[patched:] == []
    assert resync._settled == {uid: str(obj.rv)}
    assert recorded_message(api, "c") == "generation 1 recorded as version 1"

    obj.change_spec()
    await kopf_reconciles(r1, obj.get())
    patched = len(api.patches)
    await resync.once()
    assert api.patches[patched:] == []
    assert resync._settled == {uid: str(obj.rv)}
    assert recorded_message(api, "c") == "generation 2 recorded as version 2"
    assert [(r["version"], r["recordedBy"]) for r in await versions(r0, "c")] == [
        (1, "r1"),
        (2, "r1"),
    ]
    assert api.recorded_events() == ["c", "c"]  # r1's two commits, none from r0


# --- 2. a rollback: a new version with an older version's data -------------------------------


async def test_review_a_rollback_to_older_data_is_a_different_status(
    make_rt: Factory,  # noqa: F811 (the fixture imported above)
) -> None:
    """gen 1 {a}, gen 2 {b}, gen 3 {a} again (v3 has v1's checksum). Each event's status
    settles in the next round with no patch; v3's status is never equal to the one v1
    had (the version tells them apart), and a stale listed copy at generation 1 is
    told the head is version 3 (its status differs, so it is never settled)."""
    api = Api()
    rt = await make_rt("r0", api)
    obj = add(api, "rb", "uid-rb", {"data": {"a": 1}})
    resync = Resync(rt, Reconciler(rt))
    await kopf_reconciles(rt, obj.get())
    v1_body = obj.get()
    await resync.once()
    for data in ({"b": 2}, {"a": 1}):
        obj.apply({"data": data})
        await kopf_reconciles(rt, obj.get())
        patched = len(api.patches)
        await resync.once()
        assert api.patches[patched:] == [], api.patches[patched:]
        assert resync._settled == {"uid-rb": str(obj.rv)}
    st = obj.status
    assert st["version"] == 3 and st["checksum"] == v1_body["status"]["checksum"]
    assert recorded_message(api, "rb") == "generation 3 recorded as version 3"
    assert status_differs(v1_body["status"], st)
    stale = await Reconciler(rt).reconcile(v1_body, trigger="resync")
    assert stale is not None
    assert cond(stale, "Recorded")["message"] == "generation 1 is recorded; head is version 3"
    assert stale["version"] == 3
    assert status_differs(v1_body["status"], stale)


# --- 3. a listing gone stale while the round works on it ------------------------------------


@pytest.mark.parametrize("kopf_patched", [True, False])
async def test_review_a_copy_listed_before_the_next_generation_is_never_settled(
    make_rt: Factory,  # noqa: F811 (the fixture imported above)
    kopf_patched: bool,
) -> None:
    """The round lists the Config at generation 1 (recorded, status equal) and pauses
    before reconciling it; meanwhile generation 2 is applied and recorded (its status
    patched by kopf, or not yet). The reconcile of the stale copy finds the head at
    generation 2: its status ('generation 1 is recorded; head is version 2') differs
    from the listed one, the guarded patch is refused, and the Config is not settled.
    The next rounds bring the status to generation 2 and settle it at the current rv."""
    api = Api()
    rt = await make_rt("r0", api)
    obj = api.add("s", "uid-s")
    await kopf_reconciles(rt, obj.get())
    gate = Gate()
    resync = Resync(rt, Counting(rt, gate))
    round_ = asyncio.create_task(resync.once())
    await asyncio.wait_for(gate.reached.wait(), 10)
    obj.change_spec()
    if kopf_patched:
        await kopf_reconciles(rt, obj.get())
    else:
        assert await Reconciler(rt).reconcile(obj.get(), trigger="kopf") is not None
    gate.go.set()
    await asyncio.wait_for(round_, 20)
    assert "uid-s" not in resync._settled
    assert api.refused == [("resync", "s")]
    for _ in range(3):
        await resync.once()
        if resync._settled.get("uid-s") == str(obj.rv):
            break
    assert resync._settled == {"uid-s": str(obj.rv)}
    assert obj.status["observedGeneration"] == 2
    assert obj.status["version"] == 2
    assert recorded_message(api, "s") == "generation 2 recorded as version 2"


# --- 4. deletion (Retain / Purge) and a re-created Config of the same name -------------------


@pytest.mark.parametrize("purge", [False, True])
async def test_review_a_recreated_config_is_recorded_and_settled_under_its_new_uid(
    make_rt: Factory,  # noqa: F811 (the fixture imported above)
    purge: bool,
) -> None:
    """uid-a at generation 1 (v1, data {"retries": 1}) settles; it is deleted (Retain or
    Purge recorded) and re-created under the same name as uid-b, generation 1, the same
    data. Under Purge the new version is again 'generation 1 recorded as version 1' with
    the same checksum: only recordedAt tells it from uid-a's. The round records it
    (the Config needs work: its status is empty), the next one settles it, uid-a leaves
    _settled, and a stale copy of uid-a writes and reports nothing."""
    api = Api()
    rt = await make_rt("r0", api)
    a = api.add("re", "uid-a")
    await kopf_reconciles(rt, a.get())
    resync = Resync(rt, Reconciler(rt))
    await resync.once()
    assert resync._settled == {"uid-a": str(a.rv)}
    stale_a = a.get()
    assert rt.locks is not None and rt.store is not None
    async with rt.locks.hold(NS, "re") as mutex:
        await rt.store.delete(NS, "re", "uid-a", mutex, purge=purge)
    del api.objs["re"]
    b = api.add("re", "uid-b")
    await resync.once()  # the new uid's status is empty: reconciled, recorded, patched
    want = 1 if purge else 2
    assert b.status["version"] == want
    assert recorded_message(api, "re") == f"generation 1 recorded as version {want}"
    assert b.status["checksum"] == stale_a["status"]["checksum"]
    assert b.status["recordedAt"] != stale_a["status"]["recordedAt"]
    assert status_differs(stale_a["status"], b.status)
    assert "uid-a" not in resync._settled
    patched = len(api.patches)
    await resync.once()
    assert api.patches[patched:] == []
    assert resync._settled == {"uid-b": str(b.rv)}
    assert await Reconciler(rt).reconcile(stale_a, trigger="resync") is None


# --- 5. the publish-failure path --------------------------------------------------------------


async def test_review_a_refused_publish_is_reconciled_every_round_until_it_is_published(
    make_rt: Factory,  # noqa: F811 (the fixture imported above)
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """spec.publish whose ConfigMap is not ours (a stalled refusal). The commit path and
    the resync path build the same RetryLater status ('generation 1 recorded as version
    1', Published False), so no round patches it, yet none settles it: it is reconciled
    in every round, including rounds where its full check is not due. Once the refusal
    goes, the very next round publishes and patches Published True."""
    refusal: list[publish_mod.Refusal | None] = [
        publish_mod.Refusal("ConfigMapNotOwned", "ConfigMap prod/cm is not ours", stalled=True)
    ]

    async def publish_once(rt: Runtime, body: Any, target: Any, head: Any) -> Any:
        return refusal[0]

    monkeypatch.setattr(publish_mod, "_publish_once", publish_once)
    api = Api()
    rt = await make_rt("r0", api)
    obj = add(api, "p", "uid-p", {"data": {"x": 1}, "publish": {"configMap": {"name": "cm"}}})
    await kopf_reconciles(rt, obj.get())
    assert cond(obj.status, "Published")["status"] == "False"
    assert recorded_message(api, "p") == "generation 1 recorded as version 1"
    counting = Counting(rt)
    resync = Resync(rt, counting)
    patched = len(api.patches)
    for _ in range(3):
        await to_skipping_round(resync, "uid-p", 10)
        before = len(counting.calls)
        await resync.once()
        assert counting.calls[before:] == ["p"]
        assert "uid-p" not in resync._settled
    assert api.patches[patched:] == []
    with pytest.raises(RetryLater) as info:
        await Reconciler(rt).reconcile(obj.get(), trigger="resync")
    assert not status_differs(obj.status, info.value.status)

    refusal[0] = None
    await to_skipping_round(resync, "uid-p", 10)
    await resync.once()
    assert cond(obj.status, "Published")["status"] == "True"
    assert cond(obj.status, "Ready")["status"] == "True"
    assert recorded_message(api, "p") == "generation 1 recorded as version 1"
    await resync.once()
    assert resync._settled == {"uid-p": str(obj.rv)}


# --- 6. an Intact=False verdict over a settled Config -----------------------------------------


async def test_review_an_integrity_violation_is_reported_over_a_settled_config_and_cleared(
    make_rt: Factory,  # noqa: F811 (the fixture imported above)
) -> None:
    """v1 and v2 recorded and settled; v1's record is then damaged in etcd. The scan
    (due every round here) patches Intact False; the reconcile that follows builds the
    same stalled status (no patch back to Intact True); repaired, the scan clears it and
    the reconcile settles it Ready again (within three rounds)."""
    api = Api()
    rt = await make_rt("r0", api, integrity_interval=0)
    obj = api.add("iv", "uid-iv")
    await kopf_reconciles(rt, obj.get())
    obj.change_spec()
    await kopf_reconciles(rt, obj.get())
    resync = Resync(rt, Reconciler(rt))
    await resync.once()  # the first scan's verdict (Verified) is patched: rv moves
    await resync.once()
    assert resync._settled == {"uid-iv": str(obj.rv)}
    assert cond(obj.status, "Intact")["reason"] == "Verified"
    key = Keys(rt.settings.etcd_prefix).version(NS, "iv", 1)
    original, _ = await rt.client.get(key)
    assert original is not None
    record = json.loads(original.value)
    record["data"] = {"retries": 99}
    await rt.client.put(key, json.dumps(record).encode())
    await resync.once()
    assert cond(obj.status, "Intact")["status"] == "False"
    assert cond(obj.status, "Stalled")["status"] == "True"
    for _ in range(2):
        patched = len(api.patches)
        await resync.once()
        assert api.patches[patched:] == []
        assert cond(obj.status, "Intact")["status"] == "False"
        assert cond(obj.status, "Ready")["status"] == "False"
    assert recorded_message(api, "iv") == "generation 2 recorded as version 2"
    await rt.client.put(key, original.value)
    # the clean scan patches Intact True (Stalled reason "Verified", Reconciling's
    # "IntegrityViolation" left); the reconcile after it rewrites those reasons to
    # "Recorded" (one more patch, not from this change); the round after settles
    for _ in range(3):
        await resync.once()
    assert cond(obj.status, "Reconciling")["reason"] == "Recorded"
    assert cond(obj.status, "Intact")["status"] == "True"
    assert cond(obj.status, "Ready")["status"] == "True"
    assert cond(obj.status, "Stalled")["status"] == "False"
    assert resync._settled == {"uid-iv": str(obj.rv)}


# --- 7. an old owner's late unguarded patch after a hand-over ---------------------------------


async def test_review_an_old_owners_late_patch_is_repaired_by_the_new_owner(
    make_rt: Factory,  # noqa: F811 (the fixture imported above)
) -> None:
    """r1 (the old owner) built generation 1's status; r0 records generation 2 and its
    round settles it; then r1's late kopf patch (unguarded) puts generation 1's status
    back. The rv moved and observedGeneration is behind: r0's next round reconciles and
    patches generation 2's status back, whether or not its full check is due."""
    api = Api()
    r0 = await make_rt("r0", api)
    r1 = await make_rt("r1", api)
    assert r0.membership is not None
    await wait_until(lambda: r0.membership.members == ("r0", "r1"), 10, "r0 sees r1")  # type: ignore[union-attr]
    uid = uid_owned_by(("r0", "r1"), "r0", "late")
    obj = api.add("late", uid)
    late = await Reconciler(r1).reconcile(obj.get(), trigger="kopf")
    assert late is not None
    obj.change_spec()
    await kopf_reconciles(r0, obj.get())
    resync = Resync(r0, Reconciler(r0))
    await resync.once()
    assert resync._settled == {uid: str(obj.rv)}
    await to_skipping_round(resync, uid, 10)
    assert resync._settled == {uid: str(obj.rv)}
    api.patch("kopf-r1", "late", late, None)
    assert obj.status["observedGeneration"] == 1
    await resync.once()
    assert obj.status["observedGeneration"] == 2
    assert obj.status["version"] == 2
    assert recorded_message(api, "late") == "generation 2 recorded as version 2"


# --- 8. two replicas reconcile the same generation at once -----------------------------------


async def test_review_the_writer_and_the_replica_that_found_it_recorded_build_one_status(
    make_rt: Factory,  # noqa: F811 (the fixture imported above)
) -> None:
    """Generation 2 is reconciled by r0 and r1 at the same moment (an event on the old
    owner and the new owner's round during a hand-over): one commits, the other finds it
    recorded (under the lock, ``recorded=False``). Both statuses are the same ('recorded
    as version 2': the head's generation is the object's), there is one Recorded event,
    and r0's next round patches nothing and settles it."""
    api = Api()
    r0 = await make_rt("r0", api)
    r1 = await make_rt("r1", api)
    assert r0.membership is not None
    await wait_until(lambda: r0.membership.members == ("r0", "r1"), 10, "r0 sees r1")  # type: ignore[union-attr]
    uid = uid_owned_by(("r0", "r1"), "r0", "both")
    obj = api.add("both", uid)
    await kopf_reconciles(r0, obj.get())
    obj.change_spec()
    body = obj.get()
    s0, s1 = await asyncio.gather(
        Reconciler(r0).reconcile(body, trigger="resync"),
        Reconciler(r1).reconcile(body, trigger="kopf"),
    )
    assert s0 is not None and s1 is not None
    assert cond(s0, "Recorded")["message"] == "generation 2 recorded as version 2"
    assert not status_differs(s0, s1) and not status_differs(s1, s0)
    assert [r["version"] for r in await versions(r0, "both")] == [1, 2]
    assert api.recorded_events() == ["both", "both"]  # v1 and v2, once each
    api.patch("kopf-r1", "both", s1, None)
    resync = Resync(r0, Reconciler(r0))
    patched = len(api.patches)
    await resync.once()
    assert api.patches[patched:] == []
    assert resync._settled == {uid: str(obj.rv)}


# --- 9. a status an earlier release wrote (rolling upgrade) ----------------------------------


async def test_review_a_status_in_the_old_wording_is_rewritten_once_then_settled(
    make_rt: Factory,  # noqa: F811 (the fixture imported above)
) -> None:
    """A Config whose status an earlier release's resync wrote ('generation 1 is
    recorded; head is version 1' while the head holds generation 1) is not equal to
    what this release builds: the round patches it once (guarded), the next one
    settles it, and nothing else changes (transition times kept)."""
    api = Api()
    rt = await make_rt("r0", api)
    obj = api.add("old", "uid-old")
    await kopf_reconciles(rt, obj.get())
    before = json.loads(json.dumps(obj.status))
    cond(obj.status, "Recorded")["message"] = "generation 1 is recorded; head is version 1"
    obj.rv = api.bump()
    resync = Resync(rt, Reconciler(rt))
    patched = len(api.patches)
    await resync.once()
    assert len(api.patches[patched:]) == 1
    assert obj.status == before
    assert "uid-old" not in resync._settled
    patched = len(api.patches)
    await resync.once()
    assert api.patches[patched:] == []
    assert resync._settled == {"uid-old": str(obj.rv)}
