"""``etcdconfig``: run the operator; read, compare, roll back and verify history.

``history``, ``show``, ``diff`` and ``rollback`` read versions through the history API
(``history.etcdconfig.io/v1alpha1``) with the user's kubeconfig; with etcd endpoints
(``--etcd-endpoints`` or ``ETCDCONFIG_ETCD_ENDPOINTS``) they read etcd directly, as
``verify``, ``locks`` and ``members`` always do. Both give the same output.

Exit codes: 0 success (``diff``: the versions are equal); 1 error (one line on
stderr, ``--debug`` for a traceback; ``diff``: the versions differ); 2 usage error
or the operator could not start; 3 an integrity problem: ``verify`` found some, or a
stored record does not match its checksum and ``show``, ``diff`` or ``rollback``
refused to use it; 4 the Config or version does not exist.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import difflib
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import yaml
from pydantic import ValidationError

from etcdconfig import __version__
from etcdconfig.canonical import checksum
from etcdconfig.cli import remote
from etcdconfig.cli.output import (
    EXIT_ERROR,
    EXIT_INTEGRITY,
    EXIT_NOT_FOUND,
    EXIT_USAGE,
    Exit,
    console,
    emit,
    err_console,
    output_format,
    structured,
    table,
)
from etcdconfig.cli.timeline import Event, config_state, events_for, merge
from etcdconfig.controller.space import human
from etcdconfig.errors import (
    CorruptRecord,
    EtcdConfigError,
    EtcdUnavailable,
    InvalidConfig,
    NotFound,
    ValidationIssue,
)
from etcdconfig.etcd import EtcdClient, prefix_end
from etcdconfig.models import (
    CHANGE_CAUSE_ANNOTATION,
    FINALIZER,
    GROUP,
    KIND,
    PLURAL,
    ROLLBACK_ANNOTATION,
)
from etcdconfig.settings import Settings
from etcdconfig.store import Head, VersionedStore, VersionRecord
from etcdconfig.store.integrity import describe, load_record

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from etcdconfig.gitops import Management
    from etcdconfig.rollout import Outcome
    from etcdconfig.store.records import Incarnation

__all__ = ["EXIT_ERROR", "EXIT_INTEGRITY", "EXIT_NOT_FOUND", "EXIT_USAGE", "Exit", "main"]

ENDPOINTS_HINT = "set ETCDCONFIG_ETCD_ENDPOINTS or pass --etcd-endpoints"


def _kube_flags_of(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """``--kubeconfig`` and ``--context`` (else ``ETCDCONFIG_KUBECONFIG``/``_CONTEXT``,
    as the operator's settings read them)."""
    kubeconfig = getattr(args, "kubeconfig", None) or os.environ.get("ETCDCONFIG_KUBECONFIG")
    context = getattr(args, "context", None) or os.environ.get("ETCDCONFIG_CONTEXT")
    return kubeconfig or None, context or None


def _kube_target(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """The kubeconfig and the context to connect with: the context kubectl would pick
    (with a ``KUBECONFIG`` list, the first file that sets ``current-context``)."""
    kubeconfig, context = _kube_flags_of(args)
    return kubeconfig, remote.kube_context(kubeconfig, context).context or context


def _ref(value: str, args: argparse.Namespace) -> tuple[str, str]:
    """(namespace, name) of ``NAMESPACE/NAME``, or of ``NAME`` in ``-n``'s namespace,
    else the kubeconfig's current context's (as kubectl: ``--kubeconfig``, ``--context``,
    ``KUBECONFIG``), else ``default``."""
    if "/" in value:
        ns, name = value.split("/", 1)
    else:
        ns, name = getattr(args, "namespace", None) or "", value
    if not name or "/" in name or ("/" in value and not ns):
        raise Exit(EXIT_USAGE, f"expected NAMESPACE/NAME or NAME with -n, got {value!r}")
    if not ns:
        ns = remote.kube_context(*_kube_flags_of(args)).namespace
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
        "resync_full_every",
        "api_connections",
        "space_check_interval",
        "space_warn_ratio",
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
        "etcd_wait",
        "history_api_enabled",
        "history_api_addr",
        "history_api_port",
        "history_api_cert_file",
        "history_api_key_file",
        "history_api_authz_ttl",
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


def _endpoints_source(args: argparse.Namespace) -> str:
    if getattr(args, "etcd_endpoints", None):
        return "from --etcd-endpoints"
    if os.environ.get("ETCDCONFIG_ETCD_ENDPOINTS"):
        return "from ETCDCONFIG_ETCD_ENDPOINTS"
    return f"the default: no ETCDCONFIG_ETCD_ENDPOINTS or --etcd-endpoints given; {ENDPOINTS_HINT}"


async def _with_store(
    args: argparse.Namespace, fn: Callable[[VersionedStore], Awaitable[int]]
) -> int:
    settings = _settings(args)
    client = EtcdClient(settings.etcd())
    try:
        try:
            await client.connect()
        except EtcdUnavailable as exc:
            # name where the endpoints came from: the first thing to check
            raise EtcdUnavailable(
                f"{exc} [etcd endpoints {','.join(settings.etcd_endpoints)}: "
                f"{_endpoints_source(args)}]"
            ) from exc
        return await fn(VersionedStore(client, prefix=settings.etcd_prefix))
    finally:
        await client.close()


def _no_history(store: VersionedStore, ns: str, name: str) -> NotFound:
    return NotFound(
        f"{ns}/{name} has no history in the store (nothing under "
        f"{store.keys.config(ns, name)}/; prefix {store.keys.root}: check --prefix or "
        "ETCDCONFIG_ETCD_PREFIX)"
    )


async def _retained(store: VersionedStore, ns: str, name: str, revision: int = 0) -> str:
    """``retained: 3..12`` (the versions the store keeps now), or ``none retained``."""
    start = store.keys.versions(ns, name)
    end = prefix_end(start)
    low = await store.client.range(start, end, limit=1, keys_only=True, revision=revision)
    high = await store.client.range(
        start, end, limit=1, keys_only=True, descending=True, revision=revision
    )
    if not low.kvs or not high.kvs:
        return "no version is retained"

    def number(key: bytes) -> str:
        return str(int(key.decode().rsplit("/", 1)[1]))

    return f"retained: {number(low.kvs[0].key)}..{number(high.kvs[0].key)}"


def _deleted_note(ns: str, name: str, head: Head) -> str:
    policy = "Purge" if head.purged else "Retain"
    return f"{ns}/{name} was deleted ({policy}) at {head.recorded_at}, uid {head.uid}"


async def _verified(
    store: VersionedStore, ns: str, name: str, version: int | None
) -> tuple[VersionRecord, Head | None]:
    """Version ``version`` of the Config (None: the head's) and the head, the record
    refused with ``CorruptRecord`` unless it matches its checksum — and the head's
    ``recordChecksum`` when it is the version the head points at. Every command that
    shows a record's data or reuses it reads through here."""
    head_kv, revision = await store.client.get(store.keys.head(ns, name))
    head = Head.parse(head_kv.value, what=f"head of {ns}/{name}") if head_kv else None
    if version is None:
        if head is None:
            raise _no_history(store, ns, name)
        if head.version == 0:
            raise NotFound(f"{_deleted_note(ns, name, head)}; no version remains")
        version = head.version
    # as of the head's revision, so the record is the one the head pointed at then
    kv, _ = await store.client.get(store.keys.version(ns, name, version), revision=revision)
    if kv is None:
        if head is None and not (await store.history(ns, name, limit=1))[0]:
            raise _no_history(store, ns, name)
        raise NotFound(
            f"{ns}/{name} has no version {version} in the store "
            f"({await _retained(store, ns, name, revision)})"
        )
    record = load_record(
        kv.value,
        what=describe(ns, name, version),
        version=version,
        expected_record_checksum=(
            head.record_checksum if head is not None and head.version == version else None
        ),
        mod_revision=kv.mod_revision,
    )
    return record, head


# --- where versions are read: the history API or etcd -------------------------------------


class _Source(Protocol):
    """What ``history``, ``show``, ``diff`` and ``rollback`` read, from either transport."""

    async def page(
        self, ns: str, name: str, limit: int, before: int | None
    ) -> tuple[list[VersionRecord], int | None, Head | None, list[Incarnation], list[Outcome]]:
        """Versions newest first, the next page's cursor, the head, the incarnations,
        the rollout records (every incarnation's, oldest version first); ``NotFound``
        when the store holds nothing of the Config."""
        ...

    async def verified(
        self, ns: str, name: str, version: int | None
    ) -> tuple[VersionRecord, Head | None]:
        """As :func:`_verified`."""
        ...


class _EtcdSource:
    def __init__(self, store: VersionedStore) -> None:
        self.store = store

    async def page(
        self, ns: str, name: str, limit: int, before: int | None
    ) -> tuple[list[VersionRecord], int | None, Head | None, list[Incarnation], list[Outcome]]:
        records, cursor = await self.store.history(ns, name, limit=limit, before=before)
        head = await self.store.head(ns, name)
        incarnations = await self.store.incarnations(ns, name)
        if head is None and not records and not incarnations:
            raise _no_history(self.store, ns, name)
        return records, cursor, head, incarnations, await self.store.rollouts(ns, name)

    async def verified(
        self, ns: str, name: str, version: int | None
    ) -> tuple[VersionRecord, Head | None]:
        return await _verified(self.store, ns, name, version)


def _no_remote_history(ns: str, name: str) -> NotFound:
    return NotFound(
        f"{ns}/{name} has no history in the store (no confighistories.{remote.GROUP} "
        f'"{name}" in namespace "{ns}": check the namespace, -n or NAMESPACE/NAME)'
    )


class _ApiSource:
    """The history API: the same records, heads and incarnations, checked the same way."""

    def __init__(self, api: remote.HistoryApi) -> None:
        self.api = api

    async def _history(self, ns: str, name: str) -> remote.RemoteHistory:
        history = await self.api.config_history(ns, name)
        if history is None:
            raise _no_remote_history(ns, name)
        return history

    async def page(
        self, ns: str, name: str, limit: int, before: int | None
    ) -> tuple[list[VersionRecord], int | None, Head | None, list[Incarnation], list[Outcome]]:
        history = await self._history(ns, name)
        records, cursor = await self.api.versions(
            ns, name, limit=limit, before=before, head=history.head
        )
        return records, cursor, history.head, history.incarnations, history.rollouts

    async def verified(
        self, ns: str, name: str, version: int | None
    ) -> tuple[VersionRecord, Head | None]:
        history = await self._history(ns, name)
        head = history.head
        if version is None:
            if head is None:
                raise _no_remote_history(ns, name)
            if head.version == 0:
                raise NotFound(f"{_deleted_note(ns, name, head)}; no version remains")
            version = head.version
        record = await self.api.version(ns, name, version, head)
        if record is None:
            raise NotFound(
                f"{ns}/{name} has no version {version} in the store ({history.retained_text()})"
            )
        return record, head


def _use_etcd(args: argparse.Namespace) -> bool:
    """etcd when its endpoints are given; else the history API (the default)."""
    return bool(
        getattr(args, "etcd_endpoints", None) or os.environ.get("ETCDCONFIG_ETCD_ENDPOINTS")
    )


async def _with_source(args: argparse.Namespace, fn: Callable[[_Source], Awaitable[int]]) -> int:
    if _use_etcd(args):
        return await _with_store(args, lambda store: fn(_EtcdSource(store)))
    api = await remote.connect(*_kube_target(args))
    try:
        return await fn(_ApiSource(api))
    finally:
        await api.close()


# --- commands ------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from etcdconfig.controller.main import main as run_main

    return run_main(_settings(args))


def _origin(r: VersionRecord) -> str:
    origin = str(r.origin.get("kind", ""))
    if origin == "rollback":
        origin += f" from v{r.origin.get('fromVersion')}"
    return origin


def cmd_history(args: argparse.Namespace) -> int:
    ns, name = _ref(args.config, args)
    wide = args.output == "wide"

    async def go(source: _Source) -> int:
        records, cursor, head, incarnations, rollouts = await source.page(
            ns, name, args.limit, args.before
        )
        # a version's rollout: its record by (uid, version); the column once any exists
        rolled = {(o.uid, o.version): o for o in rollouts}
        shown = [rolled[(r.uid, r.version)] for r in records if (r.uid, r.version) in rolled]
        state = config_state(head)
        events = events_for(incarnations, records, head)
        rows = merge(records, events, first_page=args.before is None)
        doc: dict[str, Any] = {
            "config": f"{ns}/{name}",
            "state": state,
            "head": head.to_json() if head is not None else None,
            "versions": [r.summary() for r in records],
            "events": [e.to_json() for e in rows if isinstance(e, Event)],
            "incarnations": [inc.to_json() for inc in incarnations],
            "rollouts": [o.to_json() for o in shown],  # as the versions: newest first
            "next": cursor,
        }
        if args.output in ("table", "wide") and not records and head is not None and head.deleted:
            # nothing to tabulate: say what happened instead of an empty table
            sys.stdout.write(f"{_deleted_note(ns, name, head)}; no version remains\n")
            return 0
        columns = ["VERSION", "GENERATION", "CHECKSUM", "RECORDED", "AUTHOR", "ORIGIN", "CAUSE"]
        with_rollouts = bool(rollouts)
        if with_rollouts:
            columns.append("ROLLOUT")
        if wide:
            columns += ["UID", "RECORDED-BY", "FENCING"]
        t = table(*columns)
        for row in rows:
            if isinstance(row, Event):
                cells = ["-", "", "", row.at, "", row.label, ""]
                cells += [""] if with_rollouts else []
                t.add_row(*cells, *(["", "", ""] if wide else []))
                continue
            r = row
            mark = ""
            if head is not None and head.version == r.version:
                mark = " (deleted)" if head.deleted else " (head)"
            cells = [
                f"{r.version}{mark}",
                str(r.generation),
                r.checksum.split(":")[-1][:12],
                r.recorded_at,
                str(r.author.get("manager", "")),
                _origin(r),
                str(r.author.get("changeCause", "")),
            ]
            if with_rollouts:
                outcome = rolled.get((r.uid, r.version))
                cells.append(outcome.label() if outcome is not None else "")
            if wide:
                cells += [r.uid, r.recorded_by, str(r.fencing_revision)]
            t.add_row(*cells)
        emit(
            doc,
            args.output,
            t,
            names=[f"{ns}/{name}@v{r.version}" for r in records],
            command="history",
        )
        if cursor and args.output in ("table", "wide"):
            err_console.print(f"[dim]more: --before {cursor}[/dim]")
        return 0

    return asyncio.run(_with_source(args, go))


def cmd_show(args: argparse.Namespace) -> int:
    ns, name = _ref(args.config, args)

    async def go(source: _Source) -> int:
        rec, head = await source.verified(ns, name, args.version or None)
        deleted = head is not None and head.deleted
        note = f"{_deleted_note(ns, name, head)}; its versions remain" if deleted and head else ""
        if args.output in ("table", "wide"):
            if note:  # a YAML comment: visible, and the output still parses
                sys.stdout.write(f"# {note}\n")
            out = rec.raw if args.full else rec.data
            sys.stdout.write(yaml.safe_dump(out, sort_keys=False, allow_unicode=True))
            return 0
        if args.full:
            doc: dict[str, Any] = rec.raw  # the record as stored, field for field
            if note and args.output != "name":
                err_console.print(f"warning: {note}", markup=False, highlight=False)
        else:
            doc = {"version": rec.version, "checksum": rec.checksum, "data": rec.data}
            doc["state"] = config_state(head)
            if deleted and head is not None:
                doc["deleted"] = {
                    "uid": head.uid,
                    "at": head.recorded_at,
                    "deletionPolicy": "Purge" if head.purged else "Retain",
                }
        emit(doc, args.output, names=[f"{ns}/{name}@v{rec.version}"], command="show")
        return 0

    return asyncio.run(_with_source(args, go))


def _schema_of(rec: VersionRecord) -> tuple[bool, str | None, Any]:
    """(known, checksum, schema) of a record: records before the schema was recorded
    carry neither field (not known); a record may carry only the checksum."""
    raw = rec.raw
    if "schema" not in raw and "schemaChecksum" not in raw:
        return False, None, None
    schema = raw.get("schema")
    digest = raw.get("schemaChecksum")
    if digest is None and schema is not None:
        try:
            digest = checksum(schema, "schema")
        except EtcdConfigError:
            digest = None
    return True, None if digest is None else str(digest), schema


def _schema_text(rec: VersionRecord) -> list[str]:
    _, digest, schema = _schema_of(rec)
    if "schema" in rec.raw:
        body = "null\n" if schema is None else yaml.safe_dump(schema, sort_keys=True)
    else:
        body = f"# schema {digest} (only its checksum is in this record)\n"
    return body.splitlines(keepends=True)


def _print_diff(lines: list[str], no_color: bool) -> None:
    color = console.is_terminal and not no_color
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


def cmd_diff(args: argparse.Namespace) -> int:
    ns, name = _ref(args.config, args)

    async def go(source: _Source) -> int:
        a, _ = await source.verified(ns, name, args.from_version)
        b, _ = await source.verified(ns, name, args.to_version)
        left = yaml.safe_dump(a.data, sort_keys=True, allow_unicode=True).splitlines(keepends=True)
        right = yaml.safe_dump(b.data, sort_keys=True, allow_unicode=True).splitlines(keepends=True)
        ref = f"{ns}/{name}"
        lines = list(
            difflib.unified_diff(left, right, f"{ref}@v{a.version}", f"{ref}@v{b.version}")
        )
        # the schema, when both records carry it (older records do not: unknown, not "changed")
        (a_known, a_digest, _), (b_known, b_digest, _) = _schema_of(a), _schema_of(b)
        schema_equal: bool | None = None
        schema_lines: list[str] = []
        if a_known and b_known:
            schema_equal = a_digest == b_digest and (
                a_digest is not None or a.raw.get("schema") == b.raw.get("schema")
            )
            if not schema_equal:
                schema_lines = list(
                    difflib.unified_diff(
                        _schema_text(a),
                        _schema_text(b),
                        f"{ref}@v{a.version} schema",
                        f"{ref}@v{b.version} schema",
                    )
                )
        equal = a.checksum == b.checksum and schema_equal is not False
        if args.output in ("table", "wide"):
            _print_diff(lines, args.no_color)
            if schema_lines:
                sys.stdout.write("schema:\n")
                _print_diff(schema_lines, args.no_color)
        else:
            emit(
                {
                    "from": a.version,
                    "to": b.version,
                    "equal": equal,
                    "diff": "".join(lines),
                    "schemaEqual": schema_equal,
                    "schemaDiff": "".join(schema_lines),
                },
                args.output,
                command="diff",
            )
        return 0 if equal else 1

    return asyncio.run(_with_source(args, go))


def cmd_verify(args: argparse.Namespace) -> int:
    async def go(store: VersionedStore) -> int:
        if args.all:
            targets = await store.list_configs()
        elif args.config:
            ns, name = _ref(args.config, args)
            if (
                await store.head(ns, name) is None
                and not (await store.history(ns, name, limit=1))[0]
                and not await store.incarnations(ns, name)
            ):
                raise _no_history(store, ns, name)
            targets = [(ns, name)]
        else:
            raise Exit(EXIT_USAGE, "name a Config (NAMESPACE/NAME) or pass --all")
        problems = []
        if args.output in ("table", "wide") and len(targets) > 1 and console.is_terminal:
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
        if args.output in ("table", "wide"):
            for p in problems:
                sys.stdout.write(f"{p}\n")
            sys.stdout.write(f"{len(targets)} checked, {len(problems)} problem(s)\n")
        else:
            # -o name: the Configs with a problem
            bad = sorted({f"{p.namespace}/{p.name}" for p in problems})
            emit(result, args.output, names=bad, command="verify")
        return EXIT_INTEGRITY if problems else 0

    return asyncio.run(_with_store(args, go))


def cmd_validate(args: argparse.Namespace) -> int:
    """Validate Config manifests offline, as the admission webhook and the operator do:
    the same checks (the Config API, the schema, canonical form, size) and messages.
    Exit 0 when every Config is valid, 1 when one is not, 2 when a file cannot be read."""
    from etcdconfig.reconcile import format_issues, issue_reason, parse_spec, validate_spec
    from etcdconfig.validation import Validator

    validator = Validator()
    rows: list[dict[str, Any]] = []
    for path in args.filename:
        try:
            text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
            docs = [d for d in yaml.safe_load_all(text) if d is not None]
        except (OSError, UnicodeDecodeError) as exc:
            raise Exit(EXIT_USAGE, f"cannot read {path}: {exc}") from None
        except yaml.YAMLError as exc:
            raise Exit(
                EXIT_USAGE, f"{path} is not valid YAML: {' '.join(str(exc).split())}"
            ) from None
        for index, doc in enumerate(docs):
            where = f"{path}#{index}" if len(docs) > 1 else path
            if not isinstance(doc, dict):
                rows.append(
                    {
                        "file": where,
                        "config": "",
                        "valid": False,
                        "reason": "InvalidManifest",
                        "message": "not a YAML mapping",
                    }
                )
                continue
            if doc.get("kind") != KIND or str(doc.get("apiVersion", "")).split("/")[0] != GROUP:
                continue  # other objects in the same file: not ours to judge
            meta = doc.get("metadata") or {}
            ref = f"{meta.get('namespace') or '-'}/{meta.get('name') or '?'}"
            issues: list[Any]
            try:
                issues = validate_spec(parse_spec(doc.get("spec")), validator)
            except InvalidConfig as exc:
                issues = list(exc.issues)
            if not meta.get("name"):
                issues = [ValidationIssue("metadata.name", "is required"), *issues]
            rows.append(
                {
                    "file": where,
                    "config": ref,
                    "valid": not issues,
                    "reason": issue_reason(issues) if issues else "",
                    "message": format_issues(issues) if issues else "",
                }
            )
    t = table("FILE", "CONFIG", "RESULT")
    for r in rows:
        result = "valid" if r["valid"] else f"{r['reason']}: {r['message']}"
        t.add_row(str(r["file"]), str(r["config"]), result)
    emit({"results": rows}, args.output, t, names=[r["config"] for r in rows], command="validate")
    if not rows:
        err_console.print(
            f"warning: no {KIND} ({GROUP}) found in {', '.join(args.filename)}",
            markup=False,
            highlight=False,
        )
    return 0 if all(r["valid"] for r in rows) else EXIT_ERROR


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
                    "key": kv.key.decode(errors="replace"),
                }
            )
        seen: set[str] = set()
        wide = args.output == "wide"
        t = table("CONFIG", "HOLDER", "LEASE", "ROLE", "REVISION", *(["KEY"] if wide else []))
        for r in rows:
            role = "holder" if r["config"] not in seen else "waiter"
            seen.add(r["config"])
            r["role"] = role
            cells = [str(r["config"]), str(r["holder"]), str(r["lease"]), role]
            cells.append(str(r["createRevision"]))
            t.add_row(*cells, *([str(r["key"])] if wide else []))
        names = [str(r["config"]) for r in rows if r["role"] == "holder"]
        emit({"locks": rows}, args.output, t, names=names, command="locks")
        return 0

    return asyncio.run(_with_store(args, go))


