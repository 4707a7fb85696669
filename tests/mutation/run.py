"""Targeted mutation testing of the store's and the locks' safety guards.

    python -m tests.mutation.run [--only M01,M05a] [--jobs N] [--json] [--keep] [--list]
    make mutants

For every mutant of ``tests/mutation/mutants.py`` the runner copies the repository's
current working tree (tracked and untracked files that git does not ignore) into a
temporary directory, applies the mutant there — never in the working tree — and runs
the mutant's named tests in that copy with this interpreter's pytest. The mutant is
KILLED when at least one of them fails (or the run hangs past the mutant's timeout),
and SURVIVED when they all pass. The imports are checked: a pytest plugin
(``tests/mutation/guard.py``) stops the run unless ``etcdconfig`` and the mutated
module come from the copy.

First, the selected tests run once on the unmutated copy (the baseline): they must
pass, and every named test must exist. ``--tests NODEID...`` runs other tests
against the selected mutants instead (e.g. ``--only M02 --tests tests/integration
--all-failures`` lists every integration test that kills M02).

Exit status: 0 every mutant killed; 1 a mutant survived; 2 a mutant's original text
is not found exactly once (the code changed: update the list); 3 the baseline
failed; 4 a run could not be judged (import guard, collection or usage error).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

try:
    from tests.mutation.guard import GUARD_EXIT
    from tests.mutation.mutants import MUTANTS, Mutant
except ModuleNotFoundError:  # run as a script: python tests/mutation/run.py
    from guard import GUARD_EXIT  # type: ignore[no-redef]
    from mutants import MUTANTS, Mutant  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parents[2]
LIST_FILE = "tests/mutation/mutants.py"

KILLED, SURVIVED, STALE, ERROR, TODO = "KILLED", "SURVIVED", "STALE", "ERROR", "TODO"
EXIT_SURVIVED, EXIT_STALE, EXIT_BASELINE, EXIT_ERROR = 1, 2, 3, 4

# what is copied when git cannot list the working tree (e.g. an unpacked archive)
_FALLBACK_PATHS = ("operator", "tests", "examples", "crds", "charts", "bench", "pyproject.toml")


@dataclass
class Outcome:
    id: str
    guard: str
    file: str
    tests: list[str]
    status: str
    failed: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)  # pytest's one line per failure
    detail: str = ""
    seconds: float = 0.0
    imported_from: str = ""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- the copy ---------------------------------------------------------------------------------


def working_tree_files() -> list[str]:
    """Tracked and untracked, not ignored files of the working tree, as they are now."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        files: list[str] = []
        for top in _FALLBACK_PATHS:
            p = ROOT / top
            if p.is_file():
                files.append(top)
            elif p.is_dir():
                files.extend(
                    str(f.relative_to(ROOT))
                    for f in p.rglob("*")
                    if f.is_file() and "__pycache__" not in f.parts
                )
        return sorted(files)
    return sorted({f for f in out.decode().split("\0") if f})


def snapshot(dest: Path) -> int:
    """Copy the working tree into ``dest`` (read-only access to the repository)."""
    n = 0
    for rel in working_tree_files():
        src = ROOT / rel
        if not src.is_file():
            continue  # deleted in the working tree
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
        n += 1
    return n


def module_of(rel: str) -> str:
    path = Path(rel)
    assert path.parts[0] == "operator" and path.suffix == ".py", rel
    return ".".join(path.with_suffix("").parts[1:])


def occurrences(base: Path, m: Mutant) -> int:
    path = base / m.file
    return path.read_text().count(m.original) if path.is_file() else 0


# --- one pytest run in one copy ---------------------------------------------------------------


def _kill_leftovers(copy: Path) -> None:
    """Processes the tests started that outlived pytest (etcd runs in its own session):
    only those whose command line names this copy, by pid."""
    marker = str(copy) + os.sep  # a path inside the copy (M1 is a prefix of M10)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            with contextlib.suppress(OSError):
                os.kill(int(entry.name), signal.SIGKILL)


