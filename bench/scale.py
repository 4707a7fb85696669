#!/usr/bin/env python3
"""Scale: the operator at 1,000, 5,000 and 10,000 Configs against the no-op kopf operator.

One control plane and one store etcd (:class:`bench._cluster.Cluster`). For each N,
smallest first, each side runs as a fresh process on two fresh namespaces of its own
(N Configs in one, the 20 latency Configs in the other), so every N is measured from a
cold start, and the two sides do the same Kubernetes-side work:

bulk
    N Configs POSTed at once → all recorded and Ready (seconds, operator CPU); the
    ratio against the no-op operator is the bulk goal (≤ 1.5× at 1,000 and 10,000).
memory
    VmRSS once the bulk is done and the operator idle; RSS per Config above the
    warmed-up start, and the slope over the Ns (least squares, KB per added Config)
    for both sides; goal: RSS at the largest N ≤ 1.3× the no-op's.
a resync round, deliberately overlapped (etcdconfig only)
    The subject's resync loop runs with the product's defaults (a round every 60 s,
    the settled skipped, a tenth of them checked in full). The bench waits for the
    first round that starts after the bulk (its log line ``resync round started``) and
    starts the latency phase at that moment: apply → recorded p50/p99 at 20 updates/s
    while the round reconciles (goal p99 ≤ 1 s). The round's own duration, owned and
    reconciled Configs come from its ``resync round done`` line (goal ≤ 60 s); so does
    the next, steady round's.
apply → recorded, quiet
    The same latency phase right after that round ended (no round runs during it):
    p50/p99 for both sides (goal p99 ≤ 1 s).
soak (the largest N, etcdconfig only; ``--soak`` seconds, 600 by default)
    Updates at ``--soak-rate``/s (status patches flowing) with RSS sampled every 5 s.
    A leak is memory that is never given back, so the figure is the slope of RSS's
    *floor* over the second half (the least RSS of each minute, MB per minute): the
    peaks of each resync round's listing come and go and would make the plain slope
    say whatever the last sample caught (kept as ``soak_rss_slope_mb_per_min``). kopf
    #1172 reported a leak with status patches. Latency over the soak is reported too.

Figures carry the N as a suffix (``rss_mb_10000``, ``noop_rss_mb_10000``,
``bulk_ratio_vs_noop_1000`` …); the no-op's are prefixed ``noop_``.

Usage::

    .venv/bin/python bench/scale.py                     # 1000,5000,10000; ~45 min
    .venv/bin/python bench/scale.py --configs 1000,3000 --soak 0
    .venv/bin/python bench/scale.py --quick             # 100,300; ~4 min
    .venv/bin/python bench/scale.py --json              # only the JSON object
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rich.console import Console

from _cluster import (
    Cluster,
    Goals,
    Process,
    RssSampler,
    config_data,
    cpu_seconds,
    goal_cell,
    goal_results,
    new_table,
    parallel,
    percentile,
    print_verdict,
    rss_mb,
    wait_until,
)
from e2e import LATENCY_CONFIGS, Bench, Params, resync_delta


@dataclass(frozen=True)
class ScaleParams:
    sizes: tuple[int, ...]
    rate: float = 20.0  # updates/s in the latency phases
    duration: float = 20.0  # seconds of each latency phase
    soak: float = 600.0  # seconds of the soak at the largest N (0: none)
    soak_rate: float = 2.0
    resync_interval: float | None = None  # None: the product's default (60 s)
    settle: float = 3.0


DEFAULT = ScaleParams(sizes=(1000, 5000, 10000))
QUICK = ScaleParams(sizes=(100, 300), duration=5.0, soak=30.0, resync_interval=10.0)


def goals_for(p: ScaleParams) -> Goals:
    top, low = max(p.sizes), min(p.sizes)
    goals: Goals = {
        f"rss_ratio_vs_noop_{top}": ("<=", 1.3),
        f"bulk_ratio_vs_noop_{low}": ("<=", 1.5),
        f"bulk_ratio_vs_noop_{top}": ("<=", 1.5),
        f"apply_recorded_p99_ms_{top}": ("<=", 1000.0),
        f"apply_recorded_p99_ms_resync_{top}": ("<=", 1000.0),
        f"resync_round_max_s_{top}": ("<=", 60.0),
    }
    if p.soak > 0:
        goals["soak_rss_floor_slope_mb_per_min"] = ("<=", 0.5)
    return goals


# --- the operator's resync rounds, from its log -------------------------------------------------


def round_lines(log: Path) -> list[dict[str, Any]]:
    """The ``resync round started`` / ``resync round done`` lines of a JSON log, with
    their wall-clock time as ``t``."""
    out: list[dict[str, Any]] = []
    if not log.exists():
        return out
    for line in log.read_text(errors="replace").splitlines():
        if '"resync round ' not in line:
            continue
        with contextlib.suppress(ValueError, KeyError):
            rec = json.loads(line)
            if rec["msg"] in ("resync round started", "resync round done"):
                rec["t"] = dt.datetime.fromisoformat(rec["ts"]).timestamp()
                out.append(rec)
    return out


def wait_round(log: Path, msg: str, after: float, timeout: float, proc: Process) -> dict[str, Any]:
    """The first line ``msg`` written at or after wall-clock ``after``."""

    def found() -> dict[str, Any] | None:
        proc.check_alive()
        return next((r for r in round_lines(log) if r["msg"] == msg and r["t"] >= after), None)

    hit: dict[str, Any] = wait_until(found, timeout, f"{msg!r} in {log.name}", interval=0.2)
    return hit


def done_of(log: Path, started: dict[str, Any], timeout: float, proc: Process) -> dict[str, Any]:
    """The ``resync round done`` line of the round ``started`` opened."""

    def found() -> dict[str, Any] | None:
        proc.check_alive()
        return next(
            (
                r
                for r in round_lines(log)
                if r["msg"] == "resync round done" and r["round"] == started["round"]
            ),
            None,
        )

    what = f"the end of resync round {started['round']}"
    hit: dict[str, Any] = wait_until(found, timeout, what, interval=0.2)
    return hit


# --- one side at one N --------------------------------------------------------------------------


class Scale:
    def __init__(self, cluster: Cluster, p: ScaleParams, progress: Callable[[str], None]) -> None:
        self.c = cluster
        self.p = p
        self.progress = progress
        self.bench = Bench(
            cluster, Params(configs=0, rate=p.rate, duration=p.duration, rounds=1), progress
        )

    def start(self, side: str, n: int, bulk_ns: str, lat_ns: str) -> Process:
        c = self.c
        if side == "subject":
            proc = c.operator(
                f"etcdconfig-{n}",
                f"{self.bench.prefix}-{n}",
                namespaces=[bulk_ns, lat_ns],
                resync_interval=self.p.resync_interval,
            )
        else:
            proc = c.noop_operator(bulk_ns)
            at = proc.cmd.index("--namespace")
            proc.cmd[at:at] = ["--namespace", lat_ns]
            proc.name = f"noop-{n}"
        proc.start()
        c.probe(bulk_ns)  # proof of life and warm-up
        c.probe(lat_ns)
        return proc

    def latency(self, lat_ns: str, proc: Process, rate: float, duration: float) -> dict[str, Any]:
        self.bench.p = replace(self.bench.p, rate=rate, duration=duration)
        log = (lambda: proc.log_path) if proc.name.startswith("etcdconfig") else None
        return self.bench.latency(lat_ns, log)

    def side(self, side: str, n: int) -> dict[str, Any]:
        c, p = self.c, self.p
        tag = "etcdconfig" if side == "subject" else "no-op"
        bulk_ns, lat_ns = f"scale-{side}-{n}", f"scale-lat-{side}-{n}"
        c.api.create_namespace(bulk_ns)
        c.api.create_namespace(lat_ns)
        self.progress(f"{tag}, {n} Configs: starting the operator")
        proc = self.start(side, n, bulk_ns, lat_ns)
        out: dict[str, Any] = {}
        try:
            lat_names = self.bench.lat_names
            parallel(lambda name: c.api.create_config(lat_ns, name, config_data(0)), lat_names)
            c.watch.wait_recorded(lat_ns, lat_names, 1, 120)
            time.sleep(p.settle)  # idle before the warmed-up RSS is read
            out["rss_start_mb"] = rss_mb(proc.pid)[0]

            self.progress(f"{tag}, {n} Configs: created at once")
            names = [f"cfg-{i:05d}" for i in range(n)]
            m0 = proc.metrics() if side == "subject" else {}
            cpu0, started = cpu_seconds(proc.pid), time.monotonic()
            parallel(
                lambda name: c.api.create_config(bulk_ns, name, config_data(int(name[4:]))), names
            )
            c.watch.wait_recorded(bulk_ns, names, 1, timeout=max(300, n * 0.1))
            out["bulk_seconds"] = time.monotonic() - started
            out["bulk_cpu_s"] = cpu_seconds(proc.pid) - cpu0
            bulk_done = time.time()
            if side == "subject":
                out["resync_during_bulk"] = resync_delta(m0, proc.metrics())
            proc.check_alive()
            time.sleep(p.settle)  # idle before RSS is read
            out["rss_mb"] = rss_mb(proc.pid)[0]

            if side == "subject":
                out.update(self.rounds(proc, lat_ns, bulk_done, n))
            else:
                self.progress(f"{tag}, {n} Configs: {p.rate:g} updates/s for {p.duration:g} s")
                out["quiet"] = self.latency(lat_ns, proc, p.rate, p.duration)
            proc.check_alive()
            out["rss_after_mb"], out["rss_peak_mb"] = rss_mb(proc.pid)
            if side == "subject" and p.soak > 0 and n == max(p.sizes):
                out["soak"] = self.soak(proc, lat_ns)
        finally:
            proc.stop()
        return out

    def rounds(self, proc: Process, lat_ns: str, bulk_done: float, n: int) -> dict[str, Any]:
        """The latency phase during the first resync round after the bulk, that round's
        and the next round's figures, and a latency phase between the two."""
        p, log = self.p, proc.log_path
        interval = p.resync_interval or 60.0
        patience = 2 * interval + max(120.0, n * 0.02)
        self.progress(f"etcdconfig, {n} Configs: waiting for a resync round to start")
        first = wait_round(log, "resync round started", bulk_done, patience, proc)
        self.progress(
            f"etcdconfig, {n} Configs: round {first['round']} started; "
            f"{p.rate:g} updates/s for {p.duration:g} s during it"
        )
        m0 = proc.metrics()
        during = self.latency(lat_ns, proc, p.rate, p.duration)
        m1 = proc.metrics()
        first_done = done_of(log, first, patience, proc)
        overlapped = first_done["t"] - first["t"]
        self.progress(
            f"etcdconfig, {n} Configs: round {first['round']} took "
            f"{first_done['seconds']:.1f} s ({first_done['reconciled']} of "
            f"{first_done['owned']} reconciled); {p.duration:g} s of updates with no round"
        )
        quiet = self.latency(lat_ns, proc, p.rate, p.duration)
        quiet_ok = not any(
            r["msg"] == "resync round started" and r["round"] > first["round"]
            for r in round_lines(log)
            if r["t"] <= time.time()
        )
        steady_start = wait_round(log, "resync round started", first_done["t"], patience, proc)
        steady = done_of(log, steady_start, patience, proc)
        count = 'etcdconfig_reconcile_duration_seconds_count{trigger="resync"}'
        return {
            "during": during,
            "resync_reconciles_during": int(m1.get(count, 0) - m0.get(count, 0)),
            "round_overlap_s": overlapped,
            "quiet": quiet,
            "quiet_without_round": quiet_ok,
            "round_first": {k: first_done[k] for k in ("seconds", "owned", "reconciled")},
            "round_steady": {k: steady[k] for k in ("seconds", "owned", "reconciled")},
        }

    def soak(self, proc: Process, lat_ns: str) -> dict[str, Any]:
        p = self.p
        self.progress(
            f"etcdconfig: soak, {p.soak_rate:g} updates/s for {p.soak:g} s, RSS every 5 s"
        )
        with RssSampler(proc.pid, interval=5.0) as sampler:
            lat = self.latency(lat_ns, proc, p.soak_rate, p.soak)
        samples = sampler.samples
        return {
            "latency": lat,
            "rss_first_mb": samples[0][1] if samples else math.nan,
            "rss_last_mb": samples[-1][1] if samples else math.nan,
            "rss_max_mb": sampler.max_mb,
            "slope_mb_per_min": rss_slope(samples),
            "floor_slope_mb_per_min": rss_floor_slope(samples),
            "timeline": sampler.timeline(every=30.0),
        }

    def run(self) -> dict[str, Any]:
        results: dict[int, dict[str, dict[str, Any]]] = {}
        for n in sorted(self.p.sizes):
            results[n] = {side: self.side(side, n) for side in ("baseline", "subject")}
        return figures_from(results, self.p)


