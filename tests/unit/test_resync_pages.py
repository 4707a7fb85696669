"""A resync round lists the Configs a page at a time and keeps only what it works on:
a round over settled Configs must not hold the whole list (at 10,000 Configs that
was the largest transient of the operator; docs/scale.md §4)."""

from __future__ import annotations

import tracemalloc
from collections.abc import AsyncIterator
from typing import Any

from tests.unit.test_review_resync_queue import Kube, setup

from etcdconfig.controller.loops import _spread

PAGE = 100
PAGES = 10
EVERY = 100  # a full check of one settled Config in a hundred per round


class PagedKube(Kube):
    """Pages made as they are asked for (as the API server's are), each Config with
    some 2 KB of spec, like a real one."""

    def obj(self, name: str) -> dict[str, Any]:
        obj = super().obj(name)
        obj["spec"] = {"data": {f"key-{i}": f"{name}-value-{i:04d}" * 4 for i in range(32)}}
        return obj

    async def config_pages(
        self, namespace: str | None = None
    ) -> AsyncIterator[list[dict[str, Any]]]:
        for start in range(0, len(self.names), PAGE):
            yield [self.obj(n) for n in self.names[start : start + PAGE]]


def settled_round(names: list[str], integrity: bool) -> tuple[Any, Any, Any, Any]:
    resync, rt, _kube, rec, store = setup(names, integrity_interval=0.0 if integrity else 3600.0)
    kube = PagedKube(names)
    rt.kube = kube
    rt.settings.resync_full_every = EVERY
    resync._members = resync._membership()
    resync._settled = {f"uid-{n}": "7" for n in names}
    return resync, kube, rec, store


def page_bytes(kube: PagedKube, names: list[str]) -> int:
    tracemalloc.start()
    try:
        page = [kube.obj(n) for n in names[:PAGE]]
        size = tracemalloc.get_traced_memory()[0]
        del page
    finally:
        tracemalloc.stop()
    return size


async def listing_peak(resync: Any) -> int:
    """The traced peak up to the first step of the round's work: what the listing
    held (the work's own results, such as each Config's Intact status, are state
    kept for good, not the round's transient)."""
    peaks: list[int] = []

    def first(step: Any) -> Any:
        async def wrapped(obj: dict[str, Any]) -> None:
            if not peaks:
                peaks.append(tracemalloc.get_traced_memory()[1])
            await step(obj)

        return wrapped

    resync.reconcile_finalized = first(resync.reconcile_finalized)
    resync.verify_one = first(resync.verify_one)
    tracemalloc.start()
    try:
        await resync.once()
    finally:
        tracemalloc.stop()
    (peak,) = peaks
    return peak


async def test_a_round_over_settled_configs_holds_one_page_not_the_list() -> None:
    names = [f"c{i}" for i in range(PAGE * PAGES)]
    resync, kube, rec, store = settled_round(names, integrity=False)
    one_page = page_bytes(kube, names)
    peak = await listing_peak(resync)
    due = sorted(n for n in names if (0 + _spread(f"uid-{n}")) % EVERY == 0)
    assert sorted(rec.calls) == due  # only the Configs whose full check is due
    assert store.verified == []
    # the page in hand (and the next one as it is made), what is due (a hundredth);
    # holding the list would be PAGES pages, holding two pages at once over 2
    assert peak < 1.6 * one_page, f"peak {peak} B with pages of {one_page} B"


async def test_with_the_integrity_scan_due_skipped_configs_are_kept_as_names_only() -> None:
    names = [f"c{i}" for i in range(PAGE * PAGES)]
    resync, kube, rec, store = settled_round(names, integrity=True)
    one_page = page_bytes(kube, names)
    peak = await listing_peak(resync)
    assert sorted(store.verified) == sorted(names)  # every Config verified
    due = sorted(n for n in names if (0 + _spread(f"uid-{n}")) % EVERY == 0)
    assert sorted(rec.calls) == due
    # as above, plus a name and uid for every Config (about half a page here)
    assert peak < 2.2 * one_page, f"peak {peak} B with pages of {one_page} B"
