# syntax=docker/dockerfile:1
# The etcdconfig operator image: `docker build -t etcdconfig .`
#
# Two stages: the first builds the project's wheel and installs it with its
# dependencies (all published as binary wheels: no compiler needed) into a venv;
# the second copies only that venv onto the same pinned base, drops pip, and runs
# as a non-root user.
#
# BASE_IMAGE is the one base of both stages; the default is the pinned official
# image. The local dev cluster, which reaches no registry, builds a Debian bookworm
# base of its own (python3 and python3-pip from Debian packages, made by mmdebstrap)
# and passes it with --build-arg BASE_IMAGE=... (etcdconfig.devenv.images). Every
# step below therefore works on both: `python3` (Debian has no `python`), and pip
# removed by whoever installed it.
ARG BASE_IMAGE=python:3.11.14-slim-bookworm

FROM ${BASE_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/ operator/

# the venv has no pip of its own: the build stage's pip installs into it
RUN python3 -m venv --without-pip /opt/venv \
    && python3 -m pip wheel --no-deps --wheel-dir /wheels . \
    && python3 -m pip --python /opt/venv/bin/python install --no-cache-dir "$(echo /wheels/etcdconfig-*.whl)[operator]" \
    && /opt/venv/bin/python -c "import etcdconfig.cli.main"

FROM ${BASE_IMAGE}

LABEL org.opencontainers.image.title="etcdconfig" \
      org.opencontainers.image.description="Kubernetes operator recording every Config change as a fenced, checksummed version in etcd" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    ETCDCONFIG_HTTP_PORT=8080

# no package manager tooling in the final image; a fixed non-root uid/gid
# (the Helm chart runs the pod as 10001 with a read-only root filesystem).
# pip, setuptools and wheel go whichever way they came: the official image installs
# them with pip (pip uninstall), a Debian base as dpkg packages, which pip refuses to
# touch (externally managed), so dpkg purges them (nothing else depends on them).
RUN if dpkg-query --status python3-pip >/dev/null 2>&1; then \
        dpkg --purge python3-pip python3-setuptools python3-wheel; \
    else \
        python3 -m pip uninstall --yes --no-cache-dir pip setuptools wheel; \
    fi \
    && groupadd --system --gid 10001 etcdconfig \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin etcdconfig

COPY --from=build /opt/venv /opt/venv

USER 10001:10001
WORKDIR /tmp
EXPOSE 8080 9443

# /healthz answers while the process serves; Kubernetes uses its own probes (the chart)
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('ETCDCONFIG_HTTP_PORT', '8080') + '/healthz', timeout=3)"]

ENTRYPOINT ["etcdconfig", "run"]