def cmd_usage(args: argparse.Namespace) -> int:
    """The store's bytes per Config (its retained version records, as stored) and in
    all, beside etcd's own database size and quota (docs/operations.md#etcd-space)."""

    async def go(store: VersionedStore) -> int:
        if args.config:
            refs = [_ref(args.config, args)]
        else:
            namespace = getattr(args, "namespace", None)
            refs = [r for r in await store.list_configs() if not namespace or r[0] == namespace]
        rows: list[dict[str, Any]] = []
        for ns, name in refs:
            head = await store.head(ns, name)
            if head is None:
                if args.config:
                    raise _no_history(store, ns, name)
                continue
            sizes = await store.usage(ns, name)
            rows.append(
                {
                    "config": f"{ns}/{name}",
                    "state": config_state(head),
                    "versions": len(sizes.entries),
                    "oldest": sizes.entries[0][0] if sizes.entries else None,
                    "head": head.version,
                    "bytes": sizes.total,
                }
            )
        if args.sort_by == "bytes":
            rows.sort(key=lambda r: (-int(r["bytes"]), str(r["config"])))
        status = await store.client.status()
        alarms = await store.client.alarms()
        total = {
            "configs": len(rows),
            "versions": sum(int(r["versions"]) for r in rows),
            "bytes": sum(int(r["bytes"]) for r in rows),
        }
        etcd: dict[str, Any] = {
            "dbSize": status["db_size"],
            "dbSizeInUse": status["db_size_in_use"],
            "quota": status["db_size_quota"],
            "alarms": alarms,
        }
        wide = args.output == "wide"
        t = table("CONFIG", "STATE", "VERSIONS", "RETAINED", "SIZE", *(["BYTES"] if wide else []))
        for r in rows:
            span = f"{r['oldest']}..{r['head']}" if r["oldest"] is not None else "-"
            cells = [str(r["config"]), str(r["state"]), str(r["versions"]), span]
            cells.append(human(int(r["bytes"])))
            t.add_row(*cells, *([str(r["bytes"])] if wide else []))
        emit(
            {"configs": rows, "total": total, "etcd": etcd},
            args.output,
            t,
            names=[str(r["config"]) for r in rows],
            command="usage",
        )
        if args.output in ("table", "wide"):
            quota = f" of quota {human(etcd['quota'])}" if etcd["quota"] else ""
            alarm = f"; ALARMS: {', '.join(alarms)}" if alarms else ""
            err_console.print(
                f"total: {total['configs']} Configs, {total['versions']} versions, "
                f"{human(total['bytes'])} of records; etcd database {human(etcd['dbSize'])} "
                f"({human(etcd['dbSizeInUse'])} in use){quota}{alarm}",
                markup=False,
                highlight=False,
            )
        return 0

    return asyncio.run(_with_store(args, go))


