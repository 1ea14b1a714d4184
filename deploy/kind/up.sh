#!/usr/bin/env bash
# `make up`: cdissect on a local kind cluster. Creates the cluster (deploy/kind/kind-config.yaml),
# builds the images, loads them into kind, creates random credentials once, applies the
# kind-cpu overlay, waits until everything is ready and prints how to use it.
set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
need_docker
need_kind
find_kubectl

if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  echo "reusing kind cluster '$CLUSTER'"
  reused=1
else
  kind create cluster --name "$CLUSTER" --config "$ROOT/deploy/kind/kind-config.yaml" --wait 180s
  reused=0
fi

for image in embedder activations labeler cli; do
  docker build --file "$ROOT/docker/$image.Dockerfile" --tag "cdissect/$image:$VERSION" "$ROOT"
  kind load docker-image --name "$CLUSTER" "cdissect/$image:$VERSION"
done

"$KUBECTL" --context "kind-$CLUSTER" create namespace "$NAMESPACE" --dry-run=client -o yaml \
  | "$KUBECTL" --context "kind-$CLUSTER" apply -f -
random() { head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
k get secret cdissect-auth >/dev/null 2>&1 \
  || k create secret generic cdissect-auth --from-literal=token="$(random)"
k get secret cdissect-s3 >/dev/null 2>&1 \
  || k create secret generic cdissect-s3 --from-literal=access-key=cdissect --from-literal=secret-key="$(random)"

# A Job's pod template is immutable: replace the (idempotent) bucket Job on every run.
k delete job cdissect-create-bucket --ignore-not-found
"$KUBECTL" --context "kind-$CLUSTER" apply -k "$ROOT/deploy/k8s/overlays/kind-cpu"
if [ "$reused" = 1 ]; then
  k rollout restart deployment -l app.kubernetes.io/component=grpc-service
fi

k rollout status statefulset/minio --timeout=5m
k wait --for=condition=complete job/cdissect-create-bucket --timeout=5m
for deployment in prometheus labeler activations embedder; do
  k rollout status "deployment/$deployment" --timeout=20m
done

token="$(k get secret cdissect-auth -o jsonpath='{.data.token}' | base64 -d)"
access="$(k get secret cdissect-s3 -o jsonpath='{.data.access-key}' | base64 -d)"
secret="$(k get secret cdissect-s3 -o jsonpath='{.data.secret-key}' | base64 -d)"
cat <<MSG

cdissect is up on kind cluster '$CLUSTER' (namespace $NAMESPACE).
1. In another terminal, forward the ports (Ctrl-C stops):  bash deploy/kind/port-forward.sh
2. Point the CLI at it:
   export CDISSECT_EMBEDDER=localhost:50051 CDISSECT_ACTIVATIONS=localhost:50052 CDISSECT_LABELER=localhost:50053
   export CDISSECT_STORE=s3://cdissect CDISSECT_S3_ENDPOINT=localhost:9000 CDISSECT_S3_SECURE=false
   export CDISSECT_S3_ACCESS_KEY=$access CDISSECT_S3_SECRET_KEY=$secret
   export CDISSECT_AUTH_TOKEN=$token
   cdissect run ...
Prometheus: http://localhost:9090/targets   MinIO console: http://localhost:9001
Scale: kubectl --context kind-$CLUSTER -n $NAMESPACE scale deployment/embedder --replicas=2
Remove everything: make down
MSG
