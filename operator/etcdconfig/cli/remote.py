"""How the CLI reaches the cluster: the kubeconfig (its namespace, as kubectl finds it)
and the history API, ``history.etcdconfig.io/v1alpha1`` (docs/history-api.md).

``history``, ``show``, ``diff`` and ``rollback`` read versions through the history API
with the user's kubeconfig, unless etcd endpoints are given (``--etcd-endpoints``,
``ETCDCONFIG_ETCD_ENDPOINTS``): then they read etcd directly, as admins do.

The API serves every stored record field for field: a ``ConfigVersion`` without
``apiVersion``, ``kind``, ``metadata``, ``config`` and ``verified`` is the stored record.
The server verifies what it serves; the CLI checks again, exactly as it checks a record
read from etcd (``store/integrity.py``): its data against its ``checksum`` and, for the
head's version, the whole record against the head's ``recordChecksum``. A record that
fails is ``CorruptRecord`` (exit 3), whichever transport read it.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import yaml

from etcdconfig.canonical import loads
from etcdconfig.controller.history_api import API_VERSION, CONFIG_LABEL, ENVELOPE, GROUP, VERSION
from etcdconfig.errors import CorruptRecord, EtcdConfigError, NotFound
from etcdconfig.rollout import Outcome, ordered
from etcdconfig.store.integrity import VERIFY_HINT, describe, load_record
from etcdconfig.store.records import Head, Incarnation, dump

if TYPE_CHECKING:
    from kubernetes_asyncio.client import ApiClient

    from etcdconfig.store import VersionRecord

__all__ = [
    "APISERVICE",
    "API_VERSION",
    "CONFIG_LABEL",
    "GROUP",
    "NOT_INSTALLED",
    "UNAVAILABLE",
    "VERSION",
    "HistoryApi",
    "HistoryApiError",
    "KubeContext",
    "RemoteHistory",
    "api_error",
    "connect",
    "history_of",
    "kube_context",
    "record_of",
]

APISERVICE = f"{VERSION}.{GROUP}"

ETCD_HINT = "admins can read etcd directly with --etcd-endpoints"
UNAVAILABLE = (
    f"the history API ({API_VERSION}) is unavailable: no operator replica serves it "
    f"(see kubectl get apiservice {APISERVICE}); {ETCD_HINT}"
)
NOT_INSTALLED = (
    f"the history API ({API_VERSION}) is not installed in this cluster: no APIService "
    f"{APISERVICE} (install the chart with historyApi.enabled=true); {ETCD_HINT}"
)
NO_KUBECONFIG = (
    "no kubeconfig: set KUBECONFIG or pass --kubeconfig (history, show, diff and "
    f"rollback read the history API, {API_VERSION}); {ETCD_HINT}"
)

# seconds to connect, and to wait for each read: a request that hangs must not hang the CLI
CONNECT_TIMEOUT, READ_TIMEOUT = 10.0, 60.0
# versions asked for per list request when skipping to --before
SKIP_CHUNK = 500


class HistoryApiError(EtcdConfigError):
    """The history API refused or could not be reached (exit 1); the message says which."""


# --- the kubeconfig ---------------------------------------------------------------------------

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


@dataclass(frozen=True)
class KubeContext:
    """What kubectl would use: the kubeconfig files read, the context (None: none is set,
    or no kubeconfig: in-cluster), and that context's namespace (``default`` if unset)."""

    files: tuple[str, ...]
    context: str | None
    namespace: str


def _kubeconfig_files(kubeconfig: str | None) -> tuple[list[str], bool]:
    """The files kubectl reads, in order, and whether they were named explicitly
    (``--kubeconfig``: one file, which must exist) or found (``$KUBECONFIG``, a list
    whose missing entries are skipped; else ``~/.kube/config`` if it exists)."""
    if kubeconfig:
        return [os.path.expanduser(kubeconfig)], True
    env = os.environ.get("KUBECONFIG")
    if env:
        paths = [os.path.expanduser(p) for p in env.split(os.pathsep) if p]
    else:
        paths = [os.path.expanduser("~/.kube/config")]
    return [p for p in paths if os.path.isfile(p)], False


