#!/usr/bin/env bash
# Lease 2 (session 9), in the background on one H200 after scripts/gpu_bringup.sh, with
# lease 1's data unpacked in /tmp/hdata: lease 1's "all" head (INIT) trained on, with
# --init, on all of it for STEPS steps at LR (4 draft layers, 16384-token draft
# vocabulary), its acceptance at T=0, then the trainer's speed alone on the GPU
# (benchmarks/train_speed.py).
source /tmp/spd_env.sh
R=$SPD_REPO; M=/tmp/spdcache/models/smollm2; P=$R/.carry/eval; D=/tmp/hdata; O=/tmp/res
mkdir -p $O; cd /tmp
EX="$P/mt_bench_questions.jsonl $P/humaneval_questions.jsonl"
stamp() { echo "$(date +%T) $*"; }
stamp start
s=$(date +%s)
python3 -m vllm_spd.train --target $M --num-stages 4 --steps ${STEPS:-12000} --data $D/generated*.jsonl \
  --out $O/final --attention $(cat /tmp/attn 2>/dev/null || echo sdpa) --draft-layers 4 --draft-vocab-size 16384 --max-length 512 --batch-size 32 --lr ${LR:-5e-4} \
  --eval-every 2000 --eval-fraction 0.02 --log-every 50 --seed 0 --no-progress --save-dtype bfloat16 \
  ${INIT:+--init $INIT} > $O/final.log 2>&1
stamp "trained final: $? in $(( $(date +%s) - s )) s"
python3 $R/benchmarks/acceptance.py --target $M --num-stages 4 --head $O/final --prompts $EX --limit 40 \
  --max-tokens 128 --temperature 0 --gpu-memory-utilization 0.2 --out $O/acc_final.json > $O/acc_final.log 2>&1
stamp "accepted final: $?"
python3 $R/benchmarks/train_speed.py --target $M --num-stages 4 --draft-layers 4 --steps 30 --warmup 5 \
  --settings sdpa:bfloat16 sdpa:float32 flex:bfloat16 flex:float32 --out $O/train_speed_h200.json \
  > $O/train_speed.log 2>&1
stamp "speed: $?"; touch $O/all.done
