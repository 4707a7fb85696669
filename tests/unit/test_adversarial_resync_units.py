"""Adversarial review of e2cb23a (the resync skips *settled* Configs), loop logic only.

``Resync.once`` skips a Config a resync reconcile found nothing to change in while
its resourceVersion is the one that reconcile saw, its generation is observed, and
its full check (every ``resync_full_every`` rounds, spread by uid) is not due; it
clears every mark "after any change of membership (a hand-over)" (loops.py module
docstring). The reconciler is a fake here: these tests look only at which Configs
a round reconciles. Tests named ``test_review_*`` proved a defect of the code as
reviewed (fixed: Membership.generation; mutant M92).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace
from typing import Any, cast

from etcdconfig.controller.loops import Resync, _spread
from etcdconfig.controller.reconciler import RetryLater

EVERY = 10


async def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.005)  # poll interval of a deadline-bounded wait
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Kube:
    """Configs whose status already says what the fake reconcile returns."""

    def __init__(self, names: list[str]) -> None:
        self.names = list(names)
        self.versions = dict.fromkeys(names, "7")
        self.patched: list[str] = []
        self.patch_result = True
        self.list_gate: asyncio.Event | None = None
        self.listing = asyncio.Event()

    def obj(self, name: str) -> dict[str, Any]:
        return {
            "metadata": {
                "namespace": "ns",
                "name": name,
                "uid": f"uid-{name}",
                "generation": 2,
                "resourceVersion": self.versions[name],
                "finalizers": ["etcdconfig.io/finalizer"],
            },
            "status": {"observedGeneration": 2},
        }

    async def config_pages(
        self, namespace: str | None = None
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """The listing as one page (the real client pages it)."""
        yield await self.list_configs(namespace)

    async def list_configs(self, namespace: str | None = None) -> list[dict[str, Any]]:
        self.listing.set()
        if self.list_gate is not None:
            gate, self.list_gate = self.list_gate, None
            await gate.wait()
        return [self.obj(n) for n in self.names]

    async def patch_status(self, namespace: str, name: str, status: Any, **_: Any) -> bool:
        self.patched.append(name)
        return self.patch_result


class Reconciler:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.result: dict[str, Any] = {}  # name -> status, or an exception to raise

    async def reconcile(self, body: dict[str, Any], *, trigger: str) -> dict[str, Any] | None:
        name = body["metadata"]["name"]
        self.calls.append(name)
        r = self.result.get(name, {"observedGeneration": 2})
        if isinstance(r, BaseException):
            raise r
        return cast("dict[str, Any] | None", r)


class Members:
    """Like ``Membership``: ``_set`` sets ``changed`` on every change of the set."""

    def __init__(self, owns: Callable[[str], bool] | None = None) -> None:
        self.members: tuple[str, ...] = ("r",)
        self.changed = asyncio.Event()
        self.generation = 0  # as Membership: every change counts
        self._owns = owns or (lambda uid: True)

    def owns(self, uid: str) -> bool:
        return self._owns(uid)

    def set(self, members: tuple[str, ...]) -> None:
        if members != self.members:
            self.members = members
            self.generation += 1
            self.changed.set()


def setup(names: list[str], members: Members | None = None) -> tuple[Resync, Kube, Reconciler]:
    kube = Kube(names)
    rec = Reconciler()
    rt = SimpleNamespace(
        settings=SimpleNamespace(
            namespaces=[],
            resync_concurrency=4,
            resync_interval=3600.0,
            integrity_interval=3600.0,
            resync_full_every=EVERY,
        ),
        membership=members or Members(),
        kube=kube,
        keep_usage=lambda uids: None,
    )
    return Resync(cast("Any", rt), cast("Any", rec)), kube, rec


def due(names: list[str], round_: int) -> set[str]:
    return {n for n in names if (round_ + _spread(f"uid-{n}")) % EVERY == 0}


NAMES = [f"c{i}" for i in range(40)]


async def settle(resync: Resync, rec: Reconciler) -> None:
    await resync.once()  # round 0: nothing settled yet, every Config reconciled
    assert sorted(rec.calls) == sorted(NAMES)
    assert len(resync._settled) == len(NAMES)
    rec.calls.clear()


# --- defects ------------------------------------------------------------------------------------


async def test_review_membership_change_and_back_within_one_round_keeps_every_mark() -> None:
    """The module docstring: a settled Config is reconciled in full "... and all of them
    after any change of membership (a hand-over)". ``once`` compares the sorted member
    tuple it reads with the one the previous round read, so a change that is undone
    before the next round reads it is no change at all.

    Interleaving (real ``run()`` loop): round 1 lists the Configs (10,000 Configs: a
    long round, the very reason for e2cb23a). Meanwhile replica r2 joins — every
    Config r2 outranks is no longer ours: ``Rollouts._owned`` turns False, so our
    rollout watchers exit at their next poll and a debounce timer firing now rolls
    nothing out (``Rollouts.roll`` returns None) — and r2 leaves again (a crash-looping
    new pod, a lease lost and re-joined under the same replica id). Both set
    ``membership.changed``; the loop starts round 2 at once, reads ("r",) again, and
    clears nothing: every Config is skipped except the tenth whose full check is due.

    Observed: round 2 reconciles only the due tenth. Expected: all of them, as after
    any hand-over — it is the resync reconcile (``rollouts.schedule``) that re-attaches
    the abandoned watchers, so failure detection / auto-rollback of a rollout under
    way waits up to ``resync_full_every`` rounds (10 min by default) instead of
    starting at once. Fix: clear the marks on every ``membership.changed`` wake-up
    (e.g. a generation counter in ``Membership._set`` compared per round, instead of
    the member tuple), or have ``Rollouts`` drop the settled mark of any uid whose
    timer/watcher it abandons."""
    members = Members()
    resync, kube, rec = setup(NAMES, members)
    loop = asyncio.create_task(resync.run())
    try:
        members.changed.set()
        await wait_until(lambda: resync.rounds == 1, 5, "round 0")
        assert len(resync._settled) == len(NAMES)
        rec.calls.clear()

        gate = kube.list_gate = asyncio.Event()
        kube.listing.clear()
        members.changed.set()  # round 1 starts and blocks in its listing
        await asyncio.wait_for(kube.listing.wait(), 5)
        members.set(("r", "r2"))  # r2 joins: the hand-over starts ...
        members.set(("r",))  # ... and is undone before any round reads the members
        gate.set()
        await wait_until(lambda: resync.rounds == 3, 5, "rounds 1 and 2")
        assert resync._members is not None and resync._members[0] == ("r",)
        # round 1 read the members after the change was undone, and so did round 2
        assert set(rec.calls) == set(NAMES), (
            f"after a membership change only {len(set(rec.calls))} of {len(NAMES)} Configs "
            "were reconciled"
        )
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)


# --- held ---------------------------------------------------------------------------------------


async def test_held_first_round_after_start_reconciles_everything() -> None:
    resync, _, rec = setup(NAMES)
    await resync.once()
    assert sorted(rec.calls) == sorted(NAMES)


async def test_held_a_membership_change_seen_by_a_round_reconciles_everything() -> None:
    members = Members()
    resync, _, rec = setup(NAMES, members)
    await settle(resync, rec)
    members.set(("r", "r2"))
    await resync.once()
    assert sorted(rec.calls) == sorted(NAMES)
    rec.calls.clear()
    members.set(("r",))  # back: seen by a round, so a hand-over again
    await resync.once()
    assert sorted(rec.calls) == sorted(NAMES)


async def test_held_a_uid_that_left_ownership_and_came_back_is_reconciled_again() -> None:
    """``owned()`` drops a uid (another replica owns it) and re-adds it later with the
    member tuple equal at both rounds it was read: its mark was pruned meanwhile."""
    mine = {"value": True}
    members = Members(owns=lambda uid: uid != "uid-c5" or mine["value"])
    resync, _, rec = setup(NAMES, members)
    await settle(resync, rec)
    mine["value"] = False
    await resync.once()
    assert "c5" not in rec.calls and "uid-c5" not in resync._settled
    mine["value"] = True
    rec.calls.clear()
    await resync.once()
    assert "c5" in rec.calls


async def test_held_every_settled_config_gets_its_full_check_within_every_rounds() -> None:
    resync, _, rec = setup(NAMES)
    await settle(resync, rec)
    seen: set[str] = set()
    for round_ in range(1, 1 + EVERY):
        rec.calls.clear()
        await resync.once()
        assert set(rec.calls) == due(NAMES, round_)
        seen |= set(rec.calls)
    assert seen == set(NAMES)


async def test_held_a_moved_resource_version_is_reconciled_at_the_next_round() -> None:
    resync, kube, rec = setup(NAMES)
    await settle(resync, rec)
    kube.versions["c1"] = "8"  # kopf's own status patch, a label, a finalizer…
    await resync.once()
    assert "c1" in rec.calls


async def test_held_retry_later_conflict_and_none_are_never_settled() -> None:
    resync, kube, rec = setup(NAMES)
    rec.result["c1"] = RetryLater("etcd away", {"observedGeneration": 2}, 1.0)
    rec.result["c2"] = {"observedGeneration": 2, "version": 9}  # differs: patched
    kube.patch_result = False  # … and the guarded patch 409s
    rec.result["c3"] = None  # stale incarnation / object going
    for _ in range(3):
        rec.calls.clear()
        await resync.once()
        assert {"c1", "c2", "c3"} <= set(rec.calls)
    assert not {"uid-c1", "uid-c2", "uid-c3"} & set(resync._settled)


async def test_held_a_settled_mark_is_dropped_as_soon_as_a_reconcile_starts() -> None:
    """A mark set, then a full check that ends in RetryLater: no stale mark survives."""
    resync, _, rec = setup(NAMES)
    await settle(resync, rec)
    target = next(n for n in NAMES if n in due(NAMES, 1))
    rec.result[target] = RetryLater("lock busy", {"observedGeneration": 2}, 1.0)
    await resync.once()
    assert f"uid-{target}" not in resync._settled
    rec.calls.clear()
    await resync.once()
    assert target in rec.calls


async def test_held_an_unobserved_generation_is_never_skipped() -> None:
    resync, kube, rec = setup(NAMES)
    await settle(resync, rec)
    real = kube.obj

    def regressed(name: str) -> dict[str, Any]:
        o = real(name)
        if name == "c4":  # same resourceVersion (a fake), generation not observed
            o["status"] = {"observedGeneration": 1}
        return o

    kube.obj = regressed  # type: ignore[method-assign]
    await resync.once()
    assert "c4" in rec.calls
