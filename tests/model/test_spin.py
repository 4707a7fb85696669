"""Exhaustive model checking of the recording protocol (spec/etcdconfig.pml) with SPIN.

The real model must verify clean: every assertion (safety) and the liveness claim,
over the whole state space (no bitstate, no depth cut-off). Each mutant removes one
guard of the protocol, and SPIN must find a counterexample for the property that
guard protects: a guard no mutant can break would be a guard nothing tests.

pan is generated and compiled in pytest's temporary directory, never in the tree.
SPIN and a C compiler are required: without them the tests fail (CI installs the
Debian package ``spin``); they are never skipped.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

SPEC = Path(__file__).resolve().parents[2] / "spec" / "etcdconfig.pml"

# safety: every fault and hazard of the model at once (the file's defaults)
SAFETY_DEFINES: tuple[str, ...] = ()
# liveness: no foreign writes (after one the protocol refuses to write, by design)
LIVENESS_DEFINES = ("-DTAMPER=0",)
# pan's memory cap (MB): a model that grows fails loudly instead of swapping
MEMLIM = 3072
RUN_TIMEOUT = 170  # seconds, per pan run


@dataclass(frozen=True)
class PanRun:
    output: str
    seconds: float

    def _number(self, pattern: str) -> float:
        m = re.search(pattern, self.output)
        assert m, f"pan output lacks {pattern!r}:\n{self.output}"
        return float(m.group(1))

    @property
    def errors(self) -> int:
        return int(self._number(r"errors: (\d+)"))

    @property
    def stored(self) -> int:
        return int(self._number(r"([\d.e+]+) states, stored"))

    @property
    def transitions(self) -> int:
        return int(self._number(r"([\d.e+]+) transitions \("))

    @property
    def depth(self) -> int:
        return int(self._number(r"depth reached (\d+)"))

    @property
    def memory_mb(self) -> float:
        return self._number(r"([\d.]+)\s+total actual memory usage")

    def summary(self, what: str) -> str:
        return (
            f"{what}: {self.stored} states stored, {self.transitions} transitions, "
            f"depth {self.depth}, {self.memory_mb:.0f} MB, {self.seconds:.1f} s"
        )


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"`{name}` is not installed: the model tier needs SPIN and a C compiler "
            "(Debian/Ubuntu: apt-get install spin gcc)",
            pytrace=False,
        )
    return path


def _run(cmd: list[str], cwd: Path, timeout: float = RUN_TIMEOUT) -> str:
    try:
        done = subprocess.run(
            cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{' '.join(cmd)} did not finish within {timeout}s: {exc}", pytrace=False)
    return done.stdout + done.stderr


def build_pan(
    tmp: Path, defines: tuple[str, ...], cflags: tuple[str, ...], *, optimize: str
) -> Path:
    """``spin -a`` the model with ``defines`` and compile pan with ``cflags``, in ``tmp``."""
    spin, cc = _tool("spin"), _tool("gcc")
    model = tmp / SPEC.name
    shutil.copyfile(SPEC, model)
    out = _run([spin, *defines, "-a", model.name], tmp)
    assert (tmp / "pan.c").exists(), f"spin -a failed:\n{out}"
    out = _run([cc, optimize, *cflags, f"-DMEMLIM={MEMLIM}", "-o", "pan", "pan.c"], tmp)
    assert (tmp / "pan").exists(), f"compiling pan failed:\n{out}"
    return tmp / "pan"


def run_pan(pan: Path, *args: str) -> PanRun:
    started = time.monotonic()
    out = _run([str(pan), "-m300000", "-w24", *args], pan.parent)
    return PanRun(out, time.monotonic() - started)


def assert_complete(run: PanRun) -> None:
    """The search covered the whole state space: nothing cut it short."""
    out = run.output
    assert "Full statespace search" in out, out
    assert "Search not completed" not in out, out
    assert "max search depth too small" not in out, out
    assert "reached -DMEMLIM bound" not in out, out
    assert "out of memory" not in out.lower(), out
    assert "VECTORSZ" not in out, out  # the state vector fits: states are stored whole
    assert re.search(r"State-vector \d+ byte", out), out


def test_real_model_is_safe_and_live(tmp_path: Path) -> None:
    safety_dir = tmp_path / "safety"
    safety_dir.mkdir()
    pan = build_pan(safety_dir, SAFETY_DEFINES, ("-DSAFETY", "-DNOCLAIM", "-DSFH"), optimize="-O2")
    safety = run_pan(pan)
    assert safety.errors == 0, safety.output
    assert_complete(safety)
    assert "assertion violations\t+" in safety.output, safety.output
    assert "invalid end states\t+" in safety.output, safety.output  # no deadlock either

    live_dir = tmp_path / "liveness"
    live_dir.mkdir()
    pan = build_pan(live_dir, LIVENESS_DEFINES, ("-DSFH", "-DNOBOUNDCHECK"), optimize="-O2")
    # `live` is the conjunction of the claims `recorded` and `unlocked`; no -f: every
    # weakly fair run is a run, so checking all of them is the stronger statement
    liveness = run_pan(pan, "-a", "-N", "live")
    assert liveness.errors == 0, liveness.output
    assert_complete(liveness)
    assert "never claim         \t+ (live)" in liveness.output, liveness.output
    assert "acceptance   cycles \t+" in liveness.output, liveness.output

    print(safety.summary("safety"))
    print(liveness.summary("liveness (claim live)"))


@dataclass(frozen=True)
class Mutant:
    define: str
    claim: str | None  # None: a safety run; else the never claim to check
    expected: str  # the property SPIN must name


MUTANTS = {
    "fence": Mutant("MUTANT_NO_FENCE", None, "NoWriteWithoutLock"),
    "head-compare": Mutant("MUTANT_NO_HEAD_CMP", None, "HeadIsNewest"),
    "version-absent": Mutant("MUTANT_NO_VERSION_CMP", None, "NeverOverwritten"),
    "incarnation": Mutant("MUTANT_NO_INCARNATION", None, "NothingAfterDeletion"),
    "acquire-cleanup": Mutant("MUTANT_NO_ACQUIRE_CLEANUP", "unlocked", "unlocked"),
    "landed-by-generation": Mutant("MUTANT_LANDED_BY_GENERATION", None, "LandedMeansApplied"),
    "purge-all": Mutant("MUTANT_PURGE_ALL", None, "RetainedHistoryKept"),
}


@pytest.mark.parametrize("mutant", MUTANTS.values(), ids=MUTANTS.keys())
def test_mutant_is_caught(tmp_path: Path, mutant: Mutant) -> None:
    """Removing the guard lets SPIN find a counterexample for the property it protects."""
    if mutant.claim is None:
        pan = build_pan(
            tmp_path,
            (*SAFETY_DEFINES, f"-D{mutant.define}"),
            ("-DSAFETY", "-DNOCLAIM"),
            optimize="-O0",
        )
        run = run_pan(pan)
        assert run.errors >= 1, f"{mutant.define} survived:\n{run.output}"
        # e.g. "assertion violated ((NoWriteWithoutLock&&(kpos[myl]==1))&&tok)"
        violated = re.search(r"assertion violated \(+(\w+)&&", run.output)
        assert violated, run.output
        assert violated.group(1) == mutant.expected, run.output
    else:
        pan = build_pan(tmp_path, (*LIVENESS_DEFINES, f"-D{mutant.define}"), (), optimize="-O0")
        run = run_pan(pan, "-a", "-N", mutant.claim)
        assert run.errors >= 1, f"{mutant.define} survived:\n{run.output}"
        assert f"pan: ltl formula {mutant.expected}\n" in run.output, run.output
        assert "acceptance cycle" in run.output, run.output
    assert (tmp_path / f"{SPEC.name}.trail").exists(), run.output
    print(run.summary(f"{mutant.define} (counterexample found)"))
