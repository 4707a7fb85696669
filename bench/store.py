#!/usr/bin/env python3
"""Store benchmark: the versioned store's commit path against raw etcd baselines.

Every figure is a ratio to a baseline measured in the same run, against the
same etcd, with the same ``EtcdClient`` (one gRPC channel, one event loop), and
interleaved with the subject (alternate operations for latency, alternate
rounds for throughput and contention) so that the noise of a small shared
machine lands on both sides alike.

What is measured, and against what
----------------------------------
commit latency, p50 and p99 (``commit_p50_vs_two_write``, ``commit_p99_vs_two_write``)
    subject: ``VersionedStore.record(change, locks)``, the whole path of
    DESIGN §4 on a Config that already has history: the in-process lock, the
    etcd ``Mutex`` (lock-key transaction, predecessor range, own-key check),
    the head read, schema validation, building and hashing the canonical
    record, the fenced commit transaction (version + head + lock release +
    pruning beyond 100 versions) and the read-back check.
    baseline: the two etcd writes a commit cannot do without, nothing else, on
    the same client and the same session lease, with the same bytes: a put of
    the lock key on the lease, then a transaction with the commit's three
    compares (lock key's create revision, head's mod revision, version key
    absent) and the commit's operations (put the version record, put the head,
    delete the lock key, prune beyond 100 versions). The record and head
    bytes are those of a real record, prepared once. The ratio is therefore
    the price of everything the store adds to the two unavoidable writes: its
    reads, validation, canonical JSON and hashing, and lock bookkeeping.
    Percentiles are nearest-rank over the pooled samples of each side (with
    the default 500 samples, p99 is the 5th slowest). The same ratios are
    also under their earlier keys ``commit_p50_ratio``/``commit_p99_ratio``.

etcd writes per recorded version (steady state)
    Counted, not assumed: a counting subclass of ``EtcdClient`` counts the
    requests that etcd runs through raft as writes (put, delete, a transaction
    with a put or delete in either branch, lease grant and revoke) during N
    sequential commits on one existing Config. etcd's revision before and
    after is shown next to it as a cross-check (each successful write bumps it
    by one; it misses lease grants and counts other clients' writes when
    ``--endpoint`` points at a shared etcd). Reads per version are shown too.
    The baseline is the raw sequence above: 2 writes, 0 reads.

throughput with 1, 4 and 16 concurrent committers (``throughput_vs_two_write_{1,4,16}``)
    subject: that many tasks, each recording versions of its own Config in a
    loop (one process: one session, one ``ConfigLocks``, one store). The data
    differs per Config and generation, so every commit validates (the
    validator's cache hits are reported: ``validation_cache_hits``).
    baseline: as many tasks, each running the raw two-write sequence of the
    latency baseline on its own Config in a loop (lock-key put on the session
    lease, then the fenced transaction, a real record's bytes).
    reference (``throughput_ratio_{1,4,16}``, the goal of an earlier version
    of this benchmark): as many tasks doing raw compare-and-swap puts, each on
    its own key: a transaction comparing the key's mod revision with the one
    it last wrote and putting a value of the record's size; one write against
    a version's two.
    The three sides run in interleaved rounds of ``--duration`` seconds (each
    pair of rounds swaps the store and the two-write baseline, and in six
    rounds every side runs first, second and third twice); rates are pooled
    over the rounds. This process's CPU time per operation (all threads,
    gRPC's included) is shown for the store and the two-write baseline
    (``cpu_ms_per_version_K``, ``cpu_ms_per_two_write_K``).

failed compare-and-swap attempts per committed version, 3 contenders
    subject: three contenders on one Config, each with its own client,
    session (lease) and ``ConfigLocks``, like three operator replicas, taking
    the next generation from a shared counter and recording it;
    ``store.stats["failed_cas"]`` (commit transactions whose compares failed)
    over versions committed. Serialising the writers is the lock's job.
    reference: the same three clients doing optimistic read-then-CAS on one
    key without a lock (failed CAS per successful put), to show what the lock
    saves.

Usage::

    .venv/bin/python bench/store.py            # starts its own etcd, prints a table
    .venv/bin/python bench/store.py --quick    # a smaller run (under 30 s)
    .venv/bin/python bench/store.py --json     # only the JSON object on stdout
    .venv/bin/python bench/store.py --endpoint 127.0.0.1:2379
    .venv/bin/python bench/store.py --profile /tmp/commit.prof   # + cProfile of the commit

``--profile [PATH]`` adds rounds after the figures (counted in none of them):
one committer recording versions under cProfile; the top functions by
cumulative and by own time, per commit, are printed (and put in the JSON under
``profile``), and with PATH the pstats file is saved (``python -m pstats PATH``).

The run exits 0 whatever the figures are; ``--strict`` makes it exit 1 when a
goal is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import itertools
import json
import math
import pstats
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from etcdconfig.concurrency import ConfigLocks, Session
from etcdconfig.errors import Conflict
from etcdconfig.etcd import (
    Compare,
    DeleteRange,
    EtcdClient,
    EtcdSettings,
    Put,
    RangeResult,
    TxnResult,
    prefix_end,
)
from etcdconfig.etcd.types import TxnOp
from etcdconfig.store import ChangeRequest, Keys, VersionedStore

NAMESPACE = "bench"
MAX_VERSIONS = 100  # the store's default retention: both sides prune beyond it

# goal per figure: key in the JSON object -> (comparison, bound); these decide --strict
GOALS: dict[str, tuple[str, float]] = {
    "commit_p50_vs_two_write": ("<=", 1.5),
    "commit_p99_vs_two_write": ("<=", 2.0),
    "writes_per_version": ("<=", 2.0),
    "throughput_vs_two_write_1": (">=", 0.85),
    "throughput_vs_two_write_4": (">=", 0.85),
    "throughput_vs_two_write_16": (">=", 0.85),
    "failed_cas_per_commit": ("<=", 0.1),
}
# figures kept under their earlier keys for reference: shown in ``goals`` with
# ``"reference": true`` and left out of --strict and of "goals missed".
# ``commit_p*_ratio`` are the same numbers as ``commit_p*_vs_two_write``;
# ``throughput_ratio_*`` compare versions/s with single CAS puts/s (one write
# against a version's two), with the goal they had then.
REFERENCE_GOALS: dict[str, tuple[str, float]] = {
    "commit_p50_ratio": ("<=", 1.5),
    "commit_p99_ratio": ("<=", 2.0),
    "throughput_ratio_1": (">=", 0.6),
    "throughput_ratio_4": (">=", 0.6),
    "throughput_ratio_16": (">=", 0.6),
}

SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["replicas", "image"],
    "properties": {
        "replicas": {"type": "integer", "minimum": 1},
        "image": {"type": "string"},
        "env": {"type": "object", "additionalProperties": {"type": "string"}},
        "resources": {"type": "object"},
    },
}


def config_data(name: str, generation: int) -> dict[str, Any]:
    """A Config's data of about 1 KB that differs per Config and generation, so that
    every commit validates (the store's validator caches results by data checksum,
    across Configs)."""
    return {
        "replicas": generation % 7 + 1,
        "image": f"registry.example/{name}:1.{generation}",
        "env": {f"FEATURE_{i:02d}": f"value-{i}-{generation % 3}" for i in range(24)},
        "resources": {"cpu": "500m", "memory": "256Mi", "limits": {"cpu": "1", "memory": "1Gi"}},
    }


@dataclass(frozen=True)
class Params:
    commits: int  # latency samples per side
    write_commits: int  # sequential commits over which writes are counted
    duration: float  # seconds per throughput round per side
    rounds: int  # throughput rounds per side and concurrency
    concurrency: tuple[int, ...]
    contention_duration: float  # seconds per contention round per side
    contention_rounds: int
    latency_budget: float  # the latency phase stops early past this many seconds


DEFAULT = Params(
    commits=500,
    write_commits=100,
    duration=1.0,
    rounds=6,
    concurrency=(1, 4, 16),
    contention_duration=2.0,
    contention_rounds=3,
    latency_budget=40.0,
)
QUICK = Params(
    commits=80,
    write_commits=20,
    duration=0.5,
    rounds=2,
    concurrency=(1, 4, 16),
    contention_duration=1.0,
    contention_rounds=1,
    latency_budget=8.0,
)


# --- the counting client ------------------------------------------------------------------------


def _writes(ops: Sequence[TxnOp]) -> bool:
    return any(isinstance(op, Put | DeleteRange) for op in ops)


class CountingClient(EtcdClient):
    """Counts requests by kind. A write is a request etcd runs through raft as a
    write: put, delete, a transaction with a put or delete in either branch
    (whichever branch runs), lease grant and revoke. Keep-alives and status are
    not counted."""

    def __init__(self, settings: EtcdSettings) -> None:
        super().__init__(settings)
        self.counts: Counter[str] = Counter()

    async def range(self, key: bytes, range_end: bytes | None = None, **kw: Any) -> RangeResult:
        self.counts["range"] += 1
        return await super().range(key, range_end, **kw)

    async def put(self, key: bytes, value: bytes, *, lease: int = 0) -> int:
        self.counts["put"] += 1
        return await super().put(key, value, lease=lease)

    async def delete_range(self, key: bytes, range_end: bytes | None = None) -> tuple[int, int]:
        self.counts["delete"] += 1
        return await super().delete_range(key, range_end)

    async def txn(
        self, compare: Sequence[Compare], success: Sequence[TxnOp], failure: Sequence[TxnOp] = ()
    ) -> TxnResult:
        writes = _writes(success) or _writes(failure)
        self.counts["txn_write" if writes else "txn_read"] += 1
        return await super().txn(compare, success, failure)

    async def grant(self, ttl: int, lease_id: int = 0) -> tuple[int, int]:
        self.counts["grant"] += 1
        return await super().grant(ttl, lease_id)

    async def revoke(self, lease_id: int) -> None:
        self.counts["revoke"] += 1
        await super().revoke(lease_id)


def write_count(c: Counter[str]) -> int:
    return c["put"] + c["delete"] + c["txn_write"] + c["grant"] + c["revoke"]


def read_count(c: Counter[str]) -> int:
    return c["range"] + c["txn_read"]


# --- subject and baselines ----------------------------------------------------------------------


class Subject:
    """The code under test: ``VersionedStore.record`` with the session's locks."""

    def __init__(self, client: EtcdClient, session: Session, prefix: str, replica: str) -> None:
        self.locks = ConfigLocks(session, prefix=prefix, identity=replica)
        self.store = VersionedStore(client, prefix=prefix, replica_id=replica)
        self.generations: dict[str, int] = {}

    def change(self, name: str, generation: int) -> ChangeRequest:
        return ChangeRequest(
            namespace=NAMESPACE,
            name=name,
            uid=f"uid-{name}",
            generation=generation,
            data=config_data(name, generation),
            schema=SCHEMA,
            author={"manager": "bench"},
            max_versions=MAX_VERSIONS,
            owner_confirmed=True,  # the operator asks the API server; the bench is the owner
        )

    async def commit(self, name: str) -> None:
        generation = self.generations.get(name, 0) + 1
        self.generations[name] = generation
        result = await self.store.record(self.change(name, generation), self.locks)
        if not result.recorded:
            raise RuntimeError(f"{name} generation {generation} was not recorded: {result}")

    def committer(self, name: str) -> Callable[[], Awaitable[None]]:
        return lambda: self.commit(name)


