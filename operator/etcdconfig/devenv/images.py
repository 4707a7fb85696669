"""Build every image the local node runs, offline, and cache the results.

No container registry is reachable from the dev machine, so nothing is ever pulled:

- ``BASE_IMAGE`` (``etcdconfig.local/debian-python:bookworm-<hash>``): a Debian bookworm
  root file system made by ``mmdebstrap --variant=minbase`` with :data:`BASE_PACKAGES`
  (python3 and python3-pip from Debian; ``python3 -m venv --without-pip`` needs no
  python3-venv), merged /usr without the usrmerge package (which drags perl in), no
  docs, man pages or locales. The tarball is cached by a hash of the suite, the
  package set and the mmdebstrap options; the apt mirrors are the host's own (read
  from ``/etc/apt/sources.list*``). It is the base of the operator image only: the
  node never runs it.
- the operator image ``etcdconfig.local/etcdconfig:<tag>``, from the repository's
  ``Dockerfile`` with ``--build-arg BASE_IMAGE=<base>``. The tag is a content hash of
  the build context (Dockerfile, .dockerignore, pyproject.toml, README.md and the
  ``operator/`` tree, caches left out; git plays no part) and the base, so an unchanged
  tree reuses the built image; an explicit tag and a variant label (for ``helm
  upgrade`` tests) are accepted. pip inside the build reaches PyPI with the host's CA
  bundle mounted read-only over the image's (never stored in the image).
- ``ETCD_IMAGE`` (``etcdconfig.local/etcd:<ETCD_VERSION>``): ``FROM scratch`` with the
  static Go-built ``etcd`` and ``etcdctl`` in ``/usr/local/bin``. The chart runs
  ``command: [/usr/local/bin/etcd]`` with flags only, HTTP probes, uid 10001, a
  read-only root and the data directory on a volume at ``/var/lib/etcd``: no shell,
  no ``/etc/passwd`` and nothing writable are needed, so no base image either.
- ``PAUSE_IMAGE`` (``etcdconfig.local/pause:3.10``): ``FROM scratch``, a static Go
  binary that reaps children and sleeps until SIGTERM or SIGINT, then exits 0.

Each image is exported with ``buildah push`` to a ``docker-archive`` (it keeps the full
name, which ``ctr images import`` then uses as is; an OCI archive keeps only the tag)
at ``<cache>/images/<name>-<tag>.tar``, next to a ``.json`` with the cache key, build
time and size; it is rebuilt only when the key changes, under a lock file per image
(a second process waits for the first). :func:`ensure_images` returns the images the
node runs (operator, etcd, pause); :func:`import_images` loads them into containerd's
``k8s.io`` namespace, unpacked for the CRI's snapshotter and pinned.

Host state this changes, and nothing else:

- ``<cache>/images/``: archives and their metadata (operator archives: the current one
  and the four most recently used others are kept), the rootfs tarball, lock files.
- ``<cache>/containers/``: buildah's storage (``storage-<driver>``, overlay by default;
  ``ETCDCONFIG_STORAGE_DRIVER=vfs`` for file systems overlay cannot sit on) and
  temporary files (``tmp``, also mmdebstrap's). Only the base image stays in that
  storage; the others are removed from it once exported.
- ``<cache>/src/pause-<version>/``: the pause source, built with the go command (which
  uses its usual build and module caches).

Whatever ``--root``/``--runroot`` say, buildah as root also writes
``/var/lib/containers/cache``, ``/run/containers/networks`` and ``/run/runc``. So every
buildah command runs in a private mount namespace (``unshare --mount``) with fresh
tmpfs over ``/run`` and ``/var/lib``: those writes, buildah's run root and the overlay
mounts of a build all vanish with the command, even a killed one. mmdebstrap runs in a
private mount namespace too (its chroot's /proc, /sys and /dev mounts never reach the
host). Builds use ``--runtime /usr/sbin/runc`` (Debian's crun refuses this host's
hybrid cgroups), ``--network host`` and ``--pull=never``. Needs root and the Debian
packages buildah, mmdebstrap, runc.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from etcdconfig.devenv import build

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

# --- what is built ------------------------------------------------------------------------

DEBIAN_SUITE = "bookworm"
#: The Debian packages of the base: what the Dockerfile's two stages run (python3, pip
#: for the build stage, groupadd/useradd from passwd, CA certificates like the
#: official image). Their dependencies come along; recommends do not.
BASE_PACKAGES = ("python3", "python3-pip", "ca-certificates", "passwd")
#: mmdebstrap options that shape the root file system (part of the base's cache key).
MMDEBSTRAP_OPTIONS = (
    "--variant=minbase",
    "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-include=/usr/share/doc/*/copyright",
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/info/*",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
    "--dpkgopt=path-exclude=/usr/share/lintian/*",
)
#: Suites besides DEBIAN_SUITE itself whose host mirrors are used (security fixes).
_EXTRA_SUITES = ("-updates", "-security")
_DEFAULT_MIRRORS = (
    f"deb http://deb.debian.org/debian {DEBIAN_SUITE} main",
    f"deb http://deb.debian.org/debian {DEBIAN_SUITE}-updates main",
    f"deb http://deb.debian.org/debian-security {DEBIAN_SUITE}-security main",
)

BASE_CONTAINERFILE = """\
FROM scratch
ADD rootfs.tar /
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    LANG=C.UTF-8
CMD ["python3"]
"""

ETCD_CONTAINERFILE = """\
FROM scratch
COPY etcd etcdctl /usr/local/bin/
USER 10001:10001
EXPOSE 2379 2380 2381
ENTRYPOINT ["/usr/local/bin/etcd"]
"""

PAUSE_VERSION = "3.10"
PAUSE_GO_MOD = "module etcdconfig.local/pause\n\ngo 1.24\n"
PAUSE_SOURCE = """\
// pause: the sandbox process of every pod. It reaps orphaned children (it may be
// PID 1 of the pod) and sleeps until SIGTERM or SIGINT, then exits 0.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
"""
PAUSE_CONTAINERFILE = """\
FROM scratch
COPY pause /pause
USER 65535:65535
ENTRYPOINT ["/pause"]
"""

REGISTRY = "etcdconfig.local"
OPERATOR_REPOSITORY = f"{REGISTRY}/etcdconfig"
ETCD_IMAGE = f"{REGISTRY}/etcd:{build.ETCD_VERSION}"
PAUSE_IMAGE = f"{REGISTRY}/pause:{PAUSE_VERSION}"
#: Label that makes an operator image differ in content from another of the same tree.
VARIANT_LABEL = "etcdconfig.dev/variant"

#: The repository: the operator image is built from a source checkout.
REPO_ROOT = Path(__file__).resolve().parents[3]
#: What the build context holds (.dockerignore sends these only), less caches.
_CONTEXT_FILES = ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md")
_CONTEXT_TREES = ("operator",)
_SKIPPED_DIRS = frozenset({"__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache"})
_SKIPPED_SUFFIXES = (".pyc", ".pyo", ".egg-info")

RUNC = "/usr/sbin/runc"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
#: Operator archives kept besides the current one (each test tag adds one).
_KEEP_OPERATOR_ARCHIVES = 4
_PROGRESS_EVERY = 15.0  # seconds between progress lines of a long command
_INSTALL_HINT = "apt-get install buildah mmdebstrap runc"
_APT_TOOLS = frozenset({"buildah", "mmdebstrap", "unshare", "runc"})


class ImageError(RuntimeError):
    """An image could not be built, exported or imported; the message says which command."""


@dataclass(frozen=True)
class Image:
    """One built image and its archive."""

    ref: str  #: full name:tag
    archive: Path  #: docker-archive for ``ctr images import``
    build_seconds: float  #: how long the build that made the archive took
    size_bytes: int  #: size of the archive
    cached: bool = False  #: True when this call reused the archive instead of building


def _log(msg: str) -> None:
    print(f"[etcdconfig images] {msg}", file=sys.stderr, flush=True)


def _digest(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def base_key() -> str:
    """The base image's cache key: suite, packages, mmdebstrap options, Containerfile."""
    return _digest(
        DEBIAN_SUITE, ",".join(sorted(BASE_PACKAGES)), *MMDEBSTRAP_OPTIONS, BASE_CONTAINERFILE
    )


