"""The tiny model the accelerator tests share: golden-tiny with random weights, 3 clips (clip 1's last scale is
clip 2's context), 5 scales of which the last 2 are detail scales, the second-to-last repeated."""
import pytest
import torch

from faststar import build_schedule, build_transformer
from faststar.accel.faststar import FastSTAR, FastSTARConfig
from faststar.generate import generate

SEED = 3


def tiny_model():
    """(model, schedule, text) of the fixture, without the dense run."""
    torch.manual_seed(0)
    model = build_transformer("golden-tiny").eval()
    sched = build_schedule([(1, 1), (2, 2), (3, 4), (4, 6), (6, 8)], [1, 3, 3], image_reps=[1] * 5,
                           video_reps=[2, 1, 1, 2, 1], semantic_scales=3, name="accel-tiny")
    text = torch.randn(7, 32, generator=torch.Generator().manual_seed(1))
    return model, sched, text


@pytest.fixture(scope="module")
def tiny():
    model, sched, text = tiny_model()
    dense = generate(model, sched, text, seed=SEED)
    return model, sched, text, dense


def run(tiny, acc, seed=SEED, **kw):
    model, sched, text, _ = tiny
    return generate(model, sched, text, seed=seed, accelerator=acc, **kw)


def plain(**knobs) -> FastSTAR:
    """FastSTAR from its config defaults (keep (0.3, 0.55, 0.8) on the detail scales, Partial Update, guided)."""
    return FastSTAR(FastSTARConfig(**knobs))


def recording(acc):
    """Keep (step, canvas before the step, StepOutput) of every step; the accelerator still observes."""
    log = []
    inner = acc.observe

    def observe(ctx, out):
        log.append((ctx.step, ctx.canvas, out))
        inner(ctx, out)
    acc.observe = observe
    return log


def assert_same_as_dense(out, dense):
    assert torch.equal(out.latent, dense.latent)
    for a, b in zip(out.bits, dense.bits):
        assert torch.equal(a, b)
    assert all(m is None for m in out.masks)
