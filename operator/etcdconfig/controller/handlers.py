"""kopf handlers. kopf is at-least-once and merges events; the store's fenced
transaction is the exactly-once gate, so every handler is idempotent."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
import ssl
from typing import TYPE_CHECKING, Any

import aiohttp
import aiohttp.web
import kopf

from etcdconfig.audit import AuthorBook, note_admission
from etcdconfig.controller import pinning
from etcdconfig.controller.reconciler import Reconciler, RetryLater
from etcdconfig.errors import EtcdConfigError, InvalidConfig
from etcdconfig.models import FINALIZER, GROUP, PLURAL, VERSION
from etcdconfig.reconcile import (
    format_issues,
    issue_reason,
    parse_spec,
    status_differs,
    validate_spec,
)
from etcdconfig.rollout import PINNED_LABEL

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from etcdconfig.controller.runtime import Runtime

log = logging.getLogger(__name__)

RESOURCE = (GROUP, VERSION, PLURAL)
WEBHOOK_ID = "validate-config"
PIN_WEBHOOK_ID = "pin-pod"


def _backoff(retry: int) -> float:
    return float(min(30.0, 0.5 * 2 ** min(retry, 6)))


def build_registry(runtime: Runtime, reconciler: Reconciler) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    # the last login's credentials and the session made for them (see the end of login)
    sessions: dict[str, tuple[kopf.ConnectionInfo, kopf.AiohttpSession]] = {}

    @kopf.on.login(registry=registry)
    async def login(**_: Any) -> kopf.AiohttpSession:
        # the same identity the rest of the operator uses (--kubeconfig/--context or in-cluster)
        cfg = runtime.kube.api.configuration
        header: Any = cfg.get_api_key_with_prefix("BearerToken")
        if inspect.isawaitable(header):
            header = await header
        parts = header.split(" ", 1) if header else []
        scheme, token = (
            (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0] if parts else None)
        )
        info = kopf.ConnectionInfo(
            server=str(cfg.host),
            ca_path=cfg.ssl_ca_cert,
            insecure=not cfg.verify_ssl,
            scheme=scheme,
            token=token,
            certificate_path=cfg.cert_file,
            private_key_path=cfg.key_file,
        )
        # kopf's own session has no connection limit: a bulk of Configs opened one TLS
        # connection per Config in flight (hundreds; each a handshake and a 256 KiB read
        # buffer, the largest share of the operator's memory after a bulk). Capped like
        # the operator's client; each watch stream holds one connection for as long as
        # it runs (one per watched namespace, kopf's CRD and namespace observers), so
        # those come on top and requests can never starve a watch of its connection.
        # Unchanged credentials give back the same result: kopf refuses a login equal to
        # credentials the API server rejected (401) and stops with a LoginError, as it
        # did with a plain ConnectionInfo; a new session object each time would compare
        # unequal and make kopf log in again at once, forever, on a revoked identity.
        last = sessions.get("last")
        if last is not None and last[0] == info:
            return last[1]
        streams = max(1, len(runtime.settings.namespaces)) + 4
        limit = int(getattr(runtime.settings, "api_connections", 32)) + streams
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=limit, ssl=info.as_ssl_context()),
            headers=info.as_http_headers(),  # kopf adds its User-Agent (field manager "kopf")
        )
        result = kopf.AiohttpSession(server=info.server, aiohttp_session=session)
        sessions["last"] = (info, result)
        return result

    def owned(body: kopf.Body, **_: Any) -> bool:
        assert runtime.membership is not None
        return runtime.membership.owns(body.metadata.uid or "")

    def finalized(body: kopf.Body, **_: Any) -> bool:
        # A version of this object was recorded (status.version): every replica puts
        # the finalizer back when an update drops it (a full-object PUT such as
        # `kubectl replace` does), for its owner may be away, and the finalizer is
        # what makes the deletion of recorded history be recorded.
        return (
            FINALIZER in (body.metadata.get("finalizers") or [])
            or owned(body)
            or body.status.get("version") is not None
        )

    # Only the owner reconciles (the resync loop takes over when an owner goes away).
    #
    # The deletion handler runs on every replica once the object carries our finalizer
    # (deletion is idempotent, and must work with the owner gone), but only the owner
    # ADDS the finalizer. kopf adds it with a JSON patch guarded by the resourceVersion
    # it saw, and calls no handler in that cycle. If a non-owner's identical patch lands
    # first, the owner's fails (422) and kopf keeps it as a "remaining patch"; the next
    # event (the non-owner's finalizer) is then skipped as inconsistent because that
    # patch is pending (kopf ``process_resource_causes``: ``patch_initially_empty``),
    # and re-applying it changes nothing, so nothing is patched and no further event
    # comes: the creation waited for the owner's next resync round. Hence the filter:
    # a non-owner neither adds the finalizer nor strips it (kopf strips it from objects
    # for which no deletion handler matches), and the resync loop adds it before it
    # records a Config whose owner went away before adding it (``Resync.finalized``).
    @kopf.on.resume(*RESOURCE, registry=registry, id="reconcile", when=owned)
    @kopf.on.create(*RESOURCE, registry=registry, id="reconcile", when=owned)
    @kopf.on.update(*RESOURCE, registry=registry, id="reconcile", when=owned)
    async def reconcile(
        body: kopf.Body, patch: kopf.Patch, reason: str, retry: int, **_: Any
    ) -> None:
        obj = _plain(body)
        try:
            status = await reconciler.reconcile(obj, trigger=str(reason), retry=retry)
        except RetryLater as exc:
            if not runtime.stopping:  # once it left, the new owner's status stands
                _apply(patch, obj, exc.status)
            raise kopf.TemporaryError(str(exc), delay=exc.delay) from None
        if status is not None and not runtime.stopping:
            _apply(patch, obj, status)

    @kopf.on.delete(*RESOURCE, registry=registry, id="finalize", when=finalized)
    async def finalize(body: kopf.Body, spec: kopf.Spec, retry: int, **_: Any) -> None:
        assert runtime.store is not None
        assert runtime.locks is not None
        meta = body.metadata
        ns, name, uid = meta.namespace or "", meta.name or "", meta.uid or ""
        purge = spec.get("deletionPolicy", "Retain") == "Purge"
        try:
            async with runtime.locks.hold(ns, name) as mutex:
                await runtime.store.delete(ns, name, uid, mutex, purge=purge)
        except EtcdConfigError as exc:
            raise kopf.TemporaryError(
                f"cannot record the deletion yet: {exc}", delay=_backoff(retry)
            ) from None
        log.info("deleted", extra={"config": f"{ns}/{name}", "uid": uid, "purged": purge})

    if not runtime.settings.webhook_enabled:
        return registry

    book = AuthorBook(runtime.client, runtime.settings.etcd_prefix)

    @kopf.on.validate(*RESOURCE, registry=registry, id=WEBHOOK_ID)
    async def validate(
        spec: kopf.Spec, body: kopf.Body, userinfo: kopf.UserInfo, dryrun: bool, **kw: Any
    ) -> None:
        def check() -> list[Any]:
            try:
                return validate_spec(parse_spec(dict(spec)), runtime.validator)
            except InvalidConfig as exc:
                return exc.issues

        # off the event loop, as when this handler was synchronous (kopf ran it in a
        # thread): a slow schema must not delay the session's keep-alives
        issues = await asyncio.to_thread(check)
        if issues:
            raise kopf.AdmissionError(f"{issue_reason(issues)}: {format_issues(issues)}", code=422)
        if not dryrun:
            # who made the change, for the replica that records it (docs/configs.md);
            # never raises: an admission never fails because of audit bookkeeping
            old = kw.get("old")
            await note_admission(
                book,
                operation=str(kw.get("operation") or ""),
                userinfo=dict(userinfo),
                body=_plain_admission(body),
                old=None if old is None else _plain_admission(old),
            )

    @kopf.on.mutate(
        "v1",
        "pods",
        registry=registry,
        id=PIN_WEBHOOK_ID,
        operations={"CREATE"},
        labels={PINNED_LABEL: kopf.PRESENT},
    )
    async def pin_pod(body: kopf.Body, patch: kopf.Patch, dryrun: bool, **_: Any) -> None:
        # fail open: whatever goes wrong, the pod is admitted as it came (docs/rollouts.md)
        try:
            changed = await pinning.pin(runtime, _plain_admission(body), dryrun=dryrun)
        except Exception:
            log.exception("pod webhook failed; the pod starts with the plain ConfigMap")
            return
        if changed is None:
            return

        def apply(pod: kopf.RawBody) -> None:
            pod["spec"] = changed["spec"]
            pod.setdefault("metadata", {})["annotations"] = changed["annotations"]

        patch.fns.append(apply)

    return registry


def _plain_admission(body: kopf.Body) -> dict[str, Any]:
    meta = body.metadata
    return {
        "metadata": {
            "namespace": meta.namespace,
            "name": meta.name,
            "uid": meta.uid,
            "generation": meta.get("generation"),
            "annotations": dict(meta.annotations),
            # what ties the request to the object it stores (audit.request_stamp)
            "managedFields": list(meta.get("managedFields") or []),
        },
        "spec": dict(body.spec),
    }


def _plain(body: kopf.Body) -> dict[str, Any]:
    return {
        "metadata": dict(body.metadata),
        "spec": dict(body.spec),
        "status": dict(body.status),
    }


def _apply(patch: kopf.Patch, obj: dict[str, Any], status: dict[str, Any]) -> None:
    """Hand the status to kopf, which patches it without a resourceVersion guard.

    Can a slow handler on an old body set an older observedGeneration? Within one
    replica, no: kopf handles one object's events one at a time, so the handler for
    generation g finishes (and its patch lands) before g+1 is handled. Across
    replicas, only when ownership moves while a handler runs (the old owner paused,
    or membership changing): the old owner's late patch can then regress
    observedGeneration until the new owner's resync round, whose status patches are
    guarded by resourceVersion and compare the status with the store's head
    (``Resync.reconcile_one``), at most ``resync_interval`` later, and at once when
    membership changes. It is status only: what is recorded is decided by the fenced
    commit, never by status, so no version can be lost or duplicated through it.
    """
    if status_differs(obj.get("status") or {}, status):
        for key, value in status.items():
            patch.status[key] = value


class OwnerDiffBaseStorage(kopf.StatusDiffBaseStorage):
    """kopf's diff-base in status, written only by the replica that owns the object.

    kopf stores the "last handled" spec even when every handler was filtered out.
    With several active replicas, a non-owner would store it first and the owner
    would then see no diff and skip the change; so non-owners store nothing.
    """

    def __init__(self, runtime: Runtime, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._runtime = runtime

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: Any) -> None:
        membership = self._runtime.membership
        if membership is not None and not membership.owns(body.metadata.uid or ""):
            return
        super().store(body=body, patch=patch, essence=essence)


class ReloadingWebhookServer(kopf.WebhookServer):
    """The admission webhook over TLS only, with certificate files reloaded in place.

    kopf's own server restarts its listener when the files change: a brief gap with
    no listener, and a pair caught half-rotated (new certificate, old key) makes the
    restart raise and ends the admission server. Here the listener stays up; every
    new connection gets the newest pair that loaded (an SNI callback hands it the
    current context), and a pair that does not load is retried at the next check
    while the previous one keeps serving.
    """

    def __init__(
        self, *, port: int, certfile: Path, pkeyfile: Path, file_check_interval: float, **kw: Any
    ) -> None:
        super().__init__(
            port=port,
            certfile=certfile,
            pkeyfile=pkeyfile,
            file_check_interval=file_check_interval,
            **kw,
        )
        self._port, self._cert, self._key = port, certfile, pkeyfile
        self.current = self._load()  # a pair that does not load fails the start-up

    def _load(self) -> ssl.SSLContext:
        context = ssl.create_default_context(purpose=ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self._cert, self._key)
        return context

    def _digest(self) -> str:
        h = hashlib.sha256()
        for path in (self._cert, self._key):
            h.update(path.read_bytes())
        return h.hexdigest()

    def _select(self, conn: Any, server_name: str | None, context: ssl.SSLContext) -> None:
        conn.context = self.current  # called for every handshake, with SNI or without

    async def __call__(self, fn: Any) -> AsyncIterator[Any]:
        async def serve(request: aiohttp.web.Request) -> aiohttp.web.Response:
            return await self._serve(fn, request)

        listener = self._load()
        listener.sni_callback = self._select
        app = aiohttp.web.Application()
        app.add_routes([aiohttp.web.post("/{id:.*}", serve)])
        runner = aiohttp.web.AppRunner(app, handle_signals=False)
        await runner.setup()
        try:
            site = aiohttp.web.TCPSite(
                runner, self.addr or None, self._port, ssl_context=listener, reuse_address=True
            )
            await site.start()
            host = self.host or self._get_accessible_addr(self.addr)
            yield {"url": self._build_url("https", host, self._port, self.path or "")}
            digest = self._digest()
            while True:
                await asyncio.sleep(self.file_check_interval)
                try:
                    now = self._digest()
                    if now == digest:
                        continue
                    self.current = self._load()
                except (OSError, ssl.SSLError) as exc:
                    log.warning(
                        "webhook certificate files changed but do not load yet; "
                        "still serving the previous pair",
                        extra={"error": str(exc)},
                    )
                    continue
                digest = now
                log.info("webhook certificate reloaded", extra={"cert": str(self._cert)})
        finally:
            await runner.cleanup()


def operator_settings(runtime: Runtime) -> kopf.OperatorSettings:
    s = runtime.settings
    settings = kopf.OperatorSettings()
    # GitOps-clean: kopf keeps its state in status, and metadata only gains our finalizer
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.StatusProgressStorage()
    settings.persistence.diffbase_storage = OwnerDiffBaseStorage(
        runtime, ignored_fields=["metadata"]
    )
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 30
    if s.webhook_enabled:
        assert s.webhook_cert_file is not None  # Settings refuses a webhook without TLS
        assert s.webhook_key_file is not None
        settings.admission.server = ReloadingWebhookServer(
            addr=s.webhook_addr,
            port=s.webhook_port,
            certfile=s.webhook_cert_file,
            pkeyfile=s.webhook_key_file,
            file_check_interval=s.webhook_cert_check_interval,
        )
        settings.admission.managed = None  # the chart or the user installs the configuration
    return settings