def cmd_members(args: argparse.Namespace) -> int:
    async def go(store: VersionedStore) -> int:
        base = store.keys.members()
        res = await store.client.range(base, prefix_end(base))
        rows = []
        wide = args.output == "wide"
        t = table("REPLICA", "HOST", "PID", "LEASE", *(["KEY"] if wide else []))
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
            cells = [row["replica"], str(row["host"]), str(row["pid"]), str(row["lease"])]
            t.add_row(*cells, *([kv.key.decode(errors="replace")] if wide else []))
        emit(
            {"members": rows},
            args.output,
            t,
            names=[str(r["replica"]) for r in rows],
            command="members",
        )
        return 0

    return asyncio.run(_with_store(args, go))


# set by the API server (or by the operator and kubectl themselves): never in Git
_SERVER_METADATA = (
    "managedFields",
    "resourceVersion",
    "uid",
    "creationTimestamp",
    "generation",
    "selfLink",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
)
_LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def rollback_manifest(
    obj: dict[str, Any], data: Any, annotations: dict[str, str]
) -> dict[str, Any]:
    """The Config ``obj`` as a user keeps it in Git, with ``spec.data`` replaced and the
    rollback ``annotations`` set; everything else (labels, annotations, the rest of the
    spec) as it is. Dropped: ``status`` and what the API server sets (uid,
    resourceVersion, generation, creationTimestamp, managedFields...), the operator's
    finalizer and kubectl's last-applied-configuration (both written by tools)."""
    out = copy.deepcopy(obj)
    out.pop("status", None)
    meta = out.setdefault("metadata", {})
    for key in _SERVER_METADATA:
        meta.pop(key, None)
    finalizers = [f for f in meta.get("finalizers") or [] if f != FINALIZER]
    if finalizers:
        meta["finalizers"] = finalizers
    else:
        meta.pop("finalizers", None)
    notes = {k: v for k, v in (meta.get("annotations") or {}).items() if k != _LAST_APPLIED}
    meta["annotations"] = {**notes, **annotations}
    out["spec"] = {**(out.get("spec") or {}), "data": data}
    return out


