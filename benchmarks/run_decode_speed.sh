#!/usr/bin/env bash
# Decode-speed tables for the README on one multi-GPU host (H200s expected):
# n=2 on the first two GPUs, then n=4 on the first four (skipped with fewer GPUs).
#   bash benchmarks/run_decode_speed.sh [OUT_DIR] [extra decode_speed.py args...]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/results}; shift || true
gpus=$(python3 -c "import torch; print(torch.cuda.device_count())")
for n in 2 4; do
  if [ "$gpus" -lt "$n" ]; then echo "skip n=$n: $gpus GPUs"; continue; fi
  CUDA_VISIBLE_DEVICES=$(seq -s, 0 $((n - 1))) PYTHONUNBUFFERED=1 \
    python3 "$here/decode_speed.py" --num-stages "$n" --batch 1 4 --out "$out/decode_speed_n$n.json" "$@"
done
