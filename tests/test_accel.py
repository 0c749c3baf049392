"""Accelerators on a tiny random model: exactness when off, accounting, scores, Partial Update, multi-clip
references, the baselines, apply/remove, the restore variant, presets and the mask overlay."""
import math

import numpy as np
import pytest
import torch

from faststar import build_schedule, build_transformer, official_schedule
from faststar.accel import METHODS, PRESETS, apply, flop_plan, make_accelerator, remove
from faststar.accel.base import Accelerator
from faststar.accel.baselines import FastVAR, SkipScales, StageVAR, fastvar_score, leverage_sample
from faststar.accel.faststar import (FastSTAR, RandomPrune, channel_cosine, detail_energy, importance, keep_count,
                                     normalize,
                                     own_generator, resize_tokens, scale_views, select_threshold, select_topk,
                                     spatial_similarity, temporal_similarity, threshold_count)
from faststar.accel.viz import mask_video
from faststar.generate import generate
from faststar.schedule import step_flops
from faststar.vae.quant import lift_codes

SEED = 3


@pytest.fixture(scope="module")
def tiny():
    """golden-tiny with random weights, 3 clips (clip 1's last scale is clip 2's context), 2 detail scales."""
    torch.manual_seed(0)
    model = build_transformer("golden-tiny").eval()
    sched = build_schedule([(1, 1), (2, 2), (3, 4), (4, 6), (6, 8)], [1, 3, 3], image_reps=[1] * 5,
                           video_reps=[2, 1, 1, 2, 1], semantic_scales=3, name="accel-tiny")
    text = torch.randn(7, 32, generator=torch.Generator().manual_seed(1))
    dense = generate(model, sched, text, seed=SEED)
    return model, sched, text, dense


def run(tiny, acc, seed=SEED):
    model, sched, text, _ = tiny
    return generate(model, sched, text, seed=seed, accelerator=acc)


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


# ---------------------------------------------------------------------------------------------- (1) off = dense
@pytest.mark.parametrize("method,kw", [
    ("faststar", dict(keep_ratios=1.0, single_branch_last=0)),        # the default preset also has single-branch
    ("faststar", dict(keep_ratios=1.0, single_branch_last=0, spatial="hidden", update="restore")),
    ("faststar", dict(preset="guided-balanced", keep_ratios=1.0)),
    ("random", dict(keep_ratios=1.0, single_branch_last=0)),
    ("fastvar", dict(keep_ratios=1.0, prune_layer=1)),
    ("stagevar", dict(single_branch_last=0, low_rank_last=0)),
    ("skip", dict(last_n=0)),
])
def test_off_settings_are_bit_identical_to_dense(tiny, method, kw):
    assert_same_as_dense(run(tiny, make_accelerator(method, **kw)), tiny[3])


def test_removed_accelerator_is_bit_identical_to_dense(tiny):
    class Holder:
        accelerator = None
    h = Holder()
    apply(h, "faststar", "fast")
    pruned = run(tiny, h.accelerator)
    assert not torch.equal(pruned.latent, tiny[3].latent)
    remove(h)
    assert h.accelerator is None
    assert_same_as_dense(run(tiny, h.accelerator), tiny[3])


# ---------------------------------------------------------------------------------------------- (2) accounting
def test_tokens_run_are_ceil_rho_n(tiny):
    _, sched, _, _ = tiny
    acc = make_accelerator("faststar", "partial-balanced")  # keep (0.3, 0.55, 0.8) from the last scale
    out = run(tiny, acc)
    pruned = 0
    for st, row, mask in zip(sched.steps, out.stats, out.masks):
        rho = acc.keep_ratio(sched, st)
        N = st.scale.num_tokens
        expect = N if rho is None or rho >= 1 else math.ceil(round(rho * N, 9))
        assert row["tokens_run"] == expect and row["tokens"] == N
        if expect < N:
            pruned += 1
            assert int(mask.sum()) == expect and row["n_keep"] == expect and row["keep_ratio"] == rho
        else:
            assert mask is None
    assert pruned == 6                                       # detail scales (2 + 1 steps) of clips 1 and 2
    last = out.stats[-1]
    assert last["tokens_run"] == 44                          # ceil(0.3 * 144)
    model, _, text, _ = tiny
    kw = dict(depth=model.cfg.depth, width=model.cfg.width, num_heads=model.cfg.num_heads,
              num_kv_heads=model.cfg.num_kv_heads, mlp_hidden=model.cfg.mlp_hidden, batch=2)
    n, ref = last["tokens_run"], last["ref_tokens"]
    assert last["flops"] == pytest.approx(sum(step_flops(n, text.shape[0] + ref + n, **kw)), rel=1e-12)


@pytest.mark.parametrize("method,kw", [
    ("faststar", {}),
    ("faststar", dict(spatial="hidden")),                   # two-phase: probe blocks on all tokens
    ("faststar", dict(single_branch_last=2, update="restore")),
    ("random", dict(keep_ratios=(0.25, 0.5))),
    ("fastvar", dict(prune_layer=1)),
    ("fastvar", dict(keep_ratios=(1.0, 1.0, 0.5), skip_last=2)),
    ("stagevar", {}),
    ("skip", dict(last_n=2)),
])
def test_stats_match_flop_plan(tiny, method, kw):
    model, sched, text, _ = tiny
    acc = make_accelerator(method, **kw)
    out = run(tiny, acc)
    plan = flop_plan(method, schedule=sched, model_cfg=model.cfg, text_len=text.shape[0], **kw)
    for row, pred in zip(out.stats, plan["steps"]):
        assert (row["tokens_run"], row["branches"], row["ref_tokens"]) == \
            (pred["tokens_run"], pred["branches"], pred["ref_tokens"]), row["step"]
        assert row["flops"] == pytest.approx(pred["flops"], rel=1e-12)
        assert row["flops_dense"] == pytest.approx(pred["flops_dense"], rel=1e-12)
    s = out.summary()
    assert s["flops"] == pytest.approx(plan["flops"], rel=1e-12) and s["flops"] < s["flops_dense"]


def test_threshold_mode_stays_within_floor_and_cap(tiny):
    model, sched, text, _ = tiny
    kw = dict(mode="threshold", threshold=1.2, floor=0.2, cap=1.0, norm="mean", keep_ratios=0.99)  # caps 0.99
    out = run(tiny, make_accelerator("faststar", **kw))
    rows = [r for r in out.stats if "n_keep" in r]
    assert len(rows) == 6
    for r in rows:
        assert keep_count(0.2, r["tokens"]) <= r["tokens_run"] <= r["tokens"] and r["n_keep"] == r["tokens_run"]
    assert any(r["tokens_run"] < r["tokens"] for r in rows)          # cap 1.0 still prunes below the bound
    bound = flop_plan("faststar", schedule=sched, model_cfg=model.cfg, text_len=text.shape[0], **kw)
    assert out.summary()["flops"] <= bound["flops"] * (1 + 1e-12) and "note" in bound


# ---------------------------------------------------------------------------------------------- (3) scores
def _vec(i, C=64):
    v = torch.zeros(C)
    v[i] = 1.0
    return v


def test_cosine_epsilon_zero_vectors_compare_equal():
    z = torch.zeros(1, 64, 2)
    a = torch.randn(1, 64, 2)
    assert torch.equal(channel_cosine(z, z), torch.ones(1, 2))
    assert torch.equal(channel_cosine(a, a), torch.ones(1, 2))
    assert channel_cosine(z, a).abs().max() < 1e-3
    assert torch.allclose(channel_cosine(a, -a), -torch.ones(1, 2), atol=1e-5)


