"""``etcdconfig validate -f``: the admission webhook's checks offline, for CI pipelines
that validate manifests before they commit them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from etcdconfig.cli import main as cli
from etcdconfig.reconcile import format_issues, issue_reason, parse_spec, validate_spec
from etcdconfig.validation import Validator

SCHEMA = {
    "type": "object",
    "required": ["retries"],
    "properties": {"retries": {"type": "integer", "maximum": 10}, "mode": {"enum": ["a", "b"]}},
}


def manifest(name: str, data: dict[str, object], **spec: object) -> str:
    doc = {
        "apiVersion": "etcdconfig.io/v1alpha1",
        "kind": "Config",
        "metadata": {"name": name, "namespace": "prod"},
        "spec": {"schema": SCHEMA, "data": data, **spec},
    }
    return json.dumps(doc)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_a_valid_file_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "ok.yaml"
    f.write_text(manifest("payments", {"retries": 3}))
    code, out, _ = run(capsys, "validate", "-f", str(f), "-o", "json")
    assert code == 0
    assert json.loads(out) == {
        "results": [
            {"file": str(f), "config": "prod/payments", "valid": True, "reason": "", "message": ""}
        ]
    }


def test_an_invalid_config_exits_1_with_the_webhooks_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = {"retries": 11, "mode": "c"}
    f = tmp_path / "bad.yaml"
    f.write_text(manifest("payments", data))
    code, out, _ = run(capsys, "validate", "-f", str(f), "-o", "json")
    assert code == 1
    [result] = json.loads(out)["results"]
    # exactly what the admission webhook answers (handlers.validate) for the same spec
    issues = validate_spec(parse_spec({"schema": SCHEMA, "data": data}), Validator())
    assert (result["reason"], result["message"]) == (issue_reason(issues), format_issues(issues))
    assert result["message"] == (
        'spec.data.mode: must be one of "a", "b"; spec.data.retries: violates maximum 10'
    )


def test_every_config_of_a_multi_document_file_is_checked_and_other_kinds_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "all.yaml"
    other = json.dumps({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}})
    bad_policy = manifest("b", {"retries": 1}, deletionPolicy="Delete")
    f.write_text("\n---\n".join([manifest("a", {"retries": 1}), other, bad_policy]))
    code, out, _ = run(capsys, "validate", "-f", str(f), "-o", "json")
    assert code == 1
    results = json.loads(out)["results"]
    assert [(r["file"], r["config"], r["valid"]) for r in results] == [
        (f"{f}#0", "prod/a", True),
        (f"{f}#2", "prod/b", False),
    ]
    assert results[1]["reason"] == "InvalidData"
    assert results[1]["message"].startswith("spec.deletionPolicy: ")


def test_a_file_that_cannot_be_read_is_a_usage_error_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "validate", "-f", str(tmp_path / "nope.yaml"))
    assert (code, out) == (2, "")
    assert err.startswith(f"error: cannot read {tmp_path / 'nope.yaml'}: ")
    assert err.count("\n") == 1
    f = tmp_path / "broken.yaml"
    f.write_text("a: [1,\n")
    code, _, err = run(capsys, "validate", "-f", str(f))
    assert code == 2
    assert err.startswith(f"error: {f} is not valid YAML: ")
    assert err.count("\n") == 1
