"""Run under torchrun by tests/test_parallel.py: the tiny accelerator-test model generates each method string of
argv[3:] with parallel=argv[2]; every rank writes what it got (latent, bits, masks) to argv[1]/rank{R}.safetensors."""
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from faststar.accel import make_accelerator
from faststar.generate import generate
from tiny_accel import SEED, tiny_model


def flat(prefix, out) -> dict:
    d = {f"{prefix}.latent": out.latent.contiguous()}
    for i, (b, m) in enumerate(zip(out.bits, out.masks)):
        if b is not None:
            d[f"{prefix}.bits{i:03d}"] = b.contiguous()
        if m is not None:
            d[f"{prefix}.mask{i:03d}"] = m.contiguous()
    return d


def main():
    torch.set_num_threads(1)
    model, sched, text = tiny_model()
    res = {}
    for method in sys.argv[3:]:
        acc = None if method == "dense" else make_accelerator(method)
        res.update(flat(method, generate(model, sched, text, seed=SEED, accelerator=acc, parallel=sys.argv[2])))
    save_file(res, str(Path(sys.argv[1]) / f"rank{os.environ['RANK']}.safetensors"))


if __name__ == "__main__":
    main()
