#!/usr/bin/env bash
# One prepared check of the GPU paths on the GPU machine the workplace sometimes lends (one H200,
# 16 cores, Python 3.12 with torch/torchvision/timm/transformers/grpcio/pillow, no network).
#
#   here, first:      make device-wheels        (fills the git-ignored .whl/: what that python lacks,
#                                                and our six distributions as wheels)
#   on the device:    run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=540)
#   here, CPU half:   make gpu-check            (GPU_CHECK_MODE=cpu: this .venv, small CPU sizes)
#
# GPU mode: makes .venv over the device's python3 (its packages stay visible through a .pth
# file; ours, installed from .whl/, come first) and touches make's install stamp, so the
# Makefile's targets run as they are; then runs the CUDA tests (pytest -m cuda), make
# bench-pipeline (CLIP ViT-B/16 random weights in fp16 and resnet50, 4096 synthetic 224-pixel
# JPEGs per repeat), make bench-labeler on cuda (2048 neurons × 20000 concepts × 63000 images)
# and, if time is left, bench/bench_run.py (the whole `cdissect run` on a Broden-sized
# synthetic probe set). Each step runs under `timeout` with its own cap or the time left less a
# reserve for the summary (GPU_CHECK_RESERVE_S, 20 s), whichever is smaller, and is skipped when
# under a minute would be left for it; so the whole script, setup and summary included, stays
# under GPU_CHECK_BUDGET_S (470 s; 3600 s in CPU mode).
# GPU_CHECK_STEPS picks steps (default "tests pipeline labeler run"): if the first call left no
# time for the whole run, a second call with GPU_CHECK_STEPS=run measures it alone (~3 minutes).
# Everything it prints goes to $OUT/gpu_check.log too; each step's output to its own file in
# $OUT; the figures, as one JSON object, to $OUT/summary.json (and the last line printed).
set -uo pipefail
start=$SECONDS
cd "$(dirname "$0")/.." || exit 2
OUT=${OUT:-/tmp/cdissect-gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
MODE=${GPU_CHECK_MODE:-gpu}
BUDGET_S=${GPU_CHECK_BUDGET_S:-470}
RESERVE_S=${GPU_CHECK_RESERVE_S:-20}   # kept back from every step for the summary
MIN_STEP_S=${GPU_CHECK_MIN_STEP_S:-60}  # a step that would get less is skipped
STEPS=${GPU_CHECK_STEPS:-tests pipeline labeler run}  # e.g. GPU_CHECK_STEPS=run for the whole-run figure alone
[[ $MODE == cpu ]] && BUDGET_S=${GPU_CHECK_BUDGET_S:-3600}  # this shared 2-core machine: no device lease to fit in
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
step() { echo "== [$((SECONDS - start)) s] $*"; }
left() { echo $((BUDGET_S - (SECONDS - start))); }
# limit CAP: a step's time limit, its own cap or the time left less the reserve, whichever is smaller.
limit() { local room=$(($(left) - RESERVE_S)); echo $((room < $1 ? room : $1)); }
# run_step NAME CAP COMMAND...: COMMAND under `timeout` (see limit), its output also in $OUT/NAME.txt;
# returns its exit status (124 when cut), or 125 when skipped for lack of time.
run_step() {
  local name=$1 seconds
  seconds=$(limit "$2")
  shift 2
  if ((seconds < MIN_STEP_S)); then
    step "skipped $name: $(left) s left (a step needs ${MIN_STEP_S} s plus ${RESERVE_S} s for the summary)"
    return 125
  fi
  step "$name (limit $seconds s): $*"
  timeout "$seconds" "$@" 2>&1 | tee "$OUT/$name.txt"
  return "${PIPESTATUS[0]}"
}

if [[ $MODE == cpu ]]; then
  PY=.venv/bin/python
  [[ -x $PY ]] || { echo "no .venv here: run make install first"; exit 2; }
  export CDISSECT_DEVICE=cpu
  PIPELINE_ARGS="--json --quick"
  LABELER_ARGS="--json --threads 1 --n 2000 --c 2000 --k 256"
  RUN_ARGS=(--images 128 --concepts imagenet)
  T_TESTS=600 T_PIPELINE=1200 T_LABELER=600 T_RUN=$BUDGET_S
else
  step "setup: .venv over $(command -v python3) with .whl/ installed"
  ls .whl/*.whl >/dev/null 2>&1 || { echo "no .whl/ here: run 'make device-wheels' and carry .whl"; exit 2; }
  rm -rf .venv
  python3 -m venv --without-pip .venv || exit 1
  venv_site=$(.venv/bin/python -c 'import site; print(site.getsitepackages()[0])')
  device_site=$(python3 -c 'import site; print(site.getsitepackages()[0])')
  # addsitedir also reads the device's own .pth files; our site-packages stays first on sys.path.
  echo "import site; site.addsitedir('$device_site')" > "$venv_site/_device_python.pth"
  timeout "$(limit 120)" .venv/bin/python -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    .whl/*.whl || exit 1
  touch .venv/.cdissect-installed  # make's install stamp: the targets below use this .venv as it is
  PY=.venv/bin/python
  export CDISSECT_DEVICE=cuda
  PIPELINE_ARGS="--json --images 2048 --batch-size 256 --shard-size 1024 --repeats 2 --clip-arch ViT-B/16 \
    --clip-precision float16"
  LABELER_ARGS="--json --device cuda --n 63000 --c 20000 --k 2048"
  RUN_ARGS=(--images 63305)
  T_TESTS=120 T_PIPELINE=240 T_LABELER=120 T_RUN=$BUDGET_S
fi

step "environment"
"$PY" - <<'EOF'
import os, torch, torchvision, grpc, google.protobuf, cdissect_common, cdissect_cli  # noqa: F401
print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, grpcio {grpc.__version__}, "
      f"protobuf {google.protobuf.__version__}, CUDA {torch.cuda.is_available()}, "
      f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}, {os.cpu_count()} CPUs")
EOF
[[ $MODE == cpu ]] || "$PY" -c 'import torch; assert torch.cuda.is_available(), "CUDA is not available"' || exit 1

tests_rc=-1
if [[ " $STEPS " == *" tests "* ]]; then
  run_step cuda_tests "$T_TESTS" "$PY" -m pytest -q -p no:cacheprovider -m cuda tests
  tests_rc=$?
fi
[[ " $STEPS " == *" pipeline "* ]] &&
  run_step bench_pipeline "$T_PIPELINE" make -s bench-pipeline PIPELINE_ARGS="$PIPELINE_ARGS"
[[ " $STEPS " == *" labeler "* ]] &&
  run_step bench_labeler "$T_LABELER" make -s bench-labeler LABELER_ARGS="$LABELER_ARGS"
if [[ " $STEPS " == *" run "* ]]; then
  run_step bench_run "$T_RUN" "$PY" bench/bench_run.py --json "${RUN_ARGS[@]}"
else
  step "bench/bench_run.py not asked for (GPU_CHECK_STEPS)"
fi

step "summary"
"$PY" - "$OUT" "$tests_rc" <<'EOF' | tee "$OUT/summary.json"
import json, sys
from pathlib import Path


def last_json(lines):
    """The last line that is a JSON object: a failing make prints `make: *** ... Error 1` after it."""
    for line in reversed(lines):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None  # did not finish: see its .txt


out, summary = Path(sys.argv[1]), {"cuda_tests_rc": int(sys.argv[2])}
for name in ("bench_pipeline", "bench_labeler", "bench_run"):
    path = out / f"{name}.txt"
    summary[name] = last_json(path.read_text().strip().splitlines() if path.exists() else [])
tests = (out / "cuda_tests.txt").read_text().strip().splitlines() if (out / "cuda_tests.txt").exists() else []
summary["cuda_tests"] = tests[-1] if tests else None
for stage in ("embedder", "activations"):
    fig = (summary["bench_pipeline"] or {}).get(stage)
    if fig:
        print(f"# {stage}: path {fig['path_img_s']:.0f} img/s, forward only {fig['forward_img_s']:.0f}, "
              f"path/forward {fig['vs_forward']:.2f}", file=sys.stderr)
lab = summary["bench_labeler"]
if lab:
    print(f"# labeler: streaming {lab['streaming_s']:.2f} s, dense {lab['dense_s']:.2f} s on {lab['device']}",
          file=sys.stderr)
print(json.dumps(summary, sort_keys=True))
EOF
step "done"
