"""The loop's public step callback (StepInfo, early stop) and its observers (golden recording, timing,
progress)."""
import torch

from faststar.accel import make_accelerator
from faststar.generate import StepInfo, StepObserver
from tiny_accel import run, tiny  # noqa: F401


def test_the_callback_sees_every_step_in_order(tiny):
    _, sched, _, dense = tiny
    seen: list[StepInfo] = []
    out = run(tiny, make_accelerator("faststar:paper"), callback=seen.append)
    assert out.stopped_at is None
    assert [i.step for i in seen] == list(range(sched.num_steps))
    for info, st, row in zip(seen, sched.steps, out.stats):
        assert (info.clip, info.scale, info.rep, info.num_steps, info.num_clips) == \
            (st.scale.clip, st.scale.index_in_clip, st.rep, sched.num_steps, sched.num_clips)
        assert info.num_scales == 5 and info.tokens == st.scale.num_tokens
        assert info.tokens_run == row["tokens_run"]
        assert info.canvas.shape == (1, 64, *sched.clip_thw[st.scale.clip])
        assert len(info.clip_canvases) == st.scale.clip                 # the clips before this one
    assert [i.elapsed_s for i in seen] == sorted(i.elapsed_s for i in seen)
    assert any(i.tokens_run < i.tokens for i in seen)
    assert torch.equal(torch.cat(seen[-1].clip_canvases + [seen[-1].canvas], 2), out.latent)
    assert torch.equal(seen[4].canvas, dense.latent[:, :, :1])        # clip 0 is not pruned


def test_returning_true_stops_after_that_step(tiny):
    _, sched, _, dense = tiny
    for k in (2, 8, sched.num_steps - 1):
        seen = []
        out = run(tiny, None, callback=lambda info: seen.append(info.step) or info.step == k)
        assert out.stopped_at == k and seen == list(range(k + 1)) and len(out.stats) == k + 1
        clip = sched.steps[k].scale.clip
        T = sum(t for t, _, _ in sched.clip_thw[:clip + 1])
        assert out.latent.shape[2] == T                            # finished clips + the current one so far
        if k == sched.num_steps - 1:
            assert torch.equal(out.latent, dense.latent)
        else:
            assert not torch.equal(out.latent, dense.latent[:, :, :T])   # the clip is unfinished
            assert torch.equal(out.latent[:, :, :T - sched.clip_thw[clip][0]],
                               dense.latent[:, :, :T - sched.clip_thw[clip][0]])


def test_progress_is_a_callback_and_observers_watch_without_changing(tiny):
    model, sched, text, dense = tiny
    calls = []
    record = {}

    class Count(StepObserver):
        def __init__(self):
            self.before = self.done = 0
            self.finished = None

        def before_step(self, st):
            self.before += 1

        def step_done(self, st, canvas):
            self.done += 1

        def finish(self, stats):
            self.finished = len(stats)
    c = Count()
    out = run(tiny, None, progress=lambda st, s: calls.append(st.index), observers=[c], record=record,
              record_layers={3}, time_steps=True)
    assert torch.equal(out.latent, dense.latent)
    assert calls == list(range(sched.num_steps)) and (c.before, c.done, c.finished) == (19, 19, 19)
    assert torch.equal(record["step018.canvas"][None], dense.latent[:, :, -3:])
    assert record["step003.layer0.out"].shape[0] == sched.steps[3].scale.num_tokens
    assert "step004.layer0.out" not in record and "text.layer0.out" in record
    assert all(r["time_s"] >= 0 for r in out.stats)


def test_the_pipeline_passes_the_callback_and_decodes_what_was_made():
    from test_pipeline import tiny_pipe
    pipe = tiny_pipe()
    full = pipe("a red ball", seed=3, progress=False)
    seen = []
    out = pipe("a red ball", seed=3, progress=True, callback_on_step_end=lambda info: seen.append(info.step) or info.step == 3)
    assert out.stopped_at == 3 and seen == [0, 1, 2, 3] and full.stopped_at is None
    assert out.frames is not None and out.latent.shape == (1, 64, 1, 4, 6)       # clip 0 only, so far
