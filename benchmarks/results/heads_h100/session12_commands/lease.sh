#!/usr/bin/env bash
# Lease (session 12), run in the background on one GPU after scripts/gpu_bringup.sh:
#   1. data, engines started 20 s apart: the 3863 template prompts answered greedily and
#      twice sampled (T=0.8, top-p 0.95), and NUM_INVENT prompts SmolLM2 invents after a
#      built-in opener (evaluation prompts excluded), answered greedily;
#   2. head A: 4 draft layers started from the target's last layers, 16384-token draft
#      vocabulary, STEPS_A steps at lr 1e-3 on the template answers (starts as soon as they
#      are there; the invented prompts are still being written and answered meanwhile);
#   3. head B: head A trained on (--init) over all the data, STEPS_B steps at lr 7e-4,
#      cut off after TRAIN_B_S seconds (the head directory then holds its last checkpoint);
#   4. head B's acceptance at n=4 on MT-Bench and HumanEval (40 prompts each, 128 tokens):
#      head drafter at T=0 and T=1, hybrid drafter at T=0.
# As run in session 12, this driver was stopped while head A trained; steps 3 and 4 ran
# from lease_b.sh (head B given 3000 steps and up to 480 s), head C from lease_c.sh.
source /tmp/spd_env.sh
R=$SPD_REPO; M=/tmp/spdcache/models/smollm2; P=$R/.carry/eval; D=/tmp/hdata; O=/tmp/res
mkdir -p $D $O; cd /tmp
EX="$P/mt_bench_questions.jsonl $P/humaneval_questions.jsonl"
ENG="--dtype float32 --gpu-memory-utilization 0.12 --max-num-seqs 512"
stamp() { echo "$(date +%T) $*"; }
answer() {  # FILE PROMPTS SEED TEMPERATURE
  local s=$(date +%s)
  python3 -m vllm_spd.train.data --target $M --prompts $2 --max-tokens 384 --seed $3 --temperature $4 \
    --top-p 0.95 $ENG --out $D/$1 > $O/gen_$1.log 2>&1
  stamp "answered $1: $? ($(wc -l < $D/$1) conversations, $(( $(date +%s) - s )) s)"
}
train() {  # NAME STEPS LR [INIT] -- data files
  local name=$1 steps=$2 lr=$3 init=$4 s=$(date +%s); shift 5
  local from="--tower-init target"; [ -n "$init" ] && from="--init $init"
  timeout ${TRAIN_S:-100000} python3 -m vllm_spd.train --target $M --num-stages 4 --steps $steps --data "$@" \
    --out $O/$name $from --draft-layers 4 --draft-vocab-size 16384 --max-length 512 --batch-size 32 --lr $lr \
    --attention sdpa --teacher-dtype bfloat16 --eval-every 500 --save-every 250 --eval-fraction 0.02 --log-every 50 \
    --seed 0 --no-progress --save-dtype bfloat16 > $O/train_$name.log 2>&1
  stamp "trained $name: $? in $(( $(date +%s) - s )) s"
}
stamp start
python3 -m vllm_spd.train.prompts --out $D/prompts.jsonl --num 3863 --seed 0 > /dev/null
answer generated.jsonl $D/prompts.jsonl 0 0 & p0=$!; sleep 20
answer generated_t1.jsonl $D/prompts.jsonl 1 0.8 & p1=$!; sleep 20
answer generated_t2.jsonl $D/prompts.jsonl 2 0.8 & p2=$!; sleep 20
( s=$(date +%s)
  python3 -m vllm_spd.train.invent --target $M --num ${NUM_INVENT:-6000} --seed 300000 --openers builtin --exclude $EX $ENG \
    --out $D/openers.jsonl > $O/inv_openers.log 2>&1
  stamp "invented openers: $? ($(( $(date +%s) - s )) s)"
  answer generated_openers.jsonl $D/openers.jsonl 0 0 ) & pi=$!
wait $p0 $p1 $p2
stamp "template data done"
train A ${STEPS_A:-1500} 1e-3 "" -- $D/generated.jsonl $D/generated_t1.jsonl $D/generated_t2.jsonl
wait $pi
stamp "all data done"
TRAIN_S=${TRAIN_B_S:-420} train B ${STEPS_B:-2400} 7e-4 $O/A -- $D/generated*.jsonl
python3 $R/benchmarks/acceptance.py --target $M --num-stages 4 --head $O/B --prompts $EX --limit 40 \
  --max-tokens 128 --temperature 0 1 --gpu-memory-utilization 0.3 --out $O/acc_B.json > $O/acc_B.log 2>&1
stamp "accepted B (head): $?"
python3 $R/benchmarks/acceptance.py --target $M --num-stages 4 --head $O/B --drafter hybrid --prompts $EX --limit 40 \
  --max-tokens 128 --temperature 0 --gpu-memory-utilization 0.3 --out $O/acc_B_hybrid.json > $O/acc_B_hybrid.log 2>&1
stamp "accepted B (hybrid): $?"
stamp "all done"; touch $O/all.done
