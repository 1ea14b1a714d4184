#!/usr/bin/env bash
# Fill .whl/ (git-ignored) with what bench/gpu_check.sh installs on the lent GPU machine, which
# has Python 3.12 with torch, torchvision, numpy, pillow, pyyaml, scipy, click, pygments, etc.
# (see the device tool's KINDS.md) but no network:
#   - the packages it lacks, or holds at a version our code may not run with (our generated
#     stubs need grpcio and protobuf at least as new as the ones they were generated with),
#     pinned as in requirements.lock, as cp312 manylinux wheels;
#   - our six distributions, built as wheels here.
# Usage: bash scripts/device_wheels.sh [PIP]   (run by `make device-wheels`)
set -euo pipefail
cd "$(dirname "$0")/.."
PIP=${1:-.venv/bin/pip}
OUT=.whl
# What the device image lacks (grpcio-*, minio and its needs, clip-anytorch and its needs) or
# must match our lock (grpcio, protobuf: stub versions; typer, rich: the CLI).
CARRY=(grpcio grpcio-health-checking grpcio-reflection protobuf minio argon2-cffi argon2-cffi-bindings
       pycryptodome cffi pycparser clip-anytorch ftfy wcwidth typer rich)
OURS=(./services/common ./services/labeler ./services/activations ./services/embedder ./cli ./shapes_world)

pins=()
for name in "${CARRY[@]}"; do
  pin=$(grep -i -E "^${name//-/[-_]}==" requirements.lock | head -1 || true)
  if [[ -z "$pin" ]]; then
    echo "device_wheels: $name is not pinned in requirements.lock; pin it there first" >&2
    exit 2
  fi
  pins+=("$pin")
done

rm -rf "$OUT"
mkdir -p "$OUT"
"$PIP" download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$OUT" "${pins[@]}"
"$PIP" wheel -q --no-deps --no-build-isolation -w "$OUT" "${OURS[@]}"
rm -rf build ./*/build ./*/*/build
echo "device_wheels: $(find "$OUT" -name '*.whl' | wc -l) wheels, $(du -sh "$OUT" | cut -f1) in $OUT/:"
ls "$OUT"
