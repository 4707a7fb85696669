"""The history API: ``history.etcdconfig.io/v1alpha1`` served to the Kubernetes API
server's aggregation layer (docs/history-api.md is the contract).

Three checks stand between a request and a record, in this order:

1. authentication — the TLS client certificate must be the API server's front-proxy
   certificate (signed by the requestheader CA of ``kube-system/
   extension-apiserver-authentication``, common name among the allowed names); the user
   is then read from the request headers that ConfigMap names;
2. authorization — a ``SubjectAccessReview`` for the user, verb, resource, namespace
   and name, cached for ``authz_ttl`` seconds;
3. verification — every record served passes :func:`etcdconfig.store.integrity.
   load_record` against what points at it (the head, or its successor's
   ``parentChecksum``), read at the same etcd revision; a record that fails is refused
   with the verify hint, never served.

Read-only: ``get`` and ``list`` of ``configversions`` and ``confighistories``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import logging
import re
import ssl
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from etcdconfig.errors import Compacted, CorruptRecord, EtcdConfigError
from etcdconfig.etcd import prefix_end
from etcdconfig.rollout import outcomes
from etcdconfig.store import Head
from etcdconfig.store.integrity import VERIFY_HINT, describe, load_record
from etcdconfig.store.keys import Keys
from etcdconfig.store.records import Incarnation

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
    from pathlib import Path

    from etcdconfig.etcd import EtcdClient
    from etcdconfig.store import VersionRecord

log = logging.getLogger("etcdconfig.history_api")

GROUP = "history.etcdconfig.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CONFIG_LABEL = "etcdconfig.io/config"
UID_LABEL = "etcdconfig.io/uid"
AUTH_CONFIGMAP = ("kube-system", "extension-apiserver-authentication")
# the keys of an object that are not the stored record (docs/history-api.md)
ENVELOPE = ("apiVersion", "kind", "metadata", "config", "verified")
_UID_NAMESPACE = uuid.UUID("6f1c2a4e-2f64-4d0e-9d8e-0b8b6f0c6a11")
_VERSION_NAME = re.compile(r"^(?P<config>.+)\.v(?P<version>[1-9][0-9]{0,18})$")
_MAX_LIMIT = 500  # one page at most, whatever `limit` asks
_MAX_UNPAGED = 5000  # a list without `limit` holding more fails (413), never cut silently

RESOURCES: dict[str, dict[str, Any]] = {
    "configversions": {
        "name": "configversions",
        "singularName": "configversion",
        "namespaced": True,
        "kind": "ConfigVersion",
        "verbs": ["get", "list"],
        "shortNames": ["cfgver"],
        "categories": ["etcdconfig"],
    },
    "confighistories": {
        "name": "confighistories",
        "singularName": "confighistory",
        "namespaced": True,
        "kind": "ConfigHistory",
        "verbs": ["get", "list"],
        "categories": ["etcdconfig"],
    },
}


# --- errors as Kubernetes Status objects ------------------------------------------------------


class ApiError(Exception):
    """Answered as a ``v1`` ``Status`` with ``code`` and ``reason``."""

    def __init__(
        self, code: int, reason: str, message: str, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            obj["details"] = self.details
        return obj


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status, body=json.dumps(obj).encode(), content_type="application/json"
    )


# --- authentication: the front proxy ----------------------------------------------------------


@dataclass(frozen=True)
class User:
    name: str
    groups: tuple[str, ...] = ()
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()


@dataclass(frozen=True)
class RequestHeaderConfig:
    """What ``extension-apiserver-authentication`` says about the front proxy."""

    ca_pem: str
    allowed_names: tuple[str, ...] = ()
    username_headers: tuple[str, ...] = ("X-Remote-User",)
    group_headers: tuple[str, ...] = ("X-Remote-Group",)
    extra_prefixes: tuple[str, ...] = ("X-Remote-Extra-",)

    @classmethod
    def from_configmap(cls, data: Mapping[str, str]) -> RequestHeaderConfig:
        ca = data.get("requestheader-client-ca-file", "").strip()
        where = "/".join(AUTH_CONFIGMAP)
        if not ca:
            raise EtcdConfigError(
                f"ConfigMap {where} has no requestheader-client-ca-file: the API server "
                "runs without the aggregation layer's front proxy (--requestheader-client-"
                "ca-file, --proxy-client-cert-file), so nothing can call the history API"
            )

        def names(key: str, default: tuple[str, ...]) -> tuple[str, ...]:
            raw = data.get(key)
            if raw is None:
                return default
            try:
                value = json.loads(raw)
            except ValueError as exc:
                raise EtcdConfigError(f"ConfigMap {where}: {key} is not a JSON list") from exc
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise EtcdConfigError(f"ConfigMap {where}: {key} is not a list of strings")
            return tuple(value)

        return cls(
            ca_pem=ca,
            allowed_names=names("requestheader-allowed-names", ()),
            username_headers=names("requestheader-username-headers", ("X-Remote-User",)),
            group_headers=names("requestheader-group-headers", ("X-Remote-Group",)),
            extra_prefixes=names("requestheader-extra-headers-prefix", ("X-Remote-Extra-",)),
        )

    def authenticate(self, peercert: dict[str, Any] | None, headers: Any) -> User:
        """The user the front proxy vouches for; ``ApiError(401)`` unless the TLS client
        certificate (already verified against ``ca_pem`` by the handshake) is one of
        the allowed names and a user header is set."""
        if not peercert:
            raise ApiError(401, "Unauthorized", "Unauthorized: no front-proxy client certificate")
        common_names = [
            value
            for rdn in peercert.get("subject", ())
            for key, value in rdn
            if key == "commonName"
        ]
        # the last common name counts, as for kube-apiserver (Go's Subject.CommonName)
        common_names = common_names[-1:]
        if self.allowed_names and not any(cn in self.allowed_names for cn in common_names):
            raise ApiError(
                401,
                "Unauthorized",
                f"Unauthorized: client certificate {common_names or '(no common name)'} is "
                "not an allowed front-proxy name",
            )
        name = next((headers.get(h) for h in self.username_headers if headers.get(h)), None)
        if not name:
            raise ApiError(401, "Unauthorized", "Unauthorized: no user in the request headers")
        groups = tuple(g for h in self.group_headers for g in headers.getall(h, ()) if g)
        extra: dict[str, list[str]] = {}
        for key in headers:
            for prefix in self.extra_prefixes:
                if key.lower().startswith(prefix.lower()):
                    # as kube-apiserver: lower-cased, then unescaped
                    extra_key = urllib.parse.unquote(key[len(prefix) :].lower())
                    extra.setdefault(extra_key, []).extend(headers.getall(key, ()))
        return User(
            name=name,
            groups=groups,
            extra=tuple(sorted((k, tuple(dict.fromkeys(v))) for k, v in extra.items())),
        )


# --- authorization: SubjectAccessReview, cached -------------------------------------------


@dataclass(frozen=True)
class Access:
    verb: str
    resource: str
    namespace: str  # "" for every namespace
    name: str = ""

    def forbidden(self, user: User, reason: str) -> ApiError:
        """The message the API server itself writes for a refusal."""
        target = f"{self.resource}.{GROUP}"
        if self.name:
            target += f' "{self.name}"'
        where = (
            f' in the namespace "{self.namespace}"' if self.namespace else " at the cluster scope"
        )
        message = (
            f'{target} is forbidden: User "{user.name}" cannot {self.verb} resource '
            f'"{self.resource}" in API group "{GROUP}"{where}'
        )
        if reason:
            message += f": {reason}"
        details = {"group": GROUP, "kind": self.resource}
        if self.name:
            details["name"] = self.name
        return ApiError(403, "Forbidden", message, details)


@dataclass
class Authorizer:
    """``SubjectAccessReview`` per (user, access), answers kept ``ttl`` seconds."""

    review: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
    ttl: float = 10.0
    timeout: float = 5.0  # seconds for one SubjectAccessReview; then 503, not cached
    max_entries: int = 10_000
    clock: Callable[[], float] = time.monotonic
    _cache: dict[tuple[User, Access], tuple[float, bool, str]] = field(default_factory=dict)

    async def check(self, user: User, access: Access) -> None:
        """Return if allowed; raise the standard ``Forbidden`` otherwise."""
        key = (user, access)
        now = self.clock()
        hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            allowed, reason = hit[1], hit[2]
        else:
            allowed, reason = await self._ask(user, access)
            if len(self._cache) >= self.max_entries:
                self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
                if len(self._cache) >= self.max_entries:
                    self._cache.clear()
            self._cache[key] = (now + self.ttl, allowed, reason)
        if not allowed:
            raise access.forbidden(user, reason)

    async def _ask(self, user: User, access: Access) -> tuple[bool, str]:
        attributes: dict[str, Any] = {
            "verb": access.verb,
            "group": GROUP,
            "version": VERSION,
            "resource": access.resource,
        }
        if access.namespace:
            attributes["namespace"] = access.namespace
        if access.name:
            attributes["name"] = access.name
        spec: dict[str, Any] = {
            "user": user.name,
            "groups": list(user.groups),
            "resourceAttributes": attributes,
        }
        if user.extra:
            spec["extra"] = {k: list(v) for k, v in user.extra}
        try:
            async with asyncio.timeout(self.timeout):
                status = await self.review(
                    {
                        "apiVersion": "authorization.k8s.io/v1",
                        "kind": "SubjectAccessReview",
                        "spec": spec,
                    }
                )
        except Exception as exc:  # the API server is away: refuse, do not cache
            why = str(exc) or f"no answer within {self.timeout:g}s"
            log.warning("SubjectAccessReview failed", extra={"error": why})
            raise ApiError(
                503,
                "ServiceUnavailable",
                f"cannot check access with the API server (SubjectAccessReview): {why}",
            ) from exc
        allowed = bool(status.get("allowed")) and not status.get("denied")
        return allowed, str(status.get("reason") or "")


# --- the store, read and verified --------------------------------------------------------------


def _token(obj: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj, sort_keys=True).encode()).decode()


def _untoken(token: str, query: str, namespace: str) -> dict[str, Any]:
    """The position a continue token names, checked: made for this very query, and
    inside the namespace the request was authorized for (a token is not signed: it only
    says where to go on, and it may only go on inside what the user may list)."""
    try:
        obj = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "BadRequest", "the continue token is not valid") from exc
    if not isinstance(obj, dict) or obj.get("q") != query:
        raise ApiError(
            400, "BadRequest", "the continue token belongs to another list (namespace or selector)"
        )
    ns, config, before = obj.get("ns"), obj.get("c"), obj.get("b", 0)
    if (
        not isinstance(ns, str)
        or not isinstance(config, str)
        or type(before) is not int
        or before < 0
        or not ns
        or "/" in ns + config
    ):
        raise ApiError(400, "BadRequest", "the continue token is not valid")
    if namespace and ns != namespace:
        raise ApiError(400, "BadRequest", "the continue token belongs to another namespace")
    return obj


def _timestamp(recorded_at: str) -> str:
    """RFC 3339 to the second, as metadata timestamps are."""
    return recorded_at[:19] + "Z" if len(recorded_at) >= 19 else recorded_at


def version_object(namespace: str, config: str, record: VersionRecord) -> dict[str, Any]:
    """A ``ConfigVersion``: the stored record, field for field, in an envelope."""
    meta: dict[str, Any] = {
        "name": f"{config}.v{record.version}",
        "namespace": namespace,
        "uid": str(uuid.uuid5(_UID_NAMESPACE, f"{record.uid}/{record.version}")),
        "resourceVersion": str(record.mod_revision),
        "creationTimestamp": _timestamp(record.recorded_at),
        "labels": {CONFIG_LABEL: config, UID_LABEL: record.uid},
    }
    return {
        "apiVersion": API_VERSION,
        "kind": "ConfigVersion",
        "metadata": meta,
        "config": config,
        "verified": True,
        **record.raw,
    }


@dataclass
class HistoryStore:
    """Verified reads of versions and heads (see the module's docstring)."""

    client: EtcdClient
    prefix: str = "/etcdconfig"
    keys: Keys = field(init=False)

    def __post_init__(self) -> None:
        self.keys = Keys(self.prefix)

    async def configs(
        self, namespace: str, start: tuple[str, str] | None = None
    ) -> AsyncIterator[tuple[str, str]]:
        """(namespace, name) of every Config with anything stored, in the store's key
        order, from ``start`` on (inclusive): one short range read per Config, skipping
        over its keys, read as far as the caller iterates."""
        root = self.keys.configs()
        base = root + (f"{namespace}/".encode() if namespace else b"")
        end = prefix_end(base)
        key = f"{self.keys.config(*start)}/".encode() if start is not None else base
        while key < end:
            res = await self.client.range(key, end, limit=1, keys_only=True)
            if not res.kvs:
                return
            parts = res.kvs[0].key[len(root) :].decode(errors="replace").split("/")
            if len(parts) < 3:  # not a Config's key: step over it
                key = res.kvs[0].key + b"\0"
                continue
            yield parts[0], parts[1]
            key = prefix_end(f"{self.keys.config(parts[0], parts[1])}/".encode())

    async def _head(self, ns: str, name: str, revision: int = 0) -> tuple[Head | None, int]:
        kv, rev = await self.client.get(self.keys.head(ns, name), revision=revision)
        head = (
            Head.parse(kv.value, mod_revision=kv.mod_revision, what=f"head of {ns}/{name}")
            if kv
            else None
        )
        return head, rev

    def _expected(self, head: Head | None, version: int) -> tuple[str | None, str | None]:
        if head is not None and head.version == version:
            return head.record_checksum, head.checksum
        return None, None

    async def versions(
        self, ns: str, name: str, *, limit: int, before: int | None
    ) -> tuple[list[VersionRecord], bool, int]:
        """Up to ``limit`` versions below ``before``, newest first, each verified; and
        whether more remain, and the revision read at."""
        head, revision = await self._head(ns, name)
        start = self.keys.versions(ns, name)
        end = self.keys.version(ns, name, before) if before else prefix_end(start)
        res = await self.client.range(start, end, limit=limit, descending=True, revision=revision)
        successor: VersionRecord | None = None
        if res.kvs and before:
            # the first record's successor is on the previous page: read it again, here
            kv, _ = await self.client.get(self.keys.version(ns, name, before), revision=revision)
            if kv is not None:
                successor = self._load(ns, name, before, kv.value, kv.mod_revision, head, None)
        out: list[VersionRecord] = []
        for kv in res.kvs:
            number = int(kv.key.decode().rsplit("/", 1)[1])
            record = self._load(ns, name, number, kv.value, kv.mod_revision, head, successor)
            out.append(record)
            successor = record
        return out, bool(res.more), revision

    def _load(
        self,
        ns: str,
        name: str,
        version: int,
        raw: bytes,
        mod_revision: int,
        head: Head | None,
        successor: VersionRecord | None,
    ) -> VersionRecord:
        newest = head.version if head is not None else 0
        if version > newest:
            # every commit writes the version and the head in one transaction, read here
            # at one revision: a record above the head was written by something else
            raise CorruptRecord(
                f"{describe(ns, name, version)}: above the head (version {newest}); no "
                f"commit recorded it — {VERIFY_HINT}"
            )
        record_checksum, data_checksum = self._expected(head, version)
        if record_checksum is None and successor is not None and successor.version == version + 1:
            record_checksum = successor.parent_checksum
        return load_record(
            raw,
            what=describe(ns, name, version),
            version=version,
            expected_record_checksum=record_checksum,
            expected_checksum=data_checksum,
            mod_revision=mod_revision,
        )

    async def version(self, ns: str, name: str, version: int) -> VersionRecord | None:
        head, revision = await self._head(ns, name)
        kv, _ = await self.client.get(self.keys.version(ns, name, version), revision=revision)
        if kv is None:
            return None
        successor = None
        if head is None or head.version != version:
            nxt, _ = await self.client.get(
                self.keys.version(ns, name, version + 1), revision=revision
            )
            if nxt is not None:
                successor = self._load(
                    ns, name, version + 1, nxt.value, nxt.mod_revision, head, None
                )
        return self._load(ns, name, version, kv.value, kv.mod_revision, head, successor)

    async def history(self, ns: str, name: str) -> dict[str, Any] | None:
        """A ``ConfigHistory`` (None when nothing of ``ns/name`` is stored)."""
        head, revision = await self._head(ns, name)
        res = await self.client.range(
            self.keys.incarnations(ns, name),
            prefix_end(self.keys.incarnations(ns, name)),
            revision=revision,
        )
        incarnations = sorted(
            (
                Incarnation.parse(
                    kv.value, mod_revision=kv.mod_revision, what=f"incarnation of {ns}/{name}"
                )
                for kv in res.kvs
            ),
            key=lambda i: (i.first_version, i.recorded_at),
        )
        start = self.keys.versions(ns, name)
        low = await self.client.range(
            start, prefix_end(start), limit=1, keys_only=True, revision=revision
        )
        high = await self.client.range(
            start, prefix_end(start), limit=1, keys_only=True, descending=True, revision=revision
        )
        if head is None and not incarnations and not low.kvs:
            return None
        if head is None:
            state = "none"
        elif head.purged:
            state = "purged"
        elif head.deleted:
            state = "deleted"
        else:
            state = "live"
        obj: dict[str, Any] = {
            "apiVersion": API_VERSION,
            "kind": "ConfigHistory",
            "metadata": {
                "name": name,
                "namespace": ns,
                "resourceVersion": str(head.mod_revision if head else revision),
            },
            "state": state,
            "head": head.to_json() if head else None,
            "incarnations": [i.to_json() for i in incarnations],
        }
        if head is not None:
            obj["metadata"]["creationTimestamp"] = _timestamp(
                incarnations[0].recorded_at if incarnations else head.recorded_at
            )
        if low.kvs and high.kvs:
            obj["retained"] = {
                "oldest": int(low.kvs[0].key.decode().rsplit("/", 1)[1]),
                "newest": int(high.kvs[0].key.decode().rsplit("/", 1)[1]),
            }
        rollouts = self.keys.rollouts(ns, name)
        res = await self.client.range(rollouts, prefix_end(rollouts), revision=revision)
        obj["rollouts"] = [o.to_json() for o in outcomes(kv.value for kv in res.kvs)]
        return obj


# --- the HTTP API ---------------------------------------------------------------------------


def _column(
    name: str, type_: str, description: str, priority: int = 0, fmt: str = ""
) -> dict[str, Any]:
    col: dict[str, Any] = {
        "name": name,
        "type": type_,
        "format": fmt,
        "description": description,
        "priority": priority,
    }
    return col


VERSION_COLUMNS = [
    _column("Name", "string", "<config>.v<version>", fmt="name"),
    _column("Version", "integer", "the version number"),
    _column("Generation", "integer", "the Config's metadata.generation recorded"),
    _column("Checksum", "string", "sha256 of the data (first 12 hex digits)"),
    _column("Recorded", "string", "when it was recorded"),
    _column("Author", "string", "the field manager of the change"),
    _column("Origin", "string", "create, update, rollback (from vN)"),
    _column("Cause", "string", "the change cause annotation"),
    _column("UID", "string", "the Config's uid", priority=1),
    _column("Recorded-By", "string", "the operator replica that recorded it", priority=1),
    _column("Fencing", "integer", "the lock revision that fenced the write", priority=1),
]
HISTORY_COLUMNS = [
    _column("Name", "string", "the Config's name", fmt="name"),
    _column("State", "string", "live, deleted, purged"),
    _column("Head", "integer", "the newest version"),
    _column("Retained", "string", "the versions the store holds"),
    _column("Incarnations", "integer", "creations of the Config under this name"),
    _column("Recorded", "string", "when the head was recorded"),
]


def _origin(obj: dict[str, Any]) -> str:
    origin = obj.get("origin")
    origin = origin if isinstance(origin, dict) else {}
    text = str(origin.get("kind", ""))
    if text == "rollback":
        text += f" from v{origin.get('fromVersion')}"
    return text


def _cells(obj: dict[str, Any]) -> list[Any]:
    if obj["kind"] == "ConfigVersion":
        author = obj.get("author")
        author = author if isinstance(author, dict) else {}
        return [
            obj["metadata"]["name"],
            obj["version"],
            obj["generation"],
            str(obj["checksum"]).split(":")[-1][:12],
            obj.get("recordedAt", ""),
            str(author.get("manager", "")),
            _origin(obj),
            str(author.get("changeCause", "")),
            obj["uid"],
            obj.get("recordedBy", ""),
            obj.get("fencingRevision", 0),
        ]
    head = obj.get("head") or {}
    retained = obj.get("retained")
    return [
        obj["metadata"]["name"],
        obj["state"],
        head.get("version", 0),
        f"{retained['oldest']}..{retained['newest']}" if retained else "<none>",
        len(obj["incarnations"]),
        head.get("recordedAt", ""),
    ]


def wants_table(accept: str) -> bool:
    return any(
        "as=Table" in part.replace(" ", "") and "g=meta.k8s.io" in part.replace(" ", "")
        for part in accept.split(",")
    )


def as_table(
    objects: Sequence[dict[str, Any]], resource: str, meta: dict[str, Any], include: str
) -> dict[str, Any]:
    rows = []
    for obj in objects:
        row: dict[str, Any] = {"cells": _cells(obj)}
        if include == "Object":
            row["object"] = obj
        elif include != "None":
            row["object"] = {
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": obj["metadata"],
            }
        rows.append(row)
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": meta,
        "columnDefinitions": VERSION_COLUMNS if resource == "configversions" else HISTORY_COLUMNS,
        "rows": rows,
    }


