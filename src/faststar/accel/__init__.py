"""Accelerators behind one interface (``base.py``), switched on a pipeline in one reversible call.

    import faststar
    faststar.apply(pipe, "faststar", "balanced")           # or faststar.apply(pipe, "faststar", keep_ratios=0.3)
    video = pipe("a cat walks on the beach", seed=1)
    faststar.remove(pipe)                                   # back to the exact dense output

``apply`` first calls ``remove``, so calling it again with other knobs is safe. Any object with an
``accelerator`` attribute works (the pipeline, or a plain holder for ``generate(..., accelerator=holder.accelerator)``).
Method strings (``faststar:fast+single_branch_last=2``) are parsed in ``methods.py``. ``flop_plan`` predicts a
method's FLOPs on a schedule without running anything, from the same per-step budgets, forcing rules and cost
function as the loop.

Modules: ``base`` (the contract), ``guidance`` (single-branch late guidance), ``scores`` (FastSTAR's importance),
``selection`` (kept sets and selectors), ``restore`` (hidden states of pruned positions), ``faststar`` (the
method), ``baselines`` (FastVAR, StageVAR, skip), ``presets``, ``methods``, ``viz`` (mask overlays).
"""
from __future__ import annotations

from ..schedule import Schedule, official_schedule, step_cost, step_flops
from .base import Accelerator, StepBudget, step_mode
from .baselines import FastVAR, SkipScales, StageVAR
from .faststar import FastSTAR, RandomPrune
from .methods import (METHODS, accelerator_from_record, accelerator_from_spec, check_method_specs, make_accelerator,
                      parse_method_spec, spec_from_record)
from .presets import DEFAULT_PRESET, PRESETS, PUBLIC_PRESETS, preset_params


def apply(pipe, method: str | Accelerator, preset: str | None = None, **overrides):
    """Set ``pipe.accelerator`` (after removing any previous one). Returns ``pipe``."""
    if not hasattr(pipe, "accelerator"):
        raise TypeError(f"faststar.apply needs an object with an 'accelerator' attribute (a FastStarPipeline), "
                        f"got {type(pipe).__name__}")
    remove(pipe)
    pipe.accelerator = make_accelerator(method, preset, **overrides)
    return pipe


def remove(pipe):
    """Back to dense: ``pipe.accelerator = None``. Safe to call when nothing is applied. Returns ``pipe``."""
    if not hasattr(pipe, "accelerator"):
        raise TypeError(f"faststar.remove needs an object with an 'accelerator' attribute (a FastStarPipeline), "
                        f"got {type(pipe).__name__}")
    pipe.accelerator = None
    return pipe


def flop_plan(method: str | Accelerator = "faststar", preset: str | None = None, schedule: Schedule | None = None,
              model_cfg="infinitystar-8b", *, text_len: int = 128, batch: int = 2, teacher_steps=(),
              skip_unread_forwards: bool = True, **overrides) -> dict:
    """Predict a method's FLOPs on a schedule (default: 720p 5 s) with the loop's FLOP model, without running.

    Per step: the method's ``budget``, the loop's forcing rules (``base.step_mode``), its guidance policy capped at
    ``batch``, and ``schedule.step_cost`` (a pruned referenced step shrinks the next clip's context to its kept
    tokens). Returns per-step rows (same keys as GenerationOutput.stats where they overlap) and totals;
    ``saved`` = 1 - total / total_dense counts the text pass in both.
    """
    from ..config import TransformerConfig, transformer_config
    acc = make_accelerator(method, preset, **overrides)
    cfg = model_cfg if isinstance(model_cfg, TransformerConfig) else transformer_config(model_cfg)
    acc.setup(cfg)
    schedule = schedule if schedule is not None else official_schedule("720p", 5)
    teacher = set(teacher_steps)
    D, L = cfg.depth, text_len
    refs = [0] * D
    rows = []
    for st in schedule.steps:
        s = st.scale
        is_ref = schedule.is_ref_step(st)
        b = acc.budget(schedule, st)
        mode = step_mode(b.run, teacher_forced=st.index in teacher, is_ref=is_ref, skip_unread=skip_unread_forwards)
        if mode != "plan":
            b = StepBudget(run=mode == "dense")
        branches = 0 if not b.run else (batch if mode == "dense" else min(acc.guidance.branches(schedule, s), batch))
        p = b.prune_layer if b.tokens is not None else 0
        step_refs = refs if s.ref_scale is not None else [0] * D
        flops, dense = step_cost(cfg, schedule, st, text_len=L, tokens_run=b.tokens if b.run else 0, prune_layer=p,
                                 branches=branches, ref_lens=step_refs, batch=batch)
        if st.index in teacher and mode == "skip":
            dense = 0.0           # a teacher-forced step that nothing reads is skipped by the dense engine as well
        N = s.num_tokens
        n_run = (N if b.tokens is None else b.tokens) if b.run else 0
        rows.append(dict(step=st.index, scale=s.index, clip=s.clip, thw=list(s.thw), rep=st.rep, tokens=N,
                         tokens_run=n_run, branches=branches, prune_layer=p, ref_tokens=step_refs[-1],
                         flops=flops, flops_dense=dense))
        if is_ref and b.run:
            refs = [N if layer < p else n_run for layer in range(D)]
    kw = dict(width=cfg.width, num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads, mlp_hidden=cfg.mlp_hidden)
    text = sum(step_flops(L, L, depth=D, batch=batch, **kw))
    run = sum(r["flops"] for r in rows)
    dense = sum(r["flops_dense"] for r in rows)
    desc = acc.describe()
    return dict(method=desc.get("method"), preset=desc.get("preset"), schedule=schedule.name, model=cfg.name,
                text_len=L, steps=rows, text=text, flops=run, flops_dense=dense, total=text + run,
                total_dense=text + dense, saved=1.0 - (text + run) / (text + dense),
                speedup=(text + dense) / max(text + run, 1.0))


__all__ = ["METHODS", "PRESETS", "DEFAULT_PRESET", "PUBLIC_PRESETS", "make_accelerator", "check_method_specs",
           "accelerator_from_record", "accelerator_from_spec", "spec_from_record", "parse_method_spec", "preset_params",
           "apply", "remove", "flop_plan",
           "Accelerator", "FastSTAR", "RandomPrune", "FastVAR", "StageVAR", "SkipScales"]
