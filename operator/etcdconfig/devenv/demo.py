"""``make demo``: a local control plane + etcd + the operator + the sample Configs.

    python -m etcdconfig.devenv.demo up     # everything, then show status and history
    python -m etcdconfig.devenv.demo down   # stop the operator and the control plane

The versioned store uses the control plane's own etcd under ``/etcdconfig``
(Kubernetes keeps its objects under ``/registry``). State and logs live in
``.dev/`` (the same directory as ``python -m etcdconfig.devenv``).

The operator also serves the validating admission webhook, with a certificate from
a local CA (``.dev/webhook-pki/``); a ValidatingWebhookConfiguration (fail-closed,
Configs only) points the API server at it, so ``kubectl apply --dry-run=server``
rejects invalid data as a cluster with the Helm chart's defaults does.

Running ``up`` again is safe: a sample Config that already exists is left as it is
(the user may have changed it), and a Config that does not become Ready ends the
run with one line saying which and why, not a traceback.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from etcdconfig import crd
from etcdconfig.devenv.build import BuildError
from etcdconfig.devenv.cli import DEFAULT_DIR
from etcdconfig.devenv.controlplane import ControlPlane, ControlPlaneError
from etcdconfig.devenv.etcd import free_port
from etcdconfig.devenv.pki import CertificateAuthority

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
PREFIX = "/etcdconfig"
WEBHOOK_NAME = "etcdconfig-demo"
READY_TIMEOUT = 60


class DemoError(Exception):
    """A step of the demo failed; the message says which and what to do."""


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

    port, webhook_port = _operator(plane, state)
    _wait(lambda: _ready(port), 60, "the operator's /readyz")
    _say("registering the validating webhook (fail-closed, Configs only)")
    _install_webhook(plane, state, webhook_port)

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
    print(try_it_yourself(state, plane.etcd_endpoint, port))
    return 0


def try_it_yourself(state: Path, etcd_endpoint: str, port: int) -> str:
    """The closing lines of the demo (the README shows them as printed)."""
    where = "" if state.resolve() == DEFAULT_DIR.resolve() else f" --dir {state}"
    return (
        "\nTry it yourself:\n"
        f'  eval "$(.venv/bin/python -m etcdconfig.devenv{where} env)"\n'
        f"  export ETCDCONFIG_ETCD_ENDPOINTS={etcd_endpoint} ETCDCONFIG_ETCD_PREFIX={PREFIX}\n"
        "  kubectl get cfg -o wide               # version, readiness and why, generations\n"
        "  kubectl edit cfg payments             # change data, watch a new version appear\n"
        "  .venv/bin/etcdconfig history default/payments\n"
        "  .venv/bin/etcdconfig rollback default/payments --to 1\n"
        f"  operator metrics: http://127.0.0.1:{port}/metrics\n"
        "  make demo-down                        # stop everything"
    )


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
        f"see `kubectl describe cfg {name} -n {ns}` and the operator log"
    )


def _operator(plane: ControlPlane, state: Path) -> tuple[int, int]:
    """Start the operator (with the webhook) unless one from an earlier run is serving
    both; return its HTTP and webhook ports."""
    pid_file = state / "operator.pid"
    port_file = state / "operator.port"
    webhook_file = state / "operator.webhook-port"
    if pid_file.exists() and _alive(int(pid_file.read_text())):
        if webhook_file.exists():
            return int(port_file.read_text()), int(webhook_file.read_text())
        _stop_operator(state)  # an earlier demo's operator, without the webhook
    pki = state / "webhook-pki"
    pki.mkdir(parents=True, exist_ok=True)
    pair = CertificateAuthority.load_or_create(pki, "webhook-ca").issue(
        pki / "webhook",
        common_name="etcdconfig-webhook",
        server=True,
        dns_names=("localhost",),
        ip_addresses=("127.0.0.1",),
    )
    port, webhook_port = free_port(), free_port()
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
                "--webhook",
                "--webhook-addr",
                "127.0.0.1",
                "--webhook-port",
                str(webhook_port),
                "--webhook-cert-file",
                str(pair.cert_path),
                "--webhook-key-file",
                str(pair.key_path),
            ],
            env=_operator_env(plane),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    pid_file.write_text(str(proc.pid))
    port_file.write_text(str(port))
    webhook_file.write_text(str(webhook_port))
    return port, webhook_port


def webhook_configuration(ca_pem: bytes, port: int) -> dict[str, Any]:
    """The demo's ValidatingWebhookConfiguration: the chart's (fail-closed, Configs
    only), pointing at the local operator by URL instead of a Service."""
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": WEBHOOK_NAME},
        "webhooks": [
            {
                "name": "validate.configs.etcdconfig.io",
                "admissionReviewVersions": ["v1"],
                "sideEffects": "NoneOnDryRun",  # author notes, never on a dry run
                "failurePolicy": "Fail",
                "timeoutSeconds": 10,
                "matchPolicy": "Equivalent",
                "clientConfig": {
                    "url": f"https://127.0.0.1:{port}/validate-config",
                    "caBundle": base64.b64encode(ca_pem).decode(),
                },
                "rules": [
                    {
                        "apiGroups": ["etcdconfig.io"],
                        "apiVersions": ["v1alpha1"],
                        "operations": ["CREATE", "UPDATE"],
                        "resources": ["configs"],
                        "scope": "Namespaced",
                    }
                ],
            }
        ],
    }


def _install_webhook(plane: ControlPlane, state: Path, port: int) -> None:
    ca = CertificateAuthority.load_or_create(state / "webhook-pki", "webhook-ca")
    vwc = webhook_configuration(ca.cert_pem, port)
    plane.kubectl("apply", "-f", "-", input=json.dumps(vwc))


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


def _stop_operator(state: Path) -> None:
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
    (state / "operator.webhook-port").unlink(missing_ok=True)


def down(state: Path) -> int:
    plane = ControlPlane(state)
    if plane.running() and plane.ready():
        # fail-closed: with the operator gone, the API server would refuse Config writes
        plane.kubectl(
            "delete",
            "validatingwebhookconfiguration",
            WEBHOOK_NAME,
            "--ignore-not-found",
            check=False,
        )
    _stop_operator(state)
    plane.stop()
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
    except (ControlPlaneError, BuildError, DemoError) as exc:  # says why and which log
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except subprocess.TimeoutExpired as exc:
        cmd = exc.cmd if isinstance(exc.cmd, str) else " ".join(map(str, exc.cmd))
        print(f"error: `{cmd}` did not finish in {exc.timeout:.0f}s", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
