#!/usr/bin/env python3
"""Where the operator's memory goes: RSS against what Python holds and what glibc keeps.

One ``etcdconfig run`` (one replica, default settings but a short resync interval) on a
real control plane (:class:`bench._cluster.Cluster`), started under this file's
``--child`` wrapper, which turns on :mod:`tracemalloc` and answers "snapshot" requests
(a file in a directory both sides know) with:

- ``VmRSS`` split into anonymous and file-backed pages (``/proc/self/status``);
- what Python's allocators hold (``tracemalloc``: current and peak);
- what glibc's malloc holds (``mallinfo2``): in use, free inside its arenas, mmapped;
- the top allocation sites, and the same grouped by package (kopf, etcdconfig, grpc …);
- on the last snapshot, RSS again after ``malloc_trim(0)``: how much of RSS is free
  memory glibc had not returned.

The same run starts the no-op kopf operator (``bench/noop_operator.py``) on its own
namespace with the same number of Configs, untraced: its RSS at the same phases is the
baseline (the ratios ``*_vs_noop``).

Phases: ``idle`` (the operator up, one probe Config) → ``rest`` (N Configs created at
once, all recorded, the operator idle) → ``resync`` (two resync rounds over all N: full
rounds by default here, the product's steady state with ``--resync-full-every 10``)
→ ``updates`` (``--updates`` patches of the data spread over the N Configs, 20 per
second) → ``trimmed``.

tracemalloc costs CPU (allocations are ~2× slower) and some memory of its own (its
figure is reported: ``tracemalloc_overhead_mb``); the RSS figures therefore come with
it included, and the no-op baseline runs without it. Use this bench to find *what*
holds memory; ``bench/e2e.py`` measures *how much* without the tracer.

Usage::

    .venv/bin/python bench/memory.py                  # 2,000 Configs
    .venv/bin/python bench/memory.py --configs 5000 --frames 8 --json
    .venv/bin/python bench/memory.py --quick          # 300 Configs
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import linecache
import math
import os
import sys
import threading
import time
import tracemalloc
from collections import defaultdict
from pathlib import Path
from typing import Any

# --- the child: the operator under tracemalloc --------------------------------------------------


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        return libc
    except (OSError, AttributeError):
        return None


def _status_kb() -> dict[str, int]:
    out: dict[str, int] = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if rest.strip().endswith("kB"):
                out[key] = int(rest.split()[0])
    return out


MB = 1e6


def _package(filename: str) -> str:
    """A file's package, for grouping: ``etcdconfig``, ``kopf``, ``<stdlib>`` …"""
    parts = Path(filename).parts
    if "site-packages" in parts:
        rest = parts[parts.index("site-packages") + 1 :]
        return rest[0].removesuffix(".py") if rest else "?"
    if "etcdconfig" in parts:
        return "etcdconfig." + parts[parts.index("etcdconfig") + 1].removesuffix(".py")
    if filename.startswith("<"):
        return filename
    return "<stdlib:" + Path(filename).stem + ">"


def _memory(trim: bool) -> dict[str, Any]:
    """RSS (read first: before anything below allocates) and glibc's view of its heap."""
    status = _status_kb()
    out: dict[str, Any] = {
        "rss_mb": status["VmRSS"] * 1e3 / MB,
        "rss_anon_mb": status.get("RssAnon", 0) * 1e3 / MB,
        "rss_file_mb": status.get("RssFile", 0) * 1e3 / MB,
        "hwm_mb": status["VmHWM"] * 1e3 / MB,
        "threads": threading.active_count(),
    }
    libc = _libc()
    if libc is not None:
        mi = libc.mallinfo2()
        out["malloc_in_use_mb"] = (mi.uordblks + mi.hblkhd) / MB
        out["malloc_free_in_arenas_mb"] = mi.fordblks / MB
        out["malloc_mmapped_mb"] = mi.hblkhd / MB
        if trim:
            libc.malloc_trim(0)
            out["rss_after_trim_mb"] = _status_kb()["VmRSS"] * 1e3 / MB
    return out


