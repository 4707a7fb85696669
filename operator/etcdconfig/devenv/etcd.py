"""Run real etcd servers as local processes on loopback (tests, demos, benchmarks)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from etcdconfig.devenv.build import ensure_etcd

if TYPE_CHECKING:
    from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class EtcdServer:
    """One etcd member. ``initial_cluster`` lists every member as ``name=peerURL``."""

    data_dir: Path
    name: str = "default"
    client_port: int = field(default_factory=free_port)
    peer_port: int = field(default_factory=free_port)
    initial_cluster: str = ""
    extra_args: tuple[str, ...] = ()
    scheme: str = "http"
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"{self.name}.log"

    def command(self) -> list[str]:
        etcd, _ = ensure_etcd()
        cluster = self.initial_cluster or f"{self.name}={self.peer_url}"
        return [
            str(etcd),
            f"--name={self.name}",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.client_url}",
            f"--advertise-client-urls={self.client_url}",
            f"--listen-peer-urls={self.peer_url}",
            f"--initial-advertise-peer-urls={self.peer_url}",
            f"--initial-cluster={cluster}",
            "--initial-cluster-token=etcdconfig-test",
            "--initial-cluster-state=new",
            "--log-level=warn",
            # unit tests of the lock use short leases; keep elections brisk on loopback
            "--heartbeat-interval=50",
            "--election-timeout=500",
            # as the chart's bundled etcd: old revisions of overwritten keys (the head,
            # locks, status) are compacted away hourly; a version is a key of its own, so
            # compaction never removes a retained version (docs/operations.md)
            "--auto-compaction-mode=periodic",
            "--auto-compaction-retention=1h",
            *self.extra_args,
        ]

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env},
            start_new_session=True,
        )
        log.close()

    def wait_healthy(self, timeout: float = 30.0, *, health_url: str | None = None) -> None:
        """Wait until ``/health`` answers ok (a member that can serve reads)."""
        deadline = time.monotonic() + timeout
        url = health_url or f"http://127.0.0.1:{self.client_port}/health"
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"etcd {self.name} exited with {self.proc.returncode}; log: {self.log_path}"
                )
            try:
                with urllib.request.urlopen(url, timeout=1) as resp:
                    body = resp.read().decode()
                    if '"health":"true"' in body:
                        return
                    last = body
            except (urllib.error.URLError, OSError) as exc:
                last = str(exc)
            time.sleep(0.05)  # poll interval of a deadline-bounded wait, not synchronisation
        raise TimeoutError(
            f"etcd {self.name} not healthy after {timeout}s ({last}); log: {self.log_path}"
        )

    def _signal(self, sig: signal.Signals) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL: the member dies without any clean-up."""
        self._signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=10)

    def pause(self) -> None:
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self._signal(signal.SIGCONT)
            self._signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        with contextlib.suppress(Exception):
            self.proc.wait(timeout=1)

    def restart(self) -> None:
        """Start again on the same data dir and ports (after kill/stop)."""
        self.extra_args = tuple(
            a for a in self.extra_args if not a.startswith("--initial-cluster-state")
        )
        self.start()


def start_cluster(base: Path, size: int = 3, timeout: float = 30.0) -> list[EtcdServer]:
    """Start ``size`` members forming one cluster on loopback and wait for all to be healthy."""
    members = [EtcdServer(data_dir=base / f"m{i}" / "data", name=f"m{i}") for i in range(size)]
    cluster = ",".join(f"{m.name}={m.peer_url}" for m in members)
    for m in members:
        m.initial_cluster = cluster
        m.start()
    for m in members:
        m.wait_healthy(timeout)
    return members
