"""docs/history.md stays true to the CLI (issue 11): every command and output format
it has, the head's and incarnation record's fields as the store writes them, and
what `rollback --print` leaves out."""

from __future__ import annotations

import re
from pathlib import Path

from etcdconfig.cli import main as cli
from etcdconfig.cli.completion import words
from etcdconfig.store.records import Head, Incarnation

HISTORY = (Path(__file__).resolve().parents[2] / "docs" / "history.md").read_text()


def test_every_reading_command_and_output_format_is_documented() -> None:
    commands = set(words(cli.build_parser())[""]["args"]) - {"run", "dev", "version"}
    assert sorted(c for c in commands if f"etcdconfig {c}" not in HISTORY) == []
    for fmt in ("table", "wide", "json", "yaml", "name", "jsonpath=TEMPLATE"):
        assert f"`{fmt}`" in HISTORY, fmt
    assert "--dry-run=server" in HISTORY and "diff(1)" in HISTORY


def test_head_and_incarnation_fields_are_documented() -> None:
    head = Head(3, "u", 1, "c", "r", "t", deleted=True, purged=True).to_json()
    inc = Incarnation("u", 1, 2, True, True, "v", "t").to_json()
    head_doc = re.search(r"`\{format, version, uid[^`]*\}`", HISTORY)
    inc_doc = re.search(r"`\{format, uid, firstVersion[^`]*\}`", HISTORY)
    assert head_doc and inc_doc
    assert {f.strip(" {}?") for f in head_doc.group(0).strip("`").split(",")} == set(head)
    assert {f.strip(" {}?") for f in inc_doc.group(0).strip("`").split(",")} == set(inc)
    assert "{p}/configs/{ns}/{name}/incarnations/{uid}" in HISTORY


def test_what_rollback_print_leaves_out_is_documented() -> None:
    text = " ".join(HISTORY.split())
    for field in ("status", *cli._SERVER_METADATA[:5]):
        assert f"`{field}`" in text or f"`metadata.{field}`" in text, field
    assert "`kubectl.kubernetes.io/last-applied-configuration`" in text
    assert "(`etcdconfig.io/finalizer`)" in text
