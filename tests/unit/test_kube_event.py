"""``Kube.event`` posts an Event without reading it back into the generated model: a
created Event is a success, a refusal is logged with the exact permission, and the
connection goes back to the pool either way."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from etcdconfig.kube import Kube, load_api_client

FORBIDDEN = {
    "kind": "Status",
    "apiVersion": "v1",
    "status": "Failure",
    "message": 'events is forbidden: User "system:serviceaccount:op:etcdconfig" cannot '
    'create resource "events" in API group "" in the namespace "ns"',
    "reason": "Forbidden",
    "code": 403,
}
OBJ = {"metadata": {"namespace": "ns", "name": "app", "uid": "u-1", "resourceVersion": "7"}}


@pytest.fixture
async def server(
    tmp_path: Path,
) -> AsyncIterator[tuple[Kube, list[dict[str, Any]], dict[str, int]]]:
    posted: list[dict[str, Any]] = []
    answer = {"status": 201}

    async def create(request: web.Request) -> web.Response:
        body = await request.json()
        posted.append(body)
        if answer["status"] == 403:
            return web.json_response(FORBIDDEN, status=403)
        return web.json_response(body, status=201)

    app = web.Application()
    app.router.add_post("/api/v1/namespaces/{ns}/events", create)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    config = tmp_path / "kubeconfig"
    config.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    api = await load_api_client(str(config), connections=1)
    try:
        yield Kube(api), posted, answer
    finally:
        await api.close()
        await runner.cleanup()


async def test_an_event_is_posted_and_the_connection_reused(
    server: tuple[Kube, list[dict[str, Any]], dict[str, int]], caplog: pytest.LogCaptureFixture
) -> None:
    kube, posted, _ = server
    with caplog.at_level(logging.WARNING, logger="etcdconfig.kube"):
        for i in range(3):  # one connection allowed: each response must be released
            await kube.event(OBJ, "Normal", "Recorded", f"generation {i} recorded as version {i}")
    assert [e["reason"] for e in posted] == ["Recorded"] * 3
    assert posted[2]["message"] == "generation 2 recorded as version 2"
    assert posted[0]["involvedObject"]["uid"] == "u-1"
    assert caplog.records == []


async def test_a_refusal_is_logged_with_the_exact_permission(
    server: tuple[Kube, list[dict[str, Any]], dict[str, int]], caplog: pytest.LogCaptureFixture
) -> None:
    kube, posted, answer = server
    answer["status"] = 403
    with caplog.at_level(logging.WARNING, logger="etcdconfig.kube"):
        await kube.event(OBJ, "Warning", "IntegrityViolation", "x")
        await kube.event(OBJ, "Warning", "IntegrityViolation", "y")  # the pool is not stuck
    assert len(posted) == 2
    errors = [getattr(r, "error", None) for r in caplog.records]
    assert (
        errors
        == [
            'post event: forbidden by RBAC: user "system:serviceaccount:op:etcdconfig" may not '
            'create events in namespace "ns" (grant the verb with a Role/RoleBinding, or check '
            "with `kubectl auth can-i create events -n ns --as "
            "system:serviceaccount:op:etcdconfig`)"
        ]
        * 2
    )