# --- figures ------------------------------------------------------------------------------------


def rss_slope(samples: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of RSS over the second half of ``samples``, MB per minute: a
    leak is a slope that does not flatten once the working set is reached."""
    half = list(samples[len(samples) // 2 :])
    return slope([t for t, _ in half], [m for _, m in half]) * 60 if len(half) >= 2 else 0.0


def rss_floor_slope(samples: Sequence[tuple[float, float]], window: float = 60.0) -> float:
    """Least-squares slope of the least RSS of each ``window`` seconds over the second
    half of ``samples``, MB per minute: what is never given back, without the peaks of
    transient work."""
    half = list(samples[len(samples) // 2 :])
    if not half:
        return 0.0
    start = half[0][0]
    floors: dict[int, tuple[float, float]] = {}
    for t, mb in half:
        k = int((t - start) // window)
        if k not in floors or mb < floors[k][1]:
            floors[k] = (t, mb)
    points = sorted(floors.values())
    if len(points) < 2:
        return 0.0
    return slope([t for t, _ in points], [m for _, m in points]) * 60


def slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0


def latency_figures(f: dict[str, Any], key: str, lat: dict[str, Any]) -> None:
    ms = lat["latencies_ms"]
    f[f"apply_recorded_p50_ms{key}"] = percentile(ms, 50)
    f[f"apply_recorded_p99_ms{key}"] = percentile(ms, 99)
    f[f"updates_sent{key}"] = lat["sent"]
    f[f"updates_unrecorded{key}"] = lat["unrecorded"]


def figures_from(results: dict[int, dict[str, dict[str, Any]]], p: ScaleParams) -> dict[str, Any]:
    f: dict[str, Any] = {
        "sizes": sorted(results),
        "rate": p.rate,
        "duration_s": p.duration,
        "resync_interval_s": p.resync_interval or 60.0,
    }
    for n, sides in sorted(results.items()):
        s, b = sides["subject"], sides["baseline"]
        for prefix, r in (("", s), ("noop_", b)):
            f[f"{prefix}rss_mb_{n}"] = r["rss_mb"]
            f[f"{prefix}rss_start_mb_{n}"] = r["rss_start_mb"]
            f[f"{prefix}rss_peak_mb_{n}"] = r["rss_peak_mb"]
            f[f"{prefix}rss_kb_per_config_{n}"] = (r["rss_mb"] - r["rss_start_mb"]) * 1e3 / n
            f[f"{prefix}bulk_seconds_{n}"] = r["bulk_seconds"]
            f[f"{prefix}bulk_cpu_s_{n}"] = r["bulk_cpu_s"]
            f[f"{prefix}cpu_ms_per_config_{n}"] = r["bulk_cpu_s"] * 1e3 / n
        latency_figures(f, f"_{n}", s["quiet"])
        b_ms = b["quiet"]["latencies_ms"]
        f[f"noop_apply_recorded_p50_ms_{n}"] = percentile(b_ms, 50)
        f[f"noop_apply_recorded_p99_ms_{n}"] = percentile(b_ms, 99)
        latency_figures(f, f"_resync_{n}", s["during"])
        f[f"resync_reconciles_during_{n}"] = s["resync_reconciles_during"]
        f[f"resync_reconciles_during_bulk_{n}"] = s["resync_during_bulk"][0]
        f[f"resync_seconds_during_bulk_{n}"] = s["resync_during_bulk"][1]
        f[f"quiet_without_round_{n}"] = s["quiet_without_round"]
        for which in ("first", "steady"):
            r = s[f"round_{which}"]
            f[f"resync_round_{which}_s_{n}"] = r["seconds"]
            f[f"resync_round_{which}_reconciled_{n}"] = r["reconciled"]
            f[f"resync_round_{which}_owned_{n}"] = r["owned"]
        f[f"resync_round_max_s_{n}"] = max(
            s["round_first"]["seconds"], s["round_steady"]["seconds"]
        )
        f[f"rss_ratio_vs_noop_{n}"] = s["rss_mb"] / b["rss_mb"]
        f[f"bulk_ratio_vs_noop_{n}"] = s["bulk_seconds"] / b["bulk_seconds"]
        f[f"bulk_cpu_ratio_vs_noop_{n}"] = s["bulk_cpu_s"] / max(b["bulk_cpu_s"], 1e-9)
        if "soak" in s:
            soak = s["soak"]
            f["soak_configs"] = n
            f["soak_seconds"] = p.soak
            f["soak_rate"] = p.soak_rate
            f["soak_rss_first_mb"] = soak["rss_first_mb"]
            f["soak_rss_last_mb"] = soak["rss_last_mb"]
            f["soak_rss_max_mb"] = soak["rss_max_mb"]
            f["soak_rss_slope_mb_per_min"] = soak["slope_mb_per_min"]
            f["soak_rss_floor_slope_mb_per_min"] = soak["floor_slope_mb_per_min"]
            f["soak_rss_timeline"] = soak["timeline"]
            latency_figures(f, "_soak", soak["latency"])
    sizes = sorted(results)
    if len(sizes) >= 2:
        for prefix in ("", "noop_"):
            ys = [f[f"{prefix}rss_mb_{n}"] * 1e3 for n in sizes]  # KB
            f[f"{prefix}rss_slope_kb_per_config"] = slope([float(n) for n in sizes], ys)
    return f


# --- report -------------------------------------------------------------------------------------


def render(console: Console, f: dict[str, Any], goals: dict[str, dict[str, Any]]) -> None:
    sizes = f["sizes"]

    def cell(goal_key: str) -> list[str]:
        return list(goal_cell(goals, goal_key)) if goal_key in goals else ["", ""]

    for n in sizes:
        table = new_table(
            f"etcdconfig at {n} Configs — 1 replica, {f['elapsed_s']} s in all",
            (
                "baseline: bench/noop_operator.py (kopf, only patches status), same control "
                "plane, same run, fresh processes and namespaces per N; RSS = VmRSS after "
                f"the bulk, idle; latency: PATCH → status recorded+Ready seen, {f['rate']:g}/s "
                f"for {f['duration_s']:g} s on {LATENCY_CONFIGS} Configs while the {n} stay; "
                f"resync every {f['resync_interval_s']:g} s"
                + (" (the product's default)" if f["resync_interval_s"] == 60 else "")
            ),
            ["figure", "etcdconfig", "no-op kopf", "ratio"],
        )
        table.add_row(
            f"RSS with {n} Configs, MB",
            f"{f[f'rss_mb_{n}']:.0f}",
            f"{f[f'noop_rss_mb_{n}']:.0f}",
            f"{f[f'rss_ratio_vs_noop_{n}']:.2f}×",
            *cell(f"rss_ratio_vs_noop_{n}"),
        )
        table.add_row(
            "  per Config above the warmed-up start, KB",
            f"{f[f'rss_kb_per_config_{n}']:.1f}",
            f"{f[f'noop_rss_kb_per_config_{n}']:.1f}",
            "",
            "",
            "",
        )
        table.add_row(
            "  at start / peak, MB",
            f"{f[f'rss_start_mb_{n}']:.0f} / {f[f'rss_peak_mb_{n}']:.0f}",
            f"{f[f'noop_rss_start_mb_{n}']:.0f} / {f[f'noop_rss_peak_mb_{n}']:.0f}",
            "",
            "",
            "",
        )
        table.add_row(
            f"{n} created → all Ready, s",
            f"{f[f'bulk_seconds_{n}']:.1f}",
            f"{f[f'noop_bulk_seconds_{n}']:.1f}",
            f"{f[f'bulk_ratio_vs_noop_{n}']:.2f}×",
            *cell(f"bulk_ratio_vs_noop_{n}"),
        )
        table.add_row(
            "  operator CPU per Config created, ms",
            f"{f[f'cpu_ms_per_config_{n}']:.2f}",
            f"{f[f'noop_cpu_ms_per_config_{n}']:.2f}",
            f"{f[f'bulk_cpu_ratio_vs_noop_{n}']:.2f}×",
            "",
            "",
        )
        table.add_row(
            "  resync reconciles during the bulk (sum of their s)",
            f"{f[f'resync_reconciles_during_bulk_{n}']} "
            f"({f[f'resync_seconds_during_bulk_{n}']:.1f})",
            "",
            "",
            "",
            "",
        )
        table.add_row(
            "apply → recorded p50 / p99, ms, no round running",
            f"{f[f'apply_recorded_p50_ms_{n}']:.0f} / {f[f'apply_recorded_p99_ms_{n}']:.0f}",
            f"{f[f'noop_apply_recorded_p50_ms_{n}']:.0f} / "
            f"{f[f'noop_apply_recorded_p99_ms_{n}']:.0f}",
            "",
            *cell(f"apply_recorded_p99_ms_{n}"),
        )
        table.add_row(
            f"  during a resync round ({f[f'resync_reconciles_during_{n}']} resync reconciles)",
            f"{f[f'apply_recorded_p50_ms_resync_{n}']:.0f} / "
            f"{f[f'apply_recorded_p99_ms_resync_{n}']:.0f}",
            "",
            "",
            *cell(f"apply_recorded_p99_ms_resync_{n}"),
        )
        for which, title in (("first", "first after the bulk"), ("steady", "the next")):
            table.add_row(
                f"resync round, {title}: s (reconciled of owned)",
                f"{f[f'resync_round_{which}_s_{n}']:.1f} "
                f"({f[f'resync_round_{which}_reconciled_{n}']} of "
                f"{f[f'resync_round_{which}_owned_{n}']})",
                "",
                "",
                *(cell(f"resync_round_max_s_{n}") if which == "first" else ["", ""]),
            )
        console.print(table)
    if "rss_slope_kb_per_config" in f:
        console.print(
            f"RSS slope over {', '.join(map(str, sizes))} Configs: "
            f"{f['rss_slope_kb_per_config']:.1f} KB per added Config "
            f"(no-op kopf {f['noop_rss_slope_kb_per_config']:.1f} KB)"
        )
    if "soak_rss_floor_slope_mb_per_min" in f:
        console.print(
            f"soak at {f['soak_configs']} Configs, {f['soak_rate']:g} updates/s for "
            f"{f['soak_seconds']:g} s: RSS {f['soak_rss_first_mb']:.0f} → "
            f"{f['soak_rss_last_mb']:.0f} MB (max {f['soak_rss_max_mb']:.0f}); over the second "
            f"half the floor's slope {f['soak_rss_floor_slope_mb_per_min']:+.2f} MB/min (goal "
            f"≤ 0.5; all samples {f['soak_rss_slope_mb_per_min']:+.2f}); apply → recorded p50 / "
            f"p99 {f['apply_recorded_p50_ms_soak']:.0f} / "
            f"{f['apply_recorded_p99_ms_soak']:.0f} ms"
        )
    print_verdict(console, goals)


# --- entry point --------------------------------------------------------------------------------


def params_from(args: argparse.Namespace) -> ScaleParams:
    p = QUICK if args.quick else DEFAULT
    if args.configs:
        try:
            sizes = tuple(int(x) for x in args.configs.split(","))
        except ValueError:
            raise SystemExit(
                f"--configs: expected numbers separated by commas, got {args.configs!r}"
            ) from None
        if not sizes or min(sizes) <= 0:
            raise SystemExit(f"--configs: every size must be above 0, got {args.configs!r}")
        p = replace(p, sizes=sizes)
    for name in ("rate", "duration", "soak", "soak_rate", "resync_interval"):
        value = getattr(args, name)
        if value is not None:
            p = replace(p, **{name: value})
    return p


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Scale benchmark: etcdconfig at 1,000 / 5,000 / 10,000 Configs vs a "
        "no-op kopf operator (ratios, slopes, a resync round overlapped, a soak)."
    )
    ap.add_argument("--quick", action="store_true", help="100 and 300 Configs, a 30 s soak")
    ap.add_argument("--configs", help="sizes, comma-separated (default 1000,5000,10000)")
    ap.add_argument("--rate", type=float, help="updates/s in the latency phases (default 20)")
    ap.add_argument("--duration", type=float, help="seconds of each latency phase (default 20)")
    ap.add_argument("--soak", type=float, help="seconds of the soak at the largest N (default 600)")
    ap.add_argument("--soak-rate", type=float, help="updates/s during the soak (default 2)")
    ap.add_argument("--resync-interval", type=float, help="the operator's (default: its own, 60)")
    ap.add_argument("--json", action="store_true", help="print only the JSON object")
    ap.add_argument("--json-file", help="also write the JSON object to this file")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir with every log")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a goal is missed")
    args = ap.parse_args(argv)
    params = params_from(args)
    err = Console(stderr=True)

    def progress(text: str) -> None:
        if not args.json:
            err.log(text)

    started = time.monotonic()
    with Cluster(progress, keep=args.keep) as cluster:
        figures = Scale(cluster, params, progress).run()
    figures["elapsed_s"] = round(time.monotonic() - started, 1)
    goals = goal_results(figures, goals_for(params))
    doc = json.dumps({**figures, "goals": goals}, indent=2)
    if args.json_file:
        Path(args.json_file).write_text(doc + "\n")
    if args.json:
        print(doc)
    else:
        render(Console(width=None if sys.stdout.isatty() else 130), figures, goals)
    return 1 if args.strict and not all(g["pass"] for g in goals.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
