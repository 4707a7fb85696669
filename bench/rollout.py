#!/usr/bin/env python3
"""Rollout benchmark (docs/rollouts.md): a config change rolled out to the pods that
consume it, against the same Deployment rolled by a bare pod-template change, and the
time an automatic rollback takes to start once a bad change breaks a pod.

Needs root: it starts its own single-node cluster (:mod:`etcdconfig.devenv`: the control
plane plus containerd, the kubelet, kube-proxy and CoreDNS) in a temporary directory,
installs ``charts/etcdconfig`` with Helm the way ``make demo`` does (the chart's
defaults — 2 operator replicas, the validating and the pod webhook —, the local images
cached by :func:`etcdconfig.devenv.images.ensure_images` with ``pullPolicy: Never``,
the bundled etcd on a hostPath PersistentVolume) and stops the whole node at the end,
on errors and on Ctrl-C/SIGTERM alike. Only one node can run on a host: run it under
the host's node lock (``flock /tmp/etcdconfig-node.lock .venv/bin/python bench/rollout.py``).

The workload is ``make demo-rollout``'s (:mod:`etcdconfig.devenv.demo_rollout`): a
Deployment of 3 replicas (``maxSurge: 1``, ``maxUnavailable: 0``) of a small app that
reads its config file from the ConfigMap ``app-config`` and exits 3 when ``retries`` is
above 8, consuming the Config ``app`` (versioned ConfigMaps); a readiness probe (an exec
every second) passes once the app accepted its config (``--no-readiness``: without it,
as tests/node/test_rollouts_node.py runs the app, a crashing container is Ready for a
moment and the rolling update replaces old pods before the operator sees the crash;
``rollback_min_good_ready`` and ``rollback_good_pods_replaced`` show it). The Config's rollout
settings for the run: **``debounceSeconds: 0``** (no coalescing wait: the figure is the
pipeline, not the debounce), ``bakeSeconds`` ``--bake`` (5), ``progressDeadlineSeconds``
120, ``autoRollback`` on.

After a warm-up (the first version, one config change and one bare change, unmeasured),
each round (``--rounds``, 6; ``--quick`` 2) runs, in an order reversed every other round
(ABBA, so the noise of a shared machine lands on both sides):

config (subject)
    A merge PATCH of the Config's ``spec.data`` (``retries`` stays ≤ 8; a ``round``
    key makes the data new) → the operator records version N, publishes
    ``app-config-vN``, pins the Deployment's template, Kubernetes rolls it, the pod
    webhook pins each new pod. Done when every pod's ``etcdconfig.io/pinned-to``
    annotation names ``app-config-vN``, the Deployment's controller has observed its
    generation with ``updatedReplicas`` = ``readyReplicas`` = ``replicas`` = 3, every
    pod is Ready, and no pod of an older template is left — not even a terminating one
    (``config_rollout_*``). ``*_ready_*`` figures stop at the same point but let
    terminating old pods be (what ``kubectl rollout status`` waits for). The round then
    waits, unmeasured, for the operator's bake to end (record ``Succeeded``).
bare (baseline)
    A merge PATCH of one annotation of the same Deployment's pod template (what
    ``kubectl patch deployment app -p '{"spec":{"template":{"metadata":{"annotations":
    …}}}}'`` sends) → the same rolling update of the same pods, with the pod webhook
    pinning them to the version they already had. Done by the same rule (every pod
    carries the new annotation).

``rollout_overhead_ratio`` = p50(config) / p50(bare); goal ≤ 1.2.

Then the round's bad change: a PATCH to ``retries: 9``. The new version's surge pod
exits 3. Measured: from the earliest moment the pod status shows the failure — the
container's ``finishedAt`` (``state``/``lastState.terminated``; kubelet stamps it to the
second, rounded down, so this start is early by up to 1 s; never taken before the PATCH
was sent) or, if earlier, the moment the bench's watch first saw a failed status
(terminated non-zero, ``restartCount`` > 0, waiting ``CrashLoopBackOff``) — to
**rollback started**: the ``endedAt`` of the version's rollout record in etcd
(``<prefix>/rollouts/…``) with state ``RolledBack``. That compare-and-swap is the
operator's decision, written before it pins the workloads back, and the one durable
mark of the rollback (``rollback_detect_*``; goal ≤ 5 s + the bake time, the bake
printed beside it). The moment the bench's watch saw the Deployment's template pinned
back to the previous version is given too (``rollback_template_back_*``), and whether
any pod of that version went down meanwhile (``rollback_min_good_ready``,
``rollback_good_pods_replaced``). An unmeasured good change then rolls forward, so
each round starts from a version that rolled out healthy.

Every wait is timed by watches (pods, the Deployment, the Config) in threads that
evaluate each condition on every event, so a time is the arrival of the event that made
it true, not a poll.

Usage::

    flock /tmp/etcdconfig-node.lock .venv/bin/python bench/rollout.py           # ~8 min
    flock /tmp/etcdconfig-node.lock .venv/bin/python bench/rollout.py --quick   # ~5 min
    ... bench/rollout.py --json     # only the JSON object on stdout

Options: ``--rounds N``, ``--bake S``, ``--keep`` (keep the temporary directory with
every log; the node is stopped all the same), ``--json-file PATH``, ``--strict`` (exit 1
when a goal is missed; by default the run exits 0 whatever the figures).

This module does not import from ``tests/``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import http.client
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import quote

import yaml
from rich.console import Console

from _cluster import (
    Interrupted,
    KubeAPI,
    goal_cell,
    goal_results,
    new_table,
    percentile,
    print_verdict,
)
from etcdconfig.controller.rollouts import rollout_key
from etcdconfig.devenv import demo, images
from etcdconfig.devenv.controlplane import ControlPlane
from etcdconfig.devenv.demo_rollout import (
    CONFIG,
    CONFIG_MAP,
    DEPLOYMENT,
    REPLICAS,
    config_manifest,
    deployment_manifest,
)
from etcdconfig.etcd.client import EtcdClient, EtcdSettings

NS = "rollout-bench"
BUMP = "bench.etcdconfig.io/bump"  # the bare side's pod-template annotation
PIN = f"etcdconfig.io/version.{CONFIG}"
PINNED_TO = "etcdconfig.io/pinned-to"
DEBOUNCE_SECONDS = 0
PROGRESS_DEADLINE = 120
ROLLOUT_TIMEOUT = 180.0
START_TIMEOUT = 300.0
HELM_TIMEOUT = 240
DEFAULT_ROUNDS, QUICK_ROUNDS = 6, 2
DEFAULT_BAKE = 5.0
OVERHEAD_GOAL = 1.2
DETECT_GOAL_BASE = 5.0  # + the bake time
CONFIG_PATH = f"/apis/etcdconfig.io/v1alpha1/namespaces/{NS}/configs"
DEPLOYMENT_PATH = f"/apis/apps/v1/namespaces/{NS}/deployments"
PODS_PATH = f"/api/v1/namespaces/{NS}/pods"


# --- watches --------------------------------------------------------------------------------


@dataclass
class Probe:
    """A condition evaluated on every event: ``at`` is the monotonic time of the event
    that first made it true, ``value`` what it returned."""

    test: Callable[[State], Any]
    at: float | None = None
    value: Any = None


@dataclass
class State:
    """The latest pods, Deployment and Config of the namespace, as the watches saw them."""

    cond: threading.Condition = field(default_factory=threading.Condition)
    objects: dict[str, dict[str, dict[str, Any]]] = field(
        default_factory=lambda: {"pods": {}, "deployments": {}, "configs": {}}
    )
    probes: list[Probe] = field(default_factory=list)
    error: BaseException | None = None

    # called under cond
    @property
    def pods(self) -> list[dict[str, Any]]:
        return list(self.objects["pods"].values())

    @property
    def deployment(self) -> dict[str, Any]:
        return self.objects["deployments"].get(DEPLOYMENT) or {}

    @property
    def config(self) -> dict[str, Any]:
        return self.objects["configs"].get(CONFIG) or {}

    def _evaluate(self, now: float) -> None:
        for probe in self.probes:
            if probe.at is None:
                value = probe.test(self)
                if value:
                    probe.at, probe.value = now, value
        self.cond.notify_all()

    def apply(self, kind: str, event: str, obj: dict[str, Any], now: float) -> None:
        with self.cond:
            name = obj["metadata"]["name"]
            if event == "DELETED":
                self.objects[kind].pop(name, None)
            else:
                self.objects[kind][name] = obj
            self._evaluate(now)

    def replace(self, kind: str, items: list[dict[str, Any]], now: float) -> None:
        with self.cond:
            self.objects[kind] = {o["metadata"]["name"]: o for o in items}
            self._evaluate(now)

    def probe(self, test: Callable[[State], Any]) -> Probe:
        """Register a condition (checked at once, then on every event)."""
        with self.cond:
            p = Probe(test)
            self.probes.append(p)
            self._evaluate(time.monotonic())
            return p

    def wait(self, probe: Probe, timeout: float, what: str) -> float:
        """Wait until ``probe`` came true; the monotonic time of the event that made it so."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while probe.at is None:
                if self.error is not None:
                    raise RuntimeError(f"a watch failed: {self.error}") from self.error
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
                self.cond.wait(min(left, 1.0))
            return probe.at

    def drop(self, *probes: Probe) -> None:
        with self.cond:
            for p in probes:
                if p in self.probes:
                    self.probes.remove(p)

    @contextlib.contextmanager
    def probing(self, *tests: Callable[[State], Any]) -> Iterator[tuple[Probe, ...]]:
        """Probes for the ``with`` block (registered at once, dropped at its end)."""
        probes = tuple(self.probe(t) for t in tests)
        try:
            yield probes
        finally:
            self.drop(*probes)

    def until(self, test: Callable[[State], Any], timeout: float, what: str) -> Probe:
        """Register ``test`` and wait for it; the probe (``at``, ``value``)."""
        with self.probing(test) as (p,):
            self.wait(p, timeout, what)
            return p


