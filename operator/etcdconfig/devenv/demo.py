"""``make demo``: the user's path, on a real single-node cluster on this machine.

    python -m etcdconfig.devenv.demo up     # everything, then status, history, diff, verify
    python -m etcdconfig.devenv.demo down   # stop the cluster: pods, processes, host changes

``up``, each step timed:

1. **images**: the operator (the repository's Dockerfile, this tree), etcd and pause,
   built offline and cached by their inputs (:func:`etcdconfig.devenv.images.ensure_images`);
   only the first run, or an edit of the operator's sources, builds anything.
2. **the cluster**: ``ControlPlane(.dev, node=True)``: etcd, kube-apiserver on the node
   IP 198.18.0.1, controller-manager, scheduler, containerd, the kubelet, kube-proxy and
   CoreDNS (:mod:`etcdconfig.devenv.controlplane`; needs root). A running one is reused.
3. **helm upgrade --install** of ``charts/etcdconfig`` into ``etcdconfig-system`` with the
   chart's defaults (2 operator replicas, the fail-closed validating webhook) and the
   local images (``pullPolicy: Never``: imported into the node's containerd, never
   pulled), the bundled etcd holding the store.
4. the sample Configs of ``examples/``, a recorded change (payments version 2, with a
   change-cause), the webhook refusing invalid data at ``--dry-run=server``, then
   ``kubectl get pods,cfg -A`` and the store's history, diff and verify through the
   ``etcdconfig`` CLI, which reaches the bundled etcd at its Service's ClusterIP (stable
   for the release's life; from the host through kube-proxy's rules).

The bundled etcd keeps its data on a PersistentVolume, as the chart's default
(``etcd.bundled.persistence.enabled``) has it, rather than an emptyDir: what users
install is what the demo shows, and the history survives what an emptyDir would lose
with its pod (``kubectl delete pod etcdconfig-etcd-0``, a reschedule, ``helm uninstall``
and install again). A node has no storage provisioner, so the demo makes the volume:
a hostPath directory in ``.dev/node/volumes/etcd-0``, reserved for the chart's claim.
It belongs to one cluster: each new cluster (the Kubernetes objects are new too) starts
with an empty one, and ``down`` removes it.

Running ``up`` again is safe and fast: the running cluster and release are reused
(``helm upgrade --install`` with the current image tag: a rollout only if the operator's
sources changed), a sample Config that already exists is left as it is (the user may have
changed it), and a Config that does not become Ready ends the run with one line saying
which and why, not a traceback.

``down`` stops the node (every pod through the CRI, every process, every host change
undone: :meth:`ControlPlane.stop`), which takes the release with it; with nothing
running it says so.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from etcdconfig.devenv import build, images, network
from etcdconfig.devenv.build import BuildError
from etcdconfig.devenv.cli import DEFAULT_DIR
from etcdconfig.devenv.controlplane import ControlPlane, ControlPlaneError
from etcdconfig.devenv.node import NODE_NAME, Node

if TYPE_CHECKING:
    from collections.abc import Callable

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "examples"
CHART = ROOT / "charts" / "etcdconfig"
RELEASE = "etcdconfig"
NAMESPACE = "etcdconfig-system"
ETCD_SERVICE = f"{RELEASE}-etcd"  # the chart's client Service of the bundled etcd
METRICS_SERVICE = f"{RELEASE}-metrics"
CLAIM = f"data-{RELEASE}-etcd-0"  # the claim of the bundled etcd's only member
VOLUME = "etcdconfig-demo-etcd-0"
VOLUME_SIZE = "1Gi"  # the chart's etcd.bundled.persistence.size
ETCD_UID = 10001  # the etcd image's user: a hostPath volume gets no fsGroup
PREFIX = "/etcdconfig"  # the chart's etcd.prefix
HISTORY_APISERVICE = "v1alpha1.history.etcdconfig.io"  # the chart's history API
START_TIMEOUT = 300
HELM_TIMEOUT = 240
READY_TIMEOUT = 60
ROOT_NEEDED = (
    "`make demo` runs a real node (containerd, the kubelet, a network device, iptables "
    "rules, cgroups): run it as root (sudo make demo)"
)


class DemoError(Exception):
    """A step of the demo failed; the message says which and what to do."""


def _say(msg: str) -> None:
    print(f"\n==> {msg}", flush=True)


def _one_line(text: str, limit: int = 500) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _wait(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)  # poll interval of a deadline-bounded wait
    raise DemoError(f"timed out after {timeout:.0f}s waiting for {what}")


def _down_hint(state: Path) -> str:
    if state.resolve() == DEFAULT_DIR.resolve():
        return "make demo-down"
    return f".venv/bin/python -m etcdconfig.devenv.demo --dir {state} down"


# --- up -----------------------------------------------------------------------------------


def up(state: Path) -> int:
    if os.geteuid() != 0:
        raise DemoError(ROOT_NEEDED)
    begin = time.monotonic()
    plane = ControlPlane(state)
    running = plane.running() and plane.ready()
    if running and not plane.node:
        raise DemoError(
            f"the control plane in {state} runs without a node (an earlier demo, or "
            f"`up --no-node`): stop it ({_down_hint(state)}), then run the demo again"
        )
    built = _images()
    _cluster(plane, running)
    _import_operator_image(plane, built["operator"])
    _etcd_volume(plane)
    _install(plane, built)
    etcd_endpoint = _service_address(plane, ETCD_SERVICE, "client")
    metrics = _service_address(plane, METRICS_SERVICE, "http-metrics")
    _wait(
        lambda: _reachable(etcd_endpoint) and _reachable(metrics),
        60,
        f"the Services {etcd_endpoint} and {metrics} to answer through kube-proxy",
    )

    _say("applying the sample Configs from examples/ (existing ones are left as they are)")
    created: list[tuple[str, str]] = []
    for path, doc in _samples():
        ns = doc["metadata"].get("namespace", "default")
        name = doc["metadata"]["name"]
        if _exists(plane, ns, name):
            print(
                f"config.etcdconfig.io/{name} exists in {ns}: left as it is "
                f"({path.name} not applied)"
            )
            continue
        print(plane.kubectl("apply", "-f", "-", input=json.dumps(doc)).stdout.strip())
        created.append((ns, name))
    for ns, name in created:
        _wait_ready(plane, ns, name)

    if ("default", "payments") in created:
        _say("changing payments (a new version is recorded)")
        plane.kubectl(
            "annotate",
            "configs.etcdconfig.io",
            "payments",
            "-n",
            "default",
            "--overwrite",
            "etcdconfig.io/change-cause=raise retries for the holiday peak",
        )
        print(
            plane.kubectl(
                "patch",
                "configs.etcdconfig.io",
                "payments",
                "-n",
                "default",
                "--type=merge",
                "-p",
                json.dumps({"spec": {"data": {"retries": 5}}}),
            ).stdout.strip()
        )
        _wait(lambda: _observed(plane, "default", "payments"), 60, "payments version 2")

    if _exists(plane, "default", "payments"):
        _say('kubectl patch cfg payments --dry-run=server -p \'{"spec":{"data":{"retries":99}}}\'')
        out = plane.kubectl(
            "patch",
            "configs.etcdconfig.io",
            "payments",
            "-n",
            "default",
            "--type=merge",
            "--dry-run=server",
            "-p",
            json.dumps({"spec": {"data": {"retries": 99}}}),
            check=False,
        )
        print((out.stderr or out.stdout).strip())

    _say("kubectl get pods,cfg -A")
    print(plane.kubectl("get", "pods,cfg", "-A").stdout.rstrip())
    _wait_history_api(plane)
    _say("kubectl get configversions   # the history API: a kubeconfig, RBAC per namespace")
    print(plane.kubectl("get", "configversions").stdout.rstrip())
    # users: the kubeconfig alone (the history API); admins: etcd (verify)
    user_env = {k: v for k, v in plane.client_env().items() if not k.startswith("ETCDCONFIG_")}
    admin_env = {
        **user_env,
        "ETCDCONFIG_ETCD_ENDPOINTS": etcd_endpoint,
        "ETCDCONFIG_ETCD_PREFIX": PREFIX,
    }
    for ref in ("payments", "feature-flags"):
        _say(f"kubectl etcdconfig history {ref}")
        _cli(user_env, "history", ref)
    _say("kubectl etcdconfig diff payments 1 2")
    _cli(user_env, "diff", "payments", "1", "2")
    _say("etcdconfig verify --all   # an admin tool: straight to etcd")
    _cli(admin_env, "verify", "--all")
    print(f"\ndemo ready in {time.monotonic() - begin:.1f}s")
    print(try_it_yourself(state, etcd_endpoint, f"http://{metrics}/metrics"))
    return 0


def _wait_history_api(plane: ControlPlane, timeout: float = 60.0) -> None:
    """Until the API server reports the chart's APIService Available (it checks the
    operator pods behind it every few seconds after they became Ready)."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        out = plane.kubectl("get", "apiservice", HISTORY_APISERVICE, "-o", "json", check=False)
        if out.returncode == 0:
            conditions = json.loads(out.stdout).get("status", {}).get("conditions", [])
            available: dict[str, Any] = next(
                (c for c in conditions if c["type"] == "Available"), {}
            )
            if available.get("status") == "True":
                return
            last = available.get("message", "")
        time.sleep(0.5)  # poll interval of a deadline-bounded wait
    raise DemoError(f"the history API did not become available in {timeout:g}s: {last}")


