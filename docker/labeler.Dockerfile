# syntax=docker/dockerfile:1
# cdissect labeler: `python -m cdissect_labeler`, gRPC 50053, metrics 9103.
# Build from the repository root:
#   docker build -f docker/labeler.Dockerfile -t cdissect/labeler:0.1.0 .
# (CPU only by default; --build-arg VARIANT=cuda builds a CUDA image if ever needed)
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
COPY services/labeler/pyproject.toml services/labeler/
RUN set -eu; \
    case "$VARIANT" in \
      cpu) index="--index-url https://download.pytorch.org/whl/cpu --extra-index-url https://pypi.org/simple" ;; \
      cuda) index="" ;; \
      *) echo "VARIANT must be cpu or cuda, got '$VARIANT'" >&2; exit 1 ;; \
    esac; \
    python lockdeps.py requirements requirements.lock \
        services/common/pyproject.toml services/labeler/pyproject.toml > requirements.txt; \
    python -m venv /opt/venv; \
    /opt/venv/bin/pip install $index --constraint requirements.lock --requirement requirements.txt
COPY services/common services/common
COPY services/labeler services/labeler
RUN /opt/venv/bin/pip install --no-deps ./services/common ./services/labeler \
 && /opt/venv/bin/python lockdeps.py verify requirements.lock

FROM ${PYTHON_IMAGE}
ARG VARIANT=cpu
LABEL org.opencontainers.image.title="cdissect-labeler" org.opencontainers.image.version="0.1.0" \
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
EXPOSE 50053 9103
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python", "/opt/cdissect/healthcheck.py", "--service", "cdissect.v1.Labeler", "--port", "50053"]
ENTRYPOINT ["python", "-m", "cdissect_labeler"]
