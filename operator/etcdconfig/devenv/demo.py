"""``make demo``: a local control plane + etcd + the operator + the sample Configs.

    python -m etcdconfig.devenv.demo up     # everything, then show status and history
    python -m etcdconfig.devenv.demo down   # stop the operator and the control plane

The versioned store uses the control plane's own etcd under ``/etcdconfig``
(Kubernetes keeps its objects under ``/registry``). State and logs live in
``.dev/`` (the same directory as ``python -m etcdconfig.devenv``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from etcdconfig import crd
from etcdconfig.devenv.build import BuildError
from etcdconfig.devenv.cli import DEFAULT_DIR
from etcdconfig.devenv.controlplane import ControlPlane, ControlPlaneError
from etcdconfig.devenv.etcd import free_port

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
PREFIX = "/etcdconfig"


def _say(msg: str) -> None:
    print(f"\n==> {msg}", flush=True)


def _wait(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.2)  # poll interval of a deadline-bounded wait
    raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")


def _operator_env(plane: ControlPlane) -> dict[str, str]:
    return {
        **plane.client_env(),
        "ETCDCONFIG_ETCD_ENDPOINTS": plane.etcd_endpoint,
        "ETCDCONFIG_ETCD_PREFIX": PREFIX,
    }


def up(state: Path) -> int:
    plane = ControlPlane(state)
    if not (plane.running() and plane.ready()):
        _say("starting the local control plane (etcd + kube-apiserver + kube-controller-manager)")
        plane.start(timeout=300)
    _say("installing the Config CRD")
    plane.kubectl("apply", "-f", "-", input=crd.render())
    plane.kubectl(
        "wait", "--for=condition=Established", "crd/configs.etcdconfig.io", "--timeout=60s"
    )

    pid_file = state / "operator.pid"
    port_file = state / "operator.port"
    if pid_file.exists() and _alive(int(pid_file.read_text())):
        port = int(port_file.read_text())
    else:
        port = free_port()
        _say(f"starting the operator (log: {state / 'operator.log'})")
        with (state / "operator.log").open("ab") as log:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "etcdconfig.cli.main",
                    "run",
                    "--replica-id",
                    "demo-0",
                    "--http-addr",
                    "127.0.0.1",
                    "--http-port",
                    str(port),
                    "--log-format",
                    "text",
                ],
                env=_operator_env(plane),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        pid_file.write_text(str(proc.pid))
        port_file.write_text(str(port))
    _wait(lambda: _ready(port), 60, "the operator's /readyz")

    _say("applying the sample Configs from examples/")
    manifests = sorted(p for p in EXAMPLES.glob("*.yaml") if "kind: Config" in p.read_text())
    for path in manifests:
        print(plane.kubectl("apply", "-f", str(path)).stdout.strip())
    plane.kubectl(
        "wait", "--for=condition=Ready", "configs.etcdconfig.io", "--all", "-A", "--timeout=60s"
    )

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
    plane.kubectl(
        "patch",
        "configs.etcdconfig.io",
        "payments",
        "-n",
        "default",
        "--type=merge",
        "-p",
        json.dumps({"spec": {"data": {"retries": 5}}}),
    )
    _wait(lambda: _observed(plane, "default", "payments"), 60, "payments version 2")

    _say("kubectl get configs -A")
    print(plane.kubectl("get", "configs.etcdconfig.io", "-A").stdout)
    cli = [sys.executable, "-m", "etcdconfig.cli.main"]
    for ref in ("default/payments", "default/feature-flags"):
        _say(f"etcdconfig history {ref}")
        subprocess.run([*cli, "history", ref], env=_operator_env(plane), check=False)
    _say("etcdconfig diff default/payments 1 2")
    subprocess.run(
        [*cli, "diff", "default/payments", "1", "2"], env=_operator_env(plane), check=False
    )
    _say("etcdconfig verify --all")
    subprocess.run([*cli, "verify", "--all"], env=_operator_env(plane), check=False)
    print(
        "\nTry it yourself:\n"
        f'  eval "$(.venv/bin/python -m etcdconfig.devenv --dir {state} env)"\n'
        f"  export ETCDCONFIG_ETCD_ENDPOINTS={plane.etcd_endpoint}"
        f" ETCDCONFIG_ETCD_PREFIX={PREFIX}\n"
        "  kubectl edit cfg payments            # change data, watch a new version appear\n"
        "  .venv/bin/etcdconfig history default/payments\n"
        "  .venv/bin/etcdconfig rollback default/payments --to 1\n"
        f"  operator metrics: http://127.0.0.1:{port}/metrics\n"
        "  make demo-down                       # stop everything"
    )
    return 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def _observed(plane: ControlPlane, ns: str, name: str) -> bool:
    obj = json.loads(
        plane.kubectl("get", "configs.etcdconfig.io", name, "-n", ns, "-o", "json").stdout
    )
    st = obj.get("status") or {}
    return bool(st.get("observedGeneration") == obj["metadata"]["generation"] and st.get("version"))


def down(state: Path) -> int:
    pid_file = state / "operator.pid"
    if pid_file.exists():
        pid = int(pid_file.read_text())
        if _alive(pid):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 15
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)  # poll for exit
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        pid_file.unlink()
        print("operator stopped")
    ControlPlane(state).stop()
    print("control plane stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m etcdconfig.devenv.demo", description=__doc__)
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="state directory")
    parser.add_argument("action", choices=("up", "down"))
    args = parser.parse_args(argv)
    args.dir.mkdir(parents=True, exist_ok=True)
    try:
        return up(args.dir) if args.action == "up" else down(args.dir)
    except (ControlPlaneError, BuildError) as exc:  # the message says why and which log
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
