"""The baseline of ``bench/e2e.py``: a kopf operator that does nothing but say "Ready".

Same kopf version and the same kopf settings style as the etcdconfig operator
(``etcdconfig/controller/handlers.py``: progress and diff-base in ``status``,
events posted only from WARNING, the same watch and request timeouts), and one
handler for create/update/resume that patches ``status`` with
``observedGeneration`` and a ``Ready=True`` condition (kstatus shape) — no etcd,
no lock, no validation, no finalizer, no Event. What the real operator costs on
top of this is the price of everything it actually does.

Run it with ``kopf run --standalone --namespace NS bench/noop_operator.py``
(``KUBECONFIG`` names the cluster).
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import kopf

RESOURCE = ("etcdconfig.io", "v1alpha1", "configs")


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    return kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.finalizer = "etcdconfig.io/finalizer"
    settings.persistence.progress_storage = kopf.StatusProgressStorage()
    settings.persistence.diffbase_storage = kopf.StatusDiffBaseStorage(ignored_fields=["metadata"])
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 30


@kopf.on.resume(*RESOURCE, id="reconcile")
@kopf.on.create(*RESOURCE, id="reconcile")
@kopf.on.update(*RESOURCE, id="reconcile")
async def reconcile(meta: kopf.Meta, patch: kopf.Patch, **_: Any) -> None:
    generation = int(meta.get("generation") or 1)
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    patch.status["observedGeneration"] = generation
    patch.status["conditions"] = [
        {
            "type": "Ready",
            "status": "True",
            "observedGeneration": generation,
            "lastTransitionTime": now,
            "reason": "NoOp",
            "message": "the no-op baseline operator saw this generation",
        }
    ]
