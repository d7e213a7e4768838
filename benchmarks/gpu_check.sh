#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): the figures that decide the GPU defaults and a
# correctness check of the fast step modes, on one CUDA GPU, inside a time budget (340 s by
# default; `--dry-run` lists the rows and the budget on any machine). Each figure is
# printed, and the JSON rewritten, as it is taken.
#   bash benchmarks/gpu_check.sh [--json PATH] [--budget SECONDS] [--dry-run]
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" benchmarks/gpu_check.py "$@"