def test_spatial_flat_region_converged_edge_region_not():
    a, b = _vec(0), _vec(1)
    canvas = torch.zeros(1, 64, 1, 8, 8)
    canvas[0, :, 0, :, :4] = a[:, None, None]                       # left half: flat
    for y in range(8):
        for x in range(4, 8):
            canvas[0, :, 0, y, x] = a if (x + y) % 2 == 0 else b    # right half: texture at the finest grid
    x_k, u_k = scale_views(canvas, (1, 8, 8), (1, 4, 4))
    s = spatial_similarity(x_k, u_k).reshape(8, 8)
    assert s[:, :3].min() > 0.9999                                  # flat interior: nothing new at scale k
    assert s[:, 5:].max() < 0.75                                    # texture: cos(a, (a+b)/2) = 0.707
    keep = select_topk(importance(s.flatten(), None), 8 * 3)
    assert set((keep % 8).tolist()) <= {4, 5, 6, 7}


def _moving_blob():
    a, b = _vec(0), _vec(1)
    cur = a[None, :, None, None, None].repeat(1, 1, 3, 8, 8)
    for f in range(3):
        cur[0, :, f, 0:2, 2 * f:2 * f + 2] = b[:, None, None]           # the blob moves right by 2 per frame
    prev = a[None, :, None, None, None].repeat(1, 1, 2, 8, 8)
    prev[0, :, -1, 0:2, 0:2] = b[:, None, None]                         # where it was at the end of the clip
    return cur, prev


def test_temporal_static_still_moving_not():
    cur, prev = _moving_blob()
    s = temporal_similarity(cur, prev, "prev_frame").reshape(3, 8, 8)
    moving = s < 0.5
    expect = torch.zeros(3, 8, 8, dtype=torch.bool)
    expect[1, 0:2, 0:4] = True                                      # frame 1: left (0:2) and entered (2:4)
    expect[2, 0:2, 2:6] = True
    assert torch.equal(moving, expect)
    assert torch.equal(s[~expect], torch.ones(int((~expect).sum())))
    s2 = temporal_similarity(cur, prev, "prev_clip").reshape(3, 8, 8)
    expect2 = torch.zeros(3, 8, 8, dtype=torch.bool)
    expect2[1, 0:2, 0:4] = True
    expect2[2, 0:2, 0:2] = True
    expect2[2, 0:2, 4:6] = True
    assert torch.equal(s2 < 0.5, expect2)
    assert temporal_similarity(cur, None, "prev_frame") is None     # clip 0: no preceding clip
    assert temporal_similarity(cur, prev, "off") is None


def test_importance_keeps_moving_and_unconverged_tokens():
    cur, prev = _moving_blob()
    s_tm = temporal_similarity(cur, prev, "prev_frame")
    s_sp = torch.ones_like(s_tm)
    s_sp[:5] = 0.5                                                  # a few unconverged tokens in frame 0
    imp = importance(s_sp, s_tm, 1.0, 1.0, "rank")
    keep = select_topk(imp, 16 + 5)
    moving = (s_tm < 0.5).nonzero().flatten()
    assert set(moving.tolist()) | set(range(5)) == set(keep.tolist())
    assert torch.equal(keep, torch.sort(keep).values)


def test_detail_energy_marks_edges_and_adds_to_importance():
    x = torch.zeros(1, 4, 2, 5, 6)
    assert torch.equal(detail_energy(x), torch.zeros(2 * 5 * 6))           # flat: no detail
    x[:, :, :, :, 3:] = 1.0                                                  # a vertical edge between x=2 and x=3
    d = detail_energy(x).view(2, 5, 6)
    assert torch.allclose(d[:, :, 2], torch.full((2, 5), 4.0))              # 4 channels, step 1 each
    d[:, :, 2] = 0
    assert torch.equal(d, torch.zeros(2, 5, 6))                              # nothing anywhere else
    flat = torch.ones(60)
    imp = importance(flat, None, 1.0, 1.0, "rank", detail=detail_energy(x), w_detail=1.0)
    assert set(select_topk(imp, 10).view(-1).tolist()) == {f * 30 + y * 6 + 2 for f in range(2) for y in range(5)}
    assert torch.equal(importance(flat, None, detail=detail_energy(x), w_detail=0.0),
                       importance(flat, None))                                # weight 0: the term is off


def test_normalize_select_and_counts():
    r = normalize(torch.tensor([0.0, 0.0, 1.0, 2.0]), "rank")
    assert torch.allclose(r, torch.tensor([0.5, 0.5, 2.0, 3.0]) / 3)
    assert torch.allclose(normalize(torch.tensor([1.0, 3.0]), "mean"), torch.tensor([0.5, 1.5]))
    with pytest.raises(ValueError, match="norm must be one of"):
        normalize(torch.ones(3), "max")
    assert torch.equal(select_topk(torch.tensor([1.0, 5.0, 5.0, 0.0, 7.0]), 3), torch.tensor([1, 2, 4]))
    assert torch.equal(select_topk(torch.tensor([2.0, 2.0, 2.0]), 2), torch.tensor([0, 1]))   # ties: lower index
    assert keep_count(0.3, 10) == 3 and keep_count(0.55, 72) == 40 and keep_count(0.001, 10) == 1
    with pytest.raises(ValueError, match="keep ratio"):
        keep_count(0.0, 10)
    sc = torch.arange(10.0)
    assert select_threshold(sc, 6.5).tolist() == [7, 8, 9]
    assert select_threshold(sc, 8.5, floor=0.3).tolist() == [7, 8, 9]          # at least 3
    assert select_threshold(sc, -1.0, cap=0.5).tolist() == [5, 6, 7, 8, 9]     # at most 5
    assert threshold_count(sc, 6.5) == 3 and threshold_count(sc, 100.0) == 1 and threshold_count(sc, 100.0, 0.2) == 2
    v = torch.tensor([0.0, 0.5, 2.0])
    assert torch.equal(normalize(v, "raw"), v)


def test_threshold_on_raw_scores_keeps_fewer_tokens_where_less_moves():
    """norm="raw": the bound means the same on every step, so a still scene keeps fewer tokens than a moving one
    (with rank or mean normalisation both would keep about the same share)."""
    cur, prev = _moving_blob()
    background = _vec(0)[None, :, None, None, None]
    still = temporal_similarity(background.repeat(1, 1, 3, 8, 8), background.repeat(1, 1, 2, 8, 8), "prev_frame")
    moving = temporal_similarity(cur, prev, "prev_frame")
    n_still = threshold_count(importance(None, still, norm="raw"), 0.5, floor=0.05)
    n_moving = threshold_count(importance(None, moving, norm="raw"), 0.5, floor=0.05)
    assert n_moving == int((moving < 0.5).sum()) > n_still
    assert n_still == keep_count(0.05, still.numel())            # nothing moves: the floor


def test_fastvar_score_and_resize():
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


# ---------------------------------------------------------------------------------------------- (4) Partial Update
def test_partial_update_zero_codes_at_pruned_positions(tiny):
    model, sched, _, _ = tiny
    acc = make_accelerator("faststar", "partial-balanced")
    log = recording(acc)
    out = run(tiny, acc)
    HW = sched.final_hw
    n_pruned = 0
    for (st, canvas_before, o), bits, mask in zip(log, out.bits, out.masks):
        assert torch.equal(o.canvas, canvas_before + lift_codes(o.codes, model.cfg.d_vae, HW))
        if o.keep_idx is None:
            continue
        n_pruned += 1
        N, d = st.scale.num_tokens, st.scale.bits
        codes_Nd = o.codes[0].permute(1, 2, 3, 0).reshape(N, d)
        kept = torch.zeros(N, dtype=torch.bool)
        kept[o.keep_idx] = True
        assert torch.equal(kept, mask.flatten())
        assert (codes_Nd[~kept] == 0).all() and (codes_Nd[kept].abs() == 1 / math.sqrt(d)).all()
        assert (bits.reshape(N, d)[~kept] == 0).all()
        assert o.hidden.shape[1] == int(kept.sum())
    assert n_pruned == 6


