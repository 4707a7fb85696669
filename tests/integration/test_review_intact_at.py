"""Review of commit 9239b53 (``Runtime.intact_at``: a verdict is overlaid only on a
status whose ``Intact`` did not transition after the scan started). Real etcd, the real
Runtime/Reconciler/Resync; the in-memory API server of ``test_adversarial_resync_queue``.
``test_review_*``: a case that holds; ``test_review_*``: a case that fails on 9239b53.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from tests.integration.test_adversarial_resync_queue import (  # noqa: F401 (fixture)
    NS,
    Api,
    Factory,
    kopf_reconciles,
    make_rt,
    uid_owned_by,
    wait_until,
)

from etcdconfig.controller.loops import Resync
from etcdconfig.controller.reconciler import Reconciler
from etcdconfig.controller.runtime import Runtime
from etcdconfig.store.keys import Keys


def cond(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == type_)


class Paused:
    """Wraps ``rt.store.verify``: the result is computed, then the call waits."""

    def __init__(self, rt: Runtime) -> None:
        assert rt.store is not None
        self.inner = rt.store.verify
        self.computed = asyncio.Event()
        self.go = asyncio.Event()
        rt.store.verify = self  # type: ignore[method-assign]

    async def __call__(self, ns: str, name: str) -> Any:
        result = await self.inner(ns, name)
        self.computed.set()
        await self.go.wait()
        return result


async def _damageable(rt: Runtime, obj: Any) -> tuple[bytes, bytes, bytes]:
    key = Keys(rt.settings.etcd_prefix).version(NS, obj.name, 1)
    original, _ = await rt.client.get(key)
    assert original is not None
    record = json.loads(original.value)
    record["data"] = {"retries": 99}
    return key, original.value, json.dumps(record).encode()


async def test_review_a_clean_verdict_patched_after_our_scan_started_hides_our_violation(
    make_rt: Factory,  # noqa: F811 (the fixture imported above)
) -> None:
    """The store was damaged and repaired (Intact False, awaiting a scan). A
    condition's lastTransitionTime is when its status was *built* (after the
    store was read), ``intact_at`` is when our scan *started*. r1 (owner until a
    hand-over) verifies a clean store; the store is damaged; r0 (the new owner) starts
    its scan and finds the damage; r1's clean status (Intact False -> True) lands after
    r0's scan started, in a later second. r0's scan compares its verdict with the copy
    it read before the scan (Intact False already): equal, nothing patched. Its verdict
    (False) is kept, but every later status r0 builds sees an Intact that transitioned
    after the scan started and keeps it: Intact True / Ready True on a damaged store,
    settled, until r0's next scan (integrity_interval)."""
    api = Api()
    r0 = await make_rt("r0", api)
    r1 = await make_rt("r1", api)
    assert r0.membership is not None
    await wait_until(lambda: r0.membership.members == ("r0", "r1"), 10, "r0 sees r1")  # type: ignore[union-attr]
    uid = uid_owned_by(("r0", "r1"), "r0", "skewless")
    obj = api.add("cv", uid)
    await kopf_reconciles(r0, obj.get())
    key, original, damaged = await _damageable(r0, obj)
    # an earlier violation, repaired: Intact is False until a scan verifies the store
    await r0.client.put(key, damaged)
    await Resync(r0, Reconciler(r0)).verify_one(obj.get())
    assert cond(obj.status, "Intact")["status"] == "False"
    await r0.client.put(key, original)

    p1, p0 = Paused(r1), Paused(r0)
    scan1 = asyncio.create_task(Resync(r1, Reconciler(r1)).verify_one(obj.get()))
    await asyncio.wait_for(p1.computed.wait(), 10)  # r1: the repaired store verified
    await r0.client.put(key, damaged)
    scan0 = asyncio.create_task(Resync(r0, Reconciler(r0)).verify_one(obj.get()))
    await asyncio.wait_for(p0.computed.wait(), 10)  # r0: the damage found
    started = time.time()
    await wait_until(lambda: time.time() >= int(started) + 1, 5, "the next second")
    p1.go.set()
    await asyncio.wait_for(scan1, 10)  # r1's clean status lands
    assert cond(obj.status, "Intact")["status"] == "True"
    p0.go.set()
    await asyncio.wait_for(scan0, 10)
    assert r0.intact[uid]["status"] == "False"  # r0 holds the violation
    assert await r0.store.verify(NS, "cv") != []  # type: ignore[union-attr]
    resync0 = Resync(r0, Reconciler(r0))
    await resync0.once()  # r0's rounds: every status built carries the verdict?
    await resync0.once()
    intact, ready = cond(obj.status, "Intact"), cond(obj.status, "Ready")
    assert (intact["status"], ready["status"]) == ("False", "False"), (
        f"violation hidden: Intact {intact['status']} ({intact['reason']}, "
        f"{intact['lastTransitionTime']}), Ready {ready['status']}; r0's scan started "
        f"{started:.3f}, its verdict {r0.intact[uid]['status']}; "
        f"settled: {uid in resync0._settled}"
    )