@dataclass(frozen=True)
class Selection:
    """What a list asks for: one Config (by label or field selector) or all, one
    version by name."""

    config: str | None = None
    name: str | None = None
    namespace: str | None = None

    @classmethod
    def parse(cls, resource: str, labels: str, fields: str) -> Selection:
        config: str | None = None
        name: str | None = None
        namespace: str | None = None
        supported = (
            f"supported: labelSelector {CONFIG_LABEL}=<config>, fieldSelector config=<config>, "
            "metadata.name=<name> or metadata.namespace=<namespace>"
        )
        for expr in filter(None, (e.strip() for e in labels.split(","))):
            key, op, value = _split_selector(expr)
            if key != CONFIG_LABEL or op not in ("=", "=="):
                raise ApiError(
                    400, "BadRequest", f"unsupported label selector {expr!r} ({supported})"
                )
            config = _one(config, value, expr)
        for expr in filter(None, (e.strip() for e in fields.split(","))):
            key, op, value = _split_selector(expr)
            if op not in ("=", "=="):
                raise ApiError(
                    400, "BadRequest", f"unsupported field selector {expr!r} ({supported})"
                )
            if key == "config" and resource == "configversions":
                config = _one(config, value, expr)
            elif key == "metadata.name":
                name = _one(name, value, expr)
            elif key == "metadata.namespace":
                namespace = _one(namespace, value, expr)
            else:
                raise ApiError(
                    400, "BadRequest", f"unsupported field selector {expr!r} ({supported})"
                )
        return cls(config=config, name=name, namespace=namespace)


