"""Named presets of every method, in one table (PRESETS below); DEFAULT_PRESET names each method's default.

Keep ratios are listed per prunable scale counted from the clip's LAST scale: (last, second last, third last, ...).
At 720p the last three are the detail scales 45x80, 30x53, 24x43 (x 20 latent frames in a video clip), the fourth
is the last semantic scale 18x32; at 480p they are 30x53, 24x43, 18x32 (all detail), then 12x21. Clip 0 (the first
frame) is not pruned by default.

These numbers are INITIAL: chosen with the FLOP model (``faststar.accel.flop_plan``: official_schedule +
the loop's per-step FLOP model, 8B, 128 text tokens, CFG batch 2) so that at 720p 5 s "quality" saves ~35%,
"balanced" >= 50% and "fast" >= 72% of the dense FLOPs. They will be re-tuned on the trained testbed by measured
PSNR/SSIM against the same-seed dense output. Pruning's attention savings grow with the square of the kept
fraction, so the last scale dominates; "fast" has to prune the 4th scale from the end too (at 720p a semantic
scale), since the three detail scales of the video clip are only ~76% of all FLOPs.

Predicted FLOPs saved (incl. the text pass) and FLOP-model speedup, 8B:
    method preset         720p 5 s           480p 10 s
    faststar quality      36.1%  1.56x       33.4%  1.50x
    faststar balanced     52.0%  2.08x       52.6%  2.11x
    faststar fast         73.2%  3.73x       75.4%  4.07x
    random *              (= faststar: same ratios)
    fastvar balanced      47.7%  1.91x       48.2%  1.93x     (first 3/32 of the blocks run dense)
    fastvar fast          67.1%  3.04x       69.1%  3.24x
    fastvar hart          50.6%  2.03x       51.5%  2.06x
    fastvar infinity      73.5%  3.77x       58.4%  2.41x     (mostly from skipping; a referenced step still runs)
    stagevar original     63.7%  2.76x       46.4%  1.87x
    stagevar cfg0         39.8%  1.66x       38.9%  1.64x
    skip last1            48.3%  1.94x       15.6%  1.18x     (480p 10 s: clip 1's last scale is clip 2's context)
    skip last2            61.5%  2.60x       44.7%  1.81x
(tests/test_accel.py checks the FastSTAR targets; regenerate this block with flop_plan after re-tuning.)
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