def gitops_refusal(ref: str, version: int, managed: Management) -> str:
    """Why a live rollback of a Config that a GitOps tool applies is refused, and the
    way that lasts (the ``--print`` path)."""
    return (
        f"Config {ref} is managed by {managed.describe()}: {managed.tool} would revert a "
        f"live rollback at its next sync, recording Git's data again as a new version. "
        f"Roll back in Git instead: etcdconfig rollback {ref} --to {version} --print > "
        f"<file in the repository>, then commit and push; --force rolls back live anyway "
        f"(e.g. with the {managed.tool} sync suspended)"
    )


def _holds_data(obj: dict[str, Any], data: Any) -> bool:
    """Whether the Config's ``spec.data`` already is ``data`` (by canonical checksum)."""
    current = (obj.get("spec") or {}).get("data")
    try:
        return isinstance(current, dict) and checksum(current) == checksum(data)
    except EtcdConfigError:  # no canonical form: certainly not a recorded version's data
        return False


def _rollback_ops(
    obj: dict[str, Any], annotations: dict[str, str], data: Any
) -> list[dict[str, Any]]:
    """One JSON patch: data replaced whole (a merge patch would keep removed keys),
    guarded by resourceVersion so a concurrent change is never overwritten."""
    version = obj["metadata"]["resourceVersion"]
    ops: list[dict[str, Any]] = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": version}
    ]
    if not obj["metadata"].get("annotations"):
        ops.append({"op": "add", "path": "/metadata/annotations", "value": {}})
    for key, value in annotations.items():
        path = "/metadata/annotations/" + key.replace("/", "~1")
        ops.append({"op": "add", "path": path, "value": value})
    ops.append({"op": "replace", "path": "/spec/data", "value": data})
    return ops


