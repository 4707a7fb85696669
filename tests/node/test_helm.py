"""The chart installed by Helm on a real node: the operator runs as pods from its own image.

Everything here is judged from the running system: pod conditions the kubelet reports
from the chart's real probes, the container's own ``/proc/self/status``, the webhook
answering through its Service, the store read back from the bundled etcd pod.
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import subprocess
import threading
import time
import urllib.request
from typing import TYPE_CHECKING, Any

import yaml
from tests.node.conftest import CHART, Release, audit_log, image_values, wait_for

from etcdconfig.devenv import build, images
from etcdconfig.devenv.node import NODE_NAME, Node

if TYPE_CHECKING:
    from collections.abc import Callable

    from etcdconfig.devenv.controlplane import ControlPlane


def config(namespace: str, name: str, data: dict[str, Any]) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "etcdconfig.io/v1alpha1",
            "kind": "Config",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"data": data},
        }
    )


def status_of(plane: ControlPlane, namespace: str, name: str) -> dict[str, Any]:
    out = plane.kubectl("get", "config", name, "-n", namespace, "-o", "json", check=False)
    return json.loads(out.stdout).get("status", {}) if out.returncode == 0 else {}


def recorded(plane: ControlPlane, namespace: str, name: str, generation: int) -> dict[str, Any]:
    """The status once the operator has recorded ``generation`` (else {})."""
    status = status_of(plane, namespace, name)
    return (
        status
        if status.get("observedGeneration", 0) >= generation and status.get("version")
        else {}
    )


def generation(plane: ControlPlane, namespace: str, name: str) -> int:
    out = plane.kubectl("get", "config", name, "-n", namespace, "-o", "json")
    return int(json.loads(out.stdout)["metadata"]["generation"])


def test_operator_replicas_are_ready_through_their_real_probes(release: Release) -> None:
    pods = release.ready_pods()
    assert len(pods) == 2, [p["metadata"]["name"] for p in release.pods()]
    for pod in pods:
        (container,) = pod["status"]["containerStatuses"]
        assert container["ready"] is True
        assert container["restartCount"] == 0
        assert container["image"].startswith("etcdconfig.local/etcdconfig:")
        spec = next(c for c in pod["spec"]["containers"] if c["name"] == container["name"])
        assert spec["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert spec["livenessProbe"]["httpGet"]["path"] == "/healthz"
    (etcd,) = release.ready_pods("etcd")
    assert etcd["metadata"]["name"] == f"{release.name}-etcd-0"


def test_a_config_is_recorded_by_an_operator_pod_and_kept_in_the_bundled_etcd(
    release: Release, namespace: str
) -> None:
    plane = release.plane
    plane.kubectl("apply", "-f", "-", input=config(namespace, "app", {"greeting": "hello"}))
    status = wait_for("version 1 recorded", lambda: recorded(plane, namespace, "app", 1))
    assert status["version"] == 1
    history = release.cli("history", f"{namespace}/app")
    assert [v["version"] for v in history["versions"]] == [1]
    (version,) = history["versions"]
    assert version["recordedBy"] in {p["metadata"]["name"] for p in release.ready_pods()}
    shown = release.cli("show", f"{namespace}/app")
    assert shown["data"] == {"greeting": "hello"}
    assert release.cli("verify", f"{namespace}/app") == {
        "checked": 1,
        "intact": True,
        "problems": [],
    }


def test_the_webhook_refuses_an_invalid_config_through_its_service(
    release: Release, namespace: str
) -> None:
    bad = yaml.safe_dump(
        {
            "apiVersion": "etcdconfig.io/v1alpha1",
            "kind": "Config",
            "metadata": {"name": "bad", "namespace": namespace},
            "spec": {
                "data": {"port": "eighty"},
                "schema": {"type": "object", "properties": {"port": {"type": "integer"}}},
            },
        }
    )
    out = release.plane.kubectl("apply", "-f", "-", input=bad, check=False)
    assert out.returncode != 0
    assert "admission webhook" in out.stderr and "denied the request" in out.stderr, out.stderr
    assert "port" in out.stderr
    missing = release.plane.kubectl("get", "config", "bad", "-n", namespace, check=False)
    assert "NotFound" in missing.stderr


def test_the_container_runs_unprivileged_as_seen_from_inside(release: Release) -> None:
    pod = release.ready_pods()[0]["metadata"]["name"]
    status = release.plane.kubectl(
        "exec", "-n", release.namespace, pod, "--", "cat", "/proc/self/status"
    ).stdout
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    fields = {k: v.split() for k, v in fields.items()}
    assert fields["Uid"] == ["10001"] * 4, fields["Uid"]
    assert fields["Gid"] == ["10001"] * 4, fields["Gid"]
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(fields[cap][0], 16) == 0, (cap, fields[cap])
    assert fields["NoNewPrivs"] == ["1"]
    assert fields["Seccomp"] == ["2"]  # 2 = filter mode: the RuntimeDefault profile
    write = release.plane.kubectl(
        "exec", "-n", release.namespace, pod, "--", "touch", "/etcdconfig-probe", check=False
    )
    assert write.returncode != 0
    assert "Read-only file system" in write.stderr, write.stderr


def test_metrics_are_scraped_through_the_service(release: Release) -> None:
    out = release.plane.kubectl(
        "get", "service", f"{release.name}-metrics", "-n", release.namespace, "-o", "json"
    )
    metrics = json.loads(out.stdout)
    (port,) = (p["port"] for p in metrics["spec"]["ports"] if p["name"] == "http-metrics")
    url = f"http://{metrics['spec']['clusterIP']}:{port}/metrics"

    def scrape() -> str:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return str(resp.read().decode())
        except OSError:
            return ""

    body = wait_for(f"a scrape of {url}", scrape)
    assert "etcdconfig_members 2.0" in body.splitlines()
    assert "etcdconfig_background_task_up" in body


def _owner(release: Release, namespace: str, name: str) -> str:
    """The operator pod that records ``namespace/name`` (its status says who recorded it)."""
    history = release.cli("history", f"{namespace}/{name}")
    newest = max(history["versions"], key=lambda v: v["version"])
    return str(newest["recordedBy"])


def test_sigterm_hands_the_configs_over_at_once(release: Release, namespace: str) -> None:
    plane = release.plane
    plane.kubectl("apply", "-f", "-", input=config(namespace, "handover", {"n": 0}))
    wait_for("version 1", lambda: recorded(plane, namespace, "handover", 1))
    owner = _owner(release, namespace, "handover")
    members_before = {m["replica"] for m in release.cli("members")["members"]}
    assert owner in members_before, (owner, members_before)
    start = time.monotonic()
    plane.kubectl("delete", "pod", "-n", release.namespace, owner, "--wait=false")
    wait_for(
        f"{owner} to leave membership",
        lambda: owner not in {m["replica"] for m in release.cli("members")["members"]},
        timeout=10,
    )
    left = time.monotonic() - start
    plane.kubectl("apply", "-f", "-", input=config(namespace, "handover", {"n": 1}))
    gen = generation(plane, namespace, "handover")
    wait_for("version 2 by another replica", lambda: recorded(plane, namespace, "handover", gen))
    took_over = time.monotonic() - start
    assert _owner(release, namespace, "handover") != owner
    lock_ttl = 10.0  # the chart's operator.lockTTL
    assert left < lock_ttl / 2, f"left membership after {left:.2f}s"
    assert took_over < lock_ttl, f"another replica recorded after {took_over:.2f}s"
    release.settle()
    print(f"SIGTERM: left membership in {left:.2f}s, next version by another in {took_over:.2f}s")


def _versions(release: Release, namespace: str, name: str) -> list[dict[str, Any]]:
    history = release.cli("history", f"{namespace}/{name}")
    return sorted(history["versions"], key=lambda v: v["version"])


def _stream(
    release: Release, namespace: str, name: str, updates: int, midway: Callable[[], None]
) -> None:
    """Apply ``seq`` 1..updates one after another (each acknowledged by the API server),
    calling ``midway`` after the first third; then wait until the last is recorded."""
    plane = release.plane
    for seq in range(1, updates + 1):
        plane.kubectl("apply", "-f", "-", input=config(namespace, name, {"seq": seq}))
        if seq == updates // 3:
            midway()
    final = generation(plane, namespace, name)
    wait_for(
        f"generation {final} recorded",
        lambda: recorded(plane, namespace, name, final),
        timeout=120,
    )


def _assert_exact_history(release: Release, namespace: str, name: str, updates: int) -> None:
    """Nothing lost, duplicated or stale: versions 1..k, one per generation, their data
    strictly increasing (coalesced updates are skipped, never reordered), the newest
    the last update; the store verifies; no lock key is left behind."""
    versions = _versions(release, namespace, name)
    assert [v["version"] for v in versions] == list(range(1, len(versions) + 1))
    generations = [v["generation"] for v in versions]
    assert generations == sorted(set(generations)), generations
    seqs = [
        release.cli("show", f"{namespace}/{name}", "--version", str(v["version"]))["data"]["seq"]
        for v in versions
    ]
    assert seqs == sorted(set(seqs)), seqs
    assert seqs[0] == 0 and seqs[-1] == updates, seqs
    assert release.cli("verify", f"{namespace}/{name}")["intact"] is True
    wait_for(
        "no lock key left",
        lambda: not release.cli("locks").get("locks"),
        timeout=30,
    )


def test_deleting_the_owning_pod_during_a_stream_loses_and_duplicates_nothing(
    release: Release, namespace: str
) -> None:
    plane = release.plane
    plane.kubectl("apply", "-f", "-", input=config(namespace, "stream", {"seq": 0}))
    wait_for("version 1", lambda: recorded(plane, namespace, "stream", 1))
    owner = _owner(release, namespace, "stream")

    def kill_owner() -> None:
        plane.kubectl("delete", "pod", "-n", release.namespace, owner, "--wait=false")

    _stream(release, namespace, "stream", 30, kill_owner)
    _assert_exact_history(release, namespace, "stream", 30)
    recorders = {v["recordedBy"] for v in _versions(release, namespace, "stream")}
    assert owner in recorders and len(recorders) >= 2, recorders
    release.settle()


def test_helm_upgrade_to_a_new_image_during_a_stream_loses_and_duplicates_nothing(
    release: Release, namespace: str, built_images: dict[str, images.Image]
) -> None:
    plane = release.plane
    new = images.build_operator_image(label="upgrade-test")
    assert new.ref != built_images["operator"].ref
    images.import_images(
        build.ensure_containerd()["ctr"], str(Node(plane.state_dir).containerd_socket), [new]
    )
    plane.kubectl("apply", "-f", "-", input=config(namespace, "upgrade", {"seq": 0}))
    wait_for("version 1", lambda: recorded(plane, namespace, "upgrade", 1))
    upgrade: list[threading.Thread] = []

    def start_upgrade() -> None:
        tag = new.ref.rpartition(":")[2]
        thread = threading.Thread(
            target=lambda: plane.helm(
                "upgrade",
                release.name,
                str(CHART),
                "-n",
                release.namespace,
                "--reuse-values",
                f"--set-string=image.tag={tag}",
                "--wait",
                "--timeout=240s",
                timeout=300,
            )
        )
        thread.start()
        upgrade.append(thread)

    _stream(release, namespace, "upgrade", 30, start_upgrade)
    upgrade[0].join(timeout=300)
    release.settle()
    assert {p["spec"]["containers"][0]["image"] for p in release.ready_pods()} == {new.ref}
    _assert_exact_history(release, namespace, "upgrade", 30)


def test_an_eviction_respects_the_pod_disruption_budget(release: Release, namespace: str) -> None:
    plane = release.plane
    pdb = json.loads(
        plane.kubectl("get", "pdb", release.name, "-n", release.namespace, "-o", "json").stdout
    )
    assert pdb["spec"]["maxUnavailable"] == 1
    plane.kubectl("cordon", NODE_NAME)
    try:
        drain = plane.kubectl(
            "drain",
            NODE_NAME,
            "--pod-selector=app.kubernetes.io/component=operator",
            "--delete-emptydir-data",
            "--timeout=15s",
            check=False,
            timeout=60,
        )
        # one replica may go; the other would break the budget, and its replacement
        # cannot schedule on the cordoned (only) node: the drain must give up on it
        assert drain.returncode != 0
        assert "disruption budget" in drain.stderr, drain.stderr
        running = [p for p in release.pods() if p["status"].get("phase") == "Running"]
        assert len(running) == 1, [p["metadata"]["name"] for p in release.pods()]
        # the remaining replica keeps recording
        plane.kubectl("apply", "-f", "-", input=config(namespace, "during-drain", {"a": 1}))
        wait_for("recorded during the drain", lambda: recorded(plane, namespace, "during-drain", 1))
    finally:
        plane.kubectl("uncordon", NODE_NAME)
    release.settle()


def test_a_missing_permission_is_reported_with_the_exact_verb(
    release: Release, namespace: str
) -> None:
    """RBAC proved by the running pod: take one verb the chart grants away, and the
    operator says exactly which; give it back, and it recovers on its own."""
    plane = release.plane
    role = json.loads(plane.kubectl("get", "clusterrole", release.name, "-o", "json").stdout)
    original = json.loads(json.dumps(role))
    for rule in role["rules"]:
        if rule.get("resources") == ["configmaps"]:
            rule["verbs"] = [v for v in rule["verbs"] if v != "create"]
    plane.kubectl("replace", "-f", "-", input=json.dumps(role))
    published = {
        "apiVersion": "etcdconfig.io/v1alpha1",
        "kind": "Config",
        "metadata": {"name": "published", "namespace": namespace},
        "spec": {"data": {"a": 1}, "publish": {"configMap": {"name": "published-cm"}}},
    }
    try:
        plane.kubectl("apply", "-f", "-", input=json.dumps(published))
        expected = (
            f"create ConfigMap {namespace}/published-cm: forbidden by RBAC: user "
            f'"system:serviceaccount:{release.namespace}:{release.name}" may not create '
            f'configmaps in namespace "{namespace}"'
        )

        def reported() -> str | None:
            ready = [
                c
                for c in status_of(plane, namespace, "published").get("conditions", [])
                if c["type"] == "Published"
            ]
            return ready[0]["message"] if ready and expected in ready[0]["message"] else None

        message = wait_for("the permission error in status", reported, timeout=90)
        assert expected in message, message
    finally:
        for key in ("resourceVersion", "uid", "creationTimestamp", "managedFields"):
            original["metadata"].pop(key, None)
        plane.kubectl("replace", "-f", "-", input=json.dumps(original))

    def published_cm() -> dict[str, Any] | None:
        out = plane.kubectl(
            "get", "configmap", "published-cm", "-n", namespace, "-o", "json", check=False
        )
        return json.loads(out.stdout) if out.returncode == 0 else None

    cm = wait_for("the ConfigMap once the verb is back", published_cm, timeout=90)
    assert cm["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "etcdconfig"
    # a change of data patches the ConfigMap: the last verb of the chart's configmaps rule
    published["spec"]["data"] = {"a": 2}
    plane.kubectl("apply", "-f", "-", input=json.dumps(published))
    wait_for(
        "version 2 in the ConfigMap",
        lambda: (
            ((published_cm() or {}).get("metadata", {}).get("annotations") or {}).get(
                "etcdconfig.io/version"
            )
            == "2"
        ),
        timeout=90,
    )


def test_versioned_configmaps_and_rollouts_work_with_the_charts_permissions(
    release: Release, namespace: str, built_images: dict[str, images.Image]
) -> None:
    """The chart's role lets the operator pods collect versioned ConfigMaps (list them
    and every kind that may refer to one, delete) and roll a Deployment, a StatefulSet
    and a DaemonSet (patch) — each scaled so that no pod runs: the permissions are what
    is proven here (tests/node/test_rollouts_node.py runs pods)."""
    plane = release.plane
    image = built_images["operator"].ref

    def workload(kind: str) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "selector": {"matchLabels": {"app": kind.lower()}},
            "template": {
                "metadata": {"labels": {"app": kind.lower()}},
                "spec": {
                    "nodeSelector": {"etcdconfig.io/no-such-node": "true"},
                    "containers": [{"name": "c", "image": image, "imagePullPolicy": "Never"}],
                },
            },
        }
        if kind != "DaemonSet":
            spec["replicas"] = 0
        if kind == "StatefulSet":
            spec["serviceName"] = "none"
        return {
            "apiVersion": "apps/v1",
            "kind": kind,
            "metadata": {"name": kind.lower(), "namespace": namespace,
                         "annotations": {"etcdconfig.io/configs": "flags"}},
            "spec": spec,
        }  # fmt: skip

    def flags(n: int, paused: bool) -> str:
        return json.dumps({
            "apiVersion": "etcdconfig.io/v1alpha1", "kind": "Config",
            "metadata": {"name": "flags", "namespace": namespace},
            "spec": {
                "data": {"n": n},
                "publish": {"configMap": {"name": "flags", "versioned": True, "keep": 1}},
                "rollout": {"paused": paused, "debounceSeconds": 0, "bakeSeconds": 0},
            },
        })  # fmt: skip

    for kind in ("Deployment", "StatefulSet", "DaemonSet"):
        plane.kubectl("apply", "-f", "-", input=json.dumps(workload(kind)))
    # paused: nothing pins a template yet, so the collection deletes v1 and v2
    for n in (1, 2, 3):
        plane.kubectl("apply", "-f", "-", input=flags(n, paused=True))
        wait_for(f"version {n}", lambda n=n: recorded(plane, namespace, "flags", n))

    def versioned() -> set[str]:
        out = plane.kubectl(
            "get", "configmaps", "-n", namespace, "-l", "etcdconfig.io/version", "-o", "json"
        )
        return {cm["metadata"]["name"] for cm in json.loads(out.stdout)["items"]}

    wait_for("only flags-v3 left", lambda: versioned() == {"flags-v3"})
    plane.kubectl("apply", "-f", "-", input=flags(4, paused=False))

    def pinned() -> bool:
        for kind in ("deployment", "statefulset", "daemonset"):
            out = plane.kubectl("get", kind, kind, "-n", namespace, "-o", "json")
            meta = json.loads(out.stdout)["spec"]["template"]["metadata"]
            if (meta.get("annotations") or {}).get("etcdconfig.io/version.flags") != "4":
                return False
        return True

    wait_for("every workload pinned to version 4", pinned, timeout=60)
    state = wait_for(
        "the rollout of version 4 succeeded",
        lambda: (
            (status_of(plane, namespace, "flags").get("rollout") or {}).get("state") == "Succeeded"
        ),
        timeout=120,
    )
    assert state


# [start, end] of the times the release's RBAC was gone on purpose (an uninstall until
# the install again), as the audit log writes its timestamps: a replica still shutting
# down may be refused then, and that says nothing of what the chart grants
RBAC_GONE: list[tuple[str, str]] = []


def _audit_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_helm_uninstall_keeps_the_crd_the_configs_and_their_history(
    release: Release, namespace: str, built_images: dict[str, images.Image]
) -> None:
    plane = release.plane
    plane.kubectl("apply", "-f", "-", input=config(namespace, "kept", {"v": 1}))
    wait_for("version 1", lambda: recorded(plane, namespace, "kept", 1))
    gone = _audit_now()
    plane.helm("uninstall", release.name, "-n", release.namespace, "--wait", timeout=180)
    assert plane.kubectl("get", "crd", "configs.etcdconfig.io", check=False).returncode == 0
    kept = json.loads(plane.kubectl("get", "config", "kept", "-n", namespace, "-o", "json").stdout)
    assert kept["spec"]["data"] == {"v": 1}
    claims = json.loads(plane.kubectl("get", "pvc", "-n", release.namespace, "-o", "json").stdout)[
        "items"
    ]
    assert [c["metadata"]["name"] for c in claims] == [f"data-{release.name}-etcd-0"]
    # the same release installed again finds the history where it was
    plane.helm(
        "install",
        release.name,
        str(CHART),
        "-n",
        release.namespace,
        *image_values(built_images),
        "--set=etcd.bundled.persistence.enabled=true",
        "--wait",
        "--timeout=240s",
        timeout=300,
    )
    RBAC_GONE.append((gone, _audit_now()))
    release.settle()
    assert [v["version"] for v in _versions(release, namespace, "kept")] == [1]
    plane.kubectl("apply", "-f", "-", input=config(namespace, "kept", {"v": 2}))
    wait_for("version 2", lambda: recorded(plane, namespace, "kept", 2), timeout=90)
    assert [v["version"] for v in _versions(release, namespace, "kept")] == [1, 2]


def _granted(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def test_the_chart_grants_nothing_the_operator_does_not_use(release: Release) -> None:
    """Every (group, resource, verb) of the chart's ClusterRole appears, allowed, in the
    API server's audit log of the operator's ServiceAccount over this module's tests —
    and the operator was never denied anything but the verb a test took away (or while
    the uninstall test had removed the release: a replica still shutting down then may
    be refused whatever it does)."""
    plane = release.plane
    role = json.loads(plane.kubectl("get", "clusterrole", release.name, "-o", "json").stdout)
    used: set[tuple[str, str, str]] = set()
    denied: set[tuple[str, str, str]] = set()
    for event in audit_log(plane):
        ref = event.get("objectRef") or {}
        resource = ref.get("resource", "")
        if ref.get("subresource"):
            resource = f"{resource}/{ref['subresource']}"
        key = (ref.get("apiGroup", ""), resource, event["verb"])
        code = (event.get("responseStatus") or {}).get("code", 0)
        at = str(event.get("stageTimestamp", ""))
        if code == 403 and any(start <= at <= end for start, end in RBAC_GONE):
            continue
        (denied if code == 403 else used).add(key)
    assert _granted(role) - used == set()
    assert denied <= {("", "configmaps", "create")}, denied


def test_nothing_leaves_the_machine(release: Release, namespace: str) -> None:
    """Pods have no route out, their DNS answers cluster.local only, and an image pull
    goes to the mirror that points nowhere — never to a registry."""
    plane = release.plane
    pod = release.ready_pods()[0]["metadata"]["name"]
    probe = (
        "import socket\n"
        "s = socket.socket(); s.settimeout(2)\n"
        "try:\n"
        "    s.connect(('192.0.2.1', 80))\n"  # TEST-NET-1: never routed anywhere
        "except OSError as e:\n"
        "    print('connect', e.errno)\n"
        "for name in ('kubernetes.default.svc.cluster.local', 'example.com'):\n"
        "    try:\n"
        "        print(name, socket.gethostbyname(name))\n"
        "    except OSError as e:\n"
        "        print(name, 'unresolved')\n"
    )
    out = plane.kubectl("exec", "-n", release.namespace, pod, "--", "python3", "-c", probe)
    assert out.stdout.splitlines() == [
        f"connect {errno.ENETUNREACH}",
        "kubernetes.default.svc.cluster.local 198.18.16.1",
        "example.com unresolved",
    ], out.stdout
    puller = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "puller", "namespace": namespace},
        "spec": {
            "containers": [
                {"name": "c", "image": "registry.example/nothing:1", "imagePullPolicy": "Always"}
            ]
        },
    }
    plane.kubectl("apply", "-f", "-", input=json.dumps(puller))

    def pull_failure() -> str | None:
        events = json.loads(
            plane.kubectl(
                "get",
                "events",
                "-n",
                namespace,
                "--field-selector=involvedObject.name=puller",
                "-o",
                "json",
            ).stdout
        )["items"]
        failed = [e["message"] for e in events if e["reason"] == "Failed"]
        return failed[0] if failed else None

    message = wait_for("the pull to fail", pull_failure, timeout=60)
    assert "127.0.0.1:1" in message, message
    counters = subprocess.run(
        ["iptables", "-t", "mangle", "-L", "FORWARD", "-v", "-x", "-n"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    # (the first rule counts ClusterIP packets kube-proxy had not rewritten yet: they die
    # on the node's own link; the other two would have left the machine)
    drops = [line.split() for line in counters.splitlines() if "/* etcdconfig-dev */" in line]
    assert len(drops) == 2 and all(d[0] == "0" for d in drops), counters
