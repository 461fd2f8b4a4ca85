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