BASE_IMAGE = f"{REGISTRY}/debian-python:{DEBIAN_SUITE}-{base_key()[:12]}"


# --- paths --------------------------------------------------------------------------------


def images_dir() -> Path:
    return build.cache_dir() / "images"


def storage_driver() -> str:
    return os.environ.get("ETCDCONFIG_STORAGE_DRIVER") or "overlay"


def storage_dir() -> Path:
    """buildah's graph root (one per driver: a storage cannot change driver)."""
    return build.cache_dir() / "containers" / f"storage-{storage_driver()}"


def _tmp_dir() -> Path:
    return build.cache_dir() / "containers" / "tmp"


def archive_path(ref: str) -> Path:
    """``<cache>/images/<name>-<tag>.tar`` for ``<registry>/<name>:<tag>``."""
    repo, tag = ref.rsplit(":", 1)
    return images_dir() / f"{repo.rsplit('/', 1)[-1]}-{tag}.tar"


def _meta_path(archive: Path) -> Path:
    return archive.with_suffix(".json")


def _rootfs_path() -> Path:
    return images_dir() / "rootfs" / f"debian-{DEBIAN_SUITE}-{base_key()[:12]}.tar"


# --- cache keys ---------------------------------------------------------------------------


def _context_paths(root: Path) -> Iterator[Path]:
    for name in _CONTEXT_FILES:
        if (root / name).is_file():
            yield root / name
    for tree in _CONTEXT_TREES:
        for dirpath, dirnames, filenames in os.walk(root / tree):
            dirnames[:] = sorted(
                d for d in dirnames if d not in _SKIPPED_DIRS and not d.endswith(".egg-info")
            )
            for name in sorted(filenames):
                if not name.endswith(_SKIPPED_SUFFIXES):
                    yield Path(dirpath) / name


