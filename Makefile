# etcdconfig — every set-up step lives here; the README names these targets.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install tools images system-packages lint test test-unit test-integration test-e2e bench bench-quick demo demo-rollout demo-down soak clean

## install: a .venv with the package and every dev tool, the Debian packages the tests need,
## the Go-built binaries and the node's images (both cached under ~/.cache/etcdconfig)
install: $(BIN)/.installed system-packages tools images

## system-packages: install with apt-get the Debian packages that are missing (says which):
## spin (the model checker of spec/); the node's runc, CNI plugins and iptables; buildah and
## mmdebstrap, which build the images offline
DEBIAN_PACKAGES := spin runc containernetworking-plugins iptables buildah mmdebstrap
system-packages:
	@missing=""; for p in $(DEBIAN_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

## images: build the node's images offline (Debian base by mmdebstrap, the operator from the
## Dockerfile, etcd, pause), cached and keyed by their inputs
images: $(BIN)/.installed system-packages tools
	$(BIN)/python -m etcdconfig.devenv.images build

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

## tools: build etcd, the Kubernetes binaries (control plane and node), containerd, crictl,
## CoreDNS and helm from Go modules (cached under ~/.cache/etcdconfig)
tools: $(BIN)/.installed
	$(BIN)/python -m etcdconfig.devenv.build all

lint: $(BIN)/.installed
	$(BIN)/ruff check operator tests bench examples
	$(BIN)/ruff format --check operator tests bench examples
	$(BIN)/mypy

## test: every tier (lint, the mutants of every safety guard, unit, integration against real etcd,
## e2e against a real control plane, the SPIN model, the node); e2e runs beside the rest, then
## the node alone (tests/tiers.py; `python -m tests.tiers --serial` runs them one at a time)
test: install lint
	$(BIN)/python -m tests.tiers

test-unit: $(BIN)/.installed
	$(BIN)/pytest tests/unit

test-integration: install
	$(BIN)/pytest tests/integration

test-e2e: install
	$(BIN)/pytest tests/e2e

## model: exhaustive model checking of the protocol in spec/ with SPIN (spin and gcc; about a minute)
.PHONY: model
model: $(BIN)/.installed system-packages
	$(BIN)/pytest tests/model

## mutants: mutation testing of the safety guards: each mutant (tests/mutation/mutants.py) must fail a named test
.PHONY: mutants
mutants: install
	$(BIN)/python -m tests.mutation.run

## bench: run the benchmarks (figures are ratios against a baseline measured in the same run)
bench: install
	$(BIN)/python bench/store.py
	$(BIN)/python bench/e2e.py
	$(BIN)/python bench/replicas.py
	$(BIN)/python bench/history_api.py
	$(BIN)/python bench/rollout.py
	$(BIN)/python bench/scale.py

## bench-quick: smaller runs of every benchmark (a few minutes)
bench-quick: install
	$(BIN)/python bench/store.py --quick
	$(BIN)/python bench/e2e.py --quick
	$(BIN)/python bench/replicas.py --quick
	$(BIN)/python bench/history_api.py --quick
	$(BIN)/python bench/rollout.py --quick
	$(BIN)/python bench/scale.py --quick

## demo: a local single-node cluster, the chart installed by Helm from local images, the
## sample Configs and their history (needs root: a network device, iptables, cgroups)
demo: require-root install
	$(BIN)/python -m etcdconfig.devenv.demo up

## demo-rollout: rollouts on the cluster of `make demo` (its set-up steps first; a running one is
## reused): a Deployment consuming a versioned Config, a good change rolled out, a bad one rolled
## back automatically (`python -m etcdconfig.devenv.demo_rollout down` deletes its namespace)
demo-rollout: require-root install
	$(BIN)/python -m etcdconfig.devenv.demo_rollout up

.PHONY: require-root
require-root:
	@[ "$$(id -u)" = 0 ] || { echo "error: make demo runs a real node (network device, iptables, cgroups): run it as root (sudo make demo)" >&2; exit 1; }

## demo-down: stop the node `make demo` started (every pod, process and host change)
demo-down:
	$(BIN)/python -m etcdconfig.devenv.demo down

## soak: the chaos suite with 10x the iterations of every scenario (long; not part of CI)
soak: install
	ETCDCONFIG_CHAOS_SCALE=10 $(BIN)/pytest tests/e2e/chaos -s

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info operator/*.egg-info
