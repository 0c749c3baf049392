"""Accelerators behind one interface (``base.py``), switched on a pipeline in one reversible call.

    import faststar
    faststar.apply(pipe, "faststar", "balanced")           # or faststar.apply(pipe, "faststar", keep_ratios=0.3)
    video = pipe("a cat walks on the beach", seed=1)
    faststar.remove(pipe)                                   # back to the exact dense output

``apply`` first calls ``remove``, so calling it again with other knobs is safe. Any object with an
``accelerator`` attribute works (the pipeline, or a plain holder for ``generate(..., accelerator=holder.accelerator)``).
``flop_plan`` predicts a method's FLOPs on a schedule without running anything, from the same per-step budgets
the accelerator plans with.
"""
from __future__ import annotations

from dataclasses import fields

from ..schedule import Schedule, official_schedule, step_flops
from .base import Accelerator, StepBudget
from .baselines import FastVAR, SkipScales, StageVAR
from .faststar import FastSTAR, RandomPrune
from .presets import DEFAULT_PRESET, PRESETS, PUBLIC_PRESETS, preset_params

# method name -> accelerator class (its ``config_class`` holds the knobs)
METHODS: dict[str, type[Accelerator]] = {
    "dense": Accelerator,
    "faststar": FastSTAR,
    "fastvar": FastVAR,
    "stagevar": StageVAR,
    "skip": SkipScales,
    "random": RandomPrune,
}


def _parse_value(v: str):
    v = v.strip()
    if v.lower() in ("true", "false"):
        return v.lower() == "true"
    if v.lower() == "none":
        return None
    if "/" in v:                                   # a tuple of ratios: 0.3/0.55/0.8 (one ratio: 0.3/)
        parts = [x.strip() for x in v.split("/") if x.strip()]
        try:
            return tuple(float(x) for x in parts)
        except ValueError:                         # a tuple of names: partial/restore
            return tuple(parts)
    for conv in (int, float):
        try:
            return conv(v)
        except ValueError:
            pass
    return v


def parse_method_spec(spec: str) -> tuple[str, str | None, dict]:
    """``method[:preset][+knob=value...]`` -> (method, preset, overrides); tuples as ``0.3/0.55/0.8``.

    Examples: ``dense``, ``faststar:balanced``, ``faststar:balanced+temporal=off``,
    ``faststar:fast+update=restore+single_branch_last=2``.
    """
    head, *knobs = spec.split("+")
    method, _, preset = head.partition(":")
    overrides = {}
    for k in knobs:
        key, eq, val = k.partition("=")
        if not eq:
            raise ValueError(f"bad knob {k!r} in {spec!r}: expected key=value")
        overrides[key.strip()] = _parse_value(val)
    return method.strip(), (preset.strip() or None), overrides


def accelerator_from_spec(spec: str) -> Accelerator | None:
    """None for ``dense``, else the configured accelerator."""
    method, preset, overrides = parse_method_spec(spec)
    if method == "dense" and not preset and not overrides:
        return None
    return make_accelerator(method, preset, **overrides)


def check_method_specs(specs) -> list[str]:
    """Build the accelerator of every method string once, so that a run over many videos fails before its first
    video, naming the method, instead of when it reaches it. Returns the specs as a list."""
    specs = [str(m).strip() for m in specs]
    for m in specs:
        if not m:
            raise ValueError(f"an empty method name in {specs}")
        try:
            accelerator_from_spec(m)
        except (ValueError, TypeError) as e:
            raise ValueError(f"method {m!r}: {e}") from None
    return specs


