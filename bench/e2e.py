#!/usr/bin/env python3
"""End-to-end benchmark: the etcdconfig operator on a real control plane.

One control plane (etcd + kube-apiserver + kube-controller-manager, started by
the benchmark in a temporary directory) and a separate etcd for the versioned
store. Two operators take turns on the same control plane, in the same run:

subject
    ``etcdconfig run`` (one replica, default settings), which for each change
    takes the Config's lock, validates, records a version in etcd with the
    fenced commit, posts an Event and patches status.
baseline
    ``bench/noop_operator.py``: a kopf operator with the same kopf version and
    settings style (progress and diff-base in status) whose only handler
    patches status with ``observedGeneration`` and ``Ready=True``.

Each side runs as a fresh process that watches only its own namespaces, so the
two never see each other's Configs and do exactly the same Kubernetes-side
work; with ``--rounds 2`` the sides run in the order baseline, subject,
subject, baseline (ABBA), so drift of a shared machine lands on both.

What is measured, per side
--------------------------
bulk: N Configs created at once → all Ready
    N Configs (about 1 KB of data each) are POSTed by 8 client threads into an
    empty namespace; the time runs from the first POST to the moment the watch
    sees the last of them recorded (``status.observedGeneration`` equal to the
    generation and ``Ready=True`` for that generation). ``bulk_ratio_vs_noop``
    = subject time / baseline time (pooled over rounds); goal ≤ 1.5×.
    CPU seconds of the operator process during the bulk are shown too.
memory with N Configs
    ``VmRSS`` of the operator process from ``/proc/PID/status`` once the bulk
    is done and the operator is idle, and again after the latency phase (its
    peak ``VmHWM`` is in the JSON). Goal for the subject: ≤ 150 MB (MB = 10^6
    bytes).
apply → recorded latency at a steady rate
    While the N Configs stay in place, 20 more Configs in a second namespace
    are updated round-robin at ``--rate`` updates/s (open loop: each update is
    sent on schedule by a small pool of client threads, whatever the earlier
    ones are doing) for ``--duration`` seconds. Latency = from the start of the
    PATCH request to the moment a cluster-wide watch on Configs receives the
    status saying that generation (or a later one) is recorded and Ready.
    Nearest-rank p50/p99 over every update. Goals (subject): p50 ≤ 250 ms,
    p99 ≤ 1 s; the baseline's figures show what kopf and the API server alone
    cost. Updates superseded by a later one before the operator recorded them
    (kopf merges events) are counted separately.

Usage::

    .venv/bin/python bench/e2e.py            # ~4 min: 1000 Configs, 20 s at 20 updates/s
    .venv/bin/python bench/e2e.py --quick    # ~90 s: 150 Configs, 8 s
    .venv/bin/python bench/e2e.py --json     # only the JSON object on stdout
    .venv/bin/python bench/e2e.py --mode both  # also the operator as a pod (root)

Pod mode
--------
``--mode pod`` or ``--mode both`` starts the control plane with a real node
(containerd, kubelet, kube-proxy: :mod:`etcdconfig.devenv`; needs root) and adds a
third side, ``pod``: ``etcdconfig`` installed by charts/etcdconfig with Helm, one
replica, the chart's default resources, the locally built image (pullPolicy
Never), RBAC (Roles) for the side's two namespaces only, the chart's CRD off (the
bench installs it) and the webhook off (the process subject has none: with it, the
API server's call to the webhook would be in the pod's latency). The pod reaches the
store etcd, which then also listens on the node IP (198.18.0.1). Its CPU and RSS are
read from /proc of the container's main process (host PID from ``crictl inspect``),
/metrics through the pod IP, the commit times from ``kubectl logs``. One Helm release
per round, uninstalled after it. The pod's figures carry the suffix ``_pod`` in the
JSON (``apply_recorded_p50_ms_pod``, ``bulk_ratio_vs_noop_pod`` …), against the same
baseline as the process subject in ``both``; the order per round is baseline, subject,
pod (reversed in even rounds). Without ``--mode`` (``process``) nothing changes.

The run exits 0 whatever the figures are; ``--strict`` makes it exit 1 when a
goal is missed. ``--keep`` keeps the temporary directory with every log.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from _cluster import (
    Cluster,
    Goals,
    PodOperator,
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
)

GOALS: Goals = {
    "apply_recorded_p50_ms": ("<=", 250.0),
    "apply_recorded_p99_ms": ("<=", 1000.0),
    "bulk_ratio_vs_noop": ("<=", 1.5),
    "rss_mb_1000": ("<=", 150.0),
}

LATENCY_CONFIGS = 20
SUBJECTS = {"process": ("subject",), "pod": ("pod",), "both": ("subject", "pod")}


@dataclass(frozen=True)
class Params:
    configs: int  # Configs created at once in the bulk phase
    rate: float  # updates/s in the latency phase
    duration: float  # seconds of updates in the latency phase
    rounds: int  # 1: baseline then subject; 2: ABBA
    create_workers: int = 8
    settle: float = 3.0  # seconds of idle before reading RSS


DEFAULT = Params(configs=1000, rate=20.0, duration=20.0, rounds=1)
QUICK = Params(configs=150, rate=20.0, duration=8.0, rounds=1)


@dataclass
class SideResult:
    side: str
    bulk_seconds: float
    create_seconds: float
    bulk_cpu_s: float
    rss_mb: float
    rss_after_latency_mb: float
    rss_peak_mb: float
    latencies_ms: list[float]
    to_etcd_ms: list[float]
    to_status_ms: list[float]
    rss_start_mb: float
    rss_timeline: list[list[float]]
    superseded: int
    unrecorded: int
    sent: int
    send_lag_ms_max: float
    resync_during_latency: tuple[int, float]
    cpu_ms_per_update: float  # operator CPU during the latency phase / updates sent


class Bench:
    def __init__(
        self,
        cluster: Cluster,
        params: Params,
        progress: Callable[[str], None],
        subjects: Sequence[str] = ("subject",),
    ) -> None:
        self.c = cluster
        self.p = params
        self.progress = progress
        self.subjects = tuple(subjects)  # "subject" (process), "pod"
        self.prefix = f"/etcdconfig-bench-{uuid.uuid4().hex[:8]}"
        self.lat_ns = {
            "subject": "bench-lat-subject",
            "baseline": "bench-lat-baseline",
            "pod": "bench-lat-pod",
        }
        self.lat_names = [f"lat-{i:02d}" for i in range(LATENCY_CONFIGS)]

    def start_side(self, side: str, round_: int, bulk_ns: str) -> Process | PodOperator:
        proc: Process | PodOperator
        if side == "subject":
            proc = self.c.operator(
                f"etcdconfig-r{round_}", self.prefix, namespaces=[bulk_ns, self.lat_ns[side]]
            )
        elif side == "pod":
            proc = self.c.pod_operator(
                f"etcdconfig-pod-r{round_}",
                f"{self.prefix}-pod",
                namespaces=[bulk_ns, self.lat_ns[side]],
            )
        else:
            proc = self.c.noop_operator(bulk_ns)
            proc.cmd[proc.cmd.index("--namespace") : proc.cmd.index("--namespace")] = [
                "--namespace",
                self.lat_ns[side],
            ]
            proc.name = f"noop-r{round_}"
        proc.start()
        # warm-up and proof of life: a probe Config in each namespace is recorded
        self.c.probe(bulk_ns)
        self.c.probe(self.lat_ns[side])
        return proc

    def run_side(self, side: str, round_: int) -> SideResult:
        c, p = self.c, self.p
        bulk_ns = f"bench-{side}-{round_}"
        c.api.create_namespace(bulk_ns)
        if round_ == 1:
            c.api.create_namespace(self.lat_ns[side])
        self.progress(f"{side}, round {round_}: starting the operator")
        proc = self.start_side(side, round_, bulk_ns)
        try:
            with RssSampler(proc.pid) as sampler:
                rss_start, _ = rss_mb(proc.pid)
                if round_ == 1:  # the latency Configs, once per side
                    parallel(
                        lambda n: c.api.create_config(self.lat_ns[side], n, config_data(0)),
                        self.lat_names,
                    )
                    c.watch.wait_recorded(self.lat_ns[side], self.lat_names, 1, 120)

                self.progress(f"{side}, round {round_}: {p.configs} Configs created at once")
                names = [f"cfg-{i:04d}" for i in range(p.configs)]
                cpu0 = cpu_seconds(proc.pid)
                started = time.monotonic()
                parallel(
                    lambda n: c.api.create_config(bulk_ns, n, config_data(int(n[4:]))),
                    names,
                    workers=p.create_workers,
                )
                created = time.monotonic()
                done = c.watch.wait_recorded(bulk_ns, names, 1, timeout=max(300, p.configs))
                proc.check_alive()
                bulk_cpu = cpu_seconds(proc.pid) - cpu0
                time.sleep(p.settle)  # let the operator go idle before reading its memory
                rss, _ = rss_mb(proc.pid)

                self.progress(
                    f"{side}, round {round_}: {p.rate:g} updates/s for {p.duration:g} s "
                    f"on {LATENCY_CONFIGS} Configs"
                )
                m0 = proc.metrics() if side != "baseline" else {}
                cpu1 = cpu_seconds(proc.pid)
                # read when the phase is over: a pod's log is fetched at that moment
                lat = self.latency(
                    self.lat_ns[side], (lambda: proc.log_path) if side != "baseline" else None
                )
                proc.check_alive()
                lat_cpu = cpu_seconds(proc.pid) - cpu1
                m1 = proc.metrics() if side != "baseline" else {}
                rss_after, peak = rss_mb(proc.pid)
        finally:
            proc.stop()
        return SideResult(
            side=side,
            bulk_seconds=done - started,
            create_seconds=created - started,
            bulk_cpu_s=bulk_cpu,
            rss_mb=rss,
            rss_start_mb=rss_start,
            rss_timeline=sampler.timeline(),
            rss_after_latency_mb=rss_after,
            resync_during_latency=resync_delta(m0, m1),
            cpu_ms_per_update=lat_cpu * 1000 / max(1, lat["sent"]),
            rss_peak_mb=peak,
            **lat,
        )

    def latency(self, namespace: str, log: Callable[[], Path] | None) -> dict[str, Any]:
        """Open-loop updates at ``rate``/s; latency to the watch event of the status."""
        c, p = self.c, self.p
        total = int(p.rate * p.duration)
        interval = 1.0 / p.rate
        sends: list[tuple[str, int, float, float]] = []
        lock = threading.Lock()
        lags: list[float] = []
        nxt = iter(range(total))
        start = time.monotonic() + 0.2
        # the revision in the data makes every update a real change (a new generation)
        revision0 = int(time.time() * 1000)

        def worker() -> None:
            while True:
                with lock:
                    i = next(nxt, None)
                if i is None:
                    return
                due = start + i * interval
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)  # the schedule of the open-loop load
                name = self.lat_names[i % len(self.lat_names)]
                sent, sent_wall = time.monotonic(), time.time()
                gen = c.api.patch_data(namespace, name, config_data(i, revision0 + i))
                with lock:
                    sends.append((name, gen, sent, sent_wall))
                    lags.append(sent - due)

        # enough threads that a slow answer never delays the next send
        threads = [threading.Thread(target=worker, daemon=True) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        targets: dict[str, int] = {}
        for name, gen, _, _ in sends:
            targets[name] = max(targets.get(name, 0), gen)
        with contextlib.suppress(TimeoutError):  # the unrecorded ones are counted below
            c.watch.wait_recorded(namespace, list(targets), targets, timeout=60)
        latencies: list[float] = []
        to_etcd: list[float] = []  # PATCH start → version committed (the operator's log)
        to_status: list[float] = []  # version committed → status seen by the watch
        committed = committed_at(log(), namespace) if log is not None else {}
        wall_offset = time.time() - time.monotonic()
        superseded = unrecorded = 0
        for name, gen, sent, sent_wall in sends:
            key = (namespace, name)
            at = c.watch.recorded_at(key, gen)
            if at is None:
                unrecorded += 1
                latencies.append(float("inf"))
                continue
            latencies.append((at - sent) * 1000)
            if (name, gen) in committed:
                to_etcd.append((committed[name, gen] - sent_wall) * 1000)
                to_status.append((at + wall_offset - committed[name, gen]) * 1000)
            with c.watch.cond:
                gens = {g for _, g in c.watch.rises.get(key, [])}
            if gen not in gens:
                superseded += 1
        return {
            "latencies_ms": latencies,
            "to_etcd_ms": to_etcd,
            "to_status_ms": to_status,
            "superseded": superseded,
            "unrecorded": unrecorded,
            "sent": len(sends),
            "send_lag_ms_max": max(lags) * 1000 if lags else 0.0,
        }

    def run(self) -> dict[str, Any]:
        order = ["baseline", *self.subjects]
        plan: list[tuple[str, int]] = []
        for r in range(1, self.p.rounds + 1):
            plan += [(side, r) for side in (order if r % 2 else list(reversed(order)))]
        results = [self.run_side(side, r) for side, r in plan]
        f = figures_from(results, self.p, self.subjects)
        with self.c.watch.cond:
            regressions = dict(self.c.watch.regressions)
            f["status_regression_samples"] = list(self.c.watch.regression_samples)
        for side in (*self.subjects, "baseline"):
            key = figure_key(side, "status_regressions")
            f[key] = sum(n for ns, n in regressions.items() if side in ns)
        return f


def resync_delta(m0: dict[str, float], m1: dict[str, float]) -> tuple[int, float]:
    """(reconciles, seconds spent in them) by the resync loop between two scrapes."""
    count = 'etcdconfig_reconcile_duration_seconds_count{trigger="resync"}'
    total = 'etcdconfig_reconcile_duration_seconds_sum{trigger="resync"}'
    return int(m1.get(count, 0) - m0.get(count, 0)), m1.get(total, 0) - m0.get(total, 0)


def committed_at(log: Path, namespace: str) -> dict[tuple[str, int], float]:
    """(name, generation) → wall-clock time of the operator's ``recorded`` log line
    (written right after the commit transaction succeeded)."""
    out: dict[tuple[str, int], float] = {}
    for line in log.read_text(errors="replace").splitlines():
        if '"recorded"' not in line:
            continue
        with contextlib.suppress(ValueError, KeyError):
            rec = json.loads(line)
            ns, _, name = rec["config"].partition("/")
            if rec["msg"] == "recorded" and ns == namespace:
                ts = dt.datetime.fromisoformat(rec["ts"]).timestamp()
                out[name, int(rec["generation"])] = ts
    return out


def figure_key(side: str, name: str) -> str:
    """The JSON key of a figure of a side: ``name`` (process subject), ``noop_name``
    (baseline), ``name_pod`` (pod subject)."""
    return {"subject": name, "baseline": f"noop_{name}", "pod": f"{name}_pod"}[side]


def figures_from(
    results: Sequence[SideResult], p: Params, subjects: Sequence[str] = ("subject",)
) -> dict[str, Any]:
    f: dict[str, Any] = {"configs": p.configs, "rate": p.rate, "duration_s": p.duration}
    for side in (*subjects, "baseline"):
        rs = [r for r in results if r.side == side]
        lat = [x for r in rs for x in r.latencies_ms]

        def k(name: str, side: str = side) -> str:
            return figure_key(side, name)

        f[k("bulk_seconds")] = sum(r.bulk_seconds for r in rs) / len(rs)
        f[k("bulk_rounds_s")] = [round(r.bulk_seconds, 2) for r in rs]
        f[k("create_seconds")] = sum(r.create_seconds for r in rs) / len(rs)
        f[k("bulk_cpu_s")] = sum(r.bulk_cpu_s for r in rs) / len(rs)
        f[k("cpu_ms_per_update")] = sum(r.cpu_ms_per_update for r in rs) / len(rs)
        f[k("rss_mb")] = max(r.rss_mb for r in rs)
        f[k("rss_start_mb")] = max(r.rss_start_mb for r in rs)
        f[k("rss_timeline")] = rs[-1].rss_timeline  # [s since start, MB], last round
        f[k("rss_after_latency_mb")] = max(r.rss_after_latency_mb for r in rs)
        f[k("rss_peak_mb")] = max(r.rss_peak_mb for r in rs)
        f[k("apply_recorded_p50_ms")] = percentile(lat, 50)
        f[k("apply_recorded_p99_ms")] = percentile(lat, 99)
        f[k("apply_recorded_max_ms")] = max(lat) if lat else float("nan")
        f[k("updates_sent")] = sum(r.sent for r in rs)
        f[k("updates_superseded")] = sum(r.superseded for r in rs)
        f[k("updates_unrecorded")] = sum(r.unrecorded for r in rs)
        f[k("send_lag_ms_max")] = max(r.send_lag_ms_max for r in rs)
    for side in subjects:
        parts = [r for r in results if r.side == side]

        def k(name: str, side: str = side) -> str:
            return figure_key(side, name)

        to_etcd = [x for r in parts for x in r.to_etcd_ms]
        to_status = [x for r in parts for x in r.to_status_ms]
        f[k("resync_reconciles_during_latency")] = sum(r.resync_during_latency[0] for r in parts)
        f[k("resync_seconds_during_latency")] = sum(r.resync_during_latency[1] for r in parts)
        f[k("apply_to_etcd_p50_ms")] = percentile(to_etcd, 50)
        f[k("apply_to_etcd_p99_ms")] = percentile(to_etcd, 99)
        f[k("etcd_to_status_p50_ms")] = percentile(to_status, 50)
        f[k("etcd_to_status_p99_ms")] = percentile(to_status, 99)
        # the goal's name; with --configs N it is N Configs
        f[k("rss_mb_1000")] = f[k("rss_mb")]
        f[k("bulk_ratio_vs_noop")] = f[k("bulk_seconds")] / f["noop_bulk_seconds"]
        f[k("bulk_cpu_ratio_vs_noop")] = f[k("bulk_cpu_s")] / max(f["noop_bulk_cpu_s"], 1e-9)
        f[k("apply_p50_ratio_vs_noop")] = (
            f[k("apply_recorded_p50_ms")] / f["noop_apply_recorded_p50_ms"]
        )
        f[k("apply_p99_ratio_vs_noop")] = (
            f[k("apply_recorded_p99_ms")] / f["noop_apply_recorded_p99_ms"]
        )
    return f


def side_view(f: dict[str, Any], side: str) -> dict[str, Any]:
    """The figures with the pod subject's under the process subject's names (for render)."""
    if side == "subject":
        return f
    return {**f, **{key[: -len("_pod")]: v for key, v in f.items() if key.endswith("_pod")}}


def goals_for(subjects: Sequence[str]) -> Goals:
    return {figure_key(side, key): g for side in subjects for key, g in GOALS.items()}


# --- report -------------------------------------------------------------------------------------


def render(
    console: Console, f: dict[str, Any], goals: dict[str, dict[str, Any]], label: str = ""
) -> None:
    n = f["configs"]
    table = new_table(
        f"etcdconfig end-to-end benchmark{label} — 1 replica, {n} Configs, {f['elapsed_s']} s",
        (
            "baseline: bench/noop_operator.py (kopf, same settings style, only patches status), "
            "same control plane, same run, own namespaces; latency: PATCH start → watch event "
            f"of status recorded+Ready, {f['rate']:g} updates/s for {f['duration_s']:g} s on "
            f"{LATENCY_CONFIGS} Configs while the {n} stay; RSS = VmRSS after the bulk, idle"
        ),
        ["figure", "etcdconfig", "no-op kopf", "ratio"],
    )
    sent = f["updates_sent"]
    table.add_row(
        f"apply → recorded p50, ms (n={sent})",
        f"{f['apply_recorded_p50_ms']:.0f}",
        f"{f['noop_apply_recorded_p50_ms']:.0f}",
        f"{f['apply_p50_ratio_vs_noop']:.2f}×",
        *goal_cell(goals, "apply_recorded_p50_ms", " ms"),
    )
    table.add_row(
        f"apply → recorded p99, ms (n={sent})",
        f"{f['apply_recorded_p99_ms']:.0f}",
        f"{f['noop_apply_recorded_p99_ms']:.0f}",
        f"{f['apply_p99_ratio_vs_noop']:.2f}×",
        *goal_cell(goals, "apply_recorded_p99_ms", " ms"),
    )
    table.add_row(
        "  max, ms / superseded / unrecorded",
        f"{f['apply_recorded_max_ms']:.0f} / {f['updates_superseded']} / {f['updates_unrecorded']}",
        f"{f['noop_apply_recorded_max_ms']:.0f} / {f['noop_updates_superseded']} / "
        f"{f['noop_updates_unrecorded']}",
        "",
        "",
        "",
    )
    table.add_row(
        "  PATCH → version in etcd p50 / p99, ms",
        f"{f['apply_to_etcd_p50_ms']:.0f} / {f['apply_to_etcd_p99_ms']:.0f}",
        "",
        "",
        "",
        "",
    )
    table.add_row(
        "  version in etcd → status seen p50 / p99, ms",
        f"{f['etcd_to_status_p50_ms']:.0f} / {f['etcd_to_status_p99_ms']:.0f}",
        "",
        "",
        "",
        "",
    )
    table.add_row(
        "  operator CPU per update during the phase, ms",
        f"{f['cpu_ms_per_update']:.1f}",
        f"{f['noop_cpu_ms_per_update']:.1f}",
        f"{f['cpu_ms_per_update'] / max(f['noop_cpu_ms_per_update'], 1e-9):.2f}×",
        "",
        "",
    )
    table.add_row(
        "  resync reconciles during the phase (sum of their s)",
        f"{f['resync_reconciles_during_latency']} ({f['resync_seconds_during_latency']:.1f})",
        "",
        "",
        "",
        "",
    )
    table.add_row(
        "  status.observedGeneration went backwards, times",
        str(f["status_regressions"]),
        str(f["noop_status_regressions"]),
        "",
        "",
        "",
    )
    table.add_row(
        f"{n} Configs created → all Ready, s",
        f"{f['bulk_seconds']:.1f}",
        f"{f['noop_bulk_seconds']:.1f}",
        f"{f['bulk_ratio_vs_noop']:.2f}×",
        *goal_cell(goals, "bulk_ratio_vs_noop", "×"),
    )
    table.add_row(
        "  of which the POSTs, s",
        f"{f['create_seconds']:.1f}",
        f"{f['noop_create_seconds']:.1f}",
        "",
        "",
        "",
    )
    table.add_row(
        "  operator CPU during the bulk, s",
        f"{f['bulk_cpu_s']:.1f}",
        f"{f['noop_bulk_cpu_s']:.1f}",
        f"{f['bulk_cpu_ratio_vs_noop']:.2f}×",
        "",
        "",
    )
    table.add_row(
        f"operator RSS with {n} Configs, MB",
        f"{f['rss_mb']:.0f}",
        f"{f['noop_rss_mb']:.0f}",
        f"{f['rss_mb'] / f['noop_rss_mb']:.2f}×",
        *goal_cell(goals, "rss_mb_1000", " MB"),
    )
    table.add_row(
        "  at start (0 Configs, warmed up), MB",
        f"{f['rss_start_mb']:.0f}",
        f"{f['noop_rss_start_mb']:.0f}",
        "",
        "",
        "",
    )
    table.add_row(
        "  after the latency phase / peak, MB",
        f"{f['rss_after_latency_mb']:.0f} / {f['rss_peak_mb']:.0f}",
        f"{f['noop_rss_after_latency_mb']:.0f} / {f['noop_rss_peak_mb']:.0f}",
        "",
        "",
        "",
    )
    console.print(table)
    print_verdict(console, goals)


COMPARED = [
    ("apply → recorded p50, ms", "apply_recorded_p50_ms", "{:.0f}"),
    ("apply → recorded p99, ms", "apply_recorded_p99_ms", "{:.0f}"),
    ("  ratio p50 / p99 vs no-op", None, ""),
    ("  PATCH → version in etcd p50, ms", "apply_to_etcd_p50_ms", "{:.0f}"),
    ("  operator CPU per update, ms", "cpu_ms_per_update", "{:.1f}"),
    ("Configs created → all Ready, s", "bulk_seconds", "{:.1f}"),
    ("  ratio vs no-op", "bulk_ratio_vs_noop", "{:.2f}×"),
    ("  operator CPU during the bulk, s", "bulk_cpu_s", "{:.1f}"),
    ("operator RSS with the Configs, MB", "rss_mb", "{:.0f}"),
    ("  at start / peak, MB", None, ""),
]


def render_both(console: Console, f: dict[str, Any]) -> None:
    """The process and the pod subject side by side (same run, same baseline)."""
    table = Table(
        title=f"process vs pod — {f['configs']} Configs, same run",
        caption="process: `etcdconfig run` on the host; pod: the chart's Deployment (1 replica, "
        "default resources, webhook off) on the devenv node; no-op: the same baseline",
        caption_justify="left",
    )
    for i, column in enumerate(["figure", "process", "pod", "no-op"]):
        table.add_column(column, justify="left" if i == 0 else "right")

    def cell(key: str, fmt: str, side: str) -> str:
        value = f.get(figure_key(side, key))
        return "" if value is None else fmt.format(value)

    for title, key, fmt in COMPARED:
        if key is not None:
            row = [cell(key, fmt, s) for s in ("subject", "pod", "baseline")]
        elif title.startswith("  ratio p50"):
            row = [
                f"{f[figure_key(s, 'apply_p50_ratio_vs_noop')]:.2f}× / "
                f"{f[figure_key(s, 'apply_p99_ratio_vs_noop')]:.2f}×"
                for s in ("subject", "pod")
            ] + [""]
        else:
            row = [
                f"{f[figure_key(s, 'rss_start_mb')]:.0f} / {f[figure_key(s, 'rss_peak_mb')]:.0f}"
                for s in ("subject", "pod", "baseline")
            ]
        table.add_row(title, *row)
    console.print(table)


# --- entry point --------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="End-to-end benchmark: etcdconfig vs a no-op kopf operator (ratios).",
    )
    ap.add_argument("--quick", action="store_true", help="a smaller run (about 90 s)")
    ap.add_argument("--json", action="store_true", help="print only the JSON object")
    ap.add_argument("--json-file", help="also write the JSON object to this file")
    ap.add_argument("--configs", type=int, help="Configs created at once (default 1000)")
    ap.add_argument("--rate", type=float, help="updates/s in the latency phase (default 20)")
    ap.add_argument("--duration", type=float, help="seconds of updates (default 20)")
    ap.add_argument("--rounds", type=int, help="1: baseline, subject; 2: ABBA (default 1)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir with every log")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a goal is missed")
    ap.add_argument(
        "--mode",
        choices=("process", "pod", "both"),
        default="process",
        help="the subject as a process (default), as a pod installed by the chart on a "
        "devenv node (root), or both in the same run",
    )
    return ap.parse_args(argv)


def params_from(args: argparse.Namespace) -> Params:
    p = QUICK if args.quick else DEFAULT
    for name in ("configs", "rate", "duration", "rounds"):
        value = getattr(args, name)
        if value is not None:
            p = replace(p, **{name: value})
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    params = params_from(args)
    err = Console(stderr=True)

    def progress(text: str) -> None:
        if not args.json:
            err.log(text)

    subjects = SUBJECTS[args.mode]
    started = time.monotonic()
    with Cluster(progress, keep=args.keep, node=args.mode != "process") as cluster:
        figures = Bench(cluster, params, progress, subjects).run()
    figures["elapsed_s"] = round(time.monotonic() - started, 1)
    if args.mode != "process":
        figures["mode"] = args.mode
    goals = goal_results(figures, goals_for(subjects))
    doc = json.dumps({**figures, "goals": goals}, indent=2)
    if args.json_file:
        with open(args.json_file, "w") as out:
            out.write(doc + "\n")
    if args.json:
        print(doc)
    else:
        console = Console(width=None if sys.stdout.isatty() else 130)
        for side in subjects:
            view = side_view(figures, side)
            label = " (pod)" if side == "pod" else (" (process)" if len(subjects) > 1 else "")
            side_goals = {key: goals[figure_key(side, key)] for key in GOALS}
            render(console, view, side_goals, label)
        if len(subjects) > 1:
            render_both(console, figures)
    return 1 if args.strict and not all(g["pass"] for g in goals.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
