#!/usr/bin/env bash
# lease 2 (session 8): K2 = K1 (J3 + 3500 steps on all data) trained on, with --init, for
# STEPS more steps on all data at a lower peak rate; K1's hybrid acceptance alongside
source /tmp/site/env.sh
export PYTHONPATH=/tmp/spdsite:$PYTHONPATH PYTHONUNBUFFERED=1
R=/tmp/repo; M=/tmp/smollm2; P=/tmp/evaldata; D=/tmp/hdata; O=/tmp/res
mkdir -p $D $O; for f in /tmp/hd4/*.gz; do gunzip -c $f > $D/$(basename $f .gz); done
cd /tmp
all="$D/generated.jsonl $D/generated_t1.jsonl $D/generated_t2.jsonl $D/generated_inv.jsonl $D/generated_inv2_1.jsonl $D/generated_inv2_2.jsonl"
accept() {  # accept NAME HEAD_DIR [extra args]
  local name=$1 head=$2; shift 2
  python3 $R/benchmarks/acceptance.py --target $M --num-stages 4 --head $head \
    --prompts $P/mt_bench_questions.jsonl $P/humaneval_questions.jsonl --limit 40 \
    --max-tokens 128 --gpu-memory-utilization 0.2 --out $O/acc_$name.json "$@" > $O/acc_$name.log 2>&1
  echo "$(date +%T) accepted $name: $?"
}
echo "$(date +%T) start"
s=$(date +%s)
python3 -m vllm_spd.train --target $M --num-stages 4 --steps ${STEPS:-8000} --data $all --out $O/K2 \
  --init /tmp/K1 --draft-layers 4 --max-length 512 --batch-size 32 --lr 5e-4 \
  --eval-every 500 --eval-fraction 0.02 --log-every 50 --seed 1 --no-progress --save-dtype bfloat16 > $O/K2.log 2>&1 &
sleep 40
accept K1_hybrid /tmp/K1 --drafter hybrid --temperature 0
wait
echo "$(date +%T) trained K2 in $(( $(date +%s) - s )) s"
accept K2 $O/K2 --temperature 0 1 &
sleep 20
accept K2_hybrid $O/K2 --drafter hybrid --temperature 0
wait
echo "$(date +%T) all done"
