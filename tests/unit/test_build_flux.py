"""The Flux controllers' wrapper go.mod (etcdconfig.devenv.build)."""

from __future__ import annotations

from pathlib import Path

import pytest

from etcdconfig.devenv import build

UPSTREAM = """\
module github.com/fluxcd/kustomize-controller

go 1.26.0

replace github.com/fluxcd/kustomize-controller/api => ./api

// Replace digest lib to master to gather access to BLAKE3.
replace github.com/opencontainers/go-digest => github.com/opencontainers/go-digest v1.0.1-0.2022

require (
\tgithub.com/fluxcd/kustomize-controller/api v1.9.6
\tgithub.com/fluxcd/pkg/ssa v0.76.2
)

// Pin kustomize to v5.8.1
replace (
\tsigs.k8s.io/kustomize/api => sigs.k8s.io/kustomize/api v0.21.1
\tsigs.k8s.io/kustomize/kyaml => sigs.k8s.io/kustomize/kyaml v0.21.1 // pinned
)

replace gopkg.in/yaml.v3 => gopkg.in/yaml.v3 v3.0.1
"""


def test_replaces_are_read_from_lines_and_blocks() -> None:
    assert build._go_mod_replaces(UPSTREAM) == [
        "github.com/fluxcd/kustomize-controller/api => ./api",
        "github.com/opencontainers/go-digest => github.com/opencontainers/go-digest v1.0.1-0.2022",
        "sigs.k8s.io/kustomize/api => sigs.k8s.io/kustomize/api v0.21.1",
        "sigs.k8s.io/kustomize/kyaml => sigs.k8s.io/kustomize/kyaml v0.21.1",
        "gopkg.in/yaml.v3 => gopkg.in/yaml.v3 v3.0.1",
    ]


def test_wrapper_requires_the_published_api_and_keeps_other_replaces() -> None:
    text = build.flux_wrapper_go_mod(
        UPSTREAM,
        "kustomize-controller",
        "v1.9.6",
        (("github.com/fluxcd/pkg/ssa", "v0.76.0"),),
    )
    assert "module etcdconfig.local/kustomize-controller-wrapper\n" in text
    assert "\ngo 1.26.0\n" in text
    assert "\tgithub.com/fluxcd/kustomize-controller v1.9.6\n" in text
    assert "\tgithub.com/fluxcd/kustomize-controller/api v1.9.6\n" in text
    assert "./api" not in text
    assert "\tgopkg.in/yaml.v3 => gopkg.in/yaml.v3 v3.0.1\n" in text
    assert "\tsigs.k8s.io/kustomize/kyaml => sigs.k8s.io/kustomize/kyaml v0.21.1\n" in text
    assert "\tgithub.com/fluxcd/pkg/ssa => github.com/fluxcd/pkg/ssa v0.76.0\n" in text
    assert text.endswith("tool github.com/fluxcd/kustomize-controller\n")


def test_wrapper_refuses_a_go_mod_without_the_api_replace() -> None:
    upstream = UPSTREAM.replace("replace github.com/fluxcd/kustomize-controller/api => ./api\n", "")
    with pytest.raises(build.BuildError, match="no longer replaces"):
        build.flux_wrapper_go_mod(upstream, "kustomize-controller", "v1.9.6")


def test_wrapper_refuses_another_local_replace() -> None:
    upstream = UPSTREAM + "replace example.com/x => ../x\n"
    with pytest.raises(build.BuildError, match="unexpected local replace"):
        build.flux_wrapper_go_mod(upstream, "kustomize-controller", "v1.9.6")


def test_flux_is_a_build_target_with_cache_paths_keyed_by_version(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ETCDCONFIG_CACHE", str(tmp_path))
    assert "flux" in build.TARGETS
    tool = build.flux_tool("source-controller", "v1.9.6")
    assert str(tool.path).endswith("bin/source-controller-v1.9.6")
    assert tool.package == "github.com/fluxcd/source-controller"
    crds = build.flux_crd_dir("source-controller", "v1.9.6")
    assert str(crds).endswith("flux/source-controller-v1.9.6/crds")
