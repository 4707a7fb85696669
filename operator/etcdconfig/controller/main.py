"""``etcdconfig run``: start the operator."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
from typing import TYPE_CHECKING, Any

import kopf

from etcdconfig import logs
from etcdconfig.controller.handlers import build_registry, operator_settings
from etcdconfig.controller.history_api import (
    AUTH_CONFIGMAP,
    Authorizer,
    HistoryApi,
    HistoryApiServer,
    HistoryStore,
    RequestHeaderConfig,
)
from etcdconfig.controller.http import start_http
from etcdconfig.controller.loops import Resync
from etcdconfig.controller.reconciler import Reconciler
from etcdconfig.controller.runtime import Runtime
from etcdconfig.errors import EtcdConfigError, EtcdTLSError, EtcdUnavailable
from etcdconfig.etcd import EtcdClient
from etcdconfig.kube import Kube, load_api_client

if TYPE_CHECKING:
    from etcdconfig.settings import Settings

log = logging.getLogger("etcdconfig")


class StartupError(EtcdConfigError):
    """The operator cannot start; the message names the cause."""


async def connect_etcd(client: EtcdClient, settings: Settings, stop: asyncio.Event) -> bool:
    """Connect with write access checked (a read-only etcd role must stop us here, with
    the cause). An etcd that does not answer is retried with backoff for
    ``settings.etcd_wait`` seconds: in a cluster the operator and its etcd start together
    (the chart's bundled etcd, a restore), and a crash-looping pod tells nothing a log
    line cannot. TLS, password and permission problems are never retried: waiting does
    not fix a configuration. Returns False when ``stop`` (a SIGTERM/SIGINT) is set
    while waiting."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.etcd_wait
    delay = 0.25
    while True:
        try:
            await client.connect(write=True)
            return True  # a signal during a connect that succeeded: run() looks next
        except EtcdTLSError as exc:
            raise StartupError(f"etcd: {exc}") from exc
        except EtcdUnavailable as exc:
            left = deadline - loop.time()
            if left <= 0:
                waited = f" (waited {settings.etcd_wait:g}s)" if settings.etcd_wait else ""
                raise StartupError(f"etcd: {exc}{waited}") from exc
            log.warning(
                "waiting for etcd", extra={"error": str(exc), "seconds_left": round(left, 1)}
            )
        except EtcdConfigError as exc:
            raise StartupError(f"etcd: {exc}") from exc
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(delay, max(deadline - loop.time(), 0))):
                await stop.wait()
        if stop.is_set():
            log.info("stopping: a signal arrived while waiting for etcd")
            return False
        delay = min(delay * 2, 5.0)


def build_history_api(settings: Settings, runtime: Runtime) -> HistoryApiServer:
    """The history API server (loads its certificate: a pair that does not load stops
    the start-up); served as the supervised task ``history-api``."""
    from kubernetes_asyncio import client as k8s

    core = k8s.CoreV1Api(runtime.kube.api)
    authorization = k8s.AuthorizationV1Api(runtime.kube.api)

    async def review(body: dict[str, Any]) -> dict[str, Any]:
        answer = await authorization.create_subject_access_review(body)  # type: ignore[arg-type]
        status = answer.status
        return {
            "allowed": bool(status.allowed),
            "denied": bool(status.denied),
            "reason": status.reason or "",
        }

    async def load_auth() -> RequestHeaderConfig:
        ns, name = AUTH_CONFIGMAP
        cm = await core.read_namespaced_config_map(name, ns)
        return RequestHeaderConfig.from_configmap(cm.data or {})

    assert settings.history_api_cert_file
    assert settings.history_api_key_file
    api = HistoryApi(
        HistoryStore(runtime.client, settings.etcd_prefix),
        Authorizer(review, ttl=settings.history_api_authz_ttl),
        lambda: None,
    )
    return HistoryApiServer(
        api,
        addr=settings.history_api_addr,
        port=settings.history_api_port,
        cert_file=settings.history_api_cert_file,
        key_file=settings.history_api_key_file,
        load_auth=load_auth,
    )


