"""The connection cap's two edges: what ``--namespaces`` accepts (names: the cap reserves
one watch stream per entry) and what kopf's login handler returns (one capped session
per set of credentials, the same object while they do not change)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import kopf
import pytest
from pydantic import ValidationError

from etcdconfig.controller.handlers import build_registry
from etcdconfig.settings import Settings


def settings(**kw: Any) -> Settings:
    return Settings(etcd_endpoints="127.0.0.1:2379", **kw)


def test_namespaces_are_names_each_once() -> None:
    assert settings(namespaces="team-a, b,team-a").namespaces == ["team-a", "b"]
    assert settings().namespaces == []


@pytest.mark.parametrize("entry", ["team-*", "!kube-system", "Team", "-a", "a_b", "x" * 64])
def test_a_namespace_pattern_or_bad_name_is_refused_with_the_entry(entry: str) -> None:
    with pytest.raises(ValidationError) as refused:
        settings(namespaces=f"ok,{entry}")
    assert (
        f"{entry!r} is not a namespace name (lowercase letters, digits and "
        "'-', at most 63, starting and ending with a letter or digit); patterns such as "
        "'team-*' or '!kube-system' are not supported: list the namespaces, or leave it "
        "empty for all"
    ) in str(refused.value)


class Config:
    def __init__(self, token: str) -> None:
        self.host = "https://127.0.0.1:6443"
        self.ssl_ca_cert = None
        self.verify_ssl = False
        self.cert_file = None
        self.key_file = None
        self.token = token

    def get_api_key_with_prefix(self, key: str) -> str:
        return f"Bearer {self.token}"


def login_handler(cfg: Config, namespaces: list[str], cap: int) -> Any:
    runtime = SimpleNamespace(
        kube=SimpleNamespace(api=SimpleNamespace(configuration=cfg)),
        settings=SimpleNamespace(namespaces=namespaces, api_connections=cap, webhook_enabled=False),
    )
    registry = build_registry(cast("Any", runtime), cast("Any", None))
    (handler,) = registry._activities.get_all_handlers()
    return handler.fn


async def test_login_caps_kopfs_session_and_returns_it_again_for_the_same_credentials() -> None:
    cfg = Config("t1")
    login = login_handler(cfg, ["a", "b", "c"], 7)
    first = await login()
    try:
        assert isinstance(first, kopf.AiohttpSession)
        # the cap plus one stream per namespace plus 4 for kopf's observers
        assert first.aiohttp_session.connector.limit == 7 + 3 + 4
        assert first.aiohttp_session.headers["Authorization"] == "Bearer t1"
        # unchanged credentials: the very same result, which kopf's vault refuses once
        # the API server rejected it (no endless re-login on a revoked identity)
        assert await login() is first
        cfg.token = "t2"  # a rotated token: a new session
        second = await login()
        try:
            assert second is not first
            assert second.aiohttp_session.headers["Authorization"] == "Bearer t2"
        finally:
            await second.aiohttp_session.close()
    finally:
        await first.aiohttp_session.close()
