"""Adversarial review of the history API (docs/history-api.md) against the real system:
a real kube-apiserver with the aggregation layer in front of a real operator process
and a real etcd (the ``history_api`` fixture of tests/e2e/history_env.py).

Eight of these found real defects in the first version of the server and of the
start-up (their docstrings say what was observed then — "Found by review (was: …" — what
is expected, and the fix); they pass since the fixes. The others pin down attacks that
were tried and refused.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import signal
import socket
import ssl
import subprocess
import threading
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.e2e.history_env import HistoryApi, history_api
from tests.e2e.operator_env import BIN, apply, config_manifest, wait_observed, wait_until

from etcdconfig.canonical import checksum, sha256_of
from etcdconfig.devenv.controlplane import ControlPlane
from etcdconfig.devenv.etcd import EtcdServer, free_port
from etcdconfig.etcd import EtcdClient, EtcdSettings
from etcdconfig.store.records import dump

__all__ = ["history_api"]  # the fixture, imported for pytest

BASE = "/apis/history.etcdconfig.io/v1alpha1"
NS_A = "adv-hist-a"  # sorts before NS_Z: the victim
NS_Z = "adv-hist-z"  # the attacker's own namespace
SECRET = "classified-recipe-42"


# --- helpers --------------------------------------------------------------------------------


def raw(
    plane: ControlPlane, path: str, kubeconfig: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``kubectl get --raw`` through the API server (and its aggregation layer)."""
    return plane.kubectl("get", "--raw", path, kubeconfig=kubeconfig, check=False)


def query_id(resource: str, ns: str, config: str | None = None, name: str | None = None) -> str:
    """What a continue token must carry to be accepted for a list (computable by anyone)."""
    return hashlib.sha256(json.dumps([resource, ns, config, name]).encode()).hexdigest()[:16]


def token(obj: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj, sort_keys=True).encode()).decode()


def version_key(api: HistoryApi, ns: str, name: str, version: int) -> bytes:
    return f"{api.operator.prefix}/configs/{ns}/{name}/versions/{version:020d}".encode()


def head_key(api: HistoryApi, ns: str, name: str) -> bytes:
    return f"{api.operator.prefix}/configs/{ns}/{name}/head".encode()


def service_host(api: HistoryApi) -> str:
    """The name the serving certificate is issued for."""
    return f"etcdconfig-history.{getattr(api, 'service_namespace', 'etcdconfig-history-e2e')}.svc"


def client_context(api: HistoryApi, cert: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(api.certs / "history-ca.crt"))
    if cert is not None:
        context.load_cert_chain(cert.with_suffix(".crt"), cert.with_suffix(".key"))
    return context


def direct(
    api: HistoryApi, context: ssl.SSLContext, path: str, headers: list[tuple[str, str]]
) -> tuple[int, str]:
    """One HTTP/1.1 GET straight to the operator's port (not through the API server),
    headers sent exactly as given (duplicates and case kept); (status, body)."""
    with (
        socket.create_connection(("127.0.0.1", api.port), timeout=10) as sock,
        context.wrap_socket(sock, server_hostname=service_host(api)) as tls,
    ):
        lines = [f"GET {path} HTTP/1.1", "Host: x", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in headers]
        tls.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode(errors="replace")


def names(listing: dict[str, Any]) -> list[str]:
    return [item["metadata"]["name"] for item in listing["items"]]


@pytest.fixture
async def etcd(history_api: HistoryApi) -> AsyncIterator[EtcdClient]:
    client = EtcdClient(EtcdSettings(endpoints=[history_api.operator.etcd_endpoint]))
    yield client
    await client.close()