class RawCommit:
    """Latency and throughput baseline: the two writes of a commit (lock-key put on the
    session lease, fenced txn), no reads, nothing computed per commit."""

    def __init__(
        self,
        client: EtcdClient,
        session: Session,
        prefix: str,
        name: str,
        record: bytes,
        head: bytes,
    ) -> None:
        self.client = client
        self.session = session
        self.keys = Keys(prefix)
        self.name = name
        self.lock_key = f"{prefix}/locks/configs/{NAMESPACE}/{name}/{session.lease_id:x}".encode()
        self.head_key = self.keys.head(NAMESPACE, name)
        self.record = record
        self.head = head
        self.version = 0
        self.head_mod = 0

    async def commit(self) -> None:
        version = self.version + 1
        # a new key's create revision is the revision of the put that made it
        lock_revision = await self.client.put(self.lock_key, b"bench", lease=self.session.lease_id)
        version_key = self.keys.version(NAMESPACE, self.name, version)
        ops: list[TxnOp] = [
            Put(version_key, self.record),
            Put(self.head_key, self.head),
            DeleteRange(self.lock_key),
        ]
        oldest_kept = version - MAX_VERSIONS + 1
        if oldest_kept > 1:
            ops.append(
                DeleteRange(
                    self.keys.versions(NAMESPACE, self.name),
                    self.keys.version(NAMESPACE, self.name, oldest_kept),
                )
            )
        res = await self.client.txn(
            [
                Compare.create_revision(self.lock_key, "=", lock_revision),
                Compare.mod_revision(self.head_key, "=", self.head_mod),
                Compare.create_revision(version_key, "=", 0),
            ],
            ops,
        )
        if not res.succeeded:
            raise RuntimeError(f"baseline commit of {self.name} v{version} failed its compares")
        self.version = version
        self.head_mod = res.revision


