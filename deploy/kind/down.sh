#!/usr/bin/env bash
# `make down`: delete the kind cluster made by `make up` (with its MinIO data).
set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
need_docker
need_kind
if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  kind delete cluster --name "$CLUSTER"
else
  echo "no kind cluster named '$CLUSTER'; nothing to delete"
fi