def operator_source_key(root: Path = REPO_ROOT) -> str:
    """A hash of the operator image's build context: the relative path, executable bit
    and content of every file (symlinks by target). Times and caches play no part."""
    if not (root / "Dockerfile").is_file():
        raise ImageError(f"no Dockerfile in {root}: the operator image is built from a checkout")
    parts: list[str] = []
    for path in _context_paths(root):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            parts += [rel, "symlink", os.readlink(path)]
        else:
            executable = "x" if path.stat().st_mode & 0o111 else "-"
            parts += [rel, executable, _file_digest(path)]
    return _digest(*parts)


def operator_key(source_key: str, base_ref: str, label: str | None) -> str:
    return _digest(source_key, base_ref, label or "")


# --- running commands ---------------------------------------------------------------------

#: Run in a private mount namespace: fresh tmpfs over /run and /var/lib (see the module
#: docstring), then the command. `unshare` makes every mount private to it.
_NAMESPACE_SCRIPT = (
    "mount -t tmpfs -o mode=0755,size=64m etcdconfig-run /run"
    " && mount -t tmpfs -o mode=0755,size=64m etcdconfig-var-lib /var/lib"
    ' && exec "$@"'
)
_RUNROOT = "/run/etcdconfig-buildah"  # on the namespace's own /run: fresh every command
#: buildah's progress lines: `STEP 2/4: ...`, in a multi-stage build `[1/2] STEP 2/9: ...`
_STEP = re.compile(r"^(\[\d+/\d+\] )?STEP \d+/\d+: ")


def _in_namespace(argv: list[str], *, tmpfs: bool = True) -> list[str]:
    prefix = ["unshare", "--mount", "--propagation", "private", "--"]
    if tmpfs:
        return [*prefix, "sh", "-c", _NAMESPACE_SCRIPT, "sh", *argv]
    return [*prefix, *argv]