class Watch:
    """List, then watch, one collection in a thread (listing again when the watch ends)."""

    def __init__(self, api: KubeAPI, kind: str, path: str, state: State) -> None:
        self.api, self.kind, self.path, self.state = api, kind, path, state
        self._stop = threading.Event()
        self._conn: http.client.HTTPSConnection | None = None
        self._thread = threading.Thread(target=self._run, name=f"watch-{kind}", daemon=True)

    def start(self) -> Watch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        conn = self._conn
        if conn is not None and conn.sock is not None:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)

    def _run(self) -> None:
        sep = "&" if "?" in self.path else "?"
        failures = 0
        while not self._stop.is_set():
            try:
                status, body = self.api.request("GET", self.path)
                if status != 200:
                    raise RuntimeError(f"list {self.path}: HTTP {status} {body}")
                self.state.replace(self.kind, list(body["items"]), time.monotonic())
                rv = body["metadata"]["resourceVersion"]
                conn = self._conn = self.api.connect(timeout=3600)
                try:
                    conn.request(
                        "GET",
                        f"{self.path}{sep}watch=1&allowWatchBookmarks=true"
                        f"&resourceVersion={rv}&timeoutSeconds=600",
                    )
                    resp = conn.getresponse()
                    if resp.status != 200:
                        raise RuntimeError(f"watch {self.path}: HTTP {resp.status}")
                    while not self._stop.is_set():
                        line = resp.readline()
                        if not line:
                            break  # the server ended the watch: list again
                        now = time.monotonic()
                        ev = json.loads(line)
                        kind = ev.get("type")
                        if kind == "ERROR":
                            break  # e.g. 410 Gone: list again
                        if kind in ("ADDED", "MODIFIED", "DELETED"):
                            self.state.apply(self.kind, kind, ev["object"], now)
                        failures = 0
                finally:
                    conn.close()
            except Exception as exc:
                if self._stop.is_set():
                    return
                failures += 1
                if failures >= 5:
                    with self.state.cond:
                        self.state.error = exc
                        self.state.cond.notify_all()
                    return
                time.sleep(0.5)  # back off before listing again


