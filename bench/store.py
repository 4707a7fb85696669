#!/usr/bin/env python3
"""Store benchmark: the versioned store's commit path against raw etcd baselines.

Every figure is a ratio to a baseline measured in the same run, against the
same etcd, with the same ``EtcdClient`` (one gRPC channel, one event loop), and
interleaved with the subject (alternate operations for latency, alternate
rounds for throughput and contention) so that the noise of a small shared
machine lands on both sides alike.

What is measured, and against what
----------------------------------
commit latency, p50 and p99
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
    the default 500 samples, p99 is the 5th slowest).

etcd writes per recorded version (steady state)
    Counted, not assumed: a counting subclass of ``EtcdClient`` counts the
    requests that etcd runs through raft as writes (put, delete, a transaction
    with a put or delete in either branch, lease grant and revoke) during N
    sequential commits on one existing Config. etcd's revision before and
    after is shown next to it as a cross-check (each successful write bumps it
    by one; it misses lease grants and counts other clients' writes when
    ``--endpoint`` points at a shared etcd). Reads per version are shown too.
    The baseline is the raw sequence above: 2 writes, 0 reads.

throughput with 1, 4 and 16 concurrent committers
    subject: that many tasks, each recording versions of its own Config in a
    loop (one process: one session, one ``ConfigLocks``, one store).
    baseline: as many tasks doing raw compare-and-swap puts in a loop, each on
    its own key: a transaction comparing the key's mod revision with the one
    it last wrote and putting a value of the record's size. Rates are pooled
    over interleaved rounds of ``--duration`` seconds per side. Note that a
    version costs two writes and a CAS put one.

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

The run exits 0 whatever the figures are; ``--strict`` makes it exit 1 when a
goal is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
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

# goal per figure: (key in the JSON object, comparison, bound)
GOALS: dict[str, tuple[str, float]] = {
    "commit_p50_ratio": ("<=", 1.5),
    "commit_p99_ratio": ("<=", 2.0),
    "writes_per_version": ("<=", 2.0),
    "throughput_ratio_1": (">=", 0.6),
    "throughput_ratio_4": (">=", 0.6),
    "throughput_ratio_16": (">=", 0.6),
    "failed_cas_per_commit": ("<=", 0.1),
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


def config_data(generation: int) -> dict[str, Any]:
    """A Config's data of about 1 KB that differs per generation (so validation runs)."""
    return {
        "replicas": generation % 7 + 1,
        "image": f"registry.example/payments:1.{generation}",
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
            data=config_data(generation),
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
    """Latency baseline: the two writes of a commit (lock put, fenced txn), no reads."""

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

    async def run(self) -> dict[str, Any]:
        started = time.perf_counter()
        client = CountingClient(EtcdSettings(endpoints=self.endpoints))
        await client.connect()
        try:
            session = await Session(client, ttl=10).start()
            try:
                subject = Subject(client, session, self.prefix, "bench-0")
                await self.latency_and_writes(client, session, subject)
                await self.throughput(client, subject)
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
        raw = RawCommit(
            client, session, self.prefix, "latency-raw", record=self.record, head=head_kv.value
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
        f["baseline_p50_ms"] = percentile(ms["baseline"], 50)
        f["baseline_p99_ms"] = percentile(ms["baseline"], 99)
        f["commit_p50_ratio"] = f["commit_p50_ms"] / f["baseline_p50_ms"]
        f["commit_p99_ratio"] = f["commit_p99_ms"] / f["baseline_p99_ms"]

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

    async def throughput(self, client: EtcdClient, subject: Subject) -> None:
        p = self.params
        record = self.record  # a CAS put writes as many bytes as a version record
        for k in p.concurrency:
            self.progress(f"throughput: {k} committer(s), {p.rounds} rounds per side")
            commits = [subject.committer(f"tp{k}-{i}") for i in range(k)]
            cas = [
                RawCas(client, f"{self.prefix}/raw/tp{k}-{i}".encode(), record).put
                for i in range(k)
            ]
            # warm-up round (not counted): creates the Configs and the keys
            await run_for(commits, 0.2)
            await run_for(cas, 0.2)
            rates = {"subject": Rate(), "baseline": Rate()}
            for r in range(p.rounds):
                order = [("subject", commits), ("baseline", cas)]
                for side, ops in order if r % 2 == 0 else reversed(order):
                    rates[side].add(*await run_for(ops, p.duration))
            f = self.figures
            f[f"throughput_{k}_versions_per_s"] = rates["subject"].per_second
            f[f"baseline_{k}_cas_per_s"] = rates["baseline"].per_second
            f[f"throughput_ratio_{k}"] = rates["subject"].per_second / rates["baseline"].per_second

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
            for s in sessions:
                await s.close()
            for c in clients:
                await c.close()


# --- report -------------------------------------------------------------------------------------


def goal_results(figures: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for key, (op, bound) in GOALS.items():
        value = figures[key]
        ok = value <= bound if op == "<=" else value >= bound
        out[key] = {"goal": f"{op} {bound:g}", "pass": bool(ok)}
    return out


def render(console: Console, figures: dict[str, Any], goals: dict[str, dict[str, Any]]) -> None:
    f = figures
    table = Table(
        title=f"etcdconfig store benchmark — {f['etcd']}, {f['elapsed_s']} s",
        caption_justify="left",
        caption=(
            "latency baseline: lock-key put + fenced txn (3 compares, version/head puts, lock "
            "delete), same client, lease and bytes; throughput baseline: CAS puts (txn on "
            "mod_revision + put) on distinct keys, versions/s vs puts/s; failed CAS: 3 writers "
            "on one Config, each with its own session; reference: the same writers doing "
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
        ratio = f"{f[key]:.2f}×" if "ratio" in key else ""
        table.add_row(
            label,
            store,
            baseline,
            ratio,
            goal["goal"].replace("<=", "≤").replace(">=", "≥") + ("×" if ratio else ""),
            "[green]✓[/]" if goal["pass"] else "[red]✗[/]",
        )

    n = f["latency_samples"]
    row(
        f"commit p50, ms (n={n})",
        f"{f['commit_p50_ms']:.2f}",
        f"{f['baseline_p50_ms']:.2f}",
        "commit_p50_ratio",
    )
    row(
        f"commit p99, ms (n={n})",
        f"{f['commit_p99_ms']:.2f}",
        f"{f['baseline_p99_ms']:.2f}",
        "commit_p99_ratio",
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
            f"throughput, {k} writer{'s' if k > 1 else ''}, /s",
            f"{f[f'throughput_{k}_versions_per_s']:.0f}",
            f"{f[f'baseline_{k}_cas_per_s']:.0f}",
            f"throughput_ratio_{k}",
        )
    row(
        f"failed CAS / version (n={f['contention_commits']})",
        f"{f['failed_cas_per_commit']:.3f}",
        f"{f['unlocked_failed_cas_per_put']:.2f} unlocked",
        "failed_cas_per_commit",
    )
    console.print(table)
    failed = [k for k, g in goals.items() if not g["pass"]]
    if failed:
        console.print(f"goals missed: {', '.join(failed)}", style="red")
    else:
        console.print("all goals met", style="green")


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

    def bench(endpoints: list[str], etcd: str) -> dict[str, Any]:
        figures = asyncio.run(Bench(params, endpoints, args.prefix, progress).run())
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
    if args.json:
        print(json.dumps({**figures, "goals": goals}, indent=2))
    else:
        render(Console(), figures, goals)
    return 1 if args.strict and not all(g["pass"] for g in goals.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