@pytest.fixture(scope="module")
def two_teams(control_plane: ControlPlane, history_api: HistoryApi) -> Iterator[Path]:
    """A secret Config in ``NS_A``, an own one in ``NS_Z``; yields the kubeconfig of
    ``mallory``, a reader of ``NS_Z`` only."""
    for ns in (NS_A, NS_Z):
        control_plane.kubectl("create", "namespace", ns)
    apply(control_plane, config_manifest("secret-sauce", NS_A, {"recipe": SECRET}))
    apply(control_plane, config_manifest("mine", NS_Z, {"x": 1}))
    wait_observed(control_plane, NS_A, "secret-sauce")
    wait_observed(control_plane, NS_Z, "mine")
    mallory = history_api.bind_reader("mallory", NS_Z)
    wait_until(
        lambda: (
            raw(control_plane, f"{BASE}/namespaces/{NS_Z}/configversions", mallory).returncode == 0
        ),
        30,
        "mallory's binding in effect",
    )
    yield mallory
    for ns in (NS_A, NS_Z):
        control_plane.kubectl("delete", "namespace", ns, "--wait=false", "--ignore-not-found")


# --- authorization ---------------------------------------------------------------------------


def test_the_reader_of_z_is_forbidden_a_by_every_plain_route(
    control_plane: ControlPlane, two_teams: Path
) -> None:
    """Baseline for the token attacks below: list, get, the metadata.name and config
    selectors of A and the cluster scope are all refused for mallory."""
    for path in (
        f"{BASE}/namespaces/{NS_A}/configversions",
        f"{BASE}/namespaces/{NS_A}/configversions/secret-sauce.v1",
        f"{BASE}/namespaces/{NS_A}/confighistories/secret-sauce",
        f"{BASE}/configversions",
        f"{BASE}/confighistories",
        f"{BASE}/configversions?fieldSelector=metadata.namespace%3D{NS_Z}",
    ):
        out = raw(control_plane, path, two_teams)
        assert out.returncode == 1, path
        assert "Forbidden" in out.stderr and SECRET not in out.stdout + out.stderr, path
    # selecting A's Config while listing Z reads Z's key range only
    for query in (
        "labelSelector=etcdconfig.io%2Fconfig%3Dsecret-sauce",
        "fieldSelector=metadata.name%3Dsecret-sauce.v1",
        f"fieldSelector=metadata.namespace%3D{NS_A}",
    ):
        out = raw(control_plane, f"{BASE}/namespaces/{NS_Z}/configversions?{query}", two_teams)
        assert SECRET not in out.stdout + out.stderr, query
    # a token naming A's Config inside a one-Config query of Z: the selection wins
    forged = token(
        {"q": query_id("configversions", NS_Z, "mine"), "ns": NS_A, "c": "secret-sauce", "b": 0}
    )
    out = raw(
        control_plane,
        f"{BASE}/namespaces/{NS_Z}/configversions?labelSelector=etcdconfig.io%2Fconfig%3Dmine"
        f"&continue={forged}",
        two_teams,
    )
    assert SECRET not in out.stdout + out.stderr


def test_a_forged_continue_token_cannot_list_versions_of_another_namespace(
    control_plane: ControlPlane, two_teams: Path
) -> None:
    """Input: mallory, allowed to list configversions in ``adv-hist-z`` only, lists
    ``/namespaces/adv-hist-z/configversions?continue=T`` where T is base64 JSON
    ``{"q": sha256(["configversions", "adv-hist-z", null, null])[:16], "ns":
    "adv-hist-a", "c": "", "b": 0}`` — the token is not signed and its ``q`` is public.

    Found by review (was): 200 with ``secret-sauce.v1`` of ``adv-hist-a`` and its data: the token's
    ``ns`` is used as the start key of ``HistoryStore.configs()``, whose range end is
    the requested namespace's; every namespace sorting between the token's and the
    requested one is read, and only the requested namespace was authorized.

    Expected: 400 BadRequest (or only items of ``adv-hist-z``).

    Fix: in ``_list_versions``/``_list_histories`` refuse a token whose ``ns`` is not
    the path's namespace (when namespaced) and, better, make tokens tamper-proof (an
    HMAC with a per-process/cluster key over q, ns, c, b)."""
    forged = token({"q": query_id("configversions", NS_Z), "ns": NS_A, "c": "", "b": 0})
    out = raw(
        control_plane, f"{BASE}/namespaces/{NS_Z}/configversions?continue={forged}", two_teams
    )
    leaked = SECRET in out.stdout
    assert not leaked, f"another namespace's record was served: {out.stdout[:400]}"
    if out.returncode == 0:
        assert {i["metadata"]["namespace"] for i in json.loads(out.stdout)["items"]} <= {NS_Z}