# --- what the pods and the Deployment say ---------------------------------------------------


def _ready(pod: dict[str, Any]) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (pod.get("status") or {}).get("conditions") or []
    )


def _annotation(obj: dict[str, Any], key: str) -> str | None:
    value = ((obj.get("metadata") or {}).get("annotations") or {}).get(key)
    return None if value is None else str(value)


def _template_annotation(dep: dict[str, Any], key: str) -> str | None:
    template = ((dep.get("spec") or {}).get("template") or {}).get("metadata") or {}
    value = (template.get("annotations") or {}).get(key)
    return None if value is None else str(value)


def rolled(s: State, match: Callable[[dict[str, Any]], bool], *, gone: bool) -> bool:
    """Every replica on the new template (``match``), Ready, the Deployment's controller
    agreeing (observed generation, updated = ready = replicas = 3); ``gone``: and no pod
    of an older template left at all, terminating ones included."""
    dep = s.deployment
    st = dep.get("status") or {}
    if (st.get("observedGeneration") or 0) < ((dep.get("metadata") or {}).get("generation") or 1):
        return False
    if not (st.get("updatedReplicas") == st.get("readyReplicas") == st.get("replicas") == REPLICAS):
        return False
    pods = s.pods
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    if len(live) != REPLICAS or not all(match(p) and _ready(p) for p in live):
        return False
    return not gone or (len(pods) == REPLICAS)


def pinned_to_version(version: int) -> Callable[[dict[str, Any]], bool]:
    want = f"{CONFIG_MAP}={CONFIG_MAP}-v{version}"
    return lambda pod: _annotation(pod, PINNED_TO) == want


def bumped(token: str) -> Callable[[dict[str, Any]], bool]:
    return lambda pod: _annotation(pod, BUMP) == token


