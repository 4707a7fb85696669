"""A 3-member etcd cluster loses its leader during a stream of commits."""

from __future__ import annotations

import asyncio

from tests.integration.helpers import assert_history_invariants, wait_for

from etcdconfig.concurrency import ConfigLocks, Session
from etcdconfig.devenv.etcd import EtcdServer
from etcdconfig.errors import EtcdConfigError
from etcdconfig.etcd import EtcdClient, EtcdSettings
from etcdconfig.store import ChangeRequest, VersionedStore


async def _leader(members: list[EtcdServer]) -> EtcdServer:
    for m in members:
        c = EtcdClient(EtcdSettings(endpoints=[m.endpoint], request_timeout=2))
        try:
            st = await c.status()
            if st["leader"] == st["member_id"]:
                return m
        except EtcdConfigError:
            pass
        finally:
            await c.close()
    raise AssertionError("no leader")


async def test_leader_killed_during_commits_loses_and_duplicates_nothing(
    etcd_cluster: list[EtcdServer],
) -> None:
    prefix = "/etcdconfig"
    client = EtcdClient(
        EtcdSettings(endpoints=[m.endpoint for m in etcd_cluster], request_timeout=2)
    )
    session = await Session(client, ttl=5).start()
    locks = ConfigLocks(session, prefix=prefix, identity="writer")
    store = VersionedStore(client, prefix=prefix, replica_id="writer")
    acknowledged: list[int] = []
    errors = 0
    total = 60

    async def writer() -> None:
        nonlocal errors
        for gen in range(1, total + 1):
            while True:  # like kopf: retry the same state until it is recorded
                try:
                    result = await store.record(
                        ChangeRequest(
                            namespace="ns",
                            name="cfg",
                            uid="u",
                            generation=gen,
                            data={"g": gen},
                            owner_confirmed=True,
                        ),
                        locks,
                    )
                    acknowledged.append(result.head.generation)
                    break
                except EtcdConfigError:
                    errors += 1
                    await asyncio.sleep(0.1)  # retry pacing
                    if not session.alive:
                        raise

    task = asyncio.create_task(writer())
    await wait_for(lambda: len(acknowledged) >= 15, 60, "15 commits before the kill")
    leader = await _leader(etcd_cluster)
    leader.kill()
    await asyncio.wait_for(task, 120)
    survivor = EtcdClient(
        EtcdSettings(endpoints=[m.endpoint for m in etcd_cluster if m is not leader])
    )
    gens = await assert_history_invariants(survivor, prefix, "ns", "cfg", final_generation=total)
    # every acknowledged generation is present exactly once
    assert gens == list(range(1, total + 1))
    assert acknowledged == list(range(1, total + 1))
    await session.close()
    await client.close()
    await survivor.close()
