"""Fault injection: 3 active replicas, a stream of updates to 20 Configs, and
faults (kills, pauses, etcd crashes and leader loss, partitions, lost gRPC
answers, delete/re-create/Purge churn). After each scenario the invariant
checker reads etcd directly: no version is lost, duplicated or corrupted, each
holds the data Kubernetes held at its (uid, generation), every write was made by
the lock owner of its moment, no lock key is left, every Config's status agrees
with its head, and every replica is ready with its background tasks up.

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
    Churner,
    Fleet,
    KubeAPI,
    Report,
    Writer,
    check_invariants,
    lock_holders,
    rand,
)
from tests.e2e.operator_env import wait_until
from tests.faultproxy import KINDS, MODES, FaultProxy

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
    checked = await check_invariants(api, endpoints, fleet.prefix, namespace, names, fleet=fleet)
    report = Report(
        scenario,
        iterations,
        len(names),
        checked.versions,
        writer.updates,
        checked.lost,
        checked.duplicated,
        {**extra, "writes": checked.audit.writes, "acks": api.ledger.acks},
    )
    report.print()
    assert (checked.lost, checked.duplicated) == (0, 0)
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
    proxies = [FaultProxy(host, int(port)) for _ in range(3)]
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
        for p in proxies:
            p.close()


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


async def test_r7_delete_recreate_purge_churn_replays_stale_copies_of_every_incarnation(
    control_plane: ControlPlane,
    namespace: str,
    store_etcd: EtcdServer,
    crd: Path,
    tmp_path: Path,
    prefix: str,
) -> None:
    """Names go through incarnations — create (deletionPolicy alternating Retain and
    Purge), two updates, delete, re-create as soon as the API server lets go of the
    name — while the replica holding a lock is frozen (SIGSTOP) past its lease TTL,
    again and again.

    How stale copies get replayed: a frozen replica keeps everything it had in hand.
    It is caught holding a Config's lock, so it is inside a reconcile of some body
    (from a watch event or from its resync listing; resync runs every 0.3 s over
    one Config at a time, so a round — a list of bodies read at its start — is
    nearly always in progress). While it is frozen its lease expires, another
    replica finalises the deletions (the deletion handler runs on every replica),
    and the names are re-created under new uids; the API server's watch events of
    each incarnation (ADDED, MODIFIED, DELETED with the finalizer) queue in its
    socket. On SIGCONT it carries on with the stale body under a lost lock, finishes
    the stale listing, and kopf replays the queued events, deletions of dead uids
    included, with both Retain and Purge bodies. ``stale_refused`` in the report
    counts the writes for dead incarnations the replicas refused.

    Invariants (from the write log: every write ever, purged ones included): nothing
    recorded for a uid after its deletion was recorded; a Purge removes only its own
    uid's versions (Retain history of other incarnations survives, all of it); at
    most one record per (uid, generation); every record written by the lock owner of
    that moment, with the data Kubernetes held; versions contiguous, head = newest.
    """
    rng = rand()
    fleet = Fleet(
        control_plane,
        [store_etcd.endpoint],
        prefix,
        tmp_path,
        ttl=TTL,
        resync=0.3,
        resync_concurrency=1,
    )
    fleet.start()
    api = KubeAPI(control_plane)
    names = [f"churn{i}" for i in range(6)]
    churner = Churner(api, namespace, names)
    churner.start()
    client = EtcdClient(EtcdSettings(endpoints=[store_etcd.endpoint]))
    paused = 0
    try:
        for _ in range(4 * SCALE):
            holders: list[str] = []
            deadline = time.monotonic() + 5
            while not holders and time.monotonic() < deadline:
                holders = await lock_holders(client, prefix)
                if not holders:
                    await asyncio.sleep(0.005)  # poll for a holder to freeze
            idx = fleet.index_of(rng.choice(holders)) if holders else rng.randrange(3)
            if idx is None:
                continue
            fleet.replicas[idx].pause()
            time.sleep(1.5 * TTL + 0.5)  # the fault: frozen past its lease TTL while churning
            fleet.replicas[idx].resume_if_paused()
            paused += 1
            time.sleep(0.5)  # the schedule: it catches up with its stale copies
        churner.stop()
        fleet.ensure_running()
        checked = await check_invariants(
            api, [store_etcd.endpoint], prefix, namespace, names, fleet=fleet
        )
        audit = checked.audit
        for inc in churner.gone:
            written = audit.written.get(inc.uid, [])
            if not written:
                continue  # deleted before any replica recorded it
            assert inc.uid in audit.tombstones, (
                f"{inc.name} {inc.uid} ({inc.policy}) is gone but its deletion was not recorded"
            )
            assert audit.purged.get(inc.uid) == (inc.policy == "Purge"), inc
            kept = [(cfg, v) for cfg, v in written if audit.live.get(cfg, {}).get(v) == inc.uid]
            if inc.policy == "Retain":
                assert kept == written, f"{inc.name} {inc.uid} (Retain) lost history: {written}"
            else:
                assert kept == [], f"{inc.name} {inc.uid} (Purge) left history: {kept}"
        stale = fleet.metric("etcdconfig_commit_conflicts_total", '{kind="stale_incarnation"}')
        report = Report(
            "R7",
            paused,
            len(names),
            checked.versions,
            api.ledger.acks,
            checked.lost,
            checked.duplicated,
            {
                "incarnations": len(churner.incarnations),
                "deletes": churner.deletes,
                "writes": audit.writes,
                "tombstones": len(audit.tombstones),
                "purged": sum(audit.purged.values()),
                "stale_refused": int(stale),
                **({"odd_answers": dict(churner.odd)} if churner.odd else {}),
            },
        )
        report.print()
        assert (checked.lost, checked.duplicated) == (0, 0)
        assert len(churner.incarnations) >= 2 * len(names), "the churn did not churn"
    finally:
        await client.close()
        churner.halt()
        fleet.stop()


async def test_r8_lost_grpc_answers_of_every_call_kind_under_load(
    control_plane: ControlPlane,
    namespace: str,
    store_etcd: EtcdServer,
    crd: Path,
    tmp_path: Path,
    prefix: str,
) -> None:
    """Each replica reaches etcd through a fault proxy that understands etcd's gRPC
    calls. Round after round, one replica's proxy loses the answers of one call
    kind (lock acquire, commit, release, tombstone, keep-alive) — the request
    reaches etcd, the answer never comes back (connection reset, or silence past the
    deadline), or the request itself is lost — while updates stream in and a few
    Configs are deleted and re-created. Nothing may leak (a lock key on a live lease
    would stall its Config for good), be lost, doubled, or written without the lock."""
    rng = rand()
    host, port = store_etcd.endpoint.split(":")
    proxies = [FaultProxy(host, int(port), prefix=prefix) for _ in range(3)]
    fleet = Fleet(control_plane, [p.endpoint for p in proxies], prefix, tmp_path, ttl=3)
    writer: Writer | None = None
    churner: Churner | None = None
    fired: dict[str, int] = {}
    rounds = 2 * SCALE
    try:
        fleet.start()
        api, names = _setup(control_plane, namespace, n=8)
        writer = Writer(api, namespace, names, interval=0.01)
        writer.start()
        churner = Churner(api, namespace, ["gone0", "gone1"], updates=1)
        churner.start()
        for i in range(rounds):
            for k, kind in enumerate(KINDS):
                proxy = proxies[(i + k) % 3]
                # timeout: silent past the operator's 5 s etcd deadline
                proxy.arm(kind, times=2, mode=rng.choice(MODES[:3]), hold=5.5)
                deadline = time.monotonic() + 3
                while proxy.armed_left and time.monotonic() < deadline:
                    time.sleep(0.05)  # the schedule: let the fault meet its calls
                proxy.disarm()
        for p in proxies:
            for f in p.fired:
                fired[f"{f.kind}/{f.mode}"] = fired.get(f"{f.kind}/{f.mode}", 0) + 1
        churner.stop()
        await _finish(
            "R8",
            fleet,
            writer,
            api,
            [store_etcd.endpoint],
            namespace,
            [*names, *churner.names],
            rounds,
            faults=sum(fired.values()),
            kinds=len({k.split("/")[0] for k in fired}),
        )
        print(f"[chaos R8] faults fired: {dict(sorted(fired.items()))}")
        assert {k.split("/")[0] for k in fired} >= {"acquire", "commit", "keepalive"}, fired
    finally:
        if writer is not None:
            writer.stop()
        if churner is not None:
            churner.halt()
        for p in proxies:
            p.disarm()
        fleet.stop()
        for p in proxies:
            p.close()
