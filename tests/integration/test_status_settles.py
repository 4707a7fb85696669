"""A Config recorded by its watch event needs nothing from the next resync round.

The reconcile that commits a version and a later reconcile that finds it recorded
must build the same status: before, the first said "generation 1 recorded as version
1" and the second "generation 1 is recorded; head is version 1", so the first resync
round after a bulk of N new Configs patched N statuses (N more watch events for kopf)
and the round after reconciled them again (measured with bench/scale.py: 1,494 of
3,022 Configs in the round after the first). Real etcd, the real Reconciler and
Resync; the API server is the in-memory one of the resync queue's review. Mutant M113.
"""

from __future__ import annotations

from tests.integration.test_adversarial_resync_queue import (  # noqa: F401 (fixture)
    Api,
    Factory,
    kopf_reconciles,
    make_rt,
)

from etcdconfig.controller.loops import Resync
from etcdconfig.controller.reconciler import Reconciler


def recorded_message(api: Api, name: str) -> str:
    conditions = api.objs[name].status["conditions"]
    return str(next(c for c in conditions if c["type"] == "Recorded")["message"])


async def test_a_config_its_event_recorded_is_left_alone_by_the_next_round(
    make_rt: Factory,  # noqa: F811 (the fixture imported above)
) -> None:
    api = Api()
    rt = await make_rt("r0", api)
    for i in range(5):
        obj = api.add(f"c{i}", f"uid-{i}")
        await kopf_reconciles(rt, obj.get())
    assert recorded_message(api, "c0") == "generation 1 recorded as version 1"
    patched = len(api.patches)

    resync = Resync(rt, Reconciler(rt))
    await resync.once()  # the first round (a hand-over): every Config reconciled
    assert api.patches[patched:] == []  # nothing to change in any status
    assert resync._settled == {f"uid-{i}": str(api.objs[f"c{i}"].rv) for i in range(5)}

    # a new version by the event, then the round: the same
    api.objs["c0"].change_spec()
    await kopf_reconciles(rt, api.objs["c0"].get())
    assert recorded_message(api, "c0") == "generation 2 recorded as version 2"
    patched = len(api.patches)
    await resync.once()
    assert api.patches[patched:] == []


async def test_a_stale_copy_of_a_recorded_config_says_which_version_is_head(
    make_rt: Factory,  # noqa: F811 (the fixture imported above)
) -> None:
    """A copy of the object older than the store (a listing read before the next
    generation was recorded) is told apart: its generation is recorded, the head is a
    later version."""
    api = Api()
    rt = await make_rt("r0", api)
    obj = api.add("stale", "uid-stale")
    await kopf_reconciles(rt, obj.get())
    old = obj.get()
    obj.change_spec()
    await kopf_reconciles(rt, obj.get())
    status = await Reconciler(rt).reconcile(old, trigger="resync")
    assert status is not None
    message = next(c for c in status["conditions"] if c["type"] == "Recorded")["message"]
    assert message == "generation 1 is recorded; head is version 2"
