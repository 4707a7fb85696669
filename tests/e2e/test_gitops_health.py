"""Argo CD and kstatus judge Configs with their own code.

- Argo CD: our health check (docs/argocd/resource_customizations/etcdconfig.io/Config/,
  in Argo CD's own layout, ready to contribute upstream) runs in the Lua interpreter Argo CD
  uses (gopher-lua, with Argo CD's VM set-up: ``etcdconfig.devenv.gotools.argocd_health``),
  both as a built-in script (standard libraries open, as Argo CD's health_test.yaml harness
  runs it) and as an argocd-cm customization (restricted libraries, the default there).
- kstatus: ``status.Compute`` of sigs.k8s.io/cli-utils (what Flux waits on).

Both judge the objects a real operator writes at each stage of a Config's life: not yet
observed, Ready, spec changed while the operator is busy, invalid data (webhook off), etcd
down, a tampered stored version, being deleted. The testdata of health_test.yaml were taken
from this test (``ETCDCONFIG_ARGOCD_TESTDATA_OUT=dir`` writes the live objects there) and
each live object must still have the condition types, statuses and reasons of its testdata
file, so the upstream test cases stay true to what the operator writes.

The two Go programs are built on first use from Go modules and cached (seconds).
"""

from __future__ import annotations

import json
import os
import re
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.e2e.operator_env import (
    OperatorProcess,
    apply,
    condition,
    config_manifest,
    get,
    wait_observed,
    wait_until,
)

from etcdconfig.devenv import gotools
from etcdconfig.devenv.controlplane import ControlPlane
from etcdconfig.devenv.etcd import EtcdServer
from etcdconfig.etcd import EtcdClient, EtcdSettings

ROOT = Path(__file__).resolve().parents[2]
CHECK_DIR = ROOT / "docs" / "argocd" / "resource_customizations" / "etcdconfig.io" / "Config"
HEALTH_LUA = CHECK_DIR / "health.lua"
GITOPS_DOC = ROOT / "docs" / "gitops.md"

SCHEMA = {
    "type": "object",
    "required": ["retries"],
    "properties": {"retries": {"type": "integer", "maximum": 10}},
}


@pytest.fixture(scope="module")
def judges() -> tuple[Path, Path]:
    """Both programs built (or found in the cache) once per module."""
    return gotools.ensure_luahealth(), gotools.ensure_kstatus()


def health_cases() -> list[dict[str, Any]]:
    return list(yaml.safe_load((CHECK_DIR / "health_test.yaml").read_text())["tests"])


def argocd(obj: dict[str, Any]) -> dict[str, Any]:
    """Argo CD's verdict, the same whether the standard libraries are open or not."""
    builtin = gotools.argocd_health(HEALTH_LUA, obj, open_libs=True)
    configmap = gotools.argocd_health(HEALTH_LUA, obj, open_libs=False)
    assert builtin == configmap
    return builtin


# --- the upstream test cases ----------------------------------------------------------------


@pytest.mark.parametrize("open_libs", [True, False], ids=["built-in", "argocd-cm"])
def test_every_health_test_yaml_case(judges: tuple[Path, Path], open_libs: bool) -> None:
    """What `go test ./util/lua/` in Argo CD runs for our folder (and the argocd-cm way)."""
    cases = health_cases()
    assert len(cases) >= 6
    got = []
    for case in cases:
        obj = yaml.safe_load((CHECK_DIR / case["inputPath"]).read_text())
        got.append(gotools.argocd_health(HEALTH_LUA, obj, open_libs=open_libs))
    assert got == [case["healthStatus"] for case in cases]


def test_testdata_are_all_used_and_are_configs() -> None:
    used = {case["inputPath"] for case in health_cases()}
    present = {f"testdata/{p.name}" for p in (CHECK_DIR / "testdata").glob("*.yaml")}
    assert used == present
    for path in sorted(present):
        obj = yaml.safe_load((CHECK_DIR / path).read_text())
        assert (obj["apiVersion"], obj["kind"]) == ("etcdconfig.io/v1alpha1", "Config"), path
        assert "managedFields" not in obj["metadata"], path


def test_documented_argocd_cm_snippet_is_the_health_check() -> None:
    text = GITOPS_DOC.read_text()
    match = re.search(
        r"resource\.customizations\.health\.etcdconfig\.io_Config: \|\n(.*?)```", text, re.S
    )
    assert match is not None, "the argocd-cm example is missing from docs/gitops.md"
    assert textwrap.dedent(match.group(1)) == HEALTH_LUA.read_text()