def _parse_time(text: str | None) -> float | None:
    if not text:
        return None
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def pod_failure(pod: dict[str, Any]) -> dict[str, Any] | None:
    """The first sign in the pod's status that a container failed: a non-zero
    termination (now or the last one), a restart, or a ``CrashLoopBackOff`` wait; with
    the termination's ``finishedAt`` (wall-clock seconds) when the status has one."""
    st = pod.get("status") or {}
    for cs in [*(st.get("initContainerStatuses") or []), *(st.get("containerStatuses") or [])]:
        state = cs.get("state") or {}
        terminated = state.get("terminated") or {}
        last = (cs.get("lastState") or {}).get("terminated") or {}
        waiting = state.get("waiting") or {}
        exits = [t for t in (terminated, last) if t.get("exitCode") not in (None, 0)]
        reason = None
        if exits:
            reason = f"exited {exits[0]['exitCode']} ({exits[0].get('reason', '')})"
        elif (cs.get("restartCount") or 0) > 0:
            reason = f"restarted {cs['restartCount']} time(s)"
        elif waiting.get("reason") == "CrashLoopBackOff":
            reason = "CrashLoopBackOff"
        if reason is not None:
            finished = [_parse_time(t.get("finishedAt")) for t in (terminated, last)]
            stamps = [f for f in finished if f is not None]
            return {
                "pod": pod["metadata"]["name"],
                "reason": reason,
                "finished_at": min(stamps) if stamps else None,
            }
    return None


# --- the cluster ----------------------------------------------------------------------------


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut the clean-up short
    raise Interrupted(f"signal {signum}")


class NodeCluster:
    """A node cluster with the chart installed (``with`` block); stops the node on exit."""

    def __init__(self, progress: Callable[[str], None], keep: bool) -> None:
        self.progress = progress
        self.keep = keep
        self._stack = contextlib.ExitStack()
        self.workdir = Path()
        self.plane: ControlPlane
        self.api: KubeAPI
        self.operator_image = ""
        self.etcd_endpoint = ""

    def __enter__(self) -> NodeCluster:
        stack = self._stack
        old = signal.signal(signal.SIGTERM, _on_sigterm)
        stack.callback(signal.signal, signal.SIGTERM, old)
        try:
            if os.geteuid() != 0:
                raise SystemExit("bench/rollout.py runs a real node: run it as root")
            self.workdir = Path(tempfile.mkdtemp(prefix="etcdconfig-bench-rollout-"))
            if not self.keep:
                stack.callback(shutil.rmtree, self.workdir, True)
            self.plane = ControlPlane(self.workdir / "cluster", node=True)
            stack.callback(self.plane.stop)
            self.progress(f"starting the node cluster in {self.workdir}")
            started = time.monotonic()
            self.plane.start(timeout=START_TIMEOUT)
            self.progress(f"node cluster ready in {time.monotonic() - started:.1f} s")
            # the start imports the images of the tree as it was then: an edit of the
            # operator's sources meanwhile makes a new tag, imported here (as `make demo`)
            built = images.ensure_images()
            self.operator_image = built["operator"].ref
            with contextlib.redirect_stdout(sys.stderr):  # --json: stdout holds the JSON only
                demo._import_operator_image(self.plane, built["operator"])
            self._install(built)
            self.api = KubeAPI(self.plane)
        except BaseException:
            self._close()
            raise
        return self

    def _install(self, built: dict[str, images.Image]) -> None:
        plane = self.plane
        path = demo.volume_dir(plane.state_dir)
        path.mkdir(parents=True, exist_ok=True)
        os.chown(path, demo.ETCD_UID, demo.ETCD_UID)
        plane.kubectl("apply", "-f", "-", input=json.dumps(demo.etcd_volume(path)))
        started = time.monotonic()
        args = demo.helm_args(self.operator_image, built["etcd"].ref)
        plane.helm(*args, timeout=HELM_TIMEOUT + 60)
        for kind in (f"deployment/{demo.RELEASE}", f"statefulset/{demo.RELEASE}-etcd"):
            plane.kubectl(
                "rollout", "status", kind, "-n", demo.NAMESPACE, "--timeout=180s", timeout=200
            )
        # Ready pods are reachable a moment later (EndpointSlice, kube-proxy): the
        # validating webhook answers a server-side dry run once the path is complete
        probe = json.dumps(
            {
                "apiVersion": "etcdconfig.io/v1alpha1",
                "kind": "Config",
                "metadata": {"name": "settle-probe", "namespace": "default"},
                "spec": {"data": {}},
            }
        )
        deadline = time.monotonic() + 90
        while plane.kubectl(
            "create", "--dry-run=server", "-f", "-", input=probe, check=False
        ).returncode:
            if time.monotonic() > deadline:
                raise RuntimeError("the operator's webhook did not answer within 90 s")
            time.sleep(0.5)  # poll interval of a deadline-bounded wait
        svc = plane.kubectl("get", "service", demo.ETCD_SERVICE, "-n", demo.NAMESPACE, "-o", "json")
        self.etcd_endpoint = demo.service_address(json.loads(svc.stdout), "client")
        self.progress(
            f"chart installed in {time.monotonic() - started:.1f} s (operator "
            f"{self.operator_image}, bundled etcd at {self.etcd_endpoint})"
        )

    def _close(self) -> None:
        # the clean-up takes a few seconds: a second Ctrl-C or SIGTERM must not cut it short
        old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            self._stack.close()
            if self.keep:
                self.progress(f"logs kept in {self.workdir}")
        finally:
            signal.signal(signal.SIGINT, old_int)

    def __exit__(self, *exc: object) -> None:
        self.progress("stopping the node cluster")
        self._close()

    def rollout_record(self, uid: str, version: int) -> dict[str, Any] | None:
        """The version's rollout record in the bundled etcd."""

        async def read() -> dict[str, Any] | None:
            client = EtcdClient(EtcdSettings(endpoints=(self.etcd_endpoint,)))
            try:
                kv, _ = await client.get(rollout_key(demo.PREFIX, NS, CONFIG, uid, version))
            finally:
                await client.close()
            return None if kv is None else dict(json.loads(kv.value))

        return asyncio.run(read())


