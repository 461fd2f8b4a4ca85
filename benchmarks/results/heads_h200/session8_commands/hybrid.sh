# re-run of a hybrid acceptance that found no cache memory at 0.2 beside a training (lease 2)
source /tmp/site/env.sh; export PYTHONPATH=/tmp/spdsite:$PYTHONPATH PYTHONUNBUFFERED=1; P=/tmp/evaldata
python3 /tmp/repo/benchmarks/acceptance.py --target /tmp/smollm2 --num-stages 4 --head $1 --drafter hybrid \
  --prompts $P/mt_bench_questions.jsonl $P/humaneval_questions.jsonl --limit 40 --max-tokens 128 --temperature 0 \
  --gpu-memory-utilization 0.3 --out /tmp/res/acc_$2.json > /tmp/res/acc_$2.log 2>&1
