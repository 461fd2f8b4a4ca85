#!/usr/bin/env bash
# The staged recipe behind the best measured n=4 head for SmolLM2-135M-Instruct (README,
# "Heads trained on one H200"), as one command; about 70 minutes on one H200 (the sum of
# the stages' measured times; not run on a GPU as one script):
#   bash scripts/head_gpu_recipe.sh OUT_DIR TARGET_DIR PROMPTS_DIR
# PROMPTS_DIR holds mt_bench_questions.jsonl and humaneval_questions.jsonl (evaluation
# only; they are also kept out of the invented prompts). Stages, each skipped when its
# result is already there (so a stopped run can be started again):
#   1. data (OUT/data): the 3863 template prompts answered greedily and twice sampled, and
#      INVENTED prompts the target invents, answered greedily;
#   2. OUT/a/s4: 4 draft layers, 16384-token draft vocabulary, STEPS_A steps at lr 1e-3;
#   3. MORE x 2 further invented prompts (seeds 100000 and 200000; the second run excludes
#      the first's), answered greedily;
#   4. OUT/b/s4: OUT/a/s4 trained on, with --init, on all the data: STEPS_B steps at 7e-4;
#   5. OUT/c/s4: OUT/b/s4 trained on the same way: STEPS_C steps at 5e-4. This is the head;
#      OUT/c/acceptance_s4.json its acceptance at T=0 and T=1.
# Knobs (environment; the defaults are the measured run's): INVENTED (20000), MORE (18000),
# STEPS_A (5000), STEPS_B (3500), STEPS_C (8000), NUM_PROMPTS and EVAL_LIMIT (head_gpu.sh's).
# The measured run differs in one respect: its two stage-3 runs went side by side and were
# deduplicated afterwards (35,983 prompts), instead of the second excluding the first.
set -euo pipefail
out=$(mkdir -p "$1" && cd "$1" && pwd); target=$2; prompts=$3
here=$(cd "$(dirname "$0")" && pwd)
data=$out/data
export DATA_DIR=$data SAMPLED=2 INVENTED=${INVENTED:-20000} DRAFT_LAYERS=4 VOCAB=16384 EVAL_EVERY=500
more=${MORE:-18000}

stage() {  # stage NAME STEPS LR SEED EVAL_FRACTION EVAL_TEMPS [INIT]
  [ -s "$out/$1/acceptance_s4.json" ] && { echo "$1: done already"; return 0; }
  STEPS=$2 LR=$3 SEED=$4 EVAL_FRACTION=$5 EVAL_TEMPS=$6 INIT=${7:-} \
    bash "$here/head_gpu.sh" "$out/$1" "$target" "$prompts" 4
}

stage a "${STEPS_A:-5000}" 1e-3 0 0.03 0   # also builds stage 1's data

exclude=("$prompts/mt_bench_questions.jsonl" "$prompts/humaneval_questions.jsonl" "$data/invented.jsonl")
for k in 1 2; do
  # both CLIs write their file only once it is complete, so one that exists is done
  [ -s "$data/invented_more$k.jsonl" ] || python3 -m vllm_spd.train.invent --target "$target" --num "$more" \
    --dtype float32 --seed "${k}00000" --exclude "${exclude[@]}" --out "$data/invented_more$k.jsonl"
  exclude+=("$data/invented_more$k.jsonl")
  [ -s "$data/generated_inv_more$k.jsonl" ] || python3 -m vllm_spd.train.data --target "$target" \
    --prompts "$data/invented_more$k.jsonl" --max-tokens "${GEN_TOKENS:-384}" --dtype float32 --seed 0 \
    --temperature 0 --out "$data/generated_inv_more$k.jsonl"
done

stage b "${STEPS_B:-3500}" 7e-4 1 0.02 0 "$out/a/s4"
stage c "${STEPS_C:-8000}" 5e-4 1 0.02 "0 1" "$out/b/s4"
echo "head: $out/c/s4"