# --- the benchmark --------------------------------------------------------------------------


@dataclass
class BadSample:
    version: int
    failed_at: float  # wall clock: the earliest sign of the failure in the pod's status
    seen_at: float  # wall clock: when the bench's watch first saw it
    finished_at: float | None  # wall clock: the container's finishedAt (to the second)
    ended_at: float  # wall clock: the rollout record's endedAt (RolledBack)
    template_back_at: float  # wall clock: the bench saw the template pinned back
    patched_at: float  # wall clock: the PATCH of the bad change was sent
    reason: str
    lowest_good_ready: int  # fewest Ready pods of the good version the watch saw meanwhile
    good_replaced: int  # pods of the good version replaced by the time it settled again


class Bench:
    def __init__(
        self,
        cluster: NodeCluster,
        rounds: int,
        bake: float,
        progress: Callable[[str], None],
        readiness: bool = True,
    ) -> None:
        self.c = cluster
        self.readiness = readiness
        self.api = cluster.api
        self.rounds = rounds
        self.bake = bake
        self.progress = progress
        self.state = State()
        # wall clock = monotonic + offset (endedAt and finishedAt are wall-clock stamps)
        self.offset = time.time() - time.monotonic()
        self.samples: dict[str, list[float]] = {
            "config": [],
            "bare": [],
            "config_ready": [],
            "bare_ready": [],
            "config_recorded": [],
            "config_pinned": [],
        }
        self.bad: list[BadSample] = []
        self.order: list[str] = []

    def wall(self, mono: float) -> float:
        return mono + self.offset

    # --- set-up ------------------------------------------------------------------------

    def patch_config(self, data: dict[str, Any]) -> float:
        """Merge-PATCH ``spec.data``; the monotonic time the request was sent."""
        sent = time.monotonic()
        status, body = self.api.request(
            "PATCH", f"{CONFIG_PATH}/{CONFIG}", {"spec": {"data": data}},
            content_type="application/merge-patch+json",
        )  # fmt: skip
        if status != 200:
            raise RuntimeError(f"PATCH Config: HTTP {status} {body}")
        return sent

    def patch_template(self, token: str) -> float:
        sent = time.monotonic()
        patch = {"spec": {"template": {"metadata": {"annotations": {BUMP: token}}}}}
        status, body = self.api.request(
            "PATCH", f"{DEPLOYMENT_PATH}/{DEPLOYMENT}", patch,
            content_type="application/merge-patch+json",
        )  # fmt: skip
        if status != 200:
            raise RuntimeError(f"PATCH Deployment: HTTP {status} {body}")
        return sent

    def head(self) -> int:
        with self.state.cond:
            return int((self.state.config.get("status") or {}).get("version") or 0)

    def wait_outcome(self, version: int, outcome: str) -> dict[str, Any]:
        def test(s: State) -> dict[str, Any] | None:
            r = (s.config.get("status") or {}).get("rollout") or {}
            return r if (r.get("version"), r.get("state")) == (version, outcome) else None

        p = self.state.until(test, ROLLOUT_TIMEOUT, f"the rollout of version {version} {outcome}")
        return dict(p.value)

    def settled(self, version: int) -> None:
        """Every pod on ``version``, Ready, and nothing else left."""
        self.state.until(
            lambda s: rolled(s, pinned_to_version(version), gone=True),
            ROLLOUT_TIMEOUT,
            f"{REPLICAS} Ready pods on {CONFIG_MAP}-v{version} and no other",
        )

    def setup(self) -> list[Watch]:
        plane = self.c.plane
        plane.kubectl("create", "namespace", NS)
        config = config_manifest(
            {"retries": 3, "round": "v1"},
            "benchmark: first version",
            namespace=NS,
            debounce=DEBOUNCE_SECONDS,
            bake=self.bake,
            deadline=PROGRESS_DEADLINE,
        )
        for obj in (
            deployment_manifest(self.c.operator_image, namespace=NS, readiness=self.readiness),
            config,
        ):
            plane.kubectl(
                "apply", "--server-side", "--field-manager=bench", "-f", "-",
                input=yaml.safe_dump(obj),
            )  # fmt: skip
        selector = quote(f"app={DEPLOYMENT}")
        watches = [
            Watch(self.api, "pods", f"{PODS_PATH}?labelSelector={selector}", self.state),
            Watch(self.api, "deployments", DEPLOYMENT_PATH, self.state),
            Watch(self.api, "configs", CONFIG_PATH, self.state),
        ]
        for w in watches:
            w.start()
        self.progress("warm-up: the first version rolls out")
        self.wait_outcome(1, "Succeeded")
        self.progress("warm-up: one config change and one bare change (not measured)")
        self.measure_config("warm-up", record=False)
        self.measure_bare("warm-up", record=False)
        return watches

    # --- the measured steps ------------------------------------------------------------

    def measure_config(self, label: str, *, record: bool = True) -> float:
        before = self.head()
        version = before + 1
        st = self.state
        with st.probing(
            lambda s: (s.config.get("status") or {}).get("version") == version,
            lambda s: _template_annotation(s.deployment, PIN) == str(version),
            lambda s: rolled(s, pinned_to_version(version), gone=False),
            lambda s: rolled(s, pinned_to_version(version), gone=True),
        ) as (recorded, pinned, ready, gone):
            sent = self.patch_config({"retries": 3 + version % 5, "round": f"{label}-c"})
            for p in (recorded, pinned, ready, gone):
                st.wait(p, ROLLOUT_TIMEOUT, f"version {version} on every pod")
        done = gone.at
        assert done is not None
        assert recorded.at is not None
        assert pinned.at is not None
        assert ready.at is not None
        if self.head() != version:
            raise RuntimeError(f"expected version {version}, the Config is at {self.head()}")
        if record:
            self.samples["config"].append(done - sent)
            self.samples["config_ready"].append(ready.at - sent)
            self.samples["config_recorded"].append(recorded.at - sent)
            self.samples["config_pinned"].append(pinned.at - sent)
            self.order.append("config")
        # not measured: the bake, so that the next step starts from a finished rollout
        self.wait_outcome(version, "Succeeded")
        return done - sent

    def measure_bare(self, label: str, *, record: bool = True) -> float:
        token = f"{label}-b"
        st = self.state
        with st.probing(
            lambda s: rolled(s, bumped(token), gone=False),
            lambda s: rolled(s, bumped(token), gone=True),
        ) as (ready, gone):
            sent = self.patch_template(token)
            for p in (ready, gone):
                st.wait(p, ROLLOUT_TIMEOUT, f"the bare rollout {token}")
        done = gone.at
        assert done is not None
        assert ready.at is not None
        if record:
            self.samples["bare"].append(done - sent)
            self.samples["bare_ready"].append(ready.at - sent)
            self.order.append("bare")
        return done - sent

    def measure_bad(self, label: str) -> BadSample:
        good = self.head()
        version = good + 1
        st = self.state

        def crashed(s: State) -> dict[str, Any] | None:
            for pod in s.pods:
                if _annotation(pod, PIN) == str(version):
                    found = pod_failure(pod)
                    if found is not None:
                        return found
            return None

        seen_bad = [False]

        def pinned_back(s: State) -> bool:
            pin = _template_annotation(s.deployment, PIN)
            seen_bad[0] = seen_bad[0] or pin == str(version)
            return seen_bad[0] and pin == str(good)

        def good_ready(pods: list[dict[str, Any]]) -> set[str]:
            match = pinned_to_version(good)
            return {
                p["metadata"]["name"]
                for p in pods
                if match(p) and _ready(p) and not p["metadata"].get("deletionTimestamp")
            }

        with st.cond:
            before = good_ready(st.pods)
        lowest = [len(before)]

        def track(s: State) -> bool:  # never true: notes the fewest Ready pods of `good`
            lowest[0] = min(lowest[0], len(good_ready(s.pods)))
            return False

        with st.probing(crashed, pinned_back, track) as (failed, back, _):
            sent = self.patch_config({"retries": 9, "round": f"{label}-x"})
            outcome = self.wait_outcome(version, "RolledBack")
            st.wait(back, ROLLOUT_TIMEOUT, f"the template pinned back to version {good}")
            st.wait(failed, 30, f"a failed pod of version {version} in the watch")
            self.settled(good)  # the crashed pod gone, the old version's pods all Ready
        with st.cond:
            replaced = len(before - good_ready(st.pods))
        assert failed.at is not None
        assert back.at is not None
        with st.cond:
            uid = str(st.config["metadata"]["uid"])
        record = self.c.rollout_record(uid, version)
        if record is None or record.get("state") != "RolledBack":
            raise RuntimeError(f"rollout record of version {version}: {record!r}")
        ended = _parse_time(str(record["endedAt"]))
        assert ended is not None
        seen = self.wall(failed.at)
        finished = failed.value["finished_at"]
        sample = BadSample(
            version=version,
            # finishedAt is rounded down to the second: never before the change was sent
            failed_at=max(min(seen, finished) if finished is not None else seen, self.wall(sent)),
            seen_at=seen,
            finished_at=finished,
            ended_at=ended,
            template_back_at=self.wall(back.at),
            patched_at=self.wall(sent),
            reason=f"{failed.value['pod']} {failed.value['reason']}; {outcome.get('message', '')}",
            lowest_good_ready=lowest[0],
            good_replaced=replaced,
        )
        self.bad.append(sample)
        return sample

    def recover(self, label: str) -> None:
        """A good change after the rollback (not measured): it rolls forward."""
        version = self.head() + 1
        self.patch_config({"retries": 3, "round": f"{label}-f"})
        self.wait_outcome(version, "Succeeded")
        self.settled(version)

    def run(self) -> dict[str, Any]:
        watches: list[Watch] = []
        try:
            watches = self.setup()
            for r in range(1, self.rounds + 1):
                order = ("config", "bare") if r % 2 else ("bare", "config")
                for side in order:
                    took = (self.measure_config if side == "config" else self.measure_bare)(f"r{r}")
                    self.progress(f"round {r}/{self.rounds}: {side} rollout {took:.2f} s")
                bad = self.measure_bad(f"r{r}")
                self.progress(
                    f"round {r}/{self.rounds}: bad version {bad.version} rolled back "
                    f"{bad.ended_at - bad.failed_at:.2f} s after the pod failed"
                )
                self.recover(f"r{r}")
        finally:
            for w in watches:
                w.stop()
        return self.figures()

    def figures(self) -> dict[str, Any]:
        s = self.samples
        f: dict[str, Any] = {
            "rounds": self.rounds,
            "replicas": REPLICAS,
            "debounce_seconds": DEBOUNCE_SECONDS,
            "bake_seconds": self.bake,
            "order": self.order,
        }
        for key in ("config", "bare"):
            f[f"{key}_rollout_p50_s"] = percentile(s[key], 50)
            f[f"{key}_rollout_max_s"] = max(s[key])
            f[f"{key}_rollout_samples_s"] = [round(x, 3) for x in s[key]]
            f[f"{key}_ready_p50_s"] = percentile(s[f"{key}_ready"], 50)
        f["rollout_overhead_ratio"] = f["config_rollout_p50_s"] / f["bare_rollout_p50_s"]
        f["ready_overhead_ratio"] = f["config_ready_p50_s"] / f["bare_ready_p50_s"]
        f["config_recorded_p50_s"] = percentile(s["config_recorded"], 50)
        f["config_pinned_p50_s"] = percentile(s["config_pinned"], 50)
        detect = [b.ended_at - b.failed_at for b in self.bad]
        f["rollback_detect_p50_s"] = percentile(detect, 50)
        f["rollback_detect_max_s"] = max(detect)
        f["rollback_detect_samples_s"] = [round(x, 3) for x in detect]
        f["rollback_detect_from_seen_p50_s"] = percentile(
            [b.ended_at - b.seen_at for b in self.bad], 50
        )
        f["rollback_template_back_p50_s"] = percentile(
            [b.template_back_at - b.failed_at for b in self.bad], 50
        )
        f["bad_change_to_rollback_p50_s"] = percentile(
            [b.ended_at - b.patched_at for b in self.bad], 50
        )
        f["rollback_detect_goal_s"] = DETECT_GOAL_BASE + self.bake
        f["rollback_samples"] = [
            {
                "version": b.version,
                "change_to_failed_s": round(b.failed_at - b.patched_at, 3),
                "failed_to_rollback_s": round(b.ended_at - b.failed_at, 3),
                "seen_to_rollback_s": round(b.ended_at - b.seen_at, 3),
                "finished_at_used": b.finished_at is not None and b.failed_at < b.seen_at,
                "reason": b.reason,
            }
            for b in self.bad
        ]
        f["rollback_min_good_ready"] = min(b.lowest_good_ready for b in self.bad)
        f["rollback_good_pods_replaced"] = sum(b.good_replaced for b in self.bad)
        f["readiness_probe"] = self.readiness
        return f


