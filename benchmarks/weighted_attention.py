"""Proportional attention on the GPU: does the fa3 path (two calls merged by log-sum-exp) agree with SDPA's
additive key bias, and what does it cost against plain attention? Shapes of InfinityStar 8B (32 query heads,
8 KV heads, head dim 128), a prefix of text + reference tokens and a pruned step's kept tokens.

    PYTHONPATH=src python3 benchmarks/weighted_attention.py --out $OUT/weighted_attention.json
"""
from __future__ import annotations

import argparse
import json

import torch

from faststar.model.attention import BACKENDS, available_backends, weighted_step_attention


def timed(fn, *args, reps: int = 5) -> float:
    for _ in range(2):
        fn(*args)
    torch.cuda.synchronize()
    ev = [torch.cuda.Event(enable_timing=True) for _ in range(2)]
    ev[0].record()
    for _ in range(reps):
        fn(*args)
    ev[1].record()
    torch.cuda.synchronize()
    return ev[0].elapsed_time(ev[1]) / reps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--prefix", type=int, default=512 + 3600, help="text + reference tokens (clip 0 at 720p: 45x80)")
    ap.add_argument("--step", default="6360,12720,31800", help="kept tokens of the pruned step, comma separated")
    args = ap.parse_args()
    dev = torch.device("cuda")
    av = available_backends(dev)
    rows = []
    for n in (int(x) for x in args.step.split(",")):
        g = torch.Generator(device=dev).manual_seed(0)
        q = torch.randn(2, n, 32, 128, device=dev, dtype=torch.bfloat16, generator=g)
        k = torch.randn(2, args.prefix + n, 8, 128, device=dev, dtype=torch.bfloat16, generator=g)
        v = torch.randn_like(k)
        w = 31800 / n                                  # the 720p 30x53 x 20-frame scale, pruned
        ref = weighted_step_attention(BACKENDS["sdpa"], w)(q, k, v).float()
        row = dict(step_tokens=n, prefix=args.prefix, weight=w,
                   sdpa_plain_ms=timed(BACKENDS["sdpa"], q, k, v),
                   sdpa_weighted_ms=timed(weighted_step_attention(BACKENDS["sdpa"], w), q, k, v))
        if av.get("fa3") == "ok":
            fw = weighted_step_attention(BACKENDS["fa3"], w)
            row["fa3_max_abs_diff_vs_sdpa"] = float((fw(q, k, v).float() - ref).abs().max())
            row["fa3_plain_ms"] = timed(BACKENDS["fa3"], q, k, v)
            row["fa3_weighted_ms"] = timed(fw, q, k, v)
        print(json.dumps(row), flush=True)
        rows.append(row)
    json.dump(dict(device=torch.cuda.get_device_name(dev), torch=torch.__version__, backends=av, rows=rows),
              open(args.out, "w"), indent=1)


if __name__ == "__main__":
    main()
