#!/usr/bin/env bash
# Session 12, second half: lease.sh's driver was stopped while head A trained (its run of
# head B would have been cut at 420 s; the lease had time for more). This waits for head A's
# trainer to end, then trains head B (A, --init, over all the data, STEPS_B steps at lr
# 7e-4, cut after TRAIN_B_S s) and measures B's acceptance as lease.sh would have.
source /tmp/spd_env.sh
R=$SPD_REPO; M=/tmp/spdcache/models/smollm2; P=$R/.carry/eval; D=/tmp/hdata; O=/tmp/res; cd /tmp
EX="$P/mt_bench_questions.jsonl $P/humaneval_questions.jsonl"
stamp() { echo "$(date +%T) $*"; }
while pgrep -f "vllm_spd.train --target" > /dev/null; do sleep 2; done
stamp "head A done: $(tail -1 $O/A/train_log.jsonl)"
while [ ! -s $D/generated_openers.jsonl ]; do sleep 2; done
s=$(date +%s)
timeout ${TRAIN_B_S:-520} python3 -m vllm_spd.train --target $M --num-stages 4 --steps ${STEPS_B:-3000} --data $D/generated*.jsonl \
  --out $O/B --init $O/A --draft-layers 4 --draft-vocab-size 16384 --max-length 512 --batch-size 32 --lr 7e-4 \
  --attention sdpa --teacher-dtype bfloat16 --eval-every 500 --save-every 250 --eval-fraction 0.02 --log-every 50 \
  --seed 0 --no-progress --save-dtype bfloat16 > $O/train_B.log 2>&1
stamp "trained B: $? in $(( $(date +%s) - s )) s"
python3 $R/benchmarks/acceptance.py --target $M --num-stages 4 --head $O/B --prompts $EX --limit 40 \
  --max-tokens 128 --temperature 0 1 --gpu-memory-utilization 0.3 --out $O/acc_B.json > $O/acc_B.log 2>&1
stamp "accepted B (head): $?"
python3 $R/benchmarks/acceptance.py --target $M --num-stages 4 --head $O/B --drafter hybrid --prompts $EX --limit 40 \
  --max-tokens 128 --temperature 0 --gpu-memory-utilization 0.3 --out $O/acc_B_hybrid.json > $O/acc_B_hybrid.log 2>&1
stamp "accepted B (hybrid): $?"
stamp "all done"; touch $O/all.done
