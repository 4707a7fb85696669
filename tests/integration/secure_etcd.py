"""A real etcd that requires TLS client certificates and user/password auth, with
RBAC roles on the store's prefix: the set-up of a production etcd, on loopback.

- ``ca``: the CA etcd trusts (server and client certificates); ``other_ca`` one it does not.
- users: ``root`` (root role), ``operator`` (readwrite on ``PREFIX/``), ``reader``
  (read on ``PREFIX/``), ``outsider`` (readwrite on ``/elsewhere/`` only) and
  ``etcdconfig-operator`` (no password: the common name of ``cn_cert``, so the
  client certificate alone is the identity).
"""

from __future__ import annotations

import datetime
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from etcdconfig.devenv.build import ensure_etcd
from etcdconfig.devenv.etcd import EtcdServer, free_port
from etcdconfig.devenv.pki import CertificateAuthority, KeyPair
from etcdconfig.etcd import EtcdSettings, TLSFiles

PREFIX = "/etcdconfig"
PASSWORDS = {"root": "root-pw", "operator": "op-pw", "reader": "read-pw", "outsider": "out-pw"}


def issue_expired(ca: CertificateAuthority, stem: Path, common_name: str) -> KeyPair:
    """A client certificate signed by ``ca`` that expired yesterday."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=30))
        .not_valid_after(now - datetime.timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    cert_path, key_path = stem.with_suffix(".crt"), stem.with_suffix(".key")
    cert_path.write_bytes(cert_pem)
    key_path.write_bytes(key_pem)
    key_path.chmod(0o600)
    return KeyPair(cert_pem=cert_pem, key_pem=key_pem, cert_path=cert_path, key_path=key_path)


@dataclass
class SecureEtcd:
    server: EtcdServer
    ca: CertificateAuthority
    other_ca: CertificateAuthority
    client_cert: KeyPair  # CN "etcdconfig-client": not an etcd user
    cn_cert: KeyPair  # CN "etcdconfig-operator": an etcd user without a password
    expired_cert: KeyPair
    untrusted_cert: KeyPair  # signed by other_ca

    @property
    def url(self) -> str:
        return f"https://{self.server.endpoint}"

    def tls(self, **overrides: Any) -> TLSFiles:
        files = {
            "ca_file": self.ca.cert_path,
            "cert_file": self.client_cert.cert_path,
            "key_file": self.client_cert.key_path,
            **overrides,
        }
        return TLSFiles(**files)

    def settings(self, user: str | None = "operator", **kw: Any) -> EtcdSettings:
        tls = kw.pop("tls", None) or self.tls()
        return EtcdSettings(
            endpoints=(self.url,),
            tls=tls,
            username=user,
            password=kw.pop("password", PASSWORDS.get(user or "")),
            request_timeout=5.0,
            connect_timeout=5.0,
            **kw,
        )

    def env(self, user: str = "operator", **overrides: str) -> dict[str, str]:
        """``ETCDCONFIG_*`` variables for the CLI as this user."""
        env = {
            **os.environ,
            "ETCDCONFIG_ETCD_ENDPOINTS": self.url,
            "ETCDCONFIG_ETCD_PREFIX": PREFIX,
            "ETCDCONFIG_ETCD_CA_FILE": str(self.ca.cert_path),
            "ETCDCONFIG_ETCD_CERT_FILE": str(self.client_cert.cert_path),
            "ETCDCONFIG_ETCD_KEY_FILE": str(self.client_cert.key_path),
            "ETCDCONFIG_ETCD_USERNAME": user,
            "ETCDCONFIG_ETCD_PASSWORD": PASSWORDS[user],
        }
        env.update(overrides)
        return {k: v for k, v in env.items() if v != ""}

    def etcdctl(self, *args: str, user: str | None = "root") -> str:
        _, etcdctl = ensure_etcd()
        cmd = [
            str(etcdctl),
            f"--endpoints={self.url}",
            f"--cacert={self.ca.cert_path}",
            f"--cert={self.client_cert.cert_path}",
            f"--key={self.client_cert.key_path}",
            "--dial-timeout=5s",
        ]
        if user:
            cmd.append(f"--user={user}:{PASSWORDS[user]}")
        proc = subprocess.run(
            [*cmd, *args], capture_output=True, text=True, timeout=30, check=False
        )
        if proc.returncode != 0:
            raise AssertionError(f"etcdctl {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout


def start_secure_etcd(base: Path) -> SecureEtcd:
    base.mkdir(parents=True, exist_ok=True)
    ca = CertificateAuthority.load_or_create(base / "pki", "ca")
    other_ca = CertificateAuthority.load_or_create(base / "pki-other", "ca")
    server_cert = ca.issue(
        base / "pki" / "server",
        common_name="etcd",
        server=True,
        dns_names=("localhost",),
        ip_addresses=("127.0.0.1",),
    )
    metrics_port = free_port()
    server = EtcdServer(
        data_dir=base / "data",
        name="secure",
        scheme="https",
        extra_args=(
            "--client-cert-auth",
            f"--trusted-ca-file={ca.cert_path}",
            f"--cert-file={server_cert.cert_path}",
            f"--key-file={server_cert.key_path}",
            # /health over plain http on its own port: the client port demands a certificate
            f"--listen-metrics-urls=http://127.0.0.1:{metrics_port}",
        ),
    )
    env = SecureEtcd(
        server=server,
        ca=ca,
        other_ca=other_ca,
        client_cert=ca.issue(base / "pki" / "client", common_name="etcdconfig-client", client=True),
        cn_cert=ca.issue(base / "pki" / "cn", common_name="etcdconfig-operator", client=True),
        expired_cert=issue_expired(ca, base / "pki" / "expired", "etcdconfig-client"),
        untrusted_cert=other_ca.issue(
            base / "pki-other" / "client", common_name="etcdconfig-client", client=True
        ),
    )
    server.start()
    try:
        server.wait_healthy(60, health_url=f"http://127.0.0.1:{metrics_port}/health")
        ctl = env.etcdctl
        ctl("user", "add", f"root:{PASSWORDS['root']}", user=None)
        ctl("user", "grant-role", "root", "root", user=None)
        ctl("role", "add", "etcdconfig-rw", user=None)
        ctl(
            "role",
            "grant-permission",
            "--prefix=true",
            "etcdconfig-rw",
            "readwrite",
            f"{PREFIX}/",
            user=None,
        )
        ctl("role", "add", "etcdconfig-ro", user=None)
        ctl(
            "role",
            "grant-permission",
            "--prefix=true",
            "etcdconfig-ro",
            "read",
            f"{PREFIX}/",
            user=None,
        )
        ctl("role", "add", "elsewhere-rw", user=None)
        ctl(
            "role",
            "grant-permission",
            "--prefix=true",
            "elsewhere-rw",
            "readwrite",
            "/elsewhere/",
            user=None,
        )
        for user, role in (
            ("operator", "etcdconfig-rw"),
            ("reader", "etcdconfig-ro"),
            ("outsider", "elsewhere-rw"),
        ):
            ctl("user", "add", f"{user}:{PASSWORDS[user]}", user=None)
            ctl("user", "grant-role", user, role, user=None)
        ctl("user", "add", "etcdconfig-operator", "--no-password", user=None)
        ctl("user", "grant-role", "etcdconfig-operator", "etcdconfig-rw", user=None)
        ctl("auth", "enable", user=None)
    except BaseException:
        server.stop()
        raise
    return env


__all__ = ["PASSWORDS", "PREFIX", "SecureEtcd", "start_secure_etcd"]
