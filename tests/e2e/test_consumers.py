"""Consumers in other languages: the Go example (examples/go-consumer, built with the go
command) and the Node example (examples/node-consumer, `npm ci`; skipped when node and
npm are not installed) run against real data, and the per-Config state metric.

- For documents that are hard to canonicalise (UTF-16 key order, non-ASCII and
  control characters, numbers such as 1e21, 0.1, -0, 5e-324, 1e16, deep nesting) the
  Go and Node programs compute exactly the checksum the operator does (etcdconfig.canonical,
  RFC 8785), from the text the operator publishes and from any other formatting.
- It prints the data only when the content verifies, and refuses a tampered file or
  ConfigMap with exit code 3 and no output; reformatting is not tampering.
- With -watch it applies each new verified version and keeps the last good one when a
  read does not verify.
- Against the real control plane: the ConfigMap the operator publishes verifies,
  read with kubectl and read from the API with a service account token that may only
  get that ConfigMap.
- ``etcdconfig_config_state`` on /metrics stays ``invalid`` across resync rounds while
  the Config is invalid, turns ``ready`` when it is fixed, and goes when it is deleted.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.e2e.operator_env import (
    OperatorProcess,
    apply,
    config_manifest,
    crd,
    operator,
    wait_observed,
    wait_until,
)

from etcdconfig.canonical import canonical_json, checksum
from etcdconfig.devenv.controlplane import ControlPlane

ROOT = Path(__file__).resolve().parents[2]
GO_CONSUMER = ROOT / "examples" / "go-consumer"

# what the operator writes into the ConfigMap key (controller/publish.py)
PUBLISHED = {"indent": 2, "sort_keys": True, "ensure_ascii": False}


def nested(depth: int) -> Any:
    value: Any = {"leaf": [1, 2.5, None, True, False, "x"]}
    for i in range(depth):
        value = {f"k{i}": value} if i % 2 else [value, i]
    return value


TRICKY: dict[str, Any] = {
    "unicode": {
        "name": "zürich",
        "emoji": "😀 smile",
        "cjk": "設定ファイル",
        "rtl": "שלום",
        "controls": "tab\tnewline\nbell\x07nul\x00del\x7f",
        "escapes": 'quote" backslash\\ slash/ <script>',
        "combining": "e\u0301 vs \u00e9",
        "line-separators": "\u2028\u2029",
    },
    # RFC 8785 sorts names by UTF-16 code units: "😀" (D83D…) before "ﬀ" (FB00) and after "€"
    "key-order": {
        "b": 1,
        "a": 2,
        "10": 3,
        "1": 4,
        "A": 5,
        "€": 6,
        "😀": 7,
        "\ufb00": 8,
        "": 9,
        "aa": 10,
        "a\u0000": 11,
    },
    "numbers": {
        "big": 1e21,
        "below-big": 1e20,
        "tenth": 0.1,
        "sum": 0.1 + 0.2,
        "negzero": -0.0,
        "tiny": 5e-324,
        "small": 1e-7,
        "max": 1.7976931348623157e308,
        "safe": 2**53 - 1,
        "negsafe": -(2**53 - 1),
        "whole-float": 100.0,
        "float-digits": 1e16,
        "third": 1 / 3,
        "neg": -1.5e-10,
        "ints": [0, -1, 1, 42],
    },
    "nested": {"deep": nested(40), "empty": [{}, [], {"": {}}], "nulls": [None, {"n": None}]},
    "flat": {"currency": "EUR", "retries": 5, "enabled": True},
}


def go(*args: str, cwd: Path = GO_CONSUMER, timeout: float = 600) -> str:
    flags = f"{os.environ.get('GOFLAGS', '')} -mod=readonly -buildvcs=false".strip()
    env = {**os.environ, "GOFLAGS": flags, "CGO_ENABLED": "0"}
    out = subprocess.run(
        ["go", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert out.returncode == 0, f"go {' '.join(args)}: {out.stdout}{out.stderr}"
    return out.stdout


@pytest.fixture(scope="module")
def consumer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example built with its go.mod/go.sum as committed (-mod=readonly), outside the
    tree; the build and module caches are the go command's defaults (under ~/.cache, ~/go)."""
    binary = tmp_path_factory.mktemp("go-consumer") / "go-consumer"
    go("vet", "./...")
    go("build", "-trimpath", "-o", str(binary), ".")
    return binary


NODE_CONSUMER = ROOT / "examples" / "node-consumer"


