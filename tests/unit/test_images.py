"""etcdconfig.devenv.images without buildah: cache keys, the Dockerfile's BASE_IMAGE,
and the command lines (runc, local images only, never a registry)."""

from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path

import pytest

from etcdconfig.devenv import build, images

ROOT = Path(__file__).resolve().parents[2]
REGISTRIES = ("docker.io", "quay.io", "gcr.io", "ghcr.io", "registry.k8s.io", "docker://")


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ETCDCONFIG_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("ETCDCONFIG_STORAGE_DRIVER", raising=False)
    return tmp_path / "cache"


def _tree(root: Path) -> Path:
    for rel, text in {
        "Dockerfile": "FROM x\n",
        ".dockerignore": "*\n",
        "pyproject.toml": "[project]\n",
        "README.md": "# r\n",
        "operator/etcdconfig/__init__.py": "",
        "operator/etcdconfig/core.py": "X = 1\n",
    }.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_source_key_changes_with_a_source_file_and_only_then(tmp_path: Path) -> None:
    root = _tree(tmp_path / "repo")
    key = images.operator_source_key(root)
    core = root / "operator/etcdconfig/core.py"

    os.utime(core, (1, 1))  # times play no part
    (root / "operator/etcdconfig/__pycache__").mkdir()
    (root / "operator/etcdconfig/__pycache__/core.cpython-311.pyc").write_bytes(b"\0")
    (root / "operator/etcdconfig.egg-info").mkdir()
    (root / "operator/etcdconfig.egg-info/PKG-INFO").write_text("x")
    (root / "tests").mkdir()
    (root / "tests/test_x.py").write_text("")  # outside the build context
    assert images.operator_source_key(root) == key

    core.write_text("X = 2\n")
    assert images.operator_source_key(root) != key
    core.write_text("X = 1\n")
    assert images.operator_source_key(root) == key

    for change in (
        lambda: (root / "operator/etcdconfig/new.py").write_text(""),
        lambda: (root / "Dockerfile").write_text("FROM y\n"),
        lambda: (root / "pyproject.toml").write_text("[project]\nname = 'x'\n"),
        lambda: core.chmod(0o755),
    ):
        before = images.operator_source_key(root)
        change()
        assert images.operator_source_key(root) != before


def test_source_key_tells_a_moved_file_from_the_original(tmp_path: Path) -> None:
    root = _tree(tmp_path / "repo")
    key = images.operator_source_key(root)
    (root / "operator/etcdconfig/core.py").rename(root / "operator/etcdconfig/kern.py")
    assert images.operator_source_key(root) != key


def test_source_key_needs_a_checkout(tmp_path: Path) -> None:
    with pytest.raises(images.ImageError, match="Dockerfile"):
        images.operator_source_key(tmp_path)


def test_operator_key_covers_base_and_label() -> None:
    key = images.operator_key("src", "etcdconfig.local/debian-python:a", None)
    assert key == images.operator_key("src", "etcdconfig.local/debian-python:a", None)
    assert key != images.operator_key("src2", "etcdconfig.local/debian-python:a", None)
    assert key != images.operator_key("src", "etcdconfig.local/debian-python:b", None)
    assert key != images.operator_key("src", "etcdconfig.local/debian-python:a", "v2")


def test_the_repository_tree_has_a_stable_operator_tag() -> None:
    ref, key = images.operator_ref()
    assert (ref, key) == images.operator_ref()
    assert ref == f"{images.OPERATOR_REPOSITORY}:{key[:12]}"
    assert images.operator_ref("upgrade-test")[0].endswith(":upgrade-test")
    assert images.operator_ref(label="v2")[1] != key


def test_image_names_are_local() -> None:
    assert re.fullmatch(r"etcdconfig\.local/debian-python:bookworm-[0-9a-f]{12}", images.BASE_IMAGE)
    etcd = f"etcdconfig.local/etcd:{build.ETCD_VERSION}"
    assert etcd == images.ETCD_IMAGE
    assert images.PAUSE_IMAGE == "etcdconfig.local/pause:3.10"
    assert images.archive_path(images.ETCD_IMAGE).name == f"etcd-{build.ETCD_VERSION}.tar"


