"""Chaos harness: several operator replicas as processes, a writer that remembers
every generation the API server acknowledged, a TCP proxy that can cut a replica
off from etcd, and one invariant checker that reads etcd directly."""

from __future__ import annotations

import asyncio
import http.client
import json
import random
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.e2e.operator_env import OperatorProcess, wait_until

from etcdconfig.devenv.controlplane import ControlPlane
from etcdconfig.etcd import EtcdClient, EtcdSettings, prefix_end
from etcdconfig.store import VersionedStore

GROUP_PATH = "/apis/etcdconfig.io/v1alpha1"


class KubeAPI:
    """A small, thread-safe admin client for the API server (faster than kubectl)."""

    def __init__(self, plane: ControlPlane) -> None:
        self.host, port = plane.server.removeprefix("https://").split(":")
        self.port = int(port)
        ctx = ssl.create_default_context(cafile=str(plane.pki_dir / "ca.crt"))
        ctx.load_cert_chain(str(plane.pki_dir / "admin.crt"), str(plane.pki_dir / "admin.key"))
        self.ctx = ctx

    def request(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> tuple[int, Any]:
        conn = http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=15)
        try:
            payload = json.dumps(body) if body is not None else None
            conn.request(method, path, body=payload, headers={"Content-Type": content_type})
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, json.loads(data) if data else None
        finally:
            conn.close()

    def config_path(self, namespace: str, name: str = "") -> str:
        base = f"{GROUP_PATH}/namespaces/{namespace}/configs"
        return f"{base}/{name}" if name else base

    def create_config(self, namespace: str, name: str, data: dict[str, Any]) -> dict[str, Any]:
        status, obj = self.request(
            "POST",
            self.config_path(namespace),
            {
                "apiVersion": "etcdconfig.io/v1alpha1",
                "kind": "Config",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"data": data},
            },
        )
        assert status == 201, (status, obj)
        return dict(obj)

    def patch_data(self, namespace: str, name: str, data: dict[str, Any]) -> int | None:
        """Returns the acknowledged generation, or None if the API did not acknowledge."""
        try:
            status, obj = self.request(
                "PATCH",
                self.config_path(namespace, name),
                {"spec": {"data": data}},
                content_type="application/merge-patch+json",
            )
        except OSError:
            return None
        return int(obj["metadata"]["generation"]) if status == 200 else None

    def burst(
        self, namespace: str, name: str, datas: list[dict[str, Any]]
    ) -> tuple[list[int | None], float]:
        """Send one PATCH per item at once over pre-opened connections; returns the
        acknowledged generations and the time from the first send to the last answer."""
        conns = []
        for _ in datas:
            conn = http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=15)
            conn.connect()
            conns.append(conn)
        barrier = threading.Barrier(len(datas))
        gens: list[int | None] = [None] * len(datas)
        ends: list[float] = [0.0] * len(datas)

        def send(i: int) -> None:
            barrier.wait()
            conns[i].request(
                "PATCH",
                self.config_path(namespace, name),
                body=json.dumps({"spec": {"data": datas[i]}}),
                headers={"Content-Type": "application/merge-patch+json"},
            )
            resp = conns[i].getresponse()
            obj = json.loads(resp.read())
            ends[i] = time.monotonic()
            if resp.status == 200:
                gens[i] = int(obj["metadata"]["generation"])

        threads = [threading.Thread(target=send, args=(i,)) for i in range(len(datas))]
        for t in threads:
            t.start()
        started = time.monotonic()
        for t in threads:
            t.join(30)
        for c in conns:
            c.close()
        return gens, max(ends) - started

    def get_config(self, namespace: str, name: str) -> dict[str, Any]:
        status, obj = self.request("GET", self.config_path(namespace, name))
        assert status == 200, (status, obj)
        return dict(obj)


@dataclass
class Writer:
    """Applies a stream of updates to many Configs from a background thread."""

    api: KubeAPI
    namespace: str
    names: list[str]
    interval: float = 0.02
    acked: dict[str, int] = field(default_factory=dict)
    updates: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            name = self.names[i % len(self.names)]
            gen = self.api.patch_data(self.namespace, name, {"n": i, "pad": "x" * 64})
            if gen is not None:
                self.acked[name] = max(self.acked.get(name, 0), gen)
                self.updates += 1
            i += 1
            self._stop.wait(self.interval)  # pacing of the load, not synchronisation

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)


