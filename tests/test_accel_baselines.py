"""The peer methods on the tiny model: skip, StageVAR's low-rank stand-in, FastVAR's score and two-phase restore."""
import torch

from faststar.accel import make_accelerator
from faststar.accel.baselines import fastvar_score, leverage_sample
from faststar.accel.restore import resize_tokens
from faststar.accel.selection import keep_count, own_generator
from tiny_accel import assert_same_as_dense, recording, run, tiny  # noqa: F401


def test_off_settings_are_bit_identical_to_dense(tiny):
    for method, kw in (("fastvar", dict(keep_ratios=1.0, prune_layer=1)),
                       ("stagevar", dict(single_branch_last=0, low_rank_last=0)), ("skip", dict(last_n=0))):
        assert_same_as_dense(run(tiny, make_accelerator(method, **kw)), tiny[3])


def test_skip_zero_codes_and_reference_always_runs(tiny):
    _, sched, _, _ = tiny
    acc = make_accelerator("skip", last_n=2)
    log = recording(acc)
    out = run(tiny, acc)
    skipped = {9, 10, 16, 17, 18}                                # last two scales of clips 1, 2 ...
    for (st, canvas_before, o), bits, row in zip(log, out.bits, out.stats):
        if st.index in skipped:
            assert bits is None and row["tokens_run"] == 0 and row["branches"] == 0
            assert (o.codes == 0).all() and torch.equal(o.canvas, canvas_before)
            assert not out.masks[st.index].any()
        else:
            assert bits is not None and row["tokens_run"] == st.scale.num_tokens
    assert 11 not in skipped and sched.is_ref_step(sched.steps[11])   # ... except clip 1's referenced last step


def test_stagevar_single_branch_and_low_rank(tiny):
    _, sched, _, _ = tiny
    acc = make_accelerator("stagevar")                           # README settings: cfg0 last 3, rank 0.1 on last
    log = recording(acc)
    out = run(tiny, acc)
    for st, row in zip(sched.steps, out.stats):
        from_end = len(sched.clip_scales(st.scale.clip)) - 1 - st.scale.index_in_clip
        assert row["branches"] == (1 if from_end < 3 else 2)
    last = sched.num_steps - 1
    assert out.stats[last]["tokens_run"] == 15 and int(out.masks[last].sum()) == 15     # ceil(0.1 * 144)
    o = log[last][2]
    assert o.hidden.shape[1] == 144 and (o.codes != 0).all()     # restored: every position sampled
    prev_st, _, prev = log[last - 1]
    fill = resize_tokens(prev.hidden, prev_st.scale.thw, (3, 6, 8), "area").to(o.hidden.dtype)
    pruned = ~out.masks[last].flatten()
    assert torch.equal(o.hidden[:, pruned], fill[:1, pruned].expand(1, -1, -1))
    assert out.stats[11]["tokens_run"] == 144                   # a referenced step never takes the stand-in
    video = run(tiny, make_accelerator("stagevar", "original-video"))
    assert all(r["branches"] == 2 for r in video.stats if r["clip"] == 0)
    assert [r["branches"] for r in video.stats if r["clip"] == 1] == [2, 2, 2, 1, 1, 1, 1]


def test_fastvar_score_resize_and_leverage_sampling():
    h = torch.ones(2, 6, 4)
    h[:, 3] = 5.0
    s = fastvar_score(h)
    assert int(s.argmax()) == 3 and s[0] == s[1]
    x = torch.randn(2, 2 * 3 * 4, 8)
    assert resize_tokens(x, (2, 3, 4), (2, 3, 4)) is x
    y = resize_tokens(x, (2, 3, 4), (2, 6, 8), "area")
    assert y.shape == (2, 96, 8)
    assert torch.equal(y.reshape(2, 2, 6, 8, 8)[:, :, ::2, ::2], x.reshape(2, 2, 3, 4, 8))   # area up repeats
    idx = leverage_sample(torch.randn(50, 4), 10, own_generator(0, 1))
    assert idx.numel() == 10 and torch.equal(idx, idx.unique())


def test_fastvar_two_phase_restores_all_positions(tiny):
    """prune_layer 1: the score is read at the one mid-step hook; every position gets hidden states (the mid-step
    state plus the cached branch output of the scale before the pruned ones)."""
    acc = make_accelerator("fastvar", keep_ratios=(0.3, 0.55), prune_layer=1)
    log = recording(acc)
    out = run(tiny, acc)
    pruned = [r for r in out.stats if r["tokens_run"] < r["tokens"]]
    assert [r["step"] for r in pruned] == [9, 10, 11, 16, 17, 18]
    for r in pruned:
        o = log[r["step"]][2]
        assert r["prune_layer"] == 1 and o.hidden.shape[1] == r["tokens"] and (o.codes != 0).all()
        assert r["tokens_run"] == keep_count(r["keep_ratio"], r["tokens"])
    assert acc._delta is not None and acc._delta[1] == (3, 3, 4)  # cached at the scale before the pruned ones
    hart = run(tiny, make_accelerator("fastvar", "hart"))         # prune_layer 0: the fill known before the step
    assert [r["tokens_run"] for r in hart.stats if r["tokens_run"] < r["tokens"]] == [36] * 6   # 50 % of 72, 25 % of 144
