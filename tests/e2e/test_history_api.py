"""The history API through the real aggregation layer: kubectl with a kubeconfig reads
every version, under RBAC per namespace; nothing reaches the server but the API server;
a tampered record is refused, never served."""

from __future__ import annotations

import json
import socket
import ssl
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.e2e.history_env import APISERVICE, HistoryApi, history_api
from tests.e2e.operator_env import apply, config_manifest, wait_observed, wait_until

from etcdconfig.devenv.controlplane import ControlPlane
from etcdconfig.devenv.pki import CertificateAuthority
from etcdconfig.etcd import EtcdClient, EtcdSettings

BASE = "/apis/history.etcdconfig.io/v1alpha1"


def versions_of(api: HistoryApi, ns: str, config: str, **query: str) -> dict[str, Any]:
    params = urllib.parse.urlencode({"labelSelector": f"etcdconfig.io/config={config}", **query})
    return dict(api.raw(f"{BASE}/namespaces/{ns}/configversions?{params}"))


@pytest.fixture(scope="module")
def team_a(control_plane: ControlPlane, history_api: HistoryApi) -> Iterator[str]:
    """``payments`` with three versions (create, update, update with a cause) and
    ``flags`` with one, in a namespace of their own."""
    ns = f"history-a-{uuid.uuid4().hex[:6]}"
    control_plane.kubectl("create", "namespace", ns)
    m = config_manifest("payments", ns, {"limit": 10})
    apply(control_plane, m)
    wait_observed(control_plane, ns, "payments")
    m["spec"]["data"] = {"limit": 20}
    apply(control_plane, m)
    wait_observed(control_plane, ns, "payments")
    m["spec"]["data"] = {"limit": 30, "currency": "EUR"}
    m["metadata"]["annotations"] = {"etcdconfig.io/change-cause": "raise the limit"}
    apply(control_plane, m)
    wait_observed(control_plane, ns, "payments")
    apply(control_plane, config_manifest("flags", ns, {"beta": True}))
    wait_observed(control_plane, ns, "flags")
    yield ns
    control_plane.kubectl("delete", "namespace", ns, "--wait=false", "--ignore-not-found")


@pytest.fixture(scope="module")
def team_b(control_plane: ControlPlane, history_api: HistoryApi) -> Iterator[str]:
    ns = f"history-b-{uuid.uuid4().hex[:6]}"
    control_plane.kubectl("create", "namespace", ns)
    apply(control_plane, config_manifest("secret-sauce", ns, {"recipe": "classified"}))
    wait_observed(control_plane, ns, "secret-sauce")
    yield ns
    control_plane.kubectl("delete", "namespace", ns, "--wait=false", "--ignore-not-found")


@pytest.fixture
async def etcd(history_api: HistoryApi) -> AsyncIterator[EtcdClient]:
    client = EtcdClient(EtcdSettings(endpoints=[history_api.operator.etcd_endpoint]))
    yield client
    await client.close()


def test_kubectl_get_prints_the_history_as_a_table(
    control_plane: ControlPlane, team_a: str
) -> None:
    out = control_plane.kubectl(
        "get", "configversions", "-n", team_a, "-l", "etcdconfig.io/config=payments"
    ).stdout.splitlines()
    assert out[0].split() == [
        "NAME", "VERSION", "GENERATION", "CHECKSUM", "RECORDED", "AUTHOR", "ORIGIN", "CAUSE",
    ]  # fmt: skip
    names = [line.split()[0] for line in out[1:]]
    assert names == ["payments.v3", "payments.v2", "payments.v1"]
    assert out[1].split()[1:3] == ["3", "3"]
    assert out[1].rstrip().endswith("raise the limit")
    wide = control_plane.kubectl(
        "get", "cfgver", "-n", team_a, "-l", "etcdconfig.io/config=payments", "-o", "wide"
    ).stdout.splitlines()
    assert wide[0].split()[-3:] == ["UID", "RECORDED-BY", "FENCING"]
    every = control_plane.kubectl("get", "configversions", "-n", team_a, "-o", "name")
    assert sorted(every.stdout.split()) == sorted(
        f"configversion.history.etcdconfig.io/{n}"
        for n in ("payments.v1", "payments.v2", "payments.v3", "flags.v1")
    )