ROLLBACK_ATTEMPTS = 5  # re-reads when only status (or other fields we leave) changed


async def _patch_unless_changed(
    kube: Any, obj: dict[str, Any], annotations: dict[str, str], data: Any
) -> dict[str, Any]:
    """Patch ``obj`` as read. A failed resourceVersion test is read again: when what the
    rollback read or sets — generation (spec), labels, annotations — is unchanged (the
    operator wrote status, say), the patch is made again on the new resourceVersion;
    otherwise nothing is changed and the user is told to run the rollback again."""
    from etcdconfig.kube import JSON_PATCH, KubeError

    meta = obj["metadata"]
    ns, name = meta["namespace"], meta["name"]
    seen = (meta.get("generation"), meta.get("labels"), meta.get("annotations"))
    for _ in range(ROLLBACK_ATTEMPTS):
        try:
            return dict(
                await kube.patch_config(
                    ns, name, _rollback_ops(obj, annotations, data), content_type=JSON_PATCH
                )
            )
        except KubeError as exc:
            if exc.status not in (409, 422):
                raise
        fresh = await kube.get_config(ns, name)
        if fresh is None:
            raise Exit(EXIT_NOT_FOUND, f"Config {ns}/{name} was deleted meanwhile")
        fmeta = fresh["metadata"]
        if (fmeta.get("generation"), fmeta.get("labels"), fmeta.get("annotations")) != seen:
            raise Exit(
                EXIT_ERROR,
                f"Config {ns}/{name} changed since it was read (resourceVersion "
                f"{meta.get('resourceVersion')}, now {fmeta.get('resourceVersion')}; generation "
                f"{meta.get('generation')}, now {fmeta.get('generation')}): nothing was changed, "
                "run the rollback again",
            )
        obj = fresh
    raise Exit(
        EXIT_ERROR,
        f"Config {ns}/{name} kept changing (its status) during {ROLLBACK_ATTEMPTS} attempts: "
        "nothing was changed, run the rollback again",
    )


