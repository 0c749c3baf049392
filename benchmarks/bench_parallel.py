"""Scale-out timings on several GPUs of one host (run under torchrun; see benchmarks/device_parallel.sh).

    torchrun --nproc-per-node 2 benchmarks/bench_parallel.py --mode cfg --res 720p --methods dense,faststar:balanced
    torchrun --nproc-per-node 8 benchmarks/bench_parallel.py --mode sp  --res 720p --methods dense,faststar:balanced
    torchrun --nproc-per-node N benchmarks/bench_parallel.py --mode batch --res 720p --videos 16

The full-size transformer with random weights on every rank (as ``faststar bench``). In one run: first the
one-GPU baseline on rank 0 (the other ranks wait at a barrier), then the parallel layout on all ranks, each after a
warm-up. ``cfg`` / ``sp``: one video per method with ``parallel=`` that layout (cfg: 2 ranks; sp: P ranks,
P dividing the kv heads). ``batch``: ``--videos``
generations (different seeds) split by index over the ranks, against the same count on one GPU; throughput =
videos / wall time. Rank 0 writes ``--out`` (JSON) and prints the speedups.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.distributed as dist

from faststar.accel import make_accelerator
from faststar.bench import build_random_transformer
from faststar.generate import generate
from faststar.schedule import official_schedule


def timed(fn) -> float:
    torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mode", choices=["cfg", "sp", "batch"], required=True)
    p.add_argument("--res", default="720p")
    p.add_argument("--duration", type=int, default=5)
    p.add_argument("--methods", default="dense,faststar:balanced")
    p.add_argument("--videos", type=int, default=16, help="batch mode: generations in all")
    p.add_argument("--preset", default="infinitystar-8b")
    p.add_argument("--out", default="bench_parallel.json")
    a = p.parse_args()
    local = int(os.environ["LOCAL_RANK"])
    dev = torch.device("cuda", local)
    torch.cuda.set_device(dev)
    dist.init_process_group("nccl", device_id=dev)
    rank, world = dist.get_rank(), dist.get_world_size()
    model = build_random_transformer(a.preset, dev)
    sched = official_schedule(a.res, a.duration)
    text = torch.randn(128, model.cfg.text_channels, device=dev, generator=torch.Generator(dev).manual_seed(0))
    rep = dict(gpu=torch.cuda.get_device_name(dev), world=world, mode=a.mode, res=a.res, duration=a.duration,
               date=time.strftime("%Y-%m-%d"), torch=torch.__version__, runs=[])

    def acc(m):
        return None if m == "dense" else make_accelerator(m)
    for m in a.methods.split(","):
        if a.mode in ("cfg", "sp"):
            one = None
            if rank == 0:
                generate(model, sched, text, seed=0, accelerator=acc(m))                       # warm-up
                one = timed(lambda: generate(model, sched, text, seed=0, accelerator=acc(m)))
            dist.barrier()
            generate(model, sched, text, seed=0, accelerator=acc(m), parallel=a.mode)          # warm-up
            dist.barrier()
            par = timed(lambda: generate(model, sched, text, seed=0, accelerator=acc(m), parallel=a.mode))
            row = dict(method=m, one_gpu_s=one, parallel_s=par)
        else:
            one = None
            if rank == 0:
                generate(model, sched, text, seed=0, accelerator=acc(m))
                k = max(1, a.videos // world)           # one GPU times a share, scaled to the whole count
                one = timed(lambda: [generate(model, sched, text, seed=s, accelerator=acc(m)) for s in range(k)])
                one *= a.videos / k
            dist.barrier()
            generate(model, sched, text, seed=0, accelerator=acc(m))
            dist.barrier()
            mine = [s for s in range(a.videos) if s % world == rank]
            t = torch.tensor([timed(lambda: [generate(model, sched, text, seed=s, accelerator=acc(m))
                                             for s in mine])], device=dev)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)                                           # the last rank
            par = float(t)
            row = dict(method=m, videos=a.videos, one_gpu_s=one, parallel_s=par)
        if rank == 0:
            row["speedup"] = row["one_gpu_s"] / row["parallel_s"]
            rep["runs"].append(row)
            print(json.dumps(row), flush=True)
    if rank == 0:
        with open(a.out, "w") as f:
            json.dump(rep, f, indent=1)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
