# syntax=docker/dockerfile:1
# cdissect embedder: `python -m cdissect_embedder`, gRPC 50051, metrics 9101.
# Build from the repository root:
#   docker build -f docker/embedder.Dockerfile -t cdissect/embedder:0.1.0 .
#   docker build -f docker/embedder.Dockerfile --build-arg VARIANT=cuda -t cdissect/embedder:0.1.0-cuda .
# Python packages come from requirements.lock (the versions the tests use); weights are not
# baked in: they are downloaded to CDISSECT_CACHE_DIR, a volume.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm@sha256:86adf8dbadc3d6e82ee5dd2c74bec2e1c2467cdad47886280501df722372d2e1

FROM ${PYTHON_IMAGE} AS build
# cpu: torch/torchvision CPU wheels of the locked versions; cuda: the locked (CUDA) wheels.
ARG VARIANT=cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY requirements.lock docker/lockdeps.py ./
COPY services/common/pyproject.toml services/common/
COPY services/embedder/pyproject.toml services/embedder/
RUN set -eu; \
    case "$VARIANT" in \
      cpu) index="--index-url https://download.pytorch.org/whl/cpu --extra-index-url https://pypi.org/simple" ;; \
      cuda) index="" ;; \
      *) echo "VARIANT must be cpu or cuda, got '$VARIANT'" >&2; exit 1 ;; \
    esac; \
    python lockdeps.py requirements requirements.lock \
        services/common/pyproject.toml services/embedder/pyproject.toml > requirements.txt; \
    python -m venv /opt/venv; \
    /opt/venv/bin/pip install $index --constraint requirements.lock --requirement requirements.txt
COPY services/common services/common
COPY services/embedder services/embedder
RUN /opt/venv/bin/pip install --no-deps ./services/common ./services/embedder \
 && /opt/venv/bin/python lockdeps.py verify requirements.lock

FROM ${PYTHON_IMAGE}
ARG VARIANT=cpu
LABEL org.opencontainers.image.title="cdissect-embedder" org.opencontainers.image.version="0.1.0" \
      io.cdissect.variant="$VARIANT"
RUN groupadd --gid 10001 cdissect \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin cdissect \
 && mkdir -p /var/cache/cdissect && chown 10001:10001 /var/cache/cdissect
COPY --from=build /opt/venv /opt/venv
COPY docker/healthcheck.py /opt/cdissect/healthcheck.py
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HOME=/tmp \
    CDISSECT_CACHE_DIR=/var/cache/cdissect TORCH_HOME=/var/cache/cdissect/torch \
    HF_HOME=/var/cache/cdissect/huggingface XDG_CACHE_HOME=/var/cache/cdissect
VOLUME ["/var/cache/cdissect"]
USER 10001:10001
EXPOSE 50051 9101
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python", "/opt/cdissect/healthcheck.py", "--service", "cdissect.v1.Embedder", "--port", "50051"]
ENTRYPOINT ["python", "-m", "cdissect_embedder"]
