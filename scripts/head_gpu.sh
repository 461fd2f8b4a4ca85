#!/usr/bin/env bash
# Draft heads for one target, trained on a GPU with more data and steps than `make head`
# can afford on CPU, then their acceptance on the evaluation prompts:
#   bash scripts/head_gpu.sh OUT_DIR TARGET_DIR PROMPTS_DIR "2 4"
# PROMPTS_DIR holds mt_bench_questions.jsonl and humaneval_questions.jsonl (evaluation
# only: the training prompts are vllm_spd.train.prompts). Writes OUT_DIR/s<N> (head
# directories, bf16 weights) and OUT_DIR/acceptance_s<N>.json. Knobs (environment):
# NUM_PROMPTS (default 3863, every training prompt), GEN_TOKENS (384), STEPS (3000),
# BATCH (32), EVAL_LIMIT (40), EVAL_TOKENS (128).
set -euo pipefail
out=$(mkdir -p "$1" && cd "$1" && pwd); target=$2; prompts=$3; stages=${4:-4}
here=$(cd "$(dirname "$0")/.." && pwd)
num=${NUM_PROMPTS:-3863}
python3 -m vllm_spd.train.prompts --out "$out/prompts.jsonl" --num "$num" --seed 0
start=$(date +%s)
python3 -m vllm_spd.train.data --target "$target" --prompts "$out/prompts.jsonl" --num "$num" \
  --max-tokens "${GEN_TOKENS:-384}" --dtype float32 --out "$out/generated.jsonl"
echo "generated $(wc -l < "$out/generated.jsonl") answers in $(( $(date +%s) - start )) s"
for n in $stages; do
  start=$(date +%s)
  python3 -m vllm_spd.train --target "$target" --num-stages "$n" --steps "${STEPS:-3000}" \
    --data "$out/generated.jsonl" --out "$out/s$n" --draft-layers 1 --draft-vocab-size 8192 \
    --max-length 512 --batch-size "${BATCH:-32}" --lr 1e-3 --eval-every 250 --eval-fraction 0.03 \
    --log-every 50 --seed 0 --no-progress --save-dtype bfloat16
  echo "trained s$n in $(( $(date +%s) - start )) s"
  python3 "$here/benchmarks/acceptance.py" --target "$target" --num-stages "$n" --head "$out/s$n" \
    --prompts "$prompts/mt_bench_questions.jsonl" "$prompts/humaneval_questions.jsonl" \
    --limit "${EVAL_LIMIT:-40}" --max-tokens "${EVAL_TOKENS:-128}" --out "$out/acceptance_s$n.json"
done
