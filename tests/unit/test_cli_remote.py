"""The CLI over the history API (history.etcdconfig.io/v1alpha1, docs/history-api.md),
against a fake API server on loopback that speaks the contract's JSON: the same
`history`, `show`, `diff` and `rollback` output as from etcd, paging, the one-line
errors and exit codes for what the API server answers, the local re-verification of
every record served, and the transport choice (etcd only with endpoints)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from tests.unit.test_cli_views import NAME, NS, PREFIX, REF, Store

from etcdconfig.canonical import checksum
from etcdconfig.cli import main as cli
from etcdconfig.cli import remote
from etcdconfig.errors import CorruptRecord, NotFound
from etcdconfig.store import VersionedStore
from etcdconfig.store.records import Head, Incarnation

BASE = f"/apis/{remote.GROUP}/{remote.VERSION}/namespaces"
CONFIG_PATH = f"/apis/etcdconfig.io/v1alpha1/namespaces/{NS}/configs/{NAME}"

FORBIDDEN = (
    'configversions.history.etcdconfig.io is forbidden: User "alice" cannot list resource '
    '"configversions" in API group "history.etcdconfig.io" in the namespace "prod"'
)
CORRUPT = (
    "prod/payments version 1: data checksum mismatch (stored sha256:aa, computed sha256:bb); "
    "the record was modified after it was written — run `etcdconfig verify`"
)


def status(code: int, reason: str, message: str, **details: Any) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": details,
        "code": code,
    }


@dataclass
class FakeHistoryApi:
    """What the operator serves behind the APIService, from a :class:`Store`'s etcd:
    ``confighistories/{name}``, ``configversions`` (label selector, limit, continue) and
    ``configversions/{name}.v{N}``. ``answers`` replaces the answer to a path."""

    store: Store
    answers: dict[str, tuple[int, Any]] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    edit: Callable[[dict[str, Any]], None] | None = None  # applied to every ConfigVersion
    config: dict[str, Any] | None = None  # the Config object (etcdconfig.io/v1alpha1)
    patches: list[Any] = field(default_factory=list)
    port: int = 0

    # -- the objects, as the server builds them from the store ---------------------------------

    def versions(self) -> list[dict[str, Any]]:
        base = self.store.keys.versions(NS, NAME)
        out = []
        for key in sorted((k for k in self.store.etcd.data if k.startswith(base)), reverse=True):
            raw, rev = self.store.etcd.data[key]
            record = json.loads(raw)
            obj = {
                "apiVersion": remote.API_VERSION,
                "kind": "ConfigVersion",
                "metadata": {
                    "name": f"{NAME}.v{record['version']}",
                    "namespace": NS,
                    "resourceVersion": str(rev),
                    "creationTimestamp": record["recordedAt"],
                    "labels": {remote.CONFIG_LABEL: NAME, "etcdconfig.io/uid": record["uid"]},
                },
                "config": NAME,
                "verified": True,
                **record,
            }
            if self.edit is not None:
                self.edit(obj)
            out.append(obj)
        return out

    def history(self) -> dict[str, Any] | None:
        head = self.store.etcd.data.get(self.store.keys.head(NS, NAME))
        base = self.store.keys.incarnations(NS, NAME)
        incs = [
            json.loads(v)
            for k, (v, _) in sorted(self.store.etcd.data.items())
            if k.startswith(base)
        ]
        versions = [v["version"] for v in self.versions()]
        if head is None and not incs and not versions:
            return None
        obj: dict[str, Any] = {
            "apiVersion": remote.API_VERSION,
            "kind": "ConfigHistory",
            "metadata": {
                "name": NAME,
                "namespace": NS,
                "resourceVersion": str(head[1] if head else 0),
            },
            "state": "live",
            "head": json.loads(head[0]) if head else None,
            "incarnations": incs,
        }
        if versions:
            obj["retained"] = {"oldest": min(versions), "newest": max(versions)}
        return obj

    # -- HTTP ------------------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(f"{request.method} {request.rel_url}")
        path = request.path
        if path == CONFIG_PATH and self.config is not None:  # the Config, for rollback
            if request.method == "PATCH":
                self.patches.append(await request.json())
                return web.json_response(
                    {**self.config, "metadata": {**self.config["metadata"], "generation": 9}}
                )
            return web.json_response(self.config)
        if path in self.answers:
            code, body = self.answers[path]
            if isinstance(body, str):
                return web.Response(status=code, text=body)
            return web.json_response(body, status=code)
        history_path = f"{BASE}/{NS}/confighistories/{NAME}"
        versions_path = f"{BASE}/{NS}/configversions"
        if path == history_path:
            obj = self.history()
            if obj is None:
                return web.json_response(
                    status(
                        404,
                        "NotFound",
                        f'confighistories.{remote.GROUP} "{NAME}" not found',
                        name=NAME,
                    ),
                    status=404,
                )
            return web.json_response(obj)
        if path == versions_path:
            assert request.query["labelSelector"] == f"{remote.CONFIG_LABEL}={NAME}"
            items = self.versions()
            start = int(request.query.get("continue") or 0)
            limit = int(request.query.get("limit") or 0) or len(items)
            page = items[start : start + limit]
            more = start + limit < len(items)
            return web.json_response(
                {
                    "apiVersion": remote.API_VERSION,
                    "kind": "ConfigVersionList",
                    "metadata": {"continue": str(start + limit) if more else ""},
                    "items": page,
                }
            )
        if path.startswith(versions_path + "/"):
            name = path.rsplit("/", 1)[1]
            for obj in self.versions():
                if obj["metadata"]["name"] == name:
                    return web.json_response(obj)
            return web.json_response(
                status(
                    404, "NotFound", f'configversions.{remote.GROUP} "{name}" not found', name=name
                ),
                status=404,
            )
        # the aggregation layer, for a group it does not know
        return web.json_response(
            status(404, "NotFound", "the server could not find the requested resource"), status=404
        )


class Server:
    """Runs a :class:`FakeHistoryApi` on 127.0.0.1 in a thread of its own (the CLI runs
    its own event loop with asyncio.run)."""

    def __init__(self, api: FakeHistoryApi) -> None:
        self.api = api
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.runner: web.AppRunner | None = None

    async def _start(self) -> int:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.api.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        return int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

    def start(self) -> int:
        self.thread.start()
        return asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    def stop(self) -> None:
        if self.runner is not None:
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def kubeconfig(path: Path, port: int, namespace: str | None = NS) -> Path:
    context: dict[str, Any] = {"cluster": "fake", "user": "alice"}
    if namespace:
        context["namespace"] = namespace
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "alice", "user": {"token": "t0ken"}}],
        "contexts": [{"name": "fake", "context": context}],
        "current-context": "fake",
    }
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture
def store() -> Store:
    return Store()


@pytest.fixture
def api(store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHistoryApi]:
    fake = FakeHistoryApi(store)
    server = Server(fake)
    fake.port = server.start()
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path / "kubeconfig", fake.port)))
    monkeypatch.delenv("ETCDCONFIG_ETCD_ENDPOINTS", raising=False)
    monkeypatch.delenv("ETCDCONFIG_KUBECONFIG", raising=False)
    monkeypatch.delenv("ETCDCONFIG_CONTEXT", raising=False)

    async def no_etcd(args: Any, fn: Any) -> int:
        raise AssertionError("the history API transport must not read etcd")

    monkeypatch.setattr(cli, "_with_store", no_etcd)
    try:
        yield fake
    finally:
        server.stop()


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def via_etcd(
    store: Store, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str, str]:
    """The same command through the etcd transport (endpoints given), over the same store."""

    async def with_store(_: Any, fn: Callable[[VersionedStore], Any]) -> int:
        return int(await fn(VersionedStore(store.etcd, prefix=PREFIX)))  # type: ignore[arg-type]

    with monkeypatch.context() as m:
        m.setattr(cli, "_with_store", with_store)
        m.setenv("ETCDCONFIG_ETCD_ENDPOINTS", "127.0.0.1:2379")
        return run(capsys, *args)


def lifecycle(store: Store) -> None:
    """Versions 1-2 of uid-a, its deletion (Retain), uid-b re-creating the name (3-4)."""
    store.commit("uid-a", 1, {"retries": 3})
    store.commit("uid-a", 2, {"retries": 5}, author={"manager": "kubectl", "changeCause": "more"})
    store.delete("uid-a", purge=False)
    store.commit("uid-b", 1, {"retries": 5, "mode": "b"})
    store.commit(
        "uid-b",
        2,
        {"retries": 3},
        origin={"kind": "rollback", "fromVersion": 1},
        schema={"type": "object"},
        schemaChecksum=checksum({"type": "object"}, "schema"),
    )


# --- the same output from both transports ----------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("history", REF),
        ("history", REF, "-o", "wide"),
        ("history", REF, "-o", "json"),
        ("history", REF, "-o", "yaml"),
        ("history", REF, "-o", "name"),
        ("history", REF, "-o", "jsonpath={.versions[*].version}"),
        ("history", REF, "--limit", "2", "-o", "json"),
        ("history", REF, "--limit", "2", "--before", "3", "-o", "json"),
        ("history", REF, "--limit", "1", "--before", "2", "-o", "json"),
        ("history", REF, "--before", "2"),
        ("show", REF),
        ("show", REF, "-o", "json"),
        ("show", REF, "--version", "1", "--full", "-o", "yaml"),
        ("show", REF, "--version", "2", "--full"),
        ("diff", REF, "1", "2"),
        ("diff", REF, "2", "4", "-o", "json"),
        ("diff", REF, "1", "3", "-o", "yaml"),
        ("show", REF, "--version", "99"),
        ("diff", REF, "1", "99", "-o", "json"),
    ],
)
def test_every_read_command_prints_the_same_through_the_api_as_from_etcd(
    api: FakeHistoryApi,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: tuple[str, ...],
) -> None:
    lifecycle(store)
    expected = via_etcd(store, monkeypatch, capsys, *args)
    assert run(capsys, *args) == expected
    assert api.requests  # it was the API that answered


def test_history_json_is_built_from_confighistory_and_configversions(
    api: FakeHistoryApi, store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    lifecycle(store)
    code, out, err = run(capsys, "history", REF, "-o", "json")
    assert (code, err) == (0, "")
    doc = json.loads(out)
    assert list(doc) == [
        "config",
        "state",
        "head",
        "versions",
        "events",
        "incarnations",
        "rollouts",
        "next",
    ]
    assert doc["config"] == REF and doc["state"] == "live" and doc["next"] is None
    assert [v["version"] for v in doc["versions"]] == [4, 3, 2, 1]
    assert all("data" not in v for v in doc["versions"])
    assert doc["versions"][0]["origin"] == {"kind": "rollback", "fromVersion": 1}
    assert [(e["event"], e["uid"]) for e in doc["events"]] == [
        ("re-created", "uid-b"),
        ("deleted", "uid-a"),
    ]
    assert doc["head"]["version"] == 4 and doc["head"]["uid"] == "uid-b"
    assert [i["uid"] for i in doc["incarnations"]] == ["uid-a", "uid-b"]


def test_paging_keeps_before_meaning_older_than(
    api: FakeHistoryApi, store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    for n in range(1, 8):
        store.commit("uid-a", n, {"n": n})
    first = json.loads(run(capsys, "history", REF, "--limit", "3", "-o", "json")[1])
    assert ([v["version"] for v in first["versions"]], first["next"]) == ([7, 6, 5], 5)
    second = json.loads(
        run(capsys, "history", REF, "--limit", "3", "--before", "5", "-o", "json")[1]
    )
    assert ([v["version"] for v in second["versions"]], second["next"]) == ([4, 3, 2], 2)
    last = json.loads(run(capsys, "history", REF, "--limit", "3", "--before", "2", "-o", "json")[1])
    assert ([v["version"] for v in last["versions"]], last["next"]) == ([1], None)
    # the table says where the next page starts, on stderr
    code, _, err = run(capsys, "history", REF, "--limit", "3")
    assert (code, err.strip()) == (0, "more: --before 5")
    # a page is asked for with one version more than shown (is there a next page?), and
    # the label selector (which the fake server asserts)
    lists = [r for r in api.requests if "/configversions?" in r]
    assert lists and all("limit=4" in r for r in lists[:1])


def test_deleted_and_purged_configs_read_the_same(
    api: FakeHistoryApi,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    store.commit("uid-a", 1, {"retries": 3})
    store.delete("uid-a", purge=False)
    for args in (("history", REF), ("show", REF), ("show", REF, "-o", "json")):
        assert run(capsys, *args) == via_etcd(store, monkeypatch, capsys, *args)
    store.commit("uid-b", 1, {"retries": 4})
    store.delete("uid-b", purge=True)
    for args in (("history", REF), ("history", REF, "-o", "json"), ("show", REF, "-o", "json")):
        assert run(capsys, *args) == via_etcd(store, monkeypatch, capsys, *args)


def test_a_config_with_no_history_exits_4(
    api: FakeHistoryApi, capsys: pytest.CaptureFixture[str]
) -> None:
    expected = (
        f"error: {REF} has no history in the store (no confighistories.{remote.GROUP} "
        f'"{NAME}" in namespace "{NS}": check the namespace, -n or NAMESPACE/NAME)\n'
    )
    for args in (("history", REF), ("show", REF, "-o", "json"), ("diff", REF, "1", "2")):
        assert run(capsys, *args) == (4, "", expected)


def test_purged_show_exits_4_with_the_deletion(
    api: FakeHistoryApi, store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    store.commit("uid-a", 1, {"retries": 3})
    store.delete("uid-a", purge=True)
    at = store.head().recorded_at  # type: ignore[union-attr]
    assert run(capsys, "show", REF) == (
        4,
        "",
        f"error: {REF} was deleted (Purge) at {at}, uid uid-a; no version remains\n",
    )


# --- records are checked again, locally -------------------------------------------------------


def test_a_tampered_configversion_is_refused_with_exit_3(
    api: FakeHistoryApi, store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    store.commit("uid-a", 1, {"retries": 3})
    store.commit("uid-a", 2, {"retries": 5})

    def tamper(obj: dict[str, Any]) -> None:
        if obj["version"] == 1:
            obj["data"] = {"retries": 300}  # checksum left as it was

    api.edit = tamper
    for args in (
        ("show", REF, "--version", "1"),
        ("diff", REF, "1", "2", "-o", "json"),
        ("rollback", REF, "--to", "1", "--print"),
        ("history", REF, "-o", "json"),
    ):
        code, out, err = run(capsys, *args)
        assert (code, out) == (3, ""), args
        assert err.startswith(f"error: {REF} version 1: data checksum mismatch (stored sha256:")
        assert err.endswith("run `etcdconfig verify`\n") and err.count("\n") == 1


def test_the_head_version_must_match_the_heads_record_checksum(
    api: FakeHistoryApi, store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    store.commit("uid-a", 1, {"retries": 3})
    store.commit("uid-a", 2, {"retries": 5})

    def tamper(obj: dict[str, Any]) -> None:
        if obj["version"] == 2:  # data and checksum intact, another field rewritten
            obj["author"] = {"manager": "mallory"}

    api.edit = tamper
    code, out, err = run(capsys, "show", REF)
    assert (code, out) == (3, "")
    assert err.startswith(f"error: {REF} version 2: record checksum mismatch (expected sha256:")
    # version 1 is not the head's: its own checksum is all there is to check, and it holds
    assert run(capsys, "show", REF, "--version", "1")[0] == 0


def test_a_configversion_named_for_another_version_is_refused(
    api: FakeHistoryApi, store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    store.commit("uid-a", 1, {"retries": 3})
    store.commit("uid-a", 2, {"retries": 3})
    v1 = api.versions()[1]
    api.answers[f"{BASE}/{NS}/configversions/{NAME}.v2"] = (
        200,
        {**v1, "metadata": {**v1["metadata"], "name": f"{NAME}.v2"}},
    )
    code, _, err = run(capsys, "show", REF, "--version", "2")
    assert code == 3
    assert err.startswith(f"error: {REF} version 2: the record says version 1")


def test_record_of_and_history_of_give_the_stored_records(store: Store) -> None:
    store.commit("uid-a", 1, {"retries": 3}, schema=None)
    fake = FakeHistoryApi(store)
    history = remote.history_of(fake.history() or {}, NS, NAME)
    raw_head = store.etcd.data[store.keys.head(NS, NAME)][0]
    assert history.head == Head.parse(raw_head, mod_revision=history.head.mod_revision)  # type: ignore[union-attr]
    assert [i.to_json() for i in history.incarnations] == [
        Incarnation.parse(v).to_json()
        for k, (v, _) in store.etcd.data.items()
        if k.startswith(store.keys.incarnations(NS, NAME))
    ]
    assert history.retained_text() == "retained: 1..1"
    obj = fake.versions()[0]
    record = remote.record_of(obj, NS, NAME, history.head)
    stored = json.loads(store.etcd.data[store.keys.version(NS, NAME, 1)][0])
    assert record.raw == stored and list(record.raw) == list(stored)
    assert record.record_checksum() == history.head.record_checksum  # type: ignore[union-attr]
    with pytest.raises(CorruptRecord, match="record checksum mismatch"):
        remote.record_of({**obj, "recordedBy": "someone-else"}, NS, NAME, history.head)


# --- what the API server answers ---------------------------------------------------------------

UNAVAILABLE = (
    "error: the history API (history.etcdconfig.io/v1alpha1) is unavailable: no operator "
    "replica serves it (see kubectl get apiservice v1alpha1.history.etcdconfig.io); admins "
    "can read etcd directly with --etcd-endpoints"
)
NOT_INSTALLED = (
    "error: the history API (history.etcdconfig.io/v1alpha1) is not installed in this "
    "cluster: no APIService v1alpha1.history.etcdconfig.io (install the chart with "
    "historyApi.enabled=true); admins can read etcd directly with --etcd-endpoints"
)


@pytest.mark.parametrize(
    ("code", "body", "exit_code", "line"),
    [
        (503, "service unavailable\n", 1, UNAVAILABLE),
        (
            503,
            status(
                503, "ServiceUnavailable", "the server is currently unable to handle the request"
            ),
            1,
            UNAVAILABLE,
        ),
        (
            404,
            status(404, "NotFound", "the server could not find the requested resource"),
            1,
            NOT_INSTALLED,
        ),
        (404, "404 page not found\n", 1, NOT_INSTALLED),
        (
            403,
            status(403, "Forbidden", FORBIDDEN, group=remote.GROUP, kind="configversions"),
            1,
            f"error: Error from server (Forbidden): {FORBIDDEN}",
        ),
        (
            401,
            status(401, "Unauthorized", "Unauthorized"),
            1,
            "error: You must be logged in to the server (Unauthorized)",
        ),
        (500, status(500, "InternalError", CORRUPT), 3, f"error: {CORRUPT}"),
        (
            500,
            status(500, "InternalError", "etcd is unavailable"),
            1,
            "error: Error from server (InternalError): etcd is unavailable",
        ),
        (
            400,
            status(400, "BadRequest", "unsupported label selector: only etcdconfig.io/config=NAME"),
            1,
            "error: Error from server (BadRequest): unsupported label selector: "
            "only etcdconfig.io/config=NAME",
        ),
        (
            502,
            "",
            1,
            "error: the history API (history.etcdconfig.io/v1alpha1) answered HTTP 502 Bad Gateway",
        ),
    ],
)
@pytest.mark.parametrize("where", ["confighistories", "configversions"])
def test_api_errors_are_one_line_with_their_exit_code(
    api: FakeHistoryApi,
    store: Store,
    capsys: pytest.CaptureFixture[str],
    code: int,
    body: Any,
    exit_code: int,
    line: str,
    where: str,
) -> None:
    store.commit("uid-a", 1, {"retries": 3})
    path = f"{BASE}/{NS}/{where}" + (f"/{NAME}" if where == "confighistories" else "")
    api.answers[path] = (code, body)
    api.answers[f"{BASE}/{NS}/configversions/{NAME}.v1"] = (code, body)
    commands = [("history", REF), ("history", REF, "-o", "json")]
    if where == "confighistories":
        commands += [("show", REF), ("diff", REF, "1", "1"), ("rollback", REF, "--to", "1")]
    for args in commands:
        assert run(capsys, *args) == (exit_code, "", line + "\n"), args


def test_a_missing_version_exits_4_naming_what_is_retained(
    api: FakeHistoryApi, store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    for n in range(1, 4):
        store.commit("uid-a", n, {"n": n})
    store.etcd.delete(store.keys.version(NS, NAME, 1))  # removed by retention
    expected = f"error: {REF} has no version 1 in the store (retained: 2..3)\n"
    assert run(capsys, "show", REF, "--version", "1") == (4, "", expected)
    assert run(capsys, "rollback", REF, "--to", "1") == (4, "", expected)


def test_api_error_mapping() -> None:
    gone = remote.api_error(
        404, "Not Found", json.dumps(status(404, "NotFound", 'x "a.v9" not found', name="a.v9"))
    )
    assert isinstance(gone, NotFound)
    assert isinstance(
        remote.api_error(500, "", json.dumps(status(500, "InternalError", CORRUPT))), CorruptRecord
    )
    assert str(remote.api_error(404, "Not Found", b"")) == remote.NOT_INSTALLED
    assert str(remote.api_error(503, "Service Unavailable", None)) == remote.UNAVAILABLE
    forbidden = remote.api_error(403, "Forbidden", json.dumps(status(403, "Forbidden", FORBIDDEN)))
    assert str(forbidden) == f"Error from server (Forbidden): {FORBIDDEN}"


def test_an_unreachable_api_server_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path / "kc", port)))
    monkeypatch.delenv("ETCDCONFIG_ETCD_ENDPOINTS", raising=False)
    code, out, err = run(capsys, "history", REF)
    assert (code, out) == (1, "")
    assert err.startswith(
        f"error: cannot reach the Kubernetes API server at http://127.0.0.1:{port}: "
    )
    assert err.count("\n") == 1


def test_no_kubeconfig_at_all_says_how_to_give_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    for var in (
        "KUBECONFIG",
        "ETCDCONFIG_ETCD_ENDPOINTS",
        "KUBERNETES_SERVICE_HOST",
        "ETCDCONFIG_KUBECONFIG",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr("etcdconfig.kube._default_kubeconfig_exists", lambda: False)
    assert run(capsys, "show", REF) == (
        1,
        "",
        "error: no kubeconfig: set KUBECONFIG or pass --kubeconfig (history, show, diff and "
        "rollback read the history API, history.etcdconfig.io/v1alpha1); admins can read "
        "etcd directly with --etcd-endpoints\n",
    )


# --- which transport ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "env", "etcd"),
    [
        (["history", REF], {}, False),
        (["history", REF, "--etcd-endpoints", "h:1"], {}, True),
        (["--etcd-endpoints", "h:1", "show", REF], {}, True),
        (["diff", REF, "1", "2"], {"ETCDCONFIG_ETCD_ENDPOINTS": "h:1"}, True),
        (["rollback", REF, "--to", "1", "--prefix", "/x"], {}, False),
    ],
)
def test_etcd_is_read_only_when_its_endpoints_are_given(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], env: dict[str, str], etcd: bool
) -> None:
    monkeypatch.delenv("ETCDCONFIG_ETCD_ENDPOINTS", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert cli._use_etcd(cli.parse(argv)) is etcd


def test_rollback_reads_the_target_through_the_api_and_patches_the_config(
    api: FakeHistoryApi, store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    store.commit("uid-a", 1, {"retries": 3})
    store.commit("uid-a", 2, {"retries": 5})
    api.config = {
        "apiVersion": "etcdconfig.io/v1alpha1",
        "kind": "Config",
        "metadata": {"name": NAME, "namespace": NS, "resourceVersion": "42", "generation": 2},
        "spec": {"data": {"retries": 5}},
    }
    code, out, err = run(capsys, "rollback", NAME, "--to", "1")  # the kubeconfig's namespace
    assert (code, err) == (0, "")
    assert out == (
        f"{REF} rolled back to the data of version 1 (generation 9); "
        "the operator records it as a new version\n"
    )
    [ops] = api.patches
    assert ops[0] == {"op": "test", "path": "/metadata/resourceVersion", "value": "42"}
    assert ops[-1] == {"op": "replace", "path": "/spec/data", "value": {"retries": 3}}
    assert any(f"GET {BASE}/{NS}/configversions/{NAME}.v1" in r for r in api.requests)
