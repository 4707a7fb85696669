"""`python -m etcdconfig.devenv` starts a control plane that outlives the command and
stops it later, by PID, from another command; a start that fails (or is interrupted)
half-way stops what it started and says why in one line (issue #17)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from tests.e2e.operator_env import wait_until

# up/status/down cycles on one state dir: 20 take about 2 minutes on 2 busy cores;
# ETCDCONFIG_DEVENV_CYCLES=N for fewer (a quick run) or more (a soak)
CYCLES = int(os.environ.get("ETCDCONFIG_DEVENV_CYCLES", "20"))
NAMES = ["etcd", "kube-apiserver", "kube-controller-manager"]


def _process_only(args: tuple[str, ...]) -> list[str]:
    """``up`` without the node: these tests are about the processes' lifecycle, and a
    node is one per host (tests/node covers it)."""
    return [args[0], "--no-node", *args[1:]] if args[:1] == ("up",) else list(args)


def devenv(
    state: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "etcdconfig.devenv", "--dir", str(state), *_process_only(args)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, **(env or {})},
    )


def start_devenv(state: Path, *args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "etcdconfig.devenv", "--dir", str(state), *_process_only(args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )


def running(pid: int, start_time: int | None = None) -> bool:
    """Exists, is not a zombie waiting for an init that may never reap it, and (given a
    start time) is still the process that was recorded, not a recycled PID."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat.rsplit(")", 1)[1].split()
    return fields[0] not in "ZXx" and (start_time is None or int(fields[19]) == start_time)


def mentioning(state: Path) -> list[tuple[int, str]]:
    """Live processes whose command line names the state dir: every process `up` starts
    does (data dir, kubeconfig, certificates), recorded or not."""
    needle = os.fsencode(str(state))
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline and running(int(entry.name)):
            found.append((int(entry.name), cmdline.replace(b"\0", b" ").decode(errors="replace")))
    return found