# ---------------------------------------------------------------------------------------------- (5) multi-clip
def test_pruned_reference_step_shrinks_next_clip_context(tiny):
    _, sched, _, _ = tiny
    ref_step = sched.clip_scales(1)[-1].first_step
    assert sched.is_ref_step(sched.steps[ref_step])
    out = run(tiny, make_accelerator("faststar", "partial-balanced"))
    kept = int(out.masks[ref_step].sum())
    assert kept == 44
    clip2 = [r for r in out.stats if r["clip"] == 2]
    assert clip2 and all(r["ref_tokens"] == kept for r in clip2)
    full = run(tiny, make_accelerator("faststar", "partial-balanced", dense_ref_steps=True))
    assert full.masks[ref_step] is None and full.stats[ref_step]["tokens_run"] == 144
    assert all(r["ref_tokens"] == 144 for r in full.stats if r["clip"] == 2)
    assert full.masks[-1] is not None                            # clip 2's last scale (no later clip) is pruned


# ---------------------------------------------------------------------------------------------- (6) baselines
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
    assert out.stats[11]["tokens_run"] == 144                   # a referenced step never takes the stand-in


def test_threshold_mode_per_scale_caps_and_count_matched_random(tiny):
    """Threshold mode: a scale's keep ratio is its cap (0 = not run); the random control keeps FastSTAR's count
    at every step, drawn uniformly; the accounting counts the tokens that ran."""
    model, sched, text, _ = tiny
    kw = dict(mode="threshold", norm="raw", threshold=0.05, floor=0.1, cap=0.9, keep_ratios=(0.0, 0.5))
    f = run(tiny, make_accelerator("faststar", **kw))
    r = run(tiny, make_accelerator("random", **kw))
    last = [st.index for st in sched.steps if st.scale.clip > 0 and st.scale.index_in_clip == 4]
    second = [st.index for st in sched.steps if st.scale.clip > 0 and st.scale.index_in_clip == 3]
    # keep ratio 0: the scale does not run, except clip 1's, which clip 2 attends to
    assert [f.stats[i]["tokens_run"] for i in last] == [r.stats[i]["tokens_run"] for i in last] == [144, 0]
    counts = [f.stats[i]["tokens_run"] for i in second]
    for i, n in zip(second, counts):
        N = f.stats[i]["tokens"]
        assert keep_count(0.1, N) <= n <= keep_count(0.5, N)     # between the floor and this scale's cap
        assert r.stats[i]["tokens_run"] == n and int(r.masks[i].sum()) == n == int(f.masks[i].sum())
    assert any(not torch.equal(f.masks[i], r.masks[i]) for i in second)
    assert f.summary()["flops"] == pytest.approx(r.summary()["flops"], rel=1e-12)
    # the cap binds: a bound of -1 keeps min(keep ratio, cap) of every pruned step
    g = run(tiny, make_accelerator("faststar", **{**kw, "threshold": -1.0, "cap": 0.4}))
    assert all(g.stats[i]["tokens_run"] == keep_count(0.4, g.stats[i]["tokens"]) for i in second)
    # keep ratio 1 runs dense in threshold mode too (a preset's dense scales stay dense)
    d = run(tiny, make_accelerator("faststar", **{**kw, "keep_ratios": (0.0, 1.0)}))
    assert all(d.stats[i]["tokens_run"] == d.stats[i]["tokens"] and d.masks[i] is None for i in second)
    bound = flop_plan("faststar", schedule=sched, model_cfg=model.cfg, text_len=text.shape[0], **kw)
    assert f.summary()["flops"] <= bound["flops"] * (1 + 1e-12)


def test_random_is_seeded_and_differs_from_faststar(tiny):
    state = torch.get_rng_state()
    a = run(tiny, make_accelerator("random", "guided-balanced"))
    assert torch.equal(torch.get_rng_state(), state)             # own generator: global stream untouched
    b = run(tiny, make_accelerator("random", "guided-balanced"))
    c = run(tiny, make_accelerator("random", "guided-balanced", seed_offset=1))
    f = run(tiny, make_accelerator("faststar", "guided-balanced"))
    pruned = [i for i, m in enumerate(a.masks) if m is not None]
    assert pruned == [i for i, m in enumerate(f.masks) if m is not None]
    assert torch.equal(a.latent, b.latent) and all(torch.equal(a.masks[i], b.masks[i]) for i in pruned)
    assert any(not torch.equal(a.masks[i], c.masks[i]) for i in pruned)
    assert any(not torch.equal(a.masks[i], f.masks[i]) for i in pruned)
    for i in range(pruned[0]):                                   # steps before the first pruned one: = dense
        assert torch.equal(a.bits[i], tiny[3].bits[i])


def test_fastvar_two_phase_restores_all_positions(tiny):
    _, sched, _, _ = tiny
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


# ---------------------------------------------------------------------------------------------- (7) apply / remove
def test_apply_remove_reversible_and_idempotent():
    class Holder:
        accelerator = None
    h = Holder()
    assert apply(h, "faststar") is h
    assert isinstance(h.accelerator, FastSTAR) and h.accelerator.preset == "balanced"
    first = h.accelerator.describe()
    apply(h, "faststar")
    assert h.accelerator.describe() == first
    apply(h, "fastvar", "hart")
    assert isinstance(h.accelerator, FastVAR) and h.accelerator.cfg.keep_ratios == (0.25, 0.5)
    apply(h, "faststar", "fast", w_tm=0.5)
    assert h.accelerator.cfg.w_tm == 0.5 and h.accelerator.cfg.keep_ratios == PRESETS["faststar"]["fast"]["keep_ratios"]
    remove(h)
    remove(h)
    assert h.accelerator is None
    with pytest.raises(TypeError, match="accelerator"):
        apply(object(), "faststar")
    with pytest.raises(ValueError, match="unknown acceleration method"):
        apply(h, "tome")
    with pytest.raises(TypeError, match="unknown faststar option"):
        apply(h, "faststar", keep_ratio=0.5)
    with pytest.raises(ValueError, match="unknown preset"):
        apply(h, "faststar", "turbo")
    assert h.accelerator is None                                 # a failed apply leaves it removed
    # a whole method string, as eval and the CLI take it; keyword overrides apply on top of its knobs
    apply(h, "faststar:quality+anchors=0+keep_ratios=0.7/1/1")
    c = h.accelerator.cfg
    assert c.anchors == 0.0 and c.keep_ratios == (0.7, 1.0, 1.0)
    assert c.w_detail == PRESETS["faststar"]["quality"]["w_detail"]
    assert apply(h, "faststar+w_tm=0.5", "fast", w_tm=0.25).accelerator.cfg.w_tm == 0.25
    assert h.accelerator.cfg.keep_ratios == PRESETS["faststar"]["fast"]["keep_ratios"]
    with pytest.raises(ValueError, match="names the preset 'quality'"):
        make_accelerator("faststar:quality", "fast")
    assert type(make_accelerator("dense")) is Accelerator
    assert set(METHODS) == {"dense", "faststar", "fastvar", "stagevar", "skip", "random"}
    assert isinstance(make_accelerator("random"), RandomPrune)
    assert isinstance(make_accelerator("stagevar"), StageVAR) and isinstance(make_accelerator("skip"), SkipScales)


# ---------------------------------------------------------------------------------------------- (8) restore variant
def test_restore_fills_hidden_for_all_positions(tiny):
    acc = make_accelerator("faststar", "prune-balanced")
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


