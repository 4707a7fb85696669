"""The rollout records beside the history (docs/rollouts.md), on a real etcd: what
``etcdconfig history`` shows of them, and that they go with the versions they describe
(retention below ``maxVersions``, a Purge) and stay with the ones kept (Retain)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from tests.integration.helpers import admin_cli
from tests.integration.test_store import change

from etcdconfig.concurrency import ConfigLocks, Session
from etcdconfig.devenv.etcd import EtcdServer
from etcdconfig.etcd import EtcdClient
from etcdconfig.rollout import Outcome
from etcdconfig.store import VersionedStore

BIN = Path(sys.executable).parent


@pytest.fixture
async def env(client: EtcdClient, prefix: str) -> Any:
    session = await Session(client, ttl=10).start()
    locks = ConfigLocks(session, prefix=prefix, identity="test")
    store = VersionedStore(client, prefix=prefix, replica_id="test-replica")
    yield store, locks
    await session.close()


async def put_outcome(
    store: VersionedStore, uid: str, version: int, state: str, **extra: Any
) -> dict[str, Any]:
    """A rollout record as the operator writes it (controller/rollouts.py)."""
    record = {
        "config": "prod/payments",
        "uid": uid,
        "version": version,
        "targets": ["Deployment/api"],
        "startedAt": f"2026-12-07T10:00:{version:02d}.000+00:00",
        "startedBy": "r1",
        "state": state,
        **extra,
    }
    key = store.keys.rollout("prod", "payments", uid, version)
    await store.client.put(key, json.dumps(record, sort_keys=True).encode())
    return record


async def stored(store: VersionedStore) -> list[tuple[str, int]]:
    return [(o.uid, o.version) for o in await store.rollouts("prod", "payments")]


async def test_retention_removes_the_rollout_records_of_the_versions_it_prunes(
    env: Any,
) -> None:
    store, locks = env
    for g in range(1, 4):
        await store.record(change(g, max_versions=3), locks)
        await put_outcome(store, "uid-1", g, "Succeeded")
    assert await stored(store) == [("uid-1", 1), ("uid-1", 2), ("uid-1", 3)]
    await store.record(change(4, max_versions=2), locks)  # keeps 3 and 4
    assert await stored(store) == [("uid-1", 3)]
    records, _ = await store.history("prod", "payments", limit=100)
    assert [r.version for r in records] == [4, 3]


async def test_purge_removes_the_uids_rollout_records_and_retain_keeps_them(env: Any) -> None:
    store, locks = env
    await store.record(change(1), locks)
    await put_outcome(store, "uid-1", 1, "Succeeded")
    async with locks.hold("prod", "payments") as mutex:
        await store.delete("prod", "payments", "uid-1", mutex, purge=False)
    assert await stored(store) == [("uid-1", 1)]  # Retain: the history and its outcomes
    await store.record(change(1, uid="uid-2"), locks)
    await put_outcome(store, "uid-2", 2, "RolledBack", rolledBackTo=1, reason="bad")
    async with locks.hold("prod", "payments") as mutex:
        await store.delete("prod", "payments", "uid-2", mutex, purge=True)
    # Purge of uid-2: its version 2 and its rollout record go; uid-1's stay
    assert await stored(store) == [("uid-1", 1)]
    records, _ = await store.history("prod", "payments", limit=100)
    assert [r.version for r in records] == [1]


def history_cli(etcd: EtcdServer, prefix: str, *args: str) -> str:
    proc = admin_cli(etcd.endpoint, prefix, "history", "prod/payments", *args)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


async def test_history_shows_each_versions_rollout(
    env: Any, etcd_server: EtcdServer, prefix: str
) -> None:
    store, locks = env
    # no rollout record: no ROLLOUT column, an empty list in JSON
    await store.record(change(1), locks)
    assert "ROLLOUT" not in history_cli(etcd_server, prefix).splitlines()[0]
    assert json.loads(history_cli(etcd_server, prefix, "-o", "json"))["rollouts"] == []

    await put_outcome(store, "uid-1", 1, "Succeeded", endedAt="2026-12-07T10:01:00.000+00:00")
    await store.record(change(2), locks)
    bad = await put_outcome(
        store, "uid-1", 2, "RolledBack", rolledBackTo=1,
        reason="version 2 failed: Deployment/api: pod api-1: CrashLoopBackOff",
        endedAt="2026-12-07T10:02:00.000+00:00",
    )  # fmt: skip
    await store.record(change(3), locks)  # recorded, not rolled out (yet)
    await put_outcome(store, "uid-1", 9, "Succeeded")  # a version not on this page
    await store.client.put(store.keys.rollout("prod", "payments", "uid-1", 8), b"{not json")

    lines = history_cli(etcd_server, prefix).splitlines()
    header = lines[0].split()
    assert header == [
        "VERSION", "GENERATION", "CHECKSUM", "RECORDED", "AUTHOR", "ORIGIN", "CAUSE", "ROLLOUT",
    ]  # fmt: skip
    rows = {line.split()[0]: line for line in lines[1:]}
    assert rows["3"].rstrip().endswith("apply")  # no rollout: an empty cell
    assert rows["2"].rstrip().endswith("RolledBack to v1")
    assert rows["1"].rstrip().endswith("Succeeded")

    doc = json.loads(history_cli(etcd_server, prefix, "-o", "json"))
    assert doc["rollouts"] == [
        {
            "version": 2,
            "uid": "uid-1",
            "state": "RolledBack",
            "targets": ["Deployment/api"],
            "startedAt": bad["startedAt"],
            "endedAt": "2026-12-07T10:02:00.000+00:00",
            "reason": bad["reason"],
            "rolledBackTo": 1,
        },
        {
            "version": 1,
            "uid": "uid-1",
            "state": "Succeeded",
            "targets": ["Deployment/api"],
            "startedAt": "2026-12-07T10:00:01.000+00:00",
            "endedAt": "2026-12-07T10:01:00.000+00:00",
        },
    ]
    # a page holds the outcomes of its own versions only
    page = json.loads(history_cli(etcd_server, prefix, "-o", "json", "--limit", "1"))
    assert [v["version"] for v in page["versions"]] == [3]
    assert page["rollouts"] == []


def test_an_outcome_that_is_not_a_rollout_record_is_skipped() -> None:
    assert Outcome.parse(b"{not json") is None
    assert Outcome.parse(b"[]") is None
    assert Outcome.parse(b'{"version": "2", "uid": "u", "state": "Succeeded"}') is None
    assert Outcome.parse(b'{"version": 2, "uid": "u", "state": "Done"}') is None
    ok = Outcome.parse(b'{"version": 2, "uid": "u", "state": "Superseded"}')
    assert ok is not None and ok.label() == "Superseded" and ok.targets == ()