def buildah_cmd(*args: str) -> list[str]:
    """A complete ``buildah`` command line on the cache's storage, in its own namespace."""
    return _in_namespace(
        [
            "buildah",
            "--root",
            str(storage_dir()),
            "--runroot",
            _RUNROOT,
            "--storage-driver",
            storage_driver(),
            "--cgroup-manager",
            "cgroupfs",
            *args,
        ]
    )


def buildah_build_args(
    ref: str,
    context: Path,
    *,
    containerfile: Path | None = None,
    build_args: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
    volumes: Iterable[str] = (),
) -> list[str]:
    """``buildah build`` arguments: local images only, runc, the host's network."""
    args = [
        "build",
        "--runtime",
        RUNC,
        "--network",
        "host",
        "--pull=never",
        "--layers=false",
        "--format",
        "docker",  # keeps HEALTHCHECK (the OCI format drops it with a warning)
    ]
    if containerfile is not None:
        args += ["--file", str(containerfile)]
    for key, value in (build_args or {}).items():
        args += ["--build-arg", f"{key}={value}"]
    for key, value in (labels or {}).items():
        args += ["--label", f"{key}={value}"]
    for volume in volumes:
        args += ["--volume", volume]
    return [*args, "--tag", ref, str(context)]


def _env() -> dict[str, str]:
    tmp = _tmp_dir()
    tmp.mkdir(parents=True, exist_ok=True)
    return {**os.environ, "TMPDIR": str(tmp)}  # buildah's big temporary files: not /var/tmp


def display_cmd(argv: list[str]) -> str:
    """The command as a person would type it: without the mount-namespace wrapper."""
    if argv[:1] == ["unshare"] and "--" in argv:
        argv = argv[argv.index("--") + 1 :]
        if argv[:2] == ["sh", "-c"]:
            argv = argv[4:]  # sh -c SCRIPT $0
    return shlex.join(argv)


def _run(argv: list[str], *, what: str, progress: bool = False) -> str:
    """Run ``argv``; return its output (stdout and stderr merged, in order).

    With ``progress``, log every ``STEP`` line and, on a quiet stretch, the time spent.
    """
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=_env(),
        )
    except FileNotFoundError as exc:
        hint = f" ({_INSTALL_HINT})" if Path(argv[0]).name in _APT_TOOLS else ""
        raise ImageError(f"{what}: {exc.filename} not found{hint}") from exc
    out: list[str] = []
    tail: deque[str] = deque(maxlen=25)

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            out.append(line)
            tail.append(line)
            if progress and _STEP.match(line):
                _log(f"  {line.rstrip()[:160]}")

    with proc:  # closes the pipe
        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        start = time.monotonic()
        while True:
            try:
                proc.wait(timeout=_PROGRESS_EVERY)
                break
            except subprocess.TimeoutExpired:
                if progress:
                    _log(f"  {what}: {time.monotonic() - start:.0f}s elapsed")
        reader.join()
    if proc.returncode != 0:
        raise ImageError(
            f"{what} failed (exit {proc.returncode}): `{display_cmd(argv)}`\n"
            + "".join(tail).rstrip()
        )
    return "".join(out)