def cmd_rollback(args: argparse.Namespace) -> int:
    ns, name = _ref(args.config, args)
    kubeconfig, context = _kube_target(args)
    dry_run = args.dry_run if args.dry_run != "none" else None

    async def go(source: _Source) -> int:
        from etcdconfig.gitops import management
        from etcdconfig.kube import JSON_PATCH, Kube, _explain, load_api_client
        from etcdconfig.validation import Validator

        # verified before anything else: a tampered record must never become a new version
        target, _ = await source.verified(ns, name, args.to)
        kube = Kube(await load_api_client(kubeconfig, context, agent="etcdconfig-cli"))
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
            annotations = {
                ROLLBACK_ANNOTATION: note,
                CHANGE_CAUSE_ANNOTATION: f"rollback to version {target.version}",
            }
            resource = f"config.{GROUP}/{name}"  # like kubectl -o name
            same = _holds_data(obj, target.data)
            already = (
                f"{ns}/{name} already holds the data of version {target.version}: "
                "there is nothing to roll back"
            )
            if args.print:
                if same:  # the manifest is still printed: Git may lag behind the cluster
                    sys.stderr.write(f"note: {already}\n")
                manifest = rollback_manifest(obj, target.data, annotations)
                fmt = args.output if structured(args.output) else "yaml"
                emit(manifest, fmt, command="rollback --print")
                return 0
            if same:  # nothing to patch: the annotations alone would record nothing and
                # mark the next non-data change as a rollback
                if args.output in ("table", "wide"):
                    sys.stdout.write(already + "\n")
                else:
                    emit(obj, args.output, names=[resource], command="rollback")
                return 0
            managed = management(obj)
            if managed is not None:
                refusal = gitops_refusal(f"{ns}/{name}", args.to, managed)
                if not dry_run and not args.force:
                    raise Exit(EXIT_ERROR, refusal)
                if dry_run and not args.force:
                    sys.stderr.write(f"warning: {refusal}\n")
            current = (obj.get("spec") or {}).get("data")
            ops = _rollback_ops(obj, annotations, target.data)
            if dry_run == "server":
                try:
                    after = dict(
                        await kube.custom.patch_namespaced_custom_object(
                            GROUP,
                            obj["apiVersion"].split("/", 1)[1],
                            ns,
                            PLURAL,
                            name,
                            ops,
                            dry_run="All",
                            _content_type=JSON_PATCH,  # type: ignore[call-arg]
                        )
                    )
                except Exception as exc:
                    from kubernetes_asyncio.client.exceptions import ApiException

                    if isinstance(exc, ApiException):
                        raise _explain(exc, f"patch Config {ns}/{name} (server dry run)") from exc
                    raise
            elif dry_run == "client":
                after = copy.deepcopy(obj)
                after["metadata"]["annotations"] = {
                    **(obj["metadata"].get("annotations") or {}),
                    **annotations,
                }
                after["spec"] = {**(obj.get("spec") or {}), "data": target.data}
            else:
                after = await _patch_unless_changed(kube, obj, annotations, target.data)
            if dry_run and args.output in ("table", "wide"):
                left = yaml.safe_dump(current, sort_keys=True).splitlines(keepends=True)
                right = yaml.safe_dump(target.data, sort_keys=True).splitlines(keepends=True)
                sys.stdout.writelines(
                    difflib.unified_diff(
                        left, right, f"{ns}/{name} (now)", f"{ns}/{name}@v{target.version}"
                    )
                )
                sys.stdout.write(
                    f"dry run ({dry_run}): would roll {ns}/{name} back to version "
                    f"{target.version}\n"
                )
                return 0
            if args.output in ("table", "wide"):
                sys.stdout.write(
                    f"{ns}/{name} rolled back to the data of version {target.version} "
                    f"(generation {after['metadata']['generation']}); "
                    "the operator records it as a new version\n"
                )
                return 0
            # like kubectl patch -o json: the object (as it is, or would be after a dry run)
            emit(after, args.output, names=[resource], command="rollback")
            return 0
        finally:
            await kube.close()

    return asyncio.run(_with_source(args, go))


ROLLOUT_POLL = 1.0  # seconds between reads of status.rollout while waiting (deadline-bounded)