@dataclass
class PytestRun:
    rc: int | None  # None: timed out
    output: str
    seconds: float
    modules: dict[str, str]  # as the guard plugin found them imported


def run_pytest(
    copy: Path,
    tests: list[str],
    modules: list[str],
    *,
    timeout: float,
    stop_early: bool,
    write_bytecode: bool = False,
) -> PytestRun:
    report = copy / ".mutation-guard.json"
    report.unlink(missing_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        *tests,
        "-q",
        "-rfE",
        "-p",
        "no:cacheprovider",
        "-p",
        "tests.mutation.guard",
        f"--rootdir={copy}",
        "-c",
        str(copy / "pyproject.toml"),
        "-o",
        "pythonpath=operator .",
        f"--basetemp={copy / '.pytest-tmp'}",
    ]
    if stop_early:
        cmd.append("-x")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(copy / "operator"), str(copy)]),
        # the baseline runs in the base copy and leaves its bytecode (pytest's rewritten
        # test modules included) for the mutants' copies; a mutant writes none
        "PYTHONDONTWRITEBYTECODE": "" if write_bytecode else "1",
        "ETCDCONFIG_MUTATION_ROOT": str(copy),
        "ETCDCONFIG_MUTATION_MODULES": ",".join(modules),
        "ETCDCONFIG_MUTATION_REPORT": str(report),
        "COLUMNS": "400",  # room for the reason on each line of pytest's short summary
    }
    started = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        cwd=copy,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    rc: int | None
    try:
        out, _ = proc.communicate(timeout=timeout)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        # SIGINT first, so that pytest tears its fixtures down (and stops its etcd)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
        rc = None
    seconds = time.monotonic() - started
    _kill_leftovers(copy)
    modules_found: dict[str, str] = {}
    if report.is_file():
        modules_found = json.loads(report.read_text()).get("modules", {})
    return PytestRun(rc, out.decode(errors="replace"), seconds, modules_found)


_FAILED = re.compile(r"^(FAILED|ERROR) (.+?)(?: - (.*))?$", re.MULTILINE)


def failed_tests(output: str) -> list[str]:
    return [m.group(2) for m in _FAILED.finditer(output)]


def failure_reasons(output: str) -> list[str]:
    """pytest's one-line reason of each failure (its short test summary)."""
    return [m.group(3) or "" for m in _FAILED.finditer(output)]


def tail(output: str, lines: int = 25) -> str:
    return "\n".join(output.rstrip().splitlines()[-lines:])


def check_imports(run: PytestRun, copy: Path, expected: dict[str, Path] | None = None) -> str:
    """'' when ``etcdconfig`` and every module the guard looked at came from ``copy``
    (and each module of ``expected`` from exactly that file); else what went wrong."""
    if run.rc == GUARD_EXIT:
        return "import guard: " + tail(run.output, 5)
    if not run.modules:
        return "the import guard did not run (pytest stopped before its session started):\n" + (
            tail(run.output)
        )
    for name, origin in run.modules.items():
        if not Path(origin).is_relative_to(copy.resolve()):
            return f"{name} was imported from {origin}, not from the copy {copy}"
    for name, path in (expected or {}).items():
        if Path(run.modules.get(name, "")) != path.resolve():
            return f"{name} was imported from {run.modules.get(name)!r}, not from {path}"
    return ""


# --- mutants ----------------------------------------------------------------------------------