# ---------------------------------------------------------------------------------------------- presets, viz
def test_presets_flop_savings_at_8b_720p():
    sched = official_schedule("720p", 5)
    saved = {p: flop_plan("faststar", p, sched, "infinitystar-8b")["saved"] for p in PRESETS["faststar"]}
    assert 0.40 <= saved["quality"] <= 0.50 and saved["balanced"] >= 0.60 and saved["fast"] >= 0.78
    assert flop_plan("dense", schedule=sched)["saved"] == 0.0
    for m, table in PRESETS.items():
        for p in table:
            assert 0.0 < flop_plan(m, p, sched)["saved"] < 1.0, (m, p)


def test_random_presets_are_faststar_ratios_with_a_uniform_draw(tiny):
    """random:X = faststar:X without the knobs that spread FastSTAR's kept set (block, anchors); the same plan."""
    from faststar.accel.presets import SELECTION_SPREAD
    assert PRESETS["faststar"]["fast"]["block"] == 2 and "block" not in PRESETS["random"]["fast"]
    sched = official_schedule("720p", 5)
    for p, knobs in PRESETS["random"].items():
        assert not set(knobs) & set(SELECTION_SPREAD), p
        assert {k: v for k, v in PRESETS["faststar"][p].items() if k not in SELECTION_SPREAD} == knobs, p
        assert flop_plan("random", p, sched)["saved"] == pytest.approx(flop_plan("faststar", p, sched)["saved"]), p
    # the spread selection keeps the planned count and runs on the tiny model like plain top-k
    out_b = run(tiny, make_accelerator("faststar", "prune-balanced", block=2))
    out_k = run(tiny, make_accelerator("faststar", "prune-balanced"))
    assert [r["tokens_run"] for r in out_b.stats] == [r["tokens_run"] for r in out_k.stats]
    assert any(not torch.equal(a, b) for a, b in zip(out_b.masks, out_k.masks) if a is not None)


def test_mask_video_overlay(tiny):
    _, sched, _, _ = tiny
    out = run(tiny, make_accelerator("faststar", "prune-balanced"))
    T = sched.pixel_frames
    frames = np.full((T, 12, 16, 3), 128, dtype=np.uint8)
    vid = mask_video(out.masks, sched, frames)
    assert vid.shape == frames.shape and vid.dtype == np.uint8
    assert np.array_equal(vid[0], frames[0])                     # clip 0 was not pruned
    kept = out.masks[11][0].float()                              # clip 1's last step, its first latent frame
    kept_px = torch.nn.functional.interpolate(kept[None, None], size=(12, 16), mode="nearest")[0, 0].bool().numpy()
    p = 1                                                        # pixel frame 1 shows latent frame 1
    assert np.array_equal(vid[p][kept_px], frames[p][kept_px])
    assert (vid[p][~kept_px] != 128).any(axis=-1).all()
    assert np.array_equal(mask_video([None] * sched.num_steps, sched, frames), frames)


# ---------------------------------------------------------------------------------------------- keep ratio 0, mean
def test_keep_ratio_zero_skips_the_scale_like_skip(tiny):
    """keep ratio 0 on the last scale = that step does not run: bit-identical to skip:last1, and accounted so."""
    out = run(tiny, make_accelerator("faststar", "guided-balanced", keep_ratios=(0.0, 1.0, 1.0)))
    ref = run(tiny, make_accelerator("skip", "last1"))
    assert torch.equal(out.latent, ref.latent)
    skipped = [r for r in out.stats if r["tokens_run"] == 0 and not r["teacher_forced"]]
    assert skipped and all(r["flops"] == 0.0 for r in skipped)
    assert [r["step"] for r in skipped] == [r["step"] for r in ref.stats if r["tokens_run"] == 0]
    fp = flop_plan("faststar", "guided-balanced", schedule=tiny[1], model_cfg=tiny[0].cfg, text_len=7,
                   keep_ratios=(0.0, 1.0, 1.0))
    assert fp["total"] == pytest.approx(sum(r["flops"] for r in out.stats) + fp["text"], rel=1e-9)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        make_accelerator("faststar", "guided-balanced", keep_ratios=(-0.1, 1.0))


def test_max_reps_drops_later_repetitions_of_prunable_scales(tiny):
    """max_reps=1: only the first repetition of each prunable scale runs (the others are accounted as not run);
    restore then fills from the repetition that ran; a step a later clip attends to always runs."""
    model, sched, text, _ = tiny
    acc = make_accelerator("faststar", "guided-balanced", keep_ratios=(0.5, 1.0), update="restore", max_reps=1)
    out = run(tiny, acc)
    prunable = {sc.index for sc in sched.scales if sc.clip > 0 and acc.keep_ratio(sched, sched.steps[sc.first_step])
                is not None}
    for r, st in zip(out.stats, sched.steps):
        dropped = st.scale.index in prunable and st.rep >= 1
        assert (r["tokens_run"] == 0) == dropped, (st, r["tokens_run"])
    assert sum(st.scale.index in prunable and st.rep >= 1 for st in sched.steps) >= 2     # one per video clip
    assert not any(r.get("restore_fallback") for r in out.stats)
    fp = flop_plan(acc, schedule=sched, model_cfg=model.cfg, text_len=7)
    assert fp["total"] == pytest.approx(sum(r["flops"] for r in out.stats) + fp["text"], rel=1e-9)
    assert torch.equal(run(tiny, make_accelerator("faststar", "guided-balanced", keep_ratios=(0.5, 1.0),
                                                  update="restore", max_reps=1)).latent,
                       out.latent)                                # same seed, same video
    # the referenced step of a 2-repetition last scale keeps both repetitions; the last clip's drops one
    sched2 = build_schedule([(1, 1), (2, 2), (3, 4), (4, 6), (6, 8)], [1, 3, 3], image_reps=[1] * 5,
                            video_reps=[1, 1, 1, 1, 2], semantic_scales=3, name="accel-tiny-reps")
    acc2 = make_accelerator("faststar", "guided-balanced", keep_ratios=(1.0, 1.0), max_reps=1, last_k=1)
    ran = [acc2.budget(sched2, st).run for st in sched2.steps if st.scale.index_in_clip == 4]
    assert ran == [True, True, True, True, False]    # clip 0 (1 rep, not prunable), 1 (2, referenced), 2 (2)
    with pytest.raises(ValueError, match="max_reps"):
        make_accelerator("faststar", "guided-balanced", max_reps=-1)