@pytest.fixture(scope="module")
def node_consumer(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The Node example with its locked dependency (`npm ci`), in a copy outside the tree."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are not installed (apt-get install nodejs npm)")
    copy = tmp_path_factory.mktemp("node-consumer") / "app"
    shutil.copytree(NODE_CONSUMER, copy, ignore=shutil.ignore_patterns("node_modules"))
    out = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund"],
        cwd=copy,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return [node, str(copy / "consumer.mjs")]


@pytest.fixture(params=["go", "node"])
def any_consumer(request: pytest.FixtureRequest) -> list[str]:
    """Each example consumer; both take the same flags for files and ConfigMap objects."""
    if request.param == "go":
        return [str(request.getfixturevalue("consumer"))]
    return list(request.getfixturevalue("node_consumer"))


def consume(
    command: Path | list[str], *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    argv = [str(command)] if isinstance(command, Path) else list(command)
    return subprocess.run([*argv, *args], input=stdin, capture_output=True, text=True, timeout=60)


def same(a: Any, b: Any) -> bool:
    """Equal as JSON values (-0 == 0, 1e21 == 1e+21)."""
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, int | float) and isinstance(b, int | float) and math.isclose(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b) and type(a) is type(b)


@pytest.mark.parametrize("name", sorted(TRICKY))
def test_consumer_checksum_agrees_with_the_operator(
    any_consumer: list[str], tmp_path: Path, name: str
) -> None:
    doc = TRICKY[name]
    expected = checksum(doc)
    texts = {
        "published": json.dumps(doc, **PUBLISHED) + "\n",  # type: ignore[arg-type]
        "canonical": canonical_json(doc).decode(),
        "ascii-escaped, unsorted": json.dumps(doc, ensure_ascii=True, separators=(", ", " : ")),
    }
    for how, text in texts.items():
        path = tmp_path / "config.json"
        path.write_text(text, encoding="utf-8")
        out = consume(any_consumer, "--file", str(path), "--print-checksum")
        assert (out.returncode, out.stdout.strip()) == (0, expected), (how, out.stderr)

        out = consume(any_consumer, "--file", str(path), "--checksum", expected, "--compact")
        assert out.returncode == 0, (how, out.stderr)
        assert same(json.loads(out.stdout), doc), how
        assert f"({expected})" in out.stderr


def test_consumer_refuses_a_tampered_file_and_accepts_a_reformatted_one(
    any_consumer: list[str], tmp_path: Path
) -> None:
    doc = {"currency": "EUR", "retries": 5, "limits": {"rate": 0.1, "name": "zürich"}}
    expected = checksum(doc)
    path = tmp_path / "config.json"
    sums = tmp_path / "checksum"
    sums.write_text(expected + "\n")

    path.write_text(json.dumps(doc, **PUBLISHED))  # type: ignore[arg-type]
    assert consume(any_consumer, "--file", str(path), "--checksum-file", str(sums)).returncode == 0
    path.write_text(json.dumps(doc, separators=(",", ":")).replace(",", " ,\n"))
    assert consume(any_consumer, "--file", str(path), "--checksum", expected).returncode == 0

    for tampered in (
        {**doc, "retries": 6},
        {**doc, "retries": 5.000001},
        {**doc, "extra": None},
        {k: v for k, v in doc.items() if k != "currency"},
        {**doc, "limits": {"rate": 0.1, "name": "zurich"}},
    ):
        path.write_text(json.dumps(tampered, **PUBLISHED))  # type: ignore[arg-type]
        out = consume(any_consumer, "--file", str(path), "--checksum", expected)
        assert out.returncode == 3, (tampered, out.stderr)
        assert out.stdout == ""  # nothing reaches the application
        assert "checksum mismatch" in out.stderr and "refusing it" in out.stderr

    path.write_text('{"currency": "EUR",')  # truncated: an error, not a mismatch
    out = consume(any_consumer, "--file", str(path), "--checksum", expected)
    assert (out.returncode, out.stdout) == (1, "")
    assert "not valid JSON" in out.stderr

    # usage errors: no checksum to verify against, two sources
    assert consume(any_consumer, "--file", str(path)).returncode == 2
    assert consume(any_consumer, "--file", str(path), "--configmap-json", "-").returncode == 2


def test_go_refuses_text_with_two_readings(consumer: Path, tmp_path: Path) -> None:
    """Duplicate names or trailing content could make what is hashed differ from what is
    used: jcs refuses both, and the data printed is decoded from the bytes hashed."""
    path = tmp_path / "config.json"
    for text in ('{"retries": 1, "retries": 9}', '{"retries": 1} {"retries": 9}'):
        path.write_text(text)
        out = consume(consumer, "-file", str(path), "-checksum", checksum({"retries": 1}))
        assert (out.returncode, out.stdout) == (1, ""), text
        assert "not valid JSON" in out.stderr