# --- report ---------------------------------------------------------------------------------


def goals_for(bake: float) -> dict[str, tuple[str, float]]:
    return {
        "rollout_overhead_ratio": ("<=", OVERHEAD_GOAL),
        "rollback_detect_p50_s": ("<=", DETECT_GOAL_BASE + bake),
    }


def render(console: Console, f: dict[str, Any], goals: dict[str, dict[str, Any]]) -> None:
    n = len(f["config_rollout_samples_s"])
    table = new_table(
        f"etcdconfig rollout benchmark — {REPLICAS} replicas, {f['rounds']} rounds, "
        f"{f['elapsed_s']} s",
        (
            "config: PATCH spec.data → every pod pinned to the new app-config-vN, Ready, "
            "Deployment updated = ready = 3, no old pod left (terminating ones included); "
            "bare: PATCH of a pod-template annotation of the same Deployment → the same; "
            "interleaved ABBA, same run, readiness probe "
            f"{'on' if f['readiness_probe'] else 'off'}. "
            f"Rollout debounceSeconds = {f['debounce_seconds']} "
            f"for the measurement, bakeSeconds = {f['bake_seconds']:g}. Rollback: the "
            "earliest failure sign in the pod's status (finishedAt, to the second, or the "
            "watch) → the rollout record's endedAt (RolledBack) in etcd"
        ),
        ["figure", "config change", "bare template change", "ratio"],
    )
    table.add_row(
        f"rollout, p50 s (n={n})",
        f"{f['config_rollout_p50_s']:.2f}",
        f"{f['bare_rollout_p50_s']:.2f}",
        f"{f['rollout_overhead_ratio']:.2f}×",
        *goal_cell(goals, "rollout_overhead_ratio", "×"),
    )
    table.add_row(
        "  max, s",
        f"{f['config_rollout_max_s']:.2f}",
        f"{f['bare_rollout_max_s']:.2f}",
        "",
        "",
        "",
    )
    table.add_row(
        "  Ready, old pods terminating (rollout status), p50 s",
        f"{f['config_ready_p50_s']:.2f}",
        f"{f['bare_ready_p50_s']:.2f}",
        f"{f['ready_overhead_ratio']:.2f}×",
        "",
        "",
    )
    table.add_row(
        "  PATCH → version recorded / template pinned, p50 s",
        f"{f['config_recorded_p50_s']:.2f} / {f['config_pinned_p50_s']:.2f}",
        "",
        "",
        "",
        "",
    )
    table.add_row(
        f"bad change: pod failed → rollback started, p50 s (bake {f['bake_seconds']:g} s)",
        f"{f['rollback_detect_p50_s']:.2f}",
        "",
        "",
        *goal_cell(goals, "rollback_detect_p50_s", f" s (5 + bake {f['bake_seconds']:g})"),
    )
    table.add_row(
        "  max; from the watch's first sight, p50 s",
        f"{f['rollback_detect_max_s']:.2f}; {f['rollback_detect_from_seen_p50_s']:.2f}",
        "",
        "",
        "",
        "",
    )
    table.add_row(
        "  pod failed → template pinned back (seen), p50 s",
        f"{f['rollback_template_back_p50_s']:.2f}",
        "",
        "",
        "",
        "",
    )
    table.add_row(
        "  fewest Ready pods of the good version / of them replaced",
        f"{f['rollback_min_good_ready']} of {REPLICAS} / {f['rollback_good_pods_replaced']}",
        "",
        "",
        "",
        "",
    )
    table.add_row(
        "  PATCH of the bad change → rollback started, p50 s",
        f"{f['bad_change_to_rollback_p50_s']:.2f}",
        "",
        "",
        "",
        "",
    )
    console.print(table)
    print_verdict(console, goals)


