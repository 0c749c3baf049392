"""Training throughput of the testbed VAE (reconstruction phase) on the GPU, for a few layouts and batch shapes.

    PYTHONPATH=src python benchmarks/vae_train_throughput.py --data .carry/testbed_data --out vae_probe.json

Each configuration: a fresh VideoVAE at the testbed widths, 3 warm-up steps, then as many optimizer steps as fit in
``--seconds``; reports steps/s, megapixels/s and peak memory. It answers how much reconstruction training a few
minutes of an H200 buy (the testbed VAE's held-out PSNR is limited by training time, issue 5).
"""
from __future__ import annotations

import argparse
import json
import random
import time

import torch

from faststar.testbed import train as T
from faststar.testbed.config import SPECS
from faststar.testbed.data import load_clips
from faststar.vae.model import VideoVAE

CONFIGS = [  # name, frames, batch, crop (h, w), channels_last_3d, bf16 autocast
    ("base (training default)", 17, 8, (128, 224), False, True),
    ("channels_last_3d", 17, 8, (128, 224), True, True),
    ("fp32 (tf32)", 17, 8, (128, 224), False, False),
    ("9 frames, batch 16", 9, 16, (128, 224), False, True),
    ("9 frames, batch 16, channels_last_3d", 9, 16, (128, 224), True, True),
    ("batch 32", 17, 32, (128, 224), False, True),
    ("whole frames, batch 4", 17, 4, (256, 448), False, True),
]


def measure(frames, spec, dev, length, batch, crop, cl, bf16, seconds):
    vae = VideoVAE(spec.vae_config()).to(dev)
    vae.scale_learnable_parameters.requires_grad_(False)
    if cl:
        for p in vae.parameters():
            if p.dim() == 5:
                p.data = p.data.contiguous(memory_format=torch.channels_last_3d)
    params = [p for p in vae.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=5e-4)
    rng = random.Random(0)

    def step():
        xs = []
        for _ in range(batch):
            ci = rng.randrange(len(frames.frames))
            xs.append(frames.video(ci, rng.randrange(frames.frames[ci].shape[0] - length), length, crop=crop, rng=rng))
        x = torch.stack(xs)
        if cl:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            m, lv = T.vae_posterior(vae, x)
            y = T.vae_decode(vae, T.vae_latent(vae, m.float(), lv.float())).float()
        loss = T.reconstruction_loss(y, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    t, n = time.time(), 0
    while time.time() - t < seconds:
        step()
        n += 1
    torch.cuda.synchronize()
    dt = time.time() - t
    return dict(steps_s=n / dt, mpix_s=n * batch * length * crop[0] * crop[1] / dt / 1e6,
                peak_gib=torch.cuda.max_memory_allocated() / 2 ** 30)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=".carry/testbed_data")
    ap.add_argument("--out", default="vae_probe.json")
    ap.add_argument("--seconds", type=float, default=10.0)
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    dev = torch.device("cuda")
    spec = SPECS["testbed"]()
    frames = T.Frames(load_clips(a.data, "train"), dev, spec.pixel_hw)
    rows = []
    for name, length, batch, crop, cl, bf16 in CONFIGS:
        try:
            r = dict(name=name, frames=length, batch=batch, crop=list(crop), channels_last=cl, bf16=bf16,
                     **measure(frames, spec, dev, length, batch, crop, cl, bf16, a.seconds))
        except torch.cuda.OutOfMemoryError as e:
            r = dict(name=name, error=f"out of memory: {e}"[:200])
        print(json.dumps(r), flush=True)
        rows.append(r)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    with open(a.out, "w") as f:
        json.dump(dict(gpu=torch.cuda.get_device_name(0), torch=torch.__version__, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
