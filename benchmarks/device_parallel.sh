#!/bin/bash
# Issue 30's GPU targets, for a machine of 8 GPUs of one host (the device tool's nvidia-h100-x8 / nvidia-h200-x8),
# run from the repo root. Each command times the one-GPU baseline in the same run (rank 0, before the parallel run).
# Targets: 8B 720p 5 s dense and faststar:balanced, guidance-parallel on 2 GPUs >= 1.8x over one GPU; on 8 GPUs
# >= 5x (sequence-parallel, Ulysses degree 8 = the 8B's kv heads; cfg+sp is not built); batch
# throughput of 8 GPUs >= 7.5x one GPU. Results go to benchmarks/results/parallel_*.json, then benchmarks/RESULTS.md.
set -e
export PYTHONUNBUFFERED=1 PYTHONPATH=src
mkdir -p benchmarks/results
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'gpus', torch.cuda.device_count())"
# 1) guidance-parallel, 2 GPUs (CUDA_VISIBLE_DEVICES picks two of the eight)
CUDA_VISIBLE_DEVICES=0,1 torchrun --standalone --nproc-per-node 2 benchmarks/bench_parallel.py --mode cfg \
  --res 720p --duration 5 --methods dense,faststar:balanced --out benchmarks/results/parallel_cfg_2gpu.json
# 2) sequence-parallel, 8 GPUs (and 2 for comparison with cfg)
torchrun --standalone --nproc-per-node 8 benchmarks/bench_parallel.py --mode sp \
  --res 720p --duration 5 --methods dense,faststar:balanced --out benchmarks/results/parallel_sp_8gpu.json
CUDA_VISIBLE_DEVICES=0,1 torchrun --standalone --nproc-per-node 2 benchmarks/bench_parallel.py --mode sp \
  --res 720p --duration 5 --methods dense,faststar:balanced --out benchmarks/results/parallel_sp_2gpu.json
# 3) batch throughput, 8 GPUs against one (16 videos: 2 a GPU)
torchrun --standalone --nproc-per-node 8 benchmarks/bench_parallel.py --mode batch \
  --res 720p --duration 5 --methods dense,faststar:balanced --videos 16 --out benchmarks/results/parallel_batch_8gpu.json
# 4) the same through the user's command (real pipeline; needs the release weights in $MODEL, prompts.jsonl):
#    torchrun --standalone --nproc-per-node 8 -m faststar.cli generate --model-dir "$MODEL" --prompts prompts.jsonl \
#      --out-dir out/batch --quiet
#    torchrun --standalone --nproc-per-node 2 -m faststar.cli generate --model-dir "$MODEL" --prompt "..." \
#      --parallel cfg --accel faststar --preset balanced -o out/cfg.mp4
# Multi-host: the same torchrun lines with --nnodes M --rdzv-backend c10d --rdzv-endpoint HOST:PORT (no --standalone).
