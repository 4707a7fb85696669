"""bench/compression.py runs in --quick --json mode and reports every figure with sane
values (no timing assertions: the CPU figures are only checked to be positive)."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "compression.py"
# loaded by path under its own name: from Python 3.14 on, `compression` is a standard
# library package that a plain import could find first
_spec = importlib.util.spec_from_file_location("bench_compression", BENCH)
assert _spec is not None
assert _spec.loader is not None
compression = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = compression  # dataclasses look their module up by name
_spec.loader.exec_module(compression)

STRUCTURED = ("app", "flags", "routes", "rules")


@pytest.fixture(scope="module")
def figures() -> dict[str, Any]:
    """One --quick --json run for the module; stdout must be exactly one JSON object."""
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert compression.main(["--quick", "--json"]) == 0
    out = json.loads(stdout.getvalue())
    assert isinstance(out, dict)
    return out


def test_every_set_has_every_figure(figures: dict[str, Any]) -> None:
    zstd = importlib.util.find_spec("zstandard") is not None
    assert figures["zstd_available"] is zstd
    assert figures["codecs"][:2] == ["zlib1", "zlib6"]
    assert len(figures["codecs"]) == (5 if zstd else 2)
    sets = figures["sets"]
    assert {"example_payments", "example_feature_flags", "repo_crd"} <= set(sets)
    for kind in (*STRUCTURED, "pem"):
        for size in ("1k", "4k", "16k", "64k", "256k", "1m"):
            assert f"{kind}_{size}" in sets
    for name in sets:
        assert figures[f"stored_bytes_{name}"] > figures[f"data_bytes_{name}"] > 0
        assert figures[f"canonical_us_{name}"] > 0
        for codec in compression.CODECS:
            keys = (
                f"value_bytes_{codec}_{name}",
                f"b64_bytes_{codec}_{name}",
                f"saved_ratio_{codec}_{name}",
                f"saved_ratio_b64_{codec}_{name}",
                f"compress_us_{codec}_{name}",
                f"decompress_us_{codec}_{name}",
                f"compress_us_vs_canonical_{codec}_{name}",
                f"decompress_us_vs_canonical_{codec}_{name}",
                f"compress_us_b64_{codec}_{name}",
                f"decompress_us_vs_canonical_b64_{codec}_{name}",
            )
            for key in keys:
                value = figures[key]
                if codec in figures["codecs"]:
                    assert isinstance(value, int | float) and math.isfinite(value), key
                else:
                    assert value is None, key
            if codec in figures["codecs"]:
                assert figures[f"compress_us_{codec}_{name}"] > 0
                assert figures[f"decompress_us_{codec}_{name}"] > 0
    for size in figures["sizes"]:
        assert figures[f"saved_ratio_zlib6_{size}"] is not None
        assert figures[f"compress_us_vs_canonical_zlib6_{size}"] > 0


def test_repetitive_data_compresses_and_base64_blobs_barely_do(figures: dict[str, Any]) -> None:
    for kind in STRUCTURED:
        for size in ("4k", "16k", "64k", "256k"):
            name = f"{kind}_{size}"
            assert figures[f"value_bytes_zlib6_{name}"] < figures[f"stored_bytes_{name}"]
            assert figures[f"saved_ratio_zlib6_{name}"] > 0.5, name
            assert figures[f"saved_ratio_b64_zlib6_{name}"] > 0.3, name
    # larger records compress better (the mix of the structured kinds)
    mix = [figures[f"saved_ratio_zlib6_{size}"] for size in ("1k", "4k", "16k", "64k")]
    assert mix == sorted(mix)
    for size in figures["sizes"]:
        # random bytes in base64: ~6 bits of 8 per character; the JSON shape re-encodes
        # the compressed bytes in base64 and so saves next to nothing
        assert figures[f"saved_ratio_zlib6_pem_{size}"] < 0.4
        assert figures[f"saved_ratio_b64_zlib6_pem_{size}"] < 0.15
    # tiny records: the JSON shape only adds the base64 and the new field
    assert figures["saved_ratio_b64_zlib6_example_payments"] < 0.05


def test_fleet_figures(figures: dict[str, Any]) -> None:
    assert (figures["fleet_configs"], figures["fleet_versions"]) == (10_000, 100)
    assert figures["fleet_data_bytes"] == 10_000
    stored = figures["fleet_stored_bytes"]
    assert stored == pytest.approx(1_000_000 * figures["fleet_record_bytes"], rel=1e-3)
    assert stored > 1_000_000 * figures["fleet_data_bytes"]
    for codec in figures["codecs"]:
        assert 0 < figures[f"fleet_saved_bytes_b64_{codec}"] < figures[f"fleet_saved_bytes_{codec}"]
        assert figures[f"fleet_saved_bytes_{codec}"] < stored
        for kind in figures["fleet_kinds"]:
            assert figures[f"fleet_saved_bytes_{codec}_{kind}"] > 0