class RawCas:
    """Throughput baseline: a txn comparing the key's mod revision, then a put."""

    def __init__(self, client: EtcdClient, key: bytes, value: bytes) -> None:
        self.client = client
        self.key = key
        self.value = value
        self.mod = 0  # an absent key compares as mod revision 0

    async def put(self) -> None:
        res = await self.client.txn(
            [Compare.mod_revision(self.key, "=", self.mod)], [Put(self.key, self.value)]
        )
        if not res.succeeded:
            raise RuntimeError(f"baseline CAS on {self.key!r} failed: nothing else writes it")
        self.mod = res.revision


# --- measurement helpers ------------------------------------------------------------------------

# the order of the sides in throughput round r: each pair of rounds swaps the store
# and the two-write baseline (the figure with a goal), and every side takes every
# place in six rounds, so that drift and noise land on all sides alike
ROUND_ORDERS: tuple[tuple[str, str, str], ...] = (
    ("subject", "two_write", "cas"),
    ("cas", "two_write", "subject"),
    ("two_write", "cas", "subject"),
    ("subject", "cas", "two_write"),
    ("cas", "subject", "two_write"),
    ("two_write", "subject", "cas"),
)


@dataclass
class Profile:
    """What ``--profile`` collected: cProfile stats over ``commits`` commits."""

    top: int
    path: Path | None
    stats: pstats.Stats | None = None
    commits: int = 0
    cpu_s: float = 0.0

    def report(self) -> dict[str, Any]:
        """The top functions by cumulative and by own time, per commit (µs)."""
        assert self.stats is not None
        raw: dict[Any, Any] = self.stats.stats  # type: ignore[attr-defined]
        n = max(1, self.commits)
        rows = []
        for (file, line, func), (_cc, calls, tottime, cumtime, _callers) in raw.items():
            where = func if file == "~" else f"{_short(file)}:{line}({func})"
            rows.append(
                {
                    "function": where,
                    "calls_per_commit": round(calls / n, 2),
                    "own_us_per_commit": round(1e6 * tottime / n, 1),
                    "cum_us_per_commit": round(1e6 * cumtime / n, 1),
                }
            )
        # time spent in the event loop's epoll wait is idle, not work
        total = sum(r["own_us_per_commit"] for r in rows if "epoll" not in r["function"])
        by_cum = sorted(rows, key=lambda r: -r["cum_us_per_commit"])[: self.top]
        by_own = sorted(rows, key=lambda r: -r["own_us_per_commit"])[: self.top]
        return {
            "commits": self.commits,
            "cpu_ms_per_commit_profiled": round(1000 * self.cpu_s / n, 3),
            "profiled_us_per_commit": round(total, 1),
            "by_cumulative": by_cum,
            "by_own": by_own,
        }


