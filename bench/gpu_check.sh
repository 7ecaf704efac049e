#!/usr/bin/env bash
# Issue 21's device check in one call: a smoke run of the bench, the gpu-marked sr tests, bench/gpu_speed.py
# --targets (graphed packing K=8 against lone graphed jobs, the paper step's variants and MFU, the SUMMARY lines),
# then, when a Set14 folder is given, the paper preset's Set14 PSNR with TF32 (the default) and with bfloat16.
#
#   bash bench/gpu_check.sh [SET14_DIR]        # writes its logs and JSON under $OUT (default /tmp/gpu_check)
#
# Installs nothing: it needs torch, numpy, Pillow, tqdm, scikit-image and pytest (+ pytest-timeout), which the
# device image has; the service's packages are not needed (pytest stops looking for conftest.py at tests/sr).
# Each part has its own time limit and a failed part does not stop the next one.
set -u -o pipefail
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}

part() {  # part NAME SECONDS COMMAND...: the command's output into $OUT/NAME.txt and onto the terminal
  local name=$1 seconds=$2
  shift 2
  echo "=== $name: $*"
  timeout "$seconds" "$@" 2>&1 | tee "$OUT/$name.txt"
  echo "=== $name: exit ${PIPESTATUS[0]}"
}

part env 60 bash -c "nvidia-smi -L; $PY -c 'import torch; print(torch.__version__, torch.version.cuda, \
torch.backends.cudnn.version(), torch.cuda.get_device_name())'"
part smoke 120 "$PY" bench/gpu_speed.py --targets --smoke --device cuda
part tests 240 "$PY" -m pytest -q -m gpu -p no:cacheprovider --confcutdir=tests/sr \
  tests/sr/test_cuda_step.py tests/sr/test_packed.py
part targets 300 "$PY" bench/gpu_speed.py --targets --device cuda --json "$OUT/targets.json"
if [ -n "${1:-}" ]; then
  echo '{"precision": "bfloat16"}' > /tmp/bf16.json
  part set14_tf32 150 "$PY" bench/quality.py --preset paper --device cuda --photos --set14 --set14-dir "$1" \
    --json "$OUT/set14_tf32.json"
  part set14_bf16 150 "$PY" bench/quality.py --preset paper --device cuda --photos --set14 --set14-dir "$1" \
    --config /tmp/bf16.json --json "$OUT/set14_bf16.json"
fi
grep -h '^SUMMARY' "$OUT"/targets.txt 2>/dev/null
