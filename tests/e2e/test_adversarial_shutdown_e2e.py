"""Adversarial review of "leave at once on SIGTERM" with real operator processes and
the real kopf: see tests/integration/test_adversarial_shutdown.py for the in-process
interleavings. ``test_defect_*`` FAIL on the code as reviewed."""

from __future__ import annotations

import signal
import subprocess
import uuid
from pathlib import Path

from tests.e2e.operator_env import OperatorProcess
from tests.faultproxy import FaultProxy

from etcdconfig.devenv.controlplane import ControlPlane
from etcdconfig.devenv.etcd import EtcdServer
from etcdconfig.etcd import EtcdClient, EtcdSettings


def _exit_code(op: OperatorProcess, timeout: float) -> int:
    assert op.proc is not None
    try:
        return op.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        op.kill()
        raise AssertionError(
            f"the operator did not exit within {timeout}s:\n{op.log_tail()}"
        ) from None


async def test_sigterm_leaves_membership_before_the_process_exits(
    control_plane: ControlPlane, store_etcd: EtcdServer, crd: Path, tmp_path: Path
) -> None:
    """Healthy etcd: SIGTERM removes the member key at once and the process exits 0."""
    prefix = f"/shutdown-{uuid.uuid4().hex[:8]}"
    op = OperatorProcess(
        plane=control_plane,
        etcd_endpoint=store_etcd.endpoint,
        prefix=prefix,
        workdir=tmp_path / "op",
        replica_id="leaver",
    )
    client = EtcdClient(EtcdSettings(endpoints=[store_etcd.endpoint]))
    await client.connect()
    op.start()
    try:
        op.wait_ready()
        key = f"{prefix}/members/leaver".encode()
        kv, _ = await client.get(key)
        assert kv is not None
        assert op.proc is not None
        op.proc.send_signal(signal.SIGTERM)
        rc = _exit_code(op, 30)
        assert rc == 0, op.log_tail()
        assert '"operator stopped"' in op.log_text()
        assert (await client.get(key))[0] is None
        assert await client.time_to_live(kv.lease) == -1  # revoked, not left to expire
    finally:
        op.stop()
        await client.close()


def test_defect_sigterm_with_etcd_partitioned_ends_in_cancelled_error(
    control_plane: ControlPlane, store_etcd: EtcdServer, crd: Path, tmp_path: Path
) -> None:
    """etcd unreachable at SIGTERM (a partition): ``runtime.stop()`` needs up to
    ``etcd_timeout`` for the member-key delete and again for the revoke (5 s + 5 s).
    The leave task was created by the signal handler, after ``kopf.operator()``
    started: kopf's ``run_tasks`` counts it as a "hung" task of the operator and
    cancels it 5 s into its shutdown; ``run()``'s ``finally`` then awaits a cancelled
    task and ends with CancelledError.

    Observed: a traceback, exit code 1, no "operator stopped", the HTTP runner and the
    clients never closed. Expected: exit code 0 after a clean stop (as before the
    change, when ``runtime.stop()`` ran after kopf had returned)."""
    host, port = store_etcd.endpoint.rsplit(":", 1)
    proxy = FaultProxy(host, int(port))
    op = OperatorProcess(
        plane=control_plane,
        etcd_endpoint=proxy.endpoint,
        prefix=f"/shutdown-{uuid.uuid4().hex[:8]}",
        workdir=tmp_path / "op",
        replica_id="partitioned",
    )
    op.start()
    try:
        op.wait_ready()
        proxy.blackhole()
        assert op.proc is not None
        op.proc.send_signal(signal.SIGTERM)
        rc = _exit_code(op, 60)
        log = op.log_text()
        assert rc == 0 and '"operator stopped"' in log, (
            f"exit code {rc}; CancelledError in the log: {'CancelledError' in log}\n"
            + op.log_tail(25)
        )
    finally:
        op.stop()
        proxy.heal()
        proxy.close()
