"""Generate the etcd gRPC stubs committed under ``etcdconfig/etcd/_pb``.

The protos come from the ``go.etcd.io/etcd/api/v3`` Go module (fetched through
the Go module proxy). gogoproto, google.api, openapiv2 and versionpb
annotations are stripped: they only matter to Go code generators, and the wire
format does not depend on them. Run ``python -m etcdconfig.devenv.protos``
after changing ``ETCD_API_VERSION``; the output is committed.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from etcdconfig.devenv.build import go_binary

ETCD_API_VERSION = "v3.6.16"
FILES = {
    "mvccpb/kv.proto": "kv.proto",
    "authpb/auth.proto": "auth.proto",
    "etcdserverpb/rpc.proto": "rpc.proto",
}
OUT = Path(__file__).resolve().parent.parent / "etcd" / "_pb"
IMPORT_PREFIX = "etcdconfig/etcd/_pb/"

_DROP_IMPORTS = ("gogoproto/", "google/api/", "protoc-gen-openapiv2/", "etcd/api/versionpb/")


def _strip_options(text: str) -> str:
    out: list[str] = []
    skipping = 0
    for line in text.splitlines():
        stripped = line.strip()
        if skipping:
            skipping += line.count("{") - line.count("}")
            continue
        if stripped.startswith("import ") and any(p in stripped for p in _DROP_IMPORTS):
            continue
        if re.match(r"option\s*\((gogoproto|grpc\.gateway|google\.api|versionpb)", stripped):
            depth = line.count("{") - line.count("}")
            if depth > 0:
                skipping = depth
            continue
        out.append(line)
    text = "\n".join(out) + "\n"
    # field options like [(gogoproto.nullable) = false, (versionpb.etcd_version_field)="3.5"]
    text = re.sub(r"\s*\[\s*\((gogoproto|versionpb)[^\]]*\]", "", text)
    # enum value options
    text = re.sub(r"\s*\[\s*\(versionpb[^\]]*\]", "", text)
    for src, dst in FILES.items():
        text = text.replace(f'import "etcd/api/{src}";', f'import "{IMPORT_PREFIX}{dst}";')
    # rpc blocks emptied of their http options: `{\n    }` -> `{}`
    return re.sub(r"\{\s*\}", "{}", text)


def module_dir() -> Path:
    out = subprocess.run(
        [go_binary(), "mod", "download", "-json", f"go.etcd.io/etcd/api/v3@{ETCD_API_VERSION}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(json.loads(out.stdout)["Dir"])


def main() -> int:
    src_root = module_dir()
    with tempfile.TemporaryDirectory() as tmp:
        proto_root = Path(tmp)
        dest = proto_root / IMPORT_PREFIX
        dest.mkdir(parents=True)
        for src, dst in FILES.items():
            (dest / dst).write_text(_strip_options((src_root / src).read_text()))
        OUT.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "grpc_tools.protoc",
                f"-I{proto_root}",
                f"--python_out={OUT.parent.parent.parent}",
                f"--pyi_out={OUT.parent.parent.parent}",
                f"--grpc_python_out={OUT.parent.parent.parent}",
                *[str(dest / d) for d in FILES.values()],
            ],
            check=True,
        )
    (OUT / "__init__.py").write_text(
        f'"""Generated from go.etcd.io/etcd/api/v3 {ETCD_API_VERSION} by '
        'etcdconfig.devenv.protos; do not edit."""\n'
    )
    print(f"generated stubs in {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
