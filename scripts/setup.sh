#!/usr/bin/env bash
# Create .venv with the CPU toolchain and install nvlm-deploy (editable) into it.
# CPU machines: torch==2.13.0 resolves to the local CPU build; never a range that pulls CUDA wheels.
# GPU machines: install your CUDA build of torch 2.13.0 first (see README), then run this script.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
# pip's output is kept quiet (this image's pip config prints a warning per package) unless it fails.
pip_q() {
  local log; log=$(mktemp)
  if ! .venv/bin/python -m pip install -q --disable-pip-version-check "$@" >"$log" 2>&1; then
    grep -v "^WARNING: Location" "$log" >&2; rm -f "$log"; return 1
  fi
  rm -f "$log"
}
echo "[setup] installing torch==2.13.0"
pip_q torch==2.13.0
echo "[setup] installing nvlm-deploy, its dependencies and the test and quant extras (nvidia-modelopt: the quantization tests run)"
pip_q -e ".[test,quant]"
.venv/bin/python -c "import torch, nvlm_deploy; print('[setup] torch', torch.__version__, '| nvlm-deploy', nvlm_deploy.__version__)"
