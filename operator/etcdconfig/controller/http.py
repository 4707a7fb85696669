"""``/metrics`` (Prometheus), ``/healthz`` (the process serves) and ``/readyz``
(etcd session alive, kopf watching, every supervised background task running)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from etcdconfig.metrics import REGISTRY

if TYPE_CHECKING:
    import asyncio

    from etcdconfig.controller.runtime import Runtime


def readiness_problems(runtime: Runtime, kopf_ready: asyncio.Event) -> list[str]:
    """Why the replica is not ready; empty when it is. A background task that is dead
    or waiting to restart after a crash is named (resync, membership-watch, …)."""
    problems = []
    if not runtime.healthy:
        problems.append("etcd session is not alive")
    if not kopf_ready.is_set():
        problems.append("kopf is not watching yet")
    problems.extend(runtime.supervisor.problems())
    return problems


async def start_http(
    runtime: Runtime, kopf_ready: asyncio.Event, addr: str, port: int
) -> web.AppRunner:
    async def metrics(_: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        problems = readiness_problems(runtime, kopf_ready)
        if problems:
            return web.Response(status=503, text="; ".join(problems) + "\n")
        return web.Response(text="ok\n")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, addr, port).start()
    return runner
