#!/usr/bin/env bash
# Lease 1 (session 9), run in the background on one H200 after scripts/gpu_bringup.sh:
#   1. the trainer's speed alone on the GPU (benchmarks/train_speed.py: sdpa vs flex
#      attention, bf16 vs fp32 teacher), then
#   2. data: the 3863 template prompts answered greedily and twice sampled (T=0.8), 20000
#      prompts SmolLM2 invents unsteered (seed 0) and 2 x 20000 it invents after a built-in
#      opener (seeds 300000, 400000), each answered greedily (6 vLLM engines side by side);
#   3. side by side: two trainings with equal settings and steps, templates + unsteered
#      prompts ("plain") against templates + opener prompts ("openers"), and a longer one
#      on all the data ("all"); each one's acceptance at T=0 when it ends.
source /tmp/spd_env.sh
R=$SPD_REPO; M=/tmp/spdcache/models/smollm2; P=$R/.carry/eval; D=/tmp/hdata; O=/tmp/res
mkdir -p $D $O; cd /tmp
EX="$P/mt_bench_questions.jsonl $P/humaneval_questions.jsonl"
ENG="--dtype float32 --gpu-memory-utilization 0.1 --max-num-seqs 512"
stamp() { echo "$(date +%T) $*"; }
answer() {  # FILE PROMPTS SEED TEMPERATURE
  local s=$(date +%s)
  python3 -m vllm_spd.train.data --target $M --prompts $2 --max-tokens 384 --seed $3 --temperature $4 \
    --top-p 0.95 $ENG --out $D/$1 > $O/gen_$1.log 2>&1
  stamp "answered $1: $? ($(wc -l < $D/$1) conversations, $(( $(date +%s) - s )) s)"
}
invent_answer() {  # NAME SEED OPENERS
  local s=$(date +%s)
  python3 -m vllm_spd.train.invent --target $M --num ${NUM_INVENT:-20000} --seed $2 --openers $3 --exclude $EX $ENG \
    --out $D/$1.jsonl > $O/inv_$1.log 2>&1
  stamp "invented $1: $? ($(( $(date +%s) - s )) s)"
  answer generated_$1.jsonl $D/$1.jsonl 0 0
}
stamp start
python3 -m vllm_spd.train.prompts --out $D/prompts.jsonl --num 3863 --seed 0 > /dev/null
python3 $R/benchmarks/train_speed.py --target $M --num-stages 4 --draft-layers 4 --steps ${SPEED_STEPS:-20} --warmup 5 \
  --settings sdpa:bfloat16 sdpa:float32 flex:bfloat16 flex:float32 --out $O/train_speed_h200.json > $O/train_speed.log 2>&1
stamp "speed: $?"
# The trainings below use FlexAttention only when the measurement above found it faster
# (fp32 teacher, the trainer's default), unless /tmp/attn was written by hand.
[ -f /tmp/attn ] || python3 - $O/train_speed_h200.json > /tmp/attn <<'PY' || echo sdpa > /tmp/attn
import json, sys
rows = {r["attention"]: r["steps_per_s"] for r in json.load(open(sys.argv[1]))["rows"] if r["teacher_dtype"] == "float32"}
print("flex" if rows.get("flex", 0) > rows.get("sdpa", 0) else "sdpa")
PY
stamp "attention for the trainings: $(cat /tmp/attn)"
answer generated.jsonl $D/prompts.jsonl 0 0 &
answer generated_t1.jsonl $D/prompts.jsonl 1 0.8 &
answer generated_t2.jsonl $D/prompts.jsonl 2 0.8 &
invent_answer plain 0 none &
invent_answer openers1 300000 builtin &
[ "${ALL_STEPS:-9000}" -gt 0 ] && invent_answer openers2 400000 builtin &
wait
stamp "data done"; touch $O/data.done
tmpl="$D/generated.jsonl $D/generated_t1.jsonl $D/generated_t2.jsonl"
train() {  # NAME DATA...
  local name=$1 s=$(date +%s); shift
  python3 -m vllm_spd.train --target $M --num-stages 4 --steps ${STEPS:-3000} --data "$@" --out $O/$name \
    --draft-layers 4 --draft-vocab-size 16384 --max-length 512 --batch-size 32 --lr 1e-3 --attention $(cat /tmp/attn 2>/dev/null || echo sdpa) \
    --eval-every ${EVAL_EVERY:-1000} --save-every 500 --eval-fraction 0.02 --log-every 50 --seed 0 --no-progress --save-dtype bfloat16 \
    > $O/$name.log 2>&1
  stamp "trained $name: $? in $(( $(date +%s) - s )) s"
  python3 $R/benchmarks/acceptance.py --target $M --num-stages 4 --head $O/$name --prompts $EX --limit 40 \
    --max-tokens 128 --temperature 0 --gpu-memory-utilization 0.1 --out $O/acc_$name.json > $O/acc_$name.log 2>&1
  stamp "accepted $name: $?"
}
train plain $tmpl $D/generated_plain.jsonl &
train openers $tmpl $D/generated_openers1.jsonl &
sleep 20
# The long run on all the data: a longer schedule, checkpointed every 500 steps; lease 2
# starts from its last checkpoint (--init) when the lease ends first.
[ "${ALL_STEPS:-9000}" -gt 0 ] && STEPS=${ALL_STEPS:-9000} train all $tmpl $D/generated_plain.jsonl $D/generated_openers1.jsonl $D/generated_openers2.jsonl &
wait
stamp "all done"; touch $O/all.done
