"""The CLI's pure parts (issue 11): `rollback --print`'s manifest is the whole object
with only spec.data and the rollback annotations changed; the JSONPath subset;
`completion bash|zsh` completes commands, flags and `-o` values in a real bash;
`dev env` exports what the CLI reads and puts this environment's scripts on PATH;
the text log format carries the structured fields."""

from __future__ import annotations

import io
import logging
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from etcdconfig import logs
from etcdconfig.cli import jsonpath
from etcdconfig.cli import main as cli
from etcdconfig.devenv import cli as devcli

# --- rollback --print -------------------------------------------------------------------------

LIVE: dict[str, Any] = {
    "apiVersion": "etcdconfig.io/v1alpha1",
    "kind": "Config",
    "metadata": {
        "name": "payments",
        "namespace": "prod",
        "labels": {"team": "pay", "app.kubernetes.io/part-of": "shop"},
        "annotations": {
            "owner": "alice",
            "kubectl.kubernetes.io/last-applied-configuration": '{"spec":{"data":{"r":9}}}',
            "etcdconfig.io/change-cause": "raise retries",
        },
        "finalizers": ["etcdconfig.io/finalizer", "example.com/keep"],
        "uid": "u-1",
        "resourceVersion": "123",
        "generation": 4,
        "creationTimestamp": "2026-11-28T02:00:00Z",
        "managedFields": [{"manager": "kubectl"}],
    },
    "spec": {
        "schema": {"type": "object"},
        "data": {"retries": 5},
        "history": {"maxVersions": 50},
        "deletionPolicy": "Retain",
        "publish": {"configMap": {"name": "payments-config"}},
    },
    "status": {"version": 4},
}


def test_rollback_manifest_keeps_everything_a_user_keeps_in_git() -> None:
    notes = {
        "etcdconfig.io/rollback": '{"checksum": "sha256:x", "fromVersion": 1}',
        "etcdconfig.io/change-cause": "rollback to version 1",
    }
    out = cli.rollback_manifest(LIVE, {"retries": 3}, notes)
    assert out == {
        "apiVersion": "etcdconfig.io/v1alpha1",
        "kind": "Config",
        "metadata": {
            "name": "payments",
            "namespace": "prod",
            "labels": {"team": "pay", "app.kubernetes.io/part-of": "shop"},
            "annotations": {"owner": "alice", **notes},
            "finalizers": ["example.com/keep"],
        },
        "spec": {**LIVE["spec"], "data": {"retries": 3}},
    }
    assert LIVE["spec"]["data"] == {"retries": 5}  # the object read is left alone


# --- JSONPath ---------------------------------------------------------------------------------

DOC = {"config": "a/b", "versions": [{"version": 2, "author": {"x.y": "k"}}, {"version": 1}]}


@pytest.mark.parametrize(
    ("template", "text"),
    [
        ("{.config}", "a/b"),
        (".config", "a/b"),
        ("{$.versions[0].version}", "2"),
        ("{.versions[-1].version}", "1"),
        ("{.versions[*].version}", "2 1"),
        ("{.versions[0].author['x.y']}", "k"),
        ("{.versions[1]}", '{"version": 1}'),
        ("v={.versions[0].version}\\n", "v=2\n"),
    ],
)
def test_jsonpath_subset(template: str, text: str) -> None:
    assert jsonpath.render(template, DOC) == text


@pytest.mark.parametrize("template", ["{range .versions[*]}{end}", "{.a[?(@.x)]}", "{.a", "{..a}"])
def test_jsonpath_outside_the_subset_is_refused(template: str) -> None:
    with pytest.raises(jsonpath.JsonPathError):
        jsonpath.validate(template)


# --- completion -------------------------------------------------------------------------------


