#!/usr/bin/env bash
# generation after the E acceptance run frees its memory; engines started one after another
# (vLLM's memory profile counts other processes' growth during its own start)
source /tmp/site/env.sh
export PYTHONPATH=/tmp/spdsite:$PYTHONPATH PYTHONUNBUFFERED=1
M=/tmp/smollm2; P=/tmp/evaldata; D=/tmp/hdata; N=/tmp/ndata
while [ ! -f /tmp/res/acc_E.json ]; do sleep 5; done; sleep 5
s=$(date +%s); echo "$(date +%T) invent start"
for k in 1 2; do
  python3 -m vllm_spd.train.invent --target $M --num 18000 --dtype float32 --seed ${k}00000 \
    --gpu-memory-utilization 0.14 --out $N/inv$k.jsonl \
    --exclude $P/mt_bench_questions.jsonl $P/humaneval_questions.jsonl $D/invented.jsonl > $N/inv$k.log 2>&1 &
  sleep 60
done; wait
python3 - <<PY
import json
from vllm_spd.train.invent import prompt_key
seen, keep = set(), []
for k in (1, 2):
    try:
        lines = open(f"$N/inv{k}.jsonl").readlines()
    except FileNotFoundError:
        continue
    for line in lines:
        key = prompt_key(json.loads(line)["turns"][0])
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
    --seed 0 --temperature 0 --gpu-memory-utilization 0.14 --out $N/generated_inv2_$k.jsonl > $N/ans$k.log 2>&1 &
  sleep 60
done; wait
echo "$(date +%T) answered in $(( $(date +%s) - s )) s: $(cat $N/generated_inv2_*.jsonl | wc -l) conversations"
gzip -k $N/invented2.jsonl $N/generated_inv2_1.jsonl $N/generated_inv2_2.jsonl; ls -la $N
