"""The flattened ConfigMap form (``spec.publish.configMap.format: flat``)."""

from __future__ import annotations

from etcdconfig.controller.publish import INVALID_KEY, Refusal, flat_content
from etcdconfig.reconcile import parse_spec


def test_one_key_per_top_level_field_strings_as_they_are_the_rest_as_json() -> None:
    data = {
        "MODE": "safe",
        "RETRIES": 3,
        "RATIO": 0.5,
        "DEBUG": True,
        "none": None,
        "limits": {"cpu": 2, "a": [1, "é"]},
        "empty": "",
    }
    assert flat_content(data) == {
        "MODE": "safe",
        "RETRIES": "3",
        "RATIO": "0.5",
        "DEBUG": "true",
        "none": "null",
        "limits": '{"a":[1,"é"],"cpu":2}',
        "empty": "",
    }


def test_a_field_that_is_no_config_map_key_is_refused_by_name() -> None:
    out = flat_content({"ok": 1, "bad key": 2, "ü": 3}, "ns/cm")
    assert isinstance(out, Refusal)
    assert out.reason == INVALID_KEY and out.stalled
    assert '"bad key", "ü"' in out.message and "ns/cm" in out.message


def test_format_defaults_to_json_and_accepts_flat() -> None:
    spec = parse_spec({"data": {}, "publish": {"configMap": {"name": "cm"}}})
    assert spec.publish is not None and spec.publish.config_map is not None
    assert spec.publish.config_map.format == "json"
    spec = parse_spec({"data": {}, "publish": {"configMap": {"name": "cm", "format": "flat"}}})
    assert spec.publish is not None and spec.publish.config_map is not None
    assert spec.publish.config_map.format == "flat"
