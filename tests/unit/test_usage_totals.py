"""The history gauges are sums over the Configs a replica owns, kept by difference on
every commit (not recounted over every Config per commit) and recounted once a round."""

from __future__ import annotations

import random
from typing import Any, cast

from etcdconfig import metrics
from etcdconfig.controller.runtime import Runtime
from etcdconfig.store.records import Sizes


def gauges() -> tuple[float | None, float | None]:
    return (
        metrics.REGISTRY.get_sample_value("etcdconfig_history_versions"),
        metrics.REGISTRY.get_sample_value("etcdconfig_history_bytes"),
    )


def sizes(versions: int, each: int) -> Sizes:
    return Sizes(tuple((v, each) for v in range(1, versions + 1)))


def test_the_sums_follow_every_commit_and_every_round() -> None:
    rt = Runtime(settings=cast("Any", None), client=cast("Any", None), kube=cast("Any", None))
    rng = random.Random(7)
    for _ in range(500):
        uid = f"uid-{rng.randrange(20)}"
        rt.note_usage(uid, sizes(rng.randrange(1, 10), rng.randrange(0, 5000)))
        expected = (
            float(sum(v for v, _ in rt.usage.values())),
            float(sum(b for _, b in rt.usage.values())),
        )
        assert gauges() == expected
    kept = {f"uid-{i}" for i in range(0, 20, 3)}
    rt.keep_usage(kept)
    assert set(rt.usage) <= kept
    assert gauges() == (
        float(sum(v for v, _ in rt.usage.values())),
        float(sum(b for _, b in rt.usage.values())),
    )
    rt.note_usage("uid-0", sizes(2, 10))  # after the recount, differences again
    assert gauges() == (
        float(sum(v for v, _ in rt.usage.values())),
        float(sum(b for _, b in rt.usage.values())),
    )


def test_a_round_forgets_the_integrity_verdicts_of_configs_no_longer_owned() -> None:
    """A verdict is this replica's knowledge of a Config it owns: once the Config is
    deleted or handed over, keeping it would only grow with every Config ever scanned
    (and, back after a hand-over, it is older than the other owner's)."""
    rt = Runtime(settings=cast("Any", None), client=cast("Any", None), kube=cast("Any", None))
    for uid in ("a", "b", "c"):
        rt.intact[uid] = {"type": "Intact", "status": "True"}
    rt.keep_usage({"a", "c"})
    assert sorted(rt.intact) == ["a", "c"]
