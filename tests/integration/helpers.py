"""Helpers shared by integration tests: subprocess holders and invariant checks."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from etcdconfig.etcd import EtcdClient
from etcdconfig.store import ChangeRequest, VersionedStore

HOLDER = Path(__file__).with_name("holder.py")
ROOT = Path(__file__).resolve().parents[2]


class Holder:
    """A lock holder in a subprocess (see holder.py)."""

    def __init__(
        self, endpoint: str, prefix: str, ns: str, name: str, ttl: int, *, unfenced: bool = False
    ) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT / "operator")}
        if unfenced:
            env["ETCDCONFIG_TEST_UNFENCED"] = "1"
        self.proc = subprocess.Popen(
            [sys.executable, str(HOLDER), endpoint, prefix, ns, name, str(ttl)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )

    def read_line(self, starts: str, timeout: float = 30.0) -> str:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"holder exited ({self.proc.poll()}) before printing {starts}")
            if line.startswith(starts):
                return line.strip()
        raise AssertionError(f"holder did not print {starts} within {timeout}s")

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def signal(self, sig: signal.Signals) -> None:
        os.kill(self.proc.pid, sig)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


async def wait_for(
    predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.05
) -> None:
    """Poll an async or sync predicate until true, or fail after ``timeout`` seconds."""
    import asyncio
    import inspect

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def assert_history_invariants(
    client: EtcdClient, prefix: str, ns: str, name: str, *, final_generation: int | None = None
) -> list[int]:
    """Versions 1..N gapless, no (uid, generation) twice, generations strictly
    increasing per uid, head = last, chain intact. Returns the recorded generations."""
    store = VersionedStore(client, prefix=prefix)
    records, cursor = await store.history(ns, name, limit=100000)
    assert cursor is None
    records.reverse()
    versions = [r.version for r in records]
    assert versions == list(range(1, len(records) + 1)), f"gap or disorder: {versions}"
    pairs = [(r.uid, r.generation) for r in records]
    assert len(set(pairs)) == len(pairs), f"duplicate (uid, generation): {pairs}"
    gens = [r.generation for r in records]
    for a, b in itertools.pairwise(records):
        if a.uid == b.uid:
            assert b.generation > a.generation, f"generations not increasing: {gens}"
    head = await store.head(ns, name)
    assert head is not None
    assert head.version == len(records)
    assert await store.verify(ns, name) == []
    if final_generation is not None:
        assert head.generation == final_generation
    return gens


def change(
    gen: int,
    uid: str = "u1",
    *,
    confirmed: bool = True,
    namespace: str = "prod",
    name: str = "payments",
    **kw: Any,
) -> ChangeRequest:
    """A change of prod/payments at generation ``gen`` by ``uid``; ``confirmed``: the
    test plays the API server and says the uid owns the name."""
    return ChangeRequest(
        namespace=namespace,
        name=name,
        uid=uid,
        generation=gen,
        data=kw.pop("data", {"gen": gen, "uid": uid}),
        owner_confirmed=confirmed,
        **kw,
    )


def admin_cli(endpoint: str, prefix: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``etcdconfig ARGS`` on the admin path (straight to etcd at ``endpoint`` under
    ``prefix``), plain output and a wide terminal: what a test parses."""
    return subprocess.run(
        [str(Path(sys.executable).parent / "etcdconfig"), *args],
        env={
            **os.environ,
            "ETCDCONFIG_ETCD_ENDPOINTS": endpoint,
            "ETCDCONFIG_ETCD_PREFIX": prefix,
            "NO_COLOR": "1",
            "COLUMNS": "250",
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
