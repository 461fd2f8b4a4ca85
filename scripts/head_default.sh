#!/usr/bin/env bash
# The recipe of the shipped default head (vllm_spd/heads/SmolLM2-135M-Instruct/s4), on one
# GPU host with vLLM installed; about 17 minutes on one H100 (data 7.5 minutes, training
# 7 minutes, acceptance 2.5 minutes):
#   bash scripts/head_default.sh OUT_DIR TARGET_DIR
# 1. data (OUT/data): six vLLM engines side by side on the one GPU, each answering at most
#    384 tokens: the 3863 template prompts of vllm_spd.train.prompts greedily and twice
#    sampled (T=0.8, top-p 0.95), and 3 x 9000 prompts the target invents (two runs after a
#    built-in opener, one without), answered greedily. The evaluation prompts of
#    benchmarks/data/ are kept out of the invented ones. A file is written only once
#    complete, so a stopped run starts again where it was.
# 2. OUT/s4: 4 draft layers from the target's last layers, 16384-token draft vocabulary,
#    batch 32, lr 1e-3 decayed to 0 over TIME_BUDGET seconds of training (default 440).
# 3. OUT/s4_int8: the same head with int8 weights (28.9 MB), the shipped form.
# 4. OUT/acceptance_int8.json and OUT/acceptance_int8_hybrid.json: alpha on 40 prompts each
#    of MT-Bench, HumanEval and benchmarks/data/spd_own_prompts.jsonl, 128 new tokens.
set -euo pipefail
out=$(mkdir -p "$1" && cd "$1" && pwd); target=$2
here=$(cd "$(dirname "$0")/.." && pwd)
data=$out/data; evals=$here/benchmarks/data
mkdir -p "$data/logs"
engine=(--gpu-memory-utilization 0.13 --max-num-seqs 512 --dtype float32)
exclude=("$evals/mt_bench_questions.jsonl" "$evals/humaneval_questions.jsonl" "$evals/spd_own_prompts.jsonl")

answer() {  # answer PROMPTS OUT SEED TEMPERATURE
  [ -s "$data/$2" ] || python3 -m vllm_spd.train.data --target "$target" --prompts "$data/$1" --max-tokens 384 \
    --seed "$3" --temperature "$4" --top-p 0.95 "${engine[@]}" --out "$data/$2" > "$data/logs/$2.log" 2>&1
  echo "$2: $(wc -l < "$data/$2") conversations"
}
invent() {  # invent OUT SEED OPENERS
  [ -s "$data/$1" ] || python3 -m vllm_spd.train.invent --target "$target" --num 9000 --seed "$2" --openers "$3" \
    "${engine[@]}" --exclude "${exclude[@]}" --out "$data/$1" > "$data/logs/$1.log" 2>&1
}

[ -s "$data/prompts.jsonl" ] || python3 -m vllm_spd.train.prompts --out "$data/prompts.jsonl" --num 3863 --seed 0
# engines start 5 s apart: an engine's start-up memory profile counts the others' growth
answer prompts.jsonl generated.jsonl 0 0 &
sleep 5; answer prompts.jsonl generated_t1.jsonl 1 0.8 &
sleep 5; answer prompts.jsonl generated_t2.jsonl 2 0.8 &
sleep 5; (invent steered.jsonl 300000 builtin && answer steered.jsonl generated_steered.jsonl 0 0) &
sleep 5; (invent invented.jsonl 100000 none && answer invented.jsonl generated_inv.jsonl 0 0) &
sleep 5; (invent steered2.jsonl 400000 builtin && answer steered2.jsonl generated_steered2.jsonl 0 0) &
wait
for f in generated generated_t1 generated_t2 generated_steered generated_steered2 generated_inv; do
  [ -s "$data/$f.jsonl" ] || { echo "head_default: $f.jsonl was not made, see $data/logs/" >&2; exit 1; }
done

python3 -m vllm_spd.train --target "$target" --num-stages 4 --draft-layers 4 --draft-vocab-size 16384 \
  --tower-init target --max-length 512 --batch-size 32 --lr 1e-3 --steps 20000 \
  --time-budget "${TIME_BUDGET:-440}" --eval-every 500 --eval-fraction 0.02 --log-every 50 --seed 0 \
  --no-progress --save-dtype bfloat16 --data "$data"/generated*.jsonl --out "$out/s4"
python3 -m vllm_spd.head pack --int8 "$out/s4" "$out/s4_int8"

accept() {  # accept NAME ARGS...
  local name=$1; shift
  python3 "$here/benchmarks/acceptance.py" --target "$target" --num-stages 4 --head "$out/s4_int8" \
    --prompts "${exclude[@]}" --limit 40 --max-tokens 128 --gpu-memory-utilization 0.3 \
    --out "$out/acceptance_$name.json" "$@"
}
accept int8 --temperature 0 1 &
sleep 5; accept int8_hybrid --drafter hybrid --temperature 0 &
wait
echo "head: $out/s4_int8"
