#!/usr/bin/env python3
"""Replica benchmark: 1 vs 3 active-active replicas of the operator on one control plane.

One control plane and one store etcd (started by the benchmark in a temporary
directory), N Configs (1000 by default) in one namespace, and operator
replicas ``replica-0`` … ``replica-3`` sharing one store prefix, all with
``--lock-ttl 2`` (``ttl_s``) and otherwise default settings. The sequence:

1.  replica-0 alone records the N Configs (not timed);
2.  round with **1 replica** (500 of the Configs updated);
3.  replica-1 and replica-2 join; round with **3 replicas** — ownership balance
    is read here;
4.  replica-3 joins; a sample of the Configs (250) is updated — Configs moved
    on join;
5.  replica-1 leaves (SIGTERM); the same sample is updated — Configs moved on
    leave;
6.  lock takeover after SIGKILL, several times, with 3 replicas;
7.  back to **1 replica** (the others stop); round with 1 replica.

So the full 1- and 3-replica rounds are interleaved (1, 3, 1): drift of a
shared machine lands on both sides.

What is measured
----------------
throughput, 3 replicas vs 1 (``throughput_ratio_3v1``, goal ≥ 1.0×)
    A round = one merge-patch of ``spec.data`` on each of ``--round-size``
    Configs (a fixed random 500 of the 1000, so that a run stays near 5
    minutes on a loaded 2-core machine; ``--round-size 0``: all), sent by 8
    client threads once no resync pass is running; its time runs from the
    first PATCH to the moment a cluster-wide watch first sees the last
    Config's status recorded (Ready, observed generation = the new one; a
    later stale status write that sets it back is counted apart, as
    ``status_regressions``). Ratio = mean 1-replica time / mean 3-replica
    time. "drain" (last status seen − last PATCH answered) shows how far the
    operators lag behind the API server's own pace; the CPU seconds all
    replicas used during the round are shown too.
ownership balance (``balance_max_deviation``, goal ≤ 0.15)
    Each replica's ``etcdconfig_owned_configs`` gauge with 3 replicas, after
    their resync; the figure is max |owned − N/3| / (N/3). Cross-checked
    twice: with ``rendezvous_owner`` over the live members and the Configs'
    uids (must be equal, Config by Config), and with the ``recordedBy`` of
    the versions the 3-replica round wrote (who actually did the work).
Configs moved when a member joins / leaves (goal ≈ 1/N: within 0.75–1.25× of it)
    Actual ownership = ``recordedBy`` of the head version of each Config of a
    random sample (``--sample``, 250) after the updates that follow the change;
    moved = sampled Configs whose recorder changed, over the sample size (the
    rendezvous prediction over all N uids is shown next to it, and every
    sampled recorder is checked against it). Ideal: 1/4 on the join of a 4th
    member, and the leaver's share (about 1/4) on leave. Moves that do not involve the joining or
    leaving member (there should be none) are counted as ``stray``.
lock takeover after SIGKILL (goal p50 ≤ TTL + 0.5 s, max ≤ TTL + 1.5 s)
    Once no resync pass is running (no replica's resync reconcile count moved
    for 1 s), SIGKILL one replica, at once merge-patch one Config it owned,
    and time until its status shows the new generation recorded (by a
    survivor: the dead replica's lease must expire, the survivors see the
    membership change and their resync pass takes the Config over). Then the
    replica restarts and the fleet settles before the next kill; the victim
    rotates.

Usage::

    .venv/bin/python bench/replicas.py            # ~5-7 min: 1000 Configs, 5 takeovers
    .venv/bin/python bench/replicas.py --quick    # ~90 s: 100 Configs, 3 takeovers
    .venv/bin/python bench/replicas.py --json     # only the JSON object on stdout

The run exits 0 whatever the figures are; ``--strict`` makes it exit 1 when a
goal is missed. ``--keep`` keeps the temporary directory with every log.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from rich.console import Console

from _cluster import (
    Cluster,
    Goals,
    Process,
    config_data,
    cpu_seconds,
    goal_cell,
    goal_results,
    new_table,
    parallel,
    percentile,
    print_verdict,
    wait_until,
)
from etcdconfig.concurrency.membership import rendezvous_owner
from etcdconfig.etcd import EtcdClient, EtcdSettings, prefix_end

NAMESPACE = "bench-replicas"
TTL = 2

GOALS: Goals = {
    "throughput_ratio_3v1": (">=", 1.0),
    "balance_max_deviation": ("<=", 0.15),
    "moved_ratio_on_join": ("<=", 1.25),
    "moved_ratio_on_leave": ("<=", 1.25),
    "takeover_p50_s": ("<=", TTL + 0.5),
    "takeover_max_s": ("<=", TTL + 1.5),
}
# the moved ratios must also be ≥ 0.75 (checked in goal_results_replicas)
MOVED_LOW = 0.75


@dataclass(frozen=True)
class Params:
    configs: int
    takeovers: int
    sample: int  # Configs updated to see who owns them after a join and after a leave
    round_size: int  # Configs updated in a throughput round (0: all)
    workers: int = 8  # client threads sending the PATCHes of a round


DEFAULT = Params(configs=1000, takeovers=5, sample=250, round_size=500)
QUICK = Params(configs=100, takeovers=3, sample=100, round_size=0)


@dataclass
class Round:
    replicas: int
    configs: int
    seconds: float
    send_seconds: float
    drain_seconds: float
    cpu_seconds: float
    throughput: bool  # a throughput round (not a join/leave sample)


class Bench:
    def __init__(
        self, cluster: Cluster, params: Params, progress: Callable[[str], None], seed: int
    ) -> None:
        self.c = cluster
        self.p = params
        self.progress = progress
        self.rng = random.Random(seed)
        self.prefix = f"/etcdconfig-bench-{uuid.uuid4().hex[:8]}"
        self.names = [f"cfg-{i:04d}" for i in range(params.configs)]
        self.uids: dict[str, str] = {}
        self.replicas = [
            cluster.operator(f"replica-{i}", self.prefix, namespaces=[NAMESPACE], lock_ttl=TTL)
            for i in range(4)
        ]
        self.revision = 0
        self.rounds: list[Round] = []
        self.f: dict[str, Any] = {"configs": params.configs, "ttl_s": TTL, "seed": seed}

    # --- fleet ----------------------------------------------------------------------------------

    def live(self) -> list[Process]:
        return [r for r in self.replicas if r.alive]

    def predicted(self, members: Sequence[str]) -> dict[str, str]:
        return {n: str(rendezvous_owner(list(members), self.uids[n])) for n in self.names}

    def settle(self, timeout: float = 120.0, owned: bool = True) -> dict[str, int]:
        """Wait until every live replica sees exactly the live members and (``owned``)
        the owned gauges equal the rendezvous prediction; returns {replica: owned}.
        A membership change starts a resync at once, which sets the gauge."""
        live = self.live()
        members = sorted(r.name for r in live)
        want = Counter(self.predicted(members).values())

        def check() -> dict[str, int] | None:
            owned: dict[str, int] = {}
            for r in live:
                r.check_alive()
                try:
                    m = r.metrics()
                except OSError:
                    return None
                if m.get("etcdconfig_members") != len(live):
                    return None
                owned[r.name] = int(m.get("etcdconfig_owned_configs", -1))
            ok = not check_owned or all(owned[r] == want.get(r, 0) for r in owned)
            return owned if ok else None

        check_owned = owned
        return dict(wait_until(check, timeout, f"replicas {members} to settle", interval=0.25))

    def quiet(self, still: float = 1.0, timeout: float = 120.0) -> None:
        """Wait until no live replica has reconciled anything in resync for ``still``
        seconds: the resync pass a membership change started is over."""
        key = 'etcdconfig_reconcile_duration_seconds_count{trigger="resync"}'

        def count() -> float:
            return sum(r.metrics().get(key, 0.0) for r in self.live())

        deadline = time.monotonic() + timeout
        last, since = count(), time.monotonic()
        while time.monotonic() - since < still:
            if time.monotonic() > deadline:
                raise TimeoutError("the replicas' resync passes never went quiet")
            time.sleep(0.2)  # poll interval of a deadline-bounded wait
            now = count()
            if now != last:
                last, since = now, time.monotonic()

    def start(self, *replicas: Process) -> None:
        for r in replicas:
            r.start()
        wait_until(lambda: all(r.ready() for r in replicas), 90, "replicas ready", 0.2)

    # --- measurements ---------------------------------------------------------------------------

    def round_(self, names: Sequence[str] | None = None) -> Round:
        """One PATCH per Config (the throughput round's, or ``names``) → every status
        recorded. Only rounds without ``names`` count for throughput."""
        c = self.c
        sample = names is not None
        names = list(names) if names is not None else self.round_names
        self.quiet()  # not while the resync pass of a membership change runs
        live = self.live()
        self.revision += 1
        rev = self.revision
        cpu0 = sum(cpu_seconds(r.pid) for r in live)
        started = time.monotonic()
        gens = parallel(
            lambda n: c.api.patch_data(NAMESPACE, n, config_data(int(n[4:]), rev)),
            names,
            workers=self.p.workers,
        )
        sent = time.monotonic()
        targets = dict(zip(names, gens, strict=True))
        done = c.watch.wait_recorded(NAMESPACE, names, targets, timeout=900)
        cpu = sum(cpu_seconds(r.pid) for r in live) - cpu0
        r = Round(
            len(live), len(names), done - started, sent - started, done - sent, cpu, not sample
        )
        self.rounds.append(r)
        self.progress(
            f"round of {r.configs} updates with {r.replicas} replica(s): {r.seconds:.1f} s "
            f"(PATCHes {r.send_seconds:.1f} s, drain {r.drain_seconds:.1f} s)"
        )
        return r

    def recorded_by(self) -> dict[str, str]:
        """name → recordedBy of its newest version, read from the store's etcd."""

        async def read() -> dict[str, str]:
            client = EtcdClient(EtcdSettings(endpoints=[self.c.store.endpoint]))
            try:
                base = f"{self.prefix}/configs/{NAMESPACE}/".encode()
                res = await client.range(base, prefix_end(base))
            finally:
                await client.close()
            newest: dict[str, tuple[int, str]] = {}
            for kv in res.kvs:
                parts = kv.key[len(base) :].decode().split("/")
                if len(parts) != 3 or parts[1] != "versions":
                    continue
                version = int(parts[2])
                if version > newest.get(parts[0], (0, ""))[0]:
                    newest[parts[0]] = (version, json.loads(kv.value)["recordedBy"])
            return {name: who for name, (_, who) in newest.items()}

        return asyncio.run(read())

    def takeover(self, k: int) -> float:
        c = self.c
        live = self.live()
        members = sorted(r.name for r in live)
        victim = live[k % len(live)]
        self.quiet()  # kill when no resync pass is running (one would delay the takeover)
        owners = self.predicted(members)
        name = self.rng.choice([n for n in self.names if owners[n] == victim.name])
        victim.kill()
        killed = time.monotonic()
        gen = c.api.patch_data(NAMESPACE, name, config_data(k, 10_000 + k))
        at = c.watch.wait_recorded(NAMESPACE, [name], gen, timeout=120)
        seconds = at - killed
        who = self.recorded_by().get(name)
        self.progress(
            f"takeover {k + 1}: killed {victim.name}; {name} recorded by {who} "
            f"after {seconds:.2f} s"
        )
        if who == victim.name:
            raise RuntimeError(f"{name} was recorded by the killed replica {victim.name}")
        self.start(victim)
        self.settle()
        return seconds

    # --- the sequence ---------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        c, p, f = self.c, self.p, self.f
        r0, r1, r2, r3 = self.replicas
        c.api.create_namespace(NAMESPACE)
        self.progress("replica-0: start")
        self.start(r0)
        self.progress(f"replica-0: {p.configs} Configs created and recorded")
        objs = parallel(
            lambda n: c.api.create_config(NAMESPACE, n, config_data(int(n[4:]))),
            self.names,
            workers=p.workers,
        )
        self.uids = {o["metadata"]["name"]: o["metadata"]["uid"] for o in objs}
        size = p.round_size or p.configs
        self.round_names = sorted(self.rng.sample(self.names, min(size, p.configs)))
        f["round_size"] = len(self.round_names)
        c.watch.wait_recorded(NAMESPACE, self.names, 1, timeout=max(300, p.configs))
        self.settle(owned=False)  # its gauge waits for the periodic resync (60 s)

        self.round_()  # 1 replica

        self.progress("replica-1 and replica-2 join")
        self.start(r1, r2)
        owned3 = self.settle()
        self.round_()  # 3 replicas
        by3 = self.recorded_by()
        self.balance(owned3, by3)

        # join and leave: who records a sample of the Configs after each change
        # drawn from the Configs the 3-replica round updated: their recorder is known
        sample = sorted(self.rng.sample(self.round_names, min(p.sample, len(self.round_names))))
        f["moved_sample"] = len(sample)
        self.progress(f"replica-3 joins; {len(sample)} Configs updated")
        self.start(r3)
        self.settle()
        self.round_(sample)  # 4 replicas
        by4 = self.recorded_by()
        three = [r0.name, r1.name, r2.name]
        self.moved("join", by3, by4, (three, [*three, r3.name]), sample)

        self.progress(f"replica-1 leaves (SIGTERM); the same {len(sample)} Configs updated")
        r1.stop()
        self.settle()
        self.round_(sample)  # 3 replicas
        by3b = self.recorded_by()
        self.moved("leave", by4, by3b, ([*three, r3.name], [r0.name, r2.name, r3.name]), sample)

        self.progress(f"lock takeover after SIGKILL, {p.takeovers} times")
        takeovers = [self.takeover(k) for k in range(p.takeovers)]
        f["takeovers_s"] = [round(t, 3) for t in takeovers]
        f["takeover_p50_s"] = percentile(takeovers, 50)
        f["takeover_max_s"] = max(takeovers)

        self.progress("back to replica-0 alone")
        others = [r for r in self.live() if r is not r0]
        for r in others:  # SIGTERM to all first: they stop in parallel
            assert r.proc is not None
            r.proc.terminate()
        for r in others:
            r.stop()
        self.settle()
        self.round_()  # 1 replica

        for k in (1, 3):
            rs = [r for r in self.rounds if r.replicas == k and r.throughput]
            f[f"round_{k}_seconds"] = sum(r.seconds for r in rs) / len(rs)
            f[f"round_{k}_rounds_s"] = [round(r.seconds, 2) for r in rs]
            f[f"round_{k}_send_seconds"] = sum(r.send_seconds for r in rs) / len(rs)
            f[f"round_{k}_drain_seconds"] = sum(r.drain_seconds for r in rs) / len(rs)
            f[f"round_{k}_cpu_seconds"] = sum(r.cpu_seconds for r in rs) / len(rs)
            f[f"throughput_{k}_per_s"] = f["round_size"] / f[f"round_{k}_seconds"]
        f["throughput_ratio_3v1"] = f["round_1_seconds"] / f["round_3_seconds"]
        with c.watch.cond:
            f["status_regressions"] = c.watch.regressions.get(NAMESPACE, 0)
            f["status_regression_samples"] = list(c.watch.regression_samples)
        return f

    def balance(self, owned: dict[str, int], by: dict[str, str]) -> None:
        """Gauges vs an even share; cross-checked with rendezvous over every uid and
        with who recorded the Configs the round updated."""
        f = self.f
        n, members = self.p.configs, sorted(owned)
        owners = self.predicted(members)
        predicted = Counter(owners.values())
        actual = Counter(by[name] for name in self.round_names)
        even = n / len(members)
        f["owned_3"] = owned
        f["owned_3_rendezvous"] = {m: predicted.get(m, 0) for m in members}
        f["owned_3_recorded_by"] = {m: actual.get(m, 0) for m in members}  # of round_size
        f["balance_max_deviation"] = max(abs(v - even) / even for v in owned.values())
        # what a fair hash gives: one standard deviation of a member's share, relative
        share = 1 / len(members)
        f["balance_fair_sigma"] = math.sqrt(n * share * (1 - share)) / even
        f["balance_gauge_matches_rendezvous"] = all(owned[m] == predicted[m] for m in members)
        f["balance_recorded_by_mismatches"] = sum(
            1 for name in self.round_names if by[name] != owners[name]
        )

    def moved(
        self,
        what: str,
        before: dict[str, str],
        after: dict[str, str],
        members: tuple[list[str], list[str]],
        sample: Sequence[str],
    ) -> None:
        """Moved = Configs of ``sample`` whose recorder changed; ``stray`` = moves that
        do not involve the joiner or the leaver. The rendezvous prediction over every
        Config (members before → after) is shown next to it."""
        f = self.f
        (member,) = set(members[0]) ^ set(members[1])
        changed = [n for n in sample if before[n] != after[n]]
        involved = [n for n in changed if member in (before[n], after[n])]
        if what == "join":
            ideal = 1 / len(members[1])
        else:  # the leaver's share before it left
            ideal = sum(1 for n in sample if before[n] == member) / len(sample)
        pb, pa = self.predicted(members[0]), self.predicted(members[1])
        f[f"moved_fraction_on_{what}"] = len(changed) / len(sample)
        f[f"moved_ideal_on_{what}"] = ideal
        f[f"moved_ratio_on_{what}"] = (len(changed) / len(sample)) / ideal
        f[f"moved_stray_on_{what}"] = len(changed) - len(involved)
        f[f"moved_fraction_on_{what}_rendezvous"] = sum(
            1 for n in self.names if pb[n] != pa[n]
        ) / len(self.names)
        f[f"moved_recorded_by_mismatches_on_{what}"] = sum(1 for n in sample if after[n] != pa[n])


def goal_results_replicas(f: dict[str, Any]) -> dict[str, dict[str, Any]]:
    goals = goal_results(f, GOALS)
    for what in ("join", "leave"):
        key = f"moved_ratio_on_{what}"
        ratio = f.get(key)
        ok = ratio is not None and MOVED_LOW <= ratio <= GOALS[key][1]
        ok = ok and f.get(f"moved_stray_on_{what}") == 0
        goals[key] = {"goal": f"{MOVED_LOW:g}–{GOALS[key][1]:g}×, 0 stray", "pass": ok}
    return goals


# --- report -------------------------------------------------------------------------------------


def render(console: Console, f: dict[str, Any], goals: dict[str, dict[str, Any]]) -> None:
    n = f["configs"]
    table = new_table(
        f"etcdconfig replicas benchmark — {n} Configs, lock TTL {f['ttl_s']} s, {f['elapsed_s']} s",
        (
            "round: one PATCH per Config (8 client threads) → all statuses recorded, seen by a "
            "watch; full rounds interleaved 1, 3, 1 replicas; ownership from the owned gauges, "
            "rendezvous_owner over the uids, and recordedBy of the versions each round wrote "
            f"(join/leave: a sample of {f['moved_sample']} Configs updated after each change); "
            "takeover: SIGKILL an owner, PATCH one of its Configs, time to its recorded status"
        ),
        ["figure", "value", "baseline", "ratio"],
    )
    table.add_row(
        f"round of {f['round_size']} updates (of {n} Configs), 3 replicas vs 1, s",
        f"{f['round_3_seconds']:.1f}",
        f"{f['round_1_seconds']:.1f}",
        f"{f['throughput_ratio_3v1']:.2f}×",
        *goal_cell(goals, "throughput_ratio_3v1", "×"),
    )
    for k in (1, 3):
        table.add_row(
            f"  {k} replica{'s' if k > 1 else ''}: rounds s / PATCHes s / drain s / CPU s",
            f"{' '.join(f'{x:.1f}' for x in f[f'round_{k}_rounds_s'])} / "
            f"{f[f'round_{k}_send_seconds']:.1f} / {f[f'round_{k}_drain_seconds']:.1f} / "
            f"{f[f'round_{k}_cpu_seconds']:.1f}",
            "",
            f"{f['round_1_seconds'] / f[f'round_{k}_seconds']:.2f}×" if k != 1 else "",
            "",
            "",
        )
    owned = f["owned_3"]
    table.add_row(
        "ownership, 3 replicas (gauges)",
        " / ".join(str(owned[m]) for m in sorted(owned)),
        f"{n / 3:.0f} each",
        f"±{f['balance_max_deviation']:.1%}",
        *goal_cell(goals, "balance_max_deviation"),
    )
    rz, rb = f["owned_3_rendezvous"], f["owned_3_recorded_by"]
    table.add_row(
        "  a fair hash's σ at this N",
        f"±{f['balance_fair_sigma']:.1%}",
        "",
        "",
        "",
        "",
    )
    table.add_row(
        f"  rendezvous_owner | recordedBy (of the {f['round_size']} updated)",
        f"{' / '.join(str(rz[m]) for m in sorted(rz))} | "
        f"{' / '.join(str(rb[m]) for m in sorted(rb))}",
        "",
        f"{f['balance_recorded_by_mismatches']} differ",
        "",
        "",
    )
    for what, label in (("join", "a 4th member joins"), ("leave", "a member leaves")):
        table.add_row(
            f"Configs moved when {label} (stray)",
            f"{f[f'moved_fraction_on_{what}']:.3f} ({f[f'moved_stray_on_{what}']})",
            f"{f[f'moved_ideal_on_{what}']:.3f}",
            f"{f[f'moved_ratio_on_{what}']:.2f}×",
            *goal_cell(goals, f"moved_ratio_on_{what}"),
        )
        table.add_row(
            "  rendezvous over all uids / recordedBy ≠ rendezvous",
            f"{f[f'moved_fraction_on_{what}_rendezvous']:.3f} / "
            f"{f[f'moved_recorded_by_mismatches_on_{what}']}",
            "",
            "",
            "",
            "",
        )
    ttl = f["ttl_s"]
    table.add_row(
        f"takeover after SIGKILL p50, s (n={len(f['takeovers_s'])})",
        f"{f['takeover_p50_s']:.2f}",
        f"TTL {ttl}",
        "",
        *goal_cell(goals, "takeover_p50_s", " s"),
    )
    table.add_row(
        "takeover after SIGKILL max, s",
        f"{f['takeover_max_s']:.2f}",
        f"TTL {ttl}",
        "",
        *goal_cell(goals, "takeover_max_s", " s"),
    )
    table.add_row(
        "  every takeover, s", " ".join(f"{t:.2f}" for t in f["takeovers_s"]), "", "", "", ""
    )
    table.add_row(
        "status.observedGeneration went backwards, times",
        str(f["status_regressions"]),
        "0",
        "",
        "",
        "",
    )
    console.print(table)
    print_verdict(console, goals)


# --- entry point --------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="Replica benchmark: 1 vs 3 replicas, ownership, takeover (ratios).",
    )
    ap.add_argument("--quick", action="store_true", help="a smaller run (about 90 s)")
    ap.add_argument("--json", action="store_true", help="print only the JSON object")
    ap.add_argument("--json-file", help="also write the JSON object to this file")
    ap.add_argument("--configs", type=int, help="number of Configs (default 1000)")
    ap.add_argument("--takeovers", type=int, help="SIGKILL takeovers timed (default 5)")
    ap.add_argument("--sample", type=int, help="Configs updated after a join/leave (250)")
    ap.add_argument(
        "--round-size", type=int, help="Configs updated per throughput round (500; 0: all)"
    )
    ap.add_argument("--seed", type=int, default=None, help="seed of the takeover choices")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir with every log")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a goal is missed")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    p = QUICK if args.quick else DEFAULT
    if args.configs is not None:
        p = replace(p, configs=args.configs)
    if args.takeovers is not None:
        p = replace(p, takeovers=args.takeovers)
    if args.sample is not None:
        p = replace(p, sample=args.sample)
    if args.round_size is not None:
        p = replace(p, round_size=args.round_size)
    seed = args.seed if args.seed is not None else int(time.time())
    err = Console(stderr=True)

    def progress(text: str) -> None:
        if not args.json:
            err.log(text)

    started = time.monotonic()
    with Cluster(progress, keep=args.keep) as cluster:
        figures = Bench(cluster, p, progress, seed).run()
    figures["elapsed_s"] = round(time.monotonic() - started, 1)
    goals = goal_results_replicas(figures)
    doc = json.dumps({**figures, "goals": goals}, indent=2)
    if args.json_file:
        with open(args.json_file, "w") as out:
            out.write(doc + "\n")
    if args.json:
        print(doc)
    else:
        render(Console(width=None if sys.stdout.isatty() else 130), figures, goals)
    return 1 if args.strict and not all(g["pass"] for g in goals.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