def try_it_yourself(state: Path, etcd_endpoint: str, metrics_url: str) -> str:
    """The closing lines of the demo (the README shows them as printed)."""
    where = "" if state.resolve() == DEFAULT_DIR.resolve() else f" --dir {state}"
    return (
        "\nTry it yourself:\n"
        f'  eval "$(.venv/bin/python -m etcdconfig.devenv{where} env)"\n'
        "  kubectl get pods,cfg -A               # the operator's pods, the Configs\n"
        "  kubectl get cfg -o wide               # version, readiness and why, generations\n"
        "  kubectl edit cfg payments             # change data, watch a new version appear\n"
        "  kubectl get configversions            # every version, through the Kubernetes API\n"
        "  kubectl etcdconfig history payments   # the plugin: a kubeconfig is all it needs\n"
        "  kubectl etcdconfig rollback payments --to 1\n"
        "  # admins only, straight to the store: etcdconfig verify --all, locks, members\n"
        f"  export ETCDCONFIG_ETCD_ENDPOINTS={etcd_endpoint} ETCDCONFIG_ETCD_PREFIX={PREFIX}\n"
        f"  operator metrics: {metrics_url}\n"
        f"  {_down_hint(state):<37} # stop everything"
    )


def _images() -> dict[str, images.Image]:
    _say("images: the operator (Dockerfile, this tree), etcd, pause; built offline, cached")
    started = time.monotonic()
    try:
        built = images.ensure_images()
    except images.ImageError as exc:
        raise DemoError(_one_line(str(exc))) from exc
    for name, image in built.items():
        how = "cached" if image.cached else f"built in {image.build_seconds:.0f}s"
        print(f"{name:<9} {image.ref:<44} {how}")
    print(f"images ready in {time.monotonic() - started:.1f}s")
    return built