def complete(shell_script: str, *words: str) -> list[str]:
    """COMPREPLY for the command line ``words`` (the last one being completed)."""
    line = " ".join(shlex.quote(w) for w in words)
    probe = (
        f"{shell_script}\nCOMP_WORDS=({line}); COMP_CWORD={len(words) - 1}\n"
        '_etcdconfig; printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    proc = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return sorted(proc.stdout.split())


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_completion_completes_commands_flags_and_values(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["completion", "bash"]) == 0
    script = capsys.readouterr().out
    assert "complete -o default -F _etcdconfig etcdconfig kubectl-etcdconfig" in script
    assert complete(script, "etcdconfig", "hi") == ["history"]
    assert complete(script, "etcdconfig", "co") == ["completion"]
    assert complete(script, "etcdconfig", "history", "--li") == ["--limit"]
    assert complete(script, "etcdconfig", "--debug", "diff", "--no") == ["--no-color"]
    assert complete(script, "etcdconfig", "history", "-o", "") == [
        "json",
        "jsonpath=",
        "name",
        "table",
        "wide",
        "yaml",
    ]
    assert complete(script, "etcdconfig", "rollback", "--dry-run", "s") == ["server"]
    assert complete(script, "etcdconfig", "completion", "") == ["bash", "zsh"]


def test_zsh_completion_is_the_bash_one_through_bashcompinit(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["completion", "zsh"]) == 0
    script = capsys.readouterr().out
    assert script.startswith("#compdef etcdconfig kubectl-etcdconfig\n")
    assert "autoload -U +X bashcompinit && bashcompinit\n" in script
    assert "complete -o default -F _etcdconfig etcdconfig kubectl-etcdconfig" in script
    if shutil.which("bash"):  # the function part is plain bash
        body = script.split("bashcompinit\n", 1)[1]
        subprocess.run(["bash", "-n", "-c", body], check=True, timeout=30)


# --- dev env ----------------------------------------------------------------------------------


class _Plane:
    state_dir = Path("/state")
    etcd_endpoint = "127.0.0.1:23790"
    node = False

    def env(self) -> dict[str, str]:
        return {
            "KUBECONFIG": "/state/kubeconfig",
            "PATH": f"/state/bin{os.pathsep}{os.environ.get('PATH', '')}",
            "ETCDCONFIG_DEV_ETCD_ENDPOINT": self.etcd_endpoint,
        }


def test_dev_env_exports_the_cli_endpoint_and_this_environments_scripts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    env = devcli._shell_env(_Plane())  # type: ignore[arg-type]
    assert env["ETCDCONFIG_ETCD_ENDPOINTS"] == "127.0.0.1:23790"  # what the CLI reads
    assert env["ETCDCONFIG_DEV_ETCD_ENDPOINT"] == "127.0.0.1:23790"  # kept for scripts
    scripts = str(Path(sys.executable).parent)  # etcdconfig, kubectl-etcdconfig
    assert env["PATH"].split(os.pathsep) == ["/state/bin", scripts, "/usr/bin", "/bin"]
    assert (Path(scripts) / "kubectl-etcdconfig").exists()


def test_dev_env_with_a_node_leaves_the_cli_on_the_kubeconfig(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With a node the store is the chart's etcd: the CLI reads the history API."""
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    plane = _Plane()
    plane.node = True
    env = devcli._shell_env(plane)  # type: ignore[arg-type]
    assert "ETCDCONFIG_ETCD_ENDPOINTS" not in env
    assert env["KUBECONFIG"] == "/state/kubeconfig"


# --- logs -------------------------------------------------------------------------------------


def test_text_logs_carry_the_structured_fields() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.TextFormatter())
    log = logging.getLogger("etcdconfig.test-text-logs")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning(
            "recorded",
            extra={"config": "prod/payments", "version": 7, "cause": "a b", "ok": True, "x": None},
        )
        log.warning("plain")
    finally:
        log.removeHandler(handler)
    first, second = stream.getvalue().splitlines()
    assert first.endswith(
        'etcdconfig.test-text-logs: recorded config=prod/payments version=7 cause="a b" '
        "ok=true x=null"
    )
    assert second.endswith("etcdconfig.test-text-logs: plain")


def test_configure_text_uses_the_text_formatter() -> None:
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    try:
        logs.configure("text", "info")
        assert isinstance(root.handlers[0].formatter, logs.TextFormatter)
        logs.configure("json", "info")
        assert isinstance(root.handlers[0].formatter, logs.JsonFormatter)
    finally:
        root.handlers[:] = saved
        root.setLevel(level)
