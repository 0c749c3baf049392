#!/bin/bash
# Run on the lent H200 (device tool), from the repo root, with .whl carried (fa3-fwd wheel).
# Usage: bash benchmarks/device_engine.sh [bench_engine.py args...]
set -e
export PYTHONUNBUFFERED=1 PYTHONPATH=src
if ls .whl/fa3_fwd-*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/fa3_fwd-*.whl
  export PYTHONPATH=src:/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__)"
python3 benchmarks/bench_engine.py "$@"