async def test_get_returns_the_stored_record_field_for_field(
    control_plane: ControlPlane,
    team_a: str,
    history_api: HistoryApi,
    etcd: EtcdClient,
) -> None:
    out = control_plane.kubectl("get", "configversion", "payments.v2", "-n", team_a, "-o", "yaml")
    obj = yaml.safe_load(out.stdout)
    key = f"{history_api.operator.prefix}/configs/{team_a}/payments/versions/{2:020d}"
    kv, _ = await etcd.get(key.encode())
    assert kv is not None
    stored = json.loads(kv.value)
    record = {
        k: v
        for k, v in obj.items()
        if k not in ("apiVersion", "kind", "metadata", "config", "verified")
    }
    assert record == stored
    assert obj["verified"] is True and obj["config"] == "payments"
    assert obj["data"] == {"limit": 20}
    assert obj["metadata"]["name"] == "payments.v2"
    assert obj["metadata"]["labels"] == {
        "etcdconfig.io/config": "payments",
        "etcdconfig.io/uid": stored["uid"],
    }
    assert obj["metadata"]["resourceVersion"] == str(kv.mod_revision)
    missing = control_plane.kubectl(
        "get", "configversion", "payments.v9", "-n", team_a, check=False
    )
    assert missing.returncode == 1
    assert missing.stderr.strip() == (
        'Error from server (NotFound): configversions.history.etcdconfig.io "payments.v9" not found'
    )


def test_confighistory_has_the_head_and_the_incarnations(
    control_plane: ControlPlane, team_a: str
) -> None:
    obj = json.loads(
        control_plane.kubectl("get", "confighistory", "payments", "-n", team_a, "-o", "json").stdout
    )
    assert obj["state"] == "live"
    assert obj["head"]["version"] == 3
    assert obj["retained"] == {"oldest": 1, "newest": 3}
    assert [i["firstVersion"] for i in obj["incarnations"]] == [1]
    table = control_plane.kubectl("get", "confighistories", "-n", team_a).stdout.splitlines()
    assert table[0].split() == ["NAME", "STATE", "HEAD", "RETAINED", "INCARNATIONS", "RECORDED"]
    assert sorted(line.split()[0] for line in table[1:]) == ["flags", "payments"]


def test_paging_walks_every_version_once_in_order(
    history_api: HistoryApi,
    team_a: str,
) -> None:
    seen: list[str] = []
    page = versions_of(history_api, team_a, "payments", limit="2")
    pages = 1
    while True:
        seen += [item["metadata"]["name"] for item in page["items"]]
        token = page["metadata"].get("continue")
        if not token:
            break
        page = versions_of(history_api, team_a, "payments", limit="2", **{"continue": token})
        pages += 1
    assert seen == ["payments.v3", "payments.v2", "payments.v1"]
    assert pages == 2
    # across Configs too, one version per page
    every: list[str] = []
    params = {"limit": "1"}
    while True:
        query = urllib.parse.urlencode(params)
        page = history_api.raw(f"{BASE}/namespaces/{team_a}/configversions?{query}")
        assert len(page["items"]) <= 1
        every += [item["metadata"]["name"] for item in page["items"]]
        if not page["metadata"].get("continue"):
            break
        params["continue"] = page["metadata"]["continue"]
    assert sorted(every) == sorted(["flags.v1", "payments.v1", "payments.v2", "payments.v3"])
    assert len(every) == len(set(every))
    # kubectl pages by itself
    out = history_api.plane.kubectl(
        "get", "configversions", "-n", team_a, "--chunk-size=1", "-o", "name"
    )
    assert len(out.stdout.split()) == 4


def test_selectors_pick_one_config_and_unsupported_ones_are_refused(
    control_plane: ControlPlane, team_a: str
) -> None:
    by_field = control_plane.kubectl(
        "get", "configversions", "-n", team_a, "--field-selector", "config=flags", "-o", "name"
    )
    assert by_field.stdout.split() == ["configversion.history.etcdconfig.io/flags.v1"]
    bad = control_plane.kubectl("get", "configversions", "-n", team_a, "-l", "team=a", check=False)
    assert bad.returncode == 1
    assert "unsupported label selector 'team=a'" in bad.stderr
    assert "etcdconfig.io/config=<config>" in bad.stderr


def test_the_api_is_read_only_and_has_no_watch(control_plane: ControlPlane, team_a: str) -> None:
    deleted = control_plane.kubectl(
        "delete", "configversion", "payments.v1", "-n", team_a, check=False
    )
    assert deleted.returncode == 1
    assert "MethodNotAllowed" in deleted.stderr or "not supported" in deleted.stderr
    watch = control_plane.kubectl(
        "get", "configversions", "-n", team_a, "--watch", "--request-timeout=10s", check=False
    )
    assert watch.returncode == 1
    assert "watch is not supported by the history API" in watch.stderr