def test_a_forged_continue_token_cannot_list_histories_of_another_namespace(
    control_plane: ControlPlane, two_teams: Path
) -> None:
    """Input: as the previous test, for ``confighistories``: token ``{"q":
    sha256(["confighistories", "adv-hist-z", null, null])[:16], "ns": "adv-hist-a",
    "c": ""}``.

    Found by review (was): 200 listing ``adv-hist-a/secret-sauce``'s ConfigHistory (head, uid,
    checksums) to a user with no access to ``adv-hist-a``.

    Expected: 400 BadRequest; only ``adv-hist-z``.

    Fix: as above (check ``cont["ns"] == ns``; sign the token)."""
    forged = token({"q": query_id("confighistories", NS_Z), "ns": NS_A, "c": ""})
    out = raw(
        control_plane, f"{BASE}/namespaces/{NS_Z}/confighistories?continue={forged}", two_teams
    )
    if out.returncode == 0:
        seen = {
            (i["metadata"]["namespace"], i["metadata"]["name"])
            for i in json.loads(out.stdout)["items"]
        }
        assert (NS_A, "secret-sauce") not in seen, f"leaked: {sorted(seen)}"


def test_a_malformed_continue_token_is_a_400(control_plane: ControlPlane, two_teams: Path) -> None:
    """Input: a continue token with the right ``q`` but ``b`` not a number
    (``"b": "x"``), or without ``ns``/``c``.

    Found by review (was): aiohttp's bare ``500 Internal Server Error`` (text/plain; the
    ValueError /
    KeyError escapes the handler and the ``_errors`` middleware) — kubectl prints "an
    error on the server ... has prevented the request from succeeding".

    Expected: ``400 BadRequest`` Status "the continue token is not valid" (the contract:
    a token that is not from this list is refused with 400).

    Fix: validate the decoded token in ``_untoken`` (``ns``/``c`` strings, ``b`` an int
    >= 0) and raise ``ApiError(400)``."""
    q = query_id("configversions", NS_Z)
    for bad in (
        {"q": q, "ns": NS_Z, "c": "mine", "b": "x"},
        {"q": q, "b": 0},
    ):
        out = raw(
            control_plane,
            f"{BASE}/namespaces/{NS_Z}/configversions?continue={token(bad)}",
            two_teams,
        )
        assert out.returncode == 1
        assert "BadRequest" in out.stderr, f"{bad}: {out.stderr.strip()}"


def test_a_token_of_another_query_and_garbage_are_refused_with_400(
    control_plane: ControlPlane, two_teams: Path
) -> None:
    for bad in (
        token({"q": query_id("configversions", NS_A), "ns": NS_A, "c": "", "b": 0}),
        token({"q": query_id("confighistories", NS_Z), "ns": NS_Z, "c": "", "b": 0}),
        "not-base64!!",
        base64.urlsafe_b64encode(b"[1,2]").decode(),
    ):
        out = raw(
            control_plane, f"{BASE}/namespaces/{NS_Z}/configversions?continue={bad}", two_teams
        )
        assert out.returncode == 1 and "BadRequest" in out.stderr, bad


def test_limit_edge_cases(control_plane: ControlPlane, two_teams: Path) -> None:
    for limit, ok in (("0", True), ("-3", False), ("99999999999", True), ("abc", False)):
        out = raw(
            control_plane,
            f"{BASE}/namespaces/{NS_Z}/configversions?limit={limit}",
            two_teams,
        )
        assert (out.returncode == 0) is ok, (limit, out.stderr)
        if ok:
            assert names(json.loads(out.stdout)) == ["mine.v1"]
        else:
            assert "BadRequest" in out.stderr