def _read_kubeconfig(path: str) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise HistoryApiError(f"cannot read kubeconfig {path}: {exc.strerror or exc}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise HistoryApiError(
            f"kubeconfig {path} is not valid YAML: {' '.join(str(exc).split())}"
        ) from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise HistoryApiError(f"kubeconfig {path} is not a YAML mapping")
    return doc


def _in_cluster_namespace() -> str:
    """kubectl in a pod without a kubeconfig: $POD_NAMESPACE, else the service
    account's namespace."""
    ns = os.environ.get("POD_NAMESPACE", "").strip()
    if ns:
        return ns
    try:
        ns = SERVICE_ACCOUNT_NAMESPACE.read_text(encoding="utf-8").strip()
    except OSError:
        return "default"
    return ns or "default"


def kube_context(kubeconfig: str | None = None, context: str | None = None) -> KubeContext:
    """The context and namespace kubectl would use with ``--kubeconfig``/``--context``.

    As kubectl merges a ``KUBECONFIG`` list: the first file that sets
    ``current-context`` wins, and the first file that defines a context of that name
    defines it. The namespace is the context's ``namespace``, else ``default``; with no
    kubeconfig at all, inside a pod, the pod's namespace."""
    files, explicit = _kubeconfig_files(kubeconfig)
    if not files:
        in_cluster = bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
        if context is not None or not in_cluster:
            return KubeContext((), context, "default")
        return KubeContext((), None, _in_cluster_namespace())
    docs = [(path, _read_kubeconfig(path)) for path in files]
    name = context
    if not name:
        for _, doc in docs:
            current = doc.get("current-context")
            if current:
                name = str(current)
                break
    if not name:
        return KubeContext(tuple(files), None, "default")
    for _, doc in docs:
        for entry in doc.get("contexts") or []:
            if isinstance(entry, dict) and entry.get("name") == name:
                body = entry.get("context") or {}
                ns = body.get("namespace") if isinstance(body, dict) else None
                return KubeContext(tuple(files), name, str(ns) if ns else "default")
    if context:  # named on the command line: kubectl refuses it too
        where = files[0] if explicit or len(files) == 1 else ", ".join(files)
        raise HistoryApiError(f'context "{context}" does not exist in kubeconfig {where}')
    return KubeContext(tuple(files), name, "default")


# --- errors --------------------------------------------------------------------------------------


def _status(body: bytes | str | None) -> dict[str, Any]:
    """The API server's ``Status`` body ({} when the body is not one)."""
    if not body:
        return {}
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return {}
    return obj if isinstance(obj, dict) else {}


def _names_an_object(status: dict[str, Any]) -> bool:
    """A 404 about one object (``configversions… "payments.v9" not found``), not the
    aggregation layer's 404 for a group it does not know (no details)."""
    details = status.get("details")
    return isinstance(details, dict) and bool(details.get("name"))


def api_error(status: int, reason: str, body: bytes | str | None) -> EtcdConfigError:
    """What the CLI says when the history API answers ``status`` (not 2xx), as one
    line: kubectl's ``Error from server (Reason): message`` where the server said
    something, and what to do for the two answers a user cannot act on alone (503:
    no replica serves the API; 404 for the group: the API is not installed)."""
    st = _status(body)
    message = " ".join(str(st.get("message") or "").split())
    st_reason = str(st.get("reason") or reason or "").strip()
    if status == 503:
        return HistoryApiError(UNAVAILABLE)
    if status == 404:
        if _names_an_object(st):
            return NotFound(message or f"{st_reason}: not found")
        return HistoryApiError(NOT_INSTALLED)
    if status == 401:
        return HistoryApiError("You must be logged in to the server (Unauthorized)")
    if status == 500 and "etcdconfig verify" in message:
        return CorruptRecord(message)
    if message:
        return HistoryApiError(f"Error from server ({st_reason or status}): {message}")
    return HistoryApiError(f"the history API ({API_VERSION}) answered HTTP {status} {reason}")