def make_accelerator(method: str | Accelerator, preset: str | None = None, **overrides) -> Accelerator:
    """An accelerator from a method name, a named preset (None = the method's default) and knob overrides.

    ``method`` may also be a whole method string, ``method[:preset][+knob=value...]`` (``parse_method_spec``); the
    keyword overrides then apply on top of its knobs. An Accelerator instance is returned as is (then no preset or
    overrides may be given).
    """
    if isinstance(method, Accelerator):
        if preset is not None or overrides:
            raise TypeError("pass a preset or overrides with a method name, not with an accelerator instance")
        return method
    if ":" in method or "+" in method:
        method, named, knobs = parse_method_spec(method)
        if named is not None and preset is not None:
            raise ValueError(f"the method string names the preset {named!r}; do not also pass preset={preset!r}")
        preset = named if named is not None else preset
        overrides = {**knobs, **overrides}
    if method not in METHODS:
        raise ValueError(f"unknown acceleration method {method!r}; choose one of {sorted(METHODS)}")
    cls = METHODS[method]
    if method == "dense":
        if preset not in (None, "default") or overrides:
            raise ValueError(f"method 'dense' has no preset or knobs, got preset={preset!r}, {overrides}")
        return cls()
    known = {f.name for f in fields(cls.config_class)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(f"unknown {method} option(s) {unknown}; known: {sorted(known)}")
    name = preset if preset is not None else DEFAULT_PRESET[method]
    params = preset_params(method, name)
    params.update(overrides)
    acc = cls(cls.config_class(**params))
    acc.preset = name if not overrides else f"{name}+{','.join(sorted(overrides))}"
    return acc


def _record_knobs(record: dict) -> dict:
    """The knobs of a ``describe()`` record (JSON lists back to tuples)."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in record.items() if k not in ("method", "preset")}


def accelerator_from_record(record: dict | None) -> Accelerator | None:
    """Rebuild an accelerator from its ``describe()`` record (what results files store), independent of what the
    preset names mean today. None or a dense record gives None."""
    if not record or record.get("method") in (None, "dense"):
        return None
    name = record["method"]
    acc = make_accelerator(name, None, **_record_knobs(record))
    acc.preset = record.get("preset")
    return acc


def _format_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "none"
    if isinstance(v, (list, tuple)):
        if all(isinstance(x, str) for x in v):
            return "/".join(v) + ("/" if len(v) == 1 else "")
        return "/".join(repr(float(x)) for x in v) + ("/" if len(v) == 1 else "")
    return repr(v) if isinstance(v, float) else str(v)


def spec_from_record(record: dict | None) -> str:
    """The method string that rebuilds a ``describe()`` record exactly today (``method+knob=value...``, the knobs
    that differ from the method's default preset), whatever the preset names meant when the record was written.
    Knobs a record lacks (added later) take the config class's defaults."""
    if not record or record.get("method") in (None, "dense"):
        return "dense"
    name = record["method"]
    cls = METHODS[name]
    target = {f.name: getattr(cls.config_class(), f.name) for f in fields(cls.config_class)}
    target.update(_record_knobs(record))
    base = _record_knobs(make_accelerator(name).describe())
    knobs = [f"{k}={_format_value(v)}" for k, v in target.items() if v != base.get(k)]
    return "+".join([name, *knobs])


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

    Mirrors the loop: teacher-forced steps run dense (or not at all when nothing reads their K/V), a step that a
    later clip attends to always runs, guidance branches are capped at ``batch``, and a pruned referenced step
    shrinks the next clip's context to its kept tokens. Threshold modes are predicted at their cap (an upper
    bound on FLOPs). Returns per-step rows (same keys as GenerationOutput.stats where they overlap) and totals;
    ``saved`` = 1 - total / total_dense counts the text pass in both.
    """
    from ..config import TransformerConfig, transformer_config
    acc = make_accelerator(method, preset, **overrides)
    cfg = model_cfg if isinstance(model_cfg, TransformerConfig) else transformer_config(model_cfg)
    if hasattr(acc, "setup"):
        acc.setup(cfg)
    schedule = schedule if schedule is not None else official_schedule("720p", 5)
    teacher = set(teacher_steps)
    kw = dict(width=cfg.width, num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads, mlp_hidden=cfg.mlp_hidden)
    D, L = cfg.depth, text_len
    refs = [0] * D
    rows = []
    for st in schedule.steps:
        s = st.scale
        N = s.num_tokens
        is_ref = schedule.is_ref_step(st)
        b = StepBudget() if st.index in teacher else acc.budget(schedule, st)
        if st.index in teacher and skip_unread_forwards and not is_ref:
            b = StepBudget(run=False)
        if is_ref and not b.run:
            b = StepBudget()
        branches = min(b.branches, batch)
        step_refs = refs if s.ref_scale is not None else [0] * D
        n_run = N if b.tokens is None else b.tokens
        p = b.prune_layer if b.tokens is not None else 0
        per_layer = [N if layer < p else n_run for layer in range(D)]
        flops = 0.0
        if b.run:
            for n_q, r in zip(per_layer, step_refs):
                lin, att = step_flops(n_q, L + r + n_q, depth=1, batch=branches, **kw)
                flops += lin + att
        full_ref = schedule.scales[s.ref_scale].num_tokens if s.ref_scale is not None else 0
        dense = sum(step_flops(N, L + full_ref + N, depth=D, batch=batch, **kw))
        rows.append(dict(step=st.index, scale=s.index, clip=s.clip, thw=list(s.thw), rep=st.rep, tokens=N,
                         tokens_run=n_run if b.run else 0, branches=branches if b.run else 0, prune_layer=p,
                         ref_tokens=step_refs[-1], flops=flops, flops_dense=dense))
        if is_ref and b.run:
            refs = per_layer
    text = sum(step_flops(L, L, depth=D, batch=batch, **kw))
    run = sum(r["flops"] for r in rows)
    dense = sum(r["flops_dense"] for r in rows)
    desc = acc.describe()
    out = dict(method=desc.get("method"), preset=desc.get("preset"), schedule=schedule.name, model=cfg.name,
               text_len=L, steps=rows, text=text, flops=run, flops_dense=dense, total=text + run,
               total_dense=text + dense, saved=1.0 - (text + run) / (text + dense),
               speedup=(text + dense) / max(text + run, 1.0))
    if getattr(getattr(acc, "cfg", None), "mode", "ratio") == "threshold":
        out["note"] = "threshold mode: predicted at the cap (upper bound on FLOPs)"
    return out


__all__ = ["METHODS", "PRESETS", "DEFAULT_PRESET", "PUBLIC_PRESETS", "make_accelerator", "check_method_specs",
           "accelerator_from_record", "apply", "remove", "flop_plan",
           "Accelerator", "FastSTAR", "RandomPrune", "FastVAR", "StageVAR", "SkipScales"]
