"""FastSTAR on the tiny model: off = dense, the planned token counts, Partial Update, restore, copy, keep ratio 0,
max_reps, a pruned reference step, and the ``paper`` preset."""
import math

import pytest
import torch

from faststar.accel import apply, flop_plan, make_accelerator, remove
from faststar.accel.restore import resize_tokens, temporal_copy_sources
from faststar.accel.scores import importance, scale_views, spatial_similarity, temporal_similarity
from faststar.accel.selection import select_topk
from faststar.vae.quant import area_down, lift_codes
from tiny_accel import assert_same_as_dense, plain, recording, run, tiny  # noqa: F401


def test_keep_ratio_one_is_bit_identical_to_dense(tiny):
    assert_same_as_dense(run(tiny, plain(keep_ratios=1.0)), tiny[3])
    assert_same_as_dense(run(tiny, plain(keep_ratios=1.0, update="copy", block=2)), tiny[3])
    assert_same_as_dense(run(tiny, make_accelerator("random", keep_ratios=1.0, single_branch_last=0)), tiny[3])


def test_removed_accelerator_is_bit_identical_to_dense(tiny):
    class Holder:
        accelerator = None
    h = Holder()
    apply(h, "faststar", "fast")
    assert not torch.equal(run(tiny, h.accelerator).latent, tiny[3].latent)
    remove(h)
    assert h.accelerator is None
    assert_same_as_dense(run(tiny, h.accelerator), tiny[3])


def test_tokens_run_are_ceil_rho_n_and_partial_update_leaves_zero_codes(tiny):
    model, sched, _, _ = tiny
    acc = plain()                                            # keep (0.3, 0.55, 0.8) from the last scale
    log = recording(acc)
    out = run(tiny, acc)
    pruned = 0
    for (st, canvas_before, o), row, bits, mask in zip(log, out.stats, out.bits, out.masks):
        assert torch.equal(o.canvas, canvas_before + lift_codes(o.codes, model.cfg.d_vae, sched.final_hw))
        j = len(sched.clip_scales(st.scale.clip)) - 1 - st.scale.index_in_clip
        N, d = st.scale.num_tokens, st.scale.bits
        rho = (0.3, 0.55)[j] if st.scale.clip > 0 and j < 2 else None       # 2 detail scales per clip
        expect = N if rho is None else math.ceil(round(rho * N, 9))
        assert row["tokens_run"] == expect and row["tokens"] == N
        if rho is None:
            assert mask is None and o.keep_idx is None
            continue
        pruned += 1
        assert int(mask.sum()) == expect and row["n_keep"] == expect and row["keep_ratio"] == rho
        codes_Nd = o.codes[0].permute(1, 2, 3, 0).reshape(N, d)
        kept = mask.flatten()
        assert torch.equal(kept.nonzero().flatten(), o.keep_idx)
        assert (codes_Nd[~kept] == 0).all() and (codes_Nd[kept].abs() == 1 / math.sqrt(d)).all()
        assert (bits.reshape(N, d)[~kept] == 0).all() and o.hidden.shape[1] == expect
    assert pruned == 6                                       # detail scales (2 + 1 steps) of clips 1 and 2
    assert out.stats[-1]["tokens_run"] == 44                 # ceil(0.3 * 144)


def test_pruned_reference_step_shrinks_next_clip_context(tiny):
    _, sched, _, _ = tiny
    ref_step = sched.clip_scales(1)[-1].first_step
    assert sched.is_ref_step(sched.steps[ref_step])
    out = run(tiny, plain())
    kept = int(out.masks[ref_step].sum())
    assert kept == 44
    clip2 = [r for r in out.stats if r["clip"] == 2]
    assert clip2 and all(r["ref_tokens"] == kept for r in clip2)


def test_restore_fills_hidden_for_all_positions(tiny):
    acc = plain(keep_ratios=(0.2, 0.5), update="restore")
    log = recording(acc)
    out = run(tiny, acc)
    n = 0
    for i, (st, _, o) in enumerate(log):
        if o.keep_idx is None:
            continue
        n += 1
        N = st.scale.num_tokens
        assert o.hidden.shape[1] == N and (o.codes != 0).all() and out.bits[i] is not None
        prev_st, _, prev = log[st.scale.first_step - 1]            # last repetition of the previous scale
        assert prev_st.scale.index == st.scale.index - 1 and prev.hidden.shape[1] == prev_st.scale.num_tokens
        fill = resize_tokens(prev.hidden, prev_st.scale.thw, st.scale.thw, "trilinear")
        pruned = torch.ones(N, dtype=torch.bool)
        pruned[o.keep_idx] = False
        assert torch.equal(o.hidden[:, pruned], fill[:, pruned].to(o.hidden.dtype))
    assert n == 6


