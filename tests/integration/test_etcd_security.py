"""etcd transport and identity: TLS with client certificates, user/password auth and
RBAC on the store's prefix, against a real etcd configured like production.

Every refusal names its cause: at start-up (``etcdconfig run`` exits 2 with one
line) and later (``connect()`` and every call raise an error that says why).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.integration.secure_etcd import PREFIX, SecureEtcd, start_secure_etcd

from etcdconfig.concurrency import ConfigLocks, Session
from etcdconfig.concurrency.membership import Membership
from etcdconfig.devenv.etcd import EtcdServer, free_port
from etcdconfig.errors import (
    EtcdAuthError,
    EtcdPermissionDenied,
    EtcdTLSError,
    EtcdUnavailable,
)
from etcdconfig.etcd import EtcdClient, EtcdSettings, TLSFiles
from etcdconfig.store import ChangeRequest, VersionedStore

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureEtcd]:
    env = start_secure_etcd(tmp_path_factory.mktemp("secure-etcd"))
    try:
        yield env
    finally:
        env.server.stop()


@pytest.fixture
async def open_client(secure: SecureEtcd) -> AsyncIterator[Any]:
    clients: list[EtcdClient] = []

    def make(settings: EtcdSettings) -> EtcdClient:
        c = EtcdClient(settings)
        clients.append(c)
        return c

    yield make
    for c in clients:
        await c.close()


def change(ns: str, gen: int, data: dict[str, Any]) -> ChangeRequest:
    return ChangeRequest(
        namespace=ns, name="payments", uid="uid-1", generation=gen, data=data, owner_confirmed=True
    )


# --- what works with least privilege ------------------------------------------------------


async def test_operator_role_on_the_prefix_suffices_for_commit_lock_lease_and_membership(
    secure: SecureEtcd, open_client: Any
) -> None:
    client = open_client(secure.settings("operator", prefix=PREFIX))
    await client.connect(write=True)
    session = await Session(client, ttl=5).start()  # leases need no key permission
    assert 0 < await client.time_to_live(session.lease_id) <= 5
    membership = Membership(client, PREFIX, "replica-a")
    await membership.join(session)
    locks = ConfigLocks(session, prefix=PREFIX, identity="replica-a")
    store = VersionedStore(client, prefix=PREFIX, replica_id="replica-a")
    first = await store.record(change("least-priv", 1, {"replicas": 1}), locks)
    second = await store.record(change("least-priv", 2, {"replicas": 2}), locks)
    assert (first.version, second.version) == (1, 2)
    assert await store.verify("least-priv", "payments") == []
    await membership.leave()
    await session.close()  # revoking a lease needs write access to its keys: ours


async def test_client_certificate_common_name_is_the_identity_without_a_password(
    secure: SecureEtcd, open_client: Any
) -> None:
    tls = secure.tls(cert_file=secure.cn_cert.cert_path, key_file=secure.cn_cert.key_path)
    client = open_client(EtcdSettings(endpoints=(secure.url,), tls=tls, prefix=PREFIX))
    await client.connect(write=True)
    session = await Session(client, ttl=5).start()
    store = VersionedStore(client, prefix=PREFIX)
    locks = ConfigLocks(session, prefix=PREFIX)
    assert (await store.record(change("cn-identity", 1, {"a": 1}), locks)).version == 1
    with pytest.raises(EtcdPermissionDenied) as info:
        await client.put(b"/elsewhere/x", b"1")
    assert str(info.value).startswith(
        "etcd put of '/elsewhere/x' failed: etcdserver: permission denied for the etcd user "
        f"named by the common name of {secure.cn_cert.cert_path}"
    )
    await session.close()


async def test_read_only_user_reads_history_but_its_writes_are_refused_naming_the_cause(
    secure: SecureEtcd, open_client: Any
) -> None:
    writer = open_client(secure.settings("operator"))
    session = await Session(writer, ttl=5).start()
    await VersionedStore(writer, prefix=PREFIX).record(
        change("read-only", 1, {"replicas": 3}), ConfigLocks(session, prefix=PREFIX)
    )
    await session.close()

    reader = open_client(secure.settings("reader", prefix=PREFIX))
    await reader.connect()
    store = VersionedStore(reader, prefix=PREFIX)
    page, _ = await store.history("read-only", "payments")
    assert [r.version for r in page] == [1]
    assert (await store.current("read-only", "payments")).data == {"replicas": 3}
    assert await store.verify("read-only", "payments") == []

    with pytest.raises(EtcdPermissionDenied) as info:
        await reader.connect(write=True)
    assert str(info.value) == (
        "etcd user 'reader' may read but not write keys under '/etcdconfig/': "
        "the operator needs readwrite on the configured prefix"
    )
    key = f"{PREFIX}/configs/read-only/payments/head"
    with pytest.raises(EtcdPermissionDenied) as info:
        await reader.put(key.encode(), b"{}")
    assert str(info.value) == (
        f"etcd put of {key!r} failed: etcdserver: permission denied for etcd user 'reader' "
        "(the etcd user's roles do not grant this key range; grant readwrite on the "
        "configured prefix: `etcdctl role grant-permission --prefix=true ROLE readwrite "
        "PREFIX/`)"
    )
    # a lock is a write too: the store refuses before anything is recorded
    session = await Session(reader, ttl=5).start()
    with pytest.raises(EtcdPermissionDenied, match="permission denied for etcd user 'reader'"):
        await store.record(change("read-only", 2, {"replicas": 4}), ConfigLocks(session))
    await session.close()
    head = await store.head("read-only", "payments")
    assert head is not None and head.version == 1


def _cli(secure: SecureEtcd, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "etcdconfig"), *args],
        env=secure.env(**env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_cli_history_and_show_work_with_a_read_only_user(
    secure: SecureEtcd, open_client: Any
) -> None:
    writer = open_client(secure.settings("operator"))
    session = await Session(writer, ttl=5).start()
    await VersionedStore(writer, prefix=PREFIX).record(
        change("cli-read", 1, {"replicas": 5}), ConfigLocks(session, prefix=PREFIX)
    )
    await session.close()
    history = _cli(secure, "history", "cli-read/payments", "-o", "json", user="reader")
    assert history.returncode == 0, history.stderr
    assert '"version": 1' in history.stdout
    show = _cli(secure, "show", "cli-read/payments", "-o", "json", user="reader")
    assert show.returncode == 0, show.stderr
    assert '"replicas": 5' in show.stdout
    verify = _cli(secure, "verify", "cli-read/payments", user="reader")
    assert verify.returncode == 0, verify.stderr


# --- what fails, and how it says so -------------------------------------------------------

# (case, settings overrides, error class, exact start of the message)
FAILURES: list[tuple[str, dict[str, Any], type[Exception], str]] = [
    (
        "wrong-ca",
        {"tls": "other_ca"},
        EtcdTLSError,
        "TLS handshake with etcd at 127.0.0.1:{port} failed: etcd's server certificate was "
        "not accepted (unable to get local issuer certificate); check the CA file {other_ca}",
    ),
    (
        "missing-client-cert",
        {"tls": "no_cert"},
        EtcdTLSError,
        "TLS handshake with etcd at 127.0.0.1:{port} failed: etcd requires a client "
        "certificate and none is configured",
    ),
    (
        "expired-client-cert",
        {"tls": "expired"},
        EtcdTLSError,
        "TLS handshake with etcd at 127.0.0.1:{port} failed: etcd refused our client "
        "certificate {expired}: it has expired",
    ),
    (
        "untrusted-client-cert",
        {"tls": "untrusted"},
        EtcdTLSError,
        "TLS handshake with etcd at 127.0.0.1:{port} failed: ",
    ),
    (
        "wrong-password",
        {"password": "not-the-password"},
        EtcdAuthError,
        "etcd authentication as 'operator' failed: etcdserver: authentication failed, invalid "
        "user ID or password (check the etcd username and password)",
    ),
    (
        "prefix-outside-the-role",
        {"user": "outsider"},
        EtcdPermissionDenied,
        "etcd user 'outsider' may not read keys under '/etcdconfig/': its etcd roles do not "
        "grant the configured prefix (grant it with `etcdctl role grant-permission "
        "--prefix=true ROLE readwrite /etcdconfig/`)",
    ),
    (
        "no-user-and-a-certificate-that-names-none",
        {"user": None},
        EtcdPermissionDenied,
        "the etcd user named by the common name of {client_cert} may not read keys under "
        "'/etcdconfig/'",
    ),
    (
        "plaintext-to-a-tls-port",
        {"tls": "plaintext"},
        EtcdTLSError,
        "TLS handshake with etcd at 127.0.0.1:{port} failed: etcd expects TLS and we "
        "connected without it; use an https:// endpoint with the CA file (and a client "
        "certificate)",
    ),
]


def _failing_settings(secure: SecureEtcd, overrides: dict[str, Any]) -> EtcdSettings:
    kw = dict(overrides)
    tls = kw.pop("tls", None)
    user = kw.pop("user", "operator")
    files = {
        None: secure.tls(),
        "other_ca": secure.tls(ca_file=secure.other_ca.cert_path),
        "no_cert": secure.tls(cert_file=None, key_file=None),
        "expired": secure.tls(
            cert_file=secure.expired_cert.cert_path, key_file=secure.expired_cert.key_path
        ),
        "untrusted": secure.tls(
            cert_file=secure.untrusted_cert.cert_path, key_file=secure.untrusted_cert.key_path
        ),
        "plaintext": None,
    }[tls]
    settings = secure.settings(user, prefix=PREFIX, **kw)
    if tls == "plaintext":
        return EtcdSettings(
            endpoints=(secure.server.endpoint,),
            username="operator",
            password="op-pw",
            prefix=PREFIX,
            connect_timeout=5.0,
        )
    return EtcdSettings(
        endpoints=settings.endpoints,
        tls=files,
        username=settings.username,
        password=settings.password,
        prefix=PREFIX,
        connect_timeout=5.0,
    )


def _expected(secure: SecureEtcd, template: str) -> str:
    return template.format(
        port=secure.server.client_port,
        other_ca=secure.other_ca.cert_path,
        expired=secure.expired_cert.cert_path,
        client_cert=secure.client_cert.cert_path,
    )


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [pytest.param(o, e, m, id=case) for case, o, e, m in FAILURES],
)
async def test_connect_fails_fast_naming_the_cause(
    secure: SecureEtcd,
    open_client: Any,
    overrides: dict[str, Any],
    error: type[Exception],
    message: str,
) -> None:
    client = open_client(_failing_settings(secure, overrides))
    with pytest.raises(error) as info:
        await client.connect()
    text = str(info.value)
    assert text.startswith(_expected(secure, message)), text
    # bounded by the connect timeout, and it did not take the timeout to find out
    assert "did not answer within" not in text


async def test_missing_tls_file_is_reported_by_connect(
    secure: SecureEtcd, open_client: Any, tmp_path: Path
) -> None:
    missing = tmp_path / "nope.crt"
    client = open_client(secure.settings(tls=secure.tls(ca_file=missing)))
    with pytest.raises(EtcdTLSError) as info:
        await client.connect()
    assert str(info.value) == f"cannot read the etcd CA file {missing}: No such file or directory"


async def test_role_revoked_while_running_makes_later_calls_name_the_cause(
    secure: SecureEtcd, open_client: Any
) -> None:
    secure.etcdctl("user", "add", "shortlived:short-pw")
    secure.etcdctl("user", "grant-role", "shortlived", "etcdconfig-rw")
    client = open_client(
        EtcdSettings(
            endpoints=(secure.url,),
            tls=secure.tls(),
            username="shortlived",
            password="short-pw",
            prefix=PREFIX,
        )
    )
    await client.connect(write=True)
    await client.put(f"{PREFIX}/scratch/shortlived".encode(), b"1")
    secure.etcdctl("user", "revoke-role", "shortlived", "etcdconfig-rw")
    with pytest.raises(EtcdPermissionDenied, match="permission denied for etcd user 'shortlived'"):
        await client.put(f"{PREFIX}/scratch/shortlived".encode(), b"2")
    with pytest.raises(EtcdPermissionDenied) as info:
        await client.connect()
    assert str(info.value).startswith("etcd user 'shortlived' may not read keys under")


RUN_FAILURES = ["wrong-ca", "missing-client-cert", "wrong-password", "prefix-outside-the-role"]


@pytest.mark.parametrize("case", RUN_FAILURES)
def test_operator_start_up_exits_2_with_one_line_naming_the_cause(
    secure: SecureEtcd, case: str, tmp_path: Path
) -> None:
    _, overrides, _, message = next(f for f in FAILURES if f[0] == case)
    # a wrong configuration is never waited out: only an etcd that does not answer is
    env: dict[str, str] = {"ETCDCONFIG_LOG_FORMAT": "text", "ETCDCONFIG_ETCD_WAIT": "300"}
    tls = overrides.get("tls")
    if tls == "other_ca":
        env["ETCDCONFIG_ETCD_CA_FILE"] = str(secure.other_ca.cert_path)
    elif tls == "no_cert":
        env["ETCDCONFIG_ETCD_CERT_FILE"] = ""
        env["ETCDCONFIG_ETCD_KEY_FILE"] = ""
    if "password" in overrides:
        env["ETCDCONFIG_ETCD_PASSWORD"] = overrides["password"]
    user = overrides.get("user", "operator")
    proc = subprocess.run(
        [str(BIN / "etcdconfig"), "run", "--kubeconfig", str(tmp_path / "unused")],
        env=secure.env(user=user, **env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert f"cannot start: etcd: {_expected(secure, message)}" in lines[0]


def test_settings_carry_the_prefix_to_the_connect_check() -> None:
    from etcdconfig.settings import Settings

    settings = Settings(etcd_prefix="/custom", etcd_ca_file=Path("/ca.crt")).etcd()
    assert settings.prefix == "/custom"
    assert settings.tls == TLSFiles(Path("/ca.crt"), None, None)


async def test_tls_to_a_plaintext_etcd_says_it_does_not_speak_tls(
    etcd_server: EtcdServer, open_client: Any
) -> None:
    client = open_client(EtcdSettings(endpoints=(f"https://{etcd_server.endpoint}",)))
    with pytest.raises(EtcdTLSError) as info:
        await client.connect()
    assert str(info.value) == (
        f"TLS handshake with etcd at {etcd_server.endpoint} failed: etcd does not speak TLS "
        "on this port; use an http:// endpoint"
    )


async def test_nothing_listening_is_reported_as_unreachable(open_client: Any) -> None:
    port = free_port()
    client = open_client(EtcdSettings(endpoints=(f"127.0.0.1:{port}",), connect_timeout=5.0))
    with pytest.raises(EtcdUnavailable) as info:
        await client.connect()
    assert not isinstance(info.value, EtcdTLSError)
    assert str(info.value).startswith(f"cannot reach etcd at 127.0.0.1:{port}: ")


def test_operator_with_a_read_only_etcd_role_refuses_to_start(
    secure: SecureEtcd, tmp_path: Path
) -> None:
    proc = subprocess.run(
        [str(BIN / "etcdconfig"), "run", "--kubeconfig", str(tmp_path / "unused")],
        env=secure.env(user="reader", ETCDCONFIG_LOG_FORMAT="text", ETCDCONFIG_ETCD_WAIT="300"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert (
        "cannot start: etcd: etcd user 'reader' may read but not write keys under '/etcdconfig/'"
        in lines[0]
    )
