"""``python -m etcdconfig.devenv up|down|status|env|user`` — a local control plane.

The same :func:`main` backs ``etcdconfig dev ...`` (pass ``prog``).

    up       build (or reuse cached) binaries and images, start etcd +
             kube-apiserver + kube-controller-manager + kube-scheduler and a node
             (containerd, kubelet, kube-proxy, CoreDNS; needs root), wait until the
             node is Ready; ``--no-node``: the control plane alone, on loopback (no
             pods run; what most tests use, for speed); ``--gitops``: also Flux and a
             Git repository it applies (:mod:`etcdconfig.devenv.gitops`). If that
             fails, stop what it started and say why in one line, naming the log
    down     remove every pod, stop every process ``up`` started (by PID; SIGTERM,
             then SIGKILL), including what a failed or interrupted ``up`` left
             running, and undo every host change (network device, routes, iptables
             rules, sysctls, cgroups, mounts, paths; see etcdconfig.devenv.network)
    status   what runs, where the logs are, memory, leftovers; exit 1 if not ready
    env      shell exports: ``eval "$(python -m etcdconfig.devenv env)"``
    gitops-sync  after ``up --gitops``: make Flux fetch its repository now
    user     make a non-admin user's kubeconfig: ``user alice --group dev``

State (certificates, kubeconfig, logs, PIDs) lives in ``.dev/`` at the repository
root, or ``--dir``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from etcdconfig.devenv.build import BuildError
from etcdconfig.devenv.controlplane import STOP_GRACE, ControlPlane, ControlPlaneError
from etcdconfig.devenv.flux import FluxError
from etcdconfig.devenv.gitserver import GitServerError

if TYPE_CHECKING:
    from types import FrameType


def _default_dir() -> Path:
    """``.dev/`` at the repository root (this file is operator/etcdconfig/devenv/cli.py);
    in an installed package, ``.dev/`` in the current directory."""
    root = Path(__file__).resolve().parents[3]
    return (root if (root / "pyproject.toml").exists() else Path.cwd()) / ".dev"


DEFAULT_DIR = _default_dir()


def build_parser(prog: str = "python -m etcdconfig.devenv") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="A local Kubernetes control plane (etcd, kube-apiserver, "
        "kube-controller-manager) built from Go modules, for tests and demos.",
    )
    parser.add_argument(
        "--dir", type=Path, default=DEFAULT_DIR, help=f"state directory (default {DEFAULT_DIR})"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the control plane and wait until it is ready")
    up.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for readiness")
    up.add_argument(
        "--no-node",
        dest="node",
        action="store_false",
        help="start the control plane only (no kubelet: pods never run; no root needed)",
    )
    up.add_argument(
        "--aggregator-routing",
        action="store_true",
        help="kube-apiserver dials Service endpoints itself (webhooks work without kube-proxy)",
    )
    up.add_argument(
        "--gitops",
        action="store_true",
        help="also run Flux (source- and kustomize-controller, built from Go modules) and a "
        "Git server on loopback with a repository Flux applies (docs/gitops.md)",
    )
    down = sub.add_parser("down", help="stop the processes `up` started")
    for cmd in (up, down):
        cmd.add_argument(
            "--grace",
            type=float,
            default=STOP_GRACE,
            help="seconds between SIGTERM and SIGKILL when stopping a process "
            f"(default {STOP_GRACE:g})",
        )
    status = sub.add_parser("status", help="show processes, readiness, memory and logs")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    sub.add_parser(
        "env",
        help="print shell exports (KUBECONFIG, PATH with kubectl, helm and etcdconfig; "
        "ETCDCONFIG_ETCD_ENDPOINTS with --no-node)",
    )
    sub.add_parser(
        "gitops-sync",
        help="make Flux fetch the `up --gitops` repository now (as `flux reconcile source git`)",
    )
    user = sub.add_parser("user", help="write a kubeconfig for a non-admin user")
    user.add_argument("name")
    user.add_argument("--group", action="append", default=[], help="a group (repeatable)")
    return parser


def _shell_env(plane: ControlPlane) -> dict[str, str]:
    """What ``env`` exports: the cluster's KUBECONFIG; PATH with kubectl and helm and this
    Python environment's scripts (``etcdconfig``, and ``kubectl-etcdconfig`` so that
    ``kubectl etcdconfig`` resolves); and, in the process-only mode (``--no-node``), where
    an operator run by hand keeps its store in the control plane's etcd,
    ETCDCONFIG_ETCD_ENDPOINTS for the ``etcdconfig`` CLI. With a node the store is the
    chart's etcd, and the CLI reads the history API with the kubeconfig: an endpoint here
    would send it to the wrong etcd."""
    env = plane.env()
    scripts = str(Path(sys.executable).parent)
    path = [str(plane.state_dir / "bin"), scripts]
    rest = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p not in path]
    env["PATH"] = os.pathsep.join([*path, *rest])
    if not plane.node:
        env["ETCDCONFIG_ETCD_ENDPOINTS"] = plane.etcd_endpoint
    return env


def _print_status(status: dict[str, object]) -> None:
    print(f"state dir   {status['state_dir']}")
    print(f"api server  {status['server']}  ready={status['ready']}")
    print(f"etcd        {status['etcd_endpoint']}")
    print(f"kubeconfig  {status['kubeconfig']}")
    procs = status["processes"]
    assert isinstance(procs, list)
    for p in procs:
        state = "running" if p["running"] else "stopped"
        print(f"  {p['name']:<24} pid {p['pid']:<8} {state:<8} {p['rss_mib']:>7} MiB  {p['log']}")
    if not procs:
        print("  nothing running (`up` starts it)")
    leftovers = status["leftovers"]
    assert isinstance(leftovers, list)
    if leftovers:
        print(f"leftovers   {', '.join(leftovers)}: not a working control plane; `down` stops them")


class _Terminated(BaseException):
    """SIGTERM while ``up`` runs: unwinds like Ctrl-C, so what it started is stopped."""


def _on_sigterm(signum: int, frame: FrameType | None) -> NoReturn:
    raise _Terminated


def _up(plane: ControlPlane, args: argparse.Namespace, prog: str) -> None:
    begin = time.monotonic()
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        plane.start(timeout=args.timeout, grace=args.grace)
    finally:
        if previous is not None:  # None: set outside Python, which cannot restore it
            signal.signal(signal.SIGTERM, previous)
    print(f"control plane ready in {time.monotonic() - begin:.1f}s")
    if args.gitops:
        from etcdconfig.devenv import gitops

        try:
            started = gitops.start(plane, timeout=args.timeout)
        except BaseException:
            plane.stop(grace=args.grace)
            raise
        print(f"gitops      Flux applies {started['url']} (./deploy) every 30s")
        print(f"            commit and `git push` in {started['work']}, then `{prog} gitops-sync`")
        if plane.node:
            print("            the Configs are recorded once the operator runs: `make demo`")
        else:
            print("            the Configs are recorded once an operator runs: `etcdconfig run`")
    _print_status(plane.status())
    print(f'use it: eval "$({prog} --dir {plane.state_dir} env)"')


def _down(plane: ControlPlane, args: argparse.Namespace) -> None:
    for proc, outcome in plane.stop(grace=args.grace):
        print(f"{proc.name:<24} pid {proc.pid:<8} {outcome}")
    print(f"stopped; logs remain in {plane.log_dir}")


def _interrupted(args: argparse.Namespace, what: str) -> int:
    """One line; after ``up`` or ``down``, whether anything is left running."""
    after = ""
    if args.command in ("up", "down"):
        try:
            left = ControlPlane(args.dir).leftovers()
        except ControlPlaneError:
            left = []
        names = ", ".join(f"{p.name} pid {p.pid}" for p in left)
        after = "; nothing is left running"
        if left:
            after = f"; left running: {names}: `down` stops them"
    print(f"error: interrupted by {what}{after}", file=sys.stderr)
    return 130 if what == "SIGINT" else 143


def main(argv: list[str] | None = None, *, prog: str = "python -m etcdconfig.devenv") -> int:
    """Errors are one line on stderr (``error: ...``) and exit code 1, never a traceback."""
    args = build_parser(prog).parse_args(argv)
    try:
        plane = ControlPlane(args.dir)
        if args.command == "up":
            plane.node = args.node
            plane.aggregator_routing = args.aggregator_routing
            _up(plane, args, prog)
        elif args.command == "down":
            _down(plane, args)
        elif args.command == "status":
            status = plane.status()
            if args.json:
                print(json.dumps(status, indent=2))
            else:
                _print_status(status)
            return 0 if status["ready"] else 1
        elif args.command == "env":
            for key, value in _shell_env(plane).items():
                print(f"export {key}={shlex.quote(value)}")
        elif args.command == "gitops-sync":
            from etcdconfig.devenv import gitops

            gitops.sync(plane)
            print(f"requested: Flux fetches {gitops.NAMESPACE}/{gitops.NAME} now")
        elif args.command == "user":
            print(plane.add_user(args.name, args.group))
    except (ControlPlaneError, BuildError, FluxError, GitServerError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return _interrupted(args, "SIGINT")
    except _Terminated:
        return _interrupted(args, "SIGTERM")
    except Exception as exc:  # a bug, or something unforeseen: still one line
        print(f"error: {type(exc).__name__}: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    return 0
