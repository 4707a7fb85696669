"""Rolling a recorded version out to the workloads that consume it (docs/rollouts.md).

After a reconcile has recorded and published a version of a Config that publishes
versioned ConfigMaps, :meth:`Rollouts.schedule` starts (or restarts) a debounce timer
for it (``spec.rollout.debounceSeconds``): versions recorded meanwhile coalesce, and
when it fires the *current head* is rolled out. Rolling out means, for each
Deployment, StatefulSet and DaemonSet in the Config's namespace whose annotation
``etcdconfig.io/configs`` names the Config: a server-side apply, field manager
``etcdconfig-rollout``, of only its pod template's label ``etcdconfig.io/pinned:
"true"`` and annotation ``etcdconfig.io/version.<config>: "N"``. Kubernetes does the
rolling update; the pod webhook pins each new pod to ``<name>-v<N>``; the manifests in
Git never name either field, so GitOps tools see no drift.

Once per version: the rollout record ``<prefix>/rollouts/<ns>/<name>/<uid>/<version>``
is created in etcd only if absent (a transaction on its create revision), by whichever
replica gets there first; the apply itself is idempotent (the same fields, the same
values), so a replica that died between the record and the applies leaves the rest to
the next reconcile of the owner — a hand-over makes the next resync round reconcile
every Config, a rollout that failed on a transient error asks the next round for its
Config (``Runtime.recheck``), and every full check schedules the head again; a
workload already at the version is not touched.

Held: ``spec.rollout.paused`` starts nothing; outside ``spec.rollout.window`` (UTC)
the rollout waits for the window to open. ``status.rollout`` says which, and per
workload the version its template names and how many replicas are updated and ready
(``kubectl get cfg -o wide``: ``3/3 on v7``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from etcdconfig import metrics
from etcdconfig import rollout as pins
from etcdconfig.errors import EtcdConfigError, InvalidConfig
from etcdconfig.etcd import prefix_end
from etcdconfig.etcd.types import Compare, Put
from etcdconfig.kube import KubeError
from etcdconfig.reconcile import ROLLOUT_FAILED, parse_spec, status_rollout_failed
from etcdconfig.store.keys import Keys

if TYPE_CHECKING:
    from etcdconfig.controller.runtime import Runtime
    from etcdconfig.models import ConfigSpec, RolloutWindow
    from etcdconfig.store import Head

log = logging.getLogger(__name__)

FIELD_MANAGER = "etcdconfig-rollout"
#: (group/version, plural, kind) of the workloads a Config can roll out to
WORKLOADS = (
    ("apps/v1", "deployments", "Deployment"),
    ("apps/v1", "statefulsets", "StatefulSet"),
    ("apps/v1", "daemonsets", "DaemonSet"),
)

PLURALS = {kind: plural for _, plural, kind in WORKLOADS}


def rollout_key(prefix: str, ns: str, name: str, uid: str, version: int) -> bytes:
    return Keys(prefix).rollout(ns, name, uid, version)


def in_window(window: RolloutWindow | None, now: dt.datetime) -> tuple[bool, float]:
    """(open now, seconds until it opens) for ``window`` at ``now`` (UTC)."""
    if window is None:
        return True, 0.0
    minute = now.hour * 60 + now.minute
    start = int(window.start[:2]) * 60 + int(window.start[3:])
    end = int(window.end[:2]) * 60 + int(window.end[3:])
    if start == end:
        return True, 0.0
    inside = start <= minute < end if start < end else (minute >= start or minute < end)
    if inside:
        return True, 0.0
    wait = (start - minute) % (24 * 60)
    return False, wait * 60.0 - now.second


FAILED = ("Failed", "RolledBack")
#: what :meth:`Rollouts._finish` did
FINISHED, DECIDED, GONE, TARGET_GONE = "finished", "decided", "gone", "target-gone"
#: on a pinned template: which Config incarnation (uid) its pin is a version of
UID_PREFIX = "etcdconfig.io/uid."
WATCH_INTERVAL = 1.0
#: a container waiting for one of these will not start without a change
_STUCK = {
    "CrashLoopBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "RunContainerError",
}


def pod_failure(pod: dict[str, Any]) -> str | None:
    """Why a pod of the new version is failing, or None: a container (or init
    container) that exited non-zero, or waits for a reason it cannot get past."""
    st = pod.get("status") or {}
    for cs in [*(st.get("initContainerStatuses") or []), *(st.get("containerStatuses") or [])]:
        state = cs.get("state") or {}
        last = (cs.get("lastState") or {}).get("terminated") or {}
        waiting = state.get("waiting") or {}
        terminated = state.get("terminated") or {}
        code = terminated.get("exitCode", last.get("exitCode"))
        exit_text = f" (exit {code})" if code not in (None, 0) else ""
        if waiting.get("reason") in _STUCK:
            return f"container {cs.get('name')} {waiting['reason']}{exit_text}"
        if terminated.get("exitCode") not in (None, 0):
            reason = terminated.get("reason", "Error")
            return f"container {cs.get('name')} exited {terminated['exitCode']} ({reason})"
        if (cs.get("restartCount") or 0) >= 1 and last.get("exitCode") not in (None, 0):
            return f"container {cs.get('name')} exited {last['exitCode']} and restarted"
    return None


def _template_pin(w: dict[str, Any], config: str, uid: str | None = None) -> int | None:
    """The version the workload's pod template pins for ``config`` — for the Config
    incarnation ``uid`` (``etcdconfig.io/uid.<config>``): a pin of an earlier Config of
    that name (deleted with Purge and created again: its numbering starts over) is no
    pin of this one."""
    template = ((w.get("spec") or {}).get("template") or {}).get("metadata") or {}
    annotations = template.get("annotations") or {}
    marker = annotations.get(f"{UID_PREFIX}{config}")
    if uid is not None and marker is not None and marker != uid:
        return None
    return pins.pins(annotations).get(config)


def _selector(w: dict[str, Any]) -> str:
    """The workload's pod selector as a label selector string (matchLabels and
    matchExpressions); empty when it has none."""
    sel = (w.get("spec") or {}).get("selector") or {}
    parts = [f"{k}={v}" for k, v in sorted((sel.get("matchLabels") or {}).items())]
    for e in sel.get("matchExpressions") or []:
        key, op, values = e.get("key"), e.get("operator"), e.get("values") or []
        if op == "In":
            parts.append(f"{key} in ({','.join(values)})")
        elif op == "NotIn":
            parts.append(f"{key} notin ({','.join(values)})")
        elif op == "Exists":
            parts.append(str(key))
        elif op == "DoesNotExist":
            parts.append(f"!{key}")
    return ",".join(parts)


def _complete(kind: str, w: dict[str, Any], config: str, version: int) -> bool:
    """Every replica of the workload runs a template pinned to ``version``, Ready, and
    nothing of an older template is left."""
    target = _observed(kind, w, config)
    st = w.get("status") or {}
    replicas = target["replicas"] or 0
    total = st.get("desiredNumberScheduled") if kind == "DaemonSet" else st.get("replicas")
    # status leaves zero counts out: a missing count is 0 (a workload scaled to 0)
    return (
        target["version"] == version
        and (st.get("observedGeneration") or 0) >= (w["metadata"].get("generation") or 0)
        and (target["updated"] or 0) == replicas
        and (target["ready"] or 0) == replicas
        and (total or 0) == replicas
    )


def summary(target: dict[str, Any]) -> str:
    """``3/3 on v7``: replicas of the current template out of all, and the version."""
    version = target.get("version")
    return f"{target.get('updated') or 0}/{target.get('replicas') or 0} on " + (
        f"v{version}" if version else "no version"
    )


def _observed(kind: str, obj: dict[str, Any], config: str) -> dict[str, Any]:
    meta = obj.get("metadata") or {}
    template = ((obj.get("spec") or {}).get("template") or {}).get("metadata") or {}
    version = pins.pins(template.get("annotations")).get(config)
    st = obj.get("status") or {}
    current = (st.get("observedGeneration") or 0) >= (meta.get("generation") or 0)
    if kind == "DaemonSet":
        replicas = st.get("desiredNumberScheduled")
        updated = st.get("updatedNumberScheduled")
        ready = st.get("numberReady")
    else:
        replicas = (obj.get("spec") or {}).get("replicas", 1)
        updated = st.get("updatedReplicas")
        ready = st.get("readyReplicas")
    target = {
        "kind": kind,
        "name": meta.get("name"),
        "version": version,
        "replicas": replicas,
        "updated": updated if current else 0,
        "ready": ready,
    }
    target["summary"] = summary(target)
    return target


@dataclass
class Rollouts:
    """The owner replica's rollouts: one debounce timer per Config uid."""

    rt: Runtime

    def __post_init__(self) -> None:
        self._timers: dict[str, asyncio.Task[None]] = {}
        self._watchers: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._unpinned: dict[str, tuple[str, ...]] = {}
        self._known: dict[str, int] = {}  # uid -> the version whose failure is loaded

    def schedule(self, body: dict[str, Any], spec: ConfigSpec) -> None:
        """A version of ``body`` is recorded and published: roll the head out after the
        debounce (restarting a timer already running for it)."""
        target = spec.publish.config_map if spec.publish else None
        if target is None or not target.versioned or self.rt.stopping:
            return
        meta = body["metadata"]
        uid = meta["uid"]
        delay = spec.rollout.debounce_seconds if spec.rollout else 2.0
        old = self._timers.get(uid)
        if old is not None and not old.done():
            old.cancel()
        task = asyncio.create_task(
            self._after(delay, meta["namespace"], meta["name"], uid),
            name=f"rollout {meta['namespace']}/{meta['name']}",
        )
        self._timers[uid] = task
        task.add_done_callback(lambda t: self._done(uid, t))

    def _done(self, uid: str, task: asyncio.Task[None]) -> None:
        if self._timers.get(uid) is task:
            del self._timers[uid]

    async def _after(self, delay: float, ns: str, name: str, uid: str) -> None:
        await asyncio.sleep(delay)  # the debounce window: a timer, not synchronisation
        try:
            again = await self.roll(ns, name, uid)
        except (EtcdConfigError, OSError) as exc:
            log.warning("rollout failed; retried on the next reconcile",
                        extra={"config": f"{ns}/{name}", "error": str(exc)})  # fmt: skip
            self.rt.recheck.add(uid)  # the next resync round reconciles it, settled or not
            return
        if again is not None:  # held by the window: try again when it opens
            await asyncio.sleep(again)
            obj = await self.rt.kube.get_config(ns, name)
            if obj is not None and obj["metadata"]["uid"] == uid:
                await self.roll(ns, name, uid)

    async def roll(self, ns: str, name: str, uid: str) -> float | None:
        """Roll the head out now. Returns the seconds until the window opens when held
        by it, else None."""
        rt = self.rt
        assert rt.store is not None
        if not self._owned(uid):
            return None  # the owner rolls it out (a hand-over moved it)
        obj = await rt.kube.get_config(ns, name)
        if obj is None or obj["metadata"]["uid"] != uid or obj["metadata"].get("deletionTimestamp"):
            return None
        try:
            spec = parse_spec(obj.get("spec"))
        except InvalidConfig:
            return None
        head = await rt.store.head(ns, name)
        if head is None or head.uid != uid or head.deleted or head.version == 0:
            return None
        workloads = await self._consumers(ns, name)
        settings = spec.rollout
        state, message, wait = "Rolling", f"version {head.version} rolls out", None
        if not workloads:
            state, message = "NoConsumers", "no workload names this Config in etcdconfig.io/configs"
        elif settings is not None and settings.paused:
            state, message = "Paused", "spec.rollout.paused: no rollout starts"
        else:
            open_now, wait_s = in_window(
                settings.window if settings else None, dt.datetime.now(dt.UTC)
            )
            if not open_now:
                state = "Held"
                message = f"outside spec.rollout.window; it opens in {int(wait_s // 60)} min"
                wait = wait_s
        record = await self._read_record(ns, name, uid, head.version)
        failed = record is not None and record[0].get("state") in FAILED
        if failed:
            assert record is not None
            # the head broke pods: the workloads stay where the rollback left them (or
            # where they are) until a new version is recorded
            note = record[0]
            state, message = str(note["state"]), str(note.get("reason") or "")
            rt.rollout_failures[uid] = (head.version, message)
            self._known[uid] = head.version
            current = obj.get("status") or {}
            if current.get("version") == head.version and not any(
                c.get("type") == "Stalled" and c.get("reason") == ROLLOUT_FAILED
                for c in current.get("conditions") or []
            ):
                gen = int(obj["metadata"].get("generation") or 1)
                failed_status = status_rollout_failed(current, gen, message)
                await rt.kube.patch_status(
                    ns, name, {"conditions": failed_status["conditions"]},
                    resource_version=obj["metadata"].get("resourceVersion"),
                )  # fmt: skip
            back = note.get("rolledBackTo")
            if isinstance(back, int):
                # finish a rollback cut short; a workload someone moved (rollout undo,
                # an edit) to another version is left where they put it
                for kind, obj_w in workloads:
                    if _template_pin(obj_w, name, uid) in (None, head.version):
                        await self._pin(kind, obj_w, name, back, uid)
        else:
            rt.rollout_failures.pop(uid, None)
        if state == "Rolling" and not failed:
            if record is None:
                await self._record(ns, name, uid, head, workloads)
                record = await self._read_record(ns, name, uid, head.version)
                if record is None:
                    return None  # the head moved (a newer version, a deletion): not this one
            done = record is not None and record[0].get("state") == "Succeeded"
            for kind, obj_w in workloads:
                # a rollout under way pins every workload; after it succeeded, only a
                # workload that names no version yet (a new consumer): one moved back
                # since (`kubectl rollout undo`) keeps the version it was moved to
                if not done or _template_pin(obj_w, name, uid) is None:
                    await self._pin(kind, obj_w, name, head.version, uid)
            workloads = await self._consumers(ns, name)
            if record is not None and record[0].get("state") == "Succeeded":
                state, message = "Succeeded", str(record[0].get("reason") or "")
            elif record is not None:
                self._watch_soon(ns, name, uid, head.version, record[0], settings)
        if state != "NoConsumers" and spec.publish and spec.publish.config_map:
            await self._check_pinned(obj, spec.publish.config_map.name, workloads)
        await self._report(obj, head.version, state, message, workloads)
        return wait

    async def _check_pinned(
        self, obj: dict[str, Any], target: str, workloads: list[tuple[str, dict[str, Any]]]
    ) -> None:
        """Pods of the consuming workloads whose template pins a version but that run on
        the plain ConfigMap (the webhook did not answer when they were created, or could
        not pin them): counted in etcdconfig_unpinned_pods, and a Warning Event names
        them once (again when the set changes)."""
        meta = obj["metadata"]
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        unpinned: list[str] = []
        for _, w in workloads:
            labels = _selector(w)
            if not labels or _template_pin(w, name, uid) is None:
                continue
            for pod in await self.rt.kube.list_namespaced("v1", "pods", ns, labels):
                pmeta = pod.get("metadata") or {}
                if pmeta.get("deletionTimestamp"):
                    continue
                if name not in pins.pins(pmeta.get("annotations")):
                    continue  # made from a template before it was pinned
                pinned_to = str((pmeta.get("annotations") or {}).get(pins.PINNED_TO_ANNOTATION, ""))
                if not any(p.split("=", 1)[0] == target for p in pinned_to.split(",") if p):
                    unpinned.append(str(pmeta.get("name")))
        metrics.set_unpinned(ns, name, len(unpinned))
        key = tuple(sorted(unpinned))
        if self._unpinned.get(uid) == key:
            return
        self._unpinned[uid] = key
        if unpinned:
            shown = ", ".join(key[:10]) + (f" and {len(key) - 10} more" if len(key) > 10 else "")
            await self.rt.kube.event(
                obj,
                "Warning",
                "PodsNotPinned",
                f"{len(key)} pod(s) run on ConfigMap {target}, not on their template's version "
                f"(created while the pod webhook did not answer?): {shown}; they get it when "
                "they are replaced (kubectl rollout restart)",
            )

    async def _report(
        self,
        obj: dict[str, Any],
        version: int,
        state: str,
        message: str,
        workloads: list[tuple[str, dict[str, Any]]],
    ) -> None:
        """``status.rollout`` as it stands (written only when it changed)."""
        meta = obj["metadata"]
        name = meta["name"]
        targets = [_observed(kind, w, name) for kind, w in workloads]
        status = {
            "version": version,
            "state": state,
            "message": message,
            "summary": ", ".join(f"{t['kind']}/{t['name']} {t['summary']}" for t in targets),
            "targets": targets,
        }
        if (obj.get("status") or {}).get("rollout") != status:
            await self.rt.kube.patch_status(meta["namespace"], name, {"rollout": status})

    # --- watching a rollout --------------------------------------------------------------

    def _watch_soon(
        self, ns: str, name: str, uid: str, version: int, record: dict[str, Any], settings: Any
    ) -> None:
        key = (uid, version)
        running = self._watchers.get(key)
        if running is not None and not running.done():
            return
        task = asyncio.create_task(
            self._watch(ns, name, uid, version, record, settings),
            name=f"rollout watch {ns}/{name} v{version}",
        )
        self._watchers[key] = task
        task.add_done_callback(lambda t: self._watchers.pop(key, None))

    async def _watch(
        self,
        ns: str,
        name: str,
        uid: str,
        version: int,
        record: dict[str, Any],
        settings: Any,
    ) -> None:
        """Watch the rollout of ``version`` until it succeeds (every consuming workload
        runs it on all replicas, Ready, for the bake time), fails (a pod of it crashes,
        a workload reports its own progress deadline exceeded, or ours passes) or is
        superseded by a newer version."""
        deadline_s = settings.progress_deadline_seconds if settings else 300
        bake = settings.bake_seconds if settings else 30
        try:
            started = dt.datetime.fromisoformat(str(record.get("startedAt")))
        except ValueError:
            started = dt.datetime.now(dt.UTC)
        completed: dt.datetime | None = None
        rt = self.rt
        assert rt.store is not None
        while not rt.stopping and self._owned(uid):
            try:
                obj = await rt.kube.get_config(ns, name)
                head = await rt.store.head(ns, name)
                if obj is None or obj["metadata"]["uid"] != uid or head is None:
                    return
                if head.uid != uid:
                    return
                workloads = await self._consumers(ns, name)
                if head.version != version:
                    newer = [
                        v for _, w in workloads
                        if (v := _template_pin(w, name, uid)) is not None and v > version
                    ]  # fmt: skip
                    if newer:  # a newer version is pinned: its own rollout takes over
                        await self._finish(ns, name, uid, version, "Superseded",
                                           f"version {max(newer)} rolls out")  # fmt: skip
                        return
                    # the newer head is held (paused, window): the workloads still run
                    # this version, which is watched on
                problem = await self._problem(ns, name, uid, version, workloads)
                now = dt.datetime.now(dt.UTC)
                done = bool(workloads) and all(_complete(k, w, name, version) for k, w in workloads)
                if problem is None and not done and (now - started).total_seconds() > deadline_s:
                    summary_ = ", ".join(
                        f"{k}/{w['metadata']['name']} {_observed(k, w, name)['summary']}"
                        for k, w in workloads
                    )
                    problem = f"not complete after {deadline_s}s ({summary_})"
                if problem is not None:
                    await self._fail(obj, uid, version, problem, settings, workloads)
                    return
                completed = (completed or now) if done else None
                if completed is not None and (now - completed).total_seconds() >= bake:
                    message = (
                        f"version {version} runs on every replica of {len(workloads)} workload(s)"
                    )
                    if await self._finish(ns, name, uid, version, "Succeeded", message) == FINISHED:
                        metrics.ROLLOUTS.labels("Succeeded").inc()
                        log.info("rollout succeeded", extra={"config": f"{ns}/{name}",
                                                             "version": version})  # fmt: skip
                        if head.version == version:
                            await self._report(obj, version, "Succeeded", message, workloads)
                    # else another replica decided: its outcome stands, the resync reports it
                    return
                if head.version == version:
                    await self._report(obj, version, "Rolling", f"version {version} rolls out",
                                       workloads)  # fmt: skip
            except (EtcdConfigError, OSError) as exc:
                log.warning("rollout watch: a read failed; trying again",
                            extra={"config": f"{ns}/{name}", "error": str(exc)})  # fmt: skip
            await asyncio.sleep(WATCH_INTERVAL)  # the poll interval of a bounded watch

    async def _problem(
        self,
        ns: str,
        config: str,
        uid: str,
        version: int,
        workloads: list[tuple[str, dict[str, Any]]],
    ) -> str | None:
        """Why the rollout of ``version`` failed, if it did: a workload's own progress
        deadline (once its controller has seen the pinned template: an older one's does
        not count), or a pod of the version (of this incarnation) that crashes or cannot
        start."""
        for kind, w in workloads:
            where = f"{kind}/{w['metadata']['name']}"
            st = w.get("status") or {}
            if (st.get("observedGeneration") or 0) >= (w["metadata"].get("generation") or 0):
                for cond in st.get("conditions") or []:
                    if (cond.get("type"), cond.get("reason")) == (
                        "Progressing",
                        "ProgressDeadlineExceeded",
                    ):
                        return f"{where}: ProgressDeadlineExceeded ({cond.get('message', '')})"
            labels = _selector(w)
            if not labels:
                continue
            for pod in await self.rt.kube.list_namespaced("v1", "pods", ns, labels):
                annotations = (pod.get("metadata") or {}).get("annotations") or {}
                if pins.pins(annotations).get(config) != version:
                    continue
                if annotations.get(f"{UID_PREFIX}{config}", uid) != uid:
                    continue  # a pod of an earlier incarnation's version of that number
                why = pod_failure(pod)
                if why is not None:
                    return f"{where}: pod {pod['metadata']['name']} {why}"
        return None

    async def _fail(
        self,
        obj: dict[str, Any],
        uid: str,
        version: int,
        problem: str,
        settings: Any,
        workloads: list[tuple[str, dict[str, Any]]],
    ) -> None:
        meta = obj["metadata"]
        ns, name = meta["namespace"], meta["name"]
        auto = settings.auto_rollback if settings else True
        assert self.rt.store is not None
        head = await self.rt.store.head(ns, name)
        if head is None or head.uid != uid or head.deleted:
            return
        for attempt in range(3):
            target = await self._last_succeeded(ns, name, uid, version) if auto else None
            if attempt == 2:
                target = None  # the targets kept going: record the failure without one
            back = target[0] if target is not None else None
            if back is not None:
                state = "RolledBack"
                message = f"version {version} failed: {problem}; rolled back to version {back}"
            else:
                state = "Failed"
                why = (
                    "autoRollback is off"
                    if not auto
                    else "no earlier version rolled out healthy"
                    if attempt < 2
                    else "each version to go back to was pruned meanwhile"
                )
                message = f"version {version} failed: {problem}; not rolled back ({why})"
            outcome = await self._finish(
                ns, name, uid, version, state, message, rolled_back_to=target
            )
            if outcome != TARGET_GONE:
                break
        if outcome == DECIDED:
            return  # another replica finished it first: its outcome stands
        if outcome == GONE:
            # retention pruned the version (and its record) while it was watched: there
            # is no record to write, and nothing older to go back to; still say it broke
            state = "Failed"
            message = (
                f"version {version} failed: {problem}; not rolled back (retention pruned it "
                "meanwhile: spec.history.maxVersions)"
            )
            back = None
        if state == "RolledBack":
            assert back is not None
            # only workloads still on the failed version: one a newer head was pinned
            # to meanwhile (or someone moved) is not pulled back
            for kind, w in await self._consumers(ns, name):
                if _template_pin(w, name, uid) == version:
                    await self._pin(kind, w, name, back, uid)
        if head.version == version:
            self.rt.rollout_failures[uid] = (version, message)
            self._known[uid] = version
        metrics.ROLLOUTS.labels(state).inc()
        log.warning("rollout failed", extra={"config": f"{ns}/{name}", "version": version,
                                             "state": state, "reason": problem})  # fmt: skip
        await self.rt.kube.event(obj, "Warning", "RolloutFailed", message)
        fresh = await self.rt.kube.get_config(ns, name)
        status_version = ((fresh or {}).get("status") or {}).get("version")
        if fresh is not None and fresh["metadata"]["uid"] == uid and status_version == version:
            current = fresh.get("status") or {}
            failed = status_rollout_failed(
                current, int(fresh["metadata"].get("generation") or 1), message
            )
            await self.rt.kube.patch_status(ns, name, {"conditions": failed["conditions"]})
            workloads = await self._consumers(ns, name)
            await self._report(fresh, version, state, message, workloads)

    def _owned(self, uid: str) -> bool:
        membership = self.rt.membership
        return membership is None or bool(membership.owns(uid))

    async def failure(self, ns: str, name: str, uid: str, version: int) -> tuple[int, str] | None:
        """The rollout failure of ``version`` (from its record in etcd, read once per
        version and replica, then kept by the watcher), for the status a reconcile
        builds: a restart or a new owner must not report a failed version Ready."""
        if self._known.get(uid) != version:
            found = await self._read_record(ns, name, uid, version)
            if found is not None and found[0].get("state") in FAILED:
                self.rt.rollout_failures[uid] = (version, str(found[0].get("reason") or ""))
            else:
                self.rt.rollout_failures.pop(uid, None)
            if found is not None and found[0].get("state") != "Started":
                # an outcome never changes: read once; one under way (or none yet) is
                # read again, since another replica may decide it (a hand-over and back)
                self._known[uid] = version
        return self.rt.rollout_failures.get(uid)

    async def _read_record(
        self, ns: str, name: str, uid: str, version: int
    ) -> tuple[dict[str, Any], int] | None:
        key = rollout_key(self.rt.settings.etcd_prefix, ns, name, uid, version)
        kv, _ = await self.rt.client.get(key)
        if kv is None:
            return None
        try:
            record = json.loads(kv.value)
        except ValueError:
            return None
        if not isinstance(record, dict):
            return None  # not a rollout record: as if there were none
        return record, int(kv.mod_revision)

    async def _finish(
        self,
        ns: str,
        name: str,
        uid: str,
        version: int,
        state: str,
        reason: str,
        *,
        rolled_back_to: tuple[int, int] | None = None,
    ) -> str:
        """Move the version's record from Started to ``state`` (compare-and-swap on its
        mod revision). ``rolled_back_to``: (version, mod revision of its record), also
        compared. Returns ``FINISHED`` if this call did it; ``DECIDED`` if the record was
        finished already (another replica's outcome stands); ``GONE`` if there is no
        record (retention pruned the version meanwhile); ``TARGET_GONE`` if the
        rollback's target record changed or went (choose again)."""
        key = rollout_key(self.rt.settings.etcd_prefix, ns, name, uid, version)
        also = []
        if rolled_back_to is not None:
            target = rollout_key(self.rt.settings.etcd_prefix, ns, name, uid, rolled_back_to[0])
            also.append(Compare.mod_revision(target, "=", rolled_back_to[1]))
        for _ in range(3):
            found = await self._read_record(ns, name, uid, version)
            if found is None:
                return GONE
            record, revision = found
            if record.get("state") != "Started":
                return DECIDED
            record.update(
                state=state,
                reason=reason,
                endedAt=dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
                endedBy=self.rt.settings.replica_id,
            )
            if rolled_back_to is not None:
                record["rolledBackTo"] = rolled_back_to[0]
            result = await self.rt.client.txn(
                [Compare.mod_revision(key, "=", revision), *also],
                [Put(key, json.dumps(record, sort_keys=True).encode())],
            )
            if result.succeeded:
                return FINISHED
            if also:
                found = await self._read_record(ns, name, uid, version)
                if found is not None and found[1] == revision:
                    return TARGET_GONE  # our record is as read: the target's compare failed
        return DECIDED

    async def _last_succeeded(
        self, ns: str, name: str, uid: str, below: int
    ) -> tuple[int, int] | None:
        """The newest version below ``below`` of this incarnation whose rollout
        succeeded, with its record's mod revision (a rollback to it is recorded only
        while that record — and so the version: retention prunes both at once — is
        there); records that do not parse are skipped."""
        prefix = Keys(self.rt.settings.etcd_prefix).rollouts_of(ns, name, uid)
        result = await self.rt.client.range(prefix, prefix_end(prefix))
        best: tuple[int, int] | None = None
        for kv in result.kvs:
            o = pins.Outcome.parse(kv.value)
            if o is None or o.uid != uid or o.state != "Succeeded" or o.version >= below:
                continue
            if kv.key != rollout_key(self.rt.settings.etcd_prefix, ns, name, uid, o.version):
                continue  # a record under another version's key: not that version's
            if best is None or o.version > best[0]:
                best = (o.version, int(kv.mod_revision))
        return best

    async def _consumers(self, ns: str, name: str) -> list[tuple[str, dict[str, Any]]]:
        out = []
        for group_version, plural, kind in WORKLOADS:
            for obj in await self.rt.kube.list_namespaced(group_version, plural, ns):
                if name in pins.consumed((obj.get("metadata") or {}).get("annotations")):
                    out.append((kind, obj))
        return out

    async def _record(
        self, ns: str, name: str, uid: str, head: Head, workloads: list[tuple[str, Any]]
    ) -> bool:
        """Create the head's rollout record unless one exists, and only while the head is
        as read (a Purge or a newer version meanwhile: no record is left behind that
        nothing deletes); True if this call created it."""
        rt = self.rt
        assert rt.store is not None
        version = head.version
        key = rollout_key(rt.settings.etcd_prefix, ns, name, uid, version)
        record = {
            "config": f"{ns}/{name}",
            "uid": uid,
            "version": version,
            "targets": [f"{kind}/{w['metadata']['name']}" for kind, w in workloads],
            "startedAt": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
            "startedBy": rt.settings.replica_id,
            "state": "Started",
        }
        result = await rt.client.txn(
            [
                Compare.create_revision(key, "=", 0),
                Compare.mod_revision(rt.store.keys.head(ns, name), "=", head.mod_revision),
            ],
            [Put(key, json.dumps(record, sort_keys=True).encode())],
        )
        if result.succeeded:
            log.info("rollout started", extra={"config": f"{ns}/{name}", "version": version,
                                               "targets": len(workloads)})  # fmt: skip
        return result.succeeded

    async def _pin(
        self, kind: str, obj: dict[str, Any], config: str, version: int, uid: str
    ) -> None:
        meta = obj["metadata"]
        template = ((obj.get("spec") or {}).get("template") or {}).get("metadata") or {}
        annotation = f"{pins.PIN_PREFIX}{config}"
        marker = f"{UID_PREFIX}{config}"
        current = template.get("annotations") or {}
        if (
            current.get(annotation) == str(version)
            and current.get(marker) == uid
            and (template.get("labels") or {}).get(pins.PINNED_LABEL) == "true"
        ):
            return  # already there: nothing to apply
        body = {
            "apiVersion": "apps/v1",
            "kind": kind,
            "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
            "spec": {
                "template": {
                    "metadata": {
                        "labels": {pins.PINNED_LABEL: "true"},
                        "annotations": {annotation: str(version), marker: uid},
                    }
                }
            },
        }
        try:
            await self.rt.kube.apply(body, PLURALS[kind], field_manager=FIELD_MANAGER)
        except KubeError as exc:
            log.warning("could not roll a workload", extra={
                "config": f"{meta['namespace']}/{config}", "workload": f"{kind}/{meta['name']}",
                "version": version, "error": str(exc)})  # fmt: skip

    async def close(self) -> None:
        tasks = [*self._timers.values(), *self._watchers.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
