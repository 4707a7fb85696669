"""``make demo`` (etcdconfig.devenv.demo) without a cluster: the webhook it registers,
the one-line errors of a re-run, and the closing lines the README shows."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from etcdconfig.devenv import demo
from etcdconfig.devenv.cli import DEFAULT_DIR

ROOT = Path(__file__).resolve().parents[2]


def test_webhook_is_fail_closed_for_configs_only_and_points_at_the_local_operator() -> None:
    vwc = demo.webhook_configuration(b"-----BEGIN CERTIFICATE-----\n", 9443)
    (hook,) = vwc["webhooks"]
    assert hook["failurePolicy"] == "Fail"
    # the handler writes author notes to etcd (never on a dry run)
    assert hook["sideEffects"] == "NoneOnDryRun"
    assert hook["clientConfig"]["url"] == "https://127.0.0.1:9443/validate-config"
    assert hook["rules"] == [
        {
            "apiGroups": ["etcdconfig.io"],
            "apiVersions": ["v1alpha1"],
            "operations": ["CREATE", "UPDATE"],
            "resources": ["configs"],
            "scope": "Namespaced",
        }
    ]


class _Plane:
    """kubectl answers: ``wait`` as given, ``get`` the Config below."""

    def __init__(self, wait: Any) -> None:
        self.wait = wait

    def kubectl(self, *args: str, **_: Any) -> subprocess.CompletedProcess[str]:
        if args[0] == "wait":
            if isinstance(self.wait, Exception):
                raise self.wait
            return subprocess.CompletedProcess(args, self.wait, "", "timed out")
        ready = {
            "type": "Ready",
            "status": "False",
            "reason": "InvalidData",
            "message": "generation 3 was not recorded: /retries: 99 is greater than 10",
        }
        body = {"status": {"conditions": [ready]}}
        return subprocess.CompletedProcess(args, 0, json.dumps(body), "")


@pytest.mark.parametrize("wait", [1, subprocess.TimeoutExpired(["kubectl", "wait"], 90)])
def test_a_config_that_is_not_ready_is_one_line_naming_it_and_why(wait: Any) -> None:
    with pytest.raises(demo.DemoError) as err:
        demo._wait_ready(_Plane(wait), "default", "payments")  # type: ignore[arg-type]
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("Config default/payments is not Ready after 60s (InvalidData: ")
    assert "99 is greater than 10" in message


def test_a_timeout_anywhere_is_one_line_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def up(_: Path) -> int:
        raise subprocess.TimeoutExpired(["kubectl", "apply", "-f", "-"], 60)

    monkeypatch.setattr(demo, "up", up)
    assert demo.main(["--dir", str(tmp_path), "up"]) == 1
    err = capsys.readouterr().err
    assert err == "error: `kubectl apply -f -` did not finish in 60s\n"


def test_samples_are_the_config_documents_of_examples() -> None:
    names = [(p.name, d["metadata"]["name"]) for p, d in demo._samples()]
    assert ("payments.yaml", "payments") in names
    assert all(d["kind"] == "Config" for _, d in demo._samples())


def _normalise(text: str) -> list[str]:
    text = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", text)
    return [line.rstrip() for line in text.strip().splitlines()]


def test_readme_shows_the_closing_lines_the_demo_prints() -> None:
    printed = _normalise(demo.try_it_yourself(DEFAULT_DIR, "127.0.0.1:2379", 8080))
    readme = _normalise((ROOT / "README.md").read_text())
    start = readme.index(printed[0])
    assert readme[start : start + len(printed)] == printed
