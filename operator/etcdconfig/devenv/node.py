"""One node: containerd, the kubelet, kube-proxy and a cluster DNS, next to the control plane.

What a node is made of, and how the pieces find each other (every file below lives
in ``<state>/node/``; the host changes are :mod:`etcdconfig.devenv.network`'s):

- **containerd** (``containerd/config.toml``): root and state inside the node
  directory (a fresh image store each ``up``, images imported from the archives
  :mod:`etcdconfig.devenv.images` builds); runc from Debian as the runtime
  (``SystemdCgroup = false``: the kubelet uses cgroupfs); ``restrict_oom_score_adj``
  because this root may not lower oom_score_adj; every registry mirrored to
  ``http://127.0.0.1:1``, so a pull can never leave the machine; network namespaces
  and shim sockets under the node directory; NRI, CDI and the ``/etc`` imports off.
- **CNI** (``cni/net.d``): the bridge plugin with host-local IPAM, state in
  ``cni/ipam``; pods get routes to the node IP and the Service range, nothing else.
- **kubelet** (``kubelet.yaml``): registers node ``198.18.0.1`` (named by its IP so
  the API server never resolves a host name), serves on the node IP only, cgroupfs,
  ``failCgroupV1: false`` (this host has cgroup v1 controllers), ``maxOpenFiles`` at
  the hard limit (we may not raise it), image GC off (images are never pulled back).
  Client certificate ``system:node:198.18.0.1`` in ``system:nodes``: the API server's
  Node authorizer and NodeRestriction judge it, as in a real cluster.
- **kube-proxy** (iptables mode): node ports on the node IP only (so it never needs
  ``route_localnet``), conntrack sysctls left alone, ``oomScoreAdj: 0``.
- **CoreDNS** (a host process): ``cluster.local`` from the API, on the node IP port
  53; any other name is refused, never forwarded. Pods with ``dnsPolicy: Default``
  get ``nameserver 127.0.0.1`` (nothing there): the host's resolver is never asked.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from etcdconfig.devenv import build, network

if TYPE_CHECKING:
    from etcdconfig.devenv.pki import CertificateAuthority

__all__ = ["NODE_NAME", "Node", "NodeError"]

NODE_NAME = network.NODE_IP
CLUSTER_DOMAIN = "cluster.local"
NOWHERE = "http://127.0.0.1:1"
#: containerd's and its shims' sockets (a shim's is named by a 64-character hash).
RUN_DIR = Path(network.RUN_DIR)
#: The kubelet's root (pods' volumes, its plugin and pod-resources sockets): a short path
#: of its own, as a unix socket path must fit in 108 bytes and a state dir may not.
KUBELET_ROOT = Path(network.KUBELET_ROOT)  # the registry mirror of every registry: nothing listens


class NodeError(RuntimeError):
    """The node could not be started or stopped; the message (one line) says why."""


def _dump(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False) if path.suffix == ".yaml" else data)


@dataclass
class Node:
    """The files and binaries of the node of the control plane in ``state_dir``."""

    state_dir: Path

    @property
    def dir(self) -> Path:
        return self.state_dir / "node"

    @property
    def containerd_socket(self) -> Path:
        """In :data:`RUN_DIR`: a unix socket path must fit in 108 bytes, a state dir may not."""
        return RUN_DIR / "containerd.sock"

    @property
    def host(self) -> network.HostChanges:
        return network.HostChanges(self.state_dir / "host.json")

    # --- configuration --------------------------------------------------------------------

    def containerd_config(self, shim_dir: Path, pause_ref: str) -> str:
        d = self.dir / "containerd"
        cri = "plugins.'io.containerd.cri.v1.runtime'"
        return f"""\
version = 3
root = '{d / "root"}'
state = '{d / "state"}'
imports = []
disabled_plugins = ['io.containerd.nri.v1.nri', 'io.containerd.tracing.processor.v1.otlp']

[grpc]
  address = '{self.containerd_socket}'

[ttrpc]
  address = '{self.containerd_socket}.ttrpc'