def _require_tools() -> None:
    missing = [t for t in ("buildah", "mmdebstrap", "unshare") if shutil.which(t) is None]
    if not Path(RUNC).exists():
        missing.append(RUNC)
    if missing:
        raise ImageError(f"{', '.join(missing)} not found: {_INSTALL_HINT}")
    if os.geteuid() != 0:
        raise ImageError("building images needs root (buildah's storage, mmdebstrap, mounts)")


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    """Hold ``<cache>/images/<name>.lock``: one build of an image at a time."""
    images_dir().mkdir(parents=True, exist_ok=True)
    with (images_dir() / f"{name}.lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _log(f"another process is building {name}; waiting for it…")
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


# --- the archive cache --------------------------------------------------------------------


def _load(ref: str, key: str) -> Image | None:
    """The cached archive of ``ref`` if it was built from ``key`` and is intact."""
    archive = archive_path(ref)
    try:
        meta = json.loads(_meta_path(archive).read_text())
        size = archive.stat().st_size
    except (OSError, ValueError):
        return None
    if meta.get("key") != key or meta.get("ref") != ref or meta.get("size_bytes") != size:
        return None
    return Image(ref, archive, float(meta.get("build_seconds", 0.0)), size, cached=True)


def _export(ref: str, key: str, started: float) -> Image:
    """``buildah push`` ``ref`` to its docker-archive, atomically, and record it."""
    archive = archive_path(ref)
    archive.parent.mkdir(parents=True, exist_ok=True)
    partial = archive.with_name(f".{archive.name}.{os.getpid()}.partial")
    partial.unlink(missing_ok=True)
    try:
        _run(
            buildah_cmd("push", "--quiet", ref, f"docker-archive:{partial}:{ref}"),
            what=f"exporting {ref}",
        )
        partial.replace(archive)
    finally:
        partial.unlink(missing_ok=True)
    image = Image(ref, archive, round(time.monotonic() - started, 1), archive.stat().st_size)
    meta = {
        "ref": ref,
        "key": key,
        "build_seconds": image.build_seconds,
        "size_bytes": image.size_bytes,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    _meta_path(archive).write_text(json.dumps(meta, indent=2) + "\n")
    _log(f"built {ref} in {image.build_seconds:.0f}s ({image.size_bytes / 2**20:.1f} MiB archive)")
    return image


def _ensure(name: str, ref: str, key: str, make: Callable[[], None], *, keep: bool) -> Image:
    """The cached archive of ``ref``, or: ``make()`` it in buildah's storage, export it,
    and (unless ``keep``) drop it from the storage again."""
    cached = _load(ref, key)
    if cached is not None:
        return cached
    _require_tools()
    with _locked(name):
        cached = _load(ref, key)  # built by whoever held the lock
        if cached is not None:
            return cached
        _log(f"building {ref}…")
        started = time.monotonic()
        make()
        image = _export(ref, key, started)
        if not keep:
            _run(buildah_cmd("rmi", ref), what=f"removing {ref} from buildah's storage")
    return image


def _stored(ref: str) -> bool:
    """Is ``ref`` in buildah's storage?"""
    try:
        _run(
            buildah_cmd("inspect", "--type", "image", "--format", "{{.FromImageID}}", ref), what=ref
        )
    except ImageError:
        return False
    return True


@contextlib.contextmanager
def _context_dir(name: str) -> Iterator[Path]:
    """A scratch build context under the cache, removed afterwards."""
    parent = _tmp_dir()
    parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"{name}-", dir=parent) as tmp:
        yield Path(tmp)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


# --- the base -----------------------------------------------------------------------------


def host_mirrors(apt: Path = Path("/etc/apt")) -> list[str]:
    """One-line apt sources for the suite, its -updates and -security, from the host's
    apt configuration (deb822 ``.sources`` and one-line ``.list``), ``main`` only."""
    wanted = {DEBIAN_SUITE, *(DEBIAN_SUITE + s for s in _EXTRA_SUITES)}
    found: dict[str, str] = {}  # suite -> uri
    for path in sorted(apt.glob("sources.list.d/*.sources")):
        for stanza in path.read_text(errors="replace").split("\n\n"):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if ":" in line and not line.lstrip().startswith("#"):
                    key, _, value = line.partition(":")
                    fields[key.strip().lower()] = value.strip()
            if "deb" not in fields.get("types", "").split():
                continue
            if "main" not in fields.get("components", "").split():
                continue
            if fields.get("enabled", "yes").lower() == "no":
                continue
            for suite in fields.get("suites", "").split():
                for uri in fields.get("uris", "").split():
                    if suite in wanted:
                        found.setdefault(suite, uri.rstrip("/"))
    lists = [apt / "sources.list", *sorted(apt.glob("sources.list.d/*.list"))]
    for path in lists:
        if not path.is_file():
            continue
        for line in path.read_text(errors="replace").splitlines():
            words = [w for w in line.split("#", 1)[0].split() if not w.startswith("[")]
            if len(words) >= 4 and words[0] == "deb" and words[2] in wanted and "main" in words:
                found.setdefault(words[2], words[1].rstrip("/"))
    if DEBIAN_SUITE not in found:
        return list(_DEFAULT_MIRRORS)
    return [f"deb {found[s]} {s} main" for s in sorted(found, key=len)]


def mmdebstrap_cmd(output: Path, mirrors: Iterable[str]) -> list[str]:
    include = ",".join(BASE_PACKAGES)
    return [
        "mmdebstrap",
        *MMDEBSTRAP_OPTIONS,
        f"--include={include}",
        DEBIAN_SUITE,
        str(output),
        *mirrors,
    ]


def _ensure_rootfs() -> Path:
    rootfs = _rootfs_path()
    if rootfs.exists():
        return rootfs
    rootfs.parent.mkdir(parents=True, exist_ok=True)
    mirrors = host_mirrors()
    _log(f"mmdebstrap {DEBIAN_SUITE} ({', '.join(BASE_PACKAGES)}) from {mirrors[0].split()[1]}…")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=".rootfs-", dir=rootfs.parent) as tmp:
        out = Path(tmp) / "rootfs.tar"  # mmdebstrap picks the format by the extension
        # its own mounts (proc, sys, dev in the chroot) stay in a private namespace
        _run(
            _in_namespace(mmdebstrap_cmd(out, mirrors), tmpfs=False),
            what="mmdebstrap",
            progress=True,
        )
        out.replace(rootfs)
    size = rootfs.stat().st_size / 2**20
    _log(f"root file system {rootfs.name} in {time.monotonic() - started:.0f}s ({size:.0f} MiB)")
    return rootfs


