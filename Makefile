# Two entry points: `make demo` and `make test`. Each sets up what it needs first.
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
export VLLM_CPU_KVCACHE_SPACE ?= 1
export OMP_NUM_THREADS ?= 1

.PHONY: setup test demo clean-models

setup:
	@bash scripts/setup_venv.sh

test: setup
	$(PY) -m pytest tests -q -ra --timeout=1200

demo: setup
	$(PY) -m vllm_spd.demo

clean-models:
	rm -rf $${HOME}/.cache/vllm_spd

# `make head`: the draft heads of the embedded SmolLM2-135M-Instruct for num_stages 2 and 4,
# trained on CPU (~13 min of generation; training ~15 min for n=2 and ~30 min for n=4 on
# 2 cores, n=4 for 600 steps since its held-out accuracy was still rising at 240) and written to the
# default head location ($VLLM_SPD_CACHE/heads/<target dir with / -> -->/s<n>), where
# `make demo` finds them. Prompts: vllm_spd.train.prompts (never MT-Bench/HumanEval);
# data: SmolLM2's own greedy answers to the first 800 of them (self-distillation).
# Results: benchmarks/results/acceptance_smollm2_s2.json and _s4_600steps.json, see docs/training.md.
HEAD_TRAIN_ARGS = --draft-layers 1 --draft-vocab-size 8192 --max-length 384 --batch-size 4 --lr 1e-3 \
	--eval-every 50 --eval-fraction 0.03 --log-every 5 --seed 0 --no-progress

.PHONY: head
head: setup
	@set -e; \
	target=$$($(PY) -m vllm_spd.offline_models smollm2); \
	work=$$($(PY) -c 'from vllm_spd import envs; print(envs.cache_dir())')/head_data; \
	mkdir -p $$work; \
	$(PY) -m vllm_spd.train.prompts --out $$work/prompts.jsonl --num 3000 --seed 0; \
	VLLM_ENABLE_V1_MULTIPROCESSING=0 VLLM_CPU_KVCACHE_SPACE=4 $(PY) -m vllm_spd.train.data --target $$target \
		--prompts $$work/prompts.jsonl --num 800 --max-tokens 192 --dtype float32 --out $$work/generated.jsonl; \
	for spec in 2:200 4:600; do \
		n=$${spec%%:*}; steps=$${spec##*:}; \
		out=$$($(PY) -c 'import sys; from vllm_spd.checkpoint import cache_head_dir; print(cache_head_dir(sys.argv[1], int(sys.argv[2])))' $$target $$n); \
		rm -rf $$out; \
		$(PY) -m vllm_spd.train --target $$target --num-stages $$n --steps $$steps --data $$work/generated.jsonl \
			--out $$out $(HEAD_TRAIN_ARGS); \
	done