def state_json(state: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((state / "state.json").read_text())
    return data


def assert_nothing_left(state: Path) -> None:
    """Nothing recorded, nothing that was recorded still running, nothing unrecorded."""
    recorded = state_json(state)
    assert recorded["processes"] == []
    assert [
        p["name"] for p in recorded.get("stopped", []) if running(p["pid"], p["start_time"])
    ] == []
    assert mentioning(state) == []
    status = devenv(state, "status", "--json")
    assert status.returncode == 1
    report = json.loads(status.stdout)
    assert (report["ready"], report["processes"], report["leftovers"]) == (False, [], [])


def fake(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


def test_up_status_env_user_down(tmp_path: Path) -> None:
    state = tmp_path / "dev"
    up = devenv(state, "up")
    try:
        assert up.returncode == 0, up.stderr
        assert "control plane ready in" in up.stdout

        status = devenv(state, "status", "--json")
        assert status.returncode == 0, status.stderr
        report = json.loads(status.stdout)
        assert report["ready"] is True
        assert report["leftovers"] == []
        names = [p["name"] for p in report["processes"]]
        assert names == NAMES
        assert all(p["running"] for p in report["processes"])

        env = dict(
            line.removeprefix("export ").split("=", 1)
            for line in devenv(state, "env").stdout.splitlines()
        )
        assert env["KUBECONFIG"] == str(state / "kubeconfig")
        assert env["ETCDCONFIG_DEV_ETCD_ENDPOINT"] == report["etcd_endpoint"]
        kubectl = state / "bin" / "kubectl"
        whoami = subprocess.run(
            [str(kubectl), "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"],
            env={**os.environ, "KUBECONFIG": env["KUBECONFIG"]},
            capture_output=True,
            text=True,
            check=True,
        )
        assert whoami.stdout == "admin"

        user = devenv(state, "user", "carol", "--group", "auditors")
        assert user.returncode == 0, user.stderr
        groups = subprocess.run(
            [str(kubectl), "auth", "whoami", "-o", "jsonpath={.status.userInfo.groups}"],
            env={**os.environ, "KUBECONFIG": user.stdout.strip()},
            capture_output=True,
            text=True,
            check=True,
        )
        assert json.loads(groups.stdout) == ["auditors", "system:authenticated"]

        again = devenv(state, "up")
        assert again.returncode == 1
        pids = ", ".join(f"{p['name']} pid {p['pid']}" for p in report["processes"])
        assert again.stderr == (
            f"error: a control plane from {state} is already running ({pids}): "
            "stop it first (`down`)\n"
        )
    finally:
        down = devenv(state, "down")
    assert down.returncode == 0, down.stderr
    assert [p["name"] for p in report["processes"] if running(p["pid"])] == []
    assert_nothing_left(state)


def test_up_down_cycles_on_a_reused_state_dir(tmp_path: Path) -> None:
    """#17 was seen once in twelve re-runs on a `.dev` an earlier up/down had used."""
    state = tmp_path / "dev"
    for cycle in range(CYCLES):
        up = devenv(state, "up")
        try:
            assert (cycle, up.returncode, up.stderr) == (cycle, 0, "")
            status = devenv(state, "status", "--json")
            report = json.loads(status.stdout)
            assert (status.returncode, report["ready"], report["leftovers"]) == (0, True, [])
            assert [(p["name"], p["running"]) for p in report["processes"]] == [
                (name, True) for name in NAMES
            ]
        finally:
            down = devenv(state, "down")
        assert (down.returncode, down.stderr) == (0, "")
        assert down.stdout.splitlines() == [
            f"{p['name']:<24} pid {p['pid']:<8} terminated" for p in reversed(report["processes"])
        ] + [f"stopped; logs remain in {state}"]
        assert_nothing_left(state)


def test_a_start_that_fails_half_way_stops_what_it_started_and_says_why_in_one_line(
    tmp_path: Path,
) -> None:
    """etcd and kube-apiserver start and get ready; kube-controller-manager exits."""
    state = tmp_path / "dev"
    kcm = fake(
        tmp_path / "kcm",
        "#!/bin/sh\necho 'I0101 starting'\necho 'Error: unknown flag: --bogus' >&2\nexit 2\n",
    )
    up = devenv(state, "up", env={"ETCDCONFIG_KUBE_CONTROLLER_MANAGER_BIN": str(kcm)})
    assert up.returncode == 1
    assert up.stdout == ""
    assert up.stderr == (
        "error: kube-controller-manager exited with code 2 during start-up; "
        f"log {state}/kube-controller-manager.log (last line: Error: unknown flag: --bogus)\n"
    )
    stopped = state_json(state)["stopped"]
    assert [(p["name"], p["outcome"]) for p in stopped] == [
        ("kube-controller-manager", "not running"),
        ("kube-apiserver", "terminated"),
        ("etcd", "terminated"),
    ]
    assert_nothing_left(state)


def test_a_missing_binary_fails_in_one_line_and_stops_etcd(tmp_path: Path) -> None:
    state = tmp_path / "dev"
    missing = tmp_path / "no-such-apiserver"
    up = devenv(state, "up", env={"ETCDCONFIG_KUBE_APISERVER_BIN": str(missing)})
    assert (up.returncode, up.stdout) == (1, "")
    assert up.stderr == (
        f"error: cannot start kube-apiserver ({missing}): "
        f"[Errno 2] No such file or directory: '{missing}'\n"
    )
    assert [(p["name"], p["outcome"]) for p in state_json(state)["stopped"]] == [
        ("etcd", "terminated")
    ]
    assert_nothing_left(state)


def test_a_process_that_ignores_sigterm_is_killed_after_the_grace_period(tmp_path: Path) -> None:
    """A kube-apiserver that never gets ready and ignores SIGTERM: the start fails at its
    deadline, the clean-up sends SIGTERM, waits --grace seconds, then SIGKILLs it."""
    state = tmp_path / "dev"
    apiserver = fake(
        tmp_path / "apiserver",
        f"#!{sys.executable}\n"
        "import signal, time\n"
        "def ignore(*_):\n"
        "    print(f'fake: SIGTERM ignored at {time.monotonic()}', flush=True)\n"
        "signal.signal(signal.SIGTERM, ignore)\n"
        "print('fake: serving nothing', flush=True)\n"
        "while True:\n"
        "    signal.pause()\n",
    )
    grace = 2.0
    up = devenv(
        state,
        "up",
        "--timeout=8",
        f"--grace={grace}",
        env={"ETCDCONFIG_KUBE_APISERVER_BIN": str(apiserver)},
    )
    returned = time.monotonic()
    assert (up.returncode, up.stdout) == (1, "")
    assert re.fullmatch(
        r"error: kube-apiserver not ready at https://127\.0\.0\.1:\d+/readyz before the "
        r"start-up deadline \(last answer: [^\n]*\); "
        + re.escape(f"log {state}/kube-apiserver.log (last line: fake: serving nothing)")
        + r"\n",
        up.stderr,
    ), up.stderr
    log = (state / "kube-apiserver.log").read_text().splitlines()
    assert log[0] == "fake: serving nothing"
    assert len(log) == 2 and log[1].startswith("fake: SIGTERM ignored at "), log
    sigterm_at = float(log[1].rsplit(" ", 1)[1])
    assert returned - sigterm_at >= grace  # SIGKILL came only after the grace period
    assert [(p["name"], p["outcome"]) for p in state_json(state)["stopped"]] == [
        ("kube-apiserver", "killed"),
        ("etcd", "terminated"),
    ]
    assert_nothing_left(state)


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_an_interrupted_up_leaves_nothing_that_down_does_not_stop(
    tmp_path: Path, how: signal.Signals
) -> None:
    """`up` killed (SIGKILL: no clean-up possible) or terminated (SIGTERM: it cleans up)
    while waiting for a kube-controller-manager that never gets healthy."""
    state = tmp_path / "dev"
    kcm = fake(tmp_path / "kcm", "#!/bin/sh\necho 'fake: never healthy'\nexec sleep 600\n")
    up = start_devenv(state, "up", env={"ETCDCONFIG_KUBE_CONTROLLER_MANAGER_BIN": str(kcm)})
    try:

        def recorded() -> list[str]:
            try:
                return [p["name"] for p in state_json(state)["processes"]]
            except (OSError, ValueError):  # not written yet
                return []

        wait_until(lambda: recorded() == NAMES, 120, "up to start kube-controller-manager")
        up.send_signal(how)
        out, err = up.communicate(timeout=60)
    finally:
        if up.poll() is None:
            up.kill()
            up.communicate()
    pids = {p["name"]: p["pid"] for p in state_json(state)["processes"]}
    if how == signal.SIGTERM:
        assert (up.returncode, out) == (143, "")
        assert err == "error: interrupted by SIGTERM; nothing is left running\n"
        assert [(p["name"], p["outcome"]) for p in state_json(state)["stopped"]] == [
            ("kube-controller-manager", "terminated"),
            ("kube-apiserver", "terminated"),
            ("etcd", "terminated"),
        ]
        assert_nothing_left(state)
        return
    assert up.returncode == -signal.SIGKILL
    status = devenv(state, "status", "--json")
    report = json.loads(status.stdout)
    assert (status.returncode, report["ready"], report["leftovers"]) == (1, False, NAMES)
    assert [(p["name"], p["running"]) for p in report["processes"]] == [(n, True) for n in NAMES]
    text = devenv(state, "status").stdout.splitlines()
    assert text[-1] == (
        "leftovers   etcd, kube-apiserver, kube-controller-manager: "
        "not a working control plane; `down` stops them"
    )
    again = devenv(state, "up")
    assert again.returncode == 1
    assert again.stderr.startswith(f"error: a control plane from {state} is already running (")
    down = devenv(state, "down")
    assert (down.returncode, down.stderr) == (0, "")
    assert down.stdout.splitlines() == [
        f"{name:<24} pid {pids[name]:<8} terminated" for name in reversed(NAMES)
    ] + [f"stopped; logs remain in {state}"]
    assert_nothing_left(state)
