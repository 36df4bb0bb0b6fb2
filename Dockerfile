# The operator image. Its Python dependencies come from pyproject.toml and nothing else.
#
#   docker build -t mtls-operator:dev .   # with a registry and PyPI: python:3.11-slim, wheels from PyPI
#   hack/operator-image.sh                 # offline: a local Debian base and a host-built wheelhouse
#
# BASE_IMAGE must provide python3 (3.11, with the venv module) and /bin/sh. OFFLINE=1 installs only from the wheelhouse
# copied from the build context (.cache/wheelhouse, built on the host with `pip wheel`), because a build container may
# reach no index at all; without it pip uses its index (and a wheelhouse, if present, goes unused).
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ARG OFFLINE=""
# The wheelhouse, if the context has one (.dockerignore lets in only it, pyproject.toml, README.md and operator/); the
# glob keeps the COPY valid without it, pyproject.toml keeps it from matching nothing.
COPY pyproject.toml .cache/wheelhouse* /wheelhouse/
# One virtualenv at the path it runs from, copied whole into the runtime stage: no wheels or pip caches in a layer.
# First the dependencies, read from pyproject.toml, in a layer that a change to the code leaves alone.
RUN set -eu; \
    if [ -n "$OFFLINE" ]; then \
      ls /wheelhouse/*.whl >/dev/null 2>&1 || { echo "OFFLINE=1 needs .cache/wheelhouse" >&2; exit 1; }; \
      set -- --no-index --find-links /wheelhouse; \
    fi; \
    python3 -m venv /opt/mtls-operator; \
    python3 -c 'import sys, tomllib; print(*tomllib.load(sys.stdin.buffer)["project"]["dependencies"], sep="\n")' \
      < /wheelhouse/pyproject.toml > /tmp/requirements.txt; \
    /opt/mtls-operator/bin/pip install --no-cache-dir --disable-pip-version-check "$@" -r /tmp/requirements.txt
COPY pyproject.toml README.md /src/
COPY operator /src/operator
RUN set -eu; \
    if [ -n "$OFFLINE" ]; then set -- --no-index --find-links /wheelhouse; fi; \
    /opt/mtls-operator/bin/pip install --no-cache-dir --disable-pip-version-check --no-deps "$@" /src; \
    /opt/mtls-operator/bin/pip uninstall --yes --quiet pip

FROM ${BASE_IMAGE}
# A passwd entry for the uid the chart runs as: libraries that ask "who am I" (getpass, ~ expansion) get an answer.
RUN set -eu; \
    grep -q '^[^:]*:[^:]*:65532:' /etc/group || echo 'nonroot:x:65532:' >> /etc/group; \
    grep -q '^[^:]*:[^:]*:65532:' /etc/passwd || \
      echo 'nonroot:x:65532:65532:nonroot:/nonexistent:/usr/sbin/nologin' >> /etc/passwd
COPY --from=build /opt/mtls-operator /opt/mtls-operator
ENV PATH=/opt/mtls-operator/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
# Numeric, so runAsNonRoot can verify it. Nothing is written outside /tmp (an emptyDir in the chart).
USER 65532:65532
EXPOSE 8080 8081
ENTRYPOINT ["mtls-operator"]
CMD ["run"]