async def run(settings: Settings) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()  # kopf's stop flag; set by SIGTERM/SIGINT from the first step on
    leave_now = asyncio.Event()

    def on_signal(sig: signal.Signals) -> None:
        log.info("stopping: leaving membership and releasing locks", extra={"signal": sig.name})
        stop.set()
        leave_now.set()

    def take_signals() -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)

    # before anything that can take time: PID 1 in a container ignores a signal it has
    # no handler for, so a SIGTERM during start-up would be lost (the pod waits out its
    # grace period). Each start-up step is followed by a look at the flag.
    take_signals()
    client = EtcdClient(settings.etcd())
    try:
        if not await connect_etcd(client, settings, stop):
            await client.close()
            return
    except StartupError:
        await client.close()
        raise
    try:
        api = await load_api_client(
            settings.kubeconfig, settings.context, connections=settings.api_connections
        )
    except Exception as exc:  # kubeconfig parsing raises many types
        await client.close()
        raise StartupError(f"Kubernetes credentials: {exc}") from exc
    kube = Kube(api, component=f"etcdconfig/{settings.replica_id}")
    try:
        await kube.check_crd()
    except EtcdConfigError as exc:
        await client.close()
        await kube.close()
        raise StartupError(f"Kubernetes: {exc}") from exc
    if stop.is_set():
        log.info("stopping: a signal arrived during start-up")
        await kube.close()
        await client.close()
        return

    runtime = Runtime(settings=settings, client=client, kube=kube)
    try:
        await runtime.start()
    except EtcdConfigError as exc:
        await runtime.stop()
        await kube.close()
        await client.close()
        raise StartupError(f"etcd session: {exc}") from exc
    history_api = None
    if settings.history_api_enabled:
        try:
            history_api = build_history_api(settings, runtime)
        except (OSError, ssl.SSLError) as exc:
            await runtime.stop()
            await kube.close()
            await client.close()
            raise StartupError(f"history API certificate: {exc}") from exc
    reconciler = Reconciler(runtime)
    ready = asyncio.Event()

    async def leave() -> None:
        """Stop the background tasks, leave membership and revoke the session's lease
        (every lock with it), once, as soon as ``leave_now`` is set: on SIGTERM at once,
        not after kopf's own shutdown (seconds). A handler still running meanwhile cannot
        write: its lock went with the lease, and every commit is fenced by the lock
        key's revision. Created before kopf.operator(): kopf cancels every task created
        after it started ("hung", 5 s into its shutdown), and this one must finish."""
        await leave_now.wait()
        await runtime.stop()

    leaving = loop.create_task(leave(), name="leave")

    async def take_signals_from_kopf() -> None:
        # kopf.operator() installs handlers of its own (which only stop kopf, seconds
        # later); it has by the time it is ready, so ours replace them then. Our stop
        # flag stops kopf just as its own handler would.
        await ready.wait()
        take_signals()

    signals = loop.create_task(take_signals_from_kopf(), name="signals")
    http = None
    try:
        http = await start_http(runtime, ready, settings.http_addr, settings.http_port)
        if not stop.is_set():  # a signal during start-up: leave() may be stopping already
            # supervised: a crash is logged, restarted with backoff and shown on /readyz
            runtime.supervisor.add("resync", Resync(runtime, reconciler).run)
            if history_api is not None:
                runtime.supervisor.add("history-api", history_api.run)
            log.info(
                "operator starting",
                extra={
                    "replica": settings.replica_id,
                    "etcd": ",".join(settings.etcd_endpoints),
                    "prefix": settings.etcd_prefix,
                    "namespaces": ",".join(settings.namespaces) or "*",
                },
            )
            await kopf.operator(
                registry=build_registry(runtime, reconciler),
                settings=operator_settings(runtime),
                standalone=True,
                clusterwide=not settings.namespaces,
                namespaces=settings.namespaces,
                ready_flag=ready,
                stop_flag=stop,
            )
    finally:
        signals.cancel()
        leave_now.set()
        await leaving  # stops the supervised tasks first (or waits for the signal's stop)
        if http is not None:
            await http.cleanup()
        await kube.close()
        await client.close()
        log.info("operator stopped")


def main(settings: Settings) -> int:
    logs.configure(settings.log_format, settings.log_level)
    try:
        asyncio.run(run(settings))
    except StartupError as exc:
        log.error(f"cannot start: {exc}")
        return 2
    return 0
