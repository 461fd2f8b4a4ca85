#!/usr/bin/env bash
# On a GPU host without network where vLLM 0.32.0 is already importable (for example
# installed from an offline bundle): install this checkout of vllm_spd beside it and run
# the GPU correctness tests or decode-speed rows. Everything runs from a copy outside
# the checkout, so vllm_spd is the installed one (with its vLLM plugin entry point).
#   bash scripts/gpu_offline.sh OUT_DIR test                 # tests/test_gpu_*.py
#   bash scripts/gpu_offline.sh OUT_DIR bench 2 "spd tp1" [decode_speed.py args]
#                                      # rows appended to OUT_DIR/decode_speed_n2.json
#   bash scripts/gpu_offline.sh OUT_DIR head TARGET_DIR PROMPTS_DIR "2 4"
#                                      # draft heads trained on this GPU (see head_gpu.sh)
# TEST_TIMEOUT (default 420 s) bounds the tests, TESTS picks them (pytest arguments);
# VLLM_SPD_CACHE must hold models/tiny-qwen3 for them. PROFILE=1 also writes one
# profiled decode step per SPD rank into OUT_DIR.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=$(mkdir -p "$1" && cd "$1" && pwd); what=$2; shift 2
site=${SPD_SITE:-/tmp/spdsite}
python3 -m pip install -q --no-deps --no-build-isolation --upgrade --target "$site" "$repo"
export PYTHONPATH=$site:${PYTHONPATH:-}
work=$(mktemp -d)
cp -r "$repo/tests" "$repo/benchmarks" "$work/"
cd "$work"
case $what in
  test)
    set -o pipefail
    timeout "${TEST_TIMEOUT:-420}" python3 -m pytest -x -q -p no:cacheprovider \
      ${TESTS:-tests/test_gpu_stages.py tests/test_gpu_runner.py} 2>&1 | grep -v Warning | tee "$out/gpu_tests.log" | tail -30 ;;
  bench)
    if [ -n "${PROFILE:-}" ]; then export VLLM_SPD_PROFILE_DIR=$out; fi
    NS=$1 SYSTEMS=$2 bash benchmarks/run_decode_speed.sh "$out" "${@:3}" 2>&1 \
      | grep -v "Warning\|SpecDecoding\|it/s\]\|kernel/s\|INFO\|WARN" | tail -60 ;;
  head)
    bash "$repo/scripts/head_gpu.sh" "$out" "$@" 2>&1 | grep -v "Warning\|INFO\|WARN\|it/s\]" | tail -60 ;;
  *) echo "unknown step '$what' (test | bench N SYSTEMS | head TARGET PROMPTS_DIR STAGES)" >&2; exit 2 ;;
esac
