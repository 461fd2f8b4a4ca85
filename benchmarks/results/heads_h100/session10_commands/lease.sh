#!/usr/bin/env bash
# Lease (session 10), run in the background on one GPU after scripts/gpu_bringup.sh:
#   1. data: the 3863 template prompts answered greedily and three times sampled (T=0.8),
#      and NUM_INVENT prompts SmolLM2 invents after a built-in opener, answered greedily
#      (5 vLLM engines side by side);
#   2. side by side, same data, steps, schedule and seed: a head whose draft layers start
#      random (--tower-init random) and one started from the target's last layers
#      (--tower-init target); /tmp/plan, when written before the data is done, may name
#      one of them alone ("random" or "target") to give it the whole GPU;
#   3. each head's acceptance at T=0 on MT-Bench and HumanEval (40 prompts each, 128
#      tokens) as soon as it is trained.
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
stamp start
python3 -m vllm_spd.train.prompts --out $D/prompts.jsonl --num 3863 --seed 0 > /dev/null
answer generated.jsonl $D/prompts.jsonl 0 0 &
answer generated_t1.jsonl $D/prompts.jsonl 1 0.8 &
answer generated_t2.jsonl $D/prompts.jsonl 2 0.8 &
answer generated_t3.jsonl $D/prompts.jsonl 3 0.8 &
( s=$(date +%s)
  python3 -m vllm_spd.train.invent --target $M --num ${NUM_INVENT:-6000} --seed 300000 --openers builtin --exclude $EX $ENG \
    --out $D/openers.jsonl > $O/inv_openers.log 2>&1
  stamp "invented openers: $? ($(( $(date +%s) - s )) s)"
  answer generated_openers.jsonl $D/openers.jsonl 0 0 ) &
wait
stamp "data done"; touch $O/data.done
train() {  # TOWER_INIT
  local name=$1 s=$(date +%s)
  python3 -m vllm_spd.train --target $M --num-stages 4 --steps ${STEPS:-3000} --data $D/generated*.jsonl --out $O/$name \
    --tower-init $name --draft-layers 4 --draft-vocab-size 16384 --max-length 512 --batch-size 32 --lr ${LR:-1e-3} \
    --attention sdpa --teacher-dtype bfloat16 --eval-every 500 --save-every 250 --eval-fraction 0.02 --log-every 50 \
    --seed 0 --no-progress --save-dtype bfloat16 > $O/$name.log 2>&1
  stamp "trained $name: $? in $(( $(date +%s) - s )) s"
  accept $name
}
accept() {  # NAME (the head's directory holds its latest checkpoint also while it trains)
  python3 $R/benchmarks/acceptance.py --target $M --num-stages 4 --head $O/$1 --prompts $EX --limit 40 \
    --max-tokens 128 --temperature 0 --gpu-memory-utilization 0.1 --out $O/acc_$1.json > $O/acc_$1.log 2>&1
  stamp "accepted $1: $?"
}
plan=$(cat /tmp/plan 2>/dev/null || echo "random target")
stamp "training: $plan"
for name in $plan; do train $name & sleep 5; done
wait
stamp "all done"; touch $O/all.done