[plugins]
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = 'overlayfs'
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = '{pause_ref}'
    [plugins.'io.containerd.cri.v1.images'.registry]
      config_path = '{d / "certs.d"}'
  [{cri}]
    restrict_oom_score_adj = true
    enable_cdi = false
    cdi_spec_dirs = []
    netns_mounts_under_state_dir = true
    [{cri}.containerd]
      default_runtime_name = 'runc'
      [{cri}.containerd.runtimes.runc]
        runtime_type = 'io.containerd.runc.v2'
        [{cri}.containerd.runtimes.runc.options]
          BinaryName = '/usr/sbin/runc'
          SystemdCgroup = false
    [{cri}.cni]
      bin_dirs = ['/usr/lib/cni']
      conf_dir = '{self.dir / "cni" / "net.d"}'
  [plugins.'io.containerd.grpc.v1.cri']
    stream_server_address = '127.0.0.1'
    stream_server_port = '0'
  [plugins.'io.containerd.internal.v1.opt']
    path = '{d / "opt"}'
  [plugins.'io.containerd.image-verifier.v1.bindir']
    bin_dir = '{d / "image-verifier"}'
  [plugins.'io.containerd.shim.v1.manager']
    socket_dir = '{RUN_DIR / "s"}'
  [plugins.'io.containerd.transfer.v1.local']
    config_path = '{d / "certs.d"}'
