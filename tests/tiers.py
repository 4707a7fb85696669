"""Every test tier, as ``make test`` runs them: two streams at once, then the node.

    python -m tests.tiers            # what CI runs (after `make install lint`)
    python -m tests.tiers --serial   # one after the other, as before (slower)

Most of the suite waits: on an operator's reconcile, a lease's expiry, an API server's
answer. Run one after the other on 2 cores, the tiers took 50 minutes (mutants 13,
pytest 37), with the CPU idle much of the time. Two streams run side by side instead:

- **e2e**: ``pytest tests/e2e -m "not node"`` (the control plane, operator processes,
  chaos, Flux);
- **unit, integration, model, then the mutants**: ``pytest tests/unit
  tests/integration tests/model`` then ``python -m tests.mutation.run``;

then, alone, the **node** stage: ``pytest tests -m node`` (the node tier and the demo's
test: one node per host, so nothing else may start one meanwhile — the only other test
that does is mutant M26's, in the second stream, which has ended by then).

Each stream writes its own log (``<dir>/<stream>.log``, the directory printed at the
start) and its own pytest ``--basetemp``; a stream's log is printed whole when it ends,
so the CI output reads like one run after another. Every command runs even when an
earlier one failed; the exit status is 1 when any failed, and the summary names them.
A passed command's ``--basetemp`` is removed (failed ones are kept to look into).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
PYTEST = (PY, "-m", "pytest", "--durations=15")


@dataclass
class Stream:
    name: str
    commands: list[tuple[str, ...]]
    log: Path = field(init=False)
    results: list[tuple[str, int, float]] = field(default_factory=list)

    def run(self, directory: Path, lock: threading.Lock) -> None:
        self.log = directory / f"{self.name}.log"
        with self.log.open("w") as out:
            for i, cmd in enumerate(self.commands):
                basetemp: Path | None = None
                if cmd[:3] == PYTEST[:3]:
                    basetemp = directory / f"tmp-{self.name}-{i}"
                    cmd = (*cmd, f"--basetemp={basetemp}")
                line = " ".join(cmd[1:] if cmd[0] == PY else cmd)
                with lock:
                    print(f"[{self.name}] start: {line}", flush=True)
                out.write(f"$ {line}\n")
                out.flush()
                started = time.monotonic()
                rc = subprocess.run(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT).returncode
                seconds = time.monotonic() - started
                if rc == 0 and basetemp is not None:
                    out.write(f"{_remove(basetemp)}\n")
                self.results.append((line, rc, seconds))
                with lock:
                    print(
                        f"[{self.name}] {'passed' if rc == 0 else f'FAILED (exit {rc})'} "
                        f"in {seconds / 60:.1f} min: {line}",
                        flush=True,
                    )
        with lock:
            print(f"\n{'=' * 30} {self.name}: {self.log} {'=' * 30}", flush=True)
            sys.stdout.write(self.log.read_text(errors="replace"))
            print(f"{'=' * 30} end of {self.name} {'=' * 30}\n", flush=True)


def _remove(basetemp: Path) -> str:
    """A passed command's temporary files go (the node stage leaves 5-7 GB of node
    state: run after run, they filled this machine's disk); a failed one's stay for
    its diagnosis. Never under a mount still in place (a node not torn down)."""
    with open("/proc/self/mounts") as f:
        mounts = [line.split()[1] for line in f if len(line.split()) > 1]
    inside = [m for m in mounts if m == str(basetemp) or m.startswith(f"{basetemp}/")]
    if inside:
        return f"kept {basetemp}: {len(inside)} mount(s) under it, e.g. {inside[0]}"
    shutil.rmtree(basetemp, ignore_errors=True)
    return f"removed {basetemp} (the command passed)"


def plan(serial: bool) -> list[list[Stream]]:
    """Stages, one after the other; the streams of a stage run at once."""
    e2e = Stream("e2e", [(*PYTEST, "tests/e2e", "-m", "not node")])
    rest = Stream(
        "unit-integration-model-mutants",
        [
            (*PYTEST, "tests/unit", "tests/integration", "tests/model"),
            (PY, "-m", "tests.mutation.run"),
        ],
    )
    node = Stream("node", [(*PYTEST, "tests", "-m", "node")])
    if serial:
        return [[rest], [e2e], [node]]
    return [[e2e, rest], [node]]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--serial", action="store_true", help="one stream at a time")
    args = ap.parse_args(argv)
    directory = Path(tempfile.mkdtemp(prefix="etcdconfig-tiers-"))
    print(f"test tiers: logs in {directory}", flush=True)
    lock = threading.Lock()
    started = time.monotonic()
    stages = plan(args.serial)
    for stage in stages:
        threads = [threading.Thread(target=s.run, args=(directory, lock)) for s in stage]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    print(f"test tiers: {(time.monotonic() - started) / 60:.1f} min in all")
    failed = []
    for stage in stages:
        for s in stage:
            for line, rc, seconds in s.results:
                mark = "passed" if rc == 0 else f"FAILED (exit {rc})"
                print(f"  {s.name:<32} {seconds / 60:5.1f} min  {mark}  {line}")
                if rc != 0:
                    failed.append(line)
    if failed:
        print(f"test tiers: {len(failed)} command(s) failed: {'; '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
