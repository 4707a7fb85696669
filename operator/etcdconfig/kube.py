"""The Kubernetes API, as the operator and the CLI use it (kubernetes_asyncio).

kopf drives events with its own client; this module does the few direct calls
the rest needs: status patches outside handlers (resync), reading and writing the
published ConfigMap, Events, reading the current object, and the CLI's rollback patch.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import re
import urllib.parse
import urllib.request
import uuid
from typing import TYPE_CHECKING, Any

import aiohttp
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config
from kubernetes_asyncio.client.exceptions import ApiException

from etcdconfig import __version__
from etcdconfig.errors import EtcdConfigError
from etcdconfig.models import GROUP, KIND, PLURAL, VERSION

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

log = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"


class KubeError(EtcdConfigError):
    """The Kubernetes API refused or could not be reached; the message says which.
    ``status``: the API server's HTTP status, when it answered."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


# the API server's RBAC refusal: `… is forbidden: User "alice" cannot patch resource
# "configs" in API group "etcdconfig.io" in the namespace "default"`
_FORBIDDEN = re.compile(
    r'User "(?P<user>[^"]*)" cannot (?P<verb>[\w-]+) resource "(?P<resource>[^"]*)"'
    r'(?: in API group "(?P<group>[^"]*)")?(?: in the namespace "(?P<namespace>[^"]*)")?'
)


def _status_message(exc: ApiException) -> str:
    """The ``message`` of the API server's Status body ('' when there is none)."""
    raw: Any = exc.body
    body = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    if not isinstance(body, str) or not body:
        return ""
    try:
        status = json.loads(body)
    except ValueError:
        return ""
    message = status.get("message") if isinstance(status, dict) else None
    return message if isinstance(message, str) else ""


def _explain(exc: ApiException, what: str) -> KubeError:
    err = _explained(exc, what)
    err.status = exc.status
    return err


def _explained(exc: ApiException, what: str) -> KubeError:
    if exc.status == 403:
        m = _FORBIDDEN.search(_status_message(exc))
        if m is None:
            return KubeError(f"{what}: forbidden by RBAC ({exc.reason})")
        resource = m["resource"] + (f".{m['group']}" if m["group"] else "")
        where = f' in namespace "{m["namespace"]}"' if m["namespace"] else " cluster-wide"
        return KubeError(
            f'{what}: forbidden by RBAC: user "{m["user"]}" may not {m["verb"]} '
            f"{resource}{where} (grant the verb with a Role/RoleBinding, "
            f"or check with `kubectl auth can-i {m['verb']} {resource}"
            + (f" -n {m['namespace']}" if m["namespace"] else "")
            + f" --as {m['user']}`)"
        )
    if exc.status == 404:
        return KubeError(f"{what}: not found")
    return KubeError(f"{what}: HTTP {exc.status} {exc.reason}")


def _default_kubeconfig_exists() -> bool:
    return os.path.exists(os.path.expanduser("~/.kube/config"))


async def load_api_client(
    kubeconfig: str | None = None,
    context: str | None = None,
    *,
    agent: str = "etcdconfig",
    connections: int | None = None,
) -> k8s.ApiClient:
    """kubeconfig (explicit, $KUBECONFIG, ~/.kube/config) or the in-cluster service account.

    Requests carry ``User-Agent: <agent>/<version>``: the API server names the field
    manager of an update without ``fieldManager`` after the agent (the part before the
    ``/``), so what this client writes shows as ``etcdconfig`` in ``managedFields``, not
    as the generated client's default ``OpenAPI-Generator``.

    ``connections`` caps the connections kept open to the API server (the generated
    client's default is 100: a burst of concurrent requests opens that many TLS
    connections, each with its handshake and a 256 KiB read buffer).
    """
    cfg = k8s.Configuration()
    if connections is not None:
        cfg.connection_pool_maxsize = connections
    path = kubeconfig or os.environ.get("KUBECONFIG")
    if path or _default_kubeconfig_exists():
        await k8s_config.load_kube_config(
            config_file=path, context=context, client_configuration=cfg
        )
    else:
        k8s_config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    api = k8s.ApiClient(configuration=cfg)
    api.user_agent = f"{agent}/{__version__}"
    _resolve_proxy_once(api)
    return api


