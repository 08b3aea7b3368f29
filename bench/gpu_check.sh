#!/usr/bin/env bash
# The GPU check in one call: extraction, training and scoring rates on this machine's GPU, each beside
# the same run on its CPUs (see bench/gpu_check.py). No downloads; about 8 minutes on one GPU.
#
#   bash bench/gpu_check.sh [--real ../shared/data] [--clips DIR] [--json FILE] [--tiny]
#
# Without a GPU it measures the CPU column only. Exits non-zero if the check itself breaks, never
# because a target is missed (the table says so).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PYTHON="${PYTHON:-python3}"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec timeout "${GPU_CHECK_TIMEOUT:-540}" "$PYTHON" bench/gpu_check.py --cpu "$@"
