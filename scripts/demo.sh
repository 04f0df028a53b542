#!/usr/bin/env bash
# README command 1: set up, then run the embedded default (configs/demo.yaml) end to end on the CPU.
# Extra arguments go to `llmdistill run`, e.g. scripts/demo.sh train.max_steps=10
set -euo pipefail
cd "$(dirname "$0")/.."
LLMDISTILL_NO_VLLM="${LLMDISTILL_NO_VLLM:-1}" scripts/setup.sh  # the demo's teacher runs on transformers: no vLLM venv
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" HF_DATASETS_OFFLINE="${HF_DATASETS_OFFLINE:-1}"
export TRANSFORMERS_OFFLINE="${TRANSFORMERS_OFFLINE:-1}" TOKENIZERS_PARALLELISM=false
exec "${LLMDISTILL_VENV:-.venv}/bin/llmdistill" run "$@"