# --- entry point ----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="Rollout benchmark: config change vs bare template change (ratio), "
        "and the time to an automatic rollback (root: it runs a node)."
    )
    ap.add_argument("--quick", action="store_true", help=f"{QUICK_ROUNDS} rounds")
    ap.add_argument("--rounds", type=int, help=f"rounds (default {DEFAULT_ROUNDS})")
    ap.add_argument(
        "--bake",
        type=float,
        default=DEFAULT_BAKE,
        help=f"spec.rollout.bakeSeconds (default {DEFAULT_BAKE:g})",
    )
    ap.add_argument(
        "--no-readiness",
        action="store_true",
        help="the app without its readiness probe (as tests/node/test_rollouts_node.py runs "
        "it): a crashing pod counts as Ready for a moment",
    )
    ap.add_argument("--json", action="store_true", help="print only the JSON object")
    ap.add_argument("--json-file", help="also write the JSON object to this file")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir with every log")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a goal is missed")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    rounds = args.rounds or (QUICK_ROUNDS if args.quick else DEFAULT_ROUNDS)
    err = Console(stderr=True)

    def progress(text: str) -> None:
        if not args.json:
            err.log(text)

    started = time.monotonic()
    try:
        with NodeCluster(progress, keep=args.keep) as cluster:
            figures = Bench(cluster, rounds, args.bake, progress, not args.no_readiness).run()
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: the node is stopped by now
        err.print(f"interrupted ({exc or 'Ctrl-C'}); the node cluster is stopped")
        return 130
    figures["elapsed_s"] = round(time.monotonic() - started, 1)
    goals = goal_results(figures, goals_for(args.bake))
    doc = json.dumps({**figures, "goals": goals}, indent=2)
    if args.json_file:
        with open(args.json_file, "w") as out:
            out.write(doc + "\n")
    if args.json:
        print(doc)
    else:
        render(Console(width=None if sys.stdout.isatty() else 130), figures, goals)
    return 1 if args.strict and not all(g["pass"] for g in goals.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
