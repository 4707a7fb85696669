"""``make demo-rollout``: rollouts (docs/rollouts.md) on the cluster of ``make demo``.

    python -m etcdconfig.devenv.demo_rollout up     # the cluster of `make demo`, then the story
    python -m etcdconfig.devenv.demo_rollout down   # delete the demo's namespace

``up`` first runs the set-up steps of ``make demo`` (:mod:`etcdconfig.devenv.demo`: the
images, the cluster — a running one is reused —, the node's copy of the operator image
and ``helm upgrade --install`` of the chart with its defaults, the pod webhook on), but
not its sample Configs. Then, in the namespace ``rollout-demo``:

1. a Deployment of 3 replicas of a small app (it runs from the operator's image, which
   has Python: nothing else to build) that reads ``/etc/app/config.json`` from the
   ConfigMap ``app-config`` and exits 3 when ``retries`` is above 8 (Ready, by its
   readiness probe, once it accepted its config), its manifest naming the Config in
   ``etcdconfig.io/configs``; and the Config ``app`` publishing
   versioned ConfigMaps (``app-config-vN``) with a 10 s bake time;
2. a good change (``retries: 5``): every pod is replaced by one pinned to the new
   version's ConfigMap, ``etcdconfig rollout status`` waits for it;
3. a bad change (``retries: 9``, valid by the Config's schema, yet the app refuses it):
   the new pod crashes, the operator rolls the Deployment back to the last version
   that rolled out healthy and the Config says why (``Stalled``, ``RolloutFailed``);
   the pods of that version kept running throughout (``maxUnavailable: 0`` and the
   readiness probe: the crashing pod never counted as Ready), which the demo checks
   by their names;

printing after each step ``kubectl get cfg -o wide``, ``kubectl get pods`` (and the
ConfigMap each pod is pinned to) and ``etcdconfig history``, then how to go on by hand.

Running ``up`` again is safe: the namespace and the Deployment are applied again
(unchanged), an existing Config is kept and the story goes on from its head (the good
change picks a value other than the current one; a Config left stalled by the bad
change is fixed by it). ``down`` deletes the namespace (the Config's history goes with
it: ``deletionPolicy: Purge``); ``make demo-down`` stops the cluster.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from etcdconfig.devenv import demo, network
from etcdconfig.devenv.build import BuildError
from etcdconfig.devenv.cli import DEFAULT_DIR
from etcdconfig.devenv.controlplane import ControlPlane, ControlPlaneError

NS = "rollout-demo"
CONFIG = "app"
CONFIG_MAP = "app-config"
DEPLOYMENT = "app"
REPLICAS = 3
BAKE_SECONDS = 10
FIELD_MANAGER = "demo-rollout"  # as a GitOps tool would apply the manifests
ROLLOUT_TIMEOUT = 240.0
GOOD, BAD = 5, 9  # retries: a good change, and one the app refuses (> 8)
#: the app: read the config, refuse a bad one (exit 3), else say it is ready (the file its
#: readiness probe reads) and run forever
APP = (
    "import json, sys, time\n"
    "cfg = json.load(open('/etc/app/config.json'))\n"
    "if cfg['retries'] > 8:\n"
    "    print('retries > 8: refusing to start', flush=True); sys.exit(3)\n"
    "open('/tmp/ready', 'w').close()\n"
    "print('running with', cfg, flush=True)\n"
    "time.sleep(10**9)\n"
)
#: Ready only once the app accepted its config: without it a container is Ready the moment
#: it starts, and a rolling update replaces every old pod before the new ones crash
READINESS_PROBE = {
    "exec": {"command": ["cat", "/tmp/ready"]},
    "periodSeconds": 1,
    "failureThreshold": 1,
    "timeoutSeconds": 1,
}


def config_manifest(
    data: dict[str, Any],
    cause: str,
    *,
    namespace: str = NS,
    debounce: float = 2,
    bake: float = BAKE_SECONDS,
    deadline: int = 120,
) -> dict[str, Any]:
    """The Config ``app``: versioned ConfigMaps, rollouts with a bake time and
    automatic rollback; ``retries`` up to 10 is valid (9 is valid, and breaks the app)."""
    return {
        "apiVersion": "etcdconfig.io/v1alpha1",
        "kind": "Config",
        "metadata": {
            "name": CONFIG,
            "namespace": namespace,
            "annotations": {"etcdconfig.io/change-cause": cause},
        },
        "spec": {
            "schema": {
                "type": "object",
                "required": ["retries"],
                "properties": {"retries": {"type": "integer", "minimum": 0, "maximum": 10}},
            },
            "data": data,
            "deletionPolicy": "Purge",
            "publish": {"configMap": {"name": CONFIG_MAP, "versioned": True, "keep": 3}},
            "rollout": {
                "debounceSeconds": debounce,
                "bakeSeconds": bake,
                "progressDeadlineSeconds": deadline,
                "autoRollback": True,
            },
        },
    }


def deployment_manifest(
    image: str, *, namespace: str = NS, replicas: int = REPLICAS, readiness: bool = True
) -> dict[str, Any]:
    """The app's Deployment: it names the plain ConfigMap (the pod webhook pins each pod
    to a version) and the Config in ``etcdconfig.io/configs``; a rolling update that
    never takes a Ready replica down (``maxUnavailable: 0``), a new pod counting as Ready
    only once the app accepted its config (``readiness``: the probe)."""
    container: dict[str, Any] = {
        "name": "app",
        "image": image,
        "imagePullPolicy": "Never",
        "command": ["python", "-c", APP],
        "volumeMounts": [{"name": "cfg", "mountPath": "/etc/app"}],
    }
    if readiness:
        container["readinessProbe"] = READINESS_PROBE
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": DEPLOYMENT,
            "namespace": namespace,
            "annotations": {"etcdconfig.io/configs": CONFIG},
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": DEPLOYMENT}},
            "strategy": {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": {"app": DEPLOYMENT}},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [container],
                    "volumes": [{"name": "cfg", "configMap": {"name": CONFIG_MAP}}],
                },
            },
        },
    }


def pinned_to(pod: dict[str, Any]) -> str:
    """The versioned ConfigMap the pod webhook pinned the pod to (``app-config-v3``),
    or ``""``."""
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    pairs = str(annotations.get("etcdconfig.io/pinned-to") or "")
    for pair in pairs.split(","):
        plain, _, versioned = pair.partition("=")
        if plain == CONFIG_MAP:
            return versioned
    return ""


# --- up -----------------------------------------------------------------------------------


def _setup(state: Path) -> tuple[ControlPlane, str]:
    """The steps of ``make demo`` up to the installed release; the operator image's ref."""
    if os.geteuid() != 0:
        raise demo.DemoError(demo.ROOT_NEEDED.replace("make demo", "make demo-rollout"))
    plane = ControlPlane(state)
    running = plane.running() and plane.ready()
    if running and not plane.node:
        raise demo.DemoError(
            f"the control plane in {state} runs without a node: stop it "
            f"({demo._down_hint(state)}), then run the demo again"
        )
    demo._say("the set-up steps of `make demo` (images, cluster, helm upgrade --install)")
    built = demo._images()
    demo._cluster(plane, running)
    demo._import_operator_image(plane, built["operator"])
    demo._etcd_volume(plane)
    demo._install(plane, built)
    demo._wait_history_api(plane)
    return plane, built["operator"].ref


