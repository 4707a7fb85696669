"""``etcdconfig run``: start the operator."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import TYPE_CHECKING

import kopf

from etcdconfig import logs
from etcdconfig.controller.handlers import build_registry, operator_settings
from etcdconfig.controller.http import start_http
from etcdconfig.controller.loops import Resync
from etcdconfig.controller.reconciler import Reconciler
from etcdconfig.controller.runtime import Runtime
from etcdconfig.errors import EtcdConfigError
from etcdconfig.etcd import EtcdClient
from etcdconfig.kube import Kube, load_api_client

if TYPE_CHECKING:
    from etcdconfig.settings import Settings

log = logging.getLogger("etcdconfig")


class StartupError(EtcdConfigError):
    """The operator cannot start; the message names the cause."""


async def run(settings: Settings) -> None:
    client = EtcdClient(settings.etcd())
    try:
        # the operator writes: a read-only etcd role must stop it here, with the cause
        await client.connect(write=True)
    except EtcdConfigError as exc:
        await client.close()
        raise StartupError(f"etcd: {exc}") from exc
    try:
        api = await load_api_client(settings.kubeconfig, settings.context)
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

    runtime = Runtime(settings=settings, client=client, kube=kube)
    try:
        await runtime.start()
    except EtcdConfigError as exc:
        await runtime.stop()
        await kube.close()
        await client.close()
        raise StartupError(f"etcd session: {exc}") from exc
    reconciler = Reconciler(runtime)
    ready = asyncio.Event()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    leave_now = asyncio.Event()

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

    def on_signal(sig: signal.Signals) -> None:
        log.info("stopping: leaving membership and releasing locks", extra={"signal": sig.name})
        stop.set()
        leave_now.set()

    def take_signals() -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)

    async def take_signals_from_kopf() -> None:
        # kopf.operator() installs handlers of its own (which only stop kopf, seconds
        # later); it has by the time it is ready, so ours replace them then. Our stop
        # flag stops kopf just as its own handler would.
        await ready.wait()
        take_signals()

    take_signals()
    signals = loop.create_task(take_signals_from_kopf(), name="signals")
    http = None
    try:
        http = await start_http(runtime, ready, settings.http_addr, settings.http_port)
        if not stop.is_set():  # a signal during start-up: leave() may be stopping already
            # supervised: a crash is logged, restarted with backoff and shown on /readyz
            runtime.supervisor.add("resync", Resync(runtime, reconciler).run)
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