def test_the_metadata_namespace_field_selector_is_honoured(
    control_plane: ControlPlane, two_teams: Path
) -> None:
    """Input (cluster admin): ``kubectl get configversions -A --field-selector
    metadata.namespace=adv-hist-z`` (a list across namespaces, narrowed by namespace).

    Found by review (was): items of every namespace (``secret-sauce.v1`` of ``adv-hist-a`` too):
    ``Selection.parse`` drops ``metadata.namespace=...`` ("the path names the namespace
    already") even when the path names none, or names another one.

    Expected: only ``adv-hist-z``'s versions (and nothing for a namespaced list whose
    selector names another namespace), as for every built-in resource.

    Fix: keep the value in ``Selection``; a namespaced list with another namespace
    returns no items, a cluster-wide one restricts ``configs()`` to that namespace."""
    out = control_plane.kubectl(
        "get",
        "configversions",
        "-A",
        "--field-selector",
        f"metadata.namespace={NS_Z}",
        "-o",
        "json",
    )
    spaces = {i["metadata"]["namespace"] for i in json.loads(out.stdout)["items"]}
    assert spaces == {NS_Z}
    other = json.loads(
        raw(
            control_plane,
            f"{BASE}/namespaces/{NS_A}/configversions?fieldSelector=metadata.namespace%3D{NS_Z}",
        ).stdout
    )
    assert names(other) == []


# --- authentication ---------------------------------------------------------------------------


def test_header_smuggling_without_the_front_proxy_certificate_is_refused(
    history_api: HistoryApi, two_teams: Path
) -> None:
    """Every path — discovery, /openapi, unknown ones, trailing and encoded slashes,
    ``..`` — and every header spelling answers 401 without the front-proxy certificate,
    and with the cluster CA's admin certificate the handshake itself fails."""
    ctx = client_context(history_api)
    forged = [
        ("X-Remote-User", "system:admin"),
        ("x-remote-user", "admin"),
        ("X-Remote-Group", "system:masters"),
        ("X-Remote-Extra-Scopes", "all"),
    ]
    for path in (
        "/apis",
        BASE,
        "/openapi/v2",
        "/openapi/v3",
        f"{BASE}/",
        f"{BASE}/namespaces/{NS_A}/configversions/",
        f"{BASE}/namespaces/{NS_Z}/configversions/..%2F..%2F{NS_A}%2Fsecret-sauce.v1",
        f"{BASE}/namespaces/{NS_Z}/../../namespaces/{NS_A}/configversions",
        "/healthz",
    ):
        status, body = direct(history_api, ctx, path, forged)
        assert status == 401, (path, status, body[:200])
        assert SECRET not in body


def test_the_front_proxy_certificate_reads_only_as_the_user_it_names(
    history_api: HistoryApi, two_teams: Path
) -> None:
    """With the real front-proxy certificate, a duplicated, mixed-case user header
    resolves to the first ``X-Remote-User`` — which RBAC then judges; extras with
    escapes and empty groups change nothing; HTTP methods other than GET are refused."""
    ctx = client_context(history_api, history_api.plane.pki_dir / "front-proxy-client")
    path = f"{BASE}/namespaces/{NS_A}/configversions"
    for headers in (
        [("X-Remote-User", "mallory"), ("x-remote-user", "system:admin")],
        [("x-REMOTE-user", "mallory"), ("X-Remote-Group", ""), ("X-Remote-Extra-A%2Fb", "c")],
    ):
        status, body = direct(history_api, ctx, path, headers)
        assert status == 403 and SECRET not in body, (headers, status, body[:200])
    status, body = direct(history_api, ctx, path, [("X-Remote-User", "mallory")])
    assert status == 403
    status, body = direct(
        history_api, ctx, f"{BASE}/namespaces/{NS_Z}/configversions", [("X-Remote-User", "mallory")]
    )
    assert status == 200 and json.loads(body)["items"][0]["metadata"]["name"] == "mine.v1"


# --- integrity --------------------------------------------------------------------------------


