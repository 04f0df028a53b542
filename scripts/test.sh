#!/usr/bin/env bash
# README command 2 (and CI, through .ci/run): set up, then run the test suite offline.
# Extra arguments go to pytest, e.g. scripts/test.sh -m "not slow" -x
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec "${LLMDISTILL_VENV:-.venv}/bin/python" -m pytest -q "$@"
