"""Named presets of every method, in one table (PRESETS below); DEFAULT_PRESET names each method's default.

Keep ratios are listed per prunable scale counted from the clip's LAST scale: (last, second last, third last, ...);
0 means that scale does not run at all. At 720p the last three are the detail scales 45x80, 30x53, 24x43 (x 20
latent frames in a video clip), the fourth is the last semantic scale 18x32; at 480p they are 30x53, 24x43, 18x32
(all detail), then 12x21. Clip 0 (the first frame) is not pruned by default.

FastSTAR presets (2026-12-02), chosen from measurements (benchmarks/RESULTS.md sections 2-6, 9 and 10): testbed
v2 PSNR against the same-seed dense video (6 prompts x 2 seeds, GPU; noise floor 17.6 dB) and end-to-end speed of
the 8B model at 720p 5 s on one H200 (transformer + VAE decode, dense 30.1 s), each measured in one run (section
10: `testbed_v2_session5.json`, `presets_720p_480p_s5.json`):

    preset     knobs                                                testbed v2 PSNR (min) 8B 720p e2e  480p e2e
    quality    (0.25, 1, 1), restore                                30.97 dB (29.24)      1.62x        1.25x
    balanced   (0, 0.4, 1), restore: last scale not run             29.40 dB (27.54)      2.10x        1.72x
    fast-hq    (0, 0, 1, 1) on the last 4: the last two scales not  25.26 dB (22.24)      3.24x        3.12x
               run, first repetition only of the two before
    fast       fast-hq with single-branch guidance on the last 3    23.95 dB (20.64)      3.86x        3.64x
    fast-keep28 (0, 0.2, 1, 1, 1, 1) on the last 6, first rep only, 22.93 dB (19.51)      3.80x        3.69x
               single-branch on the last 2 (`fast` until 2026-12-02)
    fast-pruned (0.1, 0.25, 0.5, 0.8) on the last 4, single-branch 22.54 dB (19.20, s9)  3.51x (s5)   2.88x
               on the last 4 (`fast` until 2026-11-29)
    prune-balanced (0.2, 0.5, 1), restore                           29.82 dB (v1 testbed) 1.88x (grid run)
    prune-fast (0.12, 0.25, 0.35, 0.5) on the last 4                20.94 dB (v1 testbed) 2.98x (grid run)

Why these: restore beats Partial Update once more than the last scale is pruned (27.78 vs 25.07 dB at 2.1x, v1);
on the testbed, not running the last scale at all costs less quality than keeping 10-25 % of it, so `balanced`
spends its budget on the second-to-last scale instead (random selection at the same ratios: 29.32 dB). At >= 3.5x
the best measured plan prunes no scale partially: `fast` beats `fast-keep28` on 9 of 12 videos (+1.02 dB) and is
faster at 720p (3.86x vs 3.80x; 3.64x vs 3.69x at 480p); its scores decide nothing (no partial scale), so
random:fast is the same plan. Nothing measured reaches 25 dB at >= 3.5x (issue 4); `fast-hq` is the fastest
measured plan at >= 25 dB.

FLOP-model savings at 8B (flop_plan; 720p 5 s / 480p 10 s):
    faststar quality      42.4%  1.74x       37.3%  1.60x
    faststar balanced     57.8%  2.37x       35.2%  1.54x     (480p 10 s: clip 1's last scale is clip 2's context
                                                               and always runs)
    faststar fast-hq      75.2%  4.04x       64.1%  2.79x     (480p 10 s: as for balanced)
    faststar fast         80.7%  5.19x       68.4%  3.17x     (480p 10 s: as for balanced)
    faststar fast-keep28  79.9%  4.96x       68.8%  3.21x
    faststar fast-pruned  79.1%  4.79x       81.0%  5.25x
    random *              (= faststar: same ratios)
(tests/test_accel.py checks these; regenerate the block with flop_plan after re-tuning.)
"""
from __future__ import annotations

import copy

PRESETS: dict[str, dict[str, dict]] = {
    # method     preset       knobs                                   keep ratios from the last scale backwards
    "faststar": {
        # single-branch guidance on the video clips' late scales, clip 0 (the first frame) guided throughout
        "quality":  dict(keep_ratios=(0.8, 1.0, 1.0), update="restore", single_branch_last=3, single_branch_clip0=0),
        "balanced": dict(keep_ratios=(0.0, 0.4, 1.0), update="restore", single_branch_last=3,   # last scale not run
                         single_branch_clip0=0),
        "fast-hq":  dict(keep_ratios=(0.0, 0.6, 1.0, 1.0), last_k=4, max_reps=1, update="restore",
                         single_branch_last=5, single_branch_clip0=0),
        "fast":     dict(keep_ratios=(0.0, 0.2, 1.0, 1.0), last_k=4, max_reps=1, update="restore",
                         single_branch_last=5, single_branch_clip0=0),
        # the same pruning with two-branch guidance everywhere: the presets of 2026-12-02 before video single-branch
        "guided-quality":  dict(keep_ratios=(0.25, 1.0, 1.0), update="restore"),
        "guided-balanced": dict(keep_ratios=(0.0, 0.4, 1.0), update="restore"),
        "guided-fast":     dict(keep_ratios=(0.0, 0.0, 1.0, 1.0), last_k=4, max_reps=1, update="restore"),
        "fast-keep28": dict(keep_ratios=(0.0, 0.2, 1.0, 1.0, 1.0, 1.0), last_k=6, max_reps=1, single_branch_last=2,
                            update="restore"),
        "fast-pruned": dict(keep_ratios=(0.1, 0.25, 0.5, 0.8), last_k=4, single_branch_last=4, update="restore"),
        # pure pruning (every scale runs): the balanced / fast presets before the keep-ratio-0 measurements
        "prune-balanced": dict(keep_ratios=(0.2, 0.5, 1.0), update="restore"),
        "prune-fast":     dict(keep_ratios=(0.12, 0.25, 0.35, 0.5), last_k=4, update="restore"),
        # the first presets (Partial Update, budget spread evenly), kept for comparison
        "partial-quality":  dict(keep_ratios=(0.5, 0.8, 1.0)),
        "partial-balanced": dict(keep_ratios=(0.3, 0.55, 0.8)),
        "partial-fast":     dict(keep_ratios=(0.12, 0.25, 0.35, 0.5), last_k=4),
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
        "cfg0-last2": dict(single_branch_last=2, low_rank_last=0),
        # the same with clip 0 (the first frame) left guided: single-branch in the video clips only
        "original-video": dict(single_branch_last=3, low_rank_last=1, rank_ratio=0.1, clip0=False),
        "cfg0-video": dict(single_branch_last=3, low_rank_last=0, clip0=False),
    },
    "skip": {
        "last1": dict(last_n=1),
        "last2": dict(last_n=2),
        "last3": dict(last_n=3),
    },
}

# the control: uniformly random kept sets at exactly FastSTAR's preset ratios, update and guidance
PRESETS["random"] = {name: dict(knobs) for name, knobs in PRESETS["faststar"].items() if not name.startswith("partial-")}

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
