"""What the CLI's read commands say about a store (issue 11), against an in-memory
etcd laid out exactly as the store writes it (head, tombstone, incarnation records):
deletions and re-creations in `history`, a deleted Config in `show`, "purged"
instead of an empty table, exit 4 with one line for what never existed (`verify`
included), the retained range and the prefix in not-found messages, the schema in
`show --full` and `diff`, `diff`'s exit status, and `-o name|wide|jsonpath`."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml

from etcdconfig.canonical import checksum, sha256_of
from etcdconfig.cli import main as cli
from etcdconfig.etcd import prefix_end
from etcdconfig.etcd.types import KeyValue, RangeResult
from etcdconfig.store import VersionedStore
from etcdconfig.store.keys import Keys
from etcdconfig.store.records import Head, Incarnation, dump

PREFIX = "/t"
NS, NAME = "prod", "payments"
REF = f"{NS}/{NAME}"


@dataclass
class FakeEtcd:
    """The reads the CLI makes (get, range), over a dict; revision = writes so far."""

    data: dict[bytes, tuple[bytes, int]] = field(default_factory=dict)
    rev: int = 0

    def put(self, key: bytes, value: bytes) -> None:
        self.rev += 1
        self.data[key] = (value, self.rev)

    def delete(self, key: bytes) -> None:
        self.rev += 1
        self.data.pop(key, None)

    async def range(
        self,
        start: bytes,
        end: bytes | None = None,
        *,
        limit: int = 0,
        descending: bool = False,
        keys_only: bool = False,
        revision: int = 0,
        sort_by_create: bool = False,
        serializable: bool = False,
    ) -> RangeResult:
        keys = sorted(k for k in self.data if (k == start if end is None else start <= k < end))
        if descending:
            keys.reverse()
        more = bool(limit) and len(keys) > limit
        keys = keys[:limit] if limit else keys
        kvs = tuple(
            KeyValue(k, b"" if keys_only else self.data[k][0], 1, self.data[k][1], 1, 0)
            for k in keys
        )
        return RangeResult(kvs=kvs, revision=self.rev, more=more, count=len(kvs))

    async def get(self, key: bytes, *, revision: int = 0) -> tuple[KeyValue | None, int]:
        res = await self.range(key)
        return (res.kvs[0] if res.kvs else None), res.revision


@dataclass
class Store:
    """Writes what the operator's store writes for commits and deletions."""

    etcd: FakeEtcd = field(default_factory=FakeEtcd)
    keys: Keys = field(default_factory=lambda: Keys(PREFIX))
    clock: int = 0

    def now(self) -> str:
        self.clock += 1
        return f"2026-11-28T02:{self.clock:02d}:00.000Z"

    def head(self) -> Head | None:
        got = self.etcd.data.get(self.keys.head(NS, NAME))
        return Head.parse(got[0]) if got else None

    def commit(self, uid: str, generation: int, data: dict[str, Any], **extra: Any) -> int:
        head = self.head()
        cont = head is not None and head.version > 0
        version = head.version + 1 if head is not None and cont else 1
        at = self.now()
        record = {
            "format": 1,
            "version": version,
            "uid": uid,
            "generation": generation,
            "checksum": checksum(data),
            "parentChecksum": head.record_checksum if head is not None and cont else None,
            "data": data,
            "recordedAt": at,
            "recordedBy": "op-0",
            "author": {"manager": "kubectl-edit"},
            "origin": {"kind": "apply"},
            "fencingRevision": 7,
            **extra,
        }
        raw = dump(record)
        self.etcd.put(self.keys.version(NS, NAME, version), raw)
        new = Head(version, uid, generation, checksum(data), sha256_of(raw), at)
        self.etcd.put(self.keys.head(NS, NAME), dump(new.to_json()))
        if head is None or head.uid != uid:
            inc = Incarnation(uid=uid, first_version=version, recorded_at=at)
            self.etcd.put(self.keys.incarnation(NS, NAME, uid), dump(inc.to_json()))
        return version

    def delete(self, uid: str, *, purge: bool) -> None:
        head = self.head()
        assert head is not None and head.uid == uid
        inc_raw = self.etcd.data[self.keys.incarnation(NS, NAME, uid)][0]
        inc = Incarnation.parse(inc_raw)
        at = self.now()
        pointer: tuple[int, str | None, str | None] = (
            head.version,
            head.checksum,
            head.record_checksum,
        )
        if purge:
            assert inc.first_version is not None
            for v in range(inc.first_version, head.version + 1):
                self.etcd.delete(self.keys.version(NS, NAME, v))
            below = self.etcd.data.get(self.keys.version(NS, NAME, inc.first_version - 1))
            pointer = (0, None, None)
            if below is not None:
                rec = json.loads(below[0])
                pointer = (rec["version"], rec["checksum"], sha256_of(below[0]))
        tomb = Head(pointer[0], uid, head.generation, pointer[1], pointer[2], at, True, purge)
        self.etcd.put(self.keys.head(NS, NAME), dump(tomb.to_json()))
        ended = Incarnation(
            uid=uid,
            first_version=inc.first_version,
            last_version=head.version,
            deleted=True,
            purged=purge,
            recorded_at=at,
        )
        self.etcd.put(self.keys.incarnation(NS, NAME, uid), dump(ended.to_json()))


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> Store:
    # the CLI reads etcd (not the history API) only when endpoints are given, as an admin would
    monkeypatch.setenv("ETCDCONFIG_ETCD_ENDPOINTS", "127.0.0.1:2379")
    s = Store()

    async def with_store(args: Any, fn: Callable[[VersionedStore], Any]) -> int:
        return int(await fn(VersionedStore(s.etcd, prefix=PREFIX)))  # type: ignore[arg-type]

    monkeypatch.setattr(cli, "_with_store", with_store)
    return s


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def rows(out: str) -> list[list[str]]:
    return [line.split() for line in out.splitlines()[1:]]