def ensure_base_image() -> Image:
    """:data:`BASE_IMAGE`, in buildah's storage (the operator image is built ``FROM`` it)
    and as an archive."""
    _require_tools()
    key = base_key()
    with _locked("debian-python"):
        started = time.monotonic()
        if _stored(BASE_IMAGE):
            cached = _load(BASE_IMAGE, key)
            if cached is not None:
                return cached
        else:
            rootfs = _ensure_rootfs()
            _log(f"building {BASE_IMAGE}…")
            with _context_dir("base") as ctx:
                _link_or_copy(rootfs, ctx / "rootfs.tar")
                (ctx / "Containerfile").write_text(BASE_CONTAINERFILE)
                _run(
                    buildah_cmd(*buildah_build_args(BASE_IMAGE, ctx)),
                    what=f"building {BASE_IMAGE}",
                    progress=True,
                )
        return _export(BASE_IMAGE, key, started)


# --- the operator -------------------------------------------------------------------------


def operator_ref(tag: str | None = None, *, label: str | None = None) -> tuple[str, str]:
    """``(ref, key)`` of the operator image for the current tree."""
    key = operator_key(operator_source_key(), BASE_IMAGE, label)
    return f"{OPERATOR_REPOSITORY}:{tag or key[:12]}", key


def operator_build_cmd(ref: str, base_ref: str, label: str | None = None) -> list[str]:
    """``buildah build`` of the repository's Dockerfile on ``base_ref``; pip in the build
    stage gets the host's CA bundle (read-only, for this build only)."""
    return buildah_cmd(
        *buildah_build_args(
            ref,
            REPO_ROOT,
            containerfile=REPO_ROOT / "Dockerfile",
            build_args={"BASE_IMAGE": base_ref},
            labels={VARIANT_LABEL: label} if label else None,
            volumes=[f"{CA_BUNDLE}:{CA_BUNDLE}:ro"] if CA_BUNDLE.is_file() else [],
        )
    )


