"""Rollouts on a real node, durable (docs/rollouts.md): what a rollout survives and what it
leaves behind, judged from the running system — etcd read directly (the rollout records),
the API server's objects and watch streams, the kubelet's containers.

- A SIGKILL of the owner replica's process in the middle of a rollout (its record
  ``Started``, the first pod of the version running): the rollout still completes, once.
- Ten updates in about a second with ``debounceSeconds: 3``: one rollout, to the last
  version; one new ReplicaSet.
- Versioned ConfigMaps against the Deployment controller's own revision history: none is
  deleted while a ReplicaSet or a pod refers to it; those beyond ``keep`` that nothing
  refers to go once their ReplicaSets were pruned (and the webhook's pin grace passed).
- The operator down: pods of a pinned template start anyway, on the plain ConfigMap
  (the pod webhook fails open); once it is back, ``etcdconfig_unpinned_pods`` counts them
  and a ``PodsNotPinned`` Event names them.
- A Flux-style server-side apply of the unchanged manifests after rollouts: no diff, no
  change.

Each test creates its Deployment before its Config: the operator has no watch on
workloads, so a Deployment created after the first version's rollout found no consumer
would wait for the next resync round (60 s) to be pinned. The app is the one of
test_rollouts_node.py, run from the operator's image."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import signal
import ssl
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families
from tests.node.conftest import Release, wait_for
from tests.node.test_rollouts_node import APP

from etcdconfig.concurrency.membership import rendezvous_owner
from etcdconfig.devenv import build
from etcdconfig.devenv.node import Node
from etcdconfig.rollout import PIN_GRACE

CONFIG = "app"
CM = "app-config"
PIN = f"etcdconfig.io/version.{CONFIG}"
UID_MARKER = f"etcdconfig.io/uid.{CONFIG}"
PINNED_TO = "etcdconfig.io/pinned-to"
PINNED_AT = "etcdconfig.io/pinned-at"
FIELD_MANAGER = "kustomize-controller"


# --- manifests ----------------------------------------------------------------------------


def config(ns: str, data: dict[str, Any], *, keep: int, rollout: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "etcdconfig.io/v1alpha1",
        "kind": "Config",
        "metadata": {"name": CONFIG, "namespace": ns},
        "spec": {
            "data": data,
            "publish": {"configMap": {"name": CM, "versioned": True, "keep": keep}},
            "rollout": rollout,
        },
    }


def deployment(ns: str, image: str, replicas: int, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "app",
            "namespace": ns,
            "annotations": {"etcdconfig.io/configs": CONFIG},
        },
        "spec": {
            "replicas": replicas,
            **spec,
            "selector": {"matchLabels": {"app": "app"}},
            "strategy": {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": {"app": "app"}},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [
                        {
                            "name": "app",
                            "image": image,
                            "imagePullPolicy": "Never",
                            "command": ["python", "-c", APP],
                            "volumeMounts": [{"name": "cfg", "mountPath": "/etc/app"}],
                        }
                    ],
                    "volumes": [{"name": "cfg", "configMap": {"name": CM}}],
                },
            },
        },
    }


def manifests(*objs: dict[str, Any]) -> str:
    return yaml.safe_dump_all(objs)


def apply(release: Release, *objs: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """A server-side apply as Flux's kustomize-controller makes it."""
    return release.plane.kubectl(
        "apply", "--server-side", f"--field-manager={FIELD_MANAGER}", "--force-conflicts",
        "-f", "-", input=manifests(*objs),
    )  # fmt: skip


# --- reading the cluster ------------------------------------------------------------------


def get(release: Release, ns: str, kind: str, name: str, *more: str) -> dict[str, Any]:
    out = release.plane.kubectl("get", kind, name, "-n", ns, "-o", "json", *more)
    return dict(json.loads(out.stdout))


def items(release: Release, ns: str, kind: str, *selector: str) -> list[dict[str, Any]]:
    out = release.plane.kubectl("get", kind, "-n", ns, *selector, "-o", "json")
    return list(json.loads(out.stdout)["items"])


def rollout(release: Release, ns: str) -> dict[str, Any]:
    status = get(release, ns, "configs.etcdconfig.io", CONFIG).get("status") or {}
    return dict(status.get("rollout") or {})


