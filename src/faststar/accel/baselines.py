"""The peer methods, rebuilt behind the same accelerator interface for side-by-side measurement.

- ``FastVAR``   pivotal tokens by distance from the step's mean hidden state; pruned slots restored from a cached
                earlier-scale branch output, resized (csguoh/FastVAR, adapted; see FastVARConfig for differences).
- ``StageVAR``  single guidance branch on the last scales (the guidance policy, ``guidance.py``) and an optional
                "low-rank" stand-in on the last scale (sen-mao/FasterVAR, adapted: no token mixing, see
                StageVARConfig).
- ``SkipScales`` skip the last n scales of each video clip (FastVAR's implicit skip, SkipVAR's action).
- ``random``    is FastSTAR with a random selector (``faststar.RandomPrune``).

Any method combines with single-branch late guidance (``single_branch_last`` in a method string).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..schedule import Schedule, Step
from .base import Accelerator, StepBudget, StepContext, StepOutput, StepPlan
from .faststar import ratios
from .guidance import position_from_end
from .restore import PrevScaleHidden, match_batch, resize_tokens
from .selection import keep_count, own_generator, select_topk


# ------------------------------------------------------------------------------------------------------------
# pure scores

def fastvar_score(h_BNC: torch.Tensor) -> torch.Tensor:
    """FastVAR's pivotal score per token [N]: squared L2 distance of its hidden state from the step's mean token
    (the map's "DC" component), in fp32, averaged over the guidance rows (one kept set for both rows)."""
    h = h_BNC.float()
    return (h - h.mean(dim=1, keepdim=True)).pow(2).sum(-1).mean(0)


def leverage_sample(tokens_NC: torch.Tensor, n: int, generator: torch.Generator, by_norm: bool = True
                    ) -> torch.Tensor:
    """n distinct token indices, drawn with probability proportional to each token's squared L2 norm
    (StageVAR's representative-token sampling) or uniformly; sorted ascending."""
    N = tokens_NC.shape[0]
    if by_norm:
        p = tokens_NC.float().pow(2).sum(-1).cpu()
        if not torch.isfinite(p).all() or float(p.sum()) <= 0:
            p = torch.ones(N)
    else:
        p = torch.ones(N)
    idx = torch.multinomial(p, n, replacement=False, generator=generator)
    return torch.sort(idx).values.to(tokens_NC.device)


# ------------------------------------------------------------------------------------------------------------
# FastVAR

@dataclass
class FastVARConfig:
    """FastVAR knobs, as the InfinityStar adaptation uses them.

    keep_ratios: keep ratio per scale counted from the clip's last scale (last, second last, ...); the scales
        listed (ratio < 1) are pruned, the rest run dense. FastVAR's own settings: Infinity-2B keeps 60% / 50% on
        the 4th / 3rd scale from the end (32, 40) and skips the last two; HART keeps 50% / 25% on the last two.
    prune_layer: blocks [0, prune_layer) run on all tokens, the score is taken on the hidden state there and
        blocks [prune_layer, depth) run on the kept tokens. None = round(3 / 32 * depth) (FastVAR-Infinity
        prunes from block 3 of 32). Difference: FastVAR runs its last 4 blocks dense again and rescores before
        every sub-layer; here the kept set is chosen once and holds to the last block.
    skip_last: skip the last n scales of each pruned clip outright (FastVAR-Infinity's silent 48/64 skip); 0 keeps
        the pruning result separate from skipping.
    prune_clip0: also prune clip 0 (the first frame).
    dense_ref_steps: a step that a later clip attends to runs dense.
    resize: how the cached branch output is resized ("area" as FastVAR does).

    Restoration: at the scale just before the first pruned scale of a clip, the branch output of blocks
    [prune_layer, depth) (last-block output minus the hidden state at prune_layer) is cached for all tokens. A
    pruned token's final hidden state = its hidden state at prune_layer + that cached delta resized to the
    current grid; kept tokens take their computed states. Logits and codes are produced for every position.
    """
    keep_ratios: tuple[float, ...] | float = (0.3, 0.55, 0.8)
    prune_layer: int | None = None
    skip_last: int = 0
    prune_clip0: bool = False
    dense_ref_steps: bool = False
    resize: str = "area"

    def __post_init__(self):
        r = ratios(self.keep_ratios)
        self.keep_ratios = (r,) if isinstance(r, float) else r
        if self.prune_layer is not None and self.prune_layer < 0:
            raise ValueError(f"prune_layer must be >= 0 or None, got {self.prune_layer}")
        if self.skip_last < 0:
            raise ValueError("skip_last must be >= 0")


class FastVAR(Accelerator):
    name = "fastvar"
    config_class = FastVARConfig

    def __init__(self, config: FastVARConfig | None = None, *, guidance=None, **overrides):
        super().__init__(config, guidance=guidance, **overrides)
        self._mid = None           # (step index, hidden state at prune_layer of that step, all tokens [B, N, C])
        self._delta = None         # (clip, thw, delta [B, N, C]) branch output of the cache scale

    @property
    def prune_layer(self) -> int:
        if self.depth is None:
            raise RuntimeError("FastVAR needs the model depth: setup(model_cfg) first")
        p = self.cfg.prune_layer if self.cfg.prune_layer is not None else round(3 / 32 * self.depth)
        return min(p, self.depth - 1)

    def reset(self, schedule: Schedule, seed: int) -> None:
        self._mid = self._delta = None

    # -- schedule logic ---------------------------------------------------------------------------------------
    def _in_clip(self, step: Step) -> bool:
        return step.scale.clip > 0 or self.cfg.prune_clip0

    def _ratio(self, schedule: Schedule, step: Step) -> float:
        j = position_from_end(schedule, step.scale)
        if not self._in_clip(step) or j < self.cfg.skip_last or j >= len(self.cfg.keep_ratios):
            return 1.0
        return self.cfg.keep_ratios[j]

    def _cache_position(self) -> int | None:
        """Position from the end of the cache scale: just before the first (coarsest) pruned scale."""
        pruned = [j for j, r in enumerate(self.cfg.keep_ratios) if r < 1.0 and j >= self.cfg.skip_last]
        return max(pruned) + 1 if pruned else None

    def budget(self, schedule: Schedule, step: Step) -> StepBudget:
        if self._in_clip(step) and position_from_end(schedule, step.scale) < self.cfg.skip_last:
            return StepBudget(run=False)
        rho = self._ratio(schedule, step)
        if rho >= 1.0 or (self.cfg.dense_ref_steps and schedule.is_ref_step(step)):
            return StepBudget()
        n = keep_count(rho, step.scale.num_tokens)
        if n >= step.scale.num_tokens:
            return StepBudget()
        return StepBudget(True, n, self.prune_layer)

    def _is_cache_step(self, schedule: Schedule, step: Step) -> bool:
        jc = self._cache_position()
        return jc is not None and self._in_clip(step) and position_from_end(schedule, step.scale) == jc

    # -- plan -------------------------------------------------------------------------------------------------
    def plan(self, ctx: StepContext) -> StepPlan:
        st, sch, p = ctx.step, ctx.schedule, self.prune_layer
        b = self.budget(sch, st)
        if not b.run:
            return StepPlan(run=False, info=dict(skipped=True))
        if b.tokens is None:
            if self._is_cache_step(sch, st):
                if p > 0:
                    return StepPlan(prune_layer=p, select_at_prune_layer=self._capture)
                self._mid = (st.index, ctx.tokens[None])
            return StepPlan()
        info = dict(keep_ratio=self._ratio(sch, st), n_keep=b.tokens)
        if p > 0:
            def at_prune_layer(h_BNC, ctx_, _n=b.tokens, _info=info):
                self._mid = (ctx_.step.index, h_BNC)
                return self._choose(h_BNC, _n, _info).to(h_BNC.device), self._fill(h_BNC, ctx_)
            return StepPlan(prune_layer=p, select_at_prune_layer=at_prune_layer, info=info)
        mid = match_batch(ctx.tokens[None], ctx.branches)
        self._mid = (st.index, ctx.tokens[None])
        keep = self._choose(ctx.tokens[None], b.tokens, info).to(ctx.tokens.device)
        return StepPlan(keep_idx=keep, fill=self._fill(mid, ctx), info=info)

    def _choose(self, h_BNC: torch.Tensor, n: int, info: dict) -> torch.Tensor:
        score = fastvar_score(h_BNC)
        info["score_mean"] = float(score.mean())
        return select_topk(score, n)

    def _capture(self, h_BNC: torch.Tensor, ctx: StepContext):
        self._mid = (ctx.step.index, h_BNC)
        return None, None

    def _fill(self, mid_BNC: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        """A pruned position's states: its hidden state at prune_layer plus the cache scale's branch output."""
        if self._delta is None or self._delta[0] != ctx.scale.clip:
            return mid_BNC
        _, thw, delta = self._delta
        B = mid_BNC.shape[0]
        return mid_BNC.to(delta.dtype) + match_batch(resize_tokens(delta, thw, ctx.scale.thw, self.cfg.resize), B)

    def observe(self, ctx: StepContext, out: StepOutput) -> None:
        st = ctx.step
        if (self._is_cache_step(ctx.schedule, st) and out.hidden is not None and out.keep_idx is None
                and self._mid is not None and self._mid[0] == st.index):
            h = out.hidden
            mid = match_batch(self._mid[1], h.shape[0])
            self._delta = (st.scale.clip, st.scale.thw, (h.float() - mid.float()).to(h.dtype))
        if self._delta is not None and self._delta[0] != st.scale.clip:
            self._delta = None                      # a new clip: the old cache is no use
        self._mid = None


# ------------------------------------------------------------------------------------------------------------
# StageVAR / FasterVAR

@dataclass
class StageVARConfig:
    """StageVAR's own knob beside single-branch guidance (the InfinityStar README runs single_branch_last=3,
    low_rank_last=1, rank_ratio=0.1; single_branch_last is the guidance policy of every method).

    low_rank_last: the last n scales of each clip run the "low-rank" stand-in. The original compresses the L
        tokens into r random mixtures; RoPE gives every token its own (t, h, w) position, so mixtures of tokens
        have no position and cannot run through our blocks. Our version: draw r = ceil(rank_ratio * N)
        representative tokens with probability proportional to their squared input norm (the original's
        leverage-style row sampling), run only those through all blocks at their true positions, and restore
        every other position from the previous scale's full last-block hidden states resized to the current
        grid ("representative token restoration"); logits and codes are produced for all positions. A step
        that a later clip attends to never takes this path (its K/V is the next clip's context).
    rank_ratio: r / N of the stand-in.
    sampling: "norm" (leverage-style) or "uniform".
    clip0: the stand-in on clip 0 as well; in a method string it sets single-branch guidance on clip 0 alike
        (``single_branch_clip0``) unless that is given.
    resize: resize mode of the restored hidden states ("area" as the original).
    seed_offset: varies the stand-in's own random stream.
    """
    low_rank_last: int = 0
    rank_ratio: float = 0.1
    sampling: str = "norm"
    clip0: bool = True
    resize: str = "area"
    seed_offset: int = 0

    def __post_init__(self):
        if self.low_rank_last < 0:
            raise ValueError("low_rank_last must be >= 0")
        if not 0.0 < self.rank_ratio <= 1.0:
            raise ValueError(f"rank_ratio must be in (0, 1], got {self.rank_ratio}")
        if self.sampling not in ("norm", "uniform"):
            raise ValueError(f"sampling must be 'norm' or 'uniform', got {self.sampling!r}")


class StageVAR(Accelerator):
    name = "stagevar"
    config_class = StageVARConfig

    def __init__(self, config: StageVARConfig | None = None, *, guidance=None, **overrides):
        super().__init__(config, guidance=guidance, **overrides)
        self._prev = PrevScaleHidden()  # previous scale's full last-block hidden

    def reset(self, schedule: Schedule, seed: int) -> None:
        self._prev.clear()

    def _low_rank(self, schedule: Schedule, step: Step) -> int | None:
        c, s = self.cfg, step.scale
        if c.low_rank_last <= 0 or (s.clip == 0 and not c.clip0) or schedule.is_ref_step(step):
            return None
        if position_from_end(schedule, s) >= c.low_rank_last:
            return None
        n = keep_count(c.rank_ratio, s.num_tokens)
        return n if n < s.num_tokens else None

    def budget(self, schedule: Schedule, step: Step) -> StepBudget:
        return StepBudget(tokens=self._low_rank(schedule, step))

    def plan(self, ctx: StepContext) -> StepPlan:
        b = self.budget(ctx.schedule, ctx.step)
        if b.tokens is None:
            return StepPlan()
        info = dict(rank_ratio=self.cfg.rank_ratio, n_keep=b.tokens)
        fill = self._prev.resized(ctx.scale, self.cfg.resize)
        if fill is None:
            info["low_rank_fallback"] = "no previous-scale hidden states: dense"
            return StepPlan(info=info)
        g = own_generator(ctx.seed + self.cfg.seed_offset, ctx.step.index, salt=2)
        keep = leverage_sample(ctx.tokens, b.tokens, g, by_norm=self.cfg.sampling == "norm")
        return StepPlan(keep_idx=keep, fill=fill, info=info)

    def observe(self, ctx: StepContext, out: StepOutput) -> None:
        st, sch, s = ctx.step, ctx.schedule, ctx.scale
        if not st.last_rep or s.index_in_clip + 1 >= len(sch.clip_scales(s.clip)):
            return
        nxt = sch.steps[sch.scales[s.index + 1].first_step]
        if self._low_rank(sch, nxt) is not None and out.hidden is not None and out.hidden.shape[1] == s.num_tokens:
            self._prev.put(s, out.hidden)


# ------------------------------------------------------------------------------------------------------------
# scale skipping

@dataclass
class SkipConfig:
    """last_n: skip the last n scales of each video clip (no forward, zero codes: the canvas stays as it is).
    A step that a later clip attends to always runs (the loop forces it: its K/V is the context).
    clip0: skip on clip 0 too."""
    last_n: int = 1
    clip0: bool = False

    def __post_init__(self):
        if self.last_n < 0:
            raise ValueError("last_n must be >= 0")


class SkipScales(Accelerator):
    name = "skip"
    config_class = SkipConfig

    def budget(self, schedule: Schedule, step: Step) -> StepBudget:
        s = step.scale
        skipped = (s.clip > 0 or self.cfg.clip0) and position_from_end(schedule, s) < self.cfg.last_n
        return StepBudget(run=not skipped)

    def plan(self, ctx: StepContext) -> StepPlan:
        b = self.budget(ctx.schedule, ctx.step)
        return StepPlan(run=b.run, info=dict(skipped=True) if not b.run else {})
