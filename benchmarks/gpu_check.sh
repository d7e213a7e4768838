#!/usr/bin/env bash
# The GPU check: every step mode on this machine's CUDA GPU, in about 5 minutes on an
# H100/H200-class GPU (compiling is most of it). For eager, graphs and compile it prints
# the raw step's and the real loop's images/s, the GPU's busy share, the time each mode
# takes to get ready (capture, compile), and a 2-epoch `python train.py` per mode on
# generated data: images/s over whole epochs and the final losses, which should agree
# across modes. Nothing but this repo and its requirements needed.
#   bash benchmarks/gpu_check.sh [--json PATH]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c "import sys, torch; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
  echo "gpu_check: no CUDA GPU here (torch.cuda.is_available() is False); run it on a machine with an NVIDIA GPU" >&2
  exit 1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec "$PYTHON" benchmarks/throughput.py --device cuda --modes eager,graphs,compile \
  --train-epochs 2 "$@"