class Fleet:
    """``n`` operator replicas sharing one store prefix."""

    def __init__(
        self,
        plane: ControlPlane,
        endpoints: list[str],
        prefix: str,
        workdir: Path,
        n: int = 3,
        ttl: int = 2,
        resync: float = 2.0,
    ) -> None:
        self.plane = plane
        self.prefix = prefix
        self.replicas = [
            OperatorProcess(
                plane=plane,
                etcd_endpoint=endpoints[i % len(endpoints)],
                prefix=prefix,
                workdir=workdir,
                replica_id=f"replica-{i}",
                extra=(
                    "--lock-ttl",
                    str(ttl),
                    "--resync-interval",
                    str(resync),
                    "--acquire-timeout",
                    "10",
                ),
            )
            for i in range(n)
        ]
        self.restarts = 0

    def start(self) -> None:
        for r in self.replicas:
            r.start()
        for r in self.replicas:
            r.wait_ready(90)

    def alive(self, i: int) -> bool:
        p = self.replicas[i].proc
        return p is not None and p.poll() is None

    def kill_and_restart(self, i: int) -> None:
        self.replicas[i].kill()
        self.replicas[i].start()
        self.restarts += 1

    def ensure_running(self) -> None:
        for r in self.replicas:
            if r.proc is None or r.proc.poll() is not None:
                r.start()
        for r in self.replicas:
            r.wait_ready(90)

    def stop(self) -> None:
        for r in self.replicas:
            r.resume_if_paused()
            r.stop()

    def index_of(self, replica_id: str) -> int | None:
        for i, r in enumerate(self.replicas):
            if r.replica_id == replica_id:
                return i
        return None


class TcpProxy:
    """Forwards a local port to etcd; ``blackhole()`` stops every byte both ways
    (connections stay open, like a network partition), ``heal()`` resumes."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.open = threading.Event()
        self.open.set()
        self._loop = asyncio.new_event_loop()
        self._conns: set[asyncio.StreamWriter] = set()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), daemon=True)
        self._thread.start()
        ready.wait(10)

    def _serve(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while data := await reader.read(65536):
                    while not self.open.is_set():
                        await asyncio.sleep(0.05)  # partitioned: hold the bytes
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                writer.close()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                up_r, up_w = await asyncio.open_connection(*self.target)
            except OSError:
                writer.close()
                return
            self._conns.update((writer, up_w))
            await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))

        async def main() -> None:
            server = await asyncio.start_server(handle, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
            ready.set()
            async with server:
                await server.serve_forever()

        self._loop.run_until_complete(main())

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def blackhole(self) -> None:
        self.open.clear()

    def heal(self) -> None:
        self.open.set()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def lock_holders(client: EtcdClient, prefix: str) -> list[str]:
    """Replica ids currently holding some Config lock (the oldest key per Config)."""
    base = f"{prefix}/locks/configs/".encode()
    res = await client.range(base, prefix_end(base), sort_by_create=True)
    seen: dict[str, str] = {}
    for kv in res.kvs:
        cfg = "/".join(kv.key[len(base) :].decode().split("/")[:2])
        seen.setdefault(cfg, kv.value.decode())
    return list(seen.values())


@dataclass
class Report:
    scenario: str
    iterations: int
    configs: int
    versions: int
    updates: int
    lost: int = 0
    duplicated: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def print(self) -> None:
        fields = " ".join(f"{k}={v}" for k, v in self.extra.items())
        print(
            f"\n[chaos {self.scenario}] iterations={self.iterations} configs={self.configs} "
            f"updates_acked={self.updates} versions={self.versions} lost={self.lost} "
            f"duplicated={self.duplicated} {fields}"
        )


async def check_invariants(
    api: KubeAPI,
    endpoints: list[str],
    prefix: str,
    namespace: str,
    names: list[str],
    *,
    timeout: float = 120.0,
) -> tuple[int, int, int]:
    """For each Config: converged (status observed the final generation), versions
    1..N gapless, no (uid, generation) twice, generations and fencing revisions
    strictly increasing, the final generation recorded, head = last version,
    checksum chain intact, status agrees with head. Returns (versions, lost, duplicated)."""
    from tests.integration.helpers import assert_history_invariants

    def converged() -> bool:
        for name in names:
            obj = api.get_config(namespace, name)
            st = obj.get("status") or {}
            if (
                st.get("observedGeneration") != obj["metadata"]["generation"]
                or st.get("version") is None
            ):
                return False
            ready = [c for c in st.get("conditions") or [] if c["type"] == "Ready"]
            if not ready or ready[0]["status"] != "True":
                return False
        return True

    wait_until(converged, timeout, "every Config to converge", interval=0.5)
    client = EtcdClient(EtcdSettings(endpoints=endpoints))
    store = VersionedStore(client, prefix=prefix)
    total = lost = duplicated = 0
    try:
        for name in names:
            obj = api.get_config(namespace, name)
            final = int(obj["metadata"]["generation"])
            records, _ = await store.history(namespace, name, limit=100000)
            pairs = [(r.uid, r.generation) for r in records]
            duplicated += len(pairs) - len(set(pairs))
            lost += 0 if any(r.generation == final for r in records) else 1
            await assert_history_invariants(client, prefix, namespace, name, final_generation=final)
            fencing = [r.fencing_revision for r in reversed(records)]
            assert fencing == sorted(set(fencing)), (
                f"{name}: a write was not fenced in order: {fencing}"
            )
            head = await store.head(namespace, name)
            assert head is not None
            assert obj["status"]["version"] == head.version
            assert obj["status"]["checksum"] == head.checksum
            total += len(records)
    finally:
        await client.close()
    return total, lost, duplicated


def rand() -> random.Random:
    seed = int(time.time())
    print(f"[chaos] random seed {seed}")
    return random.Random(seed)