def test_a_reader_of_namespace_a_reads_a_and_is_forbidden_b(
    history_api: HistoryApi,
    team_a: str,
    team_b: str,
) -> None:
    plane = history_api.plane
    alice = history_api.bind_reader("alice", team_a)
    wait_until(
        lambda: (
            plane.kubectl(
                "get", "configversions", "-n", team_a, "-o", "name", kubeconfig=alice, check=False
            ).returncode
            == 0
        ),
        30,
        "alice's binding in effect",
    )
    mine = plane.kubectl(
        "get", "configversion", "payments.v1", "-n", team_a, "-o", "json", kubeconfig=alice
    )
    assert json.loads(mine.stdout)["data"] == {"limit": 10}
    theirs = plane.kubectl("get", "configversions", "-n", team_b, kubeconfig=alice, check=False)
    assert theirs.returncode == 1
    assert theirs.stderr.strip() == (
        "Error from server (Forbidden): configversions.history.etcdconfig.io is forbidden: "
        'User "alice" cannot list resource "configversions" in API group '
        f'"history.etcdconfig.io" in the namespace "{team_b}"'
    )
    one = plane.kubectl(
        "get", "configversion", "secret-sauce.v1", "-n", team_b, kubeconfig=alice, check=False
    )
    assert one.returncode == 1
    assert 'configversions.history.etcdconfig.io "secret-sauce.v1" is forbidden' in one.stderr
    assert "classified" not in one.stdout + one.stderr
    every = plane.kubectl(
        "get", "configversions", "--all-namespaces", kubeconfig=alice, check=False
    )
    assert every.returncode == 1
    assert "at the cluster scope" in every.stderr


# --- nothing but the API server may call --------------------------------------------------