def _cluster(plane: ControlPlane, running: bool) -> None:
    """Reuse the running cluster, or start one: control plane and node."""
    if running:
        _say(f"reusing the running cluster in {plane.state_dir} (API server {plane.server})")
        return
    _say("starting the cluster: control plane + node (containerd, kubelet, kube-proxy, CoreDNS)")
    started = time.monotonic()
    plane.node = True
    plane.start(timeout=START_TIMEOUT)
    print(
        f"cluster ready in {time.monotonic() - started:.1f}s: API server {plane.server}, "
        f"node {NODE_NAME} Ready"
    )


def _import_operator_image(plane: ControlPlane, image: images.Image) -> None:
    """The cluster imported the images of the tree it started with; an edit since makes
    a new operator tag, imported here (a rollout follows from the upgrade)."""
    node = Node(plane.state_dir)
    if node.crictl("inspecti", image.ref).returncode == 0:
        return
    started = time.monotonic()
    try:
        images.import_images(build.ensure_containerd()["ctr"], str(node.containerd_socket), [image])
    except images.ImageError as exc:
        raise DemoError(_one_line(str(exc))) from exc
    print(f"imported {image.ref} into the node in {time.monotonic() - started:.1f}s")


def volume_dir(state: Path) -> Path:
    return state.resolve() / "node" / "volumes" / "etcd-0"