def test_keep_reps_last_and_partial_repetitions(tiny):
    """keep_reps="last" runs a scale's last repetitions instead of its first; rep_keep runs the dropped ones on that
    share of their tokens with Partial Update (zero codes at the pruned positions, whatever ``update`` says), and
    the run, the FLOP plan and the kept masks agree."""
    model, sched, text, _ = tiny
    kw = dict(keep_ratios=(1.0, 1.0), last_k=2, max_reps=1, update="restore")
    two = [st for st in sched.steps if st.scale.clip > 0 and st.scale.reps == 2 and st.scale.index_in_clip == 3]
    assert len(two) == 4
    first = make_accelerator("faststar", "guided-balanced", **kw)
    last = make_accelerator("faststar", "guided-balanced", **kw, keep_reps="last")
    for st in two:
        assert first.budget(sched, st).run == (st.rep == 0) and last.budget(sched, st).run == (st.rep == 1)
    out = run(tiny, last)
    N = two[0].scale.num_tokens
    assert [out.stats[st.index]["tokens_run"] for st in two] == [0, N, 0, N]
    assert not torch.equal(out.latent, run(tiny, first).latent)

    part = make_accelerator("faststar", "guided-balanced", **kw, rep_keep=0.5)
    log = recording(part)
    out = run(tiny, part)
    assert [out.stats[st.index]["tokens_run"] for st in two] == [N, N // 2, N, N // 2]
    fp = flop_plan(make_accelerator("faststar", "guided-balanced", **kw, rep_keep=0.5), schedule=sched,
                   model_cfg=model.cfg, text_len=7)
    assert [r["tokens_run"] for r in out.stats] == [r["tokens_run"] for r in fp["steps"]]
    checked = 0
    for st, canvas_before, o in log:
        if st in two and st.rep == 1:
            checked += 1
            kept = torch.zeros(N, dtype=torch.bool)
            kept[o.keep_idx] = True
            assert kept.sum() == N // 2 and torch.equal(kept, out.masks[st.index].flatten())
            codes_Nd = o.codes[0].permute(1, 2, 3, 0).reshape(N, st.scale.bits)
            assert (codes_Nd[~kept] == 0).all() and (codes_Nd[kept] != 0).all()     # Partial Update, not restore
            assert torch.equal(o.canvas, canvas_before + lift_codes(o.codes, model.cfg.d_vae, sched.final_hw))
    assert checked == 2
    assert torch.equal(run(tiny, make_accelerator("faststar", "guided-balanced", **kw, rep_keep=0.5)).latent,
                       out.latent)                                # same seed, same video
    # a scale with keep ratio 0 stays off, its dropped repetitions included
    off = make_accelerator("faststar", "guided-balanced", **{**kw, "keep_ratios": (1.0, 0.0)}, rep_keep=0.5)
    assert not any(off.budget(sched, st).run for st in two)
    with pytest.raises(ValueError, match="max_reps > 0"):
        make_accelerator("faststar", "guided-balanced", rep_keep=0.5)
    with pytest.raises(ValueError, match="keep_reps"):
        make_accelerator("faststar", "guided-balanced", max_reps=1, keep_reps="middle")


def test_mean_update_gives_pruned_positions_the_expected_code(tiny):
    from faststar.sampling import GuidanceConfig, expected_codes, guide
    model, sched, _, dense = tiny
    logs = {}
    for upd in ("restore", "mean"):
        acc = make_accelerator("faststar", "guided-balanced", update=upd)
        logs[upd] = recording(acc)
        run(tiny, acc)
    i = next(k for k, (_, _, o) in enumerate(logs["mean"]) if o.keep_idx is not None)   # first pruned step
    st, _, om = logs["mean"][i]
    _, _, orr = logs["restore"][i]
    N, d = st.scale.num_tokens, st.scale.bits
    cm = om.codes[0].permute(1, 2, 3, 0).reshape(N, d)
    cr = orr.codes[0].permute(1, 2, 3, 0).reshape(N, d)
    kept = torch.zeros(N, dtype=torch.bool)
    kept[om.keep_idx] = True
    assert torch.equal(cm[kept], cr[kept])                      # same canvas before it: the kept tokens agree
    logits = model.logits(om.hidden, st.scale.bits)
    guided = guide(logits[0], logits[1], st.scale.tau, GuidanceConfig())
    torch.testing.assert_close(cm[~kept], expected_codes(guided)[~kept], rtol=0, atol=1e-6)
    assert (cm[~kept].abs() < 1 / math.sqrt(d)).all() and (cr[~kept].abs() == 1 / math.sqrt(d)).all()
    # ratio 1 with update=mean runs nothing pruned: bit-identical to dense
    assert_same_as_dense(run(tiny, make_accelerator("faststar", "guided-balanced", update="mean", keep_ratios=1.0)),
                         dense)


def test_expected_codes_minimise_squared_error():
    from faststar.sampling import expected_codes
    torch.manual_seed(0)
    logits = torch.randn(50, 8) * 2                        # 50 tokens, 4 bits
    m = expected_codes(logits)
    pair = logits.view(50, 4, 2)
    p1 = torch.sigmoid(pair[..., 1] - pair[..., 0])
    torch.testing.assert_close(m, (2 * p1 - 1) / 2.0)
    samples = ((torch.rand(20000, 50, 4) < p1).float() * 2 - 1) / 2.0
    err_mean = (samples - m).pow(2).mean()
    err_zero = samples.pow(2).mean()
    err_sample = (samples - samples.roll(1, 0)).pow(2).mean()
    assert err_mean < err_zero and err_mean < err_sample
    torch.testing.assert_close(err_sample, 2 * err_mean, rtol=0.03, atol=0)


def test_anchored_selection_mixes_random_context_with_top_scores():
    from faststar.accel.faststar import select_anchored
    score = torch.arange(100.0)                                   # token i scores i: top-k = the highest indices
    g = lambda: own_generator(5, 7, salt=2)                       # noqa: E731
    assert torch.equal(select_anchored(score, 20, 0.0, g()), select_topk(score, 20))
    rand20 = torch.sort(torch.randperm(100, generator=g())[:20]).values
    assert torch.equal(select_anchored(score, 20, 1.0, g()), rand20)
    keep = select_anchored(score, 20, 0.5, g())
    anchors = set(torch.randperm(100, generator=g())[:10].tolist())
    assert keep.numel() == 20 and torch.equal(keep, torch.sort(keep).values) and anchors <= set(keep.tolist())
    rest = sorted(set(keep.tolist()) - anchors)
    others = sorted(set(range(100)) - anchors)
    assert rest == others[-len(rest):]                            # the rest: the best of the non-anchors
    with pytest.raises(ValueError, match="anchors"):
        make_accelerator("faststar", "guided-balanced", anchors=1.5)
    with pytest.raises(ValueError, match="set one of them"):
        make_accelerator("faststar", "guided-balanced", anchors=0.5, block=4)


def test_a_single_keep_ratio_or_anchor_share_applies_to_every_prunable_scale():
    sched = official_schedule("720p", 5)
    acc = make_accelerator("faststar", "guided-balanced", keep_ratios=0.5, last_k=3, anchors=(0.0, 1.0))
    video = [st for st in sched.steps if st.scale.clip == 1]
    assert [acc.keep_ratio(sched, st) for st in video][-5:] == [None, 0.5, 0.5, 0.5, 0.5]   # 24x43 has 2 reps
    from faststar.accel.faststar import per_scale
    assert [per_scale(acc.cfg.anchors, j, 0.0) for j in range(3)] == [0.0, 1.0, 0.0]
    assert per_scale(0.3, 5, 1.0) == 0.3 and per_scale((0.2,), 1, 1.0) == 1.0


@pytest.mark.parametrize("update,kw", [("restore", dict(anchors=0.5)), ("copy", dict(temporal="copy_source"))])
def test_selection_variants_run_the_planned_tokens_reproducibly(tiny, update, kw):
    """anchored selection, and the copy-source temporal term: same seed same video, the planned token counts, and a
    different video from plain top-k with the same update."""
    acc = lambda: make_accelerator("faststar", "guided-balanced", keep_ratios=(0.3, 0.6),  # noqa: E731
                                   update=update, **kw)
    a, b = run(tiny, acc()), run(tiny, acc())
    assert torch.equal(a.latent, b.latent)
    fp = flop_plan(acc(), schedule=tiny[1], model_cfg=tiny[0].cfg, text_len=7)
    assert [r["tokens_run"] for r in a.stats] == [r["tokens_run"] for r in fp["steps"]]
    assert not torch.equal(a.latent, run(tiny, make_accelerator("faststar", "guided-balanced", keep_ratios=(0.3, 0.6),
                                                                update=update)).latent)


def test_stratified_selection_spreads_kept_tokens_over_tiles():
    from faststar.accel.faststar import select_stratified
    t, h, w, b = 2, 8, 12, 4
    score = torch.zeros(t, h, w)
    score[:, :4, :4] = 10.0 + torch.rand(t, 4, 4)       # one hot tile per frame: plain top-k keeps only it
    score = score.flatten()
    n_keep = 24
    top = select_topk(score, n_keep)
    strat = select_stratified(score, (t, h, w), n_keep, b)
    tile = lambda i: (i // (h * w), (i % (h * w)) // w // b, (i % w) // b)   # noqa: E731
    assert len({tile(int(i)) for i in top}) == 2
    counts = {}
    for i in strat.tolist():
        counts[tile(i)] = counts.get(tile(i), 0) + 1
    assert len(counts) == t * (h // b) * (w // b) and set(counts.values()) == {2}     # 24 over 12 tiles of 16
    hot = [i for i in strat.tolist() if tile(i)[1:] == (0, 0)]
    for f in range(t):                                   # within the hot tile: its two best tokens
        best = torch.topk(score.view(t, h * w)[f].view(h, w)[:4, :4].flatten(), 2).values
        got = sorted((score[i].item() for i in hot if i // (h * w) == f), reverse=True)
        assert got == best.tolist()
    assert torch.equal(strat, torch.sort(strat).values) and strat.unique().numel() == n_keep


def test_block_option_keeps_the_same_budget(tiny):
    plain = run(tiny, make_accelerator("faststar", "prune-balanced"))
    spread = run(tiny, make_accelerator("faststar", "prune-balanced", block=2))
    assert [r["tokens_run"] for r in spread.stats] == [r["tokens_run"] for r in plain.stats]
    assert any(a is not None and not torch.equal(a, b) for a, b in zip(spread.masks, plain.masks))
    with pytest.raises(ValueError, match="block"):
        make_accelerator("faststar", "guided-balanced", block=-1)


def test_mask_video_shows_the_last_scale_that_ran(tiny):
    """balanced does not run the last scale: the overlay shows the selection of the scale before it."""
    from faststar.accel.viz import pruned_maps
    _, sched, _, _ = tiny
    out = run(tiny, make_accelerator("faststar", "balanced"))
    clip2 = [st.index for st in sched.steps if st.scale.clip == 2 and out.masks[st.index] is not None]
    skipped, partial = clip2[-1], clip2[-2]                       # clip 2 is the last clip: its last scale skips
    assert not out.masks[skipped].any() and out.masks[partial].any() and not out.masks[partial].all()
    maps = pruned_maps(out.masks, sched, (12, 16))
    kept = out.masks[partial][0].float()
    want = 1.0 - torch.nn.functional.interpolate(kept[None, None], size=(12, 16), mode="nearest")[0, 0].numpy()
    assert np.array_equal(maps[4], want)                          # latent frame 4 = clip 2's first frame


def test_spec_from_record_rebuilds_every_preset_exactly():
    """A results file's record -> a method string that rebuilds the same knobs today (preset names may change)."""
    from faststar.accel import accelerator_from_spec, spec_from_record
    for method, table in PRESETS.items():
        for preset in table:
            rec = make_accelerator(method, preset).describe()
            again = accelerator_from_spec(spec_from_record(rec)).describe()
            rec.pop("preset"), again.pop("preset")
            assert again == rec, (method, preset, spec_from_record(rec))
    old = make_accelerator("faststar", "guided-quality", keep_ratios=(0.5,)).describe()     # a 1-ratio tuple stays one
    del old["max_reps"], old["anchors"]                                             # a record from before those knobs
    acc = accelerator_from_spec(spec_from_record(old))
    assert acc.cfg.keep_ratios == (0.5,) and acc.cfg.max_reps == 0 and acc.cfg.anchors == 0.0
    assert spec_from_record(None) == "dense" and accelerator_from_spec(spec_from_record({"method": "dense"})) is None


def test_benchmark_method_lists_still_resolve():
    """benchmarks/methods/*.txt (the exact method lists behind RESULTS.md) must keep parsing as presets change."""
    from pathlib import Path

    from faststar.accel import accelerator_from_spec
    files = sorted((Path(__file__).resolve().parents[1] / "benchmarks" / "methods").glob("*.txt"))
    assert files
    for f in files:
        lines = [ln.strip() for ln in f.read_text().splitlines() if ln.strip()]
        assert lines, f
        for ln in lines:
            accelerator_from_spec(ln)


# ---------------------------------------------------------------------------------------------- filled skipped steps
def test_skipped_scale_filled_from_the_previous_scale(tiny):
    """keep ratio 0 with skipped="restore": no block runs on that scale (0 tokens, 0 FLOPs, as planned), but
    every position gets the code sampled from the previous scale's last-block hidden states resized to its grid,
    put through its head and guidance, with the step's own position-keyed uniforms; "mean" gives the mean code.
    A step a later clip attends to still runs dense."""
    from faststar.sampling import GuidanceConfig, expected_codes, guide, sample_bits, step_uniforms
    from faststar.vae.quant import bits_to_codes
    model, sched, text, _ = tiny
    kw = dict(keep_ratios=(0.0, 1.0, 1.0), update="restore")
    zero = run(tiny, make_accelerator("faststar", "guided-balanced", **kw))
    for fill in ("restore", "mean"):
        acc = make_accelerator("faststar", "guided-balanced", skipped=fill, **kw)
        log = recording(acc)
        out = run(tiny, acc)
        filled = [i for i, r in enumerate(out.stats) if r.get("filled") == fill]
        last = [st.index for st in sched.steps if st.scale.index_in_clip == 4 and st.scale.clip > 0]
        # clip 1's last scale is clip 2's context: it runs dense; clip 2's is filled
        assert filled == [last[-1]] and out.stats[last[0]]["tokens_run"] == out.stats[last[0]]["tokens"]
        i = filled[0]
        st, _, o = log[i]
        N, d = st.scale.num_tokens, st.scale.bits
        assert out.stats[i]["tokens_run"] == 0 and out.stats[i]["flops"] == 0.0 and not out.masks[i].any()
        prev_st, _, prev = log[st.scale.first_step - 1]
        fill_h = resize_tokens(prev.hidden, prev_st.scale.thw, st.scale.thw, "trilinear").to(o.hidden.dtype)
        assert torch.equal(o.hidden, fill_h)
        logits = model.logits(fill_h, d)
        guided = guide(logits[0], logits[1], st.scale.tau, GuidanceConfig())
        codes = o.codes[0].permute(1, 2, 3, 0).reshape(N, d)
        if fill == "restore":
            bits = sample_bits(guided, step_uniforms(SEED, st.index, N, d, "cpu"))
            assert torch.equal(codes, bits_to_codes(bits)) and torch.equal(out.bits[i].reshape(N, d), bits)
        else:
            torch.testing.assert_close(codes, expected_codes(guided), rtol=0, atol=1e-6)
        # every other step is as with zero fill: the videos differ only by this step's codes
        assert torch.equal(out.latent[:, :, :-3], zero.latent[:, :, :-3])
        assert not torch.equal(out.latent, zero.latent)
        fp = flop_plan(acc, schedule=sched, model_cfg=model.cfg, text_len=7)
        assert fp["total"] == pytest.approx(sum(r["flops"] for r in out.stats) + fp["text"], rel=1e-9)
        assert torch.equal(run(tiny, make_accelerator("faststar", "guided-balanced", skipped=fill, **kw)).latent,
                           out.latent)                                         # same seed, same video
    with pytest.raises(ValueError, match="skipped"):
        make_accelerator("faststar", "guided-balanced", skipped="restored")


def test_dropped_repetitions_filled_from_the_repetition_that_ran(tiny):
    """max_reps=1 with skipped_reps="restore": a dropped repetition runs no block and samples its codes from the
    hidden states of the scale's repetition that ran (its own uniforms); the zero fill keeps today's result."""
    model, sched, text, _ = tiny
    kw = dict(keep_ratios=(0.5, 1.0), update="restore", max_reps=1)
    zero = run(tiny, make_accelerator("faststar", "guided-balanced", **kw))
    assert torch.equal(run(tiny, make_accelerator("faststar", "guided-balanced", skipped_reps="zero", **kw)).latent,
                       zero.latent)
    acc = make_accelerator("faststar", "guided-balanced", skipped_reps="restore", **kw)
    log = recording(acc)
    out = run(tiny, acc)
    filled = [i for i, r in enumerate(out.stats) if r.get("filled")]
    dropped = [r["step"] for r in zero.stats if r["tokens_run"] == 0 and not r["teacher_forced"]]
    assert filled == dropped and filled
    for i in filled:
        st, _, o = log[i]
        ran_st, _, ran = log[st.scale.first_step]                             # repetition 0 ran
        assert ran_st.rep == 0 and out.stats[ran_st.index]["tokens_run"] > 0
        assert torch.equal(o.hidden, ran.hidden) and (o.codes != 0).all()
        assert out.stats[i]["tokens_run"] == 0 and out.stats[i]["flops"] == 0.0
    fp = flop_plan(acc, schedule=sched, model_cfg=model.cfg, text_len=7)
    assert fp["total"] == pytest.approx(sum(r["flops"] for r in out.stats) + fp["text"], rel=1e-9)


def test_bit_confidence_and_the_confidence_score(tiny):
    """bit_confidence: 0 for coin-flip bits, -> 1 for certain ones; spatial="confidence" keeps the tokens whose
    restored prediction is least decided, and runs exactly the planned tokens."""
    from faststar.accel.faststar import bit_confidence
    logits = torch.zeros(3, 8)                               # 3 tokens, 4 bits
    logits[1, 1::2] = 20.0                                   # token 1: every bit certainly 1
    logits[2, 1:4:2] = 20.0                                  # token 2: two bits certain, two coin flips
    c = bit_confidence(logits)
    torch.testing.assert_close(c, torch.tensor([0.0, 1.0, 0.5]), rtol=0, atol=1e-6)
    acc = make_accelerator("faststar", "prune-balanced", spatial="confidence", temporal="off")
    log = recording(acc)
    out = run(tiny, acc)
    pruned = [(i, st, o) for i, (st, _, o) in enumerate(log) if o.keep_idx is not None]
    assert pruned and not any(r.get("spatial_fallback") for r in out.stats)
    model = tiny[0]
    for i, st, o in pruned:
        prev_st, _, prev = log[st.scale.first_step - 1]
        g = resize_tokens(prev.hidden[:1], prev_st.scale.thw, st.scale.thw, "trilinear")
        conf = bit_confidence(model.logits(g, st.scale.bits)[0])
        n = out.stats[i]["n_keep"]
        assert o.keep_idx.numel() == n == out.stats[i]["tokens_run"]
        assert torch.equal(o.keep_idx, select_topk(normalize(1.0 - conf), n))


def test_reused_guidance_on_single_branch_steps(tiny):
    """reuse_guidance: a single-branch step samples from cond / tau plus the guidance correction of the clip's last
    two-branch step (its cond and uncond hidden states resized to this grid, through this step's head, APG over
    all positions); the FLOPs are those of plain single-branch guidance; without single-branch steps it is off."""
    from faststar.sampling import GuidanceConfig, guide, sample_bits, step_uniforms
    model, sched, text, dense = tiny
    kw = dict(single_branch_last=1, update="restore")
    acc = make_accelerator("faststar", "prune-balanced", reuse_guidance=True, **kw)
    log = recording(acc)
    out = run(tiny, acc)
    plain = run(tiny, make_accelerator("faststar", "prune-balanced", **kw))
    reused = [i for i, r in enumerate(out.stats) if r.get("guidance") == "reused"]
    assert reused == [i for i, r in enumerate(plain.stats) if r["branches"] == 1 and not r["teacher_forced"]]
    assert [r["flops"] for r in out.stats] == [r["flops"] for r in plain.stats]
    g = GuidanceConfig()
    for i in reused:
        st, _, o = log[i]
        src_st, _, src = max(((s_, c_, o_) for s_, c_, o_ in log[:i] if s_.scale.clip == st.scale.clip
                              and o_.hidden is not None and o_.hidden.shape[0] == 2
                              and o_.hidden.shape[1] == s_.scale.num_tokens), key=lambda x: x[0].index)
        N, d, tau = st.scale.num_tokens, st.scale.bits, st.scale.tau
        lg = model.logits(resize_tokens(src.hidden, src_st.scale.thw, st.scale.thw, "trilinear"), d)
        delta = guide(lg[0], lg[1], tau, g) - lg[0] / tau
        assert delta.abs().max() > 0
        expect = model.logits(o.hidden, d)[0] / tau + delta
        bits = sample_bits(expect, step_uniforms(SEED, st.index, N, d, "cpu"))
        assert (bits == out.bits[i].reshape(N, d)).float().mean() > 0.999       # float rounding of the sum only
    assert not torch.equal(out.latent, plain.latent)
    assert_same_as_dense(run(tiny, make_accelerator("faststar", "guided-balanced", keep_ratios=1.0,
                                                    reuse_guidance=True)), dense)


def test_single_branch_clip0_sets_clip0_apart(tiny):
    """single_branch_clip0 = n: the last n scales of clip 0 run one guidance branch whatever single_branch_last says
    for the video clips; -1 (default) follows single_branch_last; the FLOP plan agrees with the run."""
    model, sched, text, _ = tiny
    acc = make_accelerator("faststar", "guided-balanced", keep_ratios=1.0, single_branch_last=0, single_branch_clip0=2)
    out = run(tiny, acc)
    one = {(r["clip"], r["scale"]) for r in out.stats if r["branches"] == 1}
    clip0 = [s for s in sched.scales if s.clip == 0]
    assert one == {(0, s.index) for s in clip0[-2:]}
    fp = flop_plan(acc, schedule=sched, model_cfg=model.cfg, text_len=7)
    assert fp["total"] == pytest.approx(sum(r["flops"] for r in out.stats) + fp["text"], rel=1e-9)
    same = make_accelerator("faststar", "guided-balanced", keep_ratios=1.0, single_branch_last=1)
    assert all(same.budget(sched, st).branches == (1 if st.scale.index_in_clip == 4 else 2) for st in sched.steps)
    with pytest.raises(ValueError, match="single_branch_clip0"):
        make_accelerator("faststar", "guided-balanced", single_branch_clip0=-2)


def test_update_per_scale_partial_on_the_last_restore_before(tiny):
    """update=("partial", "restore"): the last prunable scale leaves pruned positions at zero codes, the one
    before fills them from the previous scale's hidden states; a parsed spec and its record agree."""
    from faststar.accel import accelerator_from_spec, spec_from_record
    model, sched, _, _ = tiny
    acc = accelerator_from_spec("faststar:prune-balanced+keep_ratios=0.5/0.5+update=partial/restore")
    assert acc.cfg.update == ("partial", "restore")
    assert accelerator_from_spec(spec_from_record(acc.describe())).cfg == acc.cfg
    log = recording(acc)
    run(tiny, acc)
    seen = {0: 0, 1: 0}
    for st, _, o in log:
        if o.keep_idx is None:
            continue
        j = len(sched.clip_scales(st.scale.clip)) - 1 - st.scale.index_in_clip
        N, d = st.scale.num_tokens, st.scale.bits
        codes_Nd = o.codes[0].permute(1, 2, 3, 0).reshape(N, d)
        pruned = torch.ones(N, dtype=torch.bool)
        pruned[o.keep_idx] = False
        seen[j] += 1
        if j == 0:                                        # Partial Update: zero codes, hidden only where kept
            assert (codes_Nd[pruned] == 0).all() and o.hidden.shape[1] == N - int(pruned.sum())
        else:                                             # restore: every position sampled, full hidden
            assert (codes_Nd[pruned].abs() == 1 / math.sqrt(d)).all() and o.hidden.shape[1] == N
    assert seen[0] > 0 and seen[1] > 0
    with pytest.raises(ValueError, match="update must be one of"):
        make_accelerator("faststar", update=("partial", "bogus"))


def test_proportional_attention_weights_only_pruned_steps(tiny):
    """proportional=True: at keep ratio 1 still bit-identical to dense; pruned, the same tokens run (same masks,
    same accounting) and the kept tokens' hidden states change; steps before the first pruned one are unchanged."""
    _, _, _, dense = tiny
    assert_same_as_dense(run(tiny, make_accelerator("faststar", keep_ratios=1.0, single_branch_last=0,
                                                    proportional=True)), dense)
    plain_acc = make_accelerator("faststar", "partial-balanced")
    prop_acc = make_accelerator("faststar", "partial-balanced", proportional=True)
    log_a, log_b = recording(plain_acc), recording(prop_acc)
    a, b = run(tiny, plain_acc), run(tiny, prop_acc)
    first = next(i for i, (_, _, o) in enumerate(log_a) if o.keep_idx is not None)
    for i in range(first):
        assert torch.equal(log_a[i][2].hidden, log_b[i][2].hidden)
    oa, ob = log_a[first][2], log_b[first][2]
    assert torch.equal(oa.keep_idx, ob.keep_idx) and torch.equal(a.masks[first], b.masks[first])
    assert oa.hidden.shape == ob.hidden.shape and not torch.allclose(oa.hidden.float(), ob.hidden.float())
    assert a.summary()["tokens_run"] == b.summary()["tokens_run"]


@torch.no_grad()
def test_hindsight_score_ranks_where_restore_failed_one_scale_earlier(tiny):
    """spatial="hindsight": E at a scale is zero where its hidden states equal the previous scale's resized
    (restoring would have drawn the same bits) and positive where they differ; the next scale ranks the
    positions under that region first."""
    from types import SimpleNamespace
    model, sched, _, _ = tiny
    clip1 = sched.clip_scales(1)
    s2, s3, s4 = clip1[2], clip1[3], clip1[4]
    acc = make_accelerator("faststar", "prune-balanced", spatial="hindsight", temporal="off")
    acc.reset(sched, model, SEED)
    g = torch.Generator().manual_seed(5)
    h2 = torch.randn(2, s2.num_tokens, model.cfg.width, generator=g)
    acc._prev.put(s2, h2)
    h3 = resize_tokens(h2, s2.thw, s3.thw, "trilinear").clone()
    t, hh, ww = s3.thw
    grid = torch.zeros(t, hh, ww, dtype=torch.bool)
    grid[:, :2, :2] = True                                     # the top-left corner of every frame changed
    h3[:, grid.flatten()] += 3.0 * torch.randn(2, int(grid.sum()), model.cfg.width, generator=g)
    acc._measure_restore_error(SimpleNamespace(scale=s3, model=model), h3)
    thw, err = acc._hindsight[(1, s3.index_in_clip)]
    assert thw == s3.thw and (err[~grid.flatten()] < 1e-5).all() and (err[grid.flatten()] > 1e-3).all()
    ctx = SimpleNamespace(scale=s4, canvas=None, x_view=None, prev_clip_canvas=None, schedule=sched, model=model)
    info = {}
    score = acc._importance(ctx, None, info)
    assert "spatial_fallback" not in info
    t4, h4, w4 = s4.thw
    top = score.view(t4, h4, w4)[:, :2, :2]                    # under the changed corner
    far = score.view(t4, h4, w4)[:, -2:, -2:]
    assert top.min() > far.max()


def test_copy_update_takes_the_latest_earlier_kept_frame_of_the_column(tiny):
    """update="copy": a pruned position's hidden states are those of the latest kept token of its (y, x) column
    at an earlier frame of the same step; with none, the previous scale's resized (restore)."""
    from faststar.accel.faststar import temporal_copy_sources
    src = temporal_copy_sources(torch.tensor([0, 3, 7]), (3, 2, 3)).view(3, 2, 3)
    assert src[:, 0, 0].tolist() == [0, 0, 0] and src[:, 1, 0].tolist() == [3, 3, 3]
    assert src[:, 0, 1].tolist() == [-1, 7, 7] and (src[:, :, 2] == -1).all()
    acc = make_accelerator("faststar", "prune-balanced", update="copy")
    log = recording(acc)
    run(tiny, acc)
    n_copied = n_restored = 0
    for st, _, o in log:
        if o.keep_idx is None:
            continue
        t, h, w = st.scale.thw
        N = st.scale.num_tokens
        kept = torch.zeros(N, dtype=torch.bool)
        kept[o.keep_idx] = True
        prev_st, _, prev = log[st.scale.first_step - 1]
        fill = resize_tokens(prev.hidden, prev_st.scale.thw, st.scale.thw, "trilinear").to(o.hidden.dtype)
        src = temporal_copy_sources(o.keep_idx, st.scale.thw)
        for i in range(N):
            if kept[i]:
                continue
            if src[i] >= 0:
                assert kept[src[i]] and src[i] % (h * w) == i % (h * w) and src[i] < i
                assert torch.equal(o.hidden[:, i], o.hidden[:, src[i]])
                n_copied += 1
            else:
                assert torch.equal(o.hidden[:, i], fill[:, i])
                n_restored += 1
    assert n_copied > 0 and n_restored > 0


def test_copy_source_selection_takes_turns_on_still_columns_and_keeps_what_moved():
    """temporal="copy_source": frame by frame, the temporal term compares a token with its column's copy source
    (the latest earlier frame where the column was kept), so on a still scene the frames take turns over the
    columns nothing covers yet, and a column whose content changed since its source is kept."""
    from faststar.accel.faststar import select_copy_source
    t, h, w = 3, 4, 4
    HW = h * w
    x = torch.ones(1, 2, t, h, w)                                   # the same vector everywhere: a still scene
    x[0, 1, :, :, :2] = 2.0                                         # two regions of different content
    base = torch.zeros(t * HW)
    base[:HW] = torch.arange(HW, dtype=torch.float) / HW            # frame 0 ranked by a spatial term only
    keep = select_copy_source(x, None, base, 3 * 8, w_tm=1.0)
    assert keep.numel() == 24 and torch.equal(keep, torch.sort(keep).values)
    per_frame = [set((keep[(keep >= f * HW) & (keep < (f + 1) * HW)] - f * HW).tolist()) for f in range(t)]
    assert [len(k) for k in per_frame] == [8, 8, 8]                 # each frame its share of the budget
    assert per_frame[0] == set(range(8, 16))                        # frame 0: the spatial term's top 8
    assert per_frame[1] == set(range(8))                            # frame 1: the columns without a source
    # frame 2: every column has a still source (dissimilarity 0): a tie, broken by the lower index
    assert per_frame[2] == set(range(8))
    # content that changes at frame 2 in columns 12..15 (kept at frame 0): those are kept again at frame 2
    x2 = x.clone()
    x2[0, 0, 2, 3, :] = -1.0
    keep2 = select_copy_source(x2, None, base, 3 * 8, w_tm=1.0)
    f2 = set((keep2[keep2 >= 2 * HW] - 2 * HW).tolist())
    assert set(range(12, 16)) <= f2 and len(f2) == 8
    # frame 0 against the preceding clip's last frame when given: a column that differs from it is kept first
    ref = torch.ones(1, 2, 1, h, w)
    ref[0, 1, 0, :, :2] = 2.0
    ref[0, 0, 0, 0, 0] = -5.0                                      # column 0 changed since the preceding clip
    keep3 = select_copy_source(x, ref, None, 3 * 1, w_tm=1.0)
    assert keep3[0].item() == 0
    with pytest.raises(ValueError, match="n_keep"):
        select_copy_source(x, None, base, 0)
    with pytest.raises(ValueError, match="mode='ratio'"):
        make_accelerator("faststar", "quality", temporal="copy_source", block=2, anchors=0.0)