def config_map_object(data: Any, *, version: int = 4, sums: str | None = None) -> dict[str, Any]:
    """A ConfigMap as the operator publishes it (as `kubectl get -o json` shows it)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "payments-config",
            "namespace": "prod",
            "annotations": {
                "etcdconfig.io/version": str(version),
                "etcdconfig.io/checksum": sums if sums is not None else checksum(data),
            },
        },
        "data": {"config.json": json.dumps(data, **PUBLISHED) + "\n"},  # type: ignore[arg-type]
    }


def test_consumer_verifies_a_configmap_object(any_consumer: list[str]) -> None:
    data = TRICKY["unicode"]
    out = consume(any_consumer, "--configmap-json", "-", stdin=json.dumps(config_map_object(data)))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == data
    assert "ConfigMap prod/payments-config key config.json version 4" in out.stderr

    cm = config_map_object(data)
    cm["data"]["config.json"] = cm["data"]["config.json"].replace("zürich", "zurich")
    out = consume(any_consumer, "--configmap-json", "-", stdin=json.dumps(cm))
    assert (out.returncode, out.stdout) == (3, "")

    cm = config_map_object(data)
    del cm["metadata"]["annotations"]["etcdconfig.io/checksum"]
    out = consume(any_consumer, "--configmap-json", "-", stdin=json.dumps(cm))
    assert out.returncode == 1
    assert "no etcdconfig.io/checksum annotation" in out.stderr

    out = consume(
        any_consumer, "--configmap-json", "-", "--key", "other.json", stdin=json.dumps(cm)
    )
    assert out.returncode == 1
    assert 'has no key "other.json"' in out.stderr


@pytest.fixture
def watcher(consumer: Path, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path, Path]]:
    path, sums = tmp_path / "config.json", tmp_path / "checksum"
    proc = subprocess.Popen(
        [
            str(consumer),
            "-file",
            str(path),
            "-checksum-file",
            str(sums),
            "-watch",
            "100ms",
            "-compact",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    yield proc, path, sums
    proc.kill()
    proc.communicate(timeout=10)  # reaps it and closes the pipes


def publish_file(path: Path, sums: Path, data: Any, sum_of: Any = None) -> None:
    """Replace both files at once, as the kubelet swaps a volume's ..data link."""
    for target, text in (
        (path, json.dumps(data, **PUBLISHED)),  # type: ignore[arg-type]
        (sums, checksum(data if sum_of is None else sum_of)),
    ):
        tmp = target.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(target)


def test_go_watch_applies_new_versions_and_keeps_the_last_good_one(
    watcher: tuple[subprocess.Popen[str], Path, Path],
) -> None:
    proc, path, sums = watcher
    assert proc.stdout is not None and proc.stderr is not None
    publish_file(path, sums, {"retries": 1})
    assert json.loads(proc.stdout.readline()) == {"retries": 1}
    publish_file(path, sums, {"retries": 2})
    assert json.loads(proc.stdout.readline()) == {"retries": 2}
    # a content that does not match: reported, the last verified configuration stays
    publish_file(path, sums, {"retries": 99}, sum_of={"retries": 3})
    deadline = time.monotonic() + 20
    seen = ""
    while "keeping the configuration verified last" not in seen:
        assert time.monotonic() < deadline, seen
        seen += proc.stderr.readline()
    assert "checksum mismatch" in seen and checksum({"retries": 2}) in seen
    publish_file(path, sums, {"retries": 3})
    assert json.loads(proc.stdout.readline()) == {"retries": 3}
    assert proc.poll() is None


