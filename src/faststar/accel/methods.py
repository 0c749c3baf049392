"""Method strings: ``method[:preset][+knob=value...]`` -> an accelerator, and back from a ``describe()`` record.

Examples: ``dense``, ``faststar:balanced``, ``faststar:balanced+w_tm=0``, ``faststar:fast+update=partial``,
``fastvar:hart+single_branch_last=2``, ``dense+single_branch_last=3``. Tuples as ``0.3/0.55/0.8`` (one: ``0.3/``).
``single_branch_last`` / ``single_branch_clip0`` are the guidance policy's knobs (``guidance.py``), valid with
every method; the other knobs are the method's config fields.
"""
from __future__ import annotations

import re
from dataclasses import fields

from .base import Accelerator
from .baselines import FastVAR, SkipScales, StageVAR
from .faststar import FastSTAR, RandomPrune
from .guidance import TWO_BRANCHES, LateSingleBranch
from .presets import DEFAULT_PRESET, GUIDANCE_KNOBS, preset_params

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
        except ValueError:
            return tuple(parts)
    for conv in (int, float):
        try:
            return conv(v)
        except ValueError:
            pass
    return v


def parse_method_spec(spec: str) -> tuple[str, str | None, dict]:
    """``method[:preset][+knob=value...]`` -> (method, preset, overrides)."""
    head, *knobs = spec.split("+")
    method, _, preset = head.partition(":")
    overrides = {}
    for k in knobs:
        key, eq, val = k.partition("=")
        if not eq:
            raise ValueError(f"bad knob {k!r} in {spec!r}: expected key=value")
        overrides[key.strip()] = _parse_value(val)
    return method.strip(), (preset.strip() or None), overrides


def make_accelerator(method: str | Accelerator, preset: str | None = None, **overrides) -> Accelerator:
    """An accelerator from a method name, a named preset (None = the method's default) and knob overrides.

    ``method`` may also be a whole method string (``parse_method_spec``); keyword overrides then apply on top of its
    knobs. An Accelerator instance is returned as is (then no preset or overrides may be given).
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
    known = {f.name for f in fields(cls.config_class)} if cls.config_class is not None else set()
    unknown = sorted(set(overrides) - known - set(GUIDANCE_KNOBS))
    if unknown:
        raise TypeError(f"unknown {method} option(s) {unknown}; known: {sorted(known | set(GUIDANCE_KNOBS))}")
    if cls.config_class is None:
        if preset not in (None, "default"):
            raise ValueError(f"method {method!r} has no presets, got preset={preset!r}")
        params, name = dict(overrides), None
    else:
        name = preset if preset is not None else DEFAULT_PRESET[method]
        params = {**preset_params(method, name), **overrides}
    if method == "stagevar" and "clip0" in overrides and "single_branch_clip0" not in overrides:
        params["single_branch_clip0"] = -1 if overrides["clip0"] else 0    # StageVAR's clip0 covers its guidance
    policy = {k: params.pop(k) for k in GUIDANCE_KNOBS if k in params}
    guidance = LateSingleBranch(policy.get("single_branch_last", 0), policy.get("single_branch_clip0", -1)) \
        if policy else TWO_BRANCHES
    acc = cls(cls.config_class(**params), guidance=guidance) if cls.config_class is not None else \
        cls(guidance=guidance)
    if name is not None:
        acc.preset = name if not overrides else f"{name}+{','.join(sorted(overrides))}"
    return acc


def accelerator_from_spec(spec: str) -> Accelerator | None:
    """None for plain ``dense``, else the configured accelerator."""
    acc = make_accelerator(spec)
    return None if type(acc) is Accelerator and acc.guidance == TWO_BRANCHES else acc


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
            raise ValueError(f"method {m!r}: {explain_spec_error(m, None, e)}") from None
    return specs


def _printable(x) -> str:
    s = str(x)
    return s if s.isprintable() else repr(s)


def explain_spec_error(spec: str, preset, err: Exception) -> str:
    """The error of a method string on one line, naming the knob whose value failed where the error itself does
    not (``anchors=abc`` rather than only the conversion that failed)."""
    msg = " ".join(str(err).split())
    try:
        method, named, knobs = parse_method_spec(spec) if (":" in spec or "+" in spec) else (spec, None, {})
    except ValueError:
        return msg
    if not knobs or any(re.search(rf"\b{re.escape(k)}\b", msg) for k in knobs):
        return msg
    raw = dict(part.partition("=")[::2] for part in spec.split("+")[1:])
    for k, v in knobs.items():
        try:
            make_accelerator(method, named if named is not None else preset, **{k: v})
        except (ValueError, TypeError) as e:
            return f"knob {_printable(k)}={_printable(raw.get(k, v))}: {' '.join(str(e).split())}"
    return msg


def _record_knobs(record: dict) -> dict:
    """The knobs of a ``describe()`` record (JSON lists back to tuples)."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in record.items() if k not in ("method", "preset")}


# knobs that left FastSTAR (issue 25; git history before it has them), at the value that meant "off": a results
# file written before then still rebuilds when it did not use them
REMOVED_KNOBS = dict(mode="ratio", threshold=1.0, floor=0.1, cap=0.9, prune_clip0=False, spatial="canvas",
                     temporal="prev_frame", norm="rank", probe_layer=2, eps=1e-6, dense_ref_steps=False,
                     reuse_guidance=False, skipped="zero", skipped_reps="zero",
                     keep_reps="first", rep_keep=0.0, proportional=False)


def _legacy_knobs(method: str, knobs: dict) -> dict:
    """A record written before issue 25 in today's knobs; a removed knob in use is an error naming it."""
    knobs = dict(knobs)
    if method not in ("faststar", "random"):
        return knobs
    if method == "faststar":
        if knobs.pop("seed_offset", 0) != 0:
            raise ValueError("this faststar record sets seed_offset, which only the random control reads")
        for k, w in (("spatial", "w_sp"), ("temporal", "w_tm")):
            if knobs.get(k) == "off":                                  # a term turned off = its weight 0
                knobs.pop(k)
                knobs[w] = 0.0
    for k, off in REMOVED_KNOBS.items():
        if k not in knobs:
            continue
        v = knobs.pop(k)
        if method == "random" and k in ("spatial", "temporal", "norm", "probe_layer", "eps"):
            continue                                                   # the control never read them
        if v != off:
            raise ValueError(f"this {method} record uses {k}={v!r}, a knob that left the package (issue 25); "
                             f"rebuild it from git history before that change")
    return knobs


def accelerator_from_record(record: dict | None) -> Accelerator | None:
    """Rebuild an accelerator from its ``describe()`` record (what results files store), independent of what the
    preset names mean today; records from before issue 25 too, where they use no removed knob. None or a dense
    record gives None."""
    if not record or record.get("method") in (None, "dense"):
        return None
    acc = make_accelerator(record["method"], None, **_legacy_knobs(record["method"], _record_knobs(record)))
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
    that differ from the method's default preset). Knobs a record lacks take the defaults."""
    if not record or record.get("method") in (None, "dense"):
        return "dense"
    name = record["method"]
    cls = METHODS[name]
    target = {f.name: getattr(cls.config_class(), f.name) for f in fields(cls.config_class)}
    target.update(TWO_BRANCHES.knobs())
    target.update(_record_knobs(record))
    base = _record_knobs(make_accelerator(name).describe())
    knobs = [f"{k}={_format_value(v)}" for k, v in target.items() if v != base.get(k)]
    return "+".join([name, *knobs])
