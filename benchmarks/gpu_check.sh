#!/usr/bin/env bash
# One GPU figure whenever a CUDA machine is at hand: the throughput table on the GPU
# (AMP + channels_last, with and without torch.compile), nothing but this repo needed.
#   bash benchmarks/gpu_check.sh [--json PATH]
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python benchmarks/throughput.py --device cuda --compile "$@"
