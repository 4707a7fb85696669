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
the next reconcile of the owner — every resync round schedules the head again, and a
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

from etcdconfig import rollout as pins
from etcdconfig.errors import EtcdConfigError, InvalidConfig
from etcdconfig.etcd.types import Compare, Put
from etcdconfig.kube import KubeError
from etcdconfig.reconcile import parse_spec

if TYPE_CHECKING:
    from etcdconfig.controller.runtime import Runtime
    from etcdconfig.models import ConfigSpec, RolloutWindow

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
    return f"{prefix.rstrip('/')}/rollouts/{ns}/{name}/{uid}/{version:020d}".encode()


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
        if state == "Rolling":
            await self._record(ns, name, uid, head.version, workloads)
            for kind, obj_w in workloads:
                await self._pin(kind, obj_w, name, head.version)
            workloads = await self._consumers(ns, name)
        targets = [_observed(kind, w, name) for kind, w in workloads]
        status = {
            "version": head.version,
            "state": state,
            "message": message,
            "summary": ", ".join(f"{t['kind']}/{t['name']} {t['summary']}" for t in targets),
            "targets": targets,
        }
        if (obj.get("status") or {}).get("rollout") != status:
            await rt.kube.patch_status(ns, name, {"rollout": status})
        return wait

    async def _consumers(self, ns: str, name: str) -> list[tuple[str, dict[str, Any]]]:
        out = []
        for group_version, plural, kind in WORKLOADS:
            for obj in await self.rt.kube.list_namespaced(group_version, plural, ns):
                if name in pins.consumed((obj.get("metadata") or {}).get("annotations")):
                    out.append((kind, obj))
        return out

    async def _record(
        self, ns: str, name: str, uid: str, version: int, workloads: list[tuple[str, Any]]
    ) -> bool:
        """Create the version's rollout record unless one exists; True if this call
        created it."""
        rt = self.rt
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
            [Compare.create_revision(key, "=", 0)],
            [Put(key, json.dumps(record, sort_keys=True).encode())],
        )
        if result.succeeded:
            log.info("rollout started", extra={"config": f"{ns}/{name}", "version": version,
                                               "targets": len(workloads)})  # fmt: skip
        return result.succeeded

    async def _pin(self, kind: str, obj: dict[str, Any], config: str, version: int) -> None:
        meta = obj["metadata"]
        template = ((obj.get("spec") or {}).get("template") or {}).get("metadata") or {}
        annotation = f"{pins.PIN_PREFIX}{config}"
        if (template.get("annotations") or {}).get(annotation) == str(version) and (
            template.get("labels") or {}
        ).get(pins.PINNED_LABEL) == "true":
            return  # already there: nothing to apply
        body = {
            "apiVersion": "apps/v1",
            "kind": kind,
            "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
            "spec": {
                "template": {
                    "metadata": {
                        "labels": {pins.PINNED_LABEL: "true"},
                        "annotations": {annotation: str(version)},
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
        tasks = list(self._timers.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