# --- conversion ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RemoteHistory:
    """A ``ConfigHistory`` as the CLI uses it."""

    head: Head | None
    incarnations: list[Incarnation]
    retained: tuple[int, int] | None  # (oldest, newest) version kept; None: none is
    rollouts: list[Outcome] = field(default_factory=list)  # oldest version first

    def retained_text(self) -> str:
        """As the etcd path says it: ``retained: 3..12`` or ``no version is retained``."""
        if self.retained is None:
            return "no version is retained"
        return f"retained: {self.retained[0]}..{self.retained[1]}"


def _dump(obj: Any, what: str) -> bytes:
    try:
        return dump(obj)
    except EtcdConfigError as exc:
        raise CorruptRecord(f"{what} cannot be canonicalised ({exc}) — {VERIFY_HINT}") from exc


def _revision(obj: dict[str, Any]) -> int:
    rv = (obj.get("metadata") or {}).get("resourceVersion")
    try:
        return int(str(rv))
    except ValueError:
        return 0


def history_of(obj: dict[str, Any], namespace: str, name: str) -> RemoteHistory:
    """Parse a ``ConfigHistory`` into the head and incarnation records the store holds
    (the same types, checked the same way, as read from etcd)."""
    raw_head = obj.get("head")
    head = None
    if isinstance(raw_head, dict):
        what = f"head of {namespace}/{name}"
        head = Head.parse(_dump(raw_head, what), mod_revision=_revision(obj), what=what)
    incarnations: list[Incarnation] = []
    for raw in obj.get("incarnations") or []:
        what = f"incarnation of {namespace}/{name}"
        incarnations.append(Incarnation.parse(_dump(raw, what), what=what))
    # the store's order (oldest first); the sort is stable, so ties keep the server's order
    incarnations.sort(key=lambda i: i.first_version or 0)
    retained = obj.get("retained")
    span: tuple[int, int] | None = None
    if (
        isinstance(retained, dict)
        and retained.get("oldest") is not None
        and retained.get("newest") is not None
    ):
        span = (int(retained["oldest"]), int(retained["newest"]))
    rollouts = ordered(Outcome.from_json(raw) for raw in obj.get("rollouts") or [])
    return RemoteHistory(head, incarnations, span, rollouts)


def _version_of(obj: dict[str, Any], name: str) -> int:
    """The version a ``ConfigVersion`` is, from its name ``<config>.v<N>``."""
    object_name = str((obj.get("metadata") or {}).get("name", ""))
    m = re.fullmatch(re.escape(name) + r"\.v(\d+)", object_name)
    if m is not None:
        return int(m.group(1))
    v = obj.get("version")
    if type(v) is int:
        return v
    raise CorruptRecord(
        f"the history API served a ConfigVersion named {object_name!r} for {name}, "
        f"which names no version of it — {VERIFY_HINT}"
    )


def record_of(
    obj: dict[str, Any], namespace: str, name: str, head: Head | None = None
) -> VersionRecord:
    """The stored record a ``ConfigVersion`` carries, checked as a record read from
    etcd is: its data against its ``checksum``; the head's version also against the
    head's ``recordChecksum``. Tampered: ``CorruptRecord``."""
    version = _version_of(obj, name)
    record = {k: v for k, v in obj.items() if k not in ENVELOPE}
    what = describe(namespace, name, version)
    return load_record(
        _dump(record, what),
        what=what,
        version=version,
        expected_record_checksum=(
            head.record_checksum if head is not None and head.version == version else None
        ),
        mod_revision=_revision(obj),
    )


# --- the client ---------------------------------------------------------------------------------


