"""The dev environment's pure parts: the Kubernetes wrapper go.mod, version ldflags,
certificates and kubeconfigs (no Go, no processes)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from etcdconfig.devenv import build
from etcdconfig.devenv.controlplane import ControlPlane, ControlPlaneError
from etcdconfig.devenv.pki import CertificateAuthority

if TYPE_CHECKING:
    from pathlib import Path

UPSTREAM_GO_MOD = """\
module k8s.io/kubernetes

go 1.26.0

godebug default=go1.26

require (
\tgithub.com/blang/semver/v4 v4.0.0
\tk8s.io/api v0.0.0
\tk8s.io/client-go v0.0.0
)

replace (
\tk8s.io/api => ./staging/src/k8s.io/api
\tk8s.io/client-go => ./staging/src/k8s.io/client-go
\tk8s.io/sample-cli-plugin => ./staging/src/k8s.io/sample-cli-plugin
)
"""


def test_staging_version_maps_kubernetes_tag_to_published_module_tag() -> None:
    assert build.staging_version("v1.36.3") == "v0.36.3"


def test_wrapper_go_mod_redirects_every_staging_module_to_its_tag() -> None:
    tools = build.kubernetes_tools("v1.36.3")
    text = build.kubernetes_wrapper_go_mod(UPSTREAM_GO_MOD, "v1.36.3", tools)
    body = text.split("module ", 1)[1]
    assert body == (
        "etcdconfig.local/kubernetes-wrapper\n\n"
        "go 1.26.0\n"
        "godebug default=go1.26\n\n"
        "require k8s.io/kubernetes v1.36.3\n\n"
        "replace (\n"
        "\tk8s.io/api => k8s.io/api v0.36.3\n"
        "\tk8s.io/client-go => k8s.io/client-go v0.36.3\n"
        "\tk8s.io/sample-cli-plugin => k8s.io/sample-cli-plugin v0.36.3\n"
        ")\n\n"
        "tool (\n"
        "\tk8s.io/kubernetes/cmd/kube-apiserver\n"
        "\tk8s.io/kubernetes/cmd/kube-controller-manager\n"
        ")\n"
    )


def test_wrapper_go_mod_refuses_a_go_mod_without_staging_replaces() -> None:
    with pytest.raises(build.BuildError, match=r"no \./staging replaces"):
        build.kubernetes_wrapper_go_mod("module k8s.io/kubernetes\n", "v1.36.3", [])


def test_kubernetes_version_ldflags_set_both_version_packages() -> None:
    flags = build.kubernetes_tools("v1.36.3")[0].ldflags
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        assert f"-X {pkg}.gitVersion=v1.36.3" in flags
        assert f"-X {pkg}.gitMajor=1" in flags
        assert f"-X {pkg}.gitMinor=36" in flags


def test_helm_ldflags_follow_the_major_version() -> None:
    tool = build.helm_tool("v4.3.1")
    assert tool.package == "helm.sh/helm/v4/cmd/helm"
    assert "-X helm.sh/helm/v4/internal/version.version=v4.3.1" in tool.ldflags


def test_binary_override_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "helm"
    monkeypatch.setenv("ETCDCONFIG_HELM_BIN", str(fake))
    assert build.ensure_helm() == fake


def test_missing_go_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(build.shutil, "which", lambda _name: None)
    with pytest.raises(build.BuildError, match=r"install Go >= 1\.26"):
        build.go_binary()


def test_client_certificate_carries_user_and_groups(tmp_path: Path) -> None:
    ca = CertificateAuthority.load_or_create(tmp_path)
    pair = ca.issue(
        tmp_path / "alice", common_name="alice", organizations=("dev", "ops"), client=True
    )
    cert = x509.load_pem_x509_certificate(pair.cert_pem)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "alice"
    orgs = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    assert orgs == ["dev", "ops"]
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    cert.verify_directly_issued_by(ca.cert)
    assert (pair.key_path.stat().st_mode & 0o777) == 0o600


def test_serving_certificate_names_loopback(tmp_path: Path) -> None:
    ca = CertificateAuthority.load_or_create(tmp_path)
    pair = ca.issue(
        tmp_path / "srv",
        common_name="kube-apiserver",
        server=True,
        dns_names=("localhost",),
        ip_addresses=("127.0.0.1",),
    )
    cert = x509.load_pem_x509_certificate(pair.cert_pem)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]


def test_ca_is_reused_from_disk(tmp_path: Path) -> None:
    first = CertificateAuthority.load_or_create(tmp_path)
    second = CertificateAuthority.load_or_create(tmp_path)
    assert first.cert == second.cert
    assert isinstance(second.key, ec.EllipticCurvePrivateKey)


def test_add_user_writes_a_kubeconfig_for_that_user(tmp_path: Path) -> None:
    plane = ControlPlane(tmp_path)
    plane._state = {"server": "https://127.0.0.1:6443", "processes": []}
    path = plane.add_user("bob", groups=["readers"])
    config = yaml.safe_load(path.read_text())
    assert config["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:6443"
    assert config["users"][0]["name"] == "bob"
    assert config["current-context"] == "bob@etcdconfig-dev"


def test_add_user_refuses_system_masters(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="admin kubeconfig"):
        ControlPlane(tmp_path).add_user("eve", groups=["system:masters"])


def test_facts_of_a_control_plane_never_started_say_to_run_up(tmp_path: Path) -> None:
    with pytest.raises(ControlPlaneError, match="run `up` first"):
        _ = ControlPlane(tmp_path).server
