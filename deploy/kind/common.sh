# Shared by up.sh, down.sh and port-forward.sh (sourced, not run).
# shellcheck shell=bash
CLUSTER="${KIND_CLUSTER_NAME:-cdissect}"
NAMESPACE=cdissect
# shellcheck disable=SC2034  # used by the scripts that source this file
VERSION=0.1.0
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

fail() { echo "error: $*" >&2; exit 1; }

need_docker() {
  command -v docker >/dev/null 2>&1 \
    || fail "docker is not installed; install Docker Engine (https://docs.docker.com/engine/install/). 'make up' cannot run on machines without a Docker daemon (our CI machines)."
  docker info >/dev/null 2>&1 \
    || fail "the Docker daemon is not running or not reachable ('docker info' failed); start it (e.g. 'sudo systemctl start docker') or check DOCKER_HOST"
}

need_kind() {
  command -v kind >/dev/null 2>&1 \
    || fail "kind is not installed; install it (https://kind.sigs.k8s.io/docs/user/quick-start/#installation), e.g. 'go install sigs.k8s.io/kind@v0.29.0'"
}

# kubectl: $KUBECTL, else the one on PATH, else the one 'make install' puts in .venv.
find_kubectl() {
  if [ -n "${KUBECTL:-}" ]; then
    command -v "$KUBECTL" >/dev/null 2>&1 || fail "KUBECTL=$KUBECTL is not an executable"
  elif command -v kubectl >/dev/null 2>&1; then
    KUBECTL=kubectl
  elif [ -x "$ROOT/.venv/bin/kubectl" ]; then
    KUBECTL="$ROOT/.venv/bin/kubectl"
  else
    fail "kubectl not found; run 'make install' (it installs .venv/bin/kubectl) or install kubectl"
  fi
}

k() { "$KUBECTL" --context "kind-$CLUSTER" --namespace "$NAMESPACE" "$@"; }