def _resolve_proxy_once(api: k8s.ApiClient) -> None:
    """The generated client's HTTP session trusts the environment (``trust_env``): for
    every request aiohttp looks up a proxy and reads ``~/.netrc`` in a worker thread —
    ~10 % of the operator's CPU in a bulk of Configs (py-spy, docs/scale.md §4). The
    proxy settings are read here once instead (``HTTPS_PROXY``/``HTTP_PROXY`` and
    ``NO_PROXY`` for the API server's host, unless the kubeconfig names a proxy); the
    session keeps its connector and cap. ``.netrc`` credentials are never used for the
    API server."""
    rest = api.rest_client
    old = rest.pool_manager
    if not isinstance(old, aiohttp.ClientSession) or not old.trust_env:
        return
    if not rest.proxy:
        url = urllib.parse.urlsplit(str(api.configuration.host))
        scheme, host = url.scheme or "https", url.hostname or ""
        proxies = urllib.request.getproxies_environment()
        bypass = urllib.request.proxy_bypass_environment(host)  # type: ignore[attr-defined]
        if scheme in proxies and not bypass:
            rest.proxy = proxies[scheme]
    connector = old.connector
    old.detach()  # the new session owns the connector (its cap and its TLS context)
    rest.pool_manager = aiohttp.ClientSession(
        connector=connector, trust_env=False, read_bufsize=2**21
    )


