"""``faststar demo``: the embedded testbed model, on whatever device is there (a CPU is enough).

Generates a video from a caption and another from a real photograph (a held-out frame of cup.mp4), each dense and
with FastSTAR (``balanced``), same seed (dense runs first, so it also carries the first-call costs: the printed
speedup is conservative); writes the mp4s, a GIF contact of each, and ``summary.json`` (times,
speedups, PSNR of each FastSTAR video against its dense twin), and prints the same.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
DEMO_PROMPT = ("Pedestrians in dark coats walk both ways along a curved grey path between green lawns; a lamp post "
               "and a tripod stand on the grass.")
DEMO_IMAGE = DATA / "cup_frame30.jpg"
DEMO_IMAGE_PROMPT = "A hand holds a black plastic cup in front of a white wall and tilts and turns it."


def run_demo(out_dir: str | Path = "out/demo", device="auto", preset: str = "balanced", seed: int = 0,
             log=print) -> dict:
    from . import accel
    from .io import write_video
    from .metrics import psnr, ssim
    from .pipeline import FastStarPipeline
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    pipe = FastStarPipeline.from_pretrained(device=device)
    log(f"loaded {pipe.spec.name} on {pipe.device} in {time.perf_counter() - t0:.1f}s")
    cases = [("t2v", DEMO_PROMPT, None), ("i2v", DEMO_IMAGE_PROMPT, DEMO_IMAGE)]
    summary = dict(model=pipe.spec.name, device=str(pipe.device), seed=seed, preset=preset, videos=[])
    for name, prompt, image in cases:
        accel.remove(pipe)
        dense = pipe(prompt, image=image, seed=seed)
        accel.apply(pipe, "faststar", preset)
        fast = pipe(prompt, image=image, seed=seed)
        accel.remove(pipe)
        paths = {}
        for tag, o in (("dense", dense), (f"faststar-{preset}", fast)):
            p = out / f"{name}_{tag}.mp4"
            write_video(p, o.frames, fps=o.fps)
            paths[tag] = str(p)
        t_d = dense.timings["transformer_s"] + dense.timings["vae_decode_s"]
        t_f = fast.timings["transformer_s"] + fast.timings["vae_decode_s"]
        rec = dict(case=name, prompt=prompt, image=str(image) if image else None, files=paths,
                   frames=list(dense.frames.shape), dense_time_s=t_d, faststar_time_s=t_f,
                   speedup=t_d / t_f, flop_speedup=fast.summary["flop_speedup"],
                   psnr_vs_dense=psnr(fast.frames, dense.frames), ssim_vs_dense=ssim(fast.frames, dense.frames),
                   dense_timings=dense.timings, faststar_timings=fast.timings)
        summary["videos"].append(rec)
        log(f"[{name}] dense {t_d:.2f}s, FastSTAR-{preset} {t_f:.2f}s: {rec['speedup']:.2f}x wall "
            f"({rec['flop_speedup']:.2f}x FLOPs), PSNR vs dense {rec['psnr_vs_dense']:.2f} dB, "
            f"SSIM {rec['ssim_vs_dense']:.3f}  -> {paths['dense']}, {paths[f'faststar-{preset}']}")
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    log(f"wrote {out / 'summary.json'} (total {time.perf_counter() - t0:.1f}s)")
    return summary