def test_a_script_error_is_reported_not_hidden(judges: tuple[Path, Path], tmp_path: Path) -> None:
    """The harness is the real VM: string.* is not there for an argocd-cm script."""
    script = tmp_path / "health.lua"
    script.write_text('return {status = string.upper("healthy")}\n')
    assert gotools.argocd_health(script, {}, open_libs=True) == {"status": "Unknown"} | {
        "message": "Lua returned an invalid health status"
    }
    with pytest.raises(RuntimeError, match="non-table object"):
        gotools.argocd_health(script, {}, open_libs=False)


# --- live objects from a real operator ------------------------------------------------------


@pytest.fixture(scope="module")
def outage_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """The store's etcd, of this module alone: the test stops it."""
    server = EtcdServer(data_dir=tmp_path_factory.mktemp("health-etcd") / "data", name="health")
    server.start()
    try:
        server.wait_healthy(30.0)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def health_operator(
    control_plane: ControlPlane,
    outage_etcd: EtcdServer,
    crd: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    """An operator without the webhook, scanning the store every second."""
    op = OperatorProcess(
        plane=control_plane,
        etcd_endpoint=outage_etcd.endpoint,
        prefix=f"/health-{uuid.uuid4().hex[:8]}",
        workdir=tmp_path_factory.mktemp("health-operator"),
        replica_id="health-op",
        extra=("--integrity-interval", "1", "--resync-interval", "1"),
    )
    op.start()
    try:
        op.wait_ready()
        yield op
    finally:
        op.resume_if_paused()
        op.stop()


def signature(obj: dict[str, Any]) -> list[tuple[str, str]]:
    """The conditions' types and statuses (what the health check reads). Not their
    reasons: which check last confirmed one (the read-back after a write, the periodic
    scan: ``ReadBackVerified`` / ``Verified``) depends on timing."""
    conditions = (obj.get("status") or {}).get("conditions") or []
    return sorted((c["type"], c["status"]) for c in conditions)


def keep(stage: str, obj: dict[str, Any]) -> dict[str, Any]:
    """Compare the live object with its testdata file (and write it out when asked)."""
    name = f"{stage}.yaml"
    out = os.environ.get("ETCDCONFIG_ARGOCD_TESTDATA_OUT")
    if out:
        clean = json.loads(json.dumps(obj))
        clean["metadata"].pop("managedFields", None)
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / name).write_text(yaml.safe_dump(clean, sort_keys=False))
        return obj
    recorded = yaml.safe_load((CHECK_DIR / "testdata" / name).read_text())
    assert signature(obj) == signature(recorded), f"testdata/{name} no longer matches"
    assert argocd(recorded)["status"] == argocd(obj)["status"]
    return obj