def _request(
    api: HistoryApi, context: ssl.SSLContext, path: str, headers: dict[str, str]
) -> tuple[int, str]:
    """One HTTP/1.1 GET over TLS; (status, body)."""
    with (
        socket.create_connection(("127.0.0.1", api.port), timeout=10) as raw,
        context.wrap_socket(
            raw, server_hostname=f"etcdconfig-history.{api.service_namespace}.svc"
        ) as tls,
    ):
        lines = [f"GET {path} HTTP/1.1", "Host: x", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        tls.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    if not data:
        return 0, ""
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode(errors="replace")


def _client_context(history_api: HistoryApi, cert: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(history_api.certs / "history-ca.crt"))
    if cert is not None:
        context.load_cert_chain(cert.with_suffix(".crt"), cert.with_suffix(".key"))
    return context


def test_a_request_not_from_the_api_server_is_refused(
    history_api: HistoryApi,
    team_b: str,
    tmp_path: Path,
) -> None:
    path = f"{BASE}/namespaces/{team_b}/configversions"
    forged = {"X-Remote-User": "admin", "X-Remote-Group": "system:masters"}
    # no client certificate: the headers alone are worth nothing
    status, body = _request(history_api, _client_context(history_api), path, forged)
    assert status == 401 and "no front-proxy client certificate" in body
    assert "classified" not in body
    # a certificate of the cluster's own CA (a user's): not the front proxy's CA
    plane = history_api.plane
    admin = plane.pki_dir / "admin"
    try:  # TLS 1.3: the server's refusal of the certificate arrives after the request
        status, body = _request(history_api, _client_context(history_api, admin), path, forged)
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        status, body = 0, ""
    assert (status, body) == (0, ""), "the handshake must fail: no answer at all"
    # the front proxy's CA, but not an allowed name
    front = CertificateAuthority.load_or_create(plane.pki_dir, "front-proxy-ca")
    front.issue(tmp_path / "intruder", common_name="intruder", client=True)
    status, body = _request(
        history_api, _client_context(history_api, tmp_path / "intruder"), path, forged
    )
    assert status == 401 and "not an allowed front-proxy name" in body
    assert "classified" not in body
    # the real front-proxy certificate without a user header
    status, body = _request(
        history_api,
        _client_context(history_api, plane.pki_dir / "front-proxy-client"),
        path,
        {},
    )
    assert status == 401 and "no user in the request headers" in body


async def test_a_tampered_record_is_refused_with_the_verify_hint(
    control_plane: ControlPlane,
    history_api: HistoryApi,
    etcd: EtcdClient,
) -> None:
    ns = f"history-tampered-{uuid.uuid4().hex[:6]}"
    control_plane.kubectl("create", "namespace", ns)
    m = config_manifest("forged", ns, {"limit": 10})
    apply(control_plane, m)
    wait_observed(control_plane, ns, "forged")
    m["spec"]["data"] = {"limit": 20}
    apply(control_plane, m)
    wait_observed(control_plane, ns, "forged")
    key = f"{history_api.operator.prefix}/configs/{ns}/forged/versions/{1:020d}".encode()
    kv, _ = await etcd.get(key)
    assert kv is not None
    record = json.loads(kv.value)
    record["data"] = {"limit": 1000}
    await etcd.put(key, json.dumps(record).encode())
    one = control_plane.kubectl(
        "get", "configversion", "forged.v1", "-n", ns, "-o", "json", check=False
    )
    assert one.returncode == 1
    assert "forged version 1: data checksum mismatch" in one.stderr
    assert "run `etcdconfig verify`" in one.stderr
    assert "1000" not in one.stdout
    listed = control_plane.kubectl("get", "configversions", "-n", ns, "-o", "json", check=False)
    assert listed.returncode == 1 and "run `etcdconfig verify`" in listed.stderr
    # the intact version is still served on its own
    ok = control_plane.kubectl("get", "configversion", "forged.v2", "-n", ns, "-o", "json")
    assert json.loads(ok.stdout)["data"] == {"limit": 20}
    # data and checksum rewritten together: v2's parentChecksum still names the original
    from etcdconfig.canonical import checksum

    record["checksum"] = checksum(record["data"])
    await etcd.put(key, json.dumps(record, separators=(",", ":"), sort_keys=True).encode())
    again = control_plane.kubectl("get", "configversion", "forged.v1", "-n", ns, check=False)
    assert again.returncode == 1
    assert "record checksum mismatch" in again.stderr
    # the head's version, rewritten consistently: the head's recordChecksum names it
    key = f"{history_api.operator.prefix}/configs/{ns}/forged/versions/{2:020d}".encode()
    kv, _ = await etcd.get(key)
    assert kv is not None
    head_record = json.loads(kv.value)
    head_record["author"] = {"manager": "someone-else"}
    await etcd.put(key, json.dumps(head_record, separators=(",", ":"), sort_keys=True).encode())
    head = control_plane.kubectl("get", "configversion", "forged.v2", "-n", ns, check=False)
    assert head.returncode == 1
    assert "forged version 2: record checksum mismatch" in head.stderr


def test_the_operator_down_makes_the_apiservice_unavailable(
    control_plane: ControlPlane,
    history_api: HistoryApi,
    team_a: str,
) -> None:
    """Last in the module: stops the operator, then starts it again."""
    op = history_api.operator
    op.stop()
    try:
        wait_until(lambda: history_api.available() == "False", 60, "APIService unavailable")
        down = control_plane.kubectl("get", "configversions", "-n", team_a, check=False)
        assert down.returncode == 1
        assert "ServiceUnavailable" in down.stderr or "unable to handle" in down.stderr
        cond = json.loads(
            control_plane.kubectl("get", "apiservice", APISERVICE, "-o", "json").stdout
        )["status"]["conditions"][0]
        assert cond["reason"] == "FailedDiscoveryCheck"
    finally:
        op.start()
        op.wait_ready()
    wait_until(lambda: history_api.available() == "True", 60, "APIService available again")
    assert control_plane.kubectl("get", "configversions", "-n", team_a, "-o", "name").stdout


def test_the_server_authorizes_by_itself_what_the_proxy_passes(
    history_api: HistoryApi,
    team_a: str,
    team_b: str,
) -> None:
    """kube-apiserver authorizes a request before it proxies it; the history API asks
    again (SubjectAccessReview), as every aggregated server must: a request carrying
    the front-proxy certificate is not trusted further than the user it names."""
    plane = history_api.plane
    history_api.bind_reader("carol", team_a)
    front = _client_context(history_api, plane.pki_dir / "front-proxy-client")
    carol = {"X-Remote-User": "carol", "X-Remote-Group": "system:authenticated"}

    def status_in(ns: str) -> int:
        return _request(history_api, front, f"{BASE}/namespaces/{ns}/configversions", carol)[0]

    wait_until(lambda: status_in(team_a) == 200, 30, "carol's binding in effect")
    status, body = _request(history_api, front, f"{BASE}/namespaces/{team_b}/configversions", carol)
    assert status == 403
    assert json.loads(body)["message"] == (
        'configversions.history.etcdconfig.io is forbidden: User "carol" cannot list resource '
        f'"configversions" in API group "history.etcdconfig.io" in the namespace "{team_b}"'
    )
    assert "classified" not in body