def _get(plane: ControlPlane, kind: str, name: str) -> dict[str, Any] | None:
    out = plane.kubectl("get", kind, name, "-n", NS, "--ignore-not-found", "-o", "json")
    return dict(json.loads(out.stdout)) if out.stdout.strip() else None


def _config(plane: ControlPlane) -> dict[str, Any] | None:
    return _get(plane, "configs.etcdconfig.io", CONFIG)


def _apply(plane: ControlPlane, obj: dict[str, Any]) -> None:
    out = plane.kubectl(
        "apply", "--server-side", f"--field-manager={FIELD_MANAGER}", "--force-conflicts",
        "-f", "-", input=yaml.safe_dump(obj),
    )  # fmt: skip
    print(out.stdout.strip())


def _recorded(plane: ControlPlane, after: int) -> int:
    """Wait until the Config's current generation is recorded as a version above
    ``after``; that version."""
    found: list[int] = []

    def check() -> bool:
        obj = _config(plane)
        st = (obj or {}).get("status") or {}
        if obj is None or st.get("observedGeneration") != obj["metadata"]["generation"]:
            return False
        version = st.get("version")
        if isinstance(version, int) and version > after:
            found.append(version)
            return True
        return False

    demo._wait(check, 60, f"Config {NS}/{CONFIG} to record a version above {after}")
    return found[-1]


def _rollout_ended(plane: ControlPlane, version: int) -> dict[str, Any]:
    """Wait until the rollout of ``version`` ended (Succeeded, RolledBack, Failed)."""
    found: list[dict[str, Any]] = []

    def check() -> bool:
        r = (((_config(plane) or {}).get("status") or {}).get("rollout")) or {}
        if r.get("version") == version and r.get("state") in ("Succeeded", "RolledBack", "Failed"):
            found.append(r)
            return True
        return False

    demo._wait(check, ROLLOUT_TIMEOUT, f"the rollout of {NS}/{CONFIG} version {version} to end")
    return found[-1]