def test_go_verifies_what_the_operator_publishes(
    control_plane: ControlPlane,
    namespace: str,
    operator: OperatorProcess,
    consumer: Path,
    tmp_path: Path,
) -> None:
    plane, ns = control_plane, namespace
    # the API server writes 1e20 and 1e16 as integer digits, beyond ±(2^53-1): the operator
    # refuses those as InvalidData, so they are left out here (the Go tests above have them)
    numbers = {k: v for k, v in TRICKY["numbers"].items() if k not in ("below-big", "float-digits")}
    data = {**numbers, "name": "zürich", "emoji": "😀", "deep": nested(10)}
    apply(plane, config_manifest("payments", ns, data, publish={"configMap": {"name": "pay"}}))
    obj = wait_observed(plane, ns, "payments")
    assert obj["status"]["checksum"] == checksum(data)

    def published() -> str | None:
        out = plane.kubectl("get", "configmap", "pay", "-n", ns, "-o", "json", check=False)
        return out.stdout if out.returncode == 0 else None

    cm_json = wait_until(published, 60, "ConfigMap pay published")
    out = consume(consumer, "-configmap-json", "-", "-compact", stdin=cm_json)
    assert out.returncode == 0, out.stderr
    assert same(json.loads(out.stdout), data)
    assert f"version {obj['status']['version']} ({checksum(data)})" in out.stderr

    # from the API, as a pod would: a service account allowed to get this ConfigMap only
    plane.kubectl("create", "serviceaccount", "app", "-n", ns)
    plane.kubectl(
        "create", "role", "read-pay", "-n", ns, "--verb=get", "--resource=configmaps",
        "--resource-name=pay",
    )  # fmt: skip
    plane.kubectl(
        "create", "rolebinding", "app-read-pay", "-n", ns, "--role=read-pay",
        f"--serviceaccount={ns}:app",
    )  # fmt: skip
    token = plane.kubectl("create", "token", "app", "-n", ns).stdout.strip()
    token_file = tmp_path / "token"
    token_file.write_text(token)
    api = [
        "-server", plane.server, "-ca-file", str(plane.pki_dir / "ca.crt"),
        "-token-file", str(token_file), "-namespace", ns, "-compact",
    ]  # fmt: skip

    def read_api() -> subprocess.CompletedProcess[str] | None:
        out = consume(consumer, *api, "-configmap", "pay")
        return out if out.returncode == 0 else None  # RBAC may take a moment

    out = wait_until(read_api, 30, "the service account reads the ConfigMap")
    assert same(json.loads(out.stdout), data)

    # a new version reaches the consumer verified; another ConfigMap is forbidden
    apply(
        plane,
        config_manifest("payments", ns, {"retries": 7}, publish={"configMap": {"name": "pay"}}),
    )
    wait_observed(plane, ns, "payments")

    def new_version() -> str | None:
        got = read_api()
        return got.stdout if got is not None and json.loads(got.stdout) == {"retries": 7} else None

    wait_until(new_version, 60, "the new version published and verified")
    out = consume(consumer, *api, "-configmap", "kube-root-ca.crt")
    assert out.returncode == 1
    assert "403 Forbidden" in out.stderr


def config_states(op: OperatorProcess, ns: str, name: str) -> dict[str, float]:
    """``etcdconfig_config_state`` of one Config, as the operator's /metrics serves it."""
    out: dict[str, float] = {}
    for line in op.metrics().splitlines():
        if line.startswith("etcdconfig_config_state{") and (
            f'namespace="{ns}"' in line and f'name="{name}"' in line
        ):
            state = line.split('state="', 1)[1].split('"', 1)[0]
            out[state] = float(line.rsplit(" ", 1)[1])
    return out


def test_config_state_metric_stays_while_invalid_and_goes_with_the_config(
    control_plane: ControlPlane, namespace: str, operator: OperatorProcess
) -> None:
    plane, ns = control_plane, namespace
    schema = {"type": "object", "properties": {"retries": {"type": "integer", "maximum": 10}}}
    apply(plane, config_manifest("flags", ns, {"retries": 3}, schema=schema))
    wait_observed(plane, ns, "flags")
    states = wait_until(
        lambda: (
            config_states(operator, ns, "flags").get("ready") == 1
            and config_states(operator, ns, "flags")
        ),
        30,
        "state ready",
    )
    assert states == {"ready": 1, "reconciling": 0, "invalid": 0, "stalled": 0, "corrupt": 0}

    apply(plane, config_manifest("flags", ns, {"retries": 30}, schema=schema))
    wait_observed(plane, ns, "flags", ready=False)
    wait_until(lambda: config_states(operator, ns, "flags").get("invalid") == 1, 30, "invalid")
    # resync rounds (every 5 s here) go over it again: it stays invalid, the alert stays on
    time.sleep(11)
    states = config_states(operator, ns, "flags")
    assert states["invalid"] == 1 and sum(states.values()) == 1

    apply(plane, config_manifest("flags", ns, {"retries": 4}, schema=schema))
    wait_observed(plane, ns, "flags")
    wait_until(lambda: config_states(operator, ns, "flags").get("ready") == 1, 30, "ready again")

    plane.kubectl("delete", "configs.etcdconfig.io", "flags", "-n", ns, "--wait=true")
    wait_until(lambda: config_states(operator, ns, "flags") == {}, 30, "series removed")