class Miss(dict[str, Any]):
    """What a check saw while not yet satisfied: falsy, and shown by wait_for at its deadline."""

    def __bool__(self) -> bool:
        return False


def wait_rolled(
    release: Release, ns: str, version: int, state: str, timeout: float = 180.0
) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        r = rollout(release, ns)
        return r if (r.get("version"), r.get("state")) == (version, state) else Miss(r)

    return dict(
        wait_for(f"the rollout of version {version} {state} in {ns}", check, timeout=timeout)
    )


def app_pods(release: Release, ns: str) -> list[dict[str, Any]]:
    return [
        p
        for p in items(release, ns, "pods", "-l", "app=app")
        if not p["metadata"].get("deletionTimestamp")
    ]


def pinned_to(pod: dict[str, Any]) -> str | None:
    return (pod["metadata"].get("annotations") or {}).get(PINNED_TO)


def template_pin(obj: dict[str, Any]) -> int | None:
    annotations = obj["spec"]["template"]["metadata"].get("annotations") or {}
    return int(annotations[PIN]) if PIN in annotations else None


def mounted(release: Release, ns: str, pod: str) -> dict[str, Any]:
    out = release.plane.kubectl("exec", "-n", ns, pod, "--", "cat", "/etc/app/config.json")
    return dict(json.loads(out.stdout))


def wait_pods_on(release: Release, ns: str, replicas: int, version: int) -> list[dict[str, Any]]:
    """Until exactly ``replicas`` pods run, each pinned to ``<cm>-v<version>``."""
    want = f"{CM}={CM}-v{version}"

    def check() -> list[dict[str, Any]] | Miss:
        ps = app_pods(release, ns)
        if len(ps) == replicas and {pinned_to(p) for p in ps} == {want}:
            return ps
        return Miss({p["metadata"]["name"]: pinned_to(p) for p in ps})

    return list(wait_for(f"{replicas} pods pinned to {want}", check, timeout=120))


def assert_pods_on(
    release: Release, ns: str, pods: list[dict[str, Any]], version: int, data: dict[str, Any]
) -> None:
    for p in pods:
        assert pinned_to(p) == f"{CM}={CM}-v{version}", p["metadata"]
        assert p["metadata"]["annotations"][PIN] == str(version)
        assert p["spec"]["volumes"][0]["configMap"]["name"] == f"{CM}-v{version}"
        assert mounted(release, ns, p["metadata"]["name"]) == data


def app_image(release: Release) -> str:
    """The app runs from the operator's image, as the release runs it (imported into the
    node's containerd; never pulled)."""
    dep = get(release, release.namespace, "deployment", release.name)
    (container,) = (
        c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == "operator"
    )
    return str(container["image"])


def config_uid(release: Release, ns: str) -> str:
    return str(get(release, ns, "configs.etcdconfig.io", CONFIG)["metadata"]["uid"])


# --- etcd, read directly ------------------------------------------------------------------


def etcd_prefix(release: Release) -> str:
    """The store's key prefix as the chart configured the operator (``etcd.prefix``)."""
    dep = get(release, release.namespace, "deployment", release.name)
    (container,) = (
        c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == "operator"
    )
    env = {e["name"]: e.get("value") for e in container["env"]}
    return str(env["ETCDCONFIG_ETCD_PREFIX"])


