"""Named presets of every method, in one table (PRESETS below); DEFAULT_PRESET names each method's default.

Keep ratios are listed per prunable scale counted from the clip's LAST scale: (last, second last, third last, ...).
At 720p the last three are the detail scales 45x80, 30x53, 24x43 (x 20 latent frames in a video clip), the fourth
is the last semantic scale 18x32; at 480p they are 30x53, 24x43, 18x32 (all detail), then 12x21. Clip 0 (the first
frame) is not pruned by default.

FastSTAR presets (2026-11-29) were chosen from measurements, not guesses: a sweep of 25 configurations on the
trained testbed (GPU, seed 0, 4 prompts incl. one image-to-video; benchmarks/results/testbed_sweep_results.md)
showed that Partial Update (zero codes at pruned positions) loses badly once more than the last scale is pruned
(24.9 dB at 1.70x FLOPs vs 28.1 dB with restore), so every FastSTAR preset restores pruned positions from the
previous scale's hidden states (update="restore"), and that keeping the second-to-last scale at 50% and the
third-to-last dense beats spreading the budget evenly (29.7 dB vs 28.1 dB at the same FLOPs).

Measured (testbed PSNR vs same-seed dense; 8B 720p 5 s on one H200, fa3, compiled kernels + CUDA graphs, end to
end including the VAE decode; dense 30.68 s):
    preset     keep ratios (last..)            testbed PSNR  testbed FLOP x   8B FLOP x   8B e2e x
    quality    (0.25, 1, 1)                    31.9 dB       1.32x            1.74x       (not timed)
    balanced   (0.2, 0.5, 1)                   29.7 dB       1.51x            2.09x       1.88x
    fast       (0.12, 0.25, 0.35, 0.5) last 4  20.6 dB       2.04x            3.73x       2.98x
(testbed FLOP x over text-to-video prompts; the testbed's last scale is a smaller share of its FLOPs than at 8B)
Targets not met yet (issue 4): balanced >= 2.0x e2e at >= 28.3 dB, fast >= 3.5x at >= 25 dB. skip:last1 (30.9 dB,
1.43x testbed FLOPs, 1.79x 8B e2e) is as good as FastSTAR near that budget on this testbed.

Predicted FLOP-model speedups at 8B of the baselines (flop_plan; 720p 5 s / 480p 10 s):
    method preset         720p 5 s           480p 10 s
    faststar quality      42.4%  1.74x       37.3%  1.60x
    faststar balanced     52.2%  2.09x       53.2%  2.14x
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
        "quality":  dict(keep_ratios=(0.25, 1.0, 1.0), update="restore"),
        "balanced": dict(keep_ratios=(0.2, 0.5, 1.0), update="restore"),
        "fast":     dict(keep_ratios=(0.12, 0.25, 0.35, 0.5), last_k=4, update="restore"),  # + last semantic scale
        # the first presets (Partial Update, budget spread evenly), kept for comparison
        "partial-quality":  dict(keep_ratios=(0.5, 0.8, 1.0)),
        "partial-balanced": dict(keep_ratios=(0.3, 0.55, 0.8)),
        "partial-fast":     dict(keep_ratios=(0.12, 0.25, 0.35, 0.5), last_k=4),
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
        "last3": dict(last_n=3),
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
