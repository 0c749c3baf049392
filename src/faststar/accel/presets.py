"""Named presets of every method, in one table.

Keep ratios are listed per prunable scale counted from the clip's LAST scale: (last, second last, third last).
At 720p the three are the detail scales 45x80, 30x53, 24x43 (x 20 latent frames in the video clip); at 480p
30x53, 24x43, 18x32. Clip 0 (the first frame) is not pruned by default.

The FastSTAR numbers were first chosen with the FLOP model (``faststar.accel.flop_plan``) on the 8B model at
720p 5 s (official_schedule + schedule_flops, 128 text tokens): "quality" saves ~35%, "balanced" >= 50%,
"fast" >= 72% of the dense FLOPs (the "predicted saved" column below). They are starting points, to be re-tuned on
the trained testbed by measured PSNR/SSIM against the dense output; pruning's attention savings grow with the
square of the kept fraction, so the last scale dominates.

predicted saved at 8B / 720p 5 s (flop_plan):           quality  balanced  fast
    faststar / random                                    ~35%      ~54%     ~74%
"""
from __future__ import annotations

import copy

PRESETS: dict[str, dict[str, dict]] = {
    # method     preset       knobs                                   keep ratios from the last scale backwards
    "faststar": {
        "quality":  dict(keep_ratios=(0.5, 0.8, 1.0)),                     # 24x43 dense
        "balanced": dict(keep_ratios=(0.3, 0.55, 0.8)),
        "fast":     dict(keep_ratios=(0.12, 0.25, 0.35, 0.5), last_k=4),   # also the last semantic scale 18x32
    },
    # the control: uniformly random kept sets at FastSTAR's ratios
    "random": {
        "quality":  dict(keep_ratios=(0.5, 0.8, 1.0)),
        "balanced": dict(keep_ratios=(0.3, 0.55, 0.8)),
        "fast":     dict(keep_ratios=(0.12, 0.25, 0.35, 0.5), last_k=4),
    },
    "fastvar": {
        # FastSTAR's token budget with FastVAR's score, prune layer (3/32 of depth) and restoration
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
        "cfg0":     dict(single_branch_last=3, low_rank_last=0),
    },
    "skip": {
        "last1": dict(last_n=1),
        "last2": dict(last_n=2),
    },
}

DEFAULT_PRESET = {"faststar": "balanced", "random": "balanced", "fastvar": "balanced", "stagevar": "original",
                  "skip": "last1"}


def preset_params(method: str, preset: str) -> dict:
    """A copy of the knobs of ``PRESETS[method][preset]`` (clear errors on unknown names)."""
    if method not in PRESETS:
        raise ValueError(f"no presets for method {method!r}; methods with presets: {sorted(PRESETS)}")
    table = PRESETS[method]
    if preset not in table:
        raise ValueError(f"unknown preset {preset!r} for {method}; choose one of {sorted(table)}")
    return copy.deepcopy(table[preset])