def test_dockerfile_takes_its_base_as_an_argument() -> None:
    lines = [
        line
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    first_from = next(i for i, line in enumerate(lines) if line.startswith("FROM "))
    args = [line for line in lines[:first_from] if line.startswith("ARG BASE_IMAGE=")]
    assert len(args) == 1
    default = args[0].split("=", 1)[1]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?", default)
    froms = [line.split()[1] for line in lines if line.startswith("FROM ")]
    assert froms == ["${BASE_IMAGE}", "${BASE_IMAGE}"]


def test_dockerfile_drops_pip_on_either_base() -> None:
    final = (ROOT / "Dockerfile").read_text().split("FROM ${BASE_IMAGE}\n", 1)[1]
    assert "dpkg --purge python3-pip" in final  # Debian: dpkg owns pip
    assert "pip uninstall" in final  # the official image: pip owns itself
    assert "python " not in final.split("HEALTHCHECK")[0]  # Debian has python3 only


def _no_registry(argv: list[str]) -> None:
    for arg in argv:
        assert not any(r in arg for r in REGISTRIES), arg
    refs = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--tag"]
    refs += [a.split("=", 1)[1] for a in argv if a.startswith("BASE_IMAGE=")]
    assert refs
    assert all(ref.startswith("etcdconfig.local/") for ref in refs), refs


def test_build_commands_use_runc_and_local_images_only(cache: Path) -> None:
    commands = [
        images.operator_build_cmd("etcdconfig.local/etcdconfig:t", images.BASE_IMAGE, "v2"),
        images.buildah_cmd(*images.buildah_build_args(images.ETCD_IMAGE, cache / "ctx")),
        images.buildah_cmd(*images.buildah_build_args(images.PAUSE_IMAGE, cache / "ctx")),
    ]
    for argv in commands:
        build_at = argv.index("build")
        assert argv[build_at + 1 : build_at + 3] == ["--runtime", "/usr/sbin/runc"]
        assert "--pull=never" in argv
        assert argv[argv.index("--network") + 1] == "host"
        assert argv[argv.index("--root") + 1] == str(cache / "containers" / "storage-overlay")
        assert not argv[argv.index("--runroot") + 1].startswith("/var")
        _no_registry(argv)
    operator = commands[0]
    assert "--build-arg" in operator and f"BASE_IMAGE={images.BASE_IMAGE}" in operator
    assert f"{images.VARIANT_LABEL}=v2" in operator
    assert "--label" not in images.operator_build_cmd("etcdconfig.local/etcdconfig:t", "b")


def test_buildah_runs_in_its_own_mount_namespace() -> None:
    argv = images.buildah_cmd("images")
    assert argv[:2] == ["unshare", "--mount"]
    script = argv[argv.index("-c") + 1]
    assert "tmpfs" in script and " /run" in script and " /var/lib" in script
    assert images.display_cmd(argv).startswith("buildah --root ")


def test_containerfiles_start_from_scratch() -> None:
    for text in (images.BASE_CONTAINERFILE, images.ETCD_CONTAINERFILE, images.PAUSE_CONTAINERFILE):
        assert re.findall(r"^FROM (\S+)", text, flags=re.M) == ["scratch"]
    assert "COPY etcd etcdctl /usr/local/bin/" in images.ETCD_CONTAINERFILE
    assert 'ENTRYPOINT ["/pause"]' in images.PAUSE_CONTAINERFILE
    assert "ENV PATH=" in images.BASE_CONTAINERFILE  # the Dockerfile extends $PATH


def test_the_etcd_image_serves_the_chart_without_a_shell() -> None:
    chart = (ROOT / "charts/etcdconfig/templates/etcd.yaml").read_text()
    assert "command: [/usr/local/bin/etcd]" in chart
    assert "/bin/sh" not in chart and "exec:" not in chart  # probes are HTTP


def test_mmdebstrap_uses_the_given_mirrors(tmp_path: Path) -> None:
    mirrors = ["deb http://mirror.example/debian bookworm main"]
    argv = images.mmdebstrap_cmd(tmp_path / "rootfs.tar", mirrors)
    assert argv[0] == "mmdebstrap" and "--variant=minbase" in argv
    assert f"--include={','.join(images.BASE_PACKAGES)}" in argv
    assert argv[-3:] == ["bookworm", str(tmp_path / "rootfs.tar"), *mirrors]
    assert {"python3", "python3-pip", "passwd"} <= set(images.BASE_PACKAGES)


def test_host_mirrors_from_deb822_and_one_line_sources(tmp_path: Path) -> None:
    apt = tmp_path / "apt"
    (apt / "sources.list.d").mkdir(parents=True)
    (apt / "sources.list.d/debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian/\nSuites: bookworm bookworm-updates\n"
        "Components: main\n\n"
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n"
        "Components: main\n\nTypes: deb\nURIs: http://elsewhere.example/x\nSuites: nodistro\n"
        "Components: main\n"
    )
    (apt / "sources.list").write_text("deb https://packages.example/apt cloud-sdk main\n")
    assert images.host_mirrors(apt) == [
        "deb http://mirror.example/debian bookworm main",
        "deb http://mirror.example/debian bookworm-updates main",
        "deb http://mirror.example/debian-security bookworm-security main",
    ]
    (apt / "sources.list.d/debian.sources").unlink()
    (apt / "sources.list").write_text("deb [arch=amd64] http://one.example/debian bookworm main\n")
    assert images.host_mirrors(apt) == ["deb http://one.example/debian bookworm main"]
    (apt / "sources.list").unlink()
    assert images.host_mirrors(apt) == list(images._DEFAULT_MIRRORS)


def test_import_unpacks_into_the_cri_namespace(tmp_path: Path) -> None:
    image = images.Image("etcdconfig.local/pause:3.10", tmp_path / "pause-3.10.tar", 1.0, 10)
    argv = images.import_cmd(Path("/bin/ctr"), "/tmp/c.sock", image, snapshotter="overlayfs")
    assert argv[:5] == ["/bin/ctr", "--address", "/tmp/c.sock", "--namespace", "k8s.io"]
    assert argv[5:7] == ["images", "import"]
    assert argv[argv.index("--snapshotter") + 1] == "overlayfs"
    assert "--no-unpack" not in argv
    assert argv[-1] == str(image.archive)


def test_cached_archive_is_reused_only_for_its_key() -> None:
    ref = images.PAUSE_IMAGE
    archive = images.archive_path(ref)
    archive.parent.mkdir(parents=True)
    archive.write_bytes(b"x" * 10)
    meta = {"ref": ref, "key": "k1", "build_seconds": 1.5, "size_bytes": 10}
    archive.with_suffix(".json").write_text(json.dumps(meta))
    assert images._load(ref, "k1") == images.Image(ref, archive, 1.5, 10, cached=True)
    assert images._load(ref, "k2") is None
    archive.write_bytes(b"x" * 5)  # a truncated archive is not reused
    assert images._load(ref, "k1") is None


def _elf(program_header_types: list[int]) -> bytes:
    phoff, phentsize = 64, 56
    header = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    phnum = len(program_header_types)
    header += struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, 0, phoff, 0, 0, 64, phentsize, phnum, 0, 0, 0)
    table = b"".join(struct.pack("<I", t) + bytes(phentsize - 4) for t in program_header_types)
    return header + table


def test_static_binaries_are_told_from_dynamic_ones(tmp_path: Path) -> None:
    static, dynamic = tmp_path / "static", tmp_path / "dynamic"
    static.write_bytes(_elf([1, 1]))  # PT_LOAD only
    dynamic.write_bytes(_elf([6, 3, 1]))  # PT_PHDR, PT_INTERP, PT_LOAD
    assert images._is_static(static)
    assert not images._is_static(dynamic)
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\n")
    assert not images._is_static(script)


def test_a_failing_command_is_named_with_its_output() -> None:
    with pytest.raises(images.ImageError) as err:
        images._run(["sh", "-c", "echo first; echo the reason >&2; exit 3"], what="testing")
    first, *rest = str(err.value).splitlines()
    assert first.startswith("testing failed (exit 3): `sh -c")
    assert rest[-1] == "the reason"


def test_a_missing_buildah_says_what_to_install() -> None:
    with pytest.raises(images.ImageError, match="apt-get install buildah mmdebstrap runc"):
        images._run(["/nonexistent/buildah", "images"], what="listing")
