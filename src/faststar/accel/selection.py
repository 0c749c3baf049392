"""Which tokens of a step run: counts, the kept-set rules over a score, and the two selectors (FastSTAR's
importance, and the uniformly random control) that give the score. A selector is an argument of FastSTAR, so the
control is FastSTAR with one part swapped, nothing overridden."""
from __future__ import annotations

import math

import torch

from .base import StepContext
from .scores import detail_energy, importance, scale_views, spatial_similarity, temporal_similarity


def keep_count(ratio: float, n: int) -> int:
    """ceil(ratio * n) clamped to [1, n] (ratio rounded to 1e-9 so that 0.3 * 10 keeps 3, not 4)."""
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"keep ratio must be in (0, 1], got {ratio}")
    return max(1, min(n, math.ceil(round(ratio * n, 9))))


def own_generator(seed: int, step: int, salt: int = 0) -> torch.Generator:
    """A CPU generator of the accelerator's own, keyed by (seed, step, salt): the sampler's stream is untouched."""
    g = torch.Generator(device="cpu")
    g.manual_seed((int(seed) * 2_654_435_761 + 97_531 * (int(step) + 1) + 1_000_003 * int(salt)) % (2 ** 63 - 1))
    return g


def select_topk(score_N: torch.Tensor, n_keep: int) -> torch.Tensor:
    """Indices of the n_keep highest scores (ties: lower index first), sorted ascending (coalesced gathers)."""
    n = score_N.numel()
    if not 1 <= n_keep <= n:
        raise ValueError(f"n_keep must be in [1, {n}], got {n_keep}")
    order = torch.sort(score_N, descending=True, stable=True).indices[:n_keep]
    return torch.sort(order).values


def select_anchored(score_N: torch.Tensor, n_keep: int, share: float, generator: torch.Generator) -> torch.Tensor:
    """n_keep indices: ``round(share * n_keep)`` of them uniformly at random (context spread over the whole step,
    whatever the score), the rest the highest-scoring of the others. Sorted ascending."""
    N = score_N.numel()
    n_a = min(n_keep, int(round(share * n_keep)))
    s = score_N.detach().float().clone()           # stays on its device: no copy of the scores to the host
    if n_a > 0:
        s[torch.randperm(N, generator=generator)[:n_a].to(s.device)] = float("inf")
    return select_topk(s, n_keep)


def select_stratified(score_N: torch.Tensor, thw: tuple[int, int, int], n_keep: int, block: int) -> torch.Tensor:
    """n_keep indices spread over the grid: every (1 x block x block) tile of every frame keeps about the same share
    of its tokens, the highest-scoring ones of the tile (round-robin over tiles by within-tile rank, ties by score).
    Sorted ascending."""
    n = score_N.numel()
    t, h, w = thw
    if n != t * h * w:
        raise ValueError(f"{n} scores for a {thw} grid")
    if not 1 <= n_keep <= n:
        raise ValueError(f"n_keep must be in [1, {n}], got {n_keep}")
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    dev = score_N.device
    f = torch.arange(t, device=dev).view(t, 1, 1)
    y = torch.arange(h, device=dev).view(1, h, 1) // block
    x = torch.arange(w, device=dev).view(1, 1, w) // block
    nby, nbx = -(-h // block), -(-w // block)
    tile = ((f * nby + y) * nbx + x).flatten()                               # [N] tile id of each token
    by_score = torch.sort(score_N.float(), descending=True, stable=True).indices
    order = by_score[torch.sort(tile[by_score], stable=True).indices]       # grouped by tile, best first
    sizes = torch.bincount(tile, minlength=int(tile.max()) + 1)
    starts = torch.cumsum(sizes, 0) - sizes
    pos = torch.arange(n, device=dev) - starts[tile[order]]                  # rank within the tile
    frac = (pos.float() + 0.5) / sizes[tile[order]].float()                  # share of the tile kept so far
    pick = order[torch.sort(frac, stable=True).indices[:n_keep]]             # stable: ties keep score order
    return torch.sort(pick).values


def select(score_N: torch.Tensor, thw: tuple[int, int, int], n_keep: int, *, block: int = 0, share: float = 0.0,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """The kept set from a score: spread over block x block tiles, anchored (a share drawn uniformly), or top-k."""
    if block > 0:
        return select_stratified(score_N, thw, n_keep, block)
    if share > 0:
        if generator is None:
            raise ValueError("share > 0 draws tokens at random: pass a generator")
        return select_anchored(score_N, n_keep, share, generator)
    return select_topk(score_N, n_keep)


class ImportanceSelector:
    """FastSTAR's score of a step (scores.importance) from the canvas before it."""

    def __init__(self, w_sp: float = 1.0, w_tm: float = 1.0, w_detail: float = 0.0, combine: str = "sum",
                 eps: float = 1e-6):
        self.w_sp, self.w_tm, self.w_detail, self.combine, self.eps = w_sp, w_tm, w_detail, combine, eps

    def score(self, ctx: StepContext, info: dict) -> torch.Tensor:
        s = ctx.scale
        prev_thw = (s.thw[0], 1, 1) if s.index_in_clip == 0 else ctx.schedule.scales[s.index - 1].thw
        s_sp = s_tm = dt = None
        if self.w_sp != 0:
            s_sp = spatial_similarity(*scale_views(ctx.canvas, s.thw, prev_thw), self.eps)
            info["s_sp_mean"] = float(s_sp.mean())
        if self.w_tm != 0:
            s_tm = temporal_similarity(ctx.x_view, ctx.prev_clip_canvas, self.eps)
            if s_tm is not None:
                info["s_tm_mean"] = float(s_tm.mean())
        if self.w_detail != 0:
            dt = detail_energy(ctx.x_view)
            info["detail_mean"] = float(dt.mean())
        return importance(s_sp, s_tm, self.w_sp, self.w_tm, dt, self.w_detail, self.combine)


class RandomSelector:
    """The control: a uniform random score, from the accelerator's own generator keyed by (seed + seed_offset,
    step), so that the sampler's stream is unchanged."""

    def __init__(self, seed_offset: int = 0):
        self.seed_offset = seed_offset

    def score(self, ctx: StepContext, info: dict) -> torch.Tensor:
        g = own_generator(ctx.seed + self.seed_offset, ctx.step.index, salt=1)
        return torch.rand(ctx.num_tokens, generator=g).to(ctx.canvas.device)