def etcd_range(release: Release, prefix: str) -> dict[str, bytes]:
    """Every key under ``prefix`` in the bundled etcd, through its JSON gateway (v3 API)."""
    raw = prefix.encode()
    end = raw[:-1] + bytes([raw[-1] + 1])
    body = json.dumps(
        {"key": base64.b64encode(raw).decode(), "range_end": base64.b64encode(end).decode()}
    ).encode()
    req = urllib.request.Request(
        f"{release.etcd_endpoint()}/v3/kv/range",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        out = json.load(resp)
    return {
        base64.b64decode(kv["key"]).decode(): base64.b64decode(kv.get("value", ""))
        for kv in out.get("kvs") or []
    }


def rollout_records(release: Release, ns: str, uid: str | None = None) -> dict[str, dict[str, Any]]:
    """The Config's rollout records, key -> record: every incarnation's unless ``uid``."""
    base = f"{etcd_prefix(release).rstrip('/')}/rollouts/{ns}/{CONFIG}/"
    found = etcd_range(release, base + (f"{uid}/" if uid else ""))
    return {key: json.loads(value) for key, value in found.items()}


def record_key(release: Release, ns: str, uid: str, version: int) -> str:
    return f"{etcd_prefix(release).rstrip('/')}/rollouts/{ns}/{CONFIG}/{uid}/{version:020d}"


# --- the operator's pods --------------------------------------------------------------------


def scrape(pod: dict[str, Any]) -> str:
    (port,) = (
        p["containerPort"]
        for c in pod["spec"]["containers"]
        if c["name"] == "operator"
        for p in c.get("ports") or []
        if p["name"] == "http"
    )
    try:
        with urllib.request.urlopen(
            f"http://{pod['status']['podIP']}:{port}/metrics", timeout=5
        ) as resp:
            return str(resp.read().decode())
    except OSError:
        return ""


def unpinned_pods(metrics_text: str, ns: str) -> float | None:
    """``etcdconfig_unpinned_pods{namespace=ns, config=app}`` in a scrape, if there."""
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == "etcdconfig_unpinned_pods" and sample.labels == {
                "namespace": ns,
                "config": CONFIG,
            }:
                return float(sample.value)
    return None


def operator_container(pod: dict[str, Any]) -> dict[str, Any]:
    (status,) = (c for c in pod["status"].get("containerStatuses") or [] if c["name"] == "operator")
    return dict(status)


def host_pid(release: Release, pod: str) -> int:
    """The host PID of the operator process in ``pod`` (its container's init process), as
    containerd knows it."""
    node = Node(release.plane.state_dir)
    ps = node.crictl(
        "ps", "-o", "json", "--state", "Running",
        "--label", f"io.kubernetes.pod.name={pod}",
        "--label", "io.kubernetes.container.name=operator",
    )  # fmt: skip
    assert ps.returncode == 0, ps.stderr
    (container,) = json.loads(ps.stdout)["containers"]
    inspect = node.crictl("inspect", container["id"])
    assert inspect.returncode == 0, inspect.stderr
    return int(json.loads(inspect.stdout)["info"]["pid"])


# --- tests ----------------------------------------------------------------------------------


def test_a_sigkilled_owner_mid_rollout_leaves_it_to_complete_once(
    release: Release, namespace: str
) -> None:
    ns = namespace
    start = time.monotonic()

    def cfg(retries: int) -> dict[str, Any]:
        return config(
            ns, {"retries": retries}, keep=2,
            rollout={"debounceSeconds": 0, "bakeSeconds": 20, "progressDeadlineSeconds": 240},
        )  # fmt: skip

    # minReadySeconds spaces the new pods' creations 5 s apart: none is created in the
    # second or two before the kubelet reports the killed replica's container gone and its
    # webhook endpoint leaves the Service (a pod created meanwhile may have its webhook
    # call routed to the dead process and be admitted unpinned: fail-open, by design)
    apply(release, deployment(ns, app_image(release), 3, minReadySeconds=5))
    apply(release, cfg(3))
    wait_rolled(release, ns, 1, "Succeeded")
    uid = config_uid(release, ns)

    apply(release, cfg(5))
    key = record_key(release, ns, uid, 2)

    def started() -> dict[str, Any] | None:
        record = rollout_records(release, ns, uid).get(key)
        if record is None or record["state"] != "Started":
            return None
        on_v2 = [p for p in app_pods(release, ns) if pinned_to(p) == f"{CM}={CM}-v2"]
        return record if on_v2 else None

    record = dict(wait_for("the v2 record Started and a pod on v2", started, timeout=60, every=0.1))
    members = [m["replica"] for m in release.cli("members")["members"]]
    owner = str(record["startedBy"])  # the owner: it alone starts a rollout
    assert rendezvous_owner(members, uid) == owner, (record, members)
    (owner_pod,) = (p for p in release.pods() if p["metadata"]["name"] == owner)
    restarts = operator_container(owner_pod)["restartCount"]
    pid = host_pid(release, owner)
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert b"run" in cmdline and any(part.endswith(b"etcdconfig") for part in cmdline), cmdline
    # still mid-rollout: the record Started (the bake alone keeps it so for 20 s)
    assert rollout_records(release, ns, uid)[key]["state"] == "Started"
    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()

    def restarted() -> dict[str, Any] | None:
        (pod,) = (p for p in release.pods() if p["metadata"]["name"] == owner)
        status = operator_container(pod)
        return status if status["restartCount"] == restarts + 1 else None

    status = dict(wait_for(f"{owner}'s operator container to restart", restarted, timeout=60))
    terminated = status["lastState"]["terminated"]
    assert terminated["exitCode"] == 128 + signal.SIGKILL, terminated  # killed, not stopped

    # the rollout completes: every pod on v2, mounting v2's data
    wait_rolled(release, ns, 2, "Succeeded", timeout=240)
    pods = wait_pods_on(release, ns, 3, 2)
    assert_pods_on(release, ns, pods, 2, {"retries": 5})
    # once: one record per version, each finished; one ReplicaSet per pinned version
    records = rollout_records(release, ns)
    assert sorted(records) == [record_key(release, ns, uid, 1), key], sorted(records)
    assert {r["version"]: r["state"] for r in records.values()} == {1: "Succeeded", 2: "Succeeded"}
    assert records[key]["startedBy"] == owner
    assert records[key]["endedBy"] in members, records[key]
    pins = sorted(
        p for rs in items(release, ns, "replicasets") if (p := template_pin(rs)) is not None
    )
    assert pins == [1, 2], pins
    release.settle()
    print(
        f"SIGKILL of {owner} (pid {pid}) mid-rollout; v2 Succeeded "
        f"{time.monotonic() - killed_at:.1f}s later, ended by {records[key]['endedBy']}; "
        f"test {time.monotonic() - start:.0f}s"
    )


def admin_patch(release: Release, path: str, body: dict[str, Any]) -> None:
    """A server-side apply straight to the API server (no kubectl process per request: ten
    of them fit in well under a second)."""
    plane = release.plane
    ctx = ssl.create_default_context(cafile=str(plane.pki_dir / "ca.crt"))
    ctx.load_cert_chain(str(plane.pki_dir / "admin.crt"), str(plane.pki_dir / "admin.key"))
    query = urllib.parse.urlencode({"fieldManager": FIELD_MANAGER, "force": "true"})
    req = urllib.request.Request(
        f"{plane.server}{path}?{query}",
        data=json.dumps(body).encode(),
        method="PATCH",
        headers={"Content-Type": "application/apply-patch+yaml"},
    )
    with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
        assert resp.status == 200, resp.status


def test_a_burst_of_ten_updates_rolls_out_once_to_the_last(
    release: Release, namespace: str
) -> None:
    ns = namespace
    start = time.monotonic()

    def cfg(seq: int) -> dict[str, Any]:
        return config(
            ns, {"retries": 3, "seq": seq}, keep=3, rollout={"debounceSeconds": 3, "bakeSeconds": 2}
        )

    apply(release, deployment(ns, app_image(release), 3))
    apply(release, cfg(0))
    wait_rolled(release, ns, 1, "Succeeded")
    uid = config_uid(release, ns)
    before = {rs["metadata"]["uid"]: template_pin(rs) for rs in items(release, ns, "replicasets")}
    dep = get(release, ns, "deployment", "app")
    generation = dep["metadata"]["generation"]
    revision = int(dep["metadata"]["annotations"]["deployment.kubernetes.io/revision"])

    path = f"/apis/etcdconfig.io/v1alpha1/namespaces/{ns}/configs/{CONFIG}"
    burst_start = time.monotonic()
    for seq in range(1, 11):
        admin_patch(release, path, cfg(seq))
        # ~0.1 s apart: the operator records several versions, each restarting the debounce
        time.sleep(0.1)  # the burst's pace (the load), not synchronisation
    burst = time.monotonic() - burst_start
    assert burst < 2.0, f"the burst took {burst:.2f}s"

    def recorded_last() -> int | None:
        cfg_obj = get(release, ns, "configs.etcdconfig.io", CONFIG)
        status = cfg_obj.get("status") or {}
        gen = cfg_obj["metadata"]["generation"]
        return int(status["version"]) if status.get("observedGeneration") == gen else None

    last = int(wait_for("the last update recorded", recorded_last, timeout=60))
    assert release.cli("show", f"{ns}/{CONFIG}", "--version", str(last))["data"] == {
        "retries": 3,
        "seq": 10,
    }
    # the premise: the burst was recorded as several versions (else nothing coalesced)
    assert last >= 3, f"the burst was recorded as {last - 1} version(s) only"
    done = wait_rolled(release, ns, last, "Succeeded")
    assert done["summary"] == f"Deployment/app 3/3 on v{last}"
    assert_pods_on(release, ns, wait_pods_on(release, ns, 3, last), last, {"retries": 3, "seq": 10})

    # one rollout: a record for v1 and the last only; one new ReplicaSet, the template
    # straight from v1 to the last (one revision)
    records = rollout_records(release, ns)
    assert sorted(records) == [record_key(release, ns, uid, 1), record_key(release, ns, uid, last)]
    assert {r["state"] for r in records.values()} == {"Succeeded"}
    after = {rs["metadata"]["uid"]: template_pin(rs) for rs in items(release, ns, "replicasets")}
    new = {u: p for u, p in after.items() if u not in before}
    assert list(new.values()) == [last], (before, after)
    assert set(before) <= set(after)
    dep = get(release, ns, "deployment", "app")
    assert int(dep["metadata"]["annotations"]["deployment.kubernetes.io/revision"]) == revision + 1
    assert dep["metadata"]["generation"] == generation + 1  # one change of the spec, not two
    assert template_pin(dep) == last
    print(f"burst of 10 in {burst:.2f}s recorded as versions 2..{last}; one rollout to v{last}; "
          f"test {time.monotonic() - start:.0f}s")  # fmt: skip


@dataclass
class WatchLog:
    """``kubectl get KIND --watch --output-watch-events -o json`` of a namespace, in the
    background: every event, with the object's resourceVersion (the API server's etcd
    revision: one order across kinds, as the whole cluster's state is one etcd keyspace)
    and the wall-clock time it arrived."""

    release: Release
    ns: str
    kinds: tuple[str, ...]
    events: list[tuple[int, str, str, dict[str, Any], float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._procs: list[subprocess.Popen[str]] = []
        self._threads: list[threading.Thread] = []
        for kind in self.kinds:
            proc = subprocess.Popen(
                [str(build.ensure_kubectl()), "get", kind, "-n", self.ns, "--watch",
                 "--output-watch-events", "-o", "json"],
                env=self.release.plane.client_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )  # fmt: skip
            self._procs.append(proc)
            thread = threading.Thread(target=self._read, args=(kind, proc), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _read(self, kind: str, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        buf: list[str] = []
        for line in proc.stdout:
            buf.append(line)
            # an event ends with a line that closes its object: "}" pretty-printed, or the
            # whole event on one line
            if not (line.startswith("}") or (line.startswith("{") and line.rstrip().endswith("}"))):
                continue
            try:
                event = json.loads("".join(buf))
            except ValueError:
                continue
            buf = []
            obj = event["object"]
            with self._lock:
                self.events.append(
                    (int(obj["metadata"]["resourceVersion"]), event["type"], kind, obj, time.time())
                )

    def snapshot(self) -> list[tuple[int, str, str, dict[str, Any], float]]:
        with self._lock:
            return sorted(self.events, key=lambda e: e[0])

    def stop(self) -> None:
        for proc in self._procs:
            proc.terminate()
        for proc in self._procs:
            proc.wait(timeout=10)
        for thread in self._threads:
            thread.join(timeout=10)
        for proc in self._procs:
            assert proc.stdout is not None
            proc.stdout.close()


def refers_to(obj: dict[str, Any]) -> set[str]:
    """The versioned ConfigMaps a ReplicaSet (by its template) or a Pod refers to: by a pin
    annotation, or by name in a volume."""
    holder = obj["spec"].get("template", obj)
    annotations = holder["metadata"].get("annotations") or {}
    names = {f"{CM}-v{annotations[PIN]}"} if PIN in annotations else set()
    for volume in holder["spec"].get("volumes") or []:
        name = (volume.get("configMap") or {}).get("name", "")
        if name.startswith(f"{CM}-v"):
            names.add(name)
    return names


def test_versioned_configmaps_go_only_after_the_deployments_history_let_them_go(
    release: Release, namespace: str
) -> None:
    """``keep: 1`` and ``revisionHistoryLimit: 2``: five versions rolled out one after
    another. The collection's grace (``etcdconfig.io/pinned-at``, PIN_GRACE = 120 s after
    the webhook last pinned a pod to a ConfigMap) cannot be avoided by a real pod: v1's
    and v2's ConfigMaps, unreferenced once the Deployment controller pruned their
    ReplicaSets, are judged collectable only 120 s after their pods were created. The
    five rollouts take well under that, so the test waits out the rest (≈ 90 s) and
    then asks for a reconcile (an annotation: the collection runs on each reconcile while
    it keeps something; the resync round within 60 s otherwise)."""
    ns = namespace
    start = time.monotonic()
    watch = WatchLog(release, ns, ("configmaps", "replicasets", "pods"))
    try:

        def cfg(n: int) -> dict[str, Any]:
            return config(
                ns, {"retries": 3, "gen": n}, keep=1,
                rollout={"debounceSeconds": 0, "bakeSeconds": 1, "progressDeadlineSeconds": 120},
            )  # fmt: skip

        apply(release, deployment(ns, app_image(release), 2, revisionHistoryLimit=2))
        for n in range(1, 6):
            apply(release, cfg(n))
            wait_rolled(release, ns, n, "Succeeded")
            # every ConfigMap a ReplicaSet or pod names exists now
            referred = set().union(
                *(refers_to(o) for k in ("replicasets", "pods") for o in items(release, ns, k))
            )
            present = {cm["metadata"]["name"] for cm in items(release, ns, "configmaps")}
            assert referred <= present, (n, referred, present)
        assert_pods_on(release, ns, wait_pods_on(release, ns, 2, 5), 5, {"retries": 3, "gen": 5})
        wait_for(
            "the Deployment controller to keep two old ReplicaSets (v3, v4) and v5",
            lambda: (
                sorted(template_pin(rs) or 0 for rs in items(release, ns, "replicasets"))
                == [3, 4, 5]
            ),
            timeout=60,
        )
        # nothing refers to v1 and v2 any more, but pods were pinned to them lately: kept
        cms = {cm["metadata"]["name"]: cm for cm in items(release, ns, "configmaps")}
        assert {f"{CM}-v{n}" for n in range(1, 6)} <= set(cms), sorted(cms)
        pinned_at = {
            n: dt.datetime.fromisoformat(cms[f"{CM}-v{n}"]["metadata"]["annotations"][PINNED_AT])
            for n in (1, 2)
        }
        grace_end = max(pinned_at.values()) + dt.timedelta(seconds=PIN_GRACE + 1)
        left = (grace_end - dt.datetime.now(dt.UTC)).total_seconds()
        assert left > 0, f"the rollouts took longer than the grace ({left:.0f}s)"
        wait_for(
            f"the collection grace of v1 and v2 to pass ({left:.0f}s)",
            lambda: dt.datetime.now(dt.UTC) >= grace_end,
            timeout=PIN_GRACE + 30,
            every=1.0,
        )
        release.plane.kubectl(
            "annotate", "configs.etcdconfig.io", CONFIG, "-n", ns, "test.etcdconfig.io/reconcile=1"
        )

        def collected() -> set[str] | None:
            names = {cm["metadata"]["name"] for cm in items(release, ns, "configmaps")}
            versioned = {n for n in names if n.startswith(f"{CM}-v")}
            return versioned if versioned == {f"{CM}-v{n}" for n in (3, 4, 5)} else None

        wait_for("v1 and v2 collected, v3..v5 kept", collected, timeout=75)
        wait_for(
            "the watches to see the deletions",
            lambda: (
                sum(1 for e in watch.snapshot() if e[1] == "DELETED" and e[2] == "configmaps") >= 2
            ),
            timeout=30,
        )
    finally:
        watch.stop()

    # the whole history, in the API server's order: no versioned ConfigMap was deleted
    # while a ReplicaSet or pod referring to it existed; none was created twice
    events = watch.snapshot()
    alive: dict[str, dict[str, Any]] = {}  # uid -> object (ReplicaSets and pods)
    added: dict[str, set[str]] = {}  # ConfigMap -> uids it was created with
    deleted: dict[str, float] = {}  # ConfigMap -> when its deletion was seen
    order: dict[str, int] = {}  # "cm <name>" / "rs v<N>" -> resourceVersion of its deletion
    for rv, what, kind, obj, seen in events:
        meta = obj["metadata"]
        if kind == "configmaps":
            if not meta["name"].startswith(f"{CM}-v"):
                continue
            if what == "ADDED":
                added.setdefault(meta["name"], set()).add(meta["uid"])
            elif what == "DELETED":
                holders = [
                    f"{o['kind']}/{o['metadata']['name']}"
                    for o in alive.values()
                    if meta["name"] in refers_to(o)
                ]
                assert not holders, f"{meta['name']} deleted at {rv} while {holders} refer to it"
                deleted[meta["name"]] = seen
                order[f"cm {meta['name']}"] = rv
        elif what == "DELETED":
            alive.pop(meta["uid"], None)
            if kind == "replicasets":
                order[f"rs v{template_pin(obj) or 0}"] = rv  # v0: the unpinned first
        else:
            alive[meta["uid"]] = {**obj, "kind": "ReplicaSet" if kind == "replicasets" else "Pod"}
    assert {n: len(u) for n, u in added.items()} == {f"{CM}-v{n}": 1 for n in range(1, 6)}, added
    assert sorted(deleted) == [f"{CM}-v1", f"{CM}-v2"], deleted
    # the Deployment controller pruned v1's and v2's ReplicaSets (and the unpinned first
    # one), then the operator deleted their ConfigMaps
    assert sorted(k for k in order if k.startswith("rs ")) == ["rs v0", "rs v1", "rs v2"]
    for n in (1, 2):
        assert order[f"rs v{n}"] < order[f"cm {CM}-v{n}"], order
    for n in (1, 2):  # and not before the grace
        assert deleted[f"{CM}-v{n}"] >= pinned_at[n].timestamp() + PIN_GRACE, (
            n,
            deleted,
            pinned_at,
        )
    print(f"collection against the ReplicaSet history: test {time.monotonic() - start:.0f}s")


def test_with_the_operator_down_pods_start_unpinned_and_are_reported_after(
    release: Release, namespace: str
) -> None:
    ns = namespace
    start = time.monotonic()
    plane = release.plane
    apply(release, deployment(ns, app_image(release), 3))
    apply(
        release,
        config(ns, {"retries": 3}, keep=2, rollout={"debounceSeconds": 0, "bakeSeconds": 1}),
    )
    wait_rolled(release, ns, 1, "Succeeded")
    assert_pods_on(release, ns, wait_pods_on(release, ns, 3, 1), 1, {"retries": 3})

    operator = f"deployment/{release.name}"
    selector = f"app.kubernetes.io/instance={release.name},app.kubernetes.io/component=operator"
    plane.kubectl("scale", operator, "-n", release.namespace, "--replicas=0")
    try:
        wait_for(
            "no operator pod left",
            lambda: not items(release, release.namespace, "pods", "-l", selector),
            timeout=90,
        )
        # new pods of the pinned template: admitted without the webhook (failurePolicy
        # Ignore), on the plain ConfigMap
        plane.kubectl("rollout", "restart", "deployment/app", "-n", ns)
        plane.kubectl(
            "rollout", "status", "deployment/app", "-n", ns, "--timeout=120s", timeout=150
        )
        unpinned = wait_for(
            "3 new pods on the plain ConfigMap",
            lambda: (
                lambda ps: ps if len(ps) == 3 and all(pinned_to(p) is None for p in ps) else None
            )(app_pods(release, ns)),
            timeout=60,
        )
        for p in unpinned:
            assert p["metadata"]["annotations"][PIN] == "1"
            assert p["metadata"]["labels"]["etcdconfig.io/pinned"] == "true"
            assert p["spec"]["volumes"][0]["configMap"]["name"] == CM
            assert mounted(release, ns, p["metadata"]["name"]) == {"retries": 3}
    finally:
        plane.kubectl("scale", operator, "-n", release.namespace, "--replicas=2")
    release.settle()

    names = sorted(p["metadata"]["name"] for p in unpinned)

    def unpinned_gauge() -> list[str] | Miss:
        """The replicas whose etcdconfig_unpinned_pods{namespace, config} is 3."""
        seen = {p["metadata"]["name"]: unpinned_pods(scrape(p), ns) for p in release.ready_pods()}
        return [name for name, value in seen.items() if value == 3.0] or Miss(seen)

    reported = wait_for(
        f"etcdconfig_unpinned_pods of {ns}/{CONFIG} at 3", unpinned_gauge, timeout=90
    )
    expected = (
        f"3 pod(s) run on ConfigMap {CM}, not on their template's version (created while the "
        f"pod webhook did not answer?): {', '.join(names)}; they get it when they are "
        "replaced (kubectl rollout restart)"
    )

    def events() -> list[dict[str, Any]]:
        return items(release, ns, "events", "--field-selector", "reason=PodsNotPinned")

    found = wait_for("a PodsNotPinned Event", events, timeout=30)
    assert {
        (e["type"], e["involvedObject"]["kind"], e["involvedObject"]["name"], e["message"])
        for e in found
    } == {("Warning", "Config", CONFIG, expected)}, found

    # the remedy the Event names: a restart with the webhook up pins every pod
    plane.kubectl("rollout", "restart", "deployment/app", "-n", ns)
    plane.kubectl("rollout", "status", "deployment/app", "-n", ns, "--timeout=120s", timeout=150)
    assert_pods_on(release, ns, wait_pods_on(release, ns, 3, 1), 1, {"retries": 3})
    print(
        f"operator down: {names} unpinned, reported by {reported}; "
        f"test {time.monotonic() - start:.0f}s"
    )


def test_a_flux_style_apply_of_the_unchanged_manifests_changes_nothing(
    release: Release, namespace: str
) -> None:
    ns = namespace
    plane = release.plane
    dep = deployment(ns, app_image(release), 2)

    def cfg(retries: int) -> dict[str, Any]:
        return config(
            ns, {"retries": retries}, keep=2, rollout={"debounceSeconds": 0, "bakeSeconds": 1}
        )

    apply(release, dep)
    apply(release, cfg(3))
    wait_rolled(release, ns, 1, "Succeeded")
    apply(release, dep, cfg(5))
    wait_rolled(release, ns, 2, "Succeeded")
    wait_pods_on(release, ns, 2, 2)

    def state() -> dict[str, Any]:
        d = get(release, ns, "deployment", "app", "--show-managed-fields")
        c = get(release, ns, "configs.etcdconfig.io", CONFIG)
        # the Deployment controller writes status (and its managedFields entry) when it
        # likes: compare the owners of everything but status
        owners = [m for m in d["metadata"]["managedFields"] if m.get("subresource") != "status"]
        return {
            "deployment": (d["metadata"]["generation"], owners, d["spec"]),
            "config": (c["metadata"]["generation"], c["spec"], c["status"]["version"]),
            "replicasets": sorted(
                rs["metadata"]["uid"] for rs in items(release, ns, "replicasets")
            ),
        }

    before = state()
    template = before["deployment"][2]["template"]["metadata"]
    assert template["annotations"][PIN] == "2"
    assert template["annotations"][UID_MARKER] == config_uid(release, ns)
    assert template["labels"]["etcdconfig.io/pinned"] == "true"
    text = manifests(dep, cfg(5))
    flux = ("--server-side", f"--field-manager={FIELD_MANAGER}", "-f", "-")
    diff = plane.kubectl("diff", *flux, input=text, check=False)
    assert (diff.returncode, diff.stdout) == (0, ""), diff
    # no --force-conflicts: the manifests own no field the operator set
    applied = plane.kubectl("apply", *flux, input=text)
    assert applied.stdout.split("\n") == [
        "deployment.apps/app serverside-applied",
        "config.etcdconfig.io/app serverside-applied",
        "",
    ], applied.stdout
    assert state() == before
    diff = plane.kubectl("diff", *flux, input=text, check=False)
    assert (diff.returncode, diff.stdout) == (0, ""), diff
    managers = {
        m["manager"]
        for m in get(release, ns, "deployment", "app", "--show-managed-fields")["metadata"][
            "managedFields"
        ]
        if "f:template" in json.dumps(m.get("fieldsV1", {}))
        and f"f:{PIN}" in json.dumps(m.get("fieldsV1", {}))
    }
    assert managers == {"etcdconfig-rollout"}, managers
