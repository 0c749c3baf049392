"""The one small interface between the generation loop and an accelerator.

Before every step the loop builds a ``StepContext`` (read-only views of the loop state) and asks the accelerator
for a ``StepPlan``: whether the step runs, which tokens run (``keep_idx``), and for a restoring method the hidden
states of the positions that do not run (``fill``). After the step the loop hands it a ``StepOutput``
(``observe``) so that it can keep whatever cache a later step needs. ``budget`` states, without tensors, what
``plan`` will run (the FLOP prediction's input). How many guidance branches run is not the method's business: the
accelerator's ``guidance`` policy (``guidance.LateSingleBranch``) says it, beside any method.

config / init / describe / setup live here, so a method is a config class plus ``budget``, ``plan`` and maybe
``observe``, ``reset``. The loop has no per-method branch.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Callable

import torch

from ..schedule import Schedule, Step
from .guidance import TWO_BRANCHES, LateSingleBranch


@dataclass
class StepPlan:
    run: bool = True                          # False = skip the step: no forward, zero codes, canvas unchanged
    keep_idx: torch.Tensor | None = None      # sorted token indices to run; None = all tokens
    fill: torch.Tensor | None = None          # [1 or B, N, C] hidden states of every position: the positions that
                                              # did not run take them (restore); None = zero codes there (Partial
                                              # Update)
    copy_from: torch.Tensor | None = None     # [N] with fill: a pruned position takes the computed states of this
                                              # position instead where >= 0 (restore.temporal_copy_sources)
    prune_layer: int = 0                      # with select_at_prune_layer: blocks [0, prune_layer) run on all tokens
    # The one call back into the accelerator in the middle of a step. It exists because some methods (FastVAR)
    # score tokens on the hidden states after ``prune_layer`` blocks, which exist only then: (h [B, N, C], ctx)
    # -> (keep_idx or None = all, fill or None). Blocks [prune_layer, depth) then run on the kept tokens.
    select_at_prune_layer: Callable | None = None
    info: dict = field(default_factory=dict)  # per-step facts for the stats (keep ratio, score means, ...)


@dataclass(frozen=True)
class StepBudget:
    """What a step's plan runs, known from the schedule alone (no tensors): the FLOP prediction's input."""
    run: bool = True
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
    seed: int
    branches: int                        # guidance rows this step runs (1 or 2)
    head: Callable                       # h [B, n, C] -> this step's logits [B, n, 2 bits] (fp32)

    @property
    def scale(self):
        return self.step.scale

    @property
    def num_tokens(self) -> int:
        return self.step.scale.num_tokens


@dataclass
class StepOutput:
    step: Step
    keep_idx: torch.Tensor | None        # tokens that ran the (last) blocks (None = all), also on restored steps
    hidden: torch.Tensor | None          # last-block output [B, N_run, C] (restored to all N if fill was given)
    codes: torch.Tensor                  # code grid of this step [1, d, t, h, w] (zero where pruned)
    canvas: torch.Tensor                 # canvas after the update


def step_mode(run: bool, *, teacher_forced: bool, is_ref: bool, skip_unread: bool) -> str:
    """The loop's forcing rules, shared with the FLOP prediction: "plan" (the method's plan), "dense" or "skip".
    A teacher-forced step runs dense, or not at all when nothing reads its K/V; a step that a later clip attends
    to always runs (its K/V is that clip's context)."""
    if teacher_forced:
        return "skip" if skip_unread and not is_ref else "dense"
    if is_ref and not run:
        return "dense"
    return "plan" if run else "skip"


class Accelerator:
    """Base class: the identity (every step dense), with two-branch guidance unless a policy says otherwise."""

    name = "dense"
    config_class: type | None = None     # the method's knobs (a dataclass); None = no knobs

    def __init__(self, config=None, *, guidance: LateSingleBranch | None = None, **overrides):
        if self.config_class is None:
            if config is not None or overrides:
                raise TypeError(f"{self.name} has no knobs, got {config or overrides}")
            self.cfg = None
        else:
            cfg = config if config is not None else self.config_class()
            self.cfg = replace(cfg, **overrides) if overrides else cfg
        self.guidance = guidance if guidance is not None else TWO_BRANCHES
        self.preset: str | None = None
        self.depth: int | None = None

    def setup(self, model_cfg) -> None:
        """Bind to a model's shape (the FLOP prediction calls it too, with no model)."""
        self.depth = model_cfg.depth

    def reset(self, schedule: Schedule, seed: int) -> None:
        """Called once at the start of every generation (after ``setup``): drop all state."""

    def budget(self, schedule: Schedule, step: Step) -> StepBudget:
        """What ``plan`` will run at this step, without tensors; must agree with ``plan``."""
        return StepBudget()

    def plan(self, ctx: StepContext) -> StepPlan:
        return DENSE

    def observe(self, ctx: StepContext, out: StepOutput) -> None:
        """Called after every step that ran or was skipped."""

    def describe(self) -> dict:
        """The method, its preset and every knob (what results files store; ``methods.accelerator_from_record``
        rebuilds it)."""
        out = {"method": self.name}
        if self.cfg is not None:
            out.update(preset=self.preset, **asdict(self.cfg))
        if self.cfg is not None or self.guidance != TWO_BRANCHES:
            out.update(self.guidance.knobs())
        return out