async def test_a_version_key_above_the_head_is_refused(
    control_plane: ControlPlane,
    history_api: HistoryApi,
    namespace: str,
    etcd: EtcdClient,
) -> None:
    """Input: Config ``solo`` with one version (head: version 1); a record is then put
    at ``versions/00000000000000000002`` by something else, self-consistent: data and
    ``checksum`` match, ``parentChecksum`` names version 1's record checksum.

    Found by review (was): ``get configversion solo.v2`` answers 200 with ``verified: true`` and the
    forged data, and ``list`` shows it first, as the newest version — though the head
    (the only thing that says which versions were committed) names version 1, and
    ``etcdconfig verify`` reports it as ``beyond-head``.

    Expected: a version above the head's is never served: ``500 InternalError`` naming
    the Config and version with ``run `etcdconfig verify``` (or at least not listed).

    Fix: ``HistoryStore.version()``/``versions()`` already read the head at the same
    revision: refuse (CorruptRecord) any record whose version is above
    ``head.version`` (and any record when there is no head at all)."""
    apply(control_plane, config_manifest("solo", namespace, {"n": 1}))
    wait_observed(control_plane, namespace, "solo")
    kv, _ = await etcd.get(version_key(history_api, namespace, "solo", 1))
    assert kv is not None
    forged = dict(json.loads(kv.value))
    forged.update(
        version=2,
        data={"n": 666},
        checksum=checksum({"n": 666}),
        parentChecksum=sha256_of(kv.value),
    )
    await etcd.put(version_key(history_api, namespace, "solo", 2), dump(forged))
    one = raw(control_plane, f"{BASE}/namespaces/{namespace}/configversions/solo.v2")
    listed = raw(control_plane, f"{BASE}/namespaces/{namespace}/configversions")
    assert "666" not in one.stdout, f"served: {one.stdout[:300]}"
    assert "666" not in listed.stdout, f"listed: {listed.stdout[:300]}"


async def test_versions_rewritten_with_their_checksums_are_refused_on_every_path(
    control_plane: ControlPlane,
    history_api: HistoryApi,
    namespace: str,
    etcd: EtcdClient,
) -> None:
    """The head's version rewritten with a matching checksum (get, list, the first item
    of a continued page), and a middle version rewritten likewise: all refused; after a
    deletion (Retain) and a re-creation the intact history is served (no false alarm)."""
    m = config_manifest("chain", namespace, {"n": 1})
    apply(control_plane, m)
    wait_observed(control_plane, namespace, "chain")
    for n in (2, 3):
        m["spec"]["data"] = {"n": n}
        apply(control_plane, m)
        wait_observed(control_plane, namespace, "chain")
    base = f"{BASE}/namespaces/{namespace}/configversions"
    first = json.loads(raw(control_plane, f"{base}?limit=1").stdout)
    assert names(first) == ["chain.v3"]
    cont = first["metadata"]["continue"]
    # deletion (Retain) and re-creation: versions continue, the chain holds
    control_plane.kubectl("delete", "configs.etcdconfig.io", "chain", "-n", namespace)
    wait_until(
        lambda: (
            json.loads(
                raw(control_plane, f"{BASE}/namespaces/{namespace}/confighistories/chain").stdout
            )["state"]
            == "deleted"
        ),
        60,
        "deletion recorded",
    )
    apply(control_plane, config_manifest("chain", namespace, {"n": 4}))
    wait_observed(control_plane, namespace, "chain")
    every = json.loads(raw(control_plane, base).stdout)
    assert names(every) == ["chain.v4", "chain.v3", "chain.v2", "chain.v1"]
    assert len({i["uid"] for i in every["items"]}) == 2
    # rewrite v2 with a matching checksum: the page starting below v3 refuses it
    kv, _ = await etcd.get(version_key(history_api, namespace, "chain", 2))
    assert kv is not None
    rec = dict(json.loads(kv.value))
    rec.update(data={"n": 222}, checksum=checksum({"n": 222}))
    await etcd.put(version_key(history_api, namespace, "chain", 2), dump(rec))
    for path in (
        f"{base}/chain.v2",
        base,
        f"{base}?limit=1&continue={cont}",
        f"{base}?fieldSelector=metadata.name%3Dchain.v2",
        f"{base}?labelSelector=etcdconfig.io%2Fconfig%3Dchain&limit=5",
    ):
        out = raw(control_plane, path)
        assert out.returncode == 1 and "run `etcdconfig verify`" in out.stderr, path
        assert "222" not in out.stdout, path
    # the head's own version rewritten likewise
    kv4, _ = await etcd.get(version_key(history_api, namespace, "chain", 4))
    assert kv4 is not None
    rec4 = dict(json.loads(kv4.value))
    rec4.update(data={"n": 444}, checksum=checksum({"n": 444}))
    await etcd.put(version_key(history_api, namespace, "chain", 4), dump(rec4))
    for path in (f"{base}/chain.v4", f"{base}?limit=1"):
        out = raw(control_plane, path)
        assert out.returncode == 1 and "chain version 4" in out.stderr, path
        assert "444" not in out.stdout


