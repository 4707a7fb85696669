"""``make test`` removes a passed command's temporary files (the node stage leaves
gigabytes of node state per run) and keeps a failed one's, and never deletes under a
mount still in place."""

from __future__ import annotations

from pathlib import Path

from tests.tiers import _remove


def test_a_passed_commands_basetemp_is_removed(tmp_path: Path) -> None:
    base = tmp_path / "tmp-e2e-0"
    (base / "node0" / "etcd").mkdir(parents=True)
    (base / "node0" / "etcd" / "db").write_bytes(b"x" * 1024)
    assert _remove(base) == f"removed {base} (the command passed)"
    assert not base.exists()


def test_nothing_under_a_mount_is_removed() -> None:
    assert _remove(Path("/proc")).startswith("kept /proc: ")
    assert Path("/proc/self").exists()