def etcd_volume(path: Path) -> dict[str, Any]:
    """The bundled etcd's PersistentVolume: a hostPath directory, reserved for its claim."""
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": VOLUME},
        "spec": {
            "capacity": {"storage": VOLUME_SIZE},
            "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain",
            "claimRef": {"namespace": NAMESPACE, "name": CLAIM},
            "hostPath": {"path": str(path), "type": "Directory"},
        },
    }


def _etcd_volume(plane: ControlPlane) -> None:
    """Make the volume unless this cluster has it; data from an earlier cluster (whose
    Configs are gone) is removed first."""
    got = plane.kubectl("get", "pv", VOLUME, "--ignore-not-found", "-o", "name")
    if got.stdout.strip():
        return
    path = volume_dir(plane.state_dir)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    os.chown(path, ETCD_UID, ETCD_UID)
    plane.kubectl("apply", "-f", "-", input=json.dumps(etcd_volume(path)))


def helm_args(operator_ref: str, etcd_ref: str) -> list[str]:
    """``helm upgrade --install`` of the chart with its defaults, the local images and the
    bundled etcd on a PersistentVolume."""
    repo, _, tag = operator_ref.rpartition(":")
    etcd_repo, _, etcd_tag = etcd_ref.rpartition(":")
    return [
        "upgrade",
        "--install",
        RELEASE,
        str(CHART),
        "--namespace",
        NAMESPACE,
        "--create-namespace",
        f"--set=image.repository={repo}",
        f"--set-string=image.tag={tag}",  # a tag of digits alone is still a string
        "--set=image.pullPolicy=Never",
        "--set=etcd.bundled.enabled=true",
        f"--set=etcd.bundled.image.repository={etcd_repo}",
        f"--set-string=etcd.bundled.image.tag={etcd_tag}",
        "--set=etcd.bundled.image.pullPolicy=Never",
        "--set=etcd.bundled.persistence.enabled=true",
        "--wait",
        f"--timeout={HELM_TIMEOUT}s",
    ]


def _install(plane: ControlPlane, built: dict[str, images.Image]) -> None:
    operator = built["operator"].ref
    _say(
        f"helm upgrade --install {RELEASE} charts/etcdconfig -n {NAMESPACE} "
        "(2 replicas, fail-closed webhook, bundled etcd on a PersistentVolume; local images)"
    )
    started = time.monotonic()
    out = plane.helm(
        *helm_args(operator, built["etcd"].ref), check=False, timeout=HELM_TIMEOUT + 60
    )
    if out.returncode != 0:
        lines = [line for line in out.stderr.splitlines() if line.strip()]
        why = lines[-1] if lines else f"exit code {out.returncode}"
        raise DemoError(
            f"helm upgrade --install failed ({_one_line(why, 200)}){_pod_problems(plane)}; "
            f"see `kubectl get pods -n {NAMESPACE}` and `kubectl describe pods -n {NAMESPACE}`"
        )
    for kind in (f"deployment/{RELEASE}", f"statefulset/{RELEASE}-etcd"):
        # old pods of a rollout gone, every replica of the new one Ready
        plane.kubectl("rollout", "status", kind, "-n", NAMESPACE, "--timeout=120s", timeout=150)
    status = json.loads(plane.helm("status", RELEASE, "-n", NAMESPACE, "-o", "json").stdout)
    print(
        f"release {RELEASE} revision {status['version']} {status['info']['status']} in "
        f"{time.monotonic() - started:.1f}s; the operator pods run {operator}"
    )


