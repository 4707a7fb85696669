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
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    http = await start_http(runtime, ready, settings.http_addr, settings.http_port)
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
    try:
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
        await runtime.stop()  # stops the supervised tasks first
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