def _settled(plane: ControlPlane, version: int) -> None:
    """Wait until every pod of the Deployment runs ``version``, Ready, and no other is
    left (old pods gone, a crashed pod of a rolled-back version removed)."""
    want = f"{CONFIG_MAP}-v{version}"

    def check() -> bool:
        out = plane.kubectl("get", "pods", "-n", NS, "-l", f"app={DEPLOYMENT}", "-o", "json")
        pods = json.loads(out.stdout)["items"]
        return len(pods) == REPLICAS and all(
            pinned_to(p) == want
            and any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in (p.get("status") or {}).get("conditions") or []
            )
            for p in pods
        )

    demo._wait(check, ROLLOUT_TIMEOUT, f"{REPLICAS} Ready pods on {want} and no other")


def _pod_names(plane: ControlPlane) -> set[str]:
    out = plane.kubectl("get", "pods", "-n", NS, "-l", f"app={DEPLOYMENT}", "-o", "name")
    return set(out.stdout.split())


def _run_cli(env: dict[str, str], *args: str) -> int:
    """The ``etcdconfig`` CLI, its output streamed as it comes (``rollout status``)."""
    print(f"$ etcdconfig {' '.join(args)}", flush=True)
    proc = subprocess.run(
        [sys.executable, "-m", "etcdconfig.cli.main", *args],
        env=env,
        timeout=ROLLOUT_TIMEOUT + 60,
        check=False,
    )
    return proc.returncode


def _views(plane: ControlPlane, env: dict[str, str]) -> None:
    """``kubectl get cfg -o wide``, ``kubectl get pods`` and ``etcdconfig history``."""
    demo._say(f"kubectl get cfg -n {NS} -o wide")
    print(plane.kubectl("get", "configs.etcdconfig.io", "-n", NS, "-o", "wide").stdout.rstrip())
    demo._say(f"kubectl get pods -n {NS}   # and the ConfigMap each pod is pinned to")
    print(plane.kubectl("get", "pods", "-n", NS).stdout.rstrip())
    out = plane.kubectl("get", "pods", "-n", NS, "-l", f"app={DEPLOYMENT}", "-o", "json")
    for pod in json.loads(out.stdout)["items"]:
        gone = " (terminating)" if pod["metadata"].get("deletionTimestamp") else ""
        print(f"  {pod['metadata']['name']:<28} -> {pinned_to(pod) or '(not pinned)'}{gone}")
    demo._say(f"etcdconfig history {NS}/{CONFIG}")
    demo._cli(env, "history", f"{NS}/{CONFIG}")


def _change(plane: ControlPlane, retries: int, cause: str) -> None:
    patch = {
        "metadata": {"annotations": {"etcdconfig.io/change-cause": cause}},
        "spec": {"data": {"retries": retries}},
    }
    text = json.dumps(patch, separators=(",", ":"))
    print(f"$ kubectl patch cfg {CONFIG} -n {NS} --type=merge -p '{text}'")
    out = plane.kubectl(
        "patch", "configs.etcdconfig.io", CONFIG, "-n", NS, "--type=merge", "-p", text
    )
    print(out.stdout.strip(), flush=True)


