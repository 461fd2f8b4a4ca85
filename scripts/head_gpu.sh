#!/usr/bin/env bash
# Draft heads for one target, trained on a GPU with more data and steps than `make head`
# can afford on CPU, then their acceptance on the evaluation prompts:
#   bash scripts/head_gpu.sh OUT_DIR TARGET_DIR PROMPTS_DIR "2 4"
# PROMPTS_DIR holds mt_bench_questions.jsonl and humaneval_questions.jsonl (evaluation
# only: the training prompts are vllm_spd.train.prompts). Writes OUT_DIR/s<N> (head
# directories, bf16 weights) and OUT_DIR/acceptance_s<N>.json. An empty stage list only
# builds the training data.
# Knobs (environment):
#   DATA_DIR (default OUT_DIR): prompts.jsonl and generated*.jsonl; files already there
#     are reused, so several trainings (other OUT_DIRs) can share one data set;
#   NUM_PROMPTS (default 3863, every training prompt), GEN_TOKENS (384);
#   SAMPLED (0): extra answer passes sampled at GEN_TEMP (0.8), top-p 0.95, seeds 1..SAMPLED;
#   INVENTED (0): prompts the target invents (vllm_spd.train.invent, evaluation prompts
#     excluded), answered greedily as well;
#   STEERED (0): prompts the target invents after a built-in opener (--openers builtin,
#     seed 300000), answered greedily as well;
#   GEN_ENGINE ("--gpu-memory-utilization 0.9"): vLLM options of the generation CLIs, e.g.
#     "--gpu-memory-utilization 0.1 --max-num-seqs 512" for several engines on one GPU;
#   STEPS (3000), BATCH (32), LR (1e-3), DRAFT_LAYERS (1), VOCAB (8192, the draft vocabulary);
#   TIME_BUDGET: seconds of training per head (the trainer's --time-budget; STEPS is then the most);
#   INIT: a head directory to start from (the trainer's --init; VOCAB is then the head's);
#   SEED (0), EVAL_FRACTION (0.03), EVAL_EVERY (250): the trainer's --seed, --eval-fraction,
#     --eval-every;
#   EVAL_LIMIT (40), EVAL_TOKENS (128), EVAL_TEMPS ("0 1"), EVAL_GPU_MEM (0.9, vLLM's share of
#     the GPU in the acceptance run: lower it when several trainings share one GPU).
set -euo pipefail
out=$(mkdir -p "$1" && cd "$1" && pwd); target=$2; prompts=$3; stages=${4-4}
here=$(cd "$(dirname "$0")/.." && pwd)
data=$(mkdir -p "${DATA_DIR:-$out}" && cd "${DATA_DIR:-$out}" && pwd)
num=${NUM_PROMPTS:-3863}
[ -s "$data/prompts.jsonl" ] || python3 -m vllm_spd.train.prompts --out "$data/prompts.jsonl" --num "$num" --seed 0
answer() {  # answer FILE SEED TEMPERATURE [PROMPTS]
  [ -s "$data/$1" ] && return 0
  local start; start=$(date +%s)
  python3 -m vllm_spd.train.data --target "$target" --prompts "$data/${4:-prompts.jsonl}" \
    --max-tokens "${GEN_TOKENS:-384}" --dtype float32 --seed "$2" --temperature "$3" --top-p 0.95 \
    ${GEN_ENGINE:-} --out "$data/$1"
  echo "$1: $(wc -l < "$data/$1") answers (T=$3) in $(( $(date +%s) - start )) s"
}
answer generated.jsonl 0 0
for k in $(seq 1 "${SAMPLED:-0}"); do answer "generated_t$k.jsonl" "$k" "${GEN_TEMP:-0.8}"; done
if [ "${INVENTED:-0}" -gt 0 ]; then
  [ -s "$data/invented.jsonl" ] || python3 -m vllm_spd.train.invent --target "$target" --num "$INVENTED" \
    --dtype float32 ${GEN_ENGINE:-} --exclude "$prompts/mt_bench_questions.jsonl" "$prompts/humaneval_questions.jsonl" "$prompts/spd_own_prompts.jsonl" \
    --out "$data/invented.jsonl"
  answer generated_inv.jsonl 0 0 invented.jsonl
fi
if [ "${STEERED:-0}" -gt 0 ]; then
  [ -s "$data/steered.jsonl" ] || python3 -m vllm_spd.train.invent --target "$target" --num "$STEERED" \
    --dtype float32 --seed 300000 --openers builtin ${GEN_ENGINE:-} \
    --exclude "$prompts/mt_bench_questions.jsonl" "$prompts/humaneval_questions.jsonl" "$prompts/spd_own_prompts.jsonl" --out "$data/steered.jsonl"
  answer generated_steered.jsonl 0 0 steered.jsonl
fi
files=$(ls "$data"/generated*.jsonl)
for n in $stages; do
  start=$(date +%s)
  python3 -m vllm_spd.train --target "$target" --num-stages "$n" --steps "${STEPS:-3000}" \
    --data $files --out "$out/s$n" --draft-layers "${DRAFT_LAYERS:-1}" \
    --draft-vocab-size "${VOCAB:-8192}" --max-length 512 --batch-size "${BATCH:-32}" --lr "${LR:-1e-3}" \
    --eval-every "${EVAL_EVERY:-250}" --eval-fraction "${EVAL_FRACTION:-0.03}" --log-every 50 --seed "${SEED:-0}" \
    --no-progress --save-dtype bfloat16 ${INIT:+--init "$INIT"} ${TIME_BUDGET:+--time-budget "$TIME_BUDGET"}
  echo "trained s$n in $(( $(date +%s) - start )) s"
  python3 "$here/benchmarks/acceptance.py" --target "$target" --num-stages "$n" --head "$out/s$n" \
    --prompts "$prompts/mt_bench_questions.jsonl" "$prompts/humaneval_questions.jsonl" \
    --temperature ${EVAL_TEMPS:-0 1} --limit "${EVAL_LIMIT:-40}" --max-tokens "${EVAL_TOKENS:-128}" \
    --gpu-memory-utilization "${EVAL_GPU_MEM:-0.9}" --out "$out/acceptance_s$n.json"
done
