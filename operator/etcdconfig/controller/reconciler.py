"""Reconcile one Config: compare the object with the store's head and do what is
missing — validate, record, publish — then say what the status must be."""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import TYPE_CHECKING, Any

from etcdconfig import metrics
from etcdconfig.audit import AuthorBook, request_stamp
from etcdconfig.canonical import checksum
from etcdconfig.errors import (
    Conflict,
    CorruptRecord,
    EtcdConfigError,
    EtcdPermissionDenied,
    InvalidConfig,
    LockError,
    OwnerUnconfirmed,
    StaleIncarnation,
    StoreError,
    StoreFull,
    UnsupportedFormat,
)
from etcdconfig.etcd.client import NOSPACE_HINT
from etcdconfig.kube import KubeError
from etcdconfig.models import CHANGE_CAUSE_ANNOTATION
from etcdconfig.reconcile import (
    author_of,
    format_issues,
    issue_reason,
    origin_of,
    parse_spec,
    status_corrupt,
    status_invalid,
    status_pending,
    status_recorded,
    validate_spec,
    with_intact,
    with_rollout_failure,
)
from etcdconfig.store import ChangeRequest, CommitResult, Head

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from etcdconfig.controller.runtime import Runtime

log = logging.getLogger(__name__)


class RetryLater(Exception):
    """The reconcile could not finish (etcd away, lock busy…): retry after ``delay``."""

    def __init__(self, message: str, status: dict[str, Any], delay: float) -> None:
        super().__init__(message)
        self.status = status
        self.delay = delay


def _position(head: Head | None) -> tuple[int, str | None] | None:
    """Which version a head names (its record checksum tells a re-recorded one apart)."""
    return None if head is None else (head.version, head.record_checksum)


#: the reason of a Config whose commit etcd refused for lack of space
STORE_FULL = "StoreFull"