def test_copy_update_takes_the_latest_earlier_kept_frame_of_the_column(tiny):
    src = temporal_copy_sources(torch.tensor([0, 3, 7]), (3, 2, 3)).view(3, 2, 3)
    assert src[:, 0, 0].tolist() == [0, 0, 0] and src[:, 1, 0].tolist() == [3, 3, 3]
    assert src[:, 0, 1].tolist() == [-1, 7, 7] and (src[:, :, 2] == -1).all()
    acc = plain(keep_ratios=(0.2, 0.5), update="copy")
    log = recording(acc)
    run(tiny, acc)
    n_copied = n_restored = 0
    for st, _, o in log:
        if o.keep_idx is None:
            continue
        t, h, w = st.scale.thw
        kept = torch.zeros(st.scale.num_tokens, dtype=torch.bool)
        kept[o.keep_idx] = True
        prev_st, _, prev = log[st.scale.first_step - 1]
        fill = resize_tokens(prev.hidden, prev_st.scale.thw, st.scale.thw, "trilinear").to(o.hidden.dtype)
        src = temporal_copy_sources(o.keep_idx, st.scale.thw)
        for i in (~kept).nonzero().flatten().tolist():
            if src[i] >= 0:
                assert kept[src[i]] and src[i] % (h * w) == i % (h * w) and src[i] < i
                assert torch.equal(o.hidden[:, i], o.hidden[:, src[i]])
                n_copied += 1
            else:
                assert torch.equal(o.hidden[:, i], fill[:, i])
                n_restored += 1
    assert n_copied > 0 and n_restored > 0


def test_keep_ratio_zero_skips_the_scale_like_skip(tiny):
    out = run(tiny, plain(keep_ratios=(0.0, 1.0)))
    ref = run(tiny, make_accelerator("skip", "last1"))
    assert torch.equal(out.latent, ref.latent)
    skipped = [r["step"] for r in out.stats if r["tokens_run"] == 0]
    assert skipped == [r["step"] for r in ref.stats if r["tokens_run"] == 0] == [18]   # clip 1's runs: referenced
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        plain(keep_ratios=(-0.1, 1.0))


def test_max_reps_drops_later_repetitions_of_prunable_scales(tiny):
    """max_reps=1: only the first repetition of each prunable scale runs; restore then fills from the repetition
    that ran; a scale with a step a later clip attends to runs all its repetitions."""
    _, sched, _, _ = tiny
    out = run(tiny, plain(keep_ratios=(0.5, 1.0), update="restore", max_reps=1))
    dropped = [r["step"] for r in out.stats if r["tokens_run"] == 0]
    assert dropped == [10, 17]                               # rep 1 of the repeated detail scale, clips 1 and 2
    assert not any(r.get("restore_fallback") for r in out.stats)
    with pytest.raises(ValueError, match="max_reps"):
        plain(max_reps=-1)


# ---------------------------------------------------------------------------------------------- the paper preset
def test_paper_preset_prunes_the_last_four_scales_20_30_40_70_percent(tiny):
    """paper: keep 80 / 70 / 60 / 30 % of the last four scales (coarse to fine), the last repetition of a repeated
    scale dense, Partial Update, two guidance branches everywhere, clip 0 dense."""
    _, sched, _, _ = tiny
    acc = make_accelerator("faststar", "paper")
    assert acc.cfg.keep_ratios == (0.3, 0.6, 0.7, 0.8) and acc.cfg.last_k == 4 and acc.cfg.update == "partial"
    out = run(tiny, acc)
    want = {1: 10, 2: 26, 4: 44}                             # ceil(0.8 * 12), ceil(0.7 * 36), ceil(0.3 * 144)
    for st, row, mask in zip(sched.steps, out.stats, out.masks):
        s, N = st.scale, st.scale.num_tokens
        assert row["branches"] == 2
        if s.clip == 0 or s.index_in_clip == 0:
            assert row["tokens_run"] == N and mask is None
        elif s.index_in_clip == 3:                           # 2 repetitions: the first keeps 60 %, the last is dense
            assert row["tokens_run"] == (44 if st.rep == 0 else N) == (44 if st.rep == 0 else 72)
            assert (mask is None) == (st.rep == 1)
        else:
            assert row["tokens_run"] == want[s.index_in_clip] and int(mask.sum()) == want[s.index_in_clip]
            assert row["update"] == "partial"
    # 720p: the last four scales of a video clip are 18x32 (3 reps), 24x43 (2), 30x53, 45x80
    from faststar import official_schedule
    s720 = official_schedule("720p", 5)
    rows = [r for r in flop_plan(acc, schedule=s720)["steps"] if r["clip"] == 1][-7:]
    assert [r["rep"] for r in rows] == [0, 1, 2, 0, 1, 0, 0]
    assert [r["tokens_run"] / r["tokens"] for r in rows] == pytest.approx([0.8, 0.8, 1.0, 0.7, 1.0, 0.6, 0.3],
                                                                            abs=1e-3)


def test_paper_preset_ranks_tokens_by_the_l2_norm_of_the_two_dissimilarities(tiny):
    """The kept set of a paper step = the top ceil(rho N) of ||(1 - S_sp, 1 - S_tm)||_2 of the canvas before it."""
    _, sched, _, _ = tiny
    acc = make_accelerator("faststar", "paper")
    log = recording(acc)
    out = run(tiny, acc)
    st, canvas, o = log[11]                                  # clip 1's last scale (6x8, t=3), keep 30 %
    s = st.scale
    prev_clip = out.latent[:, :, :1]                         # clip 0's final canvas
    x, u = scale_views(canvas, s.thw, sched.scales[s.index - 1].thw)
    want = importance(spatial_similarity(x, u), temporal_similarity(area_down(canvas, s.thw), prev_clip),
                      combine="l2")
    assert torch.equal(o.keep_idx, select_topk(want, 44))
    summed = importance(spatial_similarity(x, u), temporal_similarity(area_down(canvas, s.thw), prev_clip))
    assert not torch.equal(o.keep_idx, select_topk(summed, 44))      # the combination matters here
