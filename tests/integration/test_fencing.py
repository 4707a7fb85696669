"""A holder paused past its TTL must not write: the fencing compare refuses it.

The scenario: a holder process takes the lock, is frozen with SIGSTOP, its lease
expires, a successor takes the lock, the holder is resumed and commits. With
the fencing compare the commit is refused and nothing is written. The second
test runs the same scenario against a deliberately broken store whose commit
lacks the fencing compare, and shows that it then writes a stale version while
the successor holds the lock — so the first test is able to fail.
"""

from __future__ import annotations

import signal

from tests.integration.helpers import Holder, wait_for

from etcdconfig.concurrency import Mutex, Session
from etcdconfig.concurrency.locks import lock_prefix
from etcdconfig.devenv.etcd import EtcdServer
from etcdconfig.etcd import EtcdClient
from etcdconfig.store import ChangeRequest, VersionedStore

TTL = 2


async def _paused_holder_commits(
    etcd_server: EtcdServer, client: EtcdClient, prefix: str, *, unfenced: bool
) -> tuple[str, VersionedStore]:
    store = VersionedStore(client, prefix=prefix, replica_id="successor")
    async with Session(client, ttl=10) as session:
        successor = Mutex(session, lock_prefix(prefix, "ns", "cfg"), identity="successor")
        # version 1 exists, written properly
        await successor.acquire(5)
        await store.commit(
            ChangeRequest(
                namespace="ns",
                name="cfg",
                uid="u",
                generation=1,
                data={"v": 1},
                owner_confirmed=True,
            ),
            successor,
        )
        holder = Holder(etcd_server.endpoint, prefix, "ns", "cfg", TTL, unfenced=unfenced)
        try:
            holder_rev = int(holder.read_line("LOCKED").split()[1])
            holder.signal(signal.SIGSTOP)
            # the holder's key disappears when its lease expires
            lock_key_prefix = lock_prefix(prefix, "ns", "cfg").encode() + b"/"

            async def holder_key_gone() -> bool:
                res = await client.range(lock_key_prefix, lock_key_prefix + b"\xff")
                return all(kv.create_revision != holder_rev for kv in res.kvs)

            await wait_for(holder_key_gone, TTL + 5, "the paused holder's lease to expire")
            await successor.acquire(5)  # the successor holds the lock now
            holder.signal(signal.SIGCONT)
            holder.send("COMMIT u 2")
            outcome = holder.read_line("RESULT")
            await successor.release()
        finally:
            holder.close()
    return outcome, store


async def test_paused_holder_commit_is_rejected_and_writes_nothing(
    etcd_server: EtcdServer, client: EtcdClient, prefix: str
) -> None:
    outcome, store = await _paused_holder_commits(etcd_server, client, prefix, unfenced=False)
    assert outcome.startswith("RESULT LockLost: ns/cfg: the lock was lost before the commit")
    head = await store.head("ns", "cfg")
    assert head is not None and (head.version, head.generation) == (1, 1)
    records, _ = await store.history("ns", "cfg")
    assert [r.version for r in records] == [1]


async def test_without_the_fencing_compare_the_same_scenario_writes_a_stale_version(
    etcd_server: EtcdServer, client: EtcdClient, prefix: str
) -> None:
    outcome, store = await _paused_holder_commits(etcd_server, client, prefix, unfenced=True)
    # the broken variant accepts a write from a process that no longer holds the lock
    assert outcome == "RESULT recorded=True version=2"
    stale = await store.get_version("ns", "cfg", 2)
    assert stale.data == {"from": "holder"}