def _snapshot(trim: bool, top: int) -> dict[str, Any]:
    out = _memory(trim)
    if not tracemalloc.is_tracing():
        return out
    snap = tracemalloc.take_snapshot().filter_traces(
        (tracemalloc.Filter(False, tracemalloc.__file__),)
    )
    current, peak = tracemalloc.get_traced_memory()
    sites = []
    for stat in snap.statistics("traceback")[:top]:
        frames = [
            f"{fr.filename}:{fr.lineno} {linecache.getline(fr.filename, fr.lineno).strip()[:80]}"
            for fr in list(stat.traceback)[:6]
        ]
        sites.append({"mb": round(stat.size / MB, 3), "count": stat.count, "frames": frames})
    by_package: dict[str, int] = defaultdict(int)
    for stat in snap.statistics("filename"):
        by_package[_package(stat.traceback[0].filename)] += stat.size
    out["traced_mb"] = current / MB
    out["traced_peak_mb"] = peak / MB
    out["tracemalloc_overhead_mb"] = tracemalloc.get_tracemalloc_memory() / MB
    out["by_package_mb"] = {
        k: round(v / MB, 3)
        for k, v in sorted(by_package.items(), key=lambda kv: -kv[1])
        if v >= 0.05 * MB
    }
    out["top_sites"] = sites
    return out


def _serve_snapshots(directory: Path, top: int) -> None:
    """Answer ``request-<label>[.trim]`` files with ``result-<label>.json`` (atomically)."""
    while True:
        for req in sorted(directory.glob("request-*")):
            label = req.name.removeprefix("request-")
            trim = label.endswith(".trim")
            label = label.removesuffix(".trim")
            try:
                result: dict[str, Any] = _snapshot(trim, top)
            except Exception as exc:  # reported to the parent, which fails the run
                result = {"error": repr(exc)}
            tmp = directory / f".result-{label}.json"
            tmp.write_text(json.dumps(result))
            tmp.rename(directory / f"result-{label}.json")
            req.unlink()
        time.sleep(0.1)  # poll period of the request directory


def child(argv: list[str]) -> int:
    directory, frames, top = Path(argv[0]), int(argv[1]), int(argv[2])
    rest = argv[argv.index("--") + 1 :]
    if frames > 0:
        tracemalloc.start(frames)
    threading.Thread(
        target=_serve_snapshots, args=(directory, top), name="memory-bench", daemon=True
    ).start()
    from etcdconfig.cli.main import main as etcdconfig_main

    return etcdconfig_main(rest)


# --- the parent: the cluster, the phases, the report --------------------------------------------

if __name__ == "__main__" and sys.argv[1:2] == ["--child"]:
    raise SystemExit(child(sys.argv[2:]))

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rich.console import Console  # noqa: E402

from _cluster import (  # noqa: E402  (the child above must not pay for these imports)
    Cluster,
    Process,
    RssSampler,
    config_data,
    cpu_seconds,
    new_table,
    parallel,
    rss_mb,
    wait_until,
)

nan = math.nan
PHASES = ("idle", "rest", "resync", "updates", "trimmed")


