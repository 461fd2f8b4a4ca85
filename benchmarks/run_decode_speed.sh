#!/usr/bin/env bash
# Decode-speed tables for the README on one multi-GPU host (H200s expected):
# n=2 on the first two GPUs, then n=4 on the first four (skipped with fewer GPUs).
#   bash benchmarks/run_decode_speed.sh [OUT_DIR] [extra decode_speed.py args...]
# NS picks the stage counts (default "2 4"), SYSTEMS the systems (default all four), LAGS
# SPD's verdict lags (default "1 0": the host-driven cycle, then the device cycle).
# Rows are appended to OUT_DIR/decode_speed_n<N>.json when it holds a run of the same
# settings, so the systems of one run can be split over several shorter calls
# (engine starts dominate: about 150 s for SPD and 100 s for plain vLLM on a fresh host).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/results}; shift || true
gpus=$(python3 -c "import torch; print(torch.cuda.device_count())")
systems=" ${SYSTEMS:-spd tp1 tpn ppn} "
others=${systems/ spd / }
run() {  # run N ARGS...: one decode_speed.py call on the first N GPUs
  local n=$1; shift
  CUDA_VISIBLE_DEVICES=$(seq -s, 0 $((n - 1))) PYTHONUNBUFFERED=1 \
    python3 "$here/decode_speed.py" --num-stages "$n" --batch 1 4 --system-timeout 420 --append \
    --out "$out/decode_speed_n$n.json" "$@"
}
for n in ${NS:-2 4}; do
  if [ "$gpus" -lt "$n" ]; then echo "skip n=$n: $gpus GPUs"; continue; fi
  if [ -n "${others// }" ]; then run "$n" --systems $others "$@"; fi
  if [ "$others" != "$systems" ]; then
    for lag in ${LAGS:-1 0}; do run "$n" --systems spd --verdict-lag "$lag" "$@"; done
  fi
done