def run_mutant(m: Mutant, base: Path, work: Path, *, stop_early: bool, keep: bool) -> Outcome:
    outcome = Outcome(m.id, m.guard, m.file, list(m.tests), ERROR)
    copy = work / m.id
    shutil.copytree(base, copy, symlinks=True, ignore=_NOT_COPIED)
    try:
        target = copy / m.file
        if target.resolve().is_relative_to(ROOT):
            raise RuntimeError(f"refusing to mutate {target}: it is inside the repository")
        text = target.read_text()
        if text.count(m.original) != 1:  # checked before; the copy is the same snapshot
            outcome.status, outcome.detail = STALE, "original text not found exactly once"
            return outcome
        mutated = text.replace(m.original, m.replacement, 1)
        try:
            compile(mutated, str(target), "exec")
        except SyntaxError as exc:
            outcome.detail = f"the mutant does not compile: {exc}"
            return outcome
        target.write_text(mutated)
        for stale in (target.parent / "__pycache__").glob(f"{target.stem}.*.pyc"):
            stale.unlink()  # never run the unmutated bytecode
        module = module_of(m.file)
        run = run_pytest(copy, list(m.tests), [module], timeout=m.timeout, stop_early=stop_early)
        outcome.seconds = round(run.seconds, 1)
        outcome.imported_from = run.modules.get(module, "")
        problem = check_imports(run, copy, {module: target})
        if problem:
            outcome.detail = problem
        elif run.rc is None:
            outcome.status = KILLED
            outcome.detail = f"timed out after {m.timeout:g}s (a hang counts as a failure)"
        elif run.rc == 0:
            outcome.status = SURVIVED
            outcome.detail = "every named test passed"
        elif run.rc == 1:
            outcome.status = KILLED
            outcome.failed = failed_tests(run.output)
            outcome.reasons = failure_reasons(run.output)
        else:
            outcome.detail = f"pytest exited {run.rc} (not a test failure):\n{tail(run.output)}"
        return outcome
    finally:
        if not keep:
            shutil.rmtree(copy, ignore_errors=True)


# what the baseline run leaves in the base copy besides bytecode
_NOT_COPIED = shutil.ignore_patterns(".pytest-tmp", ".mutation-guard.json")


# --- report -----------------------------------------------------------------------------------


def short_test(node: str) -> str:
    return node.removeprefix("tests/integration/")


