"""The per-step callback: generate(..., callback=) and pipe(..., callback_on_step_end=) see every step in order,
can stop early, and the video so far comes back (coarser, or fewer clips) with the summary saying where."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import faststar
from faststar.cli import main as cli_main
from faststar.generate import StepInfo, generate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_pipeline import tiny_pipe  # noqa: E402

PROMPT = "a red ball rolls across a table"


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipe()


@pytest.fixture(scope="module")
def full(pipe):
    return pipe(PROMPT, seed=5, progress=False)


def test_callback_sees_every_step_in_order(pipe, full):
    sched = pipe.spec.schedule(None, None)
    seen = []

    def cb(info):
        assert isinstance(info, StepInfo)
        seen.append((info, info.canvas.clone(), len(info.clip_canvases)))
        return None                                    # no stop
    out = pipe(PROMPT, seed=5, progress=False, callback_on_step_end=cb)
    assert [i.step for i, _, _ in seen] == list(range(sched.num_steps))
    for (info, canvas, n_done), st in zip(seen, sched.steps):
        assert (info.clip, info.scale, info.rep) == (st.scale.clip, st.scale.index_in_clip, st.rep)
        assert info.num_steps == sched.num_steps and info.num_clips == sched.num_clips == 2
        assert info.num_scales == len(sched.clip_scales(st.scale.clip)) == 3
        assert info.tokens == st.scale.num_tokens and info.tokens_run == info.tokens     # dense
        assert tuple(canvas.shape) == (1, 64, *sched.clip_thw[st.scale.clip])
        assert n_done == st.scale.clip                 # the finished clips before this one
    assert all(a.elapsed_s <= b.elapsed_s for (a, _, _), (b, _, _) in zip(seen, seen[1:]))
    # the last step's canvas of each clip is that clip's part of the final latent
    t0 = sched.clip_thw[0][0]
    assert torch.equal(seen[3][1].cpu(), full.latent[:, :, :t0])
    assert torch.equal(seen[-1][1].cpu(), full.latent[:, :, t0:])
    # a callback that never stops changes nothing (same seed, same video), and the output says it ran to the end
    assert np.array_equal(out.frames, full.frames) and out.stopped_at is None and out.summary["stopped"] is None
    assert "callback_s" in out.timings and out.timings["callback_s"] >= 0


def test_stop_in_the_first_clip_returns_fewer_clips(pipe, full):
    out = pipe(PROMPT, seed=5, progress=False, callback_on_step_end=lambda i: i.step == 2)
    assert out.stopped_at == 2
    assert out.summary["stopped_at"] == 2
    assert out.summary["stopped"] == "after step 3 of 8 (clip 1 of 2, scale 2 of 3)"
    assert out.latent.shape == (1, 64, 1, 4, 6)                       # clip 0 only (the first frame)
    assert out.frames.shape == (1, 64, 96, 3)                          # fewer clips: one frame of nine
    assert np.array_equal(out.frames, pipe.decode(out.latent))
    assert len(out.stats) == 3
    # coarser: the canvas after 3 of clip 0's 4 steps, not the finished first frame
    assert not torch.equal(out.latent, full.latent[:, :, :1])


def test_stop_in_the_last_clip_returns_a_coarser_video(pipe, full):
    out = pipe(PROMPT, seed=5, progress=False, callback_on_step_end=lambda i: i.clip == 1 and i.scale == 1)
    assert out.stopped_at == 6
    assert out.summary["stopped"] == "after step 7 of 8 (clip 2 of 2, scale 2 of 3)"
    assert out.latent.shape == full.latent.shape and out.frames.shape == full.frames.shape
    assert torch.equal(out.latent[:, :, :1], full.latent[:, :, :1])   # clip 0 finished as in the full run
    assert not torch.equal(out.latent[:, :, 1:], full.latent[:, :, 1:])
    assert np.array_equal(out.frames, pipe.decode(out.latent))
    # the canvas so far is the full run's canvas after step 6: the full run recorded through its own callback
    canv = {}
    pipe(PROMPT, seed=5, progress=False, decode=False,
         callback_on_step_end=lambda i: canv.__setitem__(i.step, i.canvas.clone()))
    assert torch.equal(out.latent[:, :, 1:], canv[6].cpu())


def test_stop_at_the_end_of_a_clip_keeps_it_once(pipe, full):
    out = pipe(PROMPT, seed=5, progress=False, callback_on_step_end=lambda i: i.step == 3)
    assert out.stopped_at == 3 and out.latent.shape == (1, 64, 1, 4, 6)
    assert torch.equal(out.latent, full.latent[:, :, :1])
    assert out.summary["stopped"] == "after step 4 of 8 (clip 1 of 2, scale 3 of 3)"


def test_generate_level_callback_with_an_accelerator(pipe):
    faststar.apply(pipe, "faststar", "fast")
    try:
        sched = pipe.spec.schedule(None, None)
        text = pipe.encode_prompt(PROMPT, None)
        infos = []
        out = generate(pipe.transformer, sched, text, seed=1, accelerator=pipe.accelerator,
                       callback=lambda i: infos.append((i.step, i.tokens, i.tokens_run)) or i.step == 5)
    finally:
        faststar.remove(pipe)
    assert out.stopped_at == 5 and [s for s, _, _ in infos] == list(range(6))
    assert [(s["tokens"], s["tokens_run"]) for s in out.stats] == [(n, r) for _, n, r in infos]
    assert any(r < n for _, n, r in infos)                       # the callback reports the pruning
    assert out.latent.shape[2] == sum(t for t, _, _ in sched.clip_thw)


def test_cli_progress_bar_and_summary_names_the_preset(pipe, tmp_path, capsys):
    folder = pipe.save_pretrained(tmp_path / "m")
    outp = tmp_path / "v.mp4"
    rc = cli_main(["generate", "--prompt", PROMPT, "--model-dir", str(folder), "--accel", "faststar", "--preset",
                   "fast", "--seed", "2", "-o", str(outp), "--device", "cpu"])
    cap = capsys.readouterr()
    assert rc == 0 and outp.exists()
    assert "accelerator faststar (preset fast)" in cap.out
    assert "generate" in cap.err and "decode" in cap.err          # both progress bars ran (tqdm on stderr)
    assert "clip 2/2 scale 3/3" in cap.err                         # the bar is fed by the step callback
