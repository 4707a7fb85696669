"""The history API's pure parts: the front-proxy configuration and authentication, the
SubjectAccessReview cache, selectors, continue tokens and Table rows."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict

from etcdconfig.controller.history_api import (
    Access,
    ApiError,
    Authorizer,
    HistoryApi,
    HistoryApiServer,
    HistoryStore,
    RequestHeaderConfig,
    Selection,
    User,
    _token,
    _untoken,
    as_table,
    wants_table,
)
from etcdconfig.devenv.pki import CertificateAuthority
from etcdconfig.errors import EtcdConfigError

CM = {
    "requestheader-client-ca-file": "-----BEGIN CERTIFICATE-----\nX\n-----END CERTIFICATE-----",
    "requestheader-allowed-names": '["front-proxy-client"]',
    "requestheader-username-headers": '["X-Remote-User"]',
    "requestheader-group-headers": '["X-Remote-Group"]',
    "requestheader-extra-headers-prefix": '["X-Remote-Extra-"]',
}


def cert(cn: str) -> dict[str, Any]:
    return {"subject": ((("organizationName", "x"),), (("commonName", cn),))}


def test_the_configmap_is_read_as_the_api_server_writes_it() -> None:
    auth = RequestHeaderConfig.from_configmap(CM)
    assert auth.allowed_names == ("front-proxy-client",)
    assert auth.username_headers == ("X-Remote-User",)
    with pytest.raises(EtcdConfigError, match="has no requestheader-client-ca-file"):
        RequestHeaderConfig.from_configmap({})
    with pytest.raises(EtcdConfigError, match="requestheader-allowed-names is not a JSON list"):
        RequestHeaderConfig.from_configmap({**CM, "requestheader-allowed-names": "front"})


def test_authentication_needs_the_front_proxy_certificate_and_a_user() -> None:
    auth = RequestHeaderConfig.from_configmap(CM)
    headers = CIMultiDict(
        [
            ("X-Remote-User", "alice"),
            ("X-Remote-Group", "team-a"),
            ("x-remote-group", "system:authenticated"),
            ("X-Remote-Extra-Scopes%2fA", "one"),
            ("X-Remote-Extra-Scopes%2Fa", "two"),
        ]
    )
    user = auth.authenticate(cert("front-proxy-client"), headers)
    assert user == User(
        name="alice",
        groups=("team-a", "system:authenticated"),
        extra=(("scopes/a", ("one", "two")),),
    )
    for peer, hdrs, message in [
        (None, headers, "no front-proxy client certificate"),
        (cert("mallory"), headers, "not an allowed front-proxy name"),
        (cert("front-proxy-client"), CIMultiDict(), "no user in the request headers"),
    ]:
        with pytest.raises(ApiError) as info:
            auth.authenticate(peer, hdrs)
        assert info.value.code == 401 and message in info.value.message
    # no allowed names: any certificate of the front proxy's CA will do
    anyone = RequestHeaderConfig.from_configmap({**CM, "requestheader-allowed-names": "[]"})
    assert anyone.authenticate(cert("mallory"), headers).name == "alice"


async def test_answers_are_cached_for_the_ttl_and_keyed_by_everything() -> None:
    asked: list[dict[str, Any]] = []
    now = [100.0]

    async def review(body: dict[str, Any]) -> dict[str, Any]:
        asked.append(body["spec"])
        return {"allowed": body["spec"]["resourceAttributes"].get("namespace") == "a"}

    authz = Authorizer(review, ttl=10.0, clock=lambda: now[0])
    alice = User("alice", ("team",))
    await authz.check(alice, Access("list", "configversions", "a"))
    await authz.check(alice, Access("list", "configversions", "a"))
    assert len(asked) == 1
    with pytest.raises(ApiError) as info:
        await authz.check(alice, Access("get", "configversions", "b", "x.v1"))
    assert info.value.code == 403
    assert info.value.message == (
        'configversions.history.etcdconfig.io "x.v1" is forbidden: User "alice" cannot get '
        'resource "configversions" in API group "history.etcdconfig.io" in the namespace "b"'
    )
    # another group set is another question
    await authz.check(User("alice", ("other",)), Access("list", "configversions", "a"))
    assert len(asked) == 3
    now[0] += 10.5
    await authz.check(alice, Access("list", "configversions", "a"))
    assert len(asked) == 4
    assert asked[0] == {
        "user": "alice",
        "groups": ["team"],
        "resourceAttributes": {
            "verb": "list",
            "group": "history.etcdconfig.io",
            "version": "v1alpha1",
            "resource": "configversions",
            "namespace": "a",
        },
    }


async def test_a_failing_review_refuses_and_is_not_cached() -> None:
    calls = 0

    async def review(body: dict[str, Any]) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("connection refused")
        return {"allowed": True}

    authz = Authorizer(review)
    with pytest.raises(ApiError) as info:
        await authz.check(User("bob"), Access("list", "configversions", "a"))
    assert info.value.code == 503
    await authz.check(User("bob"), Access("list", "configversions", "a"))
    assert calls == 2


def test_selectors() -> None:
    assert Selection.parse("configversions", "etcdconfig.io/config=payments", "") == Selection(
        config="payments"
    )
    assert Selection.parse("configversions", "", "config==payments,metadata.name=payments.v2") == (
        Selection(config="payments", name="payments.v2")
    )
    for labels, fields, message in [
        ("team=a", "", "unsupported label selector 'team=a'"),
        ("etcdconfig.io/config!=x", "", "unsupported label selector"),
        ("", "spec.x=1", "unsupported field selector 'spec.x=1'"),
        ("etcdconfig.io/config=a", "config=b", "contradicts another one"),
    ]:
        with pytest.raises(ApiError) as info:
            Selection.parse("configversions", labels, fields)
        assert info.value.code == 400 and message in info.value.message


def test_a_continue_token_works_only_for_its_own_query() -> None:
    token = _token({"q": "abc", "ns": "a", "c": "payments", "b": 3})
    assert _untoken(token, "abc", "a")["b"] == 3
    assert _untoken(token, "abc", "")["c"] == "payments"  # a list over every namespace
    for bad, query, ns in [
        (token, "other", "a"),
        (token, "abc", "b"),  # positioned in another namespace than the one authorized
        ("%%%", "abc", "a"),
        (_token({"x": 1}), "abc", "a"),
        (_token({"q": "abc", "ns": "a", "c": "p", "b": "x"}), "abc", "a"),
        (_token({"q": "abc", "ns": "a/b", "c": "p", "b": 0}), "abc", ""),
    ]:
        with pytest.raises(ApiError) as info:
            _untoken(bad, query, ns)
        assert info.value.code == 400


def test_tables_for_kubectl() -> None:
    assert wants_table("application/json;as=Table;v=v1;g=meta.k8s.io,application/json")
    assert not wants_table("application/json")
    obj = {
        "kind": "ConfigVersion",
        "metadata": {"name": "payments.v2"},
        "version": 2,
        "generation": 4,
        "checksum": "sha256:0123456789abcdef",
        "recordedAt": "2026-12-07T10:00:00Z",
        "author": {"manager": "helm", "changeCause": "why"},
        "origin": {"kind": "rollback", "fromVersion": 1},
        "uid": "u",
        "recordedBy": "op-0",
        "fencingRevision": 9,
    }
    table = as_table([obj], "configversions", {}, "Metadata")
    (row,) = table["rows"]
    assert row["cells"] == [
        "payments.v2", 2, 4, "0123456789ab", "2026-12-07T10:00:00Z", "helm",
        "rollback from v1", "why", "u", "op-0", 9,
    ]  # fmt: skip
    assert row["object"]["kind"] == "PartialObjectMetadata"
    assert len(table["columnDefinitions"]) == len(row["cells"])
    assert json.loads(json.dumps(table)) == table


async def test_a_review_that_does_not_answer_is_a_503_within_the_timeout() -> None:
    never = asyncio.Event()

    async def review(body: dict[str, Any]) -> dict[str, Any]:
        await never.wait()
        return {"allowed": True}

    authz = Authorizer(review, timeout=0.05)
    with pytest.raises(ApiError) as info:
        await authz.check(User("bob"), Access("list", "configversions", "a"))
    assert info.value.code == 503
    assert info.value.message == (
        "cannot check access with the API server (SubjectAccessReview): no answer within 0.05s"
    )


def test_the_last_common_name_counts_as_for_kube_apiserver() -> None:
    auth = RequestHeaderConfig.from_configmap(CM)
    two = {"subject": ((("commonName", "front-proxy-client"),), (("commonName", "mallory"),))}
    with pytest.raises(ApiError):
        auth.authenticate(two, CIMultiDict([("X-Remote-User", "alice")]))


async def test_an_unreadable_front_proxy_configuration_is_a_503_not_a_crash(
    tmp_path: Path,
) -> None:
    """The task keeps serving (the replica's readiness, which the webhook follows, does
    not depend on the history API) and says why; once the ConfigMap reads, it is used."""
    ca = CertificateAuthority.load_or_create(tmp_path, "ca")
    ca.issue(tmp_path / "serving", common_name="h", server=True, ip_addresses=("127.0.0.1",))
    attempts = 0

    async def load_auth() -> RequestHeaderConfig:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise OSError("configmaps is forbidden")
        return RequestHeaderConfig.from_configmap(CM)

    async def never(body: dict[str, Any]) -> dict[str, Any]:
        raise AssertionError("no review before authentication")

    api = HistoryApi(HistoryStore(client=None, prefix="/p"), Authorizer(never), lambda: None)  # type: ignore[arg-type]
    server = HistoryApiServer(
        api,
        addr="127.0.0.1",
        port=0,
        cert_file=tmp_path / "serving.crt",
        key_file=tmp_path / "serving.key",
        load_auth=load_auth,
        check_interval=0.05,
    )
    task = asyncio.create_task(server.run())
    try:
        deadline = asyncio.get_running_loop().time() + 10
        while not server.bound_port:
            assert asyncio.get_running_loop().time() < deadline, "not serving"
            await asyncio.sleep(0.01)  # poll interval of a deadline-bounded wait
        context = ssl.create_default_context(cafile=str(ca.cert_path))
        async with aiohttp.ClientSession() as session:
            url = f"https://127.0.0.1:{server.bound_port}/apis"
            async with session.get(url, ssl=context) as resp:
                body = await resp.json()
            # either still unloaded (503 naming the cause) or loaded (401: no client cert)
            assert resp.status in (503, 401)
            if resp.status == 503:
                assert body["message"] == (
                    "the front-proxy configuration (kube-system/extension-apiserver-"
                    "authentication) cannot be read: configmaps is forbidden"
                )
            while server.auth is None:
                assert asyncio.get_running_loop().time() < deadline, "never reloaded"
                await asyncio.sleep(0.01)  # poll interval of a deadline-bounded wait
            async with session.get(
                url, ssl=ssl.create_default_context(cafile=str(ca.cert_path))
            ) as resp:
                assert resp.status == 401
        assert not task.done()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
