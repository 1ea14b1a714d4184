# syntax=docker/dockerfile:1
# cdissect CLI (`cdissect`): no torch; talks to the services over gRPC and to the object store.
# Build from the repository root:
#   docker build -f docker/cli.Dockerfile -t cdissect/cli:0.1.0 .
# In the cluster it also runs the Job that creates the MinIO bucket.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm@sha256:86adf8dbadc3d6e82ee5dd2c74bec2e1c2467cdad47886280501df722372d2e1

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY requirements.lock docker/lockdeps.py ./
COPY services/common/pyproject.toml services/common/
COPY cli/pyproject.toml cli/
RUN python lockdeps.py requirements requirements.lock \
        services/common/pyproject.toml cli/pyproject.toml > requirements.txt \
 && python -m venv /opt/venv \
 && /opt/venv/bin/pip install --constraint requirements.lock --requirement requirements.txt
COPY services/common services/common
COPY cli cli
RUN /opt/venv/bin/pip install --no-deps ./services/common ./cli \
 && /opt/venv/bin/python lockdeps.py verify requirements.lock \
 && if /opt/venv/bin/python -c "import torch" 2>/dev/null; then echo "the CLI image must not contain torch" >&2; exit 1; fi

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="cdissect-cli" org.opencontainers.image.version="0.1.0"
RUN groupadd --gid 10001 cdissect \
 && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/cdissect --shell /usr/sbin/nologin cdissect
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 CDISSECT_RUNS_DIR=/home/cdissect/runs
WORKDIR /home/cdissect
USER 10001:10001
# A command-line tool, not a server: nothing to health-check.
HEALTHCHECK NONE
ENTRYPOINT ["cdissect"]
CMD ["--help"]