def cmd_rollout(args: argparse.Namespace) -> int:
    """``rollout status``: like ``kubectl rollout status``, for the rollout of the
    Config's head to the workloads that consume it (``status.rollout``)."""
    ns, name = _ref(args.config, args)
    kubeconfig, context = _kube_target(args)

    async def go() -> int:
        from etcdconfig.kube import Kube, load_api_client

        kube = Kube(await load_api_client(kubeconfig, context, agent="etcdconfig-cli"))
        try:
            deadline = time.monotonic() + args.timeout
            said = ""
            while True:
                obj = await kube.get_config(ns, name)
                if obj is None:
                    raise Exit(EXIT_NOT_FOUND, f"Config {ns}/{name} does not exist in Kubernetes")
                status = obj.get("status") or {}
                head = status.get("version")
                r = status.get("rollout") or {}
                state = r.get("state") if r.get("version") == head else None
                if structured(args.output):
                    emit(r, args.output, command="rollout status")
                    return 0
                line = _rollout_line(ns, name, head, state, r)
                if line != said:
                    sys.stdout.write(line + "\n")
                    sys.stdout.flush()
                    said = line
                if state in ("Succeeded", "NoConsumers"):
                    return 0
                if state in ("RolledBack", "Failed"):
                    return EXIT_ERROR
                if not args.watch:
                    return EXIT_ERROR if state in ("Paused", "Held") else 0
                if time.monotonic() > deadline:
                    raise Exit(
                        EXIT_ERROR,
                        f"timed out after {args.timeout:g}s waiting for the rollout of "
                        f"{ns}/{name} version {head}",
                    )
                await asyncio.sleep(ROLLOUT_POLL)
        finally:
            await kube.close()

    return asyncio.run(go())


def _rollout_line(ns: str, name: str, head: Any, state: Any, r: dict[str, Any]) -> str:
    ref = f"{ns}/{name}"
    targets = r.get("summary") or ""
    if head is None:
        return f"Waiting for {ref} to be recorded"
    if state is None:
        return f"Waiting for the rollout of {ref} version {head} to start"
    if state == "Rolling":
        return f"Waiting for the rollout of {ref} version {head}: {targets}"
    if state == "Succeeded":
        return f"rollout of {ref} version {head} succeeded: {targets}"
    if state == "NoConsumers":
        return f"{ref} version {head}: no workload names it in etcdconfig.io/configs"
    said = {"RolledBack": "rolled back"}.get(str(state), str(state).lower())
    return f"rollout of {ref} version {head} {said}: {r.get('message') or ''}"


def cmd_version(args: argparse.Namespace) -> int:
    fmt = args.output if args.output not in ("table", "wide", "name") else "yaml"
    emit({"version": __version__}, fmt)
    return 0


def cmd_completion(args: argparse.Namespace) -> int:
    from etcdconfig.cli.completion import script

    sys.stdout.write(script(build_parser(), args.shell))
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    from etcdconfig.devenv.cli import main as dev_main

    return int(dev_main(args.dev_args, prog="etcdconfig dev") or 0)


# --- parser ----------------------------------------------------------------------------------

# flags every command takes, before or after the command name (like kubectl): defaults
# are filled in after parsing, so a value given before the command is never reset
GLOBAL_DEFAULTS: dict[str, Any] = {
    "debug": False,
    "output": "table",
    "namespace": None,
    "kubeconfig": None,
    "context": None,
    "etcd_endpoints": None,
    "etcd_prefix": None,
    "etcd_ca_file": None,
    "etcd_cert_file": None,
    "etcd_key_file": None,
    "etcd_username": None,
    "etcd_password": None,
}


def _global_flags(p: argparse.ArgumentParser) -> None:
    s = argparse.SUPPRESS
    p.add_argument("--debug", action="store_true", default=s, help="show tracebacks")
    p.add_argument(
        "-o",
        "--output",
        type=output_format,
        default=s,
        metavar="FORMAT",
        help="table (default), wide, json, yaml, name, or jsonpath=TEMPLATE",
    )
    p.add_argument(
        "-n",
        "--namespace",
        default=s,
        help="namespace for a bare NAME (default: the kubeconfig context's, else default)",
    )
    k = p.add_argument_group(
        "Kubernetes (history, show, diff and rollback read the history API with it)"
    )
    k.add_argument(
        "--kubeconfig", default=s, help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config)"
    )
    k.add_argument("--context", default=s, help="kubeconfig context (default: its current one)")
    g = p.add_argument_group(
        "etcd (defaults from ETCDCONFIG_* environment variables; with endpoints, history, "
        "show, diff and rollback read etcd instead of the history API)"
    )
    g.add_argument(
        "--etcd-endpoints",
        dest="etcd_endpoints",
        default=s,
        help="comma-separated host:port list (ETCDCONFIG_ETCD_ENDPOINTS)",
    )
    g.add_argument(
        "--prefix", dest="etcd_prefix", default=s, help="key prefix (default /etcdconfig)"
    )
    g.add_argument("--etcd-ca-file", dest="etcd_ca_file", default=s)
    g.add_argument("--etcd-cert-file", dest="etcd_cert_file", default=s)
    g.add_argument("--etcd-key-file", dest="etcd_key_file", default=s)
    g.add_argument("--etcd-username", dest="etcd_username", default=s)
    g.add_argument(
        "--etcd-password", dest="etcd_password", default=s, help="prefer ETCDCONFIG_ETCD_PASSWORD"
    )


