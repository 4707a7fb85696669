"""One resync loop over the Configs this replica owns (not a timer per object):
it repairs anything a watch missed, takes over Configs of departed members, and
periodically re-verifies the stored history (``Intact``).

A round reconciles only what may need it: a Config is *settled* once a resync
reconcile of it found nothing to change (its status already said what the store
holds), and it is skipped while its resourceVersion stays the one that reconcile
saw and its generation is observed — every change to it (spec, status, labels,
finalizers) moves the resourceVersion. A settled Config still gets a full
reconcile every ``resync_full_every`` rounds (spread by uid, so each round does a
share of them: drift of what it publishes is repaired within that many rounds),
and all of them after any change of membership (a hand-over). The integrity scan,
when due, covers every Config."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
import time
from typing import TYPE_CHECKING, Any

from etcdconfig import metrics
from etcdconfig.controller.reconciler import Reconciler, RetryLater
from etcdconfig.controller.supervisor import describe_error
from etcdconfig.errors import EtcdConfigError, InvalidConfig
from etcdconfig.models import FINALIZER
from etcdconfig.reconcile import parse_spec, status_differs, status_integrity, validate_spec

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from etcdconfig.controller.runtime import Runtime

log = logging.getLogger(__name__)


class Resync:
    def __init__(self, runtime: Runtime, reconciler: Reconciler) -> None:
        self.rt = runtime
        self.reconciler = reconciler
        self._last_integrity = time.monotonic()
        self.rounds = 0
        # uid -> the resourceVersion a resync reconcile found settled (nothing to change)
        self._settled: dict[str, str] = {}
        self._members: tuple[tuple[str, ...], int] | None = None

    async def _pages(self) -> AsyncIterator[list[dict[str, Any]]]:
        namespaces: list[str | None] = list(self.rt.settings.namespaces) or [None]
        for ns in namespaces:
            async for page in self.rt.kube.config_pages(ns):
                yield page
                del page  # not held while the next page is fetched

    def _membership(self) -> tuple[tuple[str, ...], int]:
        membership = self.rt.membership
        if membership is None:
            return ((), 0)
        return (tuple(sorted(membership.members)), int(getattr(membership, "generation", 0)))

    async def run(self) -> None:
        """Rounds until cancelled. A failed round (the list of Configs, say) is logged
        and the next one retries; one Config's failure never ends a round."""
        assert self.rt.membership is not None
        interval = self.rt.settings.resync_interval
        while True:
            changed = self.rt.membership.changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), timeout=interval)
            changed.clear()
            metrics.MEMBERS.set(len(self.rt.membership.members))
            try:
                await self.once()
            except Exception as exc:  # CancelledError is not an Exception: it still stops us
                metrics.RESYNC_ERRORS.labels("round", type(exc).__name__).inc()
                log.warning("resync round failed; next round will retry", extra=describe_error(exc))

    def _skip(self, obj: dict[str, Any]) -> bool:
        """A settled Config, not changed since, whose full check is not due this round."""
        every = int(getattr(self.rt.settings, "resync_full_every", 1))
        meta = obj["metadata"]
        recheck: set[str] = getattr(self.rt, "recheck", set())
        if meta["uid"] in recheck:
            return False  # the worker that takes it up consumes the recheck (``once``)
        if every <= 1 or self._settled.get(meta["uid"]) != meta.get("resourceVersion"):
            return False
        if not _observed(obj):
            return False
        return (self.rounds + _spread(meta["uid"])) % every != 0

    async def once(self) -> None:
        assert self.rt.membership is not None
        membership = self.rt.membership
        # the membership the round starts with: a change while it lists (ownership is
        # decided page by page) makes the next round, which runs at once, full
        started = time.monotonic()
        members = self._membership()
        handover = members != self._members
        if handover:
            self._settled.clear()  # a hand-over: check everything once
            self._members = members
            # another replica may have owned and scanned any Config since this one's
            # clean verdicts: they must not override its newer status (a violation it
            # found). A violation of ours is kept: at worst a false alarm until the
            # next scan, never a violation hidden
            verdicts: dict[str, dict[str, Any]] = getattr(self.rt, "intact", {})
            for uid in [u for u, c in verdicts.items() if c.get("status") != "False"]:
                del verdicts[uid]
        integrity_due = (
            time.monotonic() - self._last_integrity >= self.rt.settings.integrity_interval
        )
        log.info(
            "resync round started",
            extra={"round": self.rounds + 1, "handover": handover, "integrity": integrity_due},
        )
        # The Configs are listed a page at a time and only what the round works on is
        # kept: the skip is decided for each Config as its page arrives, before any is
        # reconciled (a reconcile changes only its own Config's entry in _settled; a
        # recheck asked for during the round is honoured by the next one, and one is
        # consumed only when a worker takes its Config up: a round that ends early
        # leaves the rest for the next). A skipped Config is dropped at once — unless
        # the integrity scan is due, which covers every Config and needs only its name
        # and uid (it reads the object afresh) — so a round over 10,000 settled
        # Configs holds the few it works on, not the list.
        work: list[tuple[dict[str, Any], bool]] = []
        owned: set[str] = set()
        names: set[tuple[str, str]] = set()
        async for page in self._pages():
            for obj in page:
                meta = obj["metadata"]
                if not membership.owns(meta["uid"]) or meta.get("deletionTimestamp"):
                    continue
                owned.add(meta["uid"])
                names.add((meta["namespace"], meta["name"]))
                if not self._skip(obj):
                    work.append((obj, False))
                    continue
                metrics.RESYNC_SKIPPED.inc()
                if integrity_due:
                    stub = {k: meta[k] for k in ("namespace", "name", "uid")}
                    work.append(({"metadata": stub}, True))
            del page
        if self._membership() == members:
            metrics.OWNED.set(len(owned))
            self.rt.keep_usage(owned)
            # a Config deleted or now owned by another replica: its state series go
            metrics.retain_configs(names)
            for uid in [u for u in self._settled if u not in owned]:
                del self._settled[uid]
        # else: the pages were judged under different memberships: a Config taken over
        # after its page was read (and recorded since, its usage noted) is in none, and
        # must not lose its usage or series; the next round runs at once and prunes
        n_owned, n_reconciled = len(owned), sum(1 for _, skip in work if not skip)
        del owned, names
        # Configs whose current generation was not observed yet (a departed owner's
        # pending work, a missed event) first; the rest is a consistency sweep
        work.sort(key=lambda w: _observed(w[0]))
        queue = collections.deque(work)
        del work

        recheck: set[str] = getattr(self.rt, "recheck", set())

        async def worker() -> None:
            # resync_concurrency of these, not a task per Config; an item leaves the
            # queue (and memory) once done
            while queue:
                obj, skip = queue.popleft()
                if not skip:
                    recheck.discard(obj["metadata"]["uid"])
                    await self._guarded("reconcile", obj, self.reconcile_finalized)
                if integrity_due:
                    await self._guarded("integrity", obj, self.verify_one)

        count = max(1, min(self.rt.settings.resync_concurrency, len(queue)))
        workers = [asyncio.create_task(worker()) for _ in range(count)]
        try:
            await asyncio.gather(*workers)
        finally:
            # a round that ends early (cancelled) leaves no worker behind to overlap
            # the next round's reconciles
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
        if integrity_due:
            self._last_integrity = time.monotonic()
        self.rounds += 1
        metrics.RESYNC_ROUNDS.inc()
        elapsed = time.monotonic() - started
        metrics.RESYNC_ROUND_SECONDS.observe(elapsed)
        log.info(
            "resync round done",
            extra={
                "round": self.rounds,
                "seconds": round(elapsed, 3),
                "owned": n_owned,
                "reconciled": n_reconciled,
                "skipped": n_owned - n_reconciled,
                "handover": handover,
                "integrity": integrity_due,
            },
        )

    async def _guarded(
        self,
        stage: str,
        obj: dict[str, Any],
        step: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> None:
        """Run one step for one Config; any failure (a hold timeout's ``TimeoutError``,
        a lock or Kubernetes error, a bug) is logged and counted, and the round goes on."""
        try:
            try:
                await step(obj)
            except asyncio.CancelledError as cancelled:
                task = asyncio.current_task()
                if task is None or task.cancelling():
                    raise  # the round itself is being cancelled
                # a cancelled future awaited inside the step, not a cancellation of
                # this round: that Config's failure, not the end of its worker
                raise RuntimeError("cancelled inside the step") from cancelled
        except Exception as exc:
            meta = obj.get("metadata") or {}
            metrics.RESYNC_ERRORS.labels(stage, type(exc).__name__).inc()
            log.warning(
                f"resync: {stage} of a Config failed; the next round retries",
                extra={
                    "config": f"{meta.get('namespace')}/{meta.get('name')}",
                    "stage": stage,
                    **describe_error(exc),
                },
            )

    async def reconcile_finalized(self, obj: dict[str, Any]) -> None:
        fresh = await self.finalized(obj)
        if fresh is not None:
            await self.reconcile_one(fresh)

    async def finalized(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        """``obj`` carrying our finalizer, added first if it lacks it; None if it could
        not be added because the object changed (or went) since it was listed.

        Only the owner's kopf adds the finalizer (``handlers.build_registry``), so a
        Config created while its owner was gone (dead or frozen, its lease not expired
        yet) has none when a new owner takes it over here. Nothing may be recorded for
        it before it has one: the finalizer is what makes its deletion be recorded. A
        Config that changed since the listing is left to the owner's kopf: the change
        is a watch event, on which it adds the finalizer and then reconciles."""
        meta = obj["metadata"]
        finalizers = list(meta.get("finalizers") or [])
        if FINALIZER in finalizers or not self._recordable(obj):
            # an invalid spec records nothing, so needs no finalizer yet (and the
            # admission webhook refuses any update of it): reconcile it to report it
            return obj
        resource_version = await self.rt.kube.add_finalizer(obj, FINALIZER)
        if resource_version is None:
            log.info(
                "resync: a Config without the finalizer changed since it was listed; "
                "left to its watch event",
                extra={"config": f"{meta['namespace']}/{meta['name']}"},
            )
            return None
        return {
            **obj,
            "metadata": {
                **meta,
                "finalizers": [*finalizers, FINALIZER],
                "resourceVersion": resource_version,
            },
        }

    def _recordable(self, obj: dict[str, Any]) -> bool:
        try:
            return not validate_spec(parse_spec(obj.get("spec")), self.rt.validator)
        except InvalidConfig:
            return False

    async def reconcile_one(self, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        self._settled.pop(meta["uid"], None)
        try:
            status = await self.reconciler.reconcile(obj, trigger="resync")
        except RetryLater as exc:
            status = exc.status
            settled = False
        except EtcdConfigError as exc:
            log.warning(
                "resync of a Config failed",
                extra={"config": f"{meta['namespace']}/{meta['name']}", "error": str(exc)},
            )
            return
        else:
            settled = True
        if status is None:
            return
        if not status_differs(obj.get("status") or {}, status):
            if settled:  # nothing to change: skipped until the object changes
                self._settled[meta["uid"]] = str(meta.get("resourceVersion"))
            return
        # the listed copy may be minutes old by now: never let it overwrite newer status
        await self.rt.kube.patch_status(
            meta["namespace"],
            meta["name"],
            status,
            resource_version=meta.get("resourceVersion"),
        )

    async def verify_one(self, obj: dict[str, Any]) -> None:
        assert self.rt.store is not None
        meta = obj["metadata"]
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        # the object as it is before the verification: the verdict's status is patched
        # only onto that version of it (a newer status — a reconcile that found a
        # corrupt head after this scan had verified — is never overwritten by a stale
        # clean verdict)
        fresh = await self.rt.kube.get_config(ns, name)
        if fresh is None:
            self.rt.intact.pop(uid, None)
            return
        try:
            problems = await self.rt.store.verify(ns, name)
        except EtcdConfigError as exc:
            log.warning(
                "integrity scan failed", extra={"config": f"{ns}/{name}", "error": str(exc)}
            )
            return
        # bookkeeping beside the verdict, never in its way: a head the scan just found
        # corrupt cannot be read for its usage, and the violation must still be reported
        try:
            await self.rt.store.prune_rollouts(ns, name)
            self.rt.note_usage(uid, await self.rt.store.usage(ns, name))
        except EtcdConfigError as exc:
            log.info(
                "integrity scan: usage and rollout records not updated",
                extra={"config": f"{ns}/{name}", "error": str(exc)},
            )
        if problems:
            metrics.INTEGRITY_VIOLATIONS.inc(len(problems))
            log.error(
                "integrity violation", extra={"config": f"{ns}/{name}", "problems": len(problems)}
            )
        for attempt in range(3):
            current = fresh.get("status") or {}
            was = next(
                (c for c in current.get("conditions") or [] if c.get("type") == "Intact"), None
            )
            if problems and attempt == 0 and (not was or was.get("status") != "False"):
                await self.rt.kube.event(
                    fresh,
                    "Warning",
                    "IntegrityViolation",
                    "; ".join(str(p) for p in problems)[:1000],
                )
            fmeta = fresh["metadata"]
            status = status_integrity(
                current, int(fmeta.get("generation") or 1), [str(p) for p in problems]
            )
            metrics.set_config_state(ns, name, status)
            intact = next(c for c in status["conditions"] if c["type"] == "Intact")
            if problems:
                # a violation holds whatever was written meanwhile: every later status
                # of this replica carries it until a scan verifies the store again
                self.rt.intact[uid] = intact
            if not status_differs(current, status) or await self.rt.kube.patch_status(
                ns, name, status, resource_version=fmeta.get("resourceVersion")
            ):
                if not problems:
                    self.rt.intact[uid] = intact
                return
            if not problems:
                return  # the status changed since the read: a clean verdict is stale
            fresh = await self.rt.kube.get_config(ns, name)
            if fresh is None:
                self.rt.intact.pop(uid, None)
                return


def _spread(uid: str) -> int:
    """A stable number per uid: which round of each ``resync_full_every`` checks it."""
    return int.from_bytes(hashlib.sha256(uid.encode()).digest()[:4], "big")


def _observed(obj: dict[str, Any]) -> bool:
    status = obj.get("status") or {}
    return bool(status.get("observedGeneration") == obj["metadata"].get("generation"))
