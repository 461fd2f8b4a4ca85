#!/usr/bin/env bash
# Session 12, last call of the lease: head C = head B trained on (--init) over the same data,
# 2000 steps at lr 5e-4, seed 1, stopped by `timeout 270` (the device time left); the head
# directory then holds the step-1750 checkpoint, whose acceptance at T=0 follows.
source /tmp/spd_env.sh; cd /tmp
M=/tmp/spdcache/models/smollm2; O=/tmp/res; D=/tmp/hdata; P=$SPD_REPO/.carry/eval
timeout 270 python3 -m vllm_spd.train --target $M --num-stages 4 --steps 2000 --data $D/generated*.jsonl \
  --out $O/C --init $O/B --draft-layers 4 --draft-vocab-size 16384 --max-length 512 --batch-size 32 --lr 5e-4 \
  --attention sdpa --teacher-dtype bfloat16 --eval-every 500 --save-every 250 --eval-fraction 0.02 --log-every 50 \
  --seed 1 --no-progress --save-dtype bfloat16 > $O/train_C.log 2>&1
python3 $SPD_REPO/benchmarks/acceptance.py --target $M --num-stages 4 --head $O/C \
  --prompts $P/mt_bench_questions.jsonl $P/humaneval_questions.jsonl --limit 40 --max-tokens 128 --temperature 0 \
  --gpu-memory-utilization 0.3 --out $O/acc_C.json > $O/acc_C.log 2>&1