async def test_a_list_without_limit_is_never_cut_silently(
    control_plane: ControlPlane,
    history_api: HistoryApi,
    etcd: EtcdClient,
) -> None:
    """Input: a Config with 501 retained versions (a valid chain and head, written to
    the store directly); one ``GET .../configversions`` without ``limit`` (what
    client-go ``List`` without ``Limit``, the Python client and most scripts send; they
    do not follow ``continue`` they did not ask for).

    Found by review (was): 500 items: ``limit`` absent (or 0) is turned into ``_MAX_LIMIT`` and a
    ``continue`` token that a client that asked for no paging never follows; the
    oldest version is silently missing.

    Expected: a list without ``limit`` returns every item (the Kubernetes list
    contract: ``limit`` is opt-in), or a ``limit`` above the cap still cut but only when
    the client asked for a limit.

    Fix: page only when ``limit > 0``; without it stream/collect every page server-side
    (or answer ``410``/``400`` instead of a truncated list)."""
    ns, name, count = "adv-many", "many", 501
    uid = "00000000-0000-4000-8000-000000000501"
    parent: str | None = None
    last: dict[str, Any] = {}
    for v in range(1, count + 1):
        data = {"v": v}
        record = {
            "format": 1,
            "version": v,
            "uid": uid,
            "generation": v,
            "checksum": checksum(data),
            "parentChecksum": parent,
            "data": data,
            "recordedAt": "2026-01-01T00:00:00.000000Z",
            "recordedBy": "adversary",
            "author": {"manager": "test"},
            "origin": {"kind": "create" if v == 1 else "update"},
            "schema": None,
            "schemaChecksum": None,
            "fencingRevision": 1,
        }
        stored = dump(record)
        await etcd.put(version_key(history_api, ns, name, v), stored)
        parent, last = sha256_of(stored), record
    head = {
        "format": 1,
        "version": count,
        "uid": uid,
        "generation": count,
        "checksum": last["checksum"],
        "recordChecksum": parent,
        "recordedAt": last["recordedAt"],
    }
    await etcd.put(head_key(history_api, ns, name), dump(head))
    paged = control_plane.kubectl("get", "configversions", "-n", ns, "-o", "name")
    assert len(paged.stdout.split()) == count  # kubectl follows continue tokens itself
    # one list without limit, as client-go's List(ctx, ListOptions{}) or the Python
    # client's list_namespaced_custom_object send it: no paging asked for
    whole = json.loads(raw(control_plane, f"{BASE}/namespaces/{ns}/configversions").stdout)
    assert len(whole["items"]) == count, (
        f"{len(whole['items'])} items, continue={whole['metadata'].get('continue')!r}"
    )


# --- liveness ---------------------------------------------------------------------------------


