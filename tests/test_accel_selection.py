"""Kept sets (accel/selection.py): counts, top-k, anchored and stratified spreads, and the selectors; the random
control is FastSTAR with a RandomSelector, nothing overridden."""
import pytest
import torch

from faststar.accel import make_accelerator
from faststar.accel.faststar import FastSTAR, RandomPrune
from faststar.accel.selection import (RandomSelector, keep_count, own_generator, select, select_anchored,
                                      select_stratified, select_topk)
from tiny_accel import plain, run, tiny  # noqa: F401


def test_topk_and_counts():
    assert torch.equal(select_topk(torch.tensor([1.0, 5.0, 5.0, 0.0, 7.0]), 3), torch.tensor([1, 2, 4]))
    assert torch.equal(select_topk(torch.tensor([2.0, 2.0, 2.0]), 2), torch.tensor([0, 1]))   # ties: lower index
    assert keep_count(0.3, 10) == 3 and keep_count(0.55, 72) == 40 and keep_count(0.001, 10) == 1
    with pytest.raises(ValueError, match="keep ratio"):
        keep_count(0.0, 10)
    with pytest.raises(ValueError, match="n_keep"):
        select_topk(torch.ones(3), 4)


def test_anchored_selection_mixes_random_context_with_top_scores():
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
    assert torch.equal(select(score, (1, 10, 10), 20, share=0.5, generator=g()), keep)
    with pytest.raises(ValueError, match="generator"):
        select(score, (1, 10, 10), 20, share=0.5)
    with pytest.raises(ValueError, match="anchors"):
        plain(anchors=1.5)
    with pytest.raises(ValueError, match="set one of them"):
        plain(anchors=0.5, block=4)


def test_stratified_selection_spreads_kept_tokens_over_tiles():
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
    assert torch.equal(select(score, (t, h, w), n_keep, block=b), strat)


def test_block_option_keeps_the_same_budget(tiny):
    spread = run(tiny, plain(update="restore", block=2))
    top = run(tiny, plain(update="restore"))
    assert [r["tokens_run"] for r in spread.stats] == [r["tokens_run"] for r in top.stats]
    assert any(a is not None and not torch.equal(a, b) for a, b in zip(spread.masks, top.masks))
    with pytest.raises(ValueError, match="block"):
        plain(block=-1)


def test_random_control_is_faststar_with_a_random_selector(tiny):
    """random = FastSTAR with RandomSelector: the same plan, a seeded uniform draw of the kept set from its own
    generator (the global stream untouched), different from FastSTAR's and from another seed_offset."""
    state = torch.get_rng_state()
    a = run(tiny, make_accelerator("random", "paper"))
    assert torch.equal(torch.get_rng_state(), state)
    composed = FastSTAR(make_accelerator("random", "paper").cfg, selector=RandomSelector(0))
    b = run(tiny, composed)
    c = run(tiny, make_accelerator("random", "paper", seed_offset=1))
    f = run(tiny, make_accelerator("faststar", "paper"))
    pruned = [i for i, m in enumerate(a.masks) if m is not None]
    assert pruned and pruned == [i for i, m in enumerate(f.masks) if m is not None]
    assert torch.equal(a.latent, b.latent) and all(torch.equal(a.masks[i], b.masks[i]) for i in pruned)
    assert any(not torch.equal(a.masks[i], c.masks[i]) for i in pruned)
    assert any(not torch.equal(a.masks[i], f.masks[i]) for i in pruned)
    for i in range(pruned[0]):                                   # steps before the first pruned one: = dense
        assert torch.equal(a.bits[i], tiny[3].bits[i])
    assert isinstance(make_accelerator("random"), RandomPrune)
    with pytest.raises(ValueError, match="nothing to score"):
        plain(w_sp=0, w_tm=0)
    run(tiny, make_accelerator("random", w_sp=0, w_tm=0))        # the control reads no score weight