def pod_problems(pods: list[dict[str, Any]]) -> list[str]:
    """``pod: reason`` of every pod that is not Ready (a container's waiting or last
    termination reason, else the pod's phase)."""
    problems = []
    for pod in pods:
        status = pod.get("status") or {}
        conds = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
        if conds.get("Ready") == "True":
            continue
        why = status.get("phase") or "Pending"
        for cs in status.get("containerStatuses") or []:
            state = cs.get("state") or {}
            waiting = state.get("waiting") or (cs.get("lastState") or {}).get("terminated")
            if waiting and waiting.get("reason"):
                why = waiting["reason"]
                break
        else:
            unscheduled = next(
                (c for c in status.get("conditions") or [] if c.get("type") == "PodScheduled"),
                None,
            )
            if unscheduled and unscheduled.get("status") == "False":
                why = f"unschedulable: {unscheduled.get('message', '')}"
        problems.append(f"{pod['metadata']['name']}: {why}")
    return problems


def _pod_problems(plane: ControlPlane) -> str:
    out = plane.kubectl("get", "pods", "-n", NAMESPACE, "-o", "json", check=False)
    if out.returncode != 0:
        return ""
    problems = pod_problems(json.loads(out.stdout).get("items", []))
    return f"; not Ready: {', '.join(problems)}" if problems else ""


def service_address(service: dict[str, Any], port_name: str) -> str:
    """``clusterIP:port`` of the Service's port named ``port_name``."""
    port = next(p["port"] for p in service["spec"]["ports"] if p.get("name") == port_name)
    return f"{service['spec']['clusterIP']}:{port}"


def _service_address(plane: ControlPlane, name: str, port_name: str) -> str:
    out = plane.kubectl("get", "service", name, "-n", NAMESPACE, "-o", "json")
    return service_address(json.loads(out.stdout), port_name)