def up(state: Path) -> int:
    begin = time.monotonic()
    plane, image = _setup(state)
    env = {k: v for k, v in plane.client_env().items() if not k.startswith("ETCDCONFIG_")}

    demo._say(f"namespace {NS}: the app's Deployment ({REPLICAS} replicas) and the Config")
    _apply(plane, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    _apply(plane, deployment_manifest(image))
    existing = _config(plane)
    if existing is None:
        _apply(plane, config_manifest({"retries": 3}, "first version: three retries"))
        version = _recorded(plane, 0)
        print(f"recorded version {version}; the first rollout pins the Deployment to it")
    else:
        st = existing.get("status") or {}
        version = int(st.get("version") or 0)
        r = st.get("rollout") or {}
        print(
            f"config.etcdconfig.io/{CONFIG} exists (version {version}, rollout "
            f"{r.get('state', 'none')}): going on from it"
        )
    if _rollout_ended(plane, version)["state"] == "Succeeded":
        _settled(plane, version)
    _views(plane, env)

    current = int(((_config(plane) or {}).get("spec") or {}).get("data", {}).get("retries", 0))
    good = GOOD if current != GOOD else GOOD + 1
    demo._say(f"a good change: retries {good}; each pod is replaced by one of the new version")
    head = int(((_config(plane) or {}).get("status") or {}).get("version") or 0)
    _change(plane, good, f"retries {good}")
    version = _recorded(plane, head)
    _run_cli(env, "rollout", "status", f"{NS}/{CONFIG}", "--timeout", str(int(ROLLOUT_TIMEOUT)))
    _settled(plane, version)
    _views(plane, env)

    kept = _pod_names(plane)
    demo._say(f"a bad change: retries {BAD} (valid by the schema, but the app exits 3 on it)")
    _change(plane, BAD, f"retries {BAD}")
    bad = _recorded(plane, version)
    started = time.monotonic()
    _run_cli(env, "rollout", "status", f"{NS}/{CONFIG}", "--timeout", str(int(ROLLOUT_TIMEOUT)))
    ended = _rollout_ended(plane, bad)
    print(
        f"(version {bad}: {ended['state']} {time.monotonic() - started:.1f}s after it was recorded)"
    )
    if ended["state"] == "RolledBack":
        _settled(plane, version)
        after = _pod_names(plane)
        if after == kept:
            print(f"the {len(kept)} pods of version {version} kept running throughout (same names)")
        else:
            print(f"{len(kept - after)} of the {len(kept)} pods of version {version} were replaced")
    _views(plane, env)
    demo._say(f"kubectl get events -n {NS} --field-selector reason=RolloutFailed")
    print(
        plane.kubectl(
            "get", "events", "-n", NS, "--field-selector", "reason=RolloutFailed"
        ).stdout.rstrip()
    )
    obj = _config(plane) or {}
    stalled: dict[str, Any] = next(
        (c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == "Stalled"),
        {},
    )
    print(
        f"\nConfig {NS}/{CONFIG}: Stalled={stalled.get('status')} {stalled.get('reason', '')}; "
        f"spec.data is still {json.dumps(obj.get('spec', {}).get('data'))} (Git's desired "
        "state is what is wrong: a new change resumes)"
    )
    print(f"\ndemo-rollout done in {time.monotonic() - begin:.1f}s")
    print(try_it_yourself(state))
    return 0


def try_it_yourself(state: Path) -> str:
    """The closing lines: how to go on by hand."""
    where = "" if state.resolve() == DEFAULT_DIR.resolve() else f" --dir {state}"
    lines = [
        (f'eval "$(.venv/bin/python -m etcdconfig.devenv{where} env)"', ""),
        (f"kubectl get cfg -n {NS} -o wide -w", "the ROLLOUT column as it moves"),
        (
            f"kubectl patch cfg {CONFIG} -n {NS} --type=merge "
            """-p '{"spec":{"data":{"retries":6}}}'""",
            "a fix: rolls forward",
        ),
        (f"kubectl etcdconfig rollout status {NS}/{CONFIG}", "waits like kubectl rollout status"),
        (f"kubectl etcdconfig history {NS}/{CONFIG}", "the versions and their rollouts"),
        (
            f"kubectl get pods -n {NS} -o custom-columns="
            "NAME:.metadata.name,PINNED-TO:'.metadata.annotations.etcdconfig\\.io/pinned-to'",
            "",
        ),
        (f"kubectl rollout undo deployment/{DEPLOYMENT} -n {NS}", "back to the previous version"),
        (f"kubectl get events -n {NS} --field-selector reason=RolloutFailed", ""),
        (f".venv/bin/python -m etcdconfig.devenv.demo_rollout{where} down", "delete the namespace"),
        (demo._down_hint(state), "stop the cluster"),
    ]
    width = max(len(cmd) for cmd, note in lines if note and len(cmd) < 60)
    out = ["", "Go on by hand:"]
    for cmd, note in lines:
        out.append(f"  {cmd:<{width}}   # {note}" if note else f"  {cmd}")
    return "\n".join(out)


# --- down ---------------------------------------------------------------------------------


def down(state: Path) -> int:
    plane = ControlPlane(state)
    if not (plane.running() and plane.ready()):
        print(f"no cluster runs (state: {state}): nothing to delete")
        return 0
    out = plane.kubectl("get", "namespace", NS, "--ignore-not-found", "-o", "name")
    if not out.stdout.strip():
        print(f"namespace {NS} does not exist: nothing to delete")
    else:
        started = time.monotonic()
        plane.kubectl(
            "delete", "namespace", NS, "--wait=true", "--timeout=180s", timeout=210
        )  # fmt: skip
        print(f"namespace {NS} deleted in {time.monotonic() - started:.1f}s")
    print(f"the cluster keeps running: `{demo._down_hint(state)}` stops it")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m etcdconfig.devenv.demo_rollout", description=__doc__
    )
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="state directory")
    parser.add_argument("action", choices=("up", "down"))
    args = parser.parse_args(argv)
    args.dir.mkdir(parents=True, exist_ok=True)
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        return up(args.dir) if args.action == "up" else down(args.dir)
    except (ControlPlaneError, BuildError, demo.DemoError, network.NetworkError) as exc:
        print(f"error: {demo._one_line(str(exc))}", file=sys.stderr)
        return 1
    except subprocess.TimeoutExpired as exc:
        cmd = exc.cmd if isinstance(exc.cmd, str) else " ".join(map(str, exc.cmd))
        print(
            f"error: `{demo._one_line(cmd, 200)}` did not finish in {exc.timeout:.0f}s",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print(f"error: interrupted; {demo._left_running(args.dir)}", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    raise SystemExit(main())
