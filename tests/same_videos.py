"""The fixed set of videos behind tests/test_same_videos.py: the embedded testbed transformer on a small schedule,
a few prompts and seeds, every public preset, every baseline preset and the historical FastSTAR plans (as method
strings). ``python tests/same_videos.py`` re-records tests/data/same_videos.json (only after a change that is
meant to change videos)."""
from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from pathlib import Path

import torch

DATA = Path(__file__).resolve().parent / "data" / "same_videos.json"
# (prompt, seed) cases: every method runs on CASES[:2]; the historical plans on CASES[:1]
CASES = [("a cat walks on the beach", 0), ("waves roll onto a rocky shore at sunset", 5)]
PUBLIC = ["dense", "faststar:quality", "faststar:balanced", "faststar:fast-hq", "faststar:fast",
          "random:quality", "random:balanced", "random:fast-hq", "random:fast",
          "fastvar:balanced", "fastvar:fast", "fastvar:hart", "fastvar:infinity",
          "stagevar:original", "stagevar:cfg0", "stagevar:cfg0-last2", "stagevar:original-video", "stagevar:cfg0-video",
          "skip:last1", "skip:last2", "skip:last3"]


def historical() -> list[str]:
    """The historical plans, one method string a line (benchmarks/methods/historical_presets.txt)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "methods" / "historical_presets.txt"
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]


@contextmanager
def one_thread():
    """CPU float results are reproducible at a fixed thread count."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def small_schedule():
    """Three clips (clip 1's last scale is clip 2's context), 5 scales, the last 3 detail, repeated scales."""
    from faststar.schedule import build_schedule
    return build_schedule([(1, 1), (2, 3), (3, 5), (4, 7), (6, 11)], [1, 2, 2], image_reps=[2] * 5,
                          video_reps=[3, 3, 2, 1, 1], semantic_scales=2, tau_image=1.0, tau_video=0.4,
                          name="same-videos")


def load():
    from faststar.pipeline import FastStarPipeline
    return FastStarPipeline.from_pretrained(device="cpu")


def video_hash(out) -> dict:
    """sha256 over every step's bits and kept mask (what the video is made of: the latent is a function of them),
    and the latent's sum of absolute values (a float check with a tolerance)."""
    h = hashlib.sha256()
    for b, m in zip(out.bits, out.masks):
        h.update(b"-" if b is None else b.contiguous().numpy().tobytes())
        h.update(b"." if m is None else m.contiguous().numpy().tobytes())
    return dict(bits=h.hexdigest(), latent_abs_sum=float(out.latent.abs().double().sum()),
                tokens_run=int(sum(s["tokens_run"] for s in out.stats)))


def run(pipe, method: str, prompt: str, seed: int) -> dict:
    from faststar.accel import accelerator_from_spec
    from faststar.generate import generate
    acc = accelerator_from_spec(method)
    with one_thread():
        out = generate(pipe.transformer, small_schedule(), pipe.encode_prompt(prompt, None), seed=seed,
                       guidance=pipe.spec.guidance, accelerator=acc)
    return video_hash(out)


def key(method: str, prompt: str, seed: int) -> str:
    return f"{method} | {prompt} | {seed}"


def all_runs() -> list[tuple[str, str, int]]:
    runs = [(m, p, s) for p, s in CASES for m in PUBLIC]
    runs += [(m, p, s) for p, s in CASES[:1] for m in historical()]
    return runs


def record() -> dict:
    pipe = load()
    out = {key(*r): run(pipe, *r) for r in all_runs()}
    DATA.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    return out


if __name__ == "__main__":
    print(len(record()), "videos recorded in", DATA)
