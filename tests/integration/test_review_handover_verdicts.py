"""Review of commit f9d1a41 (a hand-over round drops this replica's clean integrity
verdicts; ``keep_usage`` drops verdicts of Configs no longer owned). Real etcd, the real
Runtime/Reconciler/Resync; the in-memory API server of ``test_adversarial_resync_queue``.
``test_review_*``: a case that holds; ``test_defect_*``: a known defect, not fixed yet
(strict xfail: it must go on failing until the fix lands).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
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


async def _damageable(rt: Runtime, name: str) -> tuple[bytes, bytes, bytes]:
    key = Keys(rt.settings.etcd_prefix).version(NS, name, 1)
    original, _ = await rt.client.get(key)
    assert original is not None
    record = json.loads(original.value)
    record["data"] = {"retries": 99}
    return key, original.value, json.dumps(record).encode()


@pytest.mark.xfail(
    strict=True,
    reason="known, found at the end of session 9: clean verdicts are dropped when the "
    "hand-over round starts, not at the membership change; a kopf event handled in "
    "between overlays the stale clean verdict (fix: tie each clean verdict to the "
    "membership generation it was made under)",
)
async def test_defect_a_kopf_event_before_the_hand_over_round_overlays_a_stale_clean_verdict(
    make_rt: Factory,  # noqa: F811 (the fixture imported above)
) -> None:
    """r0 scans ``kv`` clean (verdict True). r1 joins and owns it, the store is damaged,
    r1's scan patches Intact False. r1 leaves. Before r0's hand-over round runs (it runs
    on membership.changed, asynchronously), a kopf event for ``kv`` (a spec change) is
    handled by r0: the stale clean verdict is still in ``rt.intact`` and is overlaid.
    Then r0's hand-over round drops the verdict, but the body now says Intact True."""
    api = Api()
    r0 = await make_rt("r0", api)
    assert r0.membership is not None and r0.store is not None
    uid = uid_owned_by(("r0", "r1"), "r1", "kopfwin")
    obj = api.add("kv", uid)
    await kopf_reconciles(r0, obj.get())
    key, _, damaged = await _damageable(r0, "kv")
    resync0 = Resync(r0, Reconciler(r0))
    await resync0.once()
    await resync0.verify_one(obj.get())
    assert r0.intact[uid]["status"] == "True"

    r1 = await make_rt("r1", api)
    await wait_until(lambda: r0.membership.members == ("r0", "r1"), 10, "r0 sees r1")  # type: ignore[union-attr]
    resync1 = Resync(r1, Reconciler(r1))
    await resync1.once()
    await r0.client.put(key, damaged)
    await resync1.verify_one(obj.get())
    assert cond(obj.status, "Intact")["status"] == "False"
    await r1.stop()
    await wait_until(lambda: r0.membership.members == ("r0",), 10, "r1 gone")  # type: ignore[union-attr]

    obj.change_spec()
    await kopf_reconciles(r0, obj.get())  # the event, before r0's hand-over round
    await resync0.once()  # the hand-over round
    await resync0.once()
    assert await r0.store.verify(NS, "kv") != []
    intact, ready = cond(obj.status, "Intact"), cond(obj.status, "Ready")
    assert (intact["status"], ready["status"]) == ("False", "False"), (
        f"violation hidden: Intact {intact['status']} ({intact['reason']}), "
        f"Ready {ready['status']}; r0 verdict now {r0.intact.get(uid)}; "
        f"settled: {uid in resync0._settled}"
    )


async def test_review_a_clean_verdict_stored_after_another_owners_scan_is_dropped_by_the_round(
    make_rt: Factory,  # noqa: F811 (the fixture imported above)
) -> None:
    """r0's scan (a worker of a round) computes clean and pauses; r1 joins, owns the
    Config, finds the damage and patches False; r1 leaves; r0's scan resumes: its copy
    read before (Intact True) equals its verdict, so nothing is patched and the clean
    verdict is stored with no resourceVersion check. The next round is a hand-over
    (generation changed) and drops it: the violation stands."""
    api = Api()
    r0 = await make_rt("r0", api)
    assert r0.membership is not None and r0.store is not None
    uid = uid_owned_by(("r0", "r1"), "r1", "midscan")
    obj = api.add("ms", uid)
    await kopf_reconciles(r0, obj.get())
    key, _, damaged = await _damageable(r0, "ms")
    resync0 = Resync(r0, Reconciler(r0))
    await resync0.once()
    await resync0.verify_one(obj.get())  # Intact True on the object
    p0 = Paused(r0)
    scan0 = asyncio.create_task(resync0.verify_one(obj.get()))
    await asyncio.wait_for(p0.computed.wait(), 10)

    r1 = await make_rt("r1", api)
    await wait_until(lambda: r0.membership.members == ("r0", "r1"), 10, "r0 sees r1")  # type: ignore[union-attr]
    resync1 = Resync(r1, Reconciler(r1))
    await resync1.once()
    await r0.client.put(key, damaged)
    await resync1.verify_one(obj.get())
    assert cond(obj.status, "Intact")["status"] == "False"
    await r1.stop()
    await wait_until(lambda: r0.membership.members == ("r0",), 10, "r1 gone")  # type: ignore[union-attr]
    p0.go.set()
    await asyncio.wait_for(scan0, 10)
    assert r0.intact[uid]["status"] == "True"  # the stale clean verdict, stored
    await resync0.once()
    await resync0.once()
    assert uid not in r0.intact
    assert (cond(obj.status, "Intact")["status"], cond(obj.status, "Ready")["status"]) == (
        "False",
        "False",
    )


async def test_review_a_listing_across_a_membership_change_leaks_no_verdict(
    make_rt: Factory,  # noqa: F811 (the fixture imported above)
) -> None:
    """A round whose listing saw a membership change skips keep_usage; r0's violation
    verdict of a Config now r1's survives it, and the next (stable) round drops it."""
    api = Api()
    r0 = await make_rt("r0", api)
    assert r0.membership is not None and r0.store is not None
    uid = uid_owned_by(("r0", "r1"), "r1", "leak")
    obj = api.add("lk", uid)
    await kopf_reconciles(r0, obj.get())
    key, _, damaged = await _damageable(r0, "lk")
    resync0 = Resync(r0, Reconciler(r0))
    await resync0.once()
    await r0.client.put(key, damaged)
    await resync0.verify_one(obj.get())
    assert r0.intact[uid]["status"] == "False"

    r1_started: list[Runtime] = []
    pages = resync0._pages

    async def joining_pages() -> Any:
        async for page in pages():
            if not r1_started:
                r1_started.append(await make_rt("r1", api))
                await wait_until(
                    lambda: r0.membership.members == ("r0", "r1"),
                    10,
                    "r0 sees r1",  # type: ignore[union-attr]
                )
            yield page

    resync0._pages = joining_pages  # type: ignore[method-assign]
    await resync0.once()  # started under ("r0",), listed under ("r0", "r1")
    assert uid in r0.intact  # keep_usage skipped this round (by design)
    resync0._pages = pages  # type: ignore[method-assign]
    await resync0.once()  # hand-over round, stable listing
    assert uid not in r0.intact
