# lease 1, after J3 and the new data: K1 (run by hand on the device)
source /tmp/site/env.sh
export PYTHONPATH=/tmp/spdsite:$PYTHONPATH PYTHONUNBUFFERED=1
D=/tmp/hdata; N=/tmp/ndata
python3 -m vllm_spd.train --target /tmp/smollm2 --num-stages 4 --steps 3500 \
  --data $D/generated.jsonl $D/generated_t1.jsonl $D/generated_t2.jsonl $D/generated_inv.jsonl $N/generated_inv2_1.jsonl $N/generated_inv2_2.jsonl \
  --out /tmp/res/K1 --init /tmp/res/J3 --draft-layers 4 --max-length 512 --batch-size 32 --lr 7e-4 \
  --eval-every 500 --eval-fraction 0.02 --log-every 50 --seed 1 --no-progress --save-dtype bfloat16 > /tmp/res/K1.log 2>&1
# then, by hand: acceptance.py --head /tmp/res/K1 ... --temperature 0 (no --gpu-memory-utilization: GPU free)