def _condition(status: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions") or [] if c.get("type") == type_), None)


class Reconciler:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self._book: AuthorBook | None = None

    async def reconcile(
        self, body: dict[str, Any], *, trigger: str, retry: int = 0
    ) -> dict[str, Any] | None:
        """Return the status to patch (None: nothing to say, e.g. the object is gone)."""
        started = time.monotonic()
        ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
        try:
            status = await self._reconcile(body, retry)
        except RetryLater as exc:
            metrics.set_config_state(ns, name, exc.status)  # etcdconfig_config_state
            raise
        finally:
            metrics.RECONCILE.labels(trigger).observe(time.monotonic() - started)
        if body["metadata"].get("deletionTimestamp"):
            metrics.forget_config(ns, name)
        else:
            metrics.set_config_state(ns, name, status)
        return status

    async def _reconcile(self, body: dict[str, Any], retry: int) -> dict[str, Any] | None:
        rt = self.rt
        assert rt.store is not None
        meta = body["metadata"]
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        generation = int(meta.get("generation") or 1)
        status = body.get("status") or {}
        previous = list(status.get("conditions") or [])
        if meta.get("deletionTimestamp"):
            return None
        ref = f"{ns}/{name}"
        delay = min(30.0, 0.5 * 2 ** min(retry, 6))

        try:
            head = await rt.store.head(ns, name)
        except (CorruptRecord, UnsupportedFormat) as exc:
            return await self._corrupt(body, previous, generation, str(exc))
        except EtcdConfigError as exc:
            raise self._pending(body, previous, generation, exc, None, delay) from exc
        mine = head if head is not None and head.uid == uid and not head.deleted else None
        head_t = (mine.version, mine.checksum, mine.recorded_at) if mine else (None, None, None)

        try:
            spec = parse_spec(body.get("spec"))
            issues = validate_spec(spec, rt.validator)
        except InvalidConfig as exc:
            issues = exc.issues
            spec = None
        self._count_cache()
        if issues:
            return await self._invalid(body, previous, generation, issues, head_t)
        assert spec is not None

        if mine is not None and mine.generation >= generation:
            published_to = await self._publish(body, spec, mine, delay)
            if published_to is not None and rt.rollouts is not None:
                rt.rollouts.schedule(body, spec)
            failure = await self._rollout_failure(body, spec, mine.version)
            return with_rollout_failure(
                status_recorded(
                    generation,
                    with_intact(previous, rt.intact.get(uid)),
                    version=mine.version,
                    checksum=mine.checksum,
                    recorded_at=mine.recorded_at,
                    head_generation=mine.generation,
                    published_to=published_to,
                ),
                failure,
                previous,
            )

        data_checksum = checksum(spec.data)
        origin = origin_of(meta, data_checksum, mine.checksum if mine is not None else None)
        try:
            note = await self._note(body, generation)
            change = ChangeRequest(
                namespace=ns,
                name=name,
                uid=uid,
                generation=generation,
                data=spec.data,
                schema=spec.schema_,
                author=await self._judge(meta, note, mine, origin),
                origin=origin,
                max_versions=spec.history.max_versions,
                max_bytes=spec.history.max_bytes,
            )

            async def rejudge(locked: Head | None) -> dict[str, Any]:
                # the author as judged against the head the commit chains on
                return await self._judge(meta, note, locked, origin)

            depends = self._needs_previous(meta, note)
            result = await self._record(change, mine, rejudge if depends else None)
        except InvalidConfig as exc:
            return await self._invalid(
                body,
                previous,
                generation,
                [dataclasses.replace(i, path=f"spec.{i.path}") for i in exc.issues],
                head_t,
            )
        except (CorruptRecord, UnsupportedFormat) as exc:
            return await self._corrupt(body, previous, generation, str(exc))
        except EtcdConfigError as exc:
            raise self._pending(body, previous, generation, exc, head_t, delay) from exc
        if result is None:
            return None
        if result.sizes is not None:
            rt.note_usage(uid, result.sizes)
        if result.recorded:
            metrics.COMMITS.labels("recorded").inc()
            log.info(
                "recorded",
                extra={
                    "config": ref,
                    "version": result.version,
                    "generation": generation,
                    "uid": uid,
                },
            )
            rt.kube.event_soon(
                body,
                "Normal",
                "Recorded",
                f"generation {generation} recorded as version {result.version}",
            )
        else:
            metrics.COMMITS.labels("already_recorded").inc()
        published_to = await self._publish(body, spec, result.head, delay)
        if published_to is not None and rt.rollouts is not None:
            rt.rollouts.schedule(body, spec)
        return status_recorded(
            generation,
            with_intact(previous, rt.intact.get(uid)),
            version=result.version,
            checksum=result.checksum,
            recorded_at=result.head.recorded_at,
            head_generation=result.head.generation,
            published_to=published_to,
        )

    async def _author(
        self, body: dict[str, Any], mine: Head | None, generation: int, origin: dict[str, Any]
    ) -> dict[str, Any]:
        """The record's ``author`` (``reconcile.author_of``) judged against ``mine``: the
        admission webhook's note for exactly this change (``etcdconfig.audit``), and,
        when a change-cause annotation is present, the author and origin of the uid's
        previous version. ``_reconcile`` judges again under the lock when the head the
        commit chains on is not ``mine`` (``_record``)."""
        note = await self._note(body, generation)
        return await self._judge(body["metadata"], note, mine, origin)

    async def _note(self, body: dict[str, Any], generation: int) -> dict[str, Any] | None:
        """The admission note of the request that made this object state (None: none)."""
        rt = self.rt
        meta = body["metadata"]
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        if self._book is None:
            self._book = AuthorBook(rt.client, rt.settings.etcd_prefix)
        try:
            return await self._book.lookup(
                ns, name, uid, body.get("spec"), generation, stamp=request_stamp(meta)
            )
        except (EtcdPermissionDenied, InvalidConfig) as exc:
            # audit fails open: a note the operator may not read (or a spec with no
            # canonical form, which validation refuses anyway) records the field manager
            # only; etcd being away is retried like the commit it precedes
            log.warning(
                "cannot read the admission note of a change; recording its field manager only",
                extra={"config": f"{ns}/{name}", "error": f"{type(exc).__name__}: {exc}"},
            )
            return None

    @staticmethod
    def _needs_previous(meta: dict[str, Any], note: dict[str, Any] | None) -> bool:
        """Whether the judgement reads the previous version (so depends on the head)."""
        cause = (meta.get("annotations") or {}).get(CHANGE_CAUSE_ANNOTATION)
        return bool(cause) and not (note and note.get("changeCauseSet"))

    async def _judge(
        self,
        meta: dict[str, Any],
        note: dict[str, Any] | None,
        mine: Head | None,
        origin: dict[str, Any],
    ) -> dict[str, Any]:
        rt = self.rt
        assert rt.store is not None
        ns, name = meta["namespace"], meta["name"]
        previous: dict[str, Any] | None = None
        previous_origin: dict[str, Any] | None = None
        if mine is not None and self._needs_previous(meta, note):
            try:
                record = await rt.store.get_version(
                    ns, name, mine.version, expected_record_checksum=mine.record_checksum
                )
                previous, previous_origin = record.author, record.origin
            except StoreError as exc:
                # audit fails open: a damaged or missing previous record must not keep
                # the change from being recorded (the commit chains on the head's record
                # checksum; `etcdconfig verify` reports the damage). The cause is then
                # judged as this change's, as for a first version.
                log.warning(
                    "cannot read the previous version to judge the change cause; "
                    "recording the cause as this change's",
                    extra={"config": f"{ns}/{name}", "error": f"{type(exc).__name__}: {exc}"},
                )
        return author_of(
            meta, note=note, previous=previous, origin=origin, previous_origin=previous_origin
        )

    async def _record(
        self,
        change: ChangeRequest,
        mine: Head | None = None,
        rejudge: Callable[[Head | None], Awaitable[dict[str, Any]]] | None = None,
    ) -> CommitResult | None:
        """Commit ``change`` under the Config's lock. ``rejudge``: the author depends on
        the uid's previous version, judged against ``mine`` (the head read before the
        lock); once the lock is held no other commit can move the head, so the head is
        read again and, when it is not ``mine`` (another replica, or this one's resync
        loop, recorded in between), the author is judged again against it."""
        rt = self.rt
        assert rt.store is not None
        assert rt.locks is not None
        started = time.monotonic()
        prefetch = rt.store.lock_prefetch(change.namespace, change.name, change.uid)
        async with rt.locks.hold(change.namespace, change.name, prefetch=prefetch) as mutex:
            metrics.LOCK_ACQUIRE.observe(time.monotonic() - started)
            if mutex.contended:
                metrics.LOCK_CONTENTION.inc()
            if rejudge is not None:
                head = await rt.store.head(change.namespace, change.name)
                locked = (
                    head
                    if head is not None and head.uid == change.uid and not head.deleted
                    else None
                )
                if _position(locked) != _position(mine):
                    change = dataclasses.replace(change, author=await rejudge(locked))
            before = dict(rt.store.stats)
            try:
                try:
                    return await rt.store.commit(change, mutex)
                except StaleIncarnation:
                    # a late event (or a stale listed copy) of a deleted object: write nothing
                    metrics.CONFLICTS.labels("stale_incarnation").inc()
                    return None
                except OwnerUnconfirmed:
                    # the store has not seen this uid: only the object that owns the name
                    # now may write, and only the API server knows which that is; asked
                    # while the lock is held, so no deletion can be recorded in between
                    current = await rt.kube.get_config(change.namespace, change.name)
                    if current is None or current["metadata"]["uid"] != change.uid:
                        metrics.CONFLICTS.labels("stale_incarnation").inc()
                        return None  # not the object that owns the name now
                    try:
                        return await rt.store.commit(
                            dataclasses.replace(change, owner_confirmed=True), mutex
                        )
                    except StaleIncarnation:
                        metrics.CONFLICTS.labels("stale_incarnation").inc()
                        return None
            finally:
                for kind in ("conflicts", "lost_locks", "unknown_outcomes"):
                    n = rt.store.stats[kind] - before[kind]
                    if n:
                        metrics.CONFLICTS.labels(kind.rstrip("s")).inc(n)

    def _count_cache(self) -> None:
        v = self.rt.validator
        hits, misses = getattr(self, "_seen", (0, 0))
        metrics.CACHE_HITS.labels("validation").inc(v.hits - hits)
        metrics.CACHE_MISSES.labels("validation").inc(v.misses - misses)
        self._seen = (v.hits, v.misses)

    async def _invalid(
        self,
        body: dict[str, Any],
        previous: list[dict[str, Any]],
        generation: int,
        issues: list[Any],
        head_t: tuple[int | None, str | None, str | None],
    ) -> dict[str, Any]:
        reason = issue_reason(issues)
        old = _condition(body.get("status") or {}, "Valid")
        first_time = not (
            old and old.get("status") == "False" and old.get("observedGeneration") == generation
        )
        if first_time:
            metrics.VALIDATION_FAILURES.labels(reason).inc()
            meta = body["metadata"]
            log.warning(
                "invalid Config; nothing recorded",
                extra={
                    "config": f"{meta['namespace']}/{meta['name']}",
                    "generation": generation,
                    "reason": reason,
                    "errors": len(issues),
                },
            )
            await self.rt.kube.event(
                body,
                "Warning",
                reason,
                f"generation {generation} not recorded: {format_issues(issues)}",
            )
        return status_invalid(generation, previous, issues, head_t)

    async def _corrupt(
        self, body: dict[str, Any], previous: list[dict[str, Any]], generation: int, message: str
    ) -> dict[str, Any]:
        metrics.INTEGRITY_VIOLATIONS.inc()
        await self.rt.kube.event(body, "Warning", "IntegrityViolation", message)
        st = body.get("status") or {}
        head = (st.get("version"), st.get("checksum"), st.get("recordedAt"))
        return status_corrupt(generation, previous, message, head)

    def _pending(
        self,
        body: dict[str, Any],
        previous: list[dict[str, Any]],
        generation: int,
        exc: Exception,
        head_t: tuple[int | None, str | None, str | None] | None,
        delay: float,
    ) -> RetryLater:
        stalled = False
        if isinstance(exc, StoreFull):
            reason, stalled = STORE_FULL, True
            metrics.STORE_FULL_REFUSALS.inc()
        elif isinstance(exc, EtcdPermissionDenied):
            reason = "EtcdPermissionDenied"
        elif isinstance(exc, LockError):
            reason = type(exc).__name__
        elif isinstance(exc, Conflict):
            reason = "Conflict"
        elif isinstance(exc, KubeError):
            reason = "KubernetesAPIError"
        else:
            reason = "EtcdUnavailable"
        st = body.get("status") or {}
        if head_t is None:
            head_t = (st.get("version"), st.get("checksum"), st.get("recordedAt"))
        meta = body["metadata"]
        log.warning(
            "reconcile will be retried",
            extra={
                "config": f"{meta['namespace']}/{meta['name']}",
                "reason": reason,
                "error": str(exc),
                "delay": delay,
            },
        )
        message = f"{exc}; retrying in {delay:g}s"
        if stalled:
            space = self.rt.space
            sizes = f" ({space.text()})" if space is not None else ""
            message = (
                f"etcd is out of space{sizes}: generation {generation} is not recorded "
                f"({NOSPACE_HINT}); it is recorded by itself once etcd has space again, "
                f"retrying in {delay:g}s"
            )
            was = _condition({"conditions": previous}, "Stalled")
            if not (was and was.get("status") == "True" and was.get("reason") == STORE_FULL):
                self.rt.kube.event_soon(body, "Warning", STORE_FULL, message)
        status = status_pending(generation, previous, reason, message, head_t, stalled=stalled)
        return RetryLater(str(exc), status, delay)

    async def _rollout_failure(
        self, body: dict[str, Any], spec: Any, version: int
    ) -> tuple[int, str] | None:
        """A failed rollout of ``version`` (docs/rollouts.md), which keeps the status
        stalled; only Configs that publish versioned ConfigMaps roll out."""
        target = spec.publish.config_map if spec.publish else None
        if target is None or not target.versioned or self.rt.rollouts is None:
            return None
        meta = body["metadata"]
        try:
            return await self.rt.rollouts.failure(
                meta["namespace"], meta["name"], meta["uid"], version
            )
        except EtcdConfigError:
            return self.rt.rollout_failures.get(meta["uid"])

    async def _publish(
        self, body: dict[str, Any], spec: Any, head: Head, delay: float
    ) -> str | None:
        """``spec.publish`` (see ``controller/publish.py``): the ConfigMap's name once it
        carries the head (None: nothing to publish). When the head could not be
        published, the status it returns (Published and Ready False) is reported through
        ``RetryLater``, and the retries and the resync loop try again."""
        from etcdconfig.controller import publish

        failure = await publish.publish(self.rt, body, spec, head)
        if failure is not None:
            raise RetryLater(failure.message, failure.status, delay)
        target = spec.publish.config_map if spec.publish else None
        return str(target.name) if target is not None and head.version > 0 else None
