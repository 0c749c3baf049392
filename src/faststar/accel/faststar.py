"""FastSTAR: spatiotemporal token pruning of the late scales of each video clip (``method.md``).

At a pruned step the tokens with the highest importance (``scores.py``: spatial and temporal dissimilarity of the
canvas views) run; the others get, by ``update``:
- "partial": a zero code (the canvas keeps its value there: Partial Update);
- "restore": the previous scale's last-block hidden states, resized, and are sampled like the rest;
- "copy": the hidden states of the latest earlier frame of their (y, x) column that ran in this step (temporal
  redundancy used directly), restored as above where there is none.
Keep ratio 0 means the scale does not run at all. Which step keeps how many tokens is a pure function of the
schedule: a table built once per schedule (``rules``), read by ``plan`` and by the FLOP prediction (``budget``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..schedule import Schedule, Step
from .base import Accelerator, StepBudget, StepContext, StepOutput, StepPlan
from .guidance import position_from_end
from .restore import PrevScaleHidden, temporal_copy_sources
from .scores import COMBINES
from .selection import ImportanceSelector, RandomSelector, keep_count, own_generator, select

UPDATES = ("partial", "restore", "copy")
RESTORING = ("restore", "copy")          # updates that give every pruned position hidden states


def detail_scale_count(schedule: Schedule, clip: int) -> int:
    """Scales of the clip that use the detail head (64 bits): the default prunable set."""
    return sum(not s.semantic for s in schedule.clip_scales(clip))


def ratios(v) -> float | tuple[float, ...]:
    """Keep ratios as given: one float (every prunable scale) or a tuple (per scale from the clip's last)."""
    value = float(v) if isinstance(v, (int, float)) else tuple(float(x) for x in v)
    for r in (value,) if isinstance(value, float) else value:
        if not 0.0 <= r <= 1.0:
            raise ValueError(f"keep ratios must be in [0, 1] (0 = the scale does not run), got {v}")
    return value


def per_scale(value: float | tuple[float, ...], j: int, default: float) -> float:
    """A per-scale knob at position ``j`` from the clip's last scale (a float: every scale; past a tuple:
    ``default``)."""
    if isinstance(value, float):
        return value
    return value[j] if j < len(value) else default


@dataclass
class FastSTARConfig:
    """FastSTAR knobs (presets.py names the combinations that ship).

    keep_ratios: keep ratio per prunable scale from the clip's LAST scale: (last, second last, ...); 0 = the scale
        does not run; scales past the tuple run dense; one float = every prunable scale.
    last_k: how many of each clip's last scales are prunable; None = the detail (64-bit) scales. Clip 0 (the first
        frame) is never pruned: it is one frame, cheap, and every later clip starts from it.
    update: "partial", "restore" or "copy" (module docstring).
    w_sp, w_tm, w_detail: weights of the spatial, temporal and detail terms of the importance (scores.py).
    combine: "sum" (weighted sum of rank-normalized terms) or "l2" (L2 norm of the weighted raw terms).
    anchors: share of the kept tokens drawn uniformly at random (context spread over the step), the rest by score.
    block: > 0 spreads the kept tokens instead: every block x block tile of a frame keeps about the same share.
    max_reps: > 0 runs at most this many (the first) repetitions of each prunable scale; the rest do not run.
    dense_last_rep: the last repetition of a repeated prunable scale runs dense (it settles what the scale adds).
    """
    keep_ratios: tuple[float, ...] | float = (0.3, 0.55, 0.8)
    last_k: int | None = None
    update: str = "partial"
    w_sp: float = 1.0
    w_tm: float = 1.0
    w_detail: float = 0.0
    combine: str = "sum"
    anchors: float = 0.0
    block: int = 0
    max_reps: int = 0
    dense_last_rep: bool = False

    def __post_init__(self):
        self.keep_ratios = ratios(self.keep_ratios)
        for name in ("w_sp", "w_tm", "w_detail", "anchors"):
            setattr(self, name, float(getattr(self, name)))      # "w_detail=1" and 1.0 are the same config
        for name, val, ok in (("update", self.update, UPDATES), ("combine", self.combine, COMBINES)):
            if val not in ok:
                raise ValueError(f"{name} must be one of {ok}, got {val!r}")
        if self.last_k is not None and self.last_k < 0:
            raise ValueError(f"last_k must be >= 0 or None, got {self.last_k}")
        if self.block < 0:
            raise ValueError(f"block must be >= 0 (0 = plain top-k), got {self.block}")
        if not 0.0 <= self.anchors <= 1.0:
            raise ValueError(f"anchors must be in [0, 1] (share of kept tokens drawn at random), got {self.anchors}")
        if self.anchors > 0 and self.block > 0:
            raise ValueError("anchors and block are two ways to spread the kept tokens: set one of them")
        if self.max_reps < 0:
            raise ValueError(f"max_reps must be >= 0 (0 = every repetition), got {self.max_reps}")


@dataclass(frozen=True)
class StepRule:
    """What FastSTAR does at one step, from the schedule alone."""
    run: bool = True
    n_keep: int | None = None            # tokens that run; None = dense
    keep_ratio: float | None = None      # the scale's keep ratio (None: not a prunable scale)
    store_hidden: bool = False           # the next scale restores from this step's last-block states


class FastSTAR(Accelerator):
    """Spatiotemporal token pruning (module docstring). ``selector`` gives each pruned step's score: FastSTAR's
    importance by default; ``RandomSelector`` makes the random control."""

    name = "faststar"
    config_class = FastSTARConfig

    def __init__(self, config: FastSTARConfig | None = None, *, selector=None, guidance=None, **overrides):
        super().__init__(config, guidance=guidance, **overrides)
        c = self.cfg
        if selector is None:
            if c.w_sp == c.w_tm == c.w_detail == 0:
                raise ValueError("w_sp, w_tm and w_detail are all 0: nothing to score (the 'random' method is "
                                 "the unscored control)")
            selector = ImportanceSelector(c.w_sp, c.w_tm, c.w_detail, c.combine)
        self.selector = selector
        self._prev = PrevScaleHidden()   # previous scale's full last-block hidden states (restore)
        self._rules: tuple[Schedule | None, list[StepRule]] = (None, [])

    def reset(self, schedule: Schedule, seed: int) -> None:
        self._prev.clear()
        self.rules(schedule)

    # -- the per-schedule table --------------------------------------------------------------------------------
    def rules(self, schedule: Schedule) -> list[StepRule]:
        """One StepRule per step of ``schedule``, built once per schedule."""
        if self._rules[0] is not schedule:
            rules = [self._rule(schedule, st) for st in schedule.steps]
            for i, st in enumerate(schedule.steps):
                rules[i] = _with_store(rules[i], self._stores(schedule, st, rules))
            self._rules = (schedule, rules)
        return self._rules[1]

    def _scale_ratio(self, schedule: Schedule, scale) -> float | None:
        k = self.cfg.last_k if self.cfg.last_k is not None else detail_scale_count(schedule, scale.clip)
        j = position_from_end(schedule, scale)
        if scale.clip == 0 or j >= k:
            return None
        return per_scale(self.cfg.keep_ratios, j, 1.0)

    def _runs_reps(self, schedule: Schedule, scale) -> int:
        """Repetitions of a prunable scale that run (``max_reps``; a scale with a referenced step runs all)."""
        r = self.cfg.max_reps
        if r <= 0 or r >= scale.reps or any(schedule.is_ref_step(schedule.steps[scale.first_step + i])
                                            for i in range(scale.reps)):
            return scale.reps
        return r

    def _rule(self, schedule: Schedule, st: Step) -> StepRule:
        s = st.scale
        rho = self._scale_ratio(schedule, s)
        if rho is None:
            return StepRule()
        if self.cfg.dense_last_rep and s.reps > 1 and st.last_rep:
            return StepRule(keep_ratio=rho)
        if rho == 0.0 or st.rep >= self._runs_reps(schedule, s):
            return StepRule(run=False, keep_ratio=rho)
        n = keep_count(rho, s.num_tokens) if rho < 1.0 else s.num_tokens
        return StepRule(n_keep=n if n < s.num_tokens else None, keep_ratio=rho)

    def _stores(self, schedule: Schedule, st: Step, rules: list[StepRule]) -> bool:
        """This step's last-block states are needed: the next scale of the clip is pruned and restores."""
        s = st.scale
        if s.index_in_clip + 1 >= len(schedule.clip_scales(s.clip)) or self.cfg.update not in RESTORING:
            return False
        nxt = rules[schedule.scales[s.index + 1].first_step]
        return nxt.run and nxt.n_keep is not None

    def budget(self, schedule: Schedule, step: Step) -> StepBudget:
        r = self.rules(schedule)[step.index]
        return StepBudget(run=r.run, tokens=r.n_keep)

    # -- one step ----------------------------------------------------------------------------------------------
    def plan(self, ctx: StepContext) -> StepPlan:
        r = self.rules(ctx.schedule)[ctx.step.index]
        if not r.run:
            return StepPlan(run=False, info=dict(keep_ratio=0.0, n_keep=0))
        if r.n_keep is None:
            return StepPlan()
        info = dict(keep_ratio=r.keep_ratio, n_keep=r.n_keep, update=self.cfg.update)
        keep = self._select(ctx, r.n_keep, info)
        plan = StepPlan(keep_idx=keep, info=info)
        if self.cfg.update in RESTORING:
            plan.fill = self._prev.resized(ctx.scale, "trilinear")
            if plan.fill is None:
                info["restore_fallback"] = "no previous-scale hidden states: partial update"
            elif self.cfg.update == "copy":
                plan.copy_from = temporal_copy_sources(keep, ctx.scale.thw)
        return plan

    def _select(self, ctx: StepContext, n_keep: int, info: dict) -> torch.Tensor:
        score = self.selector.score(ctx, info)
        share = self.cfg.anchors
        gen = own_generator(ctx.seed, ctx.step.index, salt=2) if share > 0 else None
        keep = select(score, ctx.scale.thw, n_keep, block=self.cfg.block, share=share, generator=gen)
        info["kept_fraction"] = keep.numel() / ctx.num_tokens
        return keep.to(ctx.canvas.device)

    def observe(self, ctx: StepContext, out: StepOutput) -> None:
        h = out.hidden
        if h is not None and h.shape[1] == ctx.num_tokens and self.rules(ctx.schedule)[ctx.step.index].store_hidden:
            self._prev.put(ctx.scale, h)


def _with_store(rule: StepRule, store: bool) -> StepRule:
    return rule if rule.store_hidden == store else StepRule(rule.run, rule.n_keep, rule.keep_ratio, store)


@dataclass
class RandomConfig(FastSTARConfig):
    """FastSTAR's knobs (the score weights unread) and the control's own random stream."""
    seed_offset: int = 0


class RandomPrune(FastSTAR):
    """The control: FastSTAR with a uniformly random score (``RandomSelector``) at the same ratios, update and
    guidance; random presets drop the knobs that spread FastSTAR's kept set (block, anchors)."""

    name = "random"
    config_class = RandomConfig

    def __init__(self, config: RandomConfig | None = None, *, guidance=None, **overrides):
        cfg = config if config is not None else RandomConfig()
        seed_offset = overrides.get("seed_offset", cfg.seed_offset)
        super().__init__(cfg, selector=RandomSelector(seed_offset), guidance=guidance, **overrides)