def test_discovery_and_reads_survive_the_serving_certificate_rotated(
    control_plane: ControlPlane, history_api: HistoryApi, two_teams: Path, tmp_path: Path
) -> None:
    """A new serving pair written in place (same CA) is picked up without dropping the
    listener; a pair that does not load keeps the previous one serving."""
    from etcdconfig.devenv.pki import CertificateAuthority

    certs = history_api.certs
    ca = CertificateAuthority.load_or_create(certs, "history-ca")
    crt, key = certs / "serving.crt", certs / "serving.key"
    old, old_key = crt.read_bytes(), key.read_bytes()
    garbage = b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n"
    crt.write_bytes(garbage)
    try:
        wait_until(
            lambda: "does not load yet" in history_api.operator.log_text(), 30, "bad pair noticed"
        )
        out = raw(control_plane, f"{BASE}/namespaces/{NS_Z}/configversions", two_teams)
        assert out.returncode == 0
        ca.issue(
            tmp_path / "new",
            common_name="rotated",
            server=True,
            dns_names=(service_host(history_api),),
        )
        key.write_bytes((tmp_path / "new.key").read_bytes())
        crt.write_bytes((tmp_path / "new.crt").read_bytes())

        def serves_rotated() -> bool:
            ctx = client_context(history_api)
            with (
                socket.create_connection(("127.0.0.1", history_api.port), timeout=5) as s,
                ctx.wrap_socket(s, server_hostname=service_host(history_api)) as tls,
            ):
                cert = tls.getpeercert()
            return any(
                v == "rotated" for rdn in cert["subject"] for k, v in rdn if k == "commonName"
            )

        wait_until(serves_rotated, 30, "rotated certificate served")
        out = raw(control_plane, f"{BASE}/namespaces/{NS_Z}/configversions", two_teams)
        assert out.returncode == 0 and names(json.loads(out.stdout)) == ["mine.v1"]
    finally:  # the module's pair back (reloaded within seconds; same CA, same name)
        key.write_bytes(old_key)
        crt.write_bytes(old)


# --- start-up: connect_etcd -------------------------------------------------------------------


class HoldingProxy:
    """A TCP proxy to ``upstream`` that accepts connections but forwards nothing until
    :meth:`release` (an etcd that answers only once the test says so)."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.released = threading.Event()
        self.accepted = threading.Event()
        self.closing = False
        self.sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closing:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.sockets.append(conn)
            self.accepted.set()
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        self.released.wait()
        with contextlib.suppress(OSError):
            up = socket.create_connection(self.upstream)
            self.sockets.append(up)
            for a, b in ((conn, up), (up, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def release(self) -> None:
        self.released.set()

    def close(self) -> None:
        self.closing = True
        self.released.set()
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.close()


def _signal_delivered(pid: int, sig: int) -> bool:
    """The kernel handed ``sig`` to the process (no longer pending)."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    bit = 1 << (sig - 1)
    return not any(int(fields[k].strip(), 16) & bit for k in ("SigPnd", "ShdPnd"))


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def test_a_sigterm_during_a_successful_etcd_connect_stops_the_start_up(
    control_plane: ControlPlane, store_etcd: EtcdServer, crd: Path, tmp_path: Path
) -> None:
    """Interleaving: ``etcdconfig run --etcd-wait 60``; etcd accepts the connection but
    answers slowly (a proxy holding it); SIGTERM arrives while ``client.connect()`` is
    in flight; then etcd answers and the connect succeeds.

    Found by review (was): ``connect_etcd`` returns True without looking at ``signalled``, removes
    its handlers, and the operator starts and becomes ready: the SIGTERM is lost (in a
    pod the kubelet waits the whole grace period, then SIGKILLs: no clean leave).

    Expected: a signal that arrived during ``connect_etcd`` stops the start-up cleanly
    (exit 0, "a signal arrived while waiting for etcd").

    Fix: after a successful connect, ``if signalled.is_set(): return False``; and keep
    a handler installed (not SIG_DFL) until ``run`` takes the signals over, so that a
    signal between ``connect_etcd`` and ``take_signals()`` stops too."""
    host, _, port = store_etcd.endpoint.rpartition("//")[2].partition(":")
    proxy = HoldingProxy((host or "127.0.0.1", int(port)))
    http_port = free_port()
    log = tmp_path / "operator.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                str(BIN / "etcdconfig"),
                "run",
                "--log-format",
                "text",
                "--http-addr",
                "127.0.0.1",
                "--http-port",
                str(http_port),
                "--replica-id",
                "lost-signal",
                "--prefix",
                "/adv-lost-signal",
                "--etcd-endpoints",
                f"http://127.0.0.1:{proxy.port}",
                "--etcd-wait",
                "60",
            ],
            env=control_plane.client_env(None),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        assert proxy.accepted.wait(30), "the operator never connected"
        proc.send_signal(signal.SIGTERM)
        wait_until(lambda: _signal_delivered(proc.pid, signal.SIGTERM), 10, "SIGTERM delivered")
        proxy.release()
        wait_until(
            lambda: proc.poll() is not None or _ready(http_port),
            60,
            "the operator stopped (or became ready)",
        )
        assert proc.poll() is not None, (
            "SIGTERM was ignored: the operator is running and ready\n" + log.read_text()[-2000:]
        )
        assert proc.returncode == 0
        # stopped where the signal found it: no etcd session (lease, member key) begun
        assert "etcd session started" not in log.read_text()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        proxy.close()