def _reachable(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


def _cli(env: dict[str, str], *args: str) -> None:
    """The ``etcdconfig`` CLI, its output printed (in order with ours)."""
    out = subprocess.run(
        [sys.executable, "-m", "etcdconfig.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    print((out.stdout + out.stderr).rstrip(), flush=True)


def _samples() -> list[tuple[Path, dict[str, Any]]]:
    """The Config documents of examples/*.yaml, in file order."""
    out = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "Config":
                out.append((path, doc))
    return out


def _exists(plane: ControlPlane, ns: str, name: str) -> bool:
    out = plane.kubectl(
        "get",
        "configs.etcdconfig.io",
        name,
        "-n",
        ns,
        "--ignore-not-found",
        "-o",
        "name",
        check=False,
    )
    return bool(out.stdout.strip())


def _wait_ready(plane: ControlPlane, ns: str, name: str) -> None:
    """Wait until the Config is Ready; else DemoError naming it and its Ready message."""
    try:
        out = plane.kubectl(
            "wait",
            "--for=condition=Ready",
            "configs.etcdconfig.io",
            name,
            "-n",
            ns,
            f"--timeout={READY_TIMEOUT}s",
            check=False,
            timeout=READY_TIMEOUT + 30,
        )
        ok = out.returncode == 0
    except subprocess.TimeoutExpired:
        ok = False
    if ok:
        return
    got = plane.kubectl("get", "configs.etcdconfig.io", name, "-n", ns, "-o", "json", check=False)
    why = "no status yet"
    if got.returncode == 0:
        conds = (json.loads(got.stdout).get("status") or {}).get("conditions") or []
        ready = next((c for c in conds if c.get("type") == "Ready"), None)
        if ready:
            why = f"{ready.get('reason')}: {ready.get('message')}"
    raise DemoError(
        f"Config {ns}/{name} is not Ready after {READY_TIMEOUT}s ({why}); "
        f"see `kubectl describe cfg {name} -n {ns}` and "
        f"`kubectl logs -n {NAMESPACE} deployment/{RELEASE}`"
    )


def _observed(plane: ControlPlane, ns: str, name: str) -> bool:
    obj = json.loads(
        plane.kubectl("get", "configs.etcdconfig.io", name, "-n", ns, "-o", "json").stdout
    )
    st = obj.get("status") or {}
    return bool(st.get("observedGeneration") == obj["metadata"]["generation"] and st.get("version"))


# --- down ---------------------------------------------------------------------------------


def down(state: Path) -> int:
    _stop_earlier_operator(state)
    plane = ControlPlane(state)
    if not plane.processes and not Node(state).host.pending:
        shutil.rmtree(volume_dir(state), ignore_errors=True)
        print(f"nothing is running (state: {state})")
        return 0
    if os.geteuid() != 0 and (plane.node or Node(state).host.pending):
        raise DemoError(ROOT_NEEDED.replace("make demo", "make demo-down"))
    plane.stop()
    shutil.rmtree(volume_dir(state), ignore_errors=True)
    print(
        "cluster stopped: every pod (the release's too), process and host change is gone; "
        f"logs remain in {plane.log_dir}"
    )
    return 0


def _stop_earlier_operator(state: Path) -> None:
    """An operator process of the demo before it used a node (``operator.pid``)."""
    pid_file = state / "operator.pid"
    if not pid_file.exists():
        return
    with contextlib.suppress(OSError, ValueError):
        pid = int(pid_file.read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if b"etcdconfig.cli.main" in cmdline and b"run" in cmdline:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 15
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.1)  # poll for its exit
            print(f"stopped the operator process of an earlier demo (pid {pid})")
    pid_file.unlink(missing_ok=True)


def _left_running(state: Path) -> str:
    """What an interrupted ``up`` or ``down`` left running, and what to do about it."""
    try:
        plane = ControlPlane(state)
        if plane.running():
            return f"the cluster keeps running: `{_down_hint(state)}` stops it"
        left = plane.leftovers()
    except ControlPlaneError:
        left = []
    if left:
        names = ", ".join(f"{p.name} pid {p.pid}" for p in left)
        return f"left running: {names}: `{_down_hint(state)}` stops them"
    return "nothing is left running"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m etcdconfig.devenv.demo", description=__doc__)
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="state directory")
    parser.add_argument("action", choices=("up", "down"))
    args = parser.parse_args(argv)
    args.dir.mkdir(parents=True, exist_ok=True)
    # SIGTERM unwinds like Ctrl-C: a start under way stops what it started
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        return up(args.dir) if args.action == "up" else down(args.dir)
    except (ControlPlaneError, BuildError, DemoError, network.NetworkError) as exc:
        print(f"error: {_one_line(str(exc))}", file=sys.stderr)  # says why and which log
        return 1
    except subprocess.TimeoutExpired as exc:
        cmd = exc.cmd if isinstance(exc.cmd, str) else " ".join(map(str, exc.cmd))
        print(
            f"error: `{_one_line(cmd, 200)}` did not finish in {exc.timeout:.0f}s", file=sys.stderr
        )
        return 1
    except KeyboardInterrupt:
        print(f"error: interrupted; {_left_running(args.dir)}", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    raise SystemExit(main())
