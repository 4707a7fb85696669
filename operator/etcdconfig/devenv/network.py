"""The node's network, and every other change a node makes to the host, undone on ``down``.

A kubelet needs a node IP that is not loopback, pods need a network, Services need a
range and rules. This machine's rule is that traffic stays on loopback or on devices we
create, so everything lives in the benchmarking range 198.18.0.0/15:

=================  ==================  ===============================================
node IP            ``198.18.0.1/32``   on ``etcdcfg0``, an ``ifb`` device (this kernel
                                       has no ``dummy``); the API server, the kubelet,
                                       kube-proxy and the cluster DNS listen here
Service range      ``198.18.16.0/24``  routed onto ``etcdcfg0``: a ClusterIP packet that
                                       kube-proxy did not rewrite dies there
pod network        ``198.19.0.0/24``   bridge ``etcdcfg-br0`` (CNI bridge + host-local);
                                       pods get routes to the node IP and the Service
                                       range only: no default route
=================  ==================  ===============================================

Nothing can leave the machine: pods have no route out; mangle ``FORWARD`` rules drop
anything between the bridge and any other interface; image pulls go to a registry
mirror that points nowhere (:mod:`etcdconfig.devenv.node`); pods' DNS is the node's own
CoreDNS, serving ``cluster.local`` and nothing else.

**Host state changed**, each recorded in ``<state>/host.json`` *before* it is made, so
:meth:`HostChanges.undo` (``dev down``) finds it whatever happened to the command that
made it: the ``etcdcfg0`` link, its address and route; the bridge (made by the CNI
plugin); the mangle rules; kube-proxy's ``KUBE-*`` chains (removed by
``kube-proxy --cleanup``); sysctls the kubelet, kube-proxy and the bridge plugin set
(saved, restored); ``kubepods`` cgroup directories; paths compiled into the binaries
(:data:`HOST_PATHS`), created only if missing and removed only if we created them;
mounts left under the state directory; network namespaces.
:func:`snapshot` describes all of it, so a test can compare the host before ``up`` and
after ``down``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "BRIDGE",
    "DNS_IP",
    "HOST_PATHS",
    "LINK",
    "NODE_IP",
    "POD_CIDR",
    "POD_GATEWAY",
    "SERVICE_CIDR",
    "SERVICE_IP",
    "HostChanges",
    "NetworkError",
    "snapshot",
]

LINK = "etcdcfg0"
BRIDGE = "etcdcfg-br0"
NODE_IP = "198.18.0.1"
SERVICE_CIDR = "198.18.16.0/24"
SERVICE_IP = "198.18.16.1"  # the `kubernetes` Service: first address of SERVICE_CIDR
DNS_IP = NODE_IP  # CoreDNS runs on the node, listening on the node IP only
POD_CIDR = "198.19.0.0/24"
POD_GATEWAY = "198.19.0.1"
RULE_COMMENT = "etcdconfig-dev"
RUN_DIR = "/run/etcdconfig-dev"  # containerd's and the shims' sockets (short paths)
KUBELET_ROOT = "/var/lib/etcdconfig-dev/kubelet"  # the kubelet's --root-dir (short paths)

#: sysctls a node changes: the kubelet (always, see its setupKernelTunables), the CNI
#: bridge plugin (ip_forward), kube-proxy (route_localnet, conntrack) and the bridge's
#: netfilter hook we need for pod-to-Service-to-pod on one bridge.
SYSCTLS = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
    "net/ipv4/ip_forward",
    "net/ipv4/conf/all/forwarding",
    "net/ipv4/conf/all/route_localnet",
    "net/bridge/bridge-nf-call-iptables",
    "net/netfilter/nf_conntrack_max",
    "net/netfilter/nf_conntrack_tcp_timeout_established",
    "net/netfilter/nf_conntrack_tcp_timeout_close_wait",
)

#: Paths compiled into the kubelet, containerd and the CNI library, outside any directory
#: a flag can move: created only if missing, removed on ``down`` only if ``up`` made them.
HOST_PATHS = (
    RUN_DIR,
    "/var/lib/etcdconfig-dev",
    "/var/lib/kubelet",
    "/var/log/containers",
    "/var/log/pods",
    "/var/lib/cni",
    "/run/containerd",
    "/run/netns",
    "/var/run/nri",
    "/opt/containerd",
    "/etc/cni",
    "/opt/cni",
)

_CGROUP_ROOT = Path("/sys/fs/cgroup")


class NetworkError(RuntimeError):
    """A host change could not be made or undone; the message names the command."""


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(args), capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        msg = " ".join((proc.stderr or proc.stdout).split())
        raise NetworkError(f"`{' '.join(args)}` failed: {msg}")
    return proc


def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name


def read_sysctl(name: str) -> str | None:
    try:
        return _sysctl_path(name).read_text().strip()
    except OSError:
        return None


def _write_sysctl(name: str, value: str) -> None:
    with contextlib.suppress(OSError):
        _sysctl_path(name).write_text(value + "\n")


def _forward_rules() -> list[list[str]]:
    """mangle FORWARD: drop anything between the pod bridge and any other interface.

    The first rule counts apart what is routed onto the node's own link: a packet to a
    ClusterIP that kube-proxy has not (yet) rewritten, which dies there by design. The
    other two must count nothing: a packet they drop was on its way off the machine."""
    comment = ["-m", "comment", "--comment", RULE_COMMENT]
    unrewritten = ["-m", "comment", "--comment", f"{RULE_COMMENT}: unrewritten ClusterIP"]
    return [
        ["-i", BRIDGE, "-o", LINK, *unrewritten, "-j", "DROP"],
        ["-i", BRIDGE, "!", "-o", BRIDGE, *comment, "-j", "DROP"],
        ["!", "-i", BRIDGE, "-o", BRIDGE, *comment, "-j", "DROP"],
    ]


def kubepods_cgroups() -> list[str]:
    """Every ``kubepods*`` directory (and what is below it) in every cgroup hierarchy."""
    found: list[str] = []
    if not _CGROUP_ROOT.is_dir():
        return found
    for hierarchy in sorted(_CGROUP_ROOT.iterdir()):
        with contextlib.suppress(OSError):
            for top in sorted(hierarchy.glob("kubepods*")):
                found.append(str(top))
                found.extend(str(p) for p in sorted(top.rglob("*")) if p.is_dir())
    return found


def mounts_under(*roots: Path) -> list[str]:
    """Mount points below any of ``roots``, deepest first (the order to unmount them)."""
    prefixes = [str(r.resolve()) + "/" for r in roots]
    points = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4].replace("\\040", " ")
            if any(point.startswith(p) or point + "/" == p for p in prefixes):
                points.append(point)
    return sorted(set(points), key=lambda p: (-p.count("/"), p))


def _iptables_save() -> list[str]:
    """Every rule and user-defined chain, as ``<table> -A <chain> <spec>`` / ``<table> :<chain>``
    lines; the built-in chains' headers are left out (an empty table shows up in
    ``iptables-save`` once anything has loaded it, which changes nothing)."""
    if shutil.which("iptables-save") is None:
        return []
    lines, table = [], ""
    for line in _run("iptables-save", check=False).stdout.splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith(":"):
            chain, policy = line[1:].split()[:2]
            if policy == "-":  # user-defined (built-in chains have a policy)
                lines.append(f"{table} :{chain}")
        elif line.startswith("-A "):
            lines.append(f"{table} {line}")
    return sorted(lines)


def _restore_iptables(before: list[str]) -> list[str]:
    """Delete every rule, then every user chain, that was not there ``before``."""
    problems = []
    now = _iptables_save()
    old = set(before)
    for line in now:
        table, _, rule = line.partition(" ")
        if line not in old and rule.startswith("-A "):
            chain, *spec = shlex.split(rule[3:])
            if _run("iptables", "-t", table, "-D", chain, *spec, check=False).returncode:
                problems.append(f"iptables -t {table} {rule}")
    for line in now:
        table, _, rest = line.partition(" ")
        if line not in old and rest.startswith(":"):
            _run("iptables", "-t", table, "-F", rest[1:], check=False)
            if _run("iptables", "-t", table, "-X", rest[1:], check=False).returncode:
                problems.append(f"iptables -t {table} chain {rest[1:]}")
    return problems


def snapshot() -> dict[str, Any]:
    """What a node changes on the host, as comparable data (before ``up``, after ``down``)."""
    links = _run("ip", "-o", "link", "show", check=False).stdout
    return {
        "links": sorted(
            line.split(":")[1].strip().split("@")[0] for line in links.splitlines() if ":" in line
        ),
        "addresses": sorted(
            " ".join(line.split()[1:4])
            for line in _run("ip", "-o", "addr", "show", check=False).stdout.splitlines()
        ),
        "routes": sorted(
            _run("ip", "route", "show", "table", "all", check=False).stdout.splitlines()
        ),
        "iptables": _iptables_save(),
        "sysctls": {name: read_sysctl(name) for name in SYSCTLS},
        "cgroups": kubepods_cgroups(),
        "paths": {p: os.path.lexists(p) for p in HOST_PATHS},
        "netns": sorted(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else [],
    }


@dataclass
class HostChanges:
    """The journal of host changes of one node, in ``<state>/host.json``."""

    path: Path
    data: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.path.exists():
            try:
                self.data = json.loads(self.path.read_text())
            except ValueError as exc:
                raise NetworkError(f"cannot read {self.path}: {exc}") from exc

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2) + "\n")
        tmp.replace(self.path)

    def _note(self, key: str, value: Any) -> None:
        entries = self.data.setdefault(key, [])
        if value not in entries:
            entries.append(value)
            self._save()

    @property
    def pending(self) -> bool:
        """Whether there is anything recorded to undo."""
        return any(self.data.get(k) for k in ("links", "rules", "sysctls", "paths", "cgroups"))

    # --- making changes -------------------------------------------------------------------

    def record_before(self) -> None:
        """Save what ``up`` may change before anything is: sysctls, cgroups, host paths."""
        if "sysctls" not in self.data:
            self.data["sysctls"] = {n: v for n in SYSCTLS if (v := read_sysctl(n)) is not None}
            self.data["cgroups_before"] = kubepods_cgroups()
            self.data["netns_before"] = snapshot()["netns"]
            self.data["iptables_before"] = _iptables_save()
            self._save()

    def ensure_paths(self) -> None:
        """Create the compiled-in paths that are missing (recorded first)."""
        for p in HOST_PATHS:
            if not os.path.lexists(p):
                self._note("paths", p)
        # the kubelet's root is ours by name: a fresh one each up (nothing of a node runs
        # now: claim() said so), so no pod of an earlier cluster comes back
        if os.path.isdir(KUBELET_ROOT) and not mounts_under(Path(KUBELET_ROOT)):
            shutil.rmtree(KUBELET_ROOT)
        for p in (
            RUN_DIR,
            KUBELET_ROOT,
            "/var/lib/kubelet/device-plugins",
            "/var/log/containers",
            "/var/log/pods",
        ):
            Path(p).mkdir(parents=True, exist_ok=True)

    def claim(self) -> None:
        """A node is one per host (fixed names and addresses): if the link exists and is
        not ours, another node runs here; say so before anything is changed."""
        owner_file = Path(RUN_DIR) / "owner"
        exists = _run("ip", "link", "show", LINK, check=False).returncode == 0
        if exists and LINK not in self.data.get("links", []):
            owner = owner_file.read_text().strip() if owner_file.exists() else "unknown"
            raise NetworkError(
                f"another node runs on this host (link {LINK} exists, state dir {owner}): "
                f"stop it first (`etcdconfig dev --dir {owner} down`)"
            )

    def set_up_network(self) -> None:
        """The node IP's link and route, bridge-netfilter, the FORWARD drop rules."""
        (Path(RUN_DIR) / "owner").write_text(str(self.path.parent) + "\n")
        if _run("ip", "link", "show", LINK, check=False).returncode != 0:
            self._note("links", LINK)
            _run("ip", "link", "add", LINK, "type", "ifb")
        _run("ip", "addr", "replace", f"{NODE_IP}/32", "dev", LINK)
        _run("ip", "link", "set", LINK, "up")
        _run("ip", "route", "replace", SERVICE_CIDR, "dev", LINK, "src", NODE_IP)
        self._note("links", BRIDGE)  # made by the CNI bridge plugin on the first pod
        _write_sysctl("net/bridge/bridge-nf-call-iptables", "1")
        for rule in _forward_rules():
            if _run("iptables", "-t", "mangle", "-C", "FORWARD", *rule, check=False).returncode:
                self._note("rules", ["mangle", "FORWARD", *rule])
                _run("iptables", "-t", "mangle", "-A", "FORWARD", *rule)

    # --- undoing them ---------------------------------------------------------------------

    def undo(self, *, kube_proxy: Path | None, roots: tuple[Path, ...]) -> list[str]:
        """Undo everything recorded; returns what could not be undone (never raises).

        Call it once the node's processes and pods are gone: it unmounts what is left
        under ``roots``, removes kube-proxy's chains, our rules, links and cgroups, the
        paths ``up`` created, and restores the saved sysctls."""
        problems: list[str] = []
        for point in mounts_under(*roots):
            if (
                _run("umount", point, check=False).returncode
                and _run("umount", "-l", point, check=False).returncode
            ):
                problems.append(f"mount {point}")
        if kube_proxy is not None and self.data.get("links"):
            _run(str(kube_proxy), "--cleanup", check=False)
        for rule in self.data.get("rules", []):
            table, chain, *spec = rule
            while not _run("iptables", "-t", table, "-C", chain, *spec, check=False).returncode:
                _run("iptables", "-t", table, "-D", chain, *spec, check=False)
        if "iptables_before" in self.data:  # the kubelet's own chains, and anything else new
            problems += _restore_iptables(self.data["iptables_before"])
        before_ns = set(self.data.get("netns_before", []))
        if os.path.isdir("/run/netns"):
            for ns in os.listdir("/run/netns"):
                if ns not in before_ns and ns.startswith("cni-"):
                    _run("ip", "netns", "delete", ns, check=False)
        for link in reversed(self.data.get("links", [])):
            if (
                _run("ip", "link", "show", link, check=False).returncode == 0
                and _run("ip", "link", "delete", link, check=False).returncode
            ):
                problems.append(f"link {link}")
        before = set(self.data.get("cgroups_before", []))
        for cg in sorted(set(kubepods_cgroups()) - before, key=lambda p: -p.count("/")):
            try:
                os.rmdir(cg)
            except FileNotFoundError:
                pass
            except OSError as exc:
                problems.append(f"cgroup {cg}: {exc.strerror}")
        for p in sorted(self.data.get("paths", []), key=lambda p: -p.count("/")):
            if mounts_under(Path(p)):
                problems.append(f"path {p} (still has mounts)")
                continue
            with contextlib.suppress(FileNotFoundError):
                if os.path.islink(p) or not os.path.isdir(p):
                    os.unlink(p)
                else:
                    shutil.rmtree(p)
        for name, value in self.data.get("sysctls", {}).items():
            if read_sysctl(name) != value:
                _write_sysctl(name, value)
                if read_sysctl(name) != value:
                    problems.append(f"sysctl {name}")
        if not problems:
            self.path.unlink(missing_ok=True)
            self.data = {}
        return problems
