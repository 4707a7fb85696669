"""Which namespace a bare NAME is in (as kubectl: -n, else the kubeconfig context's,
else `default`), with --kubeconfig/--context/KUBECONFIG (a list: the first file that
sets current-context wins), and the global flags before or after the command."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from etcdconfig.cli import main as cli
from etcdconfig.cli import remote
from etcdconfig.cli.output import EXIT_USAGE, Exit


def write(path: Path, contexts: dict[str, str | None], current: str | None = None) -> str:
    doc: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [
            {
                "name": name,
                "context": {"cluster": "c", "user": "u", **({"namespace": ns} if ns else {})},
            }
            for name, ns in contexts.items()
        ],
    }
    if current is not None:
        doc["current-context"] = current
    path.write_text(yaml.safe_dump(doc))
    return str(path)


@pytest.fixture(autouse=True)
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.kube/config
    for var in (
        "KUBECONFIG",
        "ETCDCONFIG_KUBECONFIG",
        "ETCDCONFIG_CONTEXT",
        "KUBERNETES_SERVICE_HOST",
        "POD_NAMESPACE",
    ):
        monkeypatch.delenv(var, raising=False)


def ref(*argv: str) -> tuple[str, str]:
    args = cli.parse(list(argv))
    return cli._ref(args.config, args)


def test_without_a_kubeconfig_a_bare_name_is_in_default() -> None:
    assert ref("history", "app") == ("default", "app")


def test_the_current_context_s_namespace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", write(tmp_path / "kc", {"a": "team-a"}, "a"))
    for command in (
        ["history", "app"],
        ["show", "app"],
        ["diff", "app", "1", "2"],
        ["rollback", "app", "--to", "1"],
        ["verify", "app"],
    ):
        assert ref(*command) == ("team-a", "app"), command


def test_a_context_without_a_namespace_means_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", write(tmp_path / "kc", {"a": None}, "a"))
    assert ref("history", "app") == ("default", "app")
    monkeypatch.setenv("KUBECONFIG", write(tmp_path / "kc2", {"a": "team-a"}))  # no current
    assert ref("history", "app") == ("default", "app")


def test_dash_n_and_namespace_slash_name_win(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", write(tmp_path / "kc", {"a": "team-a"}, "a"))
    assert ref("history", "app", "-n", "team-b") == ("team-b", "app")
    assert ref("-n", "team-b", "history", "app") == ("team-b", "app")
    assert ref("history", "team-c/app", "-n", "team-b") == ("team-c", "app")


def test_dash_dash_context_and_dash_dash_kubeconfig(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", write(tmp_path / "kc", {"a": "team-a", "b": "team-b"}, "a"))
    other = write(tmp_path / "other", {"x": "team-x", "b": "other-b"}, "x")
    assert ref("history", "app", "--context", "b") == ("team-b", "app")
    assert ref("--context", "b", "history", "app") == ("team-b", "app")
    assert ref("history", "app", "--kubeconfig", other) == ("team-x", "app")
    assert ref("--kubeconfig", other, "show", "app", "--context", "b") == ("other-b", "app")
    monkeypatch.setenv("ETCDCONFIG_KUBECONFIG", other)  # the operator's variable, too
    assert ref("history", "app") == ("team-x", "app")


def test_a_kubeconfig_list_the_first_file_setting_current_context_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    none = write(tmp_path / "0", {"z": "team-z"})  # sets no current-context
    first = write(tmp_path / "1", {"a": "team-a", "b": "first-b"}, "b")
    second = write(tmp_path / "2", {"b": "second-b", "c": "team-c"}, "c")
    missing = str(tmp_path / "missing")  # skipped, as kubectl does
    monkeypatch.setenv("KUBECONFIG", os.pathsep.join([missing, none, first, second]))
    assert ref("history", "app") == ("first-b", "app")  # not the last file's "c"
    assert remote.kube_context().context == "b"
    assert ref("history", "app", "--context", "c") == ("team-c", "app")  # from the 2nd file
    monkeypatch.setenv("KUBECONFIG", os.pathsep.join([none, second, first]))
    assert ref("history", "app") == ("team-c", "app")
    # a context defined twice: the first definition wins
    assert ref("history", "app", "--context", "b") == ("second-b", "app")
    # and that is the context the client connects with, not the merge's last current-context
    args = cli.parse(["history", "app"])
    assert cli._kube_target(args) == (None, "c")


def test_an_unknown_context_or_kubeconfig_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    kc = write(tmp_path / "kc", {"a": "team-a"}, "a")
    monkeypatch.setenv("KUBECONFIG", kc)
    assert cli.main(["history", "app", "--context", "nope"]) == 1
    assert capsys.readouterr().err == f'error: context "nope" does not exist in kubeconfig {kc}\n'
    missing = tmp_path / "missing"
    assert cli.main(["show", "app", "--kubeconfig", str(missing)]) == 1
    assert capsys.readouterr().err == (
        f"error: cannot read kubeconfig {missing}: No such file or directory\n"
    )
    # with NAMESPACE/NAME there is nothing to look up for the name
    assert ref("history", "ns/app", "--context", "nope") == ("ns", "app")


def test_in_a_pod_without_a_kubeconfig_the_pod_s_namespace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("POD_NAMESPACE", "ops")
    assert ref("history", "app") == ("ops", "app")


@pytest.mark.parametrize("value", ["ns/", "/app", "", "a/b/c"])
def test_a_malformed_reference_is_a_usage_error(value: str) -> None:
    with pytest.raises(Exit) as info:
        ref("history", value)
    assert info.value.code == EXIT_USAGE


# --- global flags before or after the command --------------------------------------------------

GLOBAL = ["-n", "team-a", "--kubeconfig", "/k", "--context", "c", "-o", "json", "--debug"]


def seen(args: argparse.Namespace) -> tuple[Any, ...]:
    return (args.namespace, args.kubeconfig, args.context, args.output, args.debug)


@pytest.mark.parametrize(
    "command",
    [
        ["history", "payments"],
        ["show", "payments"],
        ["diff", "payments", "1", "2"],
        ["rollback", "payments", "--to", "1"],
        ["verify", "payments"],
    ],
)
def test_global_flags_go_before_or_after_the_command(command: list[str]) -> None:
    expected = ("team-a", "/k", "c", "json", True)
    assert seen(cli.parse([*GLOBAL, *command])) == expected
    assert seen(cli.parse([*command, *GLOBAL])) == expected
    assert seen(cli.parse([*GLOBAL[:4], *command, *GLOBAL[4:]])) == expected
    assert seen(cli.parse(command)) == (None, None, None, "table", False)


def test_run_still_takes_the_kubeconfig_in_either_place() -> None:
    for argv in (
        ["run", "--kubeconfig", "/k", "--context", "c"],
        ["--kubeconfig", "/k", "--context", "c", "run"],
    ):
        settings = cli._settings(cli.parse(argv))
        assert (settings.kubeconfig, settings.context) == ("/k", "c")