def test_a_sigterm_after_etcd_answered_but_before_kopf_stops_cleanly(
    control_plane: ControlPlane, store_etcd: EtcdServer, crd: Path, tmp_path: Path
) -> None:
    """Interleaving: ``etcdconfig run --etcd-wait 60``; etcd answers at once, so
    ``connect_etcd`` returns and removes its SIGTERM/SIGINT handlers (restoring
    SIG_DFL); the Kubernetes API server is slow (a proxy holding the connection of
    ``check_crd``); SIGTERM arrives then.

    Found by review (was): the process dies of the signal (return code -15): nothing handles
    SIGTERM between ``connect_etcd`` and ``take_signals()`` in ``run``. As PID 1 in a
    container SIG_DFL means *ignored*: the signal is lost, the operator starts anyway
    and the pod waits out its grace period to be SIGKILLed.

    Expected: the same clean stop as while waiting for etcd (exit 0, the etcd client
    closed), whatever step of the start-up the signal lands in.

    Fix: install the stop handlers once, before ``connect_etcd``, and keep them until
    kopf is ready (``take_signals`` then replaces kopf's own); have every start-up
    step race the stop event (``connect_etcd`` already does)."""
    config = yaml.safe_load(control_plane.kubeconfig.read_text())
    server = urllib.parse.urlsplit(config["clusters"][0]["cluster"]["server"])
    proxy = HoldingProxy((server.hostname or "127.0.0.1", server.port or 443))
    config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{proxy.port}"
    kubeconfig = tmp_path / "slow-apiserver.kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(config))
    log = tmp_path / "operator.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                str(BIN / "etcdconfig"),
                "run",
                "--log-format",
                "text",
                "--http-addr",
                "127.0.0.1",
                "--http-port",
                str(free_port()),
                "--replica-id",
                "early-signal",
                "--prefix",
                "/adv-early-signal",
                "--etcd-endpoints",
                store_etcd.endpoint,
                "--etcd-wait",
                "60",
            ],
            env=control_plane.client_env(kubeconfig),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        assert proxy.accepted.wait(30), "the operator never reached the API server"
        proc.send_signal(signal.SIGTERM)
        wait_until(
            lambda: proc.poll() is not None or _signal_delivered(proc.pid, signal.SIGTERM),
            10,
            "SIGTERM delivered",
        )
        proxy.release()
        wait_until(lambda: proc.poll() is not None, 30, "the operator stopped")
        assert proc.returncode == 0, f"exit {proc.returncode}\n{log.read_text()[-2000:]}"
        # stopped where the signal found it: no etcd session (lease, member key) begun
        assert "etcd session started" not in log.read_text()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        proxy.close()
