"""A lock holder in its own process, for kill/pause tests.

Usage: python holder.py ENDPOINT PREFIX NS NAME TTL
Prints ``LOCKED <revision>`` once it holds the lock, then waits for a line on
stdin: ``COMMIT <uid> <generation>`` commits under the lock and prints
``RESULT <outcome>``. With ETCDCONFIG_TEST_UNFENCED=1 it uses a deliberately
broken store whose commit lacks the fencing compare (to show tests can fail).
"""

from __future__ import annotations

import asyncio
import os
import sys

from etcdconfig.concurrency import Mutex, Session
from etcdconfig.concurrency.locks import lock_prefix
from etcdconfig.errors import EtcdConfigError
from etcdconfig.etcd import Compare, EtcdClient, EtcdSettings
from etcdconfig.store import ChangeRequest, VersionedStore


class UnfencedStore(VersionedStore):
    """BROKEN ON PURPOSE: commits without checking that the lock is still held."""

    def fencing_compares(self, mutex: Mutex) -> list[Compare]:
        return []


async def main() -> None:
    endpoint, prefix, ns, name, ttl = sys.argv[1:6]
    client = EtcdClient(EtcdSettings(endpoints=[endpoint]))
    session = await Session(client, ttl=int(ttl)).start()
    mutex = Mutex(session, lock_prefix(prefix, ns, name), identity=f"holder-{os.getpid()}")
    await mutex.acquire(30)
    print(f"LOCKED {mutex.revision}", flush=True)
    cls = UnfencedStore if os.environ.get("ETCDCONFIG_TEST_UNFENCED") == "1" else VersionedStore
    store = cls(client, prefix=prefix, replica_id=f"holder-{os.getpid()}")
    loop = asyncio.get_running_loop()
    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
        if not line:
            return
        cmd, *args = line.split()
        if cmd == "COMMIT":
            change = ChangeRequest(
                namespace=ns,
                name=name,
                uid=args[0],
                generation=int(args[1]),
                data={"from": "holder"},
                owner_confirmed=True,
            )
            try:
                result = await store.commit(change, mutex)
                print(f"RESULT recorded={result.recorded} version={result.version}", flush=True)
            except EtcdConfigError as exc:
                print(f"RESULT {type(exc).__name__}: {exc}", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