def _split_selector(expr: str) -> tuple[str, str, str]:
    m = re.match(r"^([^=!]+?)\s*(==|=|!=)\s*(.*)$", expr)
    if not m:
        raise ApiError(400, "BadRequest", f"cannot parse selector {expr!r}")
    return m.group(1).strip(), m.group(2), m.group(3).strip()


def _one(current: str | None, value: str, expr: str) -> str:
    if current is not None and current != value:
        raise ApiError(400, "BadRequest", f"selector {expr!r} contradicts another one")
    return value


class HistoryApi:
    """The aiohttp application (``app()``) and its checks; :class:`HistoryApiServer`
    serves it over TLS."""

    def __init__(
        self,
        store: HistoryStore,
        authorizer: Authorizer,
        auth: Callable[[], RequestHeaderConfig | None],
    ) -> None:
        self.store = store
        self.authorizer = authorizer
        self.auth = auth
        self.auth_error: Callable[[], str] = lambda: ""

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors])
        r = app.router
        r.add_get("/apis", self.groups)
        r.add_get(f"/apis/{GROUP}", self.group)
        r.add_get(f"/apis/{GROUP}/{VERSION}", self.resources)
        r.add_get(f"/apis/{GROUP}/{VERSION}/{{resource}}", self.list_objects)
        r.add_get(
            f"/apis/{GROUP}/{VERSION}/namespaces/{{namespace}}/{{resource}}", self.list_objects
        )
        r.add_get(
            f"/apis/{GROUP}/{VERSION}/namespaces/{{namespace}}/{{resource}}/{{name}}",
            self.get_object,
        )
        r.add_route("*", "/{tail:.*}", self.other)
        return app

    @web.middleware
    async def _errors(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            self._user(request)  # every path, discovery too: only through the API server
            return await handler(request)
        except ApiError as exc:
            return _json(exc.status(), exc.code)
        except CorruptRecord as exc:
            log.error(
                "refused to serve a record that fails verification", extra={"error": str(exc)}
            )
            return _json(ApiError(500, "InternalError", str(exc)).status(), 500)
        except Compacted as exc:
            return _json(ApiError(410, "Expired", str(exc)).status(), 410)
        except EtcdConfigError as exc:
            log.warning("history API request failed", extra={"error": str(exc)})
            return _json(
                ApiError(503, "ServiceUnavailable", f"the store cannot be read: {exc}").status(),
                503,
            )

    def _user(self, request: web.Request) -> User:
        auth = self.auth()
        if auth is None:
            why = self.auth_error() or "not loaded yet"
            raise ApiError(
                503,
                "ServiceUnavailable",
                f"the front-proxy configuration (kube-system/extension-apiserver-"
                f"authentication) cannot be read: {why}",
            )
        peercert = request.transport.get_extra_info("peercert") if request.transport else None
        user: User = auth.authenticate(peercert, request.headers)
        return user

    async def groups(self, _: web.Request) -> web.Response:
        return _json({"kind": "APIGroupList", "apiVersion": "v1", "groups": [self._group()]})

    async def group(self, _: web.Request) -> web.Response:
        return _json({"kind": "APIGroup", "apiVersion": "v1", **self._group()})

    @staticmethod
    def _group() -> dict[str, Any]:
        gv = {"groupVersion": API_VERSION, "version": VERSION}
        return {"name": GROUP, "versions": [gv], "preferredVersion": gv}

    async def resources(self, _: web.Request) -> web.Response:
        return _json(
            {
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": API_VERSION,
                "resources": list(RESOURCES.values()),
            }
        )

    async def other(self, request: web.Request) -> web.Response:
        if request.method == "GET":
            raise ApiError(
                404,
                "NotFound",
                f"the server could not find the requested resource ({request.path})",
            )
        raise ApiError(
            405,
            "MethodNotAllowed",
            f"the history API is read-only: {request.method} is not supported",
        )

    def _resource(self, request: web.Request) -> str:
        resource = request.match_info["resource"]
        if resource not in RESOURCES:
            raise ApiError(
                404, "NotFound", f"the server could not find the requested resource ({resource})"
            )
        return resource

    async def get_object(self, request: web.Request) -> web.Response:
        resource = self._resource(request)
        ns, name = request.match_info["namespace"], request.match_info["name"]
        user = self._user(request)
        if request.query.get("watch") in ("1", "true"):
            raise ApiError(405, "MethodNotAllowed", "watch is not supported by the history API")
        await self.authorizer.check(user, Access("get", resource, ns, name))
        obj = await self._get(resource, ns, name)
        if obj is None:
            raise ApiError(
                404,
                "NotFound",
                f'{resource}.{GROUP} "{name}" not found',
                {"name": name, "group": GROUP, "kind": resource},
            )
        if wants_table(request.headers.get("Accept", "")):
            return _json(
                as_table(
                    [obj],
                    resource,
                    {"resourceVersion": obj["metadata"]["resourceVersion"]},
                    request.query.get("includeObject", "Metadata"),
                )
            )
        return _json(obj)

    async def _get(self, resource: str, ns: str, name: str) -> dict[str, Any] | None:
        if resource == "confighistories":
            return await self.store.history(ns, name)
        m = _VERSION_NAME.match(name)
        if m is None:
            return None
        config, number = m.group("config"), int(m.group("version"))
        record = await self.store.version(ns, config, number)
        return None if record is None else version_object(ns, config, record)

    async def list_objects(self, request: web.Request) -> web.Response:
        resource = self._resource(request)
        ns = request.match_info.get("namespace", "")
        user = self._user(request)
        q = request.query
        if q.get("watch") in ("1", "true"):
            raise ApiError(405, "MethodNotAllowed", "watch is not supported by the history API")
        await self.authorizer.check(user, Access("list", resource, ns))
        selection = Selection.parse(
            resource, q.get("labelSelector", ""), q.get("fieldSelector", "")
        )
        try:
            limit = int(q.get("limit", "0") or 0)
        except ValueError as exc:
            raise ApiError(
                400, "BadRequest", f"limit must be a whole number, got {q.get('limit')!r}"
            ) from exc
        if limit < 0:
            raise ApiError(400, "BadRequest", f"limit must not be negative, got {limit}")
        # no limit: the whole list, as Kubernetes answers it, up to a bound that fails
        # loudly (never a silent cut); a limit: pages of at most _MAX_LIMIT
        unpaged = limit == 0
        limit = _MAX_UNPAGED + 1 if unpaged else min(limit, _MAX_LIMIT)
        if selection.namespace is not None:
            if ns and selection.namespace != ns:
                return self._list_answer(request, resource, [], None, 0)
            ns = selection.namespace  # a cluster-wide list narrowed to one namespace
        query = hashlib.sha256(
            json.dumps([resource, ns, selection.config, selection.name]).encode()
        ).hexdigest()[:16]
        cont = _untoken(q["continue"], query, ns) if q.get("continue") else None
        if resource == "configversions":
            items, next_token, revision = await self._list_versions(
                ns, selection, limit, cont, query
            )
        else:
            items, next_token, revision = await self._list_histories(
                ns, selection, limit, cont, query
            )
        if unpaged and (len(items) > _MAX_UNPAGED or next_token):
            raise ApiError(
                413,
                "RequestEntityTooLarge",
                f"more than {_MAX_UNPAGED} {resource} match: list them in pages with limit "
                "and continue (kubectl does, --chunk-size)",
            )
        return self._list_answer(request, resource, items, next_token, revision)

    @staticmethod
    def _list_answer(
        request: web.Request,
        resource: str,
        items: list[dict[str, Any]],
        next_token: str | None,
        revision: int,
    ) -> web.Response:
        meta: dict[str, Any] = {"resourceVersion": str(revision)}
        if next_token:
            meta["continue"] = next_token
        if wants_table(request.headers.get("Accept", "")):
            include = request.query.get("includeObject", "Metadata")
            return _json(as_table(items, resource, meta, include))
        kind = RESOURCES[resource]["kind"]
        return _json(
            {"kind": f"{kind}List", "apiVersion": API_VERSION, "metadata": meta, "items": items}
        )

    async def _list_versions(
        self, ns: str, sel: Selection, limit: int, cont: dict[str, Any] | None, query: str
    ) -> tuple[list[dict[str, Any]], str | None, int]:
        if sel.name is not None:
            m = _VERSION_NAME.match(sel.name)
            if m is None or not ns or sel.config not in (None, m.group("config")):
                return [], None, 0
            obj = await self._get("configversions", ns, sel.name)
            return ([obj] if obj else []), None, 0
        start = (str(cont["ns"]), str(cont["c"])) if cont is not None else None
        before = int(cont["b"]) if cont is not None and cont.get("b") else None
        if sel.config is not None:
            if not ns:
                raise ApiError(400, "BadRequest", "selecting one Config needs a namespace")
            if start is not None and start != (ns, sel.config):
                raise ApiError(400, "BadRequest", "the continue token belongs to another Config")
            targets: AsyncIterator[tuple[str, str]] = _single((ns, sel.config))
        else:
            targets = self.store.configs(ns, start)
        items: list[dict[str, Any]] = []
        revision = 0
        full: tuple[str, str, int] | None = None  # where the last page ended
        async for target in targets:
            if full is not None:  # the page is full and another Config follows
                return (
                    items,
                    _token({"q": query, "ns": target[0], "c": target[1], "b": 0}),
                    revision,
                )
            b = before if target == start else None
            records, more, revision = await self.store.versions(
                *target, limit=limit - len(items), before=b
            )
            items.extend(version_object(target[0], target[1], r) for r in records)
            if len(items) >= limit:
                if more:
                    last = records[-1].version
                    return (
                        items,
                        _token({"q": query, "ns": target[0], "c": target[1], "b": last}),
                        revision,
                    )
                full = (target[0], target[1], 0)
        return items, None, revision

    async def _list_histories(
        self, ns: str, sel: Selection, limit: int, cont: dict[str, Any] | None, query: str
    ) -> tuple[list[dict[str, Any]], str | None, int]:
        if sel.name is not None:
            if not ns:
                return [], None, 0
            obj = await self.store.history(ns, sel.name)
            return ([obj] if obj else []), None, 0
        start = (str(cont["ns"]), str(cont["c"])) if cont is not None else None
        items: list[dict[str, Any]] = []
        async for target in self.store.configs(ns, start):
            if len(items) >= limit:  # full, and another Config follows: it starts the next page
                return items, _token({"q": query, "ns": target[0], "c": target[1]}), 0
            obj = await self.store.history(*target)
            if obj is not None:
                items.append(obj)
        return items, None, 0


async def _single(target: tuple[str, str]) -> AsyncIterator[tuple[str, str]]:
    yield target


# --- serving over TLS -----------------------------------------------------------------------


class HistoryApiServer:
    """Serves :class:`HistoryApi` on ``addr:port`` over TLS; the serving pair and the
    front-proxy CA are reloaded in place (an SNI callback hands every new connection
    the newest context), so rotating either never drops the listener."""

    def __init__(
        self,
        api: HistoryApi,
        *,
        addr: str,
        port: int,
        cert_file: Path,
        key_file: Path,
        load_auth: Callable[[], Awaitable[RequestHeaderConfig]],
        check_interval: float = 5.0,
        auth_interval: float = 60.0,
    ) -> None:
        self.api, self.addr, self.port = api, addr, port
        self.cert_file, self.key_file = cert_file, key_file
        self.load_auth, self.check_interval, self.auth_interval = (
            load_auth,
            check_interval,
            auth_interval,
        )
        self.auth: RequestHeaderConfig | None = None
        self.auth_error = ""  # why the front-proxy configuration is not loaded (503s say it)
        self.current: ssl.SSLContext | None = None
        self._files_digest = ""
        self.bound_port = 0
        api.auth = lambda: self.auth
        api.auth_error = lambda: self.auth_error
        self._context()  # a pair that does not load fails the start-up

    def _context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(purpose=ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        # a client certificate is asked for and, when sent, must chain to the front
        # proxy's CA; without one the request is refused by authenticate() (401)
        context.verify_mode = ssl.CERT_OPTIONAL
        if self.auth is not None:
            context.load_verify_locations(cadata=self.auth.ca_pem)
        return context

    def _digest(self) -> str:
        h = hashlib.sha256()
        for path in (self.cert_file, self.key_file):
            h.update(path.read_bytes())
        if self.auth is not None:
            h.update(self.auth.ca_pem.encode())
        return h.hexdigest()

    async def _reload_auth(self) -> None:
        try:
            self.auth = await self.load_auth()
            self.auth_error = ""
        except Exception as exc:  # the API server's errors come in many types
            self.auth_error = str(exc) or type(exc).__name__
            log.warning(
                "cannot read the front-proxy configuration (kube-system/"
                "extension-apiserver-authentication); keeping the last one",
                extra={"error": self.auth_error, "loaded": self.auth is not None},
            )

    def _select(self, conn: Any, server_name: str | None, context: ssl.SSLContext) -> None:
        if self.current is not None:
            conn.context = self.current

    async def run(self) -> None:
        """Serve until cancelled (a supervised background task).

        The front-proxy configuration is re-read every ``auth_interval`` seconds, and
        every ``check_interval`` until it first loads: a cluster that cannot give it
        (the ConfigMap missing, RBAC to read it missing) gets 503s that say so —
        and an APIService the API server reports unavailable — but this task keeps
        running, so the replica's readiness (which the admission webhook's Service
        follows) does not depend on the history API."""
        await self._reload_auth()
        self.current = self._context()
        self._files_digest = self._digest()
        listener = self._context()
        listener.sni_callback = self._select
        runner = web.AppRunner(self.api.app(), access_log=None, handle_signals=False)
        await runner.setup()
        try:
            site = web.TCPSite(
                runner, self.addr or None, self.port, ssl_context=listener, reuse_address=True
            )
            await site.start()
            sockets = getattr(site._server, "sockets", None) or ()  # the port bound for 0 (tests)
            if sockets:
                self.bound_port = int(sockets[0].getsockname()[1])
            log.info("history API serving", extra={"port": self.bound_port or self.port})
            next_auth = time.monotonic() + self.auth_interval
            while True:
                await asyncio.sleep(self.check_interval)
                if self.auth is None or time.monotonic() >= next_auth:
                    next_auth = time.monotonic() + self.auth_interval
                    await self._reload_auth()
                try:
                    digest = self._digest()
                    if digest == self._files_digest:
                        continue
                    self.current = self._context()
                except (OSError, ssl.SSLError) as exc:
                    log.warning(
                        "history API certificate or CA changed but does not load yet; "
                        "still serving the previous one",
                        extra={"error": str(exc)},
                    )
                    continue
                self._files_digest = digest
                log.info("history API certificate or front-proxy CA reloaded")
        finally:
            with contextlib.suppress(Exception):
                await runner.cleanup()