def wait_idle(pid: int, timeout: float = 120.0, window: float = 2.0) -> None:
    """Until the process used under 5 % of a core over ``window`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = cpu_seconds(pid)
        time.sleep(window)  # the measurement window of the CPU rate
        if cpu_seconds(pid) - before < 0.05 * window:
            return
    raise TimeoutError(f"process {pid} still busy after {timeout:g} s")


def rss_slope(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of RSS over the second half of ``samples`` (MB per minute):
    a leak shows as a slope that does not flatten once the working set is reached."""
    half = samples[len(samples) // 2 :]
    if len(half) < 2:
        return 0.0
    mean_t = sum(t for t, _ in half) / len(half)
    mean_m = sum(m for _, m in half) / len(half)
    var = sum((t - mean_t) ** 2 for t, _ in half)
    cov = sum((t - mean_t) * (m - mean_m) for t, m in half)
    return cov / var * 60 if var else 0.0


class Traced:
    """The snapshot protocol, parent side."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)

    def snapshot(self, label: str, proc: Process, trim: bool = False) -> dict[str, Any]:
        (self.dir / f"request-{label}{'.trim' if trim else ''}").touch()
        result = self.dir / f"result-{label}.json"
        wait_until(lambda: result.exists() or not proc.alive, 300, f"snapshot {label}")
        proc.check_alive()
        data: dict[str, Any] = json.loads(result.read_text())
        if "error" in data:
            raise RuntimeError(f"snapshot {label} failed in the operator: {data['error']}")
        return data


def run(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    n = args.configs
    progress = console.log if not args.json else (lambda *a, **k: None)
    out: dict[str, Any] = {
        "configs": n,
        "frames": args.frames,
        "resync_full_every": args.resync_full_every,
        "phases": {},
        "noop": {},
    }
    with Cluster(progress=progress, keep=args.keep) as c:
        traced = Traced(c.workdir / "memory-bench")
        prefix = f"/etcdconfig-memory-{os.getpid()}"
        ns, noop_ns = "mem-subject", "mem-noop"
        for namespace in (ns, noop_ns):
            c.api.create_namespace(namespace)

        # the baseline first: the no-op operator with the same Configs, untraced
        noop = c.noop_operator(noop_ns).start()
        c.probe(noop_ns)
        out["noop"]["idle"] = rss_mb(noop.pid)[0]
        names = [f"cfg-{i:05d}" for i in range(n)]
        parallel(lambda name: c.api.create_config(noop_ns, name, config_data(int(name[4:]))), names)
        c.watch.wait_recorded(noop_ns, names, 1, timeout=max(300, n))
        wait_idle(noop.pid)
        out["noop"]["rest"] = rss_mb(noop.pid)[0]
        noop.stop()

        proc = c.operator(
            "memory-subject",
            prefix,
            namespaces=[ns],
            resync_interval=args.resync_interval,
            extra=[
                "--resync-full-every",
                str(args.resync_full_every),
                "--log-level",
                "warning",
                *(["--api-connections", str(args.api_connections)] if args.api_connections else []),
            ],
        )
        proc.cmd[0:1] = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--child",
            str(traced.dir),
            str(args.frames),
            str(args.top),
            "--",
        ]
        proc.start()
        c.probe(ns)
        wait_idle(proc.pid)
        phases = out["phases"]
        phases["idle"] = traced.snapshot("idle", proc)
        progress(f"idle: RSS {phases['idle']['rss_mb']:.1f} MB")

        started = time.monotonic()
        parallel(lambda name: c.api.create_config(ns, name, config_data(int(name[4:]))), names)
        c.watch.wait_recorded(ns, names, 1, timeout=max(300, n))
        out["bulk_seconds"] = time.monotonic() - started
        wait_idle(proc.pid)
        phases["rest"] = traced.snapshot("rest", proc)
        progress(f"rest: RSS {phases['rest']['rss_mb']:.1f} MB")

        rounds = "etcdconfig_resync_rounds_total"
        r0 = proc.metrics().get(rounds, 0)
        wait_until(lambda: proc.metrics().get(rounds, 0) >= r0 + 2, 120 + n / 10, "resync")
        wait_idle(proc.pid)
        phases["resync"] = traced.snapshot("resync", proc)
        progress(f"resync: RSS {phases['resync']['rss_mb']:.1f} MB")

        revision0 = int(time.time())
        start = time.monotonic()
        with RssSampler(proc.pid, interval=1.0) as sampler:
            for i in range(args.updates):
                name = names[(i * 7919) % n]
                c.api.patch_data(ns, name, config_data(i, revision0 + i))
                delay = start + (i + 1) / args.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)  # the schedule of the update stream
            wait_idle(proc.pid)
        out["updates_rss_timeline"] = sampler.timeline(every=10.0)
        out["updates_rss_slope_mb_per_min"] = rss_slope(sampler.samples)
        phases["updates"] = traced.snapshot("updates", proc)
        phases["trimmed"] = traced.snapshot("trimmed", proc, trim=True)
        proc.stop()

    rest, idle = phases["rest"], phases["idle"]
    out["per_config_kb"] = {
        "rss": (rest["rss_mb"] - idle["rss_mb"]) * 1e3 / n,
        "traced": (rest.get("traced_mb", nan) - idle.get("traced_mb", nan)) * 1e3 / n,
        "noop_rss": (out["noop"]["rest"] - out["noop"]["idle"]) * 1e3 / n,
    }
    out["rest_rss_vs_noop"] = rest["rss_mb"] / out["noop"]["rest"]
    t = phases["trimmed"]
    out["freed_by_trim_mb"] = t["rss_mb"] - t.get("rss_after_trim_mb", t["rss_mb"])
    return out


def render(console: Console, f: dict[str, Any]) -> None:
    table = new_table(
        f"Operator memory with {f['configs']:,} Configs (MB = 10^6 bytes)",
        "traced = Python allocations seen by tracemalloc; malloc = glibc's arenas",
        ["phase", "RSS", "anon", "file", "traced", "malloc in use", "malloc free", "threads"],
    )
    for phase in PHASES:
        p = f["phases"].get(phase)
        if p is None:
            continue
        table.add_row(
            phase,
            f"{p['rss_mb']:.1f}",
            f"{p['rss_anon_mb']:.1f}",
            f"{p['rss_file_mb']:.1f}",
            f"{p.get('traced_mb', nan):.1f}",
            f"{p.get('malloc_in_use_mb', float('nan')):.1f}",
            f"{p.get('malloc_free_in_arenas_mb', float('nan')):.1f}",
            str(p["threads"]),
        )
    console.print(table)
    per = f["per_config_kb"]
    console.print(
        f"per Config at rest: RSS {per['rss']:.1f} KB, traced {per['traced']:.1f} KB "
        f"(no-op operator: RSS {per['noop_rss']:.1f} KB); RSS at rest "
        f"{f['rest_rss_vs_noop']:.2f}× the no-op's; malloc_trim(0) freed "
        f"{f['freed_by_trim_mb']:.1f} MB; RSS slope in the second half of the updates "
        f"{f['updates_rss_slope_mb_per_min']:+.2f} MB/min"
    )
    rest = f["phases"]["rest"]
    if "by_package_mb" not in rest:
        return
    console.print("traced at rest by package (MB):", rest["by_package_mb"])
    for site in rest["top_sites"][:12]:
        console.print(f"  {site['mb']:8.3f} MB  {site['count']:>8}  {site['frames'][0]}")
        for frame in site["frames"][1:3]:
            console.print(f"  {'':27}{frame}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", type=int, default=2000)
    ap.add_argument("--quick", action="store_true", help="300 Configs, 100 updates")
    ap.add_argument("--updates", type=int, default=600, help="data patches after the resync")
    ap.add_argument("--rate", type=float, default=20.0, help="patches per second")
    ap.add_argument(
        "--frames",
        type=int,
        default=6,
        help="tracemalloc frames per trace; 0: no tracing (RSS as users see it, no sites)",
    )
    ap.add_argument(
        "--api-connections",
        type=int,
        help="the operator's --api-connections (e.g. 100000: as good as no cap)",
    )
    ap.add_argument("--top", type=int, default=40, help="allocation sites reported")
    ap.add_argument("--resync-interval", type=float, default=20.0)
    ap.add_argument(
        "--resync-full-every",
        type=int,
        default=1,
        help="the operator's --resync-full-every: 1 (default here) makes every round full, "
        "10 (the product's default) measures the steady state, where a round skips the "
        "settled Configs whose full check is not due",
    )
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--json-file")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.configs, args.updates = 300, 100
    console = Console(stderr=args.json)
    figures = run(args, console)
    if args.json_file:
        Path(args.json_file).write_text(json.dumps(figures, indent=2))
    if args.json:
        print(json.dumps(figures))
    else:
        render(console, figures)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