class _Clock:
    """``time`` as ``controller.loops`` sees it, ``ahead`` seconds fast (another pod's
    clock: NTP keeps nodes close, never equal)."""

    def __init__(self, ahead: float) -> None:
        self.ahead = ahead

    def time(self) -> float:
        return time.time() + self.ahead

    def monotonic(self) -> float:
        return time.monotonic()


async def test_review_a_clock_two_seconds_fast_lets_a_stale_clean_verdict_win_after_hand_back(
    make_rt: Factory,  # noqa: F811 (the fixture imported above)
    monkeypatch: Any,
) -> None:
    """The hand-back case of test_review_status_settles_intact (no round of r0 while
    r1 owns the Config), with r0's clock 2 s ahead of r1's. ``intact_at`` is r0's
    clock, r1's Intact lastTransitionTime is r1's: r1's newer violation (1 s after r0's
    clean scan) looks older than r0's scan, so r0's stale clean verdict is overlaid:
    Intact True / Ready True on a damaged store, settled."""
    from etcdconfig.controller import loops

    api = Api()
    r0 = await make_rt("r0", api)
    assert r0.membership is not None and r0.store is not None
    uid = uid_owned_by(("r0", "r1"), "r1", "skew")
    obj = api.add("sk", uid)
    await kopf_reconciles(r0, obj.get())
    key, _, damaged = await _damageable(r0, obj)
    resync0 = Resync(r0, Reconciler(r0))
    await resync0.once()
    monkeypatch.setattr(loops, "time", _Clock(2.0))  # r0's scan, on r0's clock
    await resync0.verify_one(obj.get())
    monkeypatch.setattr(loops, "time", time)
    assert r0.intact[uid]["status"] == "True"
    scanned = time.time()
    await wait_until(lambda: time.time() >= int(scanned) + 1, 5, "the next second")

    r1 = await make_rt("r1", api)
    await wait_until(lambda: r0.membership.members == ("r0", "r1"), 10, "r0 sees r1")  # type: ignore[union-attr]
    resync1 = Resync(r1, Reconciler(r1))
    await resync1.once()
    await r0.client.put(key, damaged)
    await resync1.verify_one(obj.get())  # r1's scan (r1's clock): the damage
    assert cond(obj.status, "Intact")["status"] == "False"

    await r1.stop()
    await wait_until(lambda: r0.membership.members == ("r0",), 10, "r1 gone")  # type: ignore[union-attr]
    await resync0.once()
    await resync0.once()
    intact, ready = cond(obj.status, "Intact"), cond(obj.status, "Ready")
    assert (intact["status"], ready["status"]) == ("False", "False"), (
        f"r0's stale clean verdict replaced r1's violation: Intact {intact['status']} "
        f"({intact['reason']}), Ready {ready['status']}; r0's clock 2 s fast; "
        f"the Intact on the object now transitioned "
        f"{intact['lastTransitionTime']}; "
        f"settled: {uid in resync0._settled}"
    )


async def test_review_a_body_read_before_a_scan_crossing_a_second_keeps_the_violation(
    make_rt: Factory,  # noqa: F811 (the fixture imported above)
) -> None:
    """One replica. A kopf event body is read (Intact True); the scan starts, finds the
    damage, and its patch lands in a later second (Intact False, transition later than
    the scan start). The handler of the old body then builds its status: the overlay
    applies (the body's Intact transitioned before the scan started) and the violation
    stands; a body read after the scan's patch keeps its own False; the rounds after
    keep it."""
    api = Api()
    r0 = await make_rt("r0", api)
    uid = "uid-cross"
    obj = api.add("cx", uid)
    await kopf_reconciles(r0, obj.get())
    key, _, damaged = await _damageable(r0, obj)
    obj.change_spec()
    before = obj.get()  # the event of generation 2, read before the scan
    await r0.client.put(key, damaged)
    p0 = Paused(r0)
    scan = asyncio.create_task(Resync(r0, Reconciler(r0)).verify_one(obj.get()))
    await asyncio.wait_for(p0.computed.wait(), 10)
    started = time.time()
    await wait_until(lambda: time.time() >= int(started) + 1, 5, "the next second")
    p0.go.set()
    await asyncio.wait_for(scan, 10)
    assert cond(obj.status, "Intact")["status"] == "False"
    after = obj.get()
    await kopf_reconciles(r0, before)
    assert (cond(obj.status, "Intact")["status"], cond(obj.status, "Ready")["status"]) == (
        "False",
        "False",
    )
    await kopf_reconciles(r0, after)
    resync = Resync(r0, Reconciler(r0))
    await resync.once()
    await resync.once()
    assert (cond(obj.status, "Intact")["status"], cond(obj.status, "Ready")["status"]) == (
        "False",
        "False",
    )
