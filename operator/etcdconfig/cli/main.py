"""``etcdconfig``: run the operator; read, compare, roll back and verify history.

Exit codes: 0 success; 1 error (one line on stderr, ``--debug`` for a traceback);
2 usage error or the operator could not start; 3 an integrity problem: ``verify``
found some, or a stored record does not match its checksum and ``show``, ``diff``
or ``rollback`` refused to use it; 4 the Config or version does not exist.
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import json
import sys
import traceback
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import ValidationError

from etcdconfig import __version__
from etcdconfig.canonical import checksum
from etcdconfig.cli.output import console, emit, err_console, table
from etcdconfig.errors import CorruptRecord, EtcdConfigError, NotFound
from etcdconfig.etcd import EtcdClient, prefix_end
from etcdconfig.models import CHANGE_CAUSE_ANNOTATION, GROUP, KIND, ROLLBACK_ANNOTATION, VERSION
from etcdconfig.settings import Settings
from etcdconfig.store import Head, VersionedStore, VersionRecord
from etcdconfig.store.integrity import describe, load_record

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

EXIT_ERROR, EXIT_USAGE, EXIT_INTEGRITY, EXIT_NOT_FOUND = 1, 2, 3, 4


class Exit(Exception):
    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(message)
        self.code = code


def _ref(value: str, default_ns: str | None) -> tuple[str, str]:
    if "/" in value:
        ns, name = value.split("/", 1)
    else:
        ns, name = default_ns or "default", value
    if not ns or not name or "/" in name:
        raise Exit(EXIT_USAGE, f"expected NAMESPACE/NAME or NAME with -n, got {value!r}")
    return ns, name


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    for field in (
        "etcd_endpoints",
        "etcd_prefix",
        "etcd_ca_file",
        "etcd_cert_file",
        "etcd_key_file",
        "etcd_username",
        "etcd_password",
        "kubeconfig",
        "context",
        "namespaces",
        "replica_id",
        "lock_ttl",
        "resync_interval",
        "integrity_interval",
        "http_addr",
        "http_port",
        "webhook_enabled",
        "webhook_addr",
        "webhook_port",
        "webhook_cert_file",
        "webhook_key_file",
        "log_format",
        "log_level",
        "acquire_timeout",
        "hold_timeout",
    ):
        value = getattr(args, field, None)
        if value is not None:
            overrides[field] = value
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
            for e in exc.errors(include_input=False)
        )
        raise Exit(EXIT_USAGE, f"invalid settings: {problems}") from None


async def _with_store(
    args: argparse.Namespace, fn: Callable[[VersionedStore], Awaitable[int]]
) -> int:
    settings = _settings(args)
    client = EtcdClient(settings.etcd())
    try:
        await client.connect()
        return await fn(VersionedStore(client, prefix=settings.etcd_prefix))
    finally:
        await client.close()


async def _verified(
    store: VersionedStore, ns: str, name: str, version: int | None
) -> VersionRecord:
    """Version ``version`` of the Config (None: the head's), refused with
    ``CorruptRecord`` unless it matches its checksum — and the head's
    ``recordChecksum`` when it is the version the head points at. Every command that
    shows a record's data or reuses it reads through here."""
    head_kv, revision = await store.client.get(store.keys.head(ns, name))
    head = Head.parse(head_kv.value, what=f"head of {ns}/{name}") if head_kv else None
    if version is None:
        if head is None or head.version == 0:
            raise NotFound(f"{ns}/{name} has no recorded version")
        version = head.version
    # as of the head's revision, so the record is the one the head pointed at then
    kv, _ = await store.client.get(store.keys.version(ns, name, version), revision=revision)
    if kv is None:
        raise NotFound(f"{ns}/{name} has no version {version} in the store")
    return load_record(
        kv.value,
        what=describe(ns, name, version),
        version=version,
        expected_record_checksum=(
            head.record_checksum if head is not None and head.version == version else None
        ),
        mod_revision=kv.mod_revision,
    )


# --- commands ------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from etcdconfig.controller.main import main as run_main

    return run_main(_settings(args))


def cmd_history(args: argparse.Namespace) -> int:
    ns, name = _ref(args.config, args.namespace)

    async def go(store: VersionedStore) -> int:
        records, cursor = await store.history(ns, name, limit=args.limit, before=args.before)
        head = await store.head(ns, name)
        if head is None and not records:
            raise Exit(EXIT_NOT_FOUND, f"{ns}/{name} has no history in the store")
        rows = [r.summary() for r in records]
        t = table("VERSION", "GENERATION", "CHECKSUM", "RECORDED", "AUTHOR", "ORIGIN", "CAUSE")
        for r in records:
            origin = r.origin.get("kind", "")
            if origin == "rollback":
                origin += f" from v{r.origin.get('fromVersion')}"
            mark = " (head)" if head and head.version == r.version else ""
            t.add_row(
                f"{r.version}{mark}",
                str(r.generation),
                r.checksum.split(":")[-1][:12],
                r.recorded_at,
                r.author.get("manager", ""),
                origin,
                r.author.get("changeCause", ""),
            )
        emit({"config": f"{ns}/{name}", "versions": rows, "next": cursor}, args.output, t)
        if cursor and args.output == "table":
            err_console.print(f"[dim]more: --before {cursor}[/dim]")
        return 0

    return asyncio.run(_with_store(args, go))


def cmd_show(args: argparse.Namespace) -> int:
    ns, name = _ref(args.config, args.namespace)

    async def go(store: VersionedStore) -> int:
        rec = await _verified(store, ns, name, args.version or None)
        if args.output == "table":
            out = rec.raw if args.full else rec.data
            sys.stdout.write(yaml.safe_dump(out, sort_keys=False, allow_unicode=True))
        else:
            emit(
                rec.raw
                if args.full
                else {"version": rec.version, "checksum": rec.checksum, "data": rec.data},
                args.output,
            )
        return 0

    return asyncio.run(_with_store(args, go))


def cmd_diff(args: argparse.Namespace) -> int:
    ns, name = _ref(args.config, args.namespace)

    async def go(store: VersionedStore) -> int:
        a = await _verified(store, ns, name, args.a)
        b = await _verified(store, ns, name, args.b)
        left = yaml.safe_dump(a.data, sort_keys=True, allow_unicode=True).splitlines(keepends=True)
        right = yaml.safe_dump(b.data, sort_keys=True, allow_unicode=True).splitlines(keepends=True)
        lines = list(
            difflib.unified_diff(
                left, right, f"{ns}/{name}@v{a.version}", f"{ns}/{name}@v{b.version}"
            )
        )
        if args.output != "table":
            emit(
                {
                    "from": a.version,
                    "to": b.version,
                    "equal": a.checksum == b.checksum,
                    "diff": "".join(lines),
                },
                args.output,
            )
            return 0
        color = console.is_terminal and not args.no_color
        for line in lines:
            if color and line.startswith(("+", "-")) and not line.startswith(("+++", "---")):
                console.print(
                    line.rstrip("\n"),
                    style="green" if line.startswith("+") else "red",
                    highlight=False,
                    markup=False,
                )
            else:
                sys.stdout.write(line if line.endswith("\n") else line + "\n")
        return 0

    return asyncio.run(_with_store(args, go))


def cmd_verify(args: argparse.Namespace) -> int:
    async def go(store: VersionedStore) -> int:
        if args.all:
            targets = await store.list_configs()
        elif args.config:
            targets = [_ref(args.config, args.namespace)]
        else:
            raise Exit(EXIT_USAGE, "name a Config (NAMESPACE/NAME) or pass --all")
        problems = []
        if args.output == "table" and len(targets) > 1 and console.is_terminal:
            from rich.progress import track

            iterator = track(targets, description="verifying", console=err_console)
        else:
            iterator = targets
        for ns, name in iterator:
            problems.extend(await store.verify(ns, name))
        result = {
            "checked": len(targets),
            "intact": not problems,
            "problems": [
                {
                    "config": f"{p.namespace}/{p.name}",
                    "version": p.version,
                    "kind": p.kind,
                    "message": p.message,
                }
                for p in problems
            ],
        }
        if args.output == "table":
            for p in problems:
                sys.stdout.write(f"{p}\n")
            sys.stdout.write(f"{len(targets)} checked, {len(problems)} problem(s)\n")
        else:
            emit(result, args.output)
        return EXIT_INTEGRITY if problems else 0

    return asyncio.run(_with_store(args, go))


def cmd_locks(args: argparse.Namespace) -> int:
    async def go(store: VersionedStore) -> int:
        base = store.keys.locks()
        res = await store.client.range(base, prefix_end(base), sort_by_create=True)
        rows: list[dict[str, Any]] = []
        for kv in res.kvs:
            parts = kv.key[len(base) :].decode().split("/")
            rows.append(
                {
                    "config": "/".join(parts[1:3]),
                    "lease": parts[-1],
                    "holder": kv.value.decode(errors="replace"),
                    "createRevision": kv.create_revision,
                }
            )
        seen: set[str] = set()
        t = table("CONFIG", "HOLDER", "LEASE", "ROLE", "REVISION")
        for r in rows:
            role = "holder" if r["config"] not in seen else "waiter"
            seen.add(r["config"])
            r["role"] = role
            t.add_row(
                str(r["config"]), str(r["holder"]), str(r["lease"]), role, str(r["createRevision"])
            )
        emit({"locks": rows}, args.output, t)
        return 0

    return asyncio.run(_with_store(args, go))


def cmd_members(args: argparse.Namespace) -> int:
    async def go(store: VersionedStore) -> int:
        base = store.keys.members()
        res = await store.client.range(base, prefix_end(base))
        rows = []
        t = table("REPLICA", "HOST", "PID", "LEASE")
        for kv in res.kvs:
            try:
                info = json.loads(kv.value)
            except ValueError:
                info = {}
            row = {
                "replica": kv.key[len(base) :].decode(),
                **{k: info.get(k) for k in ("host", "pid", "lease")},
            }
            rows.append(row)
            t.add_row(row["replica"], str(row["host"]), str(row["pid"]), str(row["lease"]))
        emit({"members": rows}, args.output, t)
        return 0

    return asyncio.run(_with_store(args, go))


def cmd_rollback(args: argparse.Namespace) -> int:
    ns, name = _ref(args.config, args.namespace)
    settings = _settings(args)

    async def go(store: VersionedStore) -> int:
        from etcdconfig.kube import JSON_PATCH, Kube, load_api_client
        from etcdconfig.validation import Validator

        # verified before anything else: a tampered record must never become a new version
        target = await _verified(store, ns, name, args.to)
        kube = Kube(await load_api_client(settings.kubeconfig, settings.context))
        try:
            obj = await kube.get_config(ns, name)
            if obj is None:
                raise Exit(EXIT_NOT_FOUND, f"Config {ns}/{name} does not exist in Kubernetes")
            issues = Validator().validate(target.data, (obj.get("spec") or {}).get("schema"))
            if issues:
                raise Exit(
                    EXIT_ERROR,
                    f"version {args.to} does not satisfy the Config's current schema: "
                    + "; ".join(str(i) for i in issues),
                )
            note = json.dumps(
                {"fromVersion": target.version, "checksum": checksum(target.data)}, sort_keys=True
            )
            if args.print:
                manifest = {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": KIND,
                    "metadata": {
                        "name": name,
                        "namespace": ns,
                        "annotations": {
                            ROLLBACK_ANNOTATION: note,
                            "etcdconfig.io/change-cause": f"rollback to version {target.version}",
                        },
                    },
                    "spec": {**obj["spec"], "data": target.data},
                }
                emit(manifest, "json" if args.output == "json" else "yaml")
                return 0
            current = (obj.get("spec") or {}).get("data")
            if args.dry_run:
                left = yaml.safe_dump(current, sort_keys=True).splitlines(keepends=True)
                right = yaml.safe_dump(target.data, sort_keys=True).splitlines(keepends=True)
                sys.stdout.writelines(
                    difflib.unified_diff(
                        left, right, f"{ns}/{name} (now)", f"{ns}/{name}@v{target.version}"
                    )
                )
                sys.stdout.write(
                    f"dry run: would roll {ns}/{name} back to version {target.version}\n"
                )
                return 0
            # one JSON patch: data replaced whole (a merge patch would keep removed keys),
            # guarded by resourceVersion so a concurrent change is never overwritten
            ops: list[dict[str, Any]] = [
                {
                    "op": "test",
                    "path": "/metadata/resourceVersion",
                    "value": obj["metadata"]["resourceVersion"],
                },
            ]
            if not obj["metadata"].get("annotations"):
                ops.append({"op": "add", "path": "/metadata/annotations", "value": {}})
            for key, value in (
                (ROLLBACK_ANNOTATION, note),
                (CHANGE_CAUSE_ANNOTATION, f"rollback to version {target.version}"),
            ):
                ops.append(
                    {
                        "op": "add",
                        "path": "/metadata/annotations/" + key.replace("/", "~1"),
                        "value": value,
                    }
                )
            ops.append({"op": "replace", "path": "/spec/data", "value": target.data})
            patched = await kube.patch_config(ns, name, ops, content_type=JSON_PATCH)
            sys.stdout.write(
                f"{ns}/{name} rolled back to the data of version {target.version} "
                f"(generation {patched['metadata']['generation']}); "
                "the operator records it as a new version\n"
            )
            return 0
        finally:
            await kube.close()

    return asyncio.run(_with_store(args, go))


def cmd_version(args: argparse.Namespace) -> int:
    emit({"version": __version__}, args.output if args.output != "table" else "yaml")
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    from etcdconfig.devenv.cli import main as dev_main

    return int(dev_main(args.dev_args, prog="etcdconfig dev") or 0)


# --- parser ----------------------------------------------------------------------------------


def _etcd_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("etcd (defaults from ETCDCONFIG_* environment variables)")
    g.add_argument("--etcd-endpoints", dest="etcd_endpoints", help="comma-separated host:port list")
    g.add_argument("--prefix", dest="etcd_prefix", help="key prefix (default /etcdconfig)")
    g.add_argument("--etcd-ca-file", dest="etcd_ca_file")
    g.add_argument("--etcd-cert-file", dest="etcd_cert_file")
    g.add_argument("--etcd-key-file", dest="etcd_key_file")
    g.add_argument("--etcd-username", dest="etcd_username")
    g.add_argument("--etcd-password", dest="etcd_password", help="prefer ETCDCONFIG_ETCD_PASSWORD")


def _kube_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kubeconfig")
    p.add_argument("--context")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="etcdconfig", description=__doc__.split("\n")[0] if __doc__ else None
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(
        name: str, fn: Callable[[argparse.Namespace], int], help_: str, *, store: bool = True
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(fn=fn)
        p.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table")
        p.add_argument("-n", "--namespace")
        if store:
            _etcd_flags(p)
        return p

    p = command("run", cmd_run, "run the operator")
    _kube_flags(p)
    p.add_argument("--namespaces", help="comma-separated namespaces to watch (default: all)")
    p.add_argument("--replica-id", dest="replica_id")
    p.add_argument("--lock-ttl", dest="lock_ttl", type=int)
    p.add_argument("--acquire-timeout", dest="acquire_timeout", type=float)
    p.add_argument("--hold-timeout", dest="hold_timeout", type=float)
    p.add_argument("--resync-interval", dest="resync_interval", type=float)
    p.add_argument("--integrity-interval", dest="integrity_interval", type=float)
    p.add_argument("--http-addr", dest="http_addr")
    p.add_argument("--http-port", dest="http_port", type=int)
    p.add_argument("--webhook", dest="webhook_enabled", action="store_true", default=None)
    p.add_argument("--webhook-addr", dest="webhook_addr")
    p.add_argument("--webhook-port", dest="webhook_port", type=int)
    p.add_argument("--webhook-cert-file", dest="webhook_cert_file")
    p.add_argument("--webhook-key-file", dest="webhook_key_file")
    p.add_argument("--log-format", dest="log_format", choices=("json", "text"))
    p.add_argument("--log-level", dest="log_level", choices=("debug", "info", "warning", "error"))

    p = command("history", cmd_history, "list the recorded versions of a Config, newest first")
    p.add_argument("config", metavar="NAMESPACE/NAME")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--before", type=int, help="page: versions older than this one")

    p = command("show", cmd_show, "print the data of a version (default: the head)")
    p.add_argument("config", metavar="NAMESPACE/NAME")
    p.add_argument("--version", type=int)
    p.add_argument("--full", action="store_true", help="the whole record, not just the data")

    p = command("diff", cmd_diff, "unified YAML diff between two versions")
    p.add_argument("config", metavar="NAMESPACE/NAME")
    p.add_argument("a", type=int)
    p.add_argument("b", type=int)
    p.add_argument("--no-color", action="store_true")

    p = command(
        "rollback",
        cmd_rollback,
        "roll a Config back to the data of version N (records a new version)",
    )
    p.add_argument("config", metavar="NAMESPACE/NAME")
    p.add_argument("--to", type=int, required=True)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="show the change, apply nothing")
    mode.add_argument("--print", action="store_true", help="print the manifest to commit (GitOps)")
    _kube_flags(p)

    p = command("verify", cmd_verify, "re-hash stored versions and the checksum chain")
    p.add_argument("config", nargs="?", metavar="NAMESPACE/NAME")
    p.add_argument("--all", action="store_true")

    command("locks", cmd_locks, "show lock holders and waiters")
    command("members", cmd_members, "show live operator replicas")
    command("version", cmd_version, "print the version", store=False)

    p = sub.add_parser(
        "dev", help="local control plane for development (up|down|status|env)", add_help=False
    )
    p.set_defaults(fn=cmd_dev)
    p.add_argument("dev_args", nargs=argparse.REMAINDER)
    return parser


def _error(exc: BaseException) -> None:
    """One line on stderr, whatever the message holds (gRPC details carry newlines) and
    however narrow the terminal: scripts read errors line by line."""
    text = " ".join(str(exc).split())
    err_console.print(f"error: {text}", markup=False, highlight=False, soft_wrap=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["dev"]:  # everything after `dev` (even --help) belongs to the dev CLI
        return cmd_dev(argparse.Namespace(dev_args=argv[1:]))
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.fn(args))
    except Exit as exc:
        if str(exc):
            _error(exc)
        return exc.code
    except NotFound as exc:
        if args.debug:
            traceback.print_exc()
        _error(exc)
        return EXIT_NOT_FOUND
    except CorruptRecord as exc:
        if args.debug:
            traceback.print_exc()
        _error(exc)
        return EXIT_INTEGRITY
    except EtcdConfigError as exc:
        if args.debug:
            traceback.print_exc()
        _error(exc)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