def _short(file: str) -> str:
    for marker in ("/site-packages/", "/etcdconfig/", "/lib/python3"):
        if marker in file:
            return file[file.index(marker) + 1 :]
    return file


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100)."""
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


async def timed(op: Callable[[], Awaitable[None]]) -> float:
    started = time.perf_counter()
    await op()
    return time.perf_counter() - started


async def run_for(
    ops: Sequence[Callable[[], Awaitable[None]]], seconds: float
) -> tuple[int, float]:
    """Run each op in its own task in a loop until ``seconds`` pass (an op in flight
    completes). Returns (operations completed, elapsed seconds)."""
    deadline = time.perf_counter() + seconds
    done = 0

    async def loop(op: Callable[[], Awaitable[None]]) -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await op()
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(loop(op) for op in ops))
    return done, time.perf_counter() - started


@dataclass
class Rate:
    ops: int = 0
    seconds: float = 0.0

    def add(self, ops: int, seconds: float) -> None:
        self.ops += ops
        self.seconds += seconds

    @property
    def per_second(self) -> float:
        return self.ops / self.seconds if self.seconds else 0.0


@dataclass
class Bench:
    params: Params
    endpoints: list[str]
    prefix: str
    progress: Callable[[str], None]
    figures: dict[str, Any] = field(default_factory=dict)
    record: bytes = b""  # a real version record, written by the baselines
    head: bytes = b""  # the head that points at it
    profile: Profile | None = None  # cProfile the subject's commits with 1 committer

    async def run(self) -> dict[str, Any]:
        started = time.perf_counter()
        client = CountingClient(EtcdSettings(endpoints=self.endpoints))
        await client.connect()
        try:
            session = await Session(client, ttl=10).start()
            try:
                subject = Subject(client, session, self.prefix, "bench-0")
                await self.latency_and_writes(client, session, subject)
                await self.throughput(client, session, subject)
                # every commit is meant to validate: hits would mean cached validations
                self.figures["validation_cache_hits"] = subject.store.validator.hits
                self.figures["validation_cache_misses"] = subject.store.validator.misses
                if self.profile is not None:
                    await self.profile_commits(subject)
            finally:
                await session.close()
            await self.contention()
            await client.delete_range(self.prefix.encode(), prefix_end(self.prefix.encode()))
        finally:
            await client.close()
        self.figures["elapsed_s"] = round(time.perf_counter() - started, 1)
        return self.figures

    async def latency_and_writes(
        self, client: CountingClient, session: Session, subject: Subject
    ) -> None:
        p = self.params
        self.progress(f"latency: up to {p.commits} commits per side, interleaved")
        for _ in range(20):  # warm-up: channel, etcd caches, the Config's history
            await subject.commit("latency")
        # the baseline writes the bytes of a real record and head
        keys = subject.store.keys
        head_kv, _ = await client.get(keys.head(NAMESPACE, "latency"))
        assert head_kv is not None
        version = json.loads(head_kv.value)["version"]
        record_kv, _ = await client.get(keys.version(NAMESPACE, "latency", version))
        assert record_kv is not None
        self.record = record_kv.value
        self.head = head_kv.value
        raw = RawCommit(
            client, session, self.prefix, "latency-raw", record=self.record, head=self.head
        )
        for _ in range(20):
            await raw.commit()

        samples: dict[str, list[float]] = {"subject": [], "baseline": []}
        deadline = time.perf_counter() + p.latency_budget
        for i in range(p.commits):
            pair: list[tuple[str, Callable[[], Awaitable[None]]]] = [
                ("subject", subject.committer("latency")),
                ("baseline", raw.commit),
            ]
            for side, op in pair if i % 2 == 0 else reversed(pair):
                samples[side].append(await timed(op))
            if time.perf_counter() > deadline:
                break
        ms = {side: [s * 1000 for s in v] for side, v in samples.items()}
        f = self.figures
        f["latency_samples"] = len(ms["subject"])
        f["commit_p50_ms"] = percentile(ms["subject"], 50)
        f["commit_p99_ms"] = percentile(ms["subject"], 99)
        f["two_write_p50_ms"] = f["baseline_p50_ms"] = percentile(ms["baseline"], 50)
        f["two_write_p99_ms"] = f["baseline_p99_ms"] = percentile(ms["baseline"], 99)
        f["commit_p50_vs_two_write"] = f["commit_p50_ms"] / f["two_write_p50_ms"]
        f["commit_p99_vs_two_write"] = f["commit_p99_ms"] / f["two_write_p99_ms"]
        # the same ratios under their earlier keys
        f["commit_p50_ratio"] = f["commit_p50_vs_two_write"]
        f["commit_p99_ratio"] = f["commit_p99_vs_two_write"]

        self.progress(f"writes: {p.write_commits} sequential commits on one Config")
        counts_before = client.counts.copy()
        revision_before = (await client.status())["revision"]
        commits_before = subject.store.stats["commits"]
        for _ in range(p.write_commits):
            await subject.commit("latency")
        revision_after = (await client.status())["revision"]
        versions = subject.store.stats["commits"] - commits_before
        delta = client.counts - counts_before
        f["versions_counted"] = versions
        f["writes_per_version"] = write_count(delta) / versions
        f["reads_per_version"] = read_count(delta) / versions
        f["revisions_per_version"] = (revision_after - revision_before) / versions
        f["lease_grants_and_revokes"] = delta["grant"] + delta["revoke"]

    async def throughput(self, client: EtcdClient, session: Session, subject: Subject) -> None:
        p = self.params
        for k in p.concurrency:
            self.progress(f"throughput: {k} committer(s), {p.rounds} rounds per side")
            commits = [subject.committer(f"tp{k}-{i}") for i in range(k)]
            two_writes = [
                RawCommit(
                    client,
                    session,
                    self.prefix,
                    f"tp{k}-raw-{i}",
                    record=self.record,
                    head=self.head,
                ).commit
                for i in range(k)
            ]
            # a CAS put writes as many bytes as a version record (reference only)
            cas = [
                RawCas(client, f"{self.prefix}/raw/tp{k}-{i}".encode(), self.record).put
                for i in range(k)
            ]
            sides: dict[str, Sequence[Callable[[], Awaitable[None]]]] = {
                "subject": commits,
                "two_write": two_writes,
                "cas": cas,
            }
            # warm-up round (not counted): creates the Configs and the keys
            for ops in sides.values():
                await run_for(ops, 0.2)
            rates = {side: Rate() for side in sides}
            cpu = dict.fromkeys(sides, 0.0)
            for r in range(p.rounds):
                for side in ROUND_ORDERS[r % len(ROUND_ORDERS)]:
                    cpu_before = time.process_time()
                    rates[side].add(*await run_for(sides[side], p.duration))
                    cpu[side] += time.process_time() - cpu_before
            f = self.figures
            subject_rate = rates["subject"].per_second
            f[f"throughput_{k}_versions_per_s"] = subject_rate
            f[f"two_write_{k}_per_s"] = rates["two_write"].per_second
            f[f"baseline_{k}_cas_per_s"] = rates["cas"].per_second
            f[f"throughput_vs_two_write_{k}"] = subject_rate / rates["two_write"].per_second
            f[f"throughput_ratio_{k}"] = subject_rate / rates["cas"].per_second
            # this process's CPU (every thread, gRPC's included) per operation
            f[f"cpu_ms_per_version_{k}"] = 1000 * cpu["subject"] / max(1, rates["subject"].ops)
            f[f"cpu_ms_per_two_write_{k}"] = (
                1000 * cpu["two_write"] / max(1, rates["two_write"].ops)
            )

    async def profile_commits(self, subject: Subject) -> None:
        """Extra rounds, not counted in any figure: 1 committer under cProfile."""
        assert self.profile is not None
        p = self.params
        self.progress(f"profile: 1 committer under cProfile, {p.rounds} x {p.duration} s")
        commit = [subject.committer("profile")]
        await run_for(commit, 0.2)  # warm-up: creates the Config
        profiler = cProfile.Profile()
        ops = 0
        cpu_before = time.process_time()
        for _ in range(p.rounds):
            profiler.enable()
            try:
                done, _ = await run_for(commit, p.duration)
            finally:
                profiler.disable()
            ops += done
        self.profile.cpu_s = time.process_time() - cpu_before
        self.profile.commits = ops
        self.profile.stats = pstats.Stats(profiler)
        self.figures["profile_commits"] = ops

    async def contention(self) -> None:
        p = self.params
        self.progress(f"contention: 3 contenders on one Config, {p.contention_rounds} rounds")
        clients = [EtcdClient(EtcdSettings(endpoints=self.endpoints)) for _ in range(3)]
        sessions: list[Session] = []
        try:
            for c in clients:
                await c.connect()
                sessions.append(await Session(c, ttl=10).start())
            subjects = [
                Subject(c, s, self.prefix, f"replica-{i}")
                for i, (c, s) in enumerate(zip(clients, sessions, strict=True))
            ]
            generation = itertools.count(1)
            conflicts = 0

            def contender(s: Subject) -> Callable[[], Awaitable[None]]:
                async def op() -> None:
                    nonlocal conflicts
                    try:
                        await s.store.record(s.change("contended", next(generation)), s.locks)
                    except Conflict:
                        conflicts += 1

                return op

            key = f"{self.prefix}/raw/contended".encode()
            value = b"x" * 1024
            unlocked = Counter[str]()

            def optimistic(c: EtcdClient) -> Callable[[], Awaitable[None]]:
                async def op() -> None:
                    kv, _ = await c.get(key)
                    res = await c.txn(
                        [Compare.mod_revision(key, "=", kv.mod_revision if kv else 0)],
                        [Put(key, value)],
                    )
                    unlocked["puts" if res.succeeded else "failed_cas"] += 1

                return op

            locked_ops = [contender(s) for s in subjects]
            unlocked_ops = [optimistic(c) for c in clients]
            await run_for(locked_ops, 0.2)  # warm-up
            for s in subjects:
                s.store.stats.update(dict.fromkeys(s.store.stats, 0))
            conflicts = 0
            for r in range(p.contention_rounds):
                order = [locked_ops, unlocked_ops]
                for ops in order if r % 2 == 0 else reversed(order):
                    await run_for(ops, p.contention_duration)
            stats = Counter[str]()
            for s in subjects:
                stats.update(s.store.stats)
            f = self.figures
            f["contention_commits"] = stats["commits"]
            f["contention_failed_cas"] = stats["failed_cas"]
            f["contention_already_recorded"] = stats["already_recorded"]
            f["contention_conflicts"] = conflicts
            f["failed_cas_per_commit"] = stats["failed_cas"] / max(1, stats["commits"])
            f["unlocked_puts"] = unlocked["puts"]
            f["unlocked_failed_cas_per_put"] = unlocked["failed_cas"] / max(1, unlocked["puts"])
        finally:
            for sess in sessions:
                await sess.close()
            for c in clients:
                await c.close()


# --- report -------------------------------------------------------------------------------------


def goal_results(figures: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for goals, reference in ((GOALS, False), (REFERENCE_GOALS, True)):
        for key, (op, bound) in goals.items():
            value = figures[key]
            ok = value <= bound if op == "<=" else value >= bound
            out[key] = {"goal": f"{op} {bound:g}", "pass": bool(ok)}
            if reference:
                out[key]["reference"] = True
    return out


def missed(goals: dict[str, dict[str, Any]]) -> list[str]:
    """The goals missed, reference figures left out."""
    return [k for k, g in goals.items() if not g["pass"] and not g.get("reference")]


def render(console: Console, figures: dict[str, Any], goals: dict[str, dict[str, Any]]) -> None:
    f = figures
    table = Table(
        title=f"etcdconfig store benchmark — {f['etcd']}, {f['elapsed_s']} s",
        caption_justify="left",
        caption=(
            "two-write baseline (latency and throughput): a lock-key put on the session lease, "
            "then a fenced txn (lock create revision, head mod revision, version absent; "
            "version and head puts of a real record's bytes, lock delete, pruning), same "
            "client, no reads, as many tasks on distinct Configs as committers; single CAS "
            "(reference): a txn on mod_revision + put, one write against a version's two; "
            "CPU: this process, every thread, per operation; failed CAS: 3 writers on one "
            "Config, each with its own session; reference: the same writers doing "
            "read-then-CAS without a lock"
        ),
    )
    table.add_column("figure")
    table.add_column("store", justify="right")
    table.add_column("baseline", justify="right")
    table.add_column("ratio", justify="right")
    table.add_column("goal")
    table.add_column("", justify="center")

    def row(label: str, store: str, baseline: str, key: str | None = None) -> None:
        if key is None:
            table.add_row(label, store, baseline, "", "", "")
            return
        goal = goals[key]
        is_ratio = "ratio" in key or "_vs_" in key
        ratio = f"{f[key]:.2f}×" if is_ratio else ""
        text = goal["goal"].replace("<=", "≤").replace(">=", "≥") + ("×" if is_ratio else "")
        mark = "[green]✓[/]" if goal["pass"] else "[red]✗[/]"
        if goal.get("reference"):
            text, mark = f"[dim]ref. {text}[/]", f"[dim]{'✓' if goal['pass'] else '✗'}[/]"
        table.add_row(label, store, baseline, ratio, text, mark)

    n = f["latency_samples"]
    row(
        f"commit p50 vs two writes, ms (n={n})",
        f"{f['commit_p50_ms']:.2f}",
        f"{f['two_write_p50_ms']:.2f}",
        "commit_p50_vs_two_write",
    )
    row(
        f"commit p99 vs two writes, ms (n={n})",
        f"{f['commit_p99_ms']:.2f}",
        f"{f['two_write_p99_ms']:.2f}",
        "commit_p99_vs_two_write",
    )
    row(
        f"etcd writes / version (n={f['versions_counted']})",
        f"{f['writes_per_version']:.2f}",
        "2",
        "writes_per_version",
    )
    row("  revisions / version", f"{f['revisions_per_version']:.2f}", "2")
    row("  reads / version", f"{f['reads_per_version']:.2f}", "0")
    for k in (1, 4, 16):
        row(
            f"throughput vs two writes, {k} writer{'s' if k > 1 else ''}, /s",
            f"{f[f'throughput_{k}_versions_per_s']:.0f}",
            f"{f[f'two_write_{k}_per_s']:.0f}",
            f"throughput_vs_two_write_{k}",
        )
        row(
            "  vs single CAS puts, /s",
            f"{f[f'throughput_{k}_versions_per_s']:.0f}",
            f"{f[f'baseline_{k}_cas_per_s']:.0f}",
            f"throughput_ratio_{k}",
        )
        row(
            "  CPU ms / operation",
            f"{f[f'cpu_ms_per_version_{k}']:.2f}",
            f"{f[f'cpu_ms_per_two_write_{k}']:.2f}",
        )
    row(
        f"failed CAS / version (n={f['contention_commits']})",
        f"{f['failed_cas_per_commit']:.3f}",
        f"{f['unlocked_failed_cas_per_put']:.2f} unlocked",
        "failed_cas_per_commit",
    )
    console.print(table)
    failed = missed(goals)
    if failed:
        console.print(f"goals missed: {', '.join(failed)}", style="red")
    else:
        console.print("all goals met", style="green")


def render_profile(console: Console, profile: dict[str, Any]) -> None:
    console.print(
        f"cProfile of {profile['commits']} commits, 1 committer (extra rounds, not in the "
        f"figures): {profile['profiled_us_per_commit']:.0f} µs per commit in profiled "
        "functions on the loop thread (epoll wait left out; a coroutine counts a call per "
        "resume), "
        f"{profile['cpu_ms_per_commit_profiled']:.2f} ms CPU per commit with the profiler on"
    )
    for key, title in (("by_cumulative", "cumulative"), ("by_own", "own time")):
        table = Table(title=f"top functions by {title}, per commit")
        table.add_column("function", overflow="fold")
        table.add_column("calls", justify="right")
        table.add_column("own µs", justify="right")
        table.add_column("cum µs", justify="right")
        for r in profile[key]:
            table.add_row(
                r["function"],
                f"{r['calls_per_commit']:g}",
                f"{r['own_us_per_commit']:.1f}",
                f"{r['cum_us_per_commit']:.1f}",
            )
        console.print(table)


# --- entry point --------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="Benchmark the versioned store against raw etcd baselines (ratios).",
    )
    ap.add_argument(
        "--endpoint",
        help="etcd endpoint(s), comma-separated (default: start a throw-away etcd)",
    )
    ap.add_argument("--quick", action="store_true", help="a smaller run (under 30 s)")
    ap.add_argument("--json", action="store_true", help="print only the JSON object")
    ap.add_argument("--commits", type=int, help="latency samples per side")
    ap.add_argument("--duration", type=float, help="seconds per throughput round per side")
    ap.add_argument("--rounds", type=int, help="throughput rounds per side and concurrency")
    ap.add_argument(
        "--prefix",
        default=f"/etcdconfig-bench-{uuid.uuid4().hex[:8]}",
        help="key prefix (deleted at the end)",
    )
    ap.add_argument("--strict", action="store_true", help="exit 1 when a goal is missed")
    ap.add_argument(
        "--profile",
        nargs="?",
        const="",
        metavar="PATH",
        help="after the figures, cProfile extra 1-committer rounds and report the top "
        "functions (in the JSON under 'profile'); with PATH, also save the pstats file",
    )
    ap.add_argument("--profile-top", type=int, default=25, help="functions listed per table")
    return ap.parse_args(argv)


def params_from(args: argparse.Namespace) -> Params:
    p = QUICK if args.quick else DEFAULT
    if args.commits is not None:
        p = replace(p, commits=args.commits)
    if args.duration is not None:
        p = replace(p, duration=args.duration)
    if args.rounds is not None:
        p = replace(p, rounds=args.rounds)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    params = params_from(args)
    err = Console(stderr=True)

    def progress(text: str) -> None:
        if not args.json:
            err.log(text)

    profile = (
        Profile(top=args.profile_top, path=Path(args.profile) if args.profile else None)
        if args.profile is not None
        else None
    )

    def bench(endpoints: list[str], etcd: str) -> dict[str, Any]:
        figures = asyncio.run(
            Bench(params, endpoints, args.prefix, progress, profile=profile).run()
        )
        figures["etcd"] = etcd
        return figures

    if args.endpoint:
        endpoints = [e.strip() for e in args.endpoint.split(",") if e.strip()]
        figures = bench(endpoints, f"etcd at {', '.join(endpoints)}")
    else:
        from etcdconfig.devenv.build import ensure_etcd
        from etcdconfig.devenv.etcd import EtcdServer

        binary, _ = ensure_etcd()
        with tempfile.TemporaryDirectory(prefix="etcdconfig-bench-") as tmp:
            server = EtcdServer(data_dir=Path(tmp) / "data", name="bench")
            progress(f"starting {binary.name} in {tmp}")
            server.start()
            try:
                server.wait_healthy(60)
                figures = bench([server.endpoint], f"own {binary.name}")
            finally:
                server.stop()

    goals = goal_results(figures)
    extra: dict[str, Any] = {}
    if profile is not None and profile.stats is not None:
        extra["profile"] = profile.report()
        if profile.path is not None:
            profile.stats.dump_stats(profile.path)
            progress(f"profile saved to {profile.path}")
    if args.json:
        print(json.dumps({**figures, **extra, "goals": goals}, indent=2))
    else:
        console = Console()
        render(console, figures, goals)
        if "profile" in extra:
            render_profile(console, extra["profile"])
    return 1 if args.strict and missed(goals) else 0


if __name__ == "__main__":
    sys.exit(main())