class HistoryApi:
    """Reads ``configversions`` and ``confighistories`` with a kubernetes_asyncio client."""

    def __init__(self, api: ApiClient) -> None:
        self.api = api

    async def close(self) -> None:
        await self.api.close()

    def _path(self, namespace: str, resource: str, name: str | None = None) -> str:
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{quote(namespace, safe='')}/{resource}"
        return path if name is None else f"{path}/{quote(name, safe='')}"

    async def _get(
        self, path: str, query: list[tuple[str, str]] | None = None
    ) -> dict[str, Any] | None:
        """GET ``path``: the object, None for a 404 naming the object, else the error."""
        import aiohttp

        try:
            response = await self.api.call_api(
                path,
                "GET",
                query_params=query or [],
                header_params={"Accept": "application/json"},
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=aiohttp.ClientTimeout(
                    connect=CONNECT_TIMEOUT, sock_connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT
                ),
            )
            try:
                body = await response.read()
            finally:
                response.release()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            host = self.api.configuration.host
            text = " ".join(str(exc).split()) or type(exc).__name__
            raise HistoryApiError(
                f"cannot reach the Kubernetes API server at {host}: {text}"
            ) from exc
        status = int(response.status)
        if not 200 <= status <= 299:
            error = api_error(status, str(response.reason or ""), body)
            if isinstance(error, NotFound):
                return None
            raise error
        try:
            obj = loads(body)  # as the etcd path parses records: same numbers, same checksums
        except (ValueError, UnicodeDecodeError) as exc:
            raise HistoryApiError(f"the history API answered {path} with no JSON: {exc}") from exc
        if not isinstance(obj, dict):
            raise HistoryApiError(f"the history API answered {path} with no JSON object")
        return obj

    async def config_history(self, namespace: str, name: str) -> RemoteHistory | None:
        """The Config's ``ConfigHistory``; None when the store holds nothing of it."""
        obj = await self._get(self._path(namespace, "confighistories", name))
        return None if obj is None else history_of(obj, namespace, name)

    async def version(
        self, namespace: str, name: str, version: int, head: Head | None
    ) -> VersionRecord | None:
        """Version ``version``, verified; None when the store does not hold it."""
        obj = await self._get(self._path(namespace, "configversions", f"{name}.v{version}"))
        return None if obj is None else record_of(obj, namespace, name, head)

    async def versions(
        self,
        namespace: str,
        name: str,
        *,
        limit: int,
        before: int | None = None,
        head: Head | None = None,
    ) -> tuple[list[VersionRecord], int | None]:
        """Up to ``limit`` versions older than ``before`` (None: from the newest),
        newest first, each verified, and the cursor of the next page, as
        ``VersionedStore.history`` returns them. The list is the Config's versions
        newest first (a label selector), read in pages (limit/continue) until one
        more version than asked for is seen."""
        want = limit + 1
        chunk = min(want, SKIP_CHUNK) if before is None else SKIP_CHUNK
        found: list[dict[str, Any]] = []
        token = ""
        while len(found) < want:
            query = [("labelSelector", f"{CONFIG_LABEL}={name}"), ("limit", str(chunk))]
            if token:
                query.append(("continue", token))
            page = await self._get(self._path(namespace, "configversions"), query)
            if page is None:  # a list is never "not found" in a namespace
                raise HistoryApiError(NOT_INSTALLED)
            for item in page.get("items") or []:
                if not isinstance(item, dict) or item.get("config", name) != name:
                    continue
                if before is not None and _version_of(item, name) >= before:
                    continue
                found.append(item)
                if len(found) == want:
                    break
            token = str((page.get("metadata") or {}).get("continue") or "")
            if not token:
                break
        records = [record_of(item, namespace, name, head) for item in found[:limit]]
        cursor = records[-1].version if len(found) > limit and records else None
        return records, cursor


async def connect(kubeconfig: str | None, context: str | None) -> HistoryApi:
    """A client for the history API from the kubeconfig (or in-cluster credentials)."""
    from kubernetes_asyncio.config import ConfigException

    from etcdconfig.kube import load_api_client

    try:
        api = await load_api_client(kubeconfig, context, agent="etcdconfig-cli")
    except ConfigException as exc:
        if not kubeconfig and not os.environ.get("KUBECONFIG"):
            raise HistoryApiError(NO_KUBECONFIG) from exc
        text = " ".join(str(exc).split())
        raise HistoryApiError(f"cannot use the kubeconfig: {text}; {ETCD_HINT}") from exc
    return HistoryApi(api)
