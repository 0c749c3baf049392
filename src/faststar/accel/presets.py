"""Named presets of every method, in one table; DEFAULT_PRESET names each method's default.

What they are: keep ratios listed per prunable scale from the clip's LAST scale (0 = the scale does not run),
plus single-branch guidance on the video clips' late scales (``single_branch_last``; clip 0, the first frame,
stays guided: ``single_branch_clip0=0``). Why: each FastSTAR preset was chosen as the best measured quality at
its speed among the plans tried; ``paper`` follows the FastSTAR paper's protocol as a public re-implementation
reads it and is the reference row the others are compared with. The measurements are in benchmarks/RESULTS.md;
plans that were presets before are method strings in benchmarks/methods/historical_presets.txt.

``paper``: prune only the last 4 scales, pruning 20 / 30 / 40 / 70 % of their tokens. method.md gives no order;
we read the list from the coarsest of the four to the finest (the finest, largest scale is pruned most, 70 %), so
the keep ratios from the last scale are (0.3, 0.6, 0.7, 0.8). The last repetition of a repeated scale runs dense,
the spatial and temporal terms combine as the L2 norm of (1 - S_sp, 1 - S_tm), Partial Update, two-branch
guidance everywhere.
"""
from __future__ import annotations

import copy

# knobs of the guidance policy (guidance.LateSingleBranch), valid with every method
GUIDANCE_KNOBS = ("single_branch_last", "single_branch_clip0")

PRESETS: dict[str, dict[str, dict]] = {
    "faststar": {
        "quality":  dict(keep_ratios=(0.8, 1.0, 1.0), update="copy", w_detail=1.0, anchors=0.5,
                         single_branch_last=3, single_branch_clip0=0),
        "balanced": dict(keep_ratios=(0.0, 0.4, 1.0), update="copy", anchors=0.5,   # last scale not run
                         single_branch_last=3, single_branch_clip0=0),
        "fast-hq":  dict(keep_ratios=(0.0, 0.6, 1.0, 1.0), last_k=4, max_reps=1, update="restore", block=2,
                         single_branch_last=5, single_branch_clip0=0),
        "fast":     dict(keep_ratios=(0.0, 0.2, 1.0, 1.0), last_k=4, max_reps=1, update="restore", block=2,
                         single_branch_last=5, single_branch_clip0=0),
        "paper":    dict(keep_ratios=(0.3, 0.6, 0.7, 0.8), last_k=4, update="partial", combine="l2",
                         dense_last_rep=True),
    },
    "fastvar": {
        # FastSTAR's first token budget with FastVAR's score, prune layer (3/32 of depth) and restoration
        "balanced": dict(keep_ratios=(0.3, 0.55, 0.8)),
        "fast":     dict(keep_ratios=(0.12, 0.25, 0.35, 0.5)),
        # FastVAR-HART's own ratios: keep 25% / 50% on the last two scales, in all blocks
        "hart":     dict(keep_ratios=(0.25, 0.5), prune_layer=0),
        # FastVAR-Infinity's recipe mapped by position: skip the last two scales, keep 50% / 60% on the 3rd / 4th
        "infinity": dict(keep_ratios=(1.0, 1.0, 0.5, 0.6), skip_last=2),
    },
    "stagevar": {
        # the InfinityStar README settings: no CFG on the last 3 scales, low-rank stand-in (10%) on the last
        "original": dict(single_branch_last=3, low_rank_last=1, rank_ratio=0.1),
        # single-branch guidance only (the part that is orthogonal to pruning)
        "cfg0":     dict(single_branch_last=3),
        "cfg0-last2": dict(single_branch_last=2),
        # the same with clip 0 (the first frame) left alone: in the video clips only
        "original-video": dict(single_branch_last=3, single_branch_clip0=0, low_rank_last=1, rank_ratio=0.1,
                               clip0=False),
        "cfg0-video": dict(single_branch_last=3, single_branch_clip0=0, clip0=False),
    },
    "skip": {
        "last1": dict(last_n=1),
        "last2": dict(last_n=2),
        "last3": dict(last_n=3),
    },
}

# the control: uniformly random kept sets at exactly FastSTAR's preset ratios, update and guidance (without the
# knobs that spread FastSTAR's selection over the grid: the control's draw stays uniform)
SELECTION_SPREAD = ("block", "anchors")
PRESETS["random"] = {name: {k: v for k, v in knobs.items() if k not in SELECTION_SPREAD}
                     for name, knobs in PRESETS["faststar"].items()}

DEFAULT_PRESET = {"faststar": "balanced", "random": "balanced", "fastvar": "balanced", "stagevar": "original",
                  "skip": "last1"}
# the presets offered to users (README, `faststar serve`), slowest first, then `paper` (the reference protocol)
PUBLIC_PRESETS = ("quality", "balanced", "fast-hq", "fast", "paper")


def preset_params(method: str, preset: str) -> dict:
    """A copy of the knobs of ``PRESETS[method][preset]`` (clear errors on unknown names)."""
    if method not in PRESETS:
        raise ValueError(f"no presets for method {method!r}; methods with presets: {sorted(PRESETS)}")
    table = PRESETS[method]
    if preset not in table:
        raise ValueError(f"unknown preset {preset!r} for {method}; choose one of {sorted(table)}")
    return copy.deepcopy(table[preset])
