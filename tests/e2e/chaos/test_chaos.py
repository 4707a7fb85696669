"""Fault injection: 3 active replicas, a stream of updates to 20 Configs, and
faults (kills, pauses, etcd crashes and leader loss, partitions). After each
scenario the invariant checker reads etcd directly: no version is lost,
duplicated or corrupted, and every Config's status agrees with its head.

Sleeps here are the *timing of the faults* (the scenario), never a way to wait
for an outcome: outcomes are awaited with deadlines (``wait_until``).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from tests.e2e.chaos.harness import (
    Fleet,
    KubeAPI,
    Report,
    TcpProxy,
    Writer,
    check_invariants,
    lock_holders,
    rand,
)
from tests.e2e.operator_env import wait_until

from etcdconfig.devenv.controlplane import ControlPlane
from etcdconfig.devenv.etcd import EtcdServer, start_cluster
from etcdconfig.etcd import EtcdClient, EtcdSettings

CONFIGS = 20
TTL = 2
# `make soak` multiplies every scenario's iterations (CI runs them once)
SCALE = max(1, int(os.environ.get("ETCDCONFIG_CHAOS_SCALE", "1")))


def _setup(plane: ControlPlane, namespace: str, n: int = CONFIGS) -> tuple[KubeAPI, list[str]]:
    api = KubeAPI(plane)
    names = [f"c{i:02d}" for i in range(n)]
    for name in names:
        api.create_config(namespace, name, {"n": -1})
    return api, names


async def _finish(
    scenario: str,
    fleet: Fleet,
    writer: Writer,
    api: KubeAPI,
    endpoints: list[str],
    namespace: str,
    names: list[str],
    iterations: int,
    **extra: Any,
) -> Report:
    writer.stop()
    fleet.ensure_running()
    versions, lost, dup = await check_invariants(api, endpoints, fleet.prefix, namespace, names)
    report = Report(scenario, iterations, len(names), versions, writer.updates, lost, dup, extra)
    report.print()
    assert (lost, dup) == (0, 0)
    return report


@pytest.fixture
def prefix() -> str:
    return f"/chaos-{uuid.uuid4().hex[:8]}"


async def test_r1_sigkill_random_replicas_50_times(
    control_plane: ControlPlane,
    namespace: str,
    store_etcd: EtcdServer,
    crd: Path,
    tmp_path: Path,
    prefix: str,
) -> None:
    rng = rand()
    fleet = Fleet(control_plane, [store_etcd.endpoint], prefix, tmp_path)
    fleet.start()
    api, names = _setup(control_plane, namespace)
    writer = Writer(api, namespace, names)
    writer.start()
    try:
        for _ in range(50 * SCALE):
            fleet.kill_and_restart(rng.randrange(3))
            time.sleep(rng.uniform(0.1, 0.6))  # the fault schedule
        await _finish(
            "R1",
            fleet,
            writer,
            api,
            [store_etcd.endpoint],
            namespace,
            names,
            50,
            restarts=fleet.restarts,
        )
    finally:
        writer.stop()
        fleet.stop()


async def test_r2_pause_the_lock_holder_past_its_ttl_20_times(
    control_plane: ControlPlane,
    namespace: str,
    store_etcd: EtcdServer,
    crd: Path,
    tmp_path: Path,
    prefix: str,
) -> None:
    fleet = Fleet(control_plane, [store_etcd.endpoint], prefix, tmp_path, ttl=TTL)
    fleet.start()
    api, names = _setup(control_plane, namespace)
    writer = Writer(api, namespace, names, interval=0.0)
    writer.start()
    client = EtcdClient(EtcdSettings(endpoints=[store_etcd.endpoint]))
    paused = 0
    try:
        for _ in range(20 * SCALE):
            holder: list[str] = []
            deadline = time.monotonic() + 10
            while not holder and time.monotonic() < deadline:
                holder = await lock_holders(client, prefix)
                if not holder:
                    await asyncio.sleep(0.005)  # poll for a holder to freeze
            idx = fleet.index_of(holder[0]) if holder else None
            if idx is None:
                continue
            fleet.replicas[idx].pause()
            time.sleep(1.5 * TTL)  # the fault: frozen past its lease TTL
            fleet.replicas[idx].resume_if_paused()
            paused += 1
        assert paused >= 15 * SCALE, f"only {paused} lock holders could be caught"
        await _finish("R2", fleet, writer, api, [store_etcd.endpoint], namespace, names, paused)
    finally:
        await client.close()
        writer.stop()
        fleet.stop()


async def test_r3_sigkill_etcd_under_load_10_times(
    control_plane: ControlPlane, namespace: str, crd: Path, tmp_path: Path, prefix: str
) -> None:
    etcd = EtcdServer(data_dir=tmp_path / "etcd" / "data", name="chaos-single")
    etcd.start()
    etcd.wait_healthy(30)
    fleet = Fleet(control_plane, [etcd.endpoint], prefix, tmp_path)
    try:
        fleet.start()
        api, names = _setup(control_plane, namespace)
        writer = Writer(api, namespace, names)
        writer.start()
        for _ in range(10 * SCALE):
            time.sleep(0.8)  # let commits flow
            etcd.kill()
            time.sleep(0.3)  # the outage
            etcd.start()
            etcd.wait_healthy(30)
        await _finish("R3", fleet, writer, api, [etcd.endpoint], namespace, names, 10)
    finally:
        fleet.stop()
        etcd.stop()


async def test_r4_kill_or_pause_the_etcd_leader_10_times(
    control_plane: ControlPlane, namespace: str, crd: Path, tmp_path: Path, prefix: str
) -> None:
    members = start_cluster(tmp_path / "cluster", 3)
    endpoints = [m.endpoint for m in members]
    fleet = Fleet(control_plane, [",".join(endpoints)], prefix, tmp_path)
    try:
        fleet.start()
        api, names = _setup(control_plane, namespace)
        writer = Writer(api, namespace, names)
        writer.start()
        for i in range(10 * SCALE):
            time.sleep(0.8)  # let commits flow
            leader = await _leader(members)
            if i % 2 == 0:
                leader.kill()
                time.sleep(1.0)  # the outage
                leader.start()
            else:
                leader.pause()
                time.sleep(1.5)  # the outage
                leader.resume()
            wait_until(lambda: _all_healthy(members), 30, "the cluster to heal")
        await _finish("R4", fleet, writer, api, endpoints, namespace, names, 10)
    finally:
        fleet.stop()
        for m in members:
            m.resume()
            m.stop()


async def _leader(members: list[EtcdServer]) -> EtcdServer:
    for m in members:
        c = EtcdClient(EtcdSettings(endpoints=[m.endpoint], request_timeout=1))
        try:
            st = await c.status()
            if st["leader"] == st["member_id"]:
                return m
        except Exception:
            pass
        finally:
            await c.close()
    return members[0]


def _all_healthy(members: list[EtcdServer]) -> bool:
    try:
        for m in members:
            m.wait_healthy(0.5)
    except (TimeoutError, RuntimeError):
        return False
    return True


async def test_r5_partitioned_replica_writes_nothing_after_losing_its_lock(
    control_plane: ControlPlane,
    namespace: str,
    store_etcd: EtcdServer,
    crd: Path,
    tmp_path: Path,
    prefix: str,
) -> None:
    host, port = store_etcd.endpoint.split(":")
    proxies = [TcpProxy(host, int(port)) for _ in range(3)]
    fleet = Fleet(control_plane, [p.endpoint for p in proxies], prefix, tmp_path, ttl=TTL)
    try:
        fleet.start()
        api, names = _setup(control_plane, namespace)
        writer = Writer(api, namespace, names)
        writer.start()
        for i in range(3 * SCALE):
            proxies[i % 3].blackhole()
            time.sleep(TTL + 2.0)  # the partition, longer than the lease TTL
            proxies[i % 3].heal()
            time.sleep(1.0)  # let it rejoin before the next cut
        await _finish("R5", fleet, writer, api, [store_etcd.endpoint], namespace, names, 3)
    finally:
        for p in proxies:
            p.heal()
        fleet.stop()


async def test_r6_ten_updates_within_50ms_while_replicas_restart(
    control_plane: ControlPlane,
    namespace: str,
    store_etcd: EtcdServer,
    crd: Path,
    tmp_path: Path,
    prefix: str,
) -> None:
    fleet = Fleet(control_plane, [store_etcd.endpoint], prefix, tmp_path)
    fleet.start()
    api, names = _setup(control_plane, namespace, n=1)
    writer = Writer(api, namespace, names)  # not started: R6 writes its own bursts
    spans = []
    try:
        for round_ in range(3):
            down = [round_ % 3, (round_ + 1) % 3]
            for i in down:
                fleet.replicas[i].kill()
            gens, span = api.burst(namespace, names[0], [{"n": round_ * 10 + k} for k in range(10)])
            for i in down:  # they come back while the burst is being reconciled
                fleet.replicas[i].start()
                fleet.restarts += 1
            spans.append(round(span * 1000))
            acked = [g for g in gens if g is not None]
            writer.updates += len(acked)
            writer.acked[names[0]] = max([writer.acked.get(names[0], 0), *acked])
        await _finish(
            "R6", fleet, writer, api, [store_etcd.endpoint], namespace, names, 3, burst_ms=spans
        )
    finally:
        fleet.stop()
