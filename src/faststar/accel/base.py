"""The one small interface between the generation loop and an accelerator.

At every step the loop builds a ``StepContext`` (read-only views of the loop state) and asks the active
accelerator for a ``StepPlan``: which tokens run (``keep_idx``), how many guidance branches run, whether the step
runs at all, whether pruned positions are restored from cached hidden states, and optionally a two-phase plan
(run the first ``prune_layer`` blocks on all tokens, then let ``select`` pick the tokens for the rest; ``select``
may return None to keep all, e.g. to only capture the hidden states). After the step the loop hands the
accelerator a ``StepOutput`` (``observe``) so it can keep whatever cache it needs.
The loop has no per-method branch: a method is only a plan. ``budget`` states, without tensors, what ``plan`` will
cost (for FLOP prediction before a run).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from ..schedule import Schedule, Step
from ..vae.quant import area_down


@dataclass
class StepPlan:
    keep_idx: torch.Tensor | None = None     # sorted token indices to run; None = all tokens
    branches: int = 2                        # 2 = cond + uncond (guidance), 1 = conditional branch only
    run: bool = True                         # False = skip the step: no forward, zero codes, canvas unchanged
    restore: Callable | None = None          # (h_kept [B,Nk,C], keep_idx, ctx) -> h_full [B,N,C]
    restored_codes: str = "sample"           # with restore: pruned positions get a "sample" or the "mean" code
    guidance_delta: Callable | None = None   # single-branch steps: (ctx, GuidanceConfig) -> [N, 2d] logits added
                                             # to the conditional ones (a guidance correction from cached states)
    prune_layer: int = 0                     # >0: blocks [0, prune_layer) run on all tokens first
    select: Callable | None = None           # (h_BNC after prune_layer blocks, ctx) -> keep_idx or None (= all)
    proportional: bool = False               # pruned blocks: each kept key of the step counts N / n_kept times
                                             # against the prefix's (text, reference) keys in attention, so the
                                             # kept tokens carry the attention mass all N would have had
    info: dict = field(default_factory=dict)


@dataclass(frozen=True)
class StepBudget:
    """What a step's plan costs, known from the schedule alone (no tensors): the FLOP prediction's input."""
    run: bool = True
    branches: int = 2                        # requested guidance branches (the loop caps it at its batch)
    tokens: int | None = None                # tokens through blocks [prune_layer, depth); None = all
    prune_layer: int = 0                     # blocks [0, prune_layer) run on all tokens


DENSE = StepPlan()


@dataclass
class StepContext:
    schedule: Schedule
    step: Step
    canvas: torch.Tensor                 # current clip's canvas before this step [1, 64, t_c, H, W] (fp32)
    prev_clip_canvas: torch.Tensor | None  # final canvas of the preceding clip, or None
    x_view: torch.Tensor                 # this step's input view area(canvas -> thw) [1, 64, t, h, w]
    tokens: torch.Tensor                 # word-embedded input tokens [N, C] (fp32)
    is_ref_step: bool                    # a later clip attends to this step's K/V
    teacher_forced: bool
    seed: int
    model: torch.nn.Module

    @property
    def scale(self):
        return self.step.scale

    @property
    def num_tokens(self) -> int:
        return self.step.scale.num_tokens

    def view(self, thw) -> torch.Tensor:
        return area_down(self.canvas, tuple(thw))


@dataclass
class StepOutput:
    step: Step
    keep_idx: torch.Tensor | None        # tokens that ran the (last) blocks (None = all), also on restored steps
    hidden: torch.Tensor | None          # last-block output [B, N_run, C] (restored to all N if restore ran)
    codes: torch.Tensor                  # code grid of this step [1, d, t, h, w] (zero where pruned)
    canvas: torch.Tensor                 # canvas after the update


class Accelerator:
    """Base class: the identity (every step dense). Subclasses override ``plan`` and maybe ``observe``."""

    name = "dense"

    def reset(self, schedule: Schedule, model, seed: int) -> None:
        """Called once at the start of every generation: drop all state."""

    def plan(self, ctx: StepContext) -> StepPlan:
        return DENSE

    def budget(self, schedule: Schedule, step: Step) -> StepBudget:
        """The cost of this step's plan without running it; must agree with ``plan`` (threshold modes: an upper
        bound on the tokens)."""
        return StepBudget()

    def observe(self, ctx: StepContext, out: StepOutput) -> None:
        """Called after every step that ran or was skipped."""

    def describe(self) -> dict:
        return {"method": self.name}