def build_operator_image(tag: str | None = None, *, label: str | None = None) -> Image:
    """The operator image from the repository's Dockerfile on :data:`BASE_IMAGE`.

    Without ``tag`` the tag is the tree's content hash; with one, the archive is reused
    only if it was built from the same tree. ``label`` (``etcdconfig.dev/variant``)
    makes the image's content, hence its digest, differ from an unlabelled build.
    """
    ref, key = operator_ref(tag, label=label)
    cached = _load(ref, key)
    if cached is not None:
        return cached
    base = ensure_base_image()

    def make() -> None:
        _run(operator_build_cmd(ref, base.ref, label), what=f"building {ref}", progress=True)

    image = _ensure("etcdconfig", ref, key, make, keep=False)
    _prune_operator_archives(keep={image.archive})
    return image


def _prune_operator_archives(keep: set[Path]) -> None:
    """Drop all but the most recently used operator archives (every edit makes one)."""
    prefix = OPERATOR_REPOSITORY.rsplit("/", 1)[-1] + "-"
    archives = sorted(
        (p for p in images_dir().glob(f"{prefix}*.tar") if p not in keep),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for old in archives[_KEEP_OPERATOR_ARCHIVES:]:
        old.unlink(missing_ok=True)
        _meta_path(old).unlink(missing_ok=True)


# --- etcd ---------------------------------------------------------------------------------


def _is_static(path: Path) -> bool:
    """An ELF executable without a program interpreter (PT_INTERP) needs no libc."""
    with path.open("rb") as f:
        header = f.read(64)
        if header[:4] != b"\x7fELF" or header[4] != 2:  # 64-bit ELF only
            return False
        order: Literal["little", "big"] = "little" if header[5] == 1 else "big"
        phoff = int.from_bytes(header[32:40], order)
        phentsize = int.from_bytes(header[54:56], order)
        phnum = int.from_bytes(header[56:58], order)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    types = (int.from_bytes(table[i : i + 4], order) for i in range(0, len(table), phentsize))
    return 3 not in types  # PT_INTERP


def _etcd_binaries() -> tuple[Path, Path]:
    found: list[Path] = []
    for binary in build.ensure_etcd():
        path = binary if binary.is_absolute() else Path(shutil.which(str(binary)) or binary)
        if not path.is_file():
            raise ImageError(f"{binary} not found: the etcd image needs etcd and etcdctl")
        if not _is_static(path):
            raise ImageError(
                f"{path} is dynamically linked: the etcd image is FROM scratch and needs "
                "static binaries (unset ETCDCONFIG_ETCD_BIN to build them from Go modules)"
            )
        found.append(path)
    return found[0], found[1]


def ensure_etcd_image() -> Image:
    etcd, etcdctl = _etcd_binaries()
    key = _digest(ETCD_CONTAINERFILE, _file_digest(etcd), _file_digest(etcdctl))

    def make() -> None:
        with _context_dir("etcd") as ctx:
            _link_or_copy(etcd, ctx / "etcd")
            _link_or_copy(etcdctl, ctx / "etcdctl")
            (ctx / "Containerfile").write_text(ETCD_CONTAINERFILE)
            _run(buildah_cmd(*buildah_build_args(ETCD_IMAGE, ctx)), what=f"building {ETCD_IMAGE}")

    return _ensure("etcd", ETCD_IMAGE, key, make, keep=False)


# --- pause --------------------------------------------------------------------------------


def pause_source_dir() -> Path:
    return build.cache_dir() / "src" / f"pause-{PAUSE_VERSION}"


def pause_key() -> str:
    return _digest(PAUSE_GO_MOD, PAUSE_SOURCE, PAUSE_CONTAINERFILE)


def ensure_pause_image() -> Image:
    key = pause_key()

    def make() -> None:
        src = pause_source_dir()
        src.mkdir(parents=True, exist_ok=True)
        (src / "go.mod").write_text(PAUSE_GO_MOD)
        (src / "main.go").write_text(PAUSE_SOURCE)
        with _context_dir("pause") as ctx:
            try:
                build.run_go(
                    ["build", "-trimpath", "-ldflags=-s -w", "-o", str(ctx / "pause"), "."],
                    cwd=src,
                    env={"CGO_ENABLED": "0"},
                )
            except build.BuildError as exc:
                raise ImageError(f"building the pause binary: {exc}") from exc
            (ctx / "Containerfile").write_text(PAUSE_CONTAINERFILE)
            _run(buildah_cmd(*buildah_build_args(PAUSE_IMAGE, ctx)), what=f"building {PAUSE_IMAGE}")

    return _ensure("pause", PAUSE_IMAGE, key, make, keep=False)


# --- all of them --------------------------------------------------------------------------


def ensure_images(*, operator_tag: str | None = None) -> dict[str, Image]:
    """The images the node runs, built if needed: ``operator``, ``etcd``, ``pause``."""
    images = {
        "pause": ensure_pause_image(),
        "etcd": ensure_etcd_image(),
        "operator": build_operator_image(operator_tag),
    }
    for image in images.values():
        with contextlib.suppress(OSError):
            os.utime(image.archive)  # most recently used: pruning keeps it
    return images


def import_cmd(ctr: Path, address: str, image: Image, *, snapshotter: str) -> list[str]:
    return [
        str(ctr),
        "--address",
        address,
        "--namespace",
        "k8s.io",
        "images",
        "import",
        "--snapshotter",
        snapshotter,
        "--label",
        "io.cri-containerd.pinned=pinned",
        str(image.archive),
    ]


def import_images(
    ctr: Path, address: str, images: Iterable[Image], *, snapshotter: str = "overlayfs"
) -> None:
    """Import archives into containerd's ``k8s.io`` namespace (the CRI's), unpacked into
    ``snapshotter`` (the CRI's, so the kubelet starts containers without pulling) and
    pinned (never garbage-collected)."""
    for image in images:
        started = time.monotonic()
        _run(
            import_cmd(ctr, address, image, snapshotter=snapshotter), what=f"importing {image.ref}"
        )
        _log(f"imported {image.ref} in {time.monotonic() - started:.1f}s")


# --- command line -------------------------------------------------------------------------


def _describe(name: str, image: Image | None, ref: str) -> str:
    if image is None:
        return f"{name:9} {ref}  (not built)"
    how = "cached" if image.cached else "built"
    return (
        f"{name:9} {image.ref}  build {image.build_seconds:.0f}s ({how})  "
        f"{image.size_bytes / 2**20:.1f} MiB  {image.archive}"
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m etcdconfig.devenv.images [build|list]``."""
    args = argv if argv is not None else sys.argv[1:]
    command = args[0] if args else "build"
    if command not in ("build", "list") or len(args) > 1:
        _log("usage: python -m etcdconfig.devenv.images [build|list]")
        return 2
    try:
        if command == "build":
            started = time.monotonic()
            base = ensure_base_image()
            images = {"base": base, **ensure_images()}
            for name, image in images.items():
                print(_describe(name, image, image.ref))
            _log(f"done in {time.monotonic() - started:.1f}s")
        else:
            expected = {
                "base": (BASE_IMAGE, base_key()),
                "operator": operator_ref(),
                "etcd": (ETCD_IMAGE, None),  # its key needs the etcd binaries: not built here
                "pause": (PAUSE_IMAGE, pause_key()),
            }
            for name, (ref, key) in expected.items():
                print(_describe(name, _listed(ref, key), ref))
    except (ImageError, build.BuildError) as exc:
        _log(f"error: {exc}")
        return 1
    return 0


def _listed(ref: str, key: str | None) -> Image | None:
    """The archive's record, checked against ``key`` when it is cheap to know."""
    if key is not None:
        return _load(ref, key)
    archive = archive_path(ref)
    try:
        meta = json.loads(_meta_path(archive).read_text())
        return dataclasses.replace(
            Image(ref, archive, float(meta["build_seconds"]), archive.stat().st_size),
            cached=True,
        )
    except (OSError, ValueError, KeyError):
        return None


if __name__ == "__main__":
    raise SystemExit(main())
