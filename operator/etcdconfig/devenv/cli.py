"""``python -m etcdconfig.devenv up|down|status|env|user`` — a local control plane.

The same :func:`main` backs ``etcdconfig dev ...`` (pass ``prog``).

    up       build (or reuse cached) binaries, start etcd + kube-apiserver +
             kube-controller-manager on loopback, wait until ready
    down     stop every process ``up`` started (by PID)
    status   what runs, where the logs are, memory; exit 1 if not running/ready
    env      shell exports: ``eval "$(python -m etcdconfig.devenv env)"``
    user     make a non-admin user's kubeconfig: ``user alice --group dev``

State (certificates, kubeconfig, logs, PIDs) lives in ``.dev/`` at the repository
root, or ``--dir``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from etcdconfig.devenv.build import BuildError
from etcdconfig.devenv.controlplane import ControlPlane, ControlPlaneError


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
    up.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for readiness")
    sub.add_parser("down", help="stop the processes `up` started")
    status = sub.add_parser("status", help="show processes, readiness, memory and logs")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    sub.add_parser("env", help="print shell exports (KUBECONFIG, PATH, etcd endpoint)")
    user = sub.add_parser("user", help="write a kubeconfig for a non-admin user")
    user.add_argument("name")
    user.add_argument("--group", action="append", default=[], help="a group (repeatable)")
    return parser


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


def main(argv: list[str] | None = None, *, prog: str = "python -m etcdconfig.devenv") -> int:
    args = build_parser(prog).parse_args(argv)
    plane = ControlPlane(args.dir)
    try:
        if args.command == "up":
            begin = time.monotonic()
            plane.start(timeout=args.timeout)
            print(f"control plane ready in {time.monotonic() - begin:.1f}s")
            _print_status(plane.status())
            print(f'use it: eval "$({prog} --dir {plane.state_dir} env)"')
        elif args.command == "down":
            plane.stop()
            print(f"stopped; logs remain in {plane.log_dir}")
        elif args.command == "status":
            status = plane.status()
            if args.json:
                print(json.dumps(status, indent=2))
            else:
                _print_status(status)
            return 0 if status["ready"] else 1
        elif args.command == "env":
            for key, value in plane.env().items():
                print(f"export {key}={shlex.quote(value)}")
        elif args.command == "user":
            print(plane.add_user(args.name, args.group))
    except (ControlPlaneError, BuildError, TimeoutError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