"""

    def write_config(self, *, ca: CertificateAuthority, server: str, pause_ref: str) -> None:
        """Every configuration file, certificate and kubeconfig of the node."""
        from etcdconfig.devenv.controlplane import _kubeconfig, _write_private

        d = self.dir
        shim_dir = d / "bin"
        shim_dir.mkdir(parents=True, exist_ok=True)
        for name, path in build.ensure_containerd().items():
            link = shim_dir / name
            link.unlink(missing_ok=True)
            link.symlink_to(path)
        _dump(d / "containerd" / "config.toml", self.containerd_config(shim_dir, pause_ref))
        _dump(
            d / "containerd" / "certs.d" / "_default" / "hosts.toml",
            f'server = "{NOWHERE}"\n\n[host."{NOWHERE}"]\n  capabilities = ["pull", "resolve"]\n',
        )
        conflist = {
            "cniVersion": "1.0.0",
            "name": "etcdconfig-dev",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": network.BRIDGE,
                    "isGateway": True,
                    "isDefaultGateway": False,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "dataDir": str(d / "cni" / "ipam"),
                        "ranges": [[{"subnet": network.POD_CIDR, "gateway": network.POD_GATEWAY}]],
                        "routes": [
                            {"dst": f"{network.NODE_IP}/32"},
                            {"dst": network.SERVICE_CIDR},
                        ],
                    },
                }
            ],
        }
        _dump(d / "cni" / "net.d" / "10-etcdconfig.conflist", json.dumps(conflist, indent=2))
        _dump(d / "resolv.conf", "nameserver 127.0.0.1\n")
        pki = d / "pki"
        serving = ca.issue(
            pki / "kubelet-serving",
            common_name=NODE_NAME,
            server=True,
            ip_addresses=(network.NODE_IP,),
        )
        users = {
            "kubelet": (f"system:node:{NODE_NAME}", ("system:nodes",)),
            "kube-proxy": ("system:kube-proxy", ()),
            "coredns": ("system:etcdconfig-dev:coredns", ()),
        }
        for name, (user, groups) in users.items():
            pair = ca.issue(pki / name, common_name=user, organizations=groups, client=True)
            _write_private(
                d / f"{name}.kubeconfig",
                yaml.safe_dump(_kubeconfig(server, ca.cert_pem, user, pair)),
            )
        hard_nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        _dump(
            d / "kubelet.yaml",
            {
                "apiVersion": "kubelet.config.k8s.io/v1beta1",
                "kind": "KubeletConfiguration",
                "address": network.NODE_IP,
                "port": 10250,
                "readOnlyPort": 0,
                "healthzBindAddress": "127.0.0.1",
                "healthzPort": 10248,
                "tlsCertFile": str(serving.cert_path),
                "tlsPrivateKeyFile": str(serving.key_path),
                "authentication": {
                    "anonymous": {"enabled": True},
                    "webhook": {"enabled": False},
                    "x509": {"clientCAFile": str(ca.cert_path)},
                },
                "authorization": {"mode": "AlwaysAllow"},
                "cgroupDriver": "cgroupfs",
                "failCgroupV1": False,
                "failSwapOn": False,
                "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
                "clusterDNS": [network.DNS_IP],
                "clusterDomain": CLUSTER_DOMAIN,
                "resolvConf": str(d / "resolv.conf"),
                "maxOpenFiles": hard_nofile if hard_nofile != resource.RLIM_INFINITY else 1048576,
                "podLogsDir": str(d / "pod-logs"),
                "imageGCHighThresholdPercent": 100,
                "imageGCLowThresholdPercent": 99,
                "evictionHard": {
                    "memory.available": "100Mi",
                    "nodefs.available": "1%",
                    "imagefs.available": "1%",
                },
                "protectKernelDefaults": False,
                "serializeImagePulls": False,
                "registerNode": True,
                "staticPodPath": "",
                "rotateCertificates": False,
                "shutdownGracePeriod": "0s",
                "nodeStatusUpdateFrequency": "2s",
                "syncFrequency": "10s",
            },
        )
        _dump(
            d / "kube-proxy.yaml",
            {
                "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
                "kind": "KubeProxyConfiguration",
                "clientConnection": {"kubeconfig": str(d / "kube-proxy.kubeconfig")},
                "mode": "iptables",
                "hostnameOverride": NODE_NAME,
                "bindAddress": network.NODE_IP,
                "clusterCIDR": network.POD_CIDR,
                "healthzBindAddress": "127.0.0.1:10256",
                "metricsBindAddress": "127.0.0.1:10249",
                "oomScoreAdj": 0,
                "nodePortAddresses": [f"{network.NODE_IP}/32"],
                "iptables": {"localhostNodePorts": False, "masqueradeAll": False},
                "conntrack": {
                    "maxPerCore": 0,
                    "min": 0,
                    "tcpEstablishedTimeout": "0s",
                    "tcpCloseWaitTimeout": "0s",
                },
            },
        )
        _dump(
            d / "Corefile",
            f"""\
{CLUSTER_DOMAIN}:53 {{
    bind {network.DNS_IP}
    errors
    health 127.0.0.1:10254
    ready 127.0.0.1:10253
    kubernetes {CLUSTER_DOMAIN} {{
        kubeconfig {d / "coredns.kubeconfig"} {"system:etcdconfig-dev:coredns"}@etcdconfig-dev
    }}
    cache 5
}}
""",
        )

    # --- processes ------------------------------------------------------------------------

    def commands(self) -> dict[str, list[str]]:
        """The node's processes in start order, with their arguments."""
        d = self.dir
        k8s = build.ensure_kubernetes()
        ctd = build.ensure_containerd()
        return {
            "containerd": [
                str(ctd["containerd"]),
                "--config",
                str(d / "containerd" / "config.toml"),
            ],
            "coredns": [str(build.ensure_coredns()), "-conf", str(d / "Corefile")],
            "kubelet": [
                str(k8s["kubelet"]),
                f"--config={d / 'kubelet.yaml'}",
                f"--kubeconfig={d / 'kubelet.kubeconfig'}",
                f"--root-dir={KUBELET_ROOT}",
                f"--cert-dir={d / 'kubelet-pki'}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={network.NODE_IP}",
            ],
            "kube-proxy": [str(k8s["kube-proxy"]), f"--config={d / 'kube-proxy.yaml'}"],
        }

    def env(self) -> dict[str, str]:
        """containerd finds its shim on PATH: ours first, then runc and the system's."""
        path = f"{self.dir / 'bin'}:/usr/sbin:/usr/bin:/sbin:/bin"
        return {**os.environ, "PATH": path}

    def cri_ready(self) -> bool:
        """Whether containerd's CRI service answers (its socket opens before it does)."""
        return self.containerd_socket.exists() and self.crictl("version").returncode == 0

    def crictl(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        endpoint = f"unix://{self.containerd_socket}"
        return subprocess.run(
            [
                str(build.ensure_crictl()),
                "--runtime-endpoint",
                endpoint,
                "--image-endpoint",
                endpoint,
                "--timeout",
                "20s",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def remove_pods(self) -> str | None:
        """Stop and remove every pod through the CRI (CNI teardown included); None if
        done, else why not (containerd gone: :meth:`kill_leftovers` is the backstop)."""
        if not self.containerd_socket.exists():
            return "containerd is not running"
        if self.crictl("version").returncode:
            return "containerd does not answer"
        try:
            proc = self.crictl("rmp", "--all", "--force", timeout=90.0)
        except subprocess.TimeoutExpired:
            return "crictl rmp timed out"
        return None if proc.returncode == 0 else " ".join(proc.stderr.split())[:300]

    def kill_leftovers(self) -> list[int]:
        """SIGKILL every process left in a pod cgroup this node made, and every shim of
        ours (after a SIGKILLed containerd, shims and containers outlive it)."""
        before = set(self.host.data.get("cgroups_before", []))
        pids: set[int] = set()
        for cg in network.kubepods_cgroups():
            if cg in before:
                continue
            with contextlib.suppress(OSError):
                pids.update(int(p) for p in Path(cg, "cgroup.procs").read_text().split())
        shim = str(build.ensure_containerd()["containerd-shim-runc-v2"])
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                with contextlib.suppress(OSError):
                    if os.readlink(proc / "exe") == shim:
                        pids.add(int(proc.name))
        pids.discard(os.getpid())
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
            time.sleep(0.05)
        return sorted(pids)
