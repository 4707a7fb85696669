"""The dev environment's pure parts: the Kubernetes wrapper go.mod, version ldflags,
certificates and kubeconfigs; how a failed start is cleaned up and reported (no Go,
no processes: those are stubbed)."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from etcdconfig.devenv import build, cli, controlplane
from etcdconfig.devenv.controlplane import ControlPlane, ControlPlaneError, ProcessInfo
from etcdconfig.devenv.pki import CertificateAuthority

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
        "\tk8s.io/kubernetes/cmd/kube-scheduler\n"
        "\tk8s.io/kubernetes/cmd/kubelet\n"
        "\tk8s.io/kubernetes/cmd/kube-proxy\n"
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


# --- start-up failures and clean-up (issue #17), with the processes stubbed out -------------


def test_one_line_collapses_whitespace_and_truncates() -> None:
    assert controlplane._one_line("a\n  b\tc\n") == "a b c"
    assert controlplane._one_line("x" * 10, limit=5) == "xxxx…"


def test_see_log_names_the_log_and_its_last_line(tmp_path: Path) -> None:
    log = tmp_path / "kube-apiserver.log"
    assert controlplane._see_log(log) == f"log {log} (empty)"
    log.write_text("I0101 starting\nE0101 failed:\n  cannot bind\n\n")
    assert controlplane._see_log(log) == f"log {log} (last line: cannot bind)"


def test_process_info_from_state_ignores_unknown_keys_and_reads_old_entries() -> None:
    old = {"name": "etcd", "pid": 7, "exe": "/bin/etcd", "log": "etcd.log"}
    assert ProcessInfo.from_state(old) == ProcessInfo("etcd", 7, "/bin/etcd", "etcd.log")
    new = {**old, "start_time": 42, "boot_id": "b", "from_the_future": 1}
    assert ProcessInfo.from_state(new) == ProcessInfo("etcd", 7, "/bin/etcd", "etcd.log", 42, "b")


def _plane_that_fails(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, error: BaseException
) -> ControlPlane:
    monkeypatch.setattr(build, "ensure_kubernetes", lambda _version: {})
    monkeypatch.setattr(build, "ensure_etcd", lambda: (tmp_path / "etcd", tmp_path / "etcdctl"))
    monkeypatch.setattr(ControlPlane, "_link_tools", lambda self: None)

    def fail(self: ControlPlane, *_args: object) -> None:
        raise error

    monkeypatch.setattr(ControlPlane, "_start", fail)
    return ControlPlane(tmp_path / "dev")


def test_a_failed_start_raises_its_own_error_after_cleaning_up(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    plane = _plane_that_fails(monkeypatch, tmp_path, ControlPlaneError("etcd exited; log x"))
    graces: list[float] = []
    monkeypatch.setattr(ControlPlane, "stop", lambda self, grace: graces.append(grace) or [])
    with pytest.raises(ControlPlaneError) as err:
        plane.start(grace=3.5)
    assert str(err.value) == "etcd exited; log x"
    assert graces == [3.5]


def test_an_unexpected_error_becomes_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    plane = _plane_that_fails(monkeypatch, tmp_path, OSError(28, "No space left\non device"))
    monkeypatch.setattr(ControlPlane, "stop", lambda self, grace: [])
    with pytest.raises(ControlPlaneError) as err:
        plane.start()
    assert str(err.value) == "start-up failed: OSError: [Errno 28] No space left on device"


def test_a_clean_up_that_fails_never_hides_why_the_start_failed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    plane = _plane_that_fails(monkeypatch, tmp_path, ControlPlaneError("kcm exited; log y"))

    def broken_stop(self: ControlPlane, grace: float) -> None:
        raise subprocess.TimeoutExpired(["kube-controller-manager"], 10)

    monkeypatch.setattr(ControlPlane, "stop", broken_stop)
    with pytest.raises(ControlPlaneError) as err:
        plane.start()
    assert str(err.value) == (
        "kcm exited; log y; clean-up failed (TimeoutExpired(['kube-controller-manager'], 10)): "
        "`down` stops what is left"
    )


def test_an_interrupted_start_cleans_up_and_stays_an_interruption(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    plane = _plane_that_fails(monkeypatch, tmp_path, KeyboardInterrupt())
    graces: list[float] = []
    monkeypatch.setattr(ControlPlane, "stop", lambda self, grace: graces.append(grace) or [])
    with pytest.raises(KeyboardInterrupt):
        plane.start()
    assert graces == [controlplane.STOP_GRACE]


@pytest.mark.parametrize(
    ("error", "code", "stderr"),
    [
        (ControlPlaneError("kcm exited; log z"), 1, "error: kcm exited; log z\n"),
        (build.BuildError("go build failed"), 1, "error: go build failed\n"),
        (ValueError("a bug\nover lines"), 1, "error: ValueError: a bug over lines\n"),
        (
            KeyboardInterrupt(),
            130,
            "error: interrupted by SIGINT; nothing is left running\n",
        ),
    ],
)
def test_the_cli_reports_any_failure_of_up_in_one_line(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    error: BaseException,
    code: int,
    stderr: str,
) -> None:
    def fail(self: ControlPlane, timeout: float, grace: float) -> None:
        raise error

    monkeypatch.setattr(ControlPlane, "start", fail)
    assert cli.main(["--dir", str(tmp_path / "dev"), "up"]) == code
    out, err = capsys.readouterr()
    assert (out, err) == ("", stderr)


def test_leftovers_are_what_runs_of_an_unfinished_start(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    plane = ControlPlane(tmp_path)
    procs = [ProcessInfo(n, i, f"/bin/{n}", f"{n}.log", i, "b") for i, n in enumerate("abc")]
    plane._state = {"processes": [dataclasses.asdict(p) for p in procs]}
    dead = {"b"}
    monkeypatch.setattr(ProcessInfo, "alive", lambda self: self.name not in dead)
    assert [p.name for p in plane.leftovers()] == ["a", "c"]  # the start never finished
    assert not plane.running()
    plane._state["ready_after_seconds"] = 5.0
    assert [p.name for p in plane.leftovers()] == ["a", "c"]  # finished, but b died since
    assert not plane.running()
    dead.clear()
    assert plane.leftovers() == []
    assert plane.running()
