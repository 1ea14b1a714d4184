#!/usr/bin/env bash
# Forward the services, MinIO and Prometheus of the kind cluster to localhost until Ctrl-C.
# (A port-forward reaches one pod per Service; inside the cluster the CLI spreads over replicas.)
set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
find_kubectl
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT INT TERM
forward() { k port-forward "svc/$1" "${@:2}" & pids+=("$!"); }
forward embedder 50051 9101
forward activations 50052 9102
forward labeler 50053 9103
forward minio 9000 9001
forward prometheus 9090
wait -n
fail "a port-forward stopped (is 'make up' done and the port free?); stopping the others"
