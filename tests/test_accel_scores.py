"""FastSTAR's importance score (accel/scores.py) on constructed canvases."""
import math

import pytest
import torch

from faststar.accel.scores import (channel_cosine, detail_energy, importance, rank_normalize, scale_views,
                                   spatial_similarity, temporal_similarity)
from faststar.accel.selection import select_topk


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
    s = temporal_similarity(cur, prev).reshape(3, 8, 8)
    moving = s < 0.5
    expect = torch.zeros(3, 8, 8, dtype=torch.bool)
    expect[1, 0:2, 0:4] = True                                      # frame 1: left (0:2) and entered (2:4)
    expect[2, 0:2, 2:6] = True
    assert torch.equal(moving, expect)
    assert torch.equal(s[~expect], torch.ones(int((~expect).sum())))
    assert temporal_similarity(cur, None) is None                   # clip 0: no preceding clip


def test_importance_keeps_moving_and_unconverged_tokens():
    cur, prev = _moving_blob()
    s_tm = temporal_similarity(cur, prev)
    s_sp = torch.ones_like(s_tm)
    s_sp[:5] = 0.5                                                  # a few unconverged tokens in frame 0
    keep = select_topk(importance(s_sp, s_tm, 1.0, 1.0), 16 + 5)
    moving = (s_tm < 0.5).nonzero().flatten()
    assert set(moving.tolist()) | set(range(5)) == set(keep.tolist())
    assert torch.equal(keep, torch.sort(keep).values)


def test_l2_combination_of_the_two_dissimilarities():
    """combine="l2" (the paper preset): I = ||(1 - S_sp, 1 - S_tm)||_2 on the raw terms, so one large
    dissimilarity outranks two middling ones (a rank sum would tie them)."""
    s_sp = torch.tensor([1.0, 0.0, 0.5, 0.6, 1.0])
    s_tm = torch.tensor([1.0, 1.0, 0.5, 0.2, 0.7])
    got = importance(s_sp, s_tm, combine="l2")
    want = torch.tensor([0.0, 1.0, math.sqrt(0.5), math.sqrt(0.4 ** 2 + 0.8 ** 2), 0.3])
    torch.testing.assert_close(got, want)
    assert select_topk(got, 2).tolist() == [1, 3]                  # (1, 0) and (0.4, 0.8) beat (0.5, 0.5)
    torch.testing.assert_close(importance(s_sp, None, combine="l2"), 1 - s_sp)   # clip 0: the spatial term alone
    torch.testing.assert_close(importance(s_sp, s_tm, 2.0, 1.0, combine="l2"),
                               ((2 * (1 - s_sp)) ** 2 + (1 - s_tm) ** 2).sqrt())
    with pytest.raises(ValueError, match="combine must be one of"):
        importance(s_sp, s_tm, combine="max")


def test_detail_energy_marks_edges_and_adds_to_importance():
    x = torch.zeros(1, 4, 2, 5, 6)
    assert torch.equal(detail_energy(x), torch.zeros(2 * 5 * 6))           # flat: no detail
    x[:, :, :, :, 3:] = 1.0                                                  # a vertical edge between x=2 and x=3
    d = detail_energy(x).view(2, 5, 6)
    assert torch.allclose(d[:, :, 2], torch.full((2, 5), 4.0))              # 4 channels, step 1 each
    d[:, :, 2] = 0
    assert torch.equal(d, torch.zeros(2, 5, 6))                              # nothing anywhere else
    flat = torch.ones(60)
    imp = importance(flat, None, 1.0, 1.0, detail=detail_energy(x), w_detail=1.0)
    assert set(select_topk(imp, 10).view(-1).tolist()) == {f * 30 + y * 6 + 2 for f in range(2) for y in range(5)}
    assert torch.equal(importance(flat, None, detail=detail_energy(x), w_detail=0.0),
                       importance(flat, None))                                # weight 0: the term is off
    with pytest.raises(ValueError, match="at least one score term"):
        importance(None, None)


def test_rank_normalize_shares_ranks_of_ties():
    r = rank_normalize(torch.tensor([0.0, 0.0, 1.0, 2.0]))
    assert torch.allclose(r, torch.tensor([0.5, 0.5, 2.0, 3.0]) / 3)
    assert torch.equal(rank_normalize(torch.tensor([5.0])), torch.zeros(1))
