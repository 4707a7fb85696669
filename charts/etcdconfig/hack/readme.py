"""Write the chart's README.md (``helm show readme``, Artifact Hub) from Chart.yaml and
the documented values in values.yaml: ``python charts/etcdconfig/hack/readme.py``.

Every value in values.yaml is documented by the comment right above it, starting with
the value's full name: ``# etcd.prefix -- key prefix of the store in etcd``. The values
table is made from those comments and the defaults; the rest of the README is below.
tests/unit/test_chart_readme.py fails when README.md is not what this script writes.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parents[1]

INTRO = """\
# etcdconfig Helm chart

{description}

Chart version {version}, app version {app_version}; Kubernetes {kube_version}.
The user guide is in the repository's `docs/` (install.md covers this chart).

## Install

No image is published: build the operator image from the repository's
`Dockerfile`, push it where the cluster pulls from, and set `image.repository`
(the install fails with a message saying so until you do). Then point the
operator at an etcd (`etcd.endpoints`), or let the chart deploy a small one for
trying etcdconfig out (`etcd.bundled.enabled=true`):

```sh
docker build -t <registry>/etcdconfig:{app_version} .
docker push <registry>/etcdconfig:{app_version}
helm install etcdconfig charts/etcdconfig -n etcdconfig --create-namespace \\
  --set image.repository=<registry>/etcdconfig \\
  --set etcd.endpoints=https://etcd.example:2379
```

`etcd.endpoints` is a list or a comma-separated string; several endpoints on the
command line: `--set 'etcd.endpoints={{https://a:2379,https://b:2379}}'`.

## Defaults worth knowing

- **The validating webhook is on and fails closed.** Invalid Configs are refused
  at apply time (so `kubectl apply --dry-run=server` catches them in CI). The
  webhook is asked about `configs.etcdconfig.io` (CREATE, UPDATE) and nothing
  else, so while no replica answers only Config changes are refused. Its
  certificate is made by the chart and kept across upgrades
  (`webhook.certificate.source=helm`); use `certManager` or your own `secret`
  instead (do so with Argo CD, which renders with `helm template` and would
  make a new certificate at every sync), or `webhook.failurePolicy=Ignore` to
  admit changes while the operator is down (it still never records invalid
  data).
- **The history API is on** (`historyApi.enabled`): every recorded version is
  readable with `kubectl get configversions -n <namespace>` and a kubeconfig,
  under Kubernetes RBAC, through the APIService `v1alpha1.history.etcdconfig.io`
  the operator serves (the repository's `docs/history-api.md`). Users need the
  ClusterRole `etcdconfig-history-reader` bound in their namespace
  (`kubectl create rolebinding ... --clusterrole=etcdconfig-history-reader`);
  only administrators need etcd access (verify, locks, members). The APIService
  is cluster-wide: one release per cluster may enable it. Its certificate is
  made like the webhook's (`historyApi.certificate`).
- **The CRD is part of the release and kept on uninstall** (`crds.enabled`,
  `crds.keep`), so `helm upgrade` upgrades it and `helm uninstall` leaves every
  Config in place.

## The CRD exists already ("invalid ownership metadata")

If the CRD was applied by hand (`kubectl apply -f crds/`, as the local demo
does), `helm install` stops with:

```
Error: INSTALLATION FAILED: ... CustomResourceDefinition "configs.etcdconfig.io" in
namespace "" exists and cannot be imported into the current release: invalid ownership
metadata; label validation error: missing key "app.kubernetes.io/managed-by": must be
set to "Helm"; annotation validation error: missing key "meta.helm.sh/release-name": ...
```

Either leave the CRD out of the release:

```sh
helm install etcdconfig charts/etcdconfig ... --set crds.enabled=false
```

or let the release adopt it (Helm 3.17+ and 4: `--take-ownership`), or by hand:

```sh
kubectl label crd configs.etcdconfig.io app.kubernetes.io/managed-by=Helm --overwrite
kubectl annotate crd configs.etcdconfig.io --overwrite \\
  meta.helm.sh/release-name=etcdconfig meta.helm.sh/release-namespace=etcdconfig
```

## Values

Generated from the comments in `values.yaml` by `hack/readme.py`;
`values.schema.json` rejects unknown keys, so a typo fails the install.

| Key | Default | Description |
|---|---|---|
"""


def documented(text: str) -> list[tuple[str, str]]:
    """(dotted path, description) for each value, in file order."""
    out: list[tuple[str, str]] = []
    stack: list[tuple[int, str]] = []
    comment: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            comment.append(stripped.lstrip("#").strip())
            continue
        m = re.match(r"^( *)([A-Za-z][A-Za-z0-9]*):", line)
        if not m:
            comment = [] if not stripped else comment
            continue
        indent, key = len(m.group(1)), m.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([*(k for _, k in stack), key])
        stack.append((indent, key))
        joined = " ".join(comment)
        if joined.startswith(f"{path} -- "):
            out.append((path, joined[len(path) + 4 :]))
        comment = []
    return out


def _default(values: dict[str, Any], path: str, parents: set[str]) -> str:
    node: Any = values
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    if path in parents:
        return ""  # its keys follow, each with its own default
    return "`" + json.dumps(node, separators=(",", ":")).replace("|", "\\|") + "`"


def render() -> str:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    text = (CHART / "values.yaml").read_text()
    values = yaml.safe_load(text)
    rows = documented(text)
    paths = {p for p, _ in rows}
    parents = {p.rsplit(".", 1)[0] for p in paths if "." in p}
    lines = [
        INTRO.format(
            description=" ".join(str(chart["description"]).split()),
            version=chart["version"],
            app_version=chart["appVersion"],
            kube_version=chart.get("kubeVersion", "any"),
        ).rstrip("\n")
    ]
    for path, desc in rows:
        desc = desc.replace("|", "\\|")
        lines.append(f"| `{path}` | {_default(values, path, parents)} | {desc} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    out = CHART / "README.md"
    out.write_text(render())
    sys.stdout.write(f"wrote {out}\n")
