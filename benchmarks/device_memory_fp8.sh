#!/bin/bash
# Issues 26 (memory budgets) and 29 (FP8) on one H100 / H200, in three device calls of about 6-8 minutes each
# (the session's device budget is 30 minutes). Run from the repo root with .whl carried:
#
#   here, once:   echo /.whl/ >> .git/info/exclude; mkdir -p .whl/alt
#                 python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#                   --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 -d .whl torchao==0.18.0 fa3-fwd==0.0.3
#                 python3 -m pip download (same flags) -d .whl/alt torchao==0.16.0     # fallback for an older torch
#   device:       bash benchmarks/device_memory_fp8.sh 1     (carry .whl)   bf16: today's engine + planned, presets
#                 bash benchmarks/device_memory_fp8.sh 2     (carry .whl)   fp8: presets, FP8 modes
#                 bash benchmarks/device_memory_fp8.sh 3     (carry .whl, .carry)   memory caps, logit error, FP8
#                                                            attention, testbed FP8 quality
#   .carry/minilm_eval6.safetensors (here): faststar.text.save_embeddings(load_text_encoder("minilm"), the first 6
#                 prompts of src/faststar/data/eval_prompts.jsonl, ".carry/minilm_eval6.safetensors")
#
# Each call writes $OUT/<part>.json, $OUT/table.md (this call's rows) and $OUT/log.txt. Merge the JSONs of the
# three calls into one table here: python3 benchmarks/memory_fp8.py --part table --out-dir <folder with all JSONs>.
# Estimated device time per call on an H100 (from RESULTS sections 1 / 5 and the H100 spec, warm-ups included):
# 1: ~7.5 min, 2: ~6.5 min, 3: ~6 min, plus about 1.5 min to start each machine.
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=src
OUT=${OUT:-out/memory_fp8}
mkdir -p "$OUT"
CALL=${1:?usage: device_memory_fp8.sh 1|2|3 [--dry-run]}
shift
EXTRA="$*"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=src:/tmp/site
  # torchao must quantize and run a float8 matmul with this torch; else the fallback version
  if ! python3 -c "
import torch
from torchao.quantization import quantize_, Float8DynamicActivationFloat8WeightConfig, PerRow
m = torch.nn.Sequential(torch.nn.Linear(256, 256, bias=False)).cuda().bfloat16()
quantize_(m, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))
print('torchao ok', m(torch.randn(64, 256, device='cuda', dtype=torch.bfloat16)).shape)" 2>>"$OUT/log.txt"; then
    if ls .whl/alt/torchao-*.whl >/dev/null 2>&1; then
      echo "torchao from .whl failed with this torch; trying .whl/alt" | tee -a "$OUT/log.txt"
      rm -rf /tmp/site/torchao /tmp/site/torchao-*
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/alt/*.whl
    fi
  fi
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch; print('torch', torch.__version__)"
  python3 -c "import torchao; print('torchao', torchao.__version__)" || true; } 2>&1 | tee -a "$OUT/log.txt"
B="python3 benchmarks/memory_fp8.py --out-dir $OUT $EXTRA"
case "$CALL" in
  1) $B --part engine --precision bf16 --baseline --lean --budget 24GB 2>&1 | tee -a "$OUT/log.txt" ;;
  2) $B --part engine --precision fp8 --lean --budget 16GB 2>&1 | tee -a "$OUT/log.txt"
     $B --part modes --res 480p --budget 16GB 2>&1 | tee -a "$OUT/log.txt" ;;
  3) # the caps: each in its own process (a fraction stays set); expandable segments keep fragmentation low
     PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True \
       $B --part fraction --precision bf16 --fraction-gib 24 --res 720p 2>&1 | tee -a "$OUT/log.txt"
     PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True \
       $B --part fraction --precision fp8 --fraction-gib 16 --res 720p 2>&1 | tee -a "$OUT/log.txt"
     $B --part logits --res 720p 2>&1 | tee -a "$OUT/log.txt"
     $B --part testbed 2>&1 | tee -a "$OUT/log.txt"
     $B --part fp8attn --res 720p,480p --methods dense,faststar:balanced,faststar:fast --budget 16GB 2>&1 \
       | tee -a "$OUT/log.txt" ;;
  *) echo "call must be 1, 2 or 3"; exit 2 ;;
esac
python3 benchmarks/memory_fp8.py --part table --out-dir "$OUT" >/dev/null
