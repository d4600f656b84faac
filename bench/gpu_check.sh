#!/usr/bin/env bash
# The GPU check: everything this project wants to see once on a CUDA machine, in one run of at most
# 10 minutes (each step has its own time limit), ending in one summary table. Run it after `make setup`:
#
#   bash bench/gpu_check.sh                  # logs in $GPU_CHECK_OUT (default: $OUT, else a temporary folder)
#
# Steps: nvidia-smi; the tests marked `cuda` (tests/test_cuda.py: bf16 autocast, channels-last,
# device-resident images, DataLoader workers with pinned memory, resume, a micro `dvc repro` on
# device: cuda, two nccl ranks when two GPUs exist); bench/train_step.py and bench/predict.py on the GPU
# (real loop / predict path against the bare step). Without a GPU it says so in one line and exits 0.
# Exit status: 0 when every step passed, 1 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
if ! "$py" -c 'import torch' 2>/dev/null; then
  echo "gpu_check: $py cannot import torch: run make setup first (or set PYTHON)"
  exit 2
fi
gpus=$("$py" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)')
if [ "$gpus" = 0 ]; then
  cpu=$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p')
  echo "gpu_check: no CUDA GPU visible to torch $("$py" -c 'import torch; print(torch.__version__)') on ${cpu:-this machine}: nothing to check"
  exit 0
fi

out=${GPU_CHECK_OUT:-${OUT:-$(mktemp -d)}}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
rows=()
failed=0

# step NAME LIMIT_S COMMAND...: run it with its output in $out/NAME.log; a row for the summary
step() {
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  timeout --kill-after=10 "$limit" "$@" >"$out/$name.log" 2>&1
  local rc=$? status=passed
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    status="TIMED OUT (${limit} s)"
  elif [ "$rc" -ne 0 ]; then
    status="FAILED (exit $rc)"
  fi
  [ "$status" = passed ] || failed=1
  rows+=("$name|$status|$((SECONDS - start))|$(summary_of "$name")")
  echo "gpu_check: $name: $status ($((SECONDS - start)) s, log $out/$name.log)"
}

# the line of a step's log worth a table cell
summary_of() {
  local log=$out/$1.log
  case $1 in
    nvidia-smi) head -n 1 "$log" ;;
    cuda-tests) grep -E '(passed|failed|skipped|error)' "$log" | tail -n 1 | tr -d '=' ;;
    *) grep -E '^ratio real / bare' "$log" | tail -n 1 ;;
  esac
}

step nvidia-smi 30 nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv,noheader
step cuda-tests 330 "$py" -m pytest -m cuda -p no:cacheprovider -q -rs tests/test_cuda.py
step train-step 150 "$py" bench/train_step.py --device cuda --steps 20 --epochs 3 --repeats 2
step predict 90 "$py" bench/predict.py --device cuda --images 65536 --repeats 2

echo
echo "gpu_check on $gpus GPU(s), torch $("$py" -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda)')"
# printf, not column(1): a bare CUDA image may not have util-linux's column (the first H200 run had none)
for row in "step|status|seconds|result" "${rows[@]}"; do
  IFS='|' read -r name status seconds result <<<"$row"
  printf '%-11s %-22s %7s  %s\n' "$name" "$status" "$seconds" "$result"
done
exit "$failed"
