"""A bulk of Configs does not open a connection to the API server per Config.

kopf's own HTTP session has no connection limit, and the generated Kubernetes client
allows 100: a bulk of new Configs, all handled at once, opened one TLS connection per
Config in flight — hundreds, each a handshake on both sides and a 256 KiB read buffer
(the largest share of the operator's memory after a bulk: ``bench/memory.py``).
``--api-connections N`` caps each client at N connections besides its watch streams.

The test counts the operator's established TCP connections to the API server (its
sockets in ``/proc/PID/fd`` matched to ``/proc/PID/net/tcp``) every few milliseconds
while the operator starts on 200 Configs created before it, each published to a
ConfigMap (the operator's own client), and records them all.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from pathlib import Path

from tests.e2e.operator_env import OperatorProcess, config_manifest, wait_observed, wait_until

from etcdconfig.devenv.controlplane import ControlPlane
from etcdconfig.devenv.etcd import EtcdServer

CONFIGS = 200
CAP = 4
# kopf: CAP + one watch stream per namespace + 4 for its observers; the operator's
# client: CAP. aiohttp counts the connections in use: one it is closing (a response not
# read to the end, a watch restarted) is still ESTABLISHED for a moment but no longer
# counted, hence twice that. Without either cap this start peaks far above it.
MOST = 2 * ((CAP + 1 + 4) + CAP)


def api_connections(pid: int, port: int) -> int:
    """Established TCP connections of ``pid`` whose remote port is ``port``."""
    inodes = set()
    fd_dir = f"/proc/{pid}/fd"
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(f"{fd_dir}/{fd}")
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{table}") as f:
            next(f)
            for line in f:
                fields = line.split()
                remote, state, inode = fields[2], fields[3], fields[9]
                if state == "01" and inode in inodes and int(remote.rsplit(":", 1)[1], 16) == port:
                    count += 1
    return count


def test_a_bulk_of_configs_stays_within_the_connection_cap(
    control_plane: ControlPlane, store_etcd: EtcdServer, crd: Path, namespace: str, tmp_path: Path
) -> None:
    plane, ns = control_plane, namespace
    port = int(plane.server.rsplit(":", 1)[1])
    op = OperatorProcess(
        plane=plane,
        etcd_endpoint=store_etcd.endpoint,
        prefix=f"/conns-{uuid.uuid4().hex[:8]}",
        workdir=tmp_path / "op",
        replica_id="conns-op",
        extra=("--namespaces", ns, "--api-connections", str(CAP)),
    )
    # the Configs exist before the operator starts: its first list hands all of them
    # to kopf at once, each handled concurrently (finalizer, version, status, Event,
    # ConfigMap) — as many in flight as there can be, however loaded the machine is
    manifests = [
        config_manifest(f"c{i}", ns, {"n": i}, publish={"configMap": {"name": f"cm-{i}"}})
        for i in range(CONFIGS)
    ]
    plane.kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(m) for m in manifests))
    op.start()
    try:
        assert op.proc is not None
        pid = op.proc.pid
        samples: list[int] = []
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                try:
                    samples.append(api_connections(pid, port))
                except (FileNotFoundError, ProcessLookupError):
                    return
                done.wait(0.005)  # the sampling period

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            for i in range(CONFIGS):
                wait_observed(plane, ns, f"c{i}", timeout=120)
            wait_until(
                lambda: all(
                    plane.kubectl("get", "configmap", f"cm-{i}", "-n", ns, check=False).returncode
                    == 0
                    for i in (0, CONFIGS - 1)
                ),
                60,
                "the ConfigMaps published",
            )
        finally:
            done.set()
            sampler.join(5)
        assert samples, "no sample of the operator's connections"
        peak = max(samples)
        assert 1 <= peak <= MOST, (
            f"{peak} connections to the API server at the peak (cap {MOST}), "
            f"{len(samples)} samples; operator log:\n{op.log_tail()}"
        )
    finally:
        op.stop()