# --- deletions and re-creations --------------------------------------------------------------


def test_history_shows_a_retain_deletion_and_the_re_creation_with_uids(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    store.commit("uid-a", 1, {"retries": 3})
    store.commit("uid-a", 2, {"retries": 5})
    store.delete("uid-a", purge=False)
    store.commit("uid-b", 1, {"retries": 5})  # re-created: generation 1 again, same data

    code, out, err = run(capsys, "history", REF)
    assert (code, err) == (0, "")
    table = rows(out)
    assert [r[0] for r in table] == ["3", "-", "-", "2", "1"]
    assert table[0][:3] == ["3", "(head)", "1"]
    assert out.splitlines()[2].split()[2:] == ["re-created", "uid", "uid-b"]
    assert out.splitlines()[3].split()[2:] == ["deleted", "(Retain)", "uid", "uid-a"]

    doc = json.loads(run(capsys, "history", REF, "-o", "json")[1])
    assert doc["state"] == "live"
    assert [v["version"] for v in doc["versions"]] == [3, 2, 1]
    assert [(e["event"], e["uid"]) for e in doc["events"]] == [
        ("re-created", "uid-b"),
        ("deleted", "uid-a"),
    ]
    assert doc["events"][1]["deletionPolicy"] == "Retain"
    assert doc["events"][1]["lastVersion"] == 2
    assert doc["events"][0]["firstVersion"] == 3
    assert [i["uid"] for i in doc["incarnations"]] == ["uid-a", "uid-b"]
    assert doc["head"]["uid"] == "uid-b" and "deleted" not in doc["head"]


def test_a_retained_deleted_config_is_marked_in_history_and_show(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    store.commit("uid-a", 1, {"retries": 3})
    store.delete("uid-a", purge=False)
    at = store.head().recorded_at  # type: ignore[union-attr]

    code, out, _ = run(capsys, "history", REF)
    assert code == 0
    assert [r[:2] for r in rows(out)] == [["-", at], ["1", "(deleted)"]]
    assert "(head)" not in out
    assert json.loads(run(capsys, "history", REF, "-o", "json")[1])["state"] == "deleted"

    # show: exit 0, the remaining data, and a marker that still parses as YAML
    code, out, err = run(capsys, "show", REF)
    assert (code, err) == (0, "")
    assert out.splitlines()[0] == (
        f"# {REF} was deleted (Retain) at {at}, uid uid-a; its versions remain"
    )
    assert yaml.safe_load(out) == {"retries": 3}
    doc = json.loads(run(capsys, "show", REF, "-o", "json")[1])
    assert doc["state"] == "deleted"
    assert doc["deleted"] == {"uid": "uid-a", "at": at, "deletionPolicy": "Retain"}
    assert doc["data"] == {"retries": 3}


def test_after_purge_history_says_purged_and_show_exits_4(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    store.commit("uid-a", 1, {"retries": 3})
    store.delete("uid-a", purge=True)
    at = store.head().recorded_at  # type: ignore[union-attr]
    note = f"{REF} was deleted (Purge) at {at}, uid uid-a; no version remains"

    assert run(capsys, "history", REF) == (0, note + "\n", "")
    doc = json.loads(run(capsys, "history", REF, "-o", "json")[1])
    assert (doc["state"], doc["versions"]) == ("purged", [])
    assert doc["head"]["purged"] is True and doc["head"]["deleted"] is True
    assert doc["events"] == [
        {"event": "deleted", "uid": "uid-a", "at": at, "deletionPolicy": "Purge", "lastVersion": 1}
    ]
    assert run(capsys, "show", REF) == (4, "", f"error: {note}\n")


def test_purge_of_a_re_created_config_keeps_the_earlier_history_and_says_so(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    store.commit("uid-a", 1, {"retries": 3})
    store.delete("uid-a", purge=False)
    store.commit("uid-b", 1, {"retries": 4})
    store.delete("uid-b", purge=True)
    code, out, _ = run(capsys, "history", REF)
    assert code == 0
    labels = [" ".join(r[2:]) if r[0] == "-" else r[0] for r in rows(out)]
    assert labels == ["deleted (Purge) uid uid-b", "deleted (Retain) uid uid-a", "1"]
    doc = json.loads(run(capsys, "show", REF, "-o", "json")[1])
    assert (doc["version"], doc["state"]) == (1, "deleted")
    assert doc["deleted"]["uid"] == "uid-b" and doc["deleted"]["deletionPolicy"] == "Purge"


@pytest.mark.parametrize(
    "args",
    [("history", REF), ("show", REF), ("verify", REF), ("diff", REF, "1", "2")],
)
@pytest.mark.parametrize("output", ["table", "json"])
def test_a_config_that_never_existed_exits_4_naming_the_prefix(
    store: Store, capsys: pytest.CaptureFixture[str], args: tuple[str, ...], output: str
) -> None:
    assert run(capsys, *args, "-o", output) == (
        4,
        "",
        f"error: {REF} has no history in the store (nothing under {PREFIX}/configs/{REF}/; "
        f"prefix {PREFIX}: check --prefix or ETCDCONFIG_ETCD_PREFIX)\n",
    )


def test_a_missing_version_names_the_retained_range(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    for n in range(1, 5):
        store.commit("uid-a", n, {"n": n})
    store.etcd.delete(store.keys.version(NS, NAME, 1))  # pruned by retention
    expected = f"error: {REF} has no version 99 in the store (retained: 2..4)\n"
    assert run(capsys, "show", REF, "--version", "99") == (4, "", expected)
    assert run(capsys, "diff", REF, "1", "4", "-o", "json")[2] == expected.replace("99", "1")


def test_verify_of_an_existing_config_still_checks_it(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    store.commit("uid-a", 1, {"n": 1})
    assert run(capsys, "verify", REF) == (0, "1 checked, 0 problem(s)\n", "")


# --- diff and the schema ----------------------------------------------------------------------

SCHEMA_A = {"type": "object", "properties": {"retries": {"type": "integer"}}}
SCHEMA_B = {"type": "object", "properties": {"retries": {"type": "integer", "maximum": 10}}}


def with_schema(schema: Any) -> dict[str, Any]:
    return {"schema": schema, "schemaChecksum": checksum(schema, "schema")}


def test_diff_exits_1_when_versions_differ_and_0_when_equal(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    store.commit("uid-a", 1, {"retries": 3})
    store.commit("uid-a", 2, {"retries": 5})
    code, out, err = run(capsys, "diff", REF, "1", "2")
    assert (code, err) == (1, "")
    assert out.splitlines() == [
        f"--- {REF}@v1",
        f"+++ {REF}@v2",
        "@@ -1 +1 @@",
        "-retries: 3",
        "+retries: 5",
    ]
    assert run(capsys, "diff", REF, "2", "2") == (0, "", "")
    code, out, _ = run(capsys, "diff", REF, "2", "2", "-o", "json")
    doc = json.loads(out)
    assert (code, doc["equal"], doc["diff"], doc["schemaEqual"]) == (0, True, "", None)


def test_a_schema_only_change_shows_in_diff_and_exits_1(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    store.commit("uid-a", 1, {"retries": 3}, **with_schema(SCHEMA_A))
    store.commit("uid-a", 2, {"retries": 3}, **with_schema(SCHEMA_B))
    code, out, _ = run(capsys, "diff", REF, "1", "2")
    assert code == 1
    lines = out.splitlines()
    assert lines[0] == "schema:"  # no data diff: only the schema section
    assert lines[1:3] == [f"--- {REF}@v1 schema", f"+++ {REF}@v2 schema"]
    assert "+    maximum: 10" in lines
    doc = json.loads(run(capsys, "diff", REF, "1", "2", "-o", "json")[1])
    assert (doc["equal"], doc["schemaEqual"], doc["diff"]) == (False, False, "")
    assert "maximum: 10" in doc["schemaDiff"]


def test_diff_against_a_record_without_schema_fields_claims_no_schema_change(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    store.commit("uid-a", 1, {"retries": 3})  # an old record: no schema fields
    store.commit("uid-a", 2, {"retries": 3}, **with_schema(SCHEMA_B))
    code, out, _ = run(capsys, "diff", REF, "1", "2", "-o", "json")
    doc = json.loads(out)
    assert (code, doc["equal"], doc["schemaEqual"], doc["schemaDiff"]) == (0, True, None, "")


def test_diff_of_a_record_holding_only_the_schema_checksum(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    store.commit("uid-a", 1, {"retries": 3}, schemaChecksum=checksum(SCHEMA_A, "schema"))
    store.commit("uid-a", 2, {"retries": 3}, **with_schema(SCHEMA_B))
    code, out, _ = run(capsys, "diff", REF, "1", "2")
    assert code == 1
    assert (
        f"-# schema {checksum(SCHEMA_A, 'schema')} (only its checksum is in this record)"
        in out.splitlines()
    )


def test_show_full_includes_the_schema_when_the_record_has_it(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    store.commit("uid-a", 1, {"retries": 3}, **with_schema(SCHEMA_A))
    full = yaml.safe_load(run(capsys, "show", REF, "--full")[1])
    assert (full["schema"], full["schemaChecksum"]) == (SCHEMA_A, checksum(SCHEMA_A, "schema"))
    assert json.loads(run(capsys, "show", REF, "--full", "-o", "json")[1])["schema"] == SCHEMA_A


# --- output formats and flags -----------------------------------------------------------------


def test_output_name_jsonpath_and_wide(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    store.commit("uid-a", 1, {"retries": 3})
    store.commit("uid-a", 2, {"retries": 5})
    assert run(capsys, "history", REF, "-o", "name") == (0, f"{REF}@v2\n{REF}@v1\n", "")
    assert run(capsys, "show", REF, "-o", "name") == (0, f"{REF}@v2\n", "")
    assert run(capsys, "history", REF, "-o", "jsonpath={.versions[*].version}") == (0, "2 1\n", "")
    assert run(capsys, "history", REF, "-o", "jsonpath={.config} v{.versions[0].version}")[1] == (
        f"{REF} v2\n"
    )
    assert run(capsys, "show", REF, "-o", "jsonpath=.data.retries")[1] == "5\n"
    code, out, _ = run(capsys, "history", REF, "-o", "wide")
    assert code == 0
    assert out.splitlines()[0].split() == [
        "VERSION",
        "GENERATION",
        "CHECKSUM",
        "RECORDED",
        "AUTHOR",
        "ORIGIN",
        "CAUSE",
        "UID",
        "RECORDED-BY",
        "FENCING",
    ]
    assert rows(out)[0][-3:] == ["uid-a", "op-0", "7"]
    # a path that does not exist: one line, exit 1
    assert run(capsys, "show", REF, "-o", "jsonpath={.nope}") == (
        1,
        "",
        "error: jsonpath: .nope: 'nope' is not found\n",
    )


def test_global_flags_before_or_after_the_command(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    store.commit("uid-a", 1, {"retries": 3})
    after = run(capsys, "history", NAME, "-n", NS, "-o", "json", "--debug")
    before = run(capsys, "--debug", "-o", "json", "-n", NS, "history", NAME)
    assert after == before and after[0] == 0
    assert json.loads(after[1])["config"] == REF
    args = cli.parse(["--prefix", "/x", "--etcd-endpoints", "h:1", "show", "a"])
    assert (args.etcd_prefix, args.etcd_endpoints, args.output, args.debug) == (
        "/x",
        "h:1",
        "table",
        False,
    )
    args = cli.parse(["show", "a", "--prefix", "/x", "--etcd-endpoints", "h:1", "--debug"])
    assert (args.etcd_prefix, args.etcd_endpoints, args.debug) == ("/x", "h:1", True)


@pytest.mark.parametrize(
    "argv",
    [
        ["history", REF, "--limit", "0"],
        ["history", REF, "--limit", "-1"],
        ["history", REF, "--before", "0"],
        ["history", REF, "-o", "xml"],
        ["history", REF, "-o", "jsonpath={range .items[*]}"],
        ["rollback", REF, "--to", "1", "--dry-run=maybe"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_dry_run_forms(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.parse(["rollback", REF, "--to", "1", "--dry-run"]).dry_run == "client"
    assert cli.parse(["rollback", REF, "--dry-run", "--to", "1"]).dry_run == "client"
    assert cli.parse(["rollback", REF, "--to", "1", "--dry-run=client"]).dry_run == "client"
    assert cli.parse(["rollback", REF, "--to", "1", "--dry-run=server"]).dry_run == "server"
    assert cli.parse(["rollback", REF, "--to", "1"]).dry_run == "none"


def test_diff_help_names_its_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["diff", "--help"])
    out = capsys.readouterr().out
    assert "NAMESPACE/NAME FROM TO" in " ".join(out.split())
    assert "exit 0 if equal, 1 if they differ" in " ".join(out.split())


def test_key_layout_used_by_the_fake_matches_the_store() -> None:
    # the fake writes under the store's own Keys: a layout change shows here first
    assert Keys(PREFIX).incarnations(NS, NAME) == f"{PREFIX}/configs/{REF}/incarnations/".encode()
    assert prefix_end(b"/a/") == b"/a0"