def judge(obj: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    return argocd(obj), gotools.kstatus(obj)


async def test_argocd_and_kstatus_on_every_stage(
    control_plane: ControlPlane,
    namespace: str,
    health_operator: OperatorProcess,
    outage_etcd: EtcdServer,
    judges: tuple[Path, Path],
) -> None:
    op = health_operator
    m = config_manifest("payments", namespace, {"retries": 3}, schema=SCHEMA)

    # 1. Created while the operator is not looking: no status at all.
    op.pause()
    apply(control_plane, m)
    obj = keep("progressing_noStatus", get(control_plane, namespace, "payments"))
    argo, ks = judge(obj)
    assert argo == {
        "status": "Progressing",
        "message": "Waiting for the etcdconfig operator to observe the Config",
    }
    # the CRD defaults status.observedGeneration to 0: kstatus says InProgress (with no
    # status at all it would say Current, "Resource is current": a Flux health check
    # would pass before the operator recorded anything)
    assert obj["status"] == {"observedGeneration": 0}
    assert ks["status"] == "InProgress"

    # 2. Recorded: Ready for the current generation.
    op.resume_if_paused()
    obj = keep("healthy", wait_observed(control_plane, namespace, "payments"))
    argo, ks = judge(obj)
    assert argo == {"status": "Healthy", "message": "version 1 is the head"}
    assert (ks["status"], ks["message"]) == ("Current", "Resource is Ready")

    # 3. Spec changed while the operator is busy: status is for generation 1.
    op.pause()
    m["spec"]["data"] = {"retries": 4}
    apply(control_plane, m)
    obj = keep("progressing_generationNotObserved", get(control_plane, namespace, "payments"))
    assert (obj["metadata"]["generation"], obj["status"]["observedGeneration"]) == (2, 1)
    assert condition(obj, "Ready")["status"] == "True"  # type: ignore[index]
    argo, ks = judge(obj)
    assert argo == {
        "status": "Progressing",
        "message": "Waiting for the etcdconfig operator to observe generation 2",
    }
    assert (ks["status"], ks["message"]) == (
        "InProgress",
        "Config generation is 2, but latest observed generation is 1",
    )
    op.resume_if_paused()
    obj = wait_observed(control_plane, namespace, "payments")
    assert judge(obj)[0] == {"status": "Healthy", "message": "version 2 is the head"}

    # 4. Invalid data, the webhook off: Stalled with our message and its path.
    m["spec"]["data"] = {"retries": 11}
    apply(control_plane, m)
    obj = keep(
        "degraded_invalidData", wait_observed(control_plane, namespace, "payments", ready=False)
    )
    stalled = condition(obj, "Stalled")
    assert stalled is not None and stalled["status"] == "True"
    assert stalled["message"] == "fix spec to continue: spec.data.retries: violates maximum 10"
    argo, ks = judge(obj)
    assert argo == {"status": "Degraded", "message": stalled["message"]}
    assert (ks["status"], ks["message"]) == ("Failed", stalled["message"])

    # Fixed: Healthy again, as version 3.
    m["spec"]["data"] = {"retries": 5}
    apply(control_plane, m)
    obj = wait_observed(control_plane, namespace, "payments")
    assert judge(obj)[0] == {"status": "Healthy", "message": "version 3 is the head"}
    assert judge(obj)[1]["status"] == "Current"

    # 5. etcd down while a change waits: Reconciling with the operator's reason.
    outage_etcd.kill()
    try:
        m["spec"]["data"] = {"retries": 6}
        apply(control_plane, m)

        def reconciling() -> dict[str, Any] | None:
            o = get(control_plane, namespace, "payments")
            c = condition(o, "Reconciling")
            return o if c and c["status"] == "True" and c["reason"] == "EtcdUnavailable" else None

        obj = keep("progressing_etcdUnavailable", wait_until(reconciling, 90, "Reconciling"))
        message = condition(obj, "Reconciling")["message"]  # type: ignore[index]
        argo, ks = judge(obj)
        assert argo == {"status": "Progressing", "message": message}
        assert (ks["status"], ks["message"]) == ("InProgress", message)
    finally:
        outage_etcd.start()
    outage_etcd.wait_healthy(30)
    obj = wait_observed(control_plane, namespace, "payments", timeout=90)
    assert judge(obj)[0] == {"status": "Healthy", "message": "version 4 is the head"}

    # 6. A stored version tampered with: the integrity scan sets Intact=False.
    client = EtcdClient(EtcdSettings(endpoints=[outage_etcd.endpoint]))
    try:
        key = f"{op.prefix}/configs/{namespace}/payments/versions/{1:020d}".encode()
        kv, _ = await client.get(key)
        assert kv is not None
        record = json.loads(kv.value)
        record["data"] = {"retries": 100}
        await client.put(key, json.dumps(record).encode())
    finally:
        await client.close()

    def violated() -> dict[str, Any] | None:
        o = get(control_plane, namespace, "payments")
        c = condition(o, "Intact")
        return o if c and c["status"] == "False" else None

    obj = keep("degraded_integrityViolation", wait_until(violated, 60, "Intact=False"))
    intact = condition(obj, "Intact")
    assert intact is not None and "v1: checksum-mismatch" in intact["message"]
    # Stalled (only a person can repair the store): Failed to kstatus, so a Flux health
    # check fails at once instead of waiting for its timeout; Degraded to Argo CD
    stalled = condition(obj, "Stalled")
    assert stalled is not None and stalled["status"] == "True"
    assert stalled["message"] == "run `etcdconfig verify` and repair the store"
    argo, ks = judge(obj)
    assert argo == {"status": "Degraded", "message": stalled["message"]}
    assert (ks["status"], ks["message"]) == ("Failed", stalled["message"])


def test_deleting_config(
    control_plane: ControlPlane,
    namespace: str,
    health_operator: OperatorProcess,
    judges: tuple[Path, Path],
) -> None:
    """Argo CD decides an object being deleted before any script; kstatus: Terminating."""
    op = health_operator
    apply(control_plane, config_manifest("doomed", namespace, {"retries": 1}))
    wait_observed(control_plane, namespace, "doomed")
    op.pause()
    try:
        control_plane.kubectl(
            "delete", "configs.etcdconfig.io", "doomed", "-n", namespace, "--wait=false"
        )
        obj = get(control_plane, namespace, "doomed")
        assert obj["metadata"].get("deletionTimestamp")
        assert obj["metadata"]["finalizers"] == ["etcdconfig.io/finalizer"]
        controller = gotools.argocd_health(HEALTH_LUA, obj, controller=True)
        assert controller == {"status": "Progressing", "message": "Pending deletion"}
        assert gotools.kstatus(obj)["status"] == "Terminating"
    finally:
        op.resume_if_paused()

    def gone() -> bool:
        out = control_plane.kubectl(
            "get", "configs.etcdconfig.io", "doomed", "-n", namespace, "--ignore-not-found"
        )
        return out.stdout.strip() == ""

    wait_until(gone, 60, "doomed deleted")