def _count(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="etcdconfig", description=__doc__.split("\n")[0] if __doc__ else None
    )
    _global_flags(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str, fn: Callable[[argparse.Namespace], int], help_: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(fn=fn)
        _global_flags(p)
        return p

    p = command("run", cmd_run, "run the operator")
    p.add_argument("--namespaces", help="comma-separated namespaces to watch (default: all)")
    p.add_argument("--replica-id", dest="replica_id")
    p.add_argument("--lock-ttl", dest="lock_ttl", type=int)
    p.add_argument("--acquire-timeout", dest="acquire_timeout", type=float)
    p.add_argument("--hold-timeout", dest="hold_timeout", type=float)
    p.add_argument(
        "--etcd-wait",
        dest="etcd_wait",
        type=float,
        help="seconds to keep retrying an etcd that does not answer at start-up "
        "(default 0: fail at once)",
    )
    p.add_argument("--resync-interval", dest="resync_interval", type=float)
    p.add_argument("--integrity-interval", dest="integrity_interval", type=float)
    p.add_argument(
        "--resync-full-every",
        dest="resync_full_every",
        type=int,
        help="reconcile a settled, unchanged Config in full only every N resync rounds "
        "(default 10; 1: every round)",
    )
    p.add_argument(
        "--api-connections",
        dest="api_connections",
        type=int,
        help="connections to the Kubernetes API per client, besides watch streams: "
        "requests beyond them wait (default 32)",
    )
    p.add_argument(
        "--space-check-interval",
        dest="space_check_interval",
        type=float,
        help="seconds between checks of etcd's database size and alarms (default 30)",
    )
    p.add_argument(
        "--space-warn-ratio",
        dest="space_warn_ratio",
        type=float,
        help="share of etcd's --quota-backend-bytes at which the operator warns (default 0.8)",
    )
    p.add_argument("--http-addr", dest="http_addr")
    p.add_argument("--http-port", dest="http_port", type=int)
    p.add_argument("--webhook", dest="webhook_enabled", action="store_true", default=None)
    p.add_argument("--webhook-addr", dest="webhook_addr")
    p.add_argument("--webhook-port", dest="webhook_port", type=int)
    p.add_argument("--webhook-cert-file", dest="webhook_cert_file")
    p.add_argument("--webhook-key-file", dest="webhook_key_file")
    p.add_argument(
        "--history-api",
        dest="history_api_enabled",
        action="store_true",
        default=None,
        help="serve history.etcdconfig.io behind an APIService (docs/history-api.md)",
    )
    p.add_argument("--history-api-addr", dest="history_api_addr")
    p.add_argument("--history-api-port", dest="history_api_port", type=int)
    p.add_argument("--history-api-cert-file", dest="history_api_cert_file")
    p.add_argument("--history-api-key-file", dest="history_api_key_file")
    p.add_argument(
        "--history-api-authz-ttl",
        dest="history_api_authz_ttl",
        type=float,
        help="seconds a SubjectAccessReview answer is reused (default 10)",
    )
    p.add_argument("--log-format", dest="log_format", choices=("json", "text"))
    p.add_argument("--log-level", dest="log_level", choices=("debug", "info", "warning", "error"))

    p = command(
        "history",
        cmd_history,
        "list the recorded versions of a Config, newest first, with its deletions and re-creations",
    )
    p.add_argument("config", metavar="NAMESPACE/NAME")
    p.add_argument("--limit", type=_count, default=50, help="versions per page (at least 1)")
    p.add_argument("--before", type=_count, help="page: versions older than this one")

    p = command("show", cmd_show, "print the data of a version (default: the head)")
    p.add_argument("config", metavar="NAMESPACE/NAME")
    p.add_argument("--version", type=_count)
    p.add_argument(
        "--full", action="store_true", help="the whole record (author, checksums, schema...)"
    )

    p = command(
        "diff",
        cmd_diff,
        "unified YAML diff between two versions (data, and the schema where recorded); "
        "exit 0 if equal, 1 if they differ",
    )
    p.add_argument("config", metavar="NAMESPACE/NAME")
    p.add_argument("from_version", metavar="FROM", type=_count, help="the older version")
    p.add_argument("to_version", metavar="TO", type=_count, help="the newer version")
    p.add_argument("--no-color", action="store_true")

    p = command(
        "rollback",
        cmd_rollback,
        "roll a Config back to the data of version N (records a new version)",
    )
    p.add_argument("config", metavar="NAMESPACE/NAME")
    p.add_argument("--to", type=_count, required=True, metavar="N")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--dry-run",
        choices=("none", "client", "server"),
        default="none",
        help="client (also a bare --dry-run): show the change, send nothing; server: "
        "send it to the API server as a dry run (admission checks it), persist nothing",
    )
    mode.add_argument("--print", action="store_true", help="print the manifest to commit (GitOps)")
    p.add_argument(
        "--force",
        action="store_true",
        help="roll back live even when a GitOps tool (Flux, Argo CD) applies the Config "
        "and would revert it at its next sync (refused without it)",
    )

    p = command(
        "rollout",
        cmd_rollout,
        "rollout status: wait for the head's rollout to the consuming workloads "
        "(like kubectl rollout status); exit 0 when it succeeded, 1 when it failed",
    )
    p.add_argument("action", choices=("status",))
    p.add_argument("config", metavar="NAMESPACE/NAME")
    p.add_argument(
        "--watch",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="wait until the rollout ends (default); --no-watch: report once",
    )
    p.add_argument(
        "--timeout", type=float, default=600.0, metavar="SECONDS", help="give up after (600)"
    )

    p = command(
        "validate",
        cmd_validate,
        "validate Config manifests offline, as the admission webhook does (for CI)",
    )
    p.add_argument(
        "-f",
        "--filename",
        action="append",
        required=True,
        metavar="FILE",
        help="a YAML file of one or more documents; - for standard input (repeatable)",
    )

    p = command("verify", cmd_verify, "re-hash stored versions and the checksum chain")
    p.add_argument("config", nargs="?", metavar="NAMESPACE/NAME")
    p.add_argument("--all", action="store_true")

    p = command(
        "usage", cmd_usage, "show the store's bytes per Config and etcd's database size (etcd)"
    )
    p.add_argument("config", nargs="?", metavar="NAMESPACE/NAME", help="one Config (default: all)")
    p.add_argument(
        "--sort-by",
        choices=("name", "bytes"),
        default="name",
        help="order of the rows: by name (default) or largest first",
    )
    command("locks", cmd_locks, "show lock holders and waiters")
    command("members", cmd_members, "show live operator replicas")
    command("version", cmd_version, "print the version")
    p = command("completion", cmd_completion, "print a shell completion script")
    p.add_argument("shell", choices=("bash", "zsh"))

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


def parse(argv: list[str]) -> argparse.Namespace:
    # a bare --dry-run means client (like kubectl); --dry-run=VALUE needs the "="
    argv = ["--dry-run=client" if a == "--dry-run" else a for a in argv]
    args = build_parser().parse_args(argv)
    for key, value in GLOBAL_DEFAULTS.items():
        if not hasattr(args, key):
            setattr(args, key, value)
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["dev"]:  # everything after `dev` (even --help) belongs to the dev CLI
        return cmd_dev(argparse.Namespace(dev_args=argv[1:]))
    args = parse(argv)
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