def print_table(outcomes: list[Outcome]) -> None:
    width_file = max(len(o.file.removeprefix("operator/etcdconfig/")) for o in outcomes)
    head = f"{'ID':<6} {'RESULT':<9} {'TIME':>6}  {'FILE':<{width_file}}  GUARD -> KILLING TEST(S)"
    print(head)
    print("-" * len(head))
    for o in outcomes:
        f = o.file.removeprefix("operator/etcdconfig/")
        secs = f"{o.seconds:.1f}s" if o.seconds else "-"
        print(f"{o.id:<6} {o.status:<9} {secs:>6}  {f:<{width_file}}  {o.guard}")
        pad = " " * (6 + 1 + 9 + 1 + 6 + 2 + width_file + 2)
        shown = o.failed if o.status == KILLED and o.failed else o.tests
        mark = "failed" if o.status == KILLED and o.failed else "named"
        for t in shown:
            print(f"{pad}-> {short_test(t)}  [{mark}]")
        for r in filter(None, o.reasons):
            print(f"{pad}   {r if len(r) <= 110 else r[:107] + '...'}")
        if o.detail:
            for line in o.detail.splitlines():
                print(f"{pad}   {line}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated mutant ids (default: all)")
    parser.add_argument("--jobs", "-j", type=int, default=1, help="mutants run in parallel")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the temporary copies")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument(
        "--all-failures",
        action="store_true",
        help="run every named test of a mutant (no -x) and list each that fails",
    )
    parser.add_argument(
        "--tests",
        nargs="+",
        metavar="NODEID",
        help="run these tests instead of each mutant's own (to find which tests kill it)",
    )
    args = parser.parse_args(argv)

    mutants = list(MUTANTS)
    if args.only:
        wanted = {s.strip() for s in args.only.split(",") if s.strip()}
        unknown = wanted - {m.id for m in mutants}
        if unknown:
            parser.error(f"unknown mutant id(s): {', '.join(sorted(unknown))}")
        mutants = [m for m in mutants if m.id in wanted]
    if args.tests:
        mutants = [
            dataclasses.replace(m, tests=tuple(args.tests), todo="", timeout=900.0) for m in mutants
        ]
    if args.list:
        for m in mutants:
            print(f"{m.id:<6} {m.file}  {m.guard}")
            for t in m.tests:
                print(f"       -> {t}")
        return 0

    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="etcdconfig-mutants-"))
    base = work / "base"
    try:
        n = snapshot(base)
        log(f"copied {n} files of the working tree of {ROOT} to {base}")

        outcomes: dict[str, Outcome] = {}
        runnable: list[Mutant] = []
        for m in mutants:
            if m.todo:
                outcomes[m.id] = Outcome(m.id, m.guard, m.file, list(m.tests), TODO, detail=m.todo)
                continue
            count = occurrences(base, m)
            if count != 1:
                outcomes[m.id] = Outcome(
                    m.id,
                    m.guard,
                    m.file,
                    list(m.tests),
                    STALE,
                    detail=(
                        f"its original text occurs {count} times in {m.file} (must be exactly "
                        f"once): the code changed; update this entry in {LIST_FILE}"
                    ),
                )
                continue
            runnable.append(m)

        # the baseline: the unmutated copy passes every selected test
        tests = list(dict.fromkeys(t for m in runnable for t in m.tests))
        files = {module_of(m.file): m.file for m in runnable}
        modules = sorted(files)
        baseline_ok = True
        baseline_detail = ""
        if tests:
            # precompiled once here, each mutant's copy starts faster
            subprocess.run(
                [sys.executable, "-m", "compileall", "-q", "operator", "tests"],
                cwd=base,
                check=False,
                stdout=subprocess.DEVNULL,
            )
            log(f"baseline: {len(tests)} test(s) on the unmutated copy ...")
            run = run_pytest(
                base, tests, modules, timeout=600, stop_early=False, write_bytecode=True
            )
            problem = check_imports(run, base, {name: base / f for name, f in files.items()})
            if problem or run.rc != 0:
                baseline_ok = False
                baseline_detail = problem or (
                    "timed out"
                    if run.rc is None
                    else f"pytest exited {run.rc}; failed: {failed_tests(run.output)}\n"
                    + tail(run.output)
                )
            log(f"baseline: {'passed' if baseline_ok else 'FAILED'} in {run.seconds:.1f}s")

        if baseline_ok:

            def one(m: Mutant) -> Outcome:
                o = run_mutant(m, base, work, stop_early=not args.all_failures, keep=args.keep)
                log(f"{m.id}: {o.status} ({o.seconds:.1f}s)")
                return o

            with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
                for o in pool.map(one, runnable):
                    outcomes[o.id] = o
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"kept the copies under {work}")

    total = time.monotonic() - started
    ordered = [outcomes[m.id] for m in mutants if m.id in outcomes]
    counts = {
        s: sum(o.status == s for o in ordered) for s in (KILLED, SURVIVED, STALE, ERROR, TODO)
    }
    if not baseline_ok:
        code = EXIT_BASELINE
    elif counts[STALE]:
        code = EXIT_STALE
    elif counts[ERROR]:
        code = EXIT_ERROR
    elif counts[SURVIVED]:
        code = EXIT_SURVIVED
    else:
        code = 0

    if args.json:
        print(
            json.dumps(
                {
                    "baseline": {"passed": baseline_ok, "detail": baseline_detail},
                    "mutants": [asdict(o) for o in ordered],
                    "counts": counts,
                    "seconds": round(total, 1),
                    "exit": code,
                },
                indent=2,
            )
        )
    else:
        if not baseline_ok:
            print(
                f"BASELINE FAILED: the unmutated code fails the selected tests\n{baseline_detail}"
            )
        if ordered:
            print_table(ordered)
        print(
            f"\n{counts[KILLED]} killed, {counts[SURVIVED]} survived, {counts[STALE]} stale, "
            f"{counts[ERROR]} error(s), {counts[TODO]} todo, of {len(mutants)} mutant(s); "
            f"{total:.0f}s"
        )
        for o in ordered:
            if o.status == STALE:
                print(f"STALE {o.id}: {o.detail}")
            elif o.status == SURVIVED:
                print(f"SURVIVED {o.id}: no named test fails without '{o.guard}'")
    return code


if __name__ == "__main__":
    sys.exit(main())
