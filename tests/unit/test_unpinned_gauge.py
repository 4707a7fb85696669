"""``etcdconfig_unpinned_pods`` is a per-Config series of the owning replica: it goes
when the Config is deleted or handed over, as ``etcdconfig_config_state`` does (a stale
1 from a former owner would keep an alert firing on a sum over replicas forever)."""

from __future__ import annotations

from etcdconfig import metrics


def sample(ns: str, name: str) -> float | None:
    return metrics.REGISTRY.get_sample_value(
        "etcdconfig_unpinned_pods", {"namespace": ns, "config": name}
    )


def test_the_series_of_a_config_no_longer_owned_or_deleted_goes() -> None:
    metrics.set_unpinned("gauge-ns", "kept", 0)
    metrics.set_unpinned("gauge-ns", "handed-over", 3)
    metrics.set_unpinned("gauge-ns", "deleted", 1)
    assert (sample("gauge-ns", "handed-over"), sample("gauge-ns", "deleted")) == (3.0, 1.0)

    metrics.forget_config("gauge-ns", "deleted")  # the finalizer of a deleted Config
    assert sample("gauge-ns", "deleted") is None
    metrics.retain_configs({("gauge-ns", "kept")})  # a resync round: only "kept" is ours
    assert sample("gauge-ns", "handed-over") is None
    assert sample("gauge-ns", "kept") == 0.0
    metrics.forget_config("gauge-ns", "kept")
    assert sample("gauge-ns", "kept") is None
