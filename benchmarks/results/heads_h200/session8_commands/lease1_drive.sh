#!/usr/bin/env bash
# lease 1 (session 8): E re-eval after the anchor-0 fix; new invented data (2 engines);
# trainings J3 (4 layers, 5000 steps) and J4 (3 layers, float32 teacher) on the old data
source /tmp/site/env.sh
export PYTHONPATH=/tmp/spdsite:$PYTHONPATH PYTHONUNBUFFERED=1
R=/tmp/repo; M=/tmp/smollm2; P=/tmp/evaldata; D=/tmp/hdata; N=/tmp/ndata; O=/tmp/res
mkdir -p $D $N $O; for f in /tmp/hd3/*.gz; do gunzip -c $f > $D/$(basename $f .gz); done
cd /tmp
old="$D/generated.jsonl $D/generated_t1.jsonl $D/generated_t2.jsonl $D/generated_inv.jsonl"
accept() {  # accept NAME HEAD_DIR
  python3 $R/benchmarks/acceptance.py --target $M --num-stages 4 --head $2 \
    --prompts $P/mt_bench_questions.jsonl $P/humaneval_questions.jsonl --temperature 0 1 --limit 40 \
    --max-tokens 128 --gpu-memory-utilization 0.2 --out $O/acc_$1.json > $O/acc_$1.log 2>&1
  echo "$(date +%T) accepted $1: $?"
}
train() {  # train NAME LAYERS STEPS [extra args]
  local name=$1 L=$2 steps=$3 s; shift 3; s=$(date +%s)
  python3 -m vllm_spd.train --target $M --num-stages 4 --steps $steps --data $old --out $O/$name \
    --draft-layers $L --draft-vocab-size 16384 --max-length 512 --batch-size 32 --lr 1e-3 \
    --eval-every 500 --eval-fraction 0.03 --log-every 50 --seed 0 --no-progress --save-dtype bfloat16 "$@" \
    > $O/$name.log 2>&1
  echo "$(date +%T) trained $name in $(( $(date +%s) - s )) s: $?"
  accept $name $O/$name
}
gen() {
  local s; s=$(date +%s)
  for k in 1 2; do
    python3 -m vllm_spd.train.invent --target $M --num 20000 --dtype float32 --seed ${k}00000 \
      --gpu-memory-utilization 0.2 --out $N/inv$k.jsonl \
      --exclude $P/mt_bench_questions.jsonl $P/humaneval_questions.jsonl $D/invented.jsonl > $N/inv$k.log 2>&1 &
  done; wait
  python3 - <<PY
import json
from vllm_spd.train.invent import prompt_key
seen, keep = set(), []
for k in (1, 2):
    for line in open(f"$N/inv{k}.jsonl"):
        rec = json.loads(line); key = prompt_key(rec["turns"][0])
        if key not in seen:
            seen.add(key); keep.append(line)
half = len(keep) // 2
open("$N/invented2.jsonl", "w").writelines(keep)
open("$N/half1.jsonl", "w").writelines(keep[:half]); open("$N/half2.jsonl", "w").writelines(keep[half:])
print("invented2:", len(keep), "distinct")
PY
  echo "$(date +%T) invented in $(( $(date +%s) - s )) s"; s=$(date +%s)
  for k in 1 2; do
    python3 -m vllm_spd.train.data --target $M --prompts $N/half$k.jsonl --max-tokens 384 --dtype float32 \
      --seed 0 --temperature 0 --gpu-memory-utilization 0.2 --out $N/generated_inv2_$k.jsonl > $N/ans$k.log 2>&1 &
  done; wait
  echo "$(date +%T) answered in $(( $(date +%s) - s )) s: $(cat $N/generated_inv2_*.jsonl | wc -l) conversations"
  gzip -k $N/invented2.jsonl $N/generated_inv2_1.jsonl $N/generated_inv2_2.jsonl
}
echo "$(date +%T) start"
accept E /tmp/E/s4 &
gen > $O/gen.log 2>&1 &
sleep 45
train J3 4 5000 &
train J4 3 3000 --dtype float32 &
wait
echo "$(date +%T) all done"