class Kube:
    def __init__(self, api: k8s.ApiClient, *, component: str = "etcdconfig") -> None:
        self.api = api
        self.custom = k8s.CustomObjectsApi(api)
        self.core = k8s.CoreV1Api(api)
        self.component = component
        self._pending: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        await self.api.close()

    async def check_crd(self) -> None:
        """Fail with a clear message when the API server is unreachable or the CRD is missing."""
        try:
            resources = await self.api.call_api(
                f"/apis/{GROUP}/{VERSION}",
                "GET",
                response_types_map={200: "object"},
                auth_settings=["BearerToken"],
                _return_http_data_only=True,
            )
        except ApiException as exc:
            if exc.status == 404:
                raise KubeError(
                    f"the Config CRD ({PLURAL}.{GROUP}) is not installed: "
                    "kubectl apply -f crds/ (or install the Helm chart)"
                ) from exc
            raise _explain(exc, "API discovery") from exc
        except OSError as exc:
            raise KubeError(f"cannot reach the Kubernetes API server: {exc}") from exc
        names = {r.get("name") for r in (resources or {}).get("resources", [])}
        if PLURAL not in names:
            raise KubeError(f"the Config CRD ({PLURAL}.{GROUP}) is not installed")

    async def get_config(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            obj = await self.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise _explain(exc, f"get Config {namespace}/{name}") from exc
        return dict(obj)

    async def list_configs(self, namespace: str | None = None) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        async for page in self.config_pages(namespace):
            items.extend(page)
        return items

    async def config_pages(
        self, namespace: str | None = None, *, limit: int = 500
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """The Configs (of ``namespace``, or all) a page of ``limit`` at a time, so that a
        caller keeps only what it needs of each page, not the whole list at once."""
        cont: str | None = None
        while True:
            kwargs: dict[str, Any] = {"limit": limit}
            if cont:
                kwargs["_continue"] = cont
            try:
                if namespace:
                    page = await self.custom.list_namespaced_custom_object(
                        GROUP, VERSION, namespace, PLURAL, **kwargs
                    )
                else:
                    page = await self.custom.list_cluster_custom_object(
                        GROUP, VERSION, PLURAL, **kwargs
                    )
            except ApiException as exc:
                raise _explain(exc, "list Configs") from exc
            cont = (page.get("metadata") or {}).get("continue")
            yield list(page.get("items") or [])
            del page
            if not cont:
                return

    async def patch_status(
        self,
        namespace: str,
        name: str,
        status: dict[str, Any],
        *,
        resource_version: str | None = None,
    ) -> bool:
        """Merge-patch ``status``. With ``resource_version`` the patch applies only to
        that version of the object: a status computed from a stale copy is dropped
        (returns False) instead of overwriting a newer one."""
        body: dict[str, Any] = {"status": status}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        try:
            await self.custom.patch_namespaced_custom_object_status(
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                name,
                body,
                _content_type=MERGE_PATCH,  # type: ignore[call-arg]
            )
        except ApiException as exc:
            if exc.status in (404, 409):
                return False
            raise _explain(exc, f"patch status of {namespace}/{name}") from exc
        return True

    async def patch_config(
        self, namespace: str, name: str, patch: Any, *, content_type: str = MERGE_PATCH
    ) -> dict[str, Any]:
        """Merge patch (a dict) or JSON patch (a list of operations, with JSON_PATCH)."""
        try:
            obj = await self.custom.patch_namespaced_custom_object(
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                name,
                patch,
                _content_type=content_type,  # type: ignore[call-arg]
            )
        except ApiException as exc:
            raise _explain(exc, f"patch Config {namespace}/{name}") from exc
        return dict(obj)

    async def add_finalizer(self, obj: dict[str, Any], finalizer: str) -> str | None:
        """Add ``finalizer`` to the Config as listed in ``obj``, only if the object is
        still at ``obj``'s resourceVersion (a JSON patch with a ``test``, as kopf adds
        its finalizer). Returns the new resourceVersion; None when the object changed
        or went away since (409/422/404: whoever changed it, its watch event follows)."""
        meta = obj["metadata"]
        present = list(meta.get("finalizers") or [])
        if finalizer in present:
            return str(meta.get("resourceVersion"))
        add = (
            {"op": "add", "path": "/metadata/finalizers/-", "value": finalizer}
            if present
            else {"op": "add", "path": "/metadata/finalizers", "value": [finalizer]}
        )
        ops = [
            {"op": "test", "path": "/metadata/resourceVersion", "value": meta["resourceVersion"]},
            add,
        ]
        try:
            after = await self.custom.patch_namespaced_custom_object(
                GROUP,
                VERSION,
                meta["namespace"],
                PLURAL,
                meta["name"],
                ops,
                _content_type=JSON_PATCH,  # type: ignore[call-arg]
            )
        except ApiException as exc:
            if exc.status in (404, 409, 422):
                return None
            raise _explain(exc, f"add the finalizer to {meta['namespace']}/{meta['name']}") from exc
        return str(dict(after)["metadata"]["resourceVersion"])

    async def read_config_map(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The ConfigMap as its JSON form (``metadata.ownerReferences``, ``data``, …),
        or None when there is none."""
        try:
            cm = await self.core.read_namespaced_config_map(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise _explain(exc, f"read ConfigMap {namespace}/{name}") from exc
        return dict(self.api.sanitize_for_serialization(cm))

    async def create_config_map(self, namespace: str, body: dict[str, Any]) -> bool:
        """Create the ConfigMap; False (nothing written) if one of that name exists."""
        name = body["metadata"]["name"]
        try:
            await self.core.create_namespaced_config_map(namespace, body)  # type: ignore[arg-type]
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise _explain(exc, f"create ConfigMap {namespace}/{name}") from exc
        return True

    async def patch_config_map(
        self, namespace: str, name: str, patch: dict[str, Any], *, resource_version: str
    ) -> bool:
        """Merge-patch the ConfigMap only as it was at ``resource_version``: False (nothing
        written) if it changed or went away since it was read, so a decision taken on
        what was read (whose ConfigMap it is, what it holds) never lands on anything else."""
        body = {
            **patch,
            "metadata": {**(patch.get("metadata") or {}), "resourceVersion": resource_version},
        }
        try:
            await self.core.patch_namespaced_config_map(
                name,
                namespace,
                body,
                _content_type=MERGE_PATCH,  # type: ignore[call-arg]
            )
        except ApiException as exc:
            if exc.status in (404, 409):
                return False
            raise _explain(exc, f"patch ConfigMap {namespace}/{name}") from exc
        return True

    async def delete_config_map(
        self, namespace: str, name: str, *, uid: str, resource_version: str
    ) -> bool:
        """Delete the ConfigMap only if it is still the object that was read (its uid and
        ``resource_version``): False (nothing deleted) if it changed or went away."""
        body = k8s.V1DeleteOptions(
            preconditions=k8s.V1Preconditions(uid=uid, resource_version=resource_version)
        )
        try:
            await self.core.delete_namespaced_config_map(name, namespace, body=body)
        except ApiException as exc:
            if exc.status in (404, 409):
                return False
            raise _explain(exc, f"delete ConfigMap {namespace}/{name}") from exc
        return True

    async def list_namespaced(
        self, group_version: str, plural: str, namespace: str, label_selector: str = ""
    ) -> list[dict[str, Any]]:
        """Every object of a namespaced collection (``v1``/``apps/v1``…, ``pods``…) as its
        JSON form, read in pages of 500."""
        base = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
        path = f"{base}/namespaces/{namespace}/{plural}"
        items: list[dict[str, Any]] = []
        cont = ""
        while True:
            query: list[tuple[str, Any]] = [("limit", 500)]
            if label_selector:
                query.append(("labelSelector", label_selector))
            if cont:
                query.append(("continue", cont))
            try:
                page = await self.api.call_api(
                    path,
                    "GET",
                    query_params=query,
                    response_types_map={200: "object"},
                    auth_settings=["BearerToken"],
                    _return_http_data_only=True,
                )
            except ApiException as exc:
                raise _explain(exc, f"list {plural} in {namespace}") from exc
            items.extend((page or {}).get("items") or [])
            cont = ((page or {}).get("metadata") or {}).get("continue") or ""
            if not cont:
                return items

    async def apply(
        self, body: dict[str, Any], plural: str, *, field_manager: str
    ) -> dict[str, Any]:
        """Server-side apply of ``body`` (only the fields it names, owned by
        ``field_manager``; conflicts forced: these fields are the manager's alone)."""
        meta = body["metadata"]
        group_version = body["apiVersion"]
        base = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
        path = f"{base}/namespaces/{meta['namespace']}/{plural}/{meta['name']}"
        try:
            out = await self.api.call_api(
                path,
                "PATCH",
                query_params=[("fieldManager", field_manager), ("force", "true")],
                header_params={"Content-Type": "application/apply-patch+yaml"},
                body=body,
                response_types_map={200: "object", 201: "object"},
                auth_settings=["BearerToken"],
                _return_http_data_only=True,
            )
        except ApiException as exc:
            raise _explain(exc, f"apply {body['kind']} {meta['namespace']}/{meta['name']}") from exc
        return dict(out or {})

    def event_soon(self, obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
        """Post an Event in the background: a reconcile never waits on it."""
        task = asyncio.create_task(self.event(obj, type_, reason, message))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def event(self, obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
        """Post an Event about a Config. Never include configuration values in ``message``."""
        meta = obj["metadata"]
        now = dt.datetime.now(dt.UTC)
        body = k8s.CoreV1Event(
            metadata=k8s.V1ObjectMeta(
                # Event names are capped at 253 characters like any object name
                name=f"{meta['name'][:240]}.{uuid.uuid4().hex[:12]}",
                namespace=meta["namespace"],
            ),
            involved_object=k8s.V1ObjectReference(
                api_version=f"{GROUP}/{VERSION}",
                kind=KIND,
                name=meta["name"],
                namespace=meta["namespace"],
                uid=meta["uid"],
                resource_version=meta.get("resourceVersion"),
            ),
            reason=reason,
            message=message[:1024],
            type=type_,
            first_timestamp=now,
            last_timestamp=now,
            count=1,
            source=k8s.V1EventSource(component=self.component),
            reporting_component=self.component,
        )
        try:
            # the created Event is not read back into the generated model (its parsing,
            # timestamps included, was ~4 % of the operator's CPU in a bulk of Configs)
            response: aiohttp.ClientResponse = await self.core.create_namespaced_event(  # type: ignore[assignment]
                meta["namespace"], body, _preload_content=False
            )
            try:
                if not 200 <= int(response.status) <= 299:
                    error = ApiException(status=response.status, reason=response.reason)
                    error.body = await response.read()
                    raise error
            finally:
                response.release()
        except ApiException as exc:
            log.warning(
                "could not post event",
                extra={"reason": reason, "error": str(_explain(exc, "post event"))},
            )
