"""Named presets of every method, in one table (PRESETS below); DEFAULT_PRESET names each method's default.

Keep ratios are listed per prunable scale counted from the clip's LAST scale: (last, second last, third last, ...);
0 means that scale does not run at all. At 720p the last three are the detail scales 45x80, 30x53, 24x43 (x 20
latent frames in a video clip), the fourth is the last semantic scale 18x32; at 480p they are 30x53, 24x43, 18x32
(all detail), then 12x21. Clip 0 (the first frame) is not pruned by default.

FastSTAR presets (2026-12-03, fourth revision; anchored selection 2026-12-04), chosen from measurements
(RESULTS 12-12i):
testbed v2 PSNR against the same-seed dense video (GPU, 6 prompts x 6 seeds, noise floor 17.1 dB,
`testbed_v2_session9.json`; the older presets: 6 prompts x 2 seeds, floor 17.6 dB, `testbed_v2_session6.json`) and
end-to-end speed of the 8B model at 720p 5 s on one H200 (transformer + VAE decode; the four presets in one run,
dense 30.47 s, `timing_s14.json`; the baselines in `presets_720p_s9.json`, dense 30.46 s; 480p 5 s: `quality` /
`balanced` in `timing_s8.json`, `fast-hq` / `fast` in `presets_720p_480p_s6.json`, the same plans, dense 14.94 s).
Every preset guides clip 0 (the first frame) with both branches everywhere and runs the late scales of the video
clips single-branch (`single_branch_clip0=0`): guidance matters on clip 0 and on the semantic scales, hardly on the
video clip's detail scales (section 11).

    preset     knobs                                                testbed v2 PSNR (min) 8B 720p e2e  480p e2e
    quality    (0.8, 1, 1), copy, detail term, anchors=0.5;         35.72 dB (29.94, s14) 1.72x (s14)  1.61x
               single-branch last 3 (video)
    balanced   (0, 0.4, 1), copy, half of the kept tokens uniform   29.27 dB (26.21, s13) 2.58x (s14)  2.22x
               (anchors=0.5): last scale not run; single-branch
               last 3 (video)
    fast-hq    (0, 0.6, 1, 1) on the last 4, first repetition only, 26.40 dB (22.30)      3.72x (s14)  3.45x
               kept tokens spread over 2x2 tiles; single-branch
               last 5 (video)
    fast       (0, 0.2, 1, 1), otherwise as fast-hq                 26.17 dB (22.24)      4.07x (s14)  3.76x
    guided-quality  (0.25, 1, 1), restore, two branches everywhere  31.11 dB (28.30)      1.62x        1.25x (s5)
    guided-balanced (0, 0.4, 1), restore, two branches everywhere   29.54 dB (26.64)      2.10x        1.72x (s5)
    guided-fast     (0, 0, 1, 1) on the last 4, first rep only      25.26 dB (22.24, s10) 3.24x (s5)   3.12x (s5)
    fast-keep28 (0, 0.2, 1, 1, 1, 1) on the last 6, first rep only, 22.93 dB (19.51, s10) 3.80x (s5)   3.69x
               single-branch on the last 2 incl. clip 0
    fast-pruned (0.1, 0.25, 0.5, 0.8) on the last 4, single-branch 22.54 dB (19.20, s9)  3.51x (s5)   2.88x
               on the last 4 incl. clip 0
    prune-balanced (0.2, 0.5, 1), restore                           29.82 dB (v1 testbed) 1.88x (grid run)
    prune-fast (0.12, 0.25, 0.35, 0.5) on the last 4                20.94 dB (v1 testbed) 2.98x (grid run)

`quality` and `balanced` since 2026-12-04 (sections 12h, 12i): anchors=0.5 (half of the kept tokens drawn uniformly,
half by score) in place of plain top-k, at the same speed (timed at 8B with both selections in one run,
`timing_s14.json`: within 0.04 s). `balanced`: level with top-k on the shipped testbed (+0.01 +- 0.02 dB, 36 GPU
videos), +0.20 +- 0.05 dB above it on the 8-frame testbed-long, where plain top-k falls 0.20 dB below random
selection and the anchored one is level with random. `quality`: +0.56 +- 0.10 dB over top-k on the shipped testbed
(36 GPU videos, `testbed_v2_quality_anchors_s14.json`), +1.21 +- 0.30 on testbed-long (12 CPU videos).

Why these: at equal or higher measured speed each preset is above every skip, FastVAR and StageVAR configuration we
ran (as released and in the video clips only). Random selection at the same knobs reaches 34.12 / 29.10 dB at
`quality` / `balanced` (FastSTAR +1.60 dB, better on 35 of 36 videos, 2026-12-07 / +0.17 dB, 28 of 36, the
2026-12-04 run `testbed_v2_anchors_s13.json`; `balanced` level with random on testbed-long, section 12h) and
26.39 / 26.17 dB at `fast-hq` / `fast` (+0.02 / +0.00, a tie): there only 20-60 % of one scale is selected, and
even an oracle that knows each token's damage in the decoded video does no better than random (sections 12d, 12e;
nor at 3.5-4x with other plans, 12g); FastSTAR's plain top-k was 0.03-0.08 dB below random there, spreading the
kept set over 2x2 tiles (`block=2`) brings it level; independent random kept sets at `fast` differ by 0.02 dB per
video (12l). Threshold mode (a bound on the score, the keep ratio as the cap) is no better than these fixed ratios
at equal FLOPs (12l), so every preset is in ratio mode.
Not running the last scale costs less than keeping part of it on this testbed; the second-to-last scale at 20-60 %
changes `fast` by < 0.2 dB and its speed by 9 %. StageVAR in the video clips alone (37.7 dB at 1.52x) is
FastSTAR with every keep ratio 1; the lightest pruning on top of it trades 0.4 dB for 2 % more speed (0.97: 37.32 dB
at a predicted 1.55x), against 31.1 dB for StageVAR's next faster plan (single-branch last 4, 1.64x).

FLOP-model savings at 8B (flop_plan; 720p 5 s / 480p 10 s):
    faststar quality          45.3%  1.83x       44.7%  1.81x
    faststar balanced         66.8%  3.01x       50.4%  2.02x     (480p 10 s: clip 1's last scale is clip 2's
                                                                   context and always runs)
    faststar fast-hq          79.1%  4.78x       67.4%  3.07x     (480p 10 s: as for balanced)
    faststar fast             81.5%  5.40x       70.2%  3.35x     (480p 10 s: as for balanced)
    faststar guided-quality   42.4%  1.74x       37.3%  1.60x
    faststar guided-balanced  57.8%  2.37x       35.2%  1.54x
    faststar guided-fast      75.2%  4.04x       64.1%  2.79x
    faststar fast-keep28      79.9%  4.96x       68.8%  3.21x
    faststar fast-pruned      79.1%  4.79x       81.0%  5.25x
    random *                  (= faststar: same ratios)
(tests/test_accel.py checks these; regenerate the block with flop_plan after re-tuning.)
"""
from __future__ import annotations

import copy

PRESETS: dict[str, dict[str, dict]] = {
    # method     preset       knobs                                   keep ratios from the last scale backwards
    "faststar": {
        # single-branch guidance on the video clips' late scales, clip 0 (the first frame) guided throughout
        # quality: the detail term in the score and pruned positions copied from the previous frame (section 12d)
        # quality and balanced: half of the kept tokens drawn uniformly (anchors=0.5), half by score (section 12h)
        "quality":  dict(keep_ratios=(0.8, 1.0, 1.0), update="copy", w_detail=1.0, anchors=0.5,
                         single_branch_last=3, single_branch_clip0=0),
        "balanced": dict(keep_ratios=(0.0, 0.4, 1.0), update="copy", anchors=0.5,   # last scale not run
                         single_branch_last=3, single_branch_clip0=0),
        # fast-hq / fast: the kept tokens spread over 2x2 tiles (block=2): at 20-60 % of one scale coverage beats
        # concentration (section 12e)
        "fast-hq":  dict(keep_ratios=(0.0, 0.6, 1.0, 1.0), last_k=4, max_reps=1, update="restore", block=2,
                         single_branch_last=5, single_branch_clip0=0),
        "fast":     dict(keep_ratios=(0.0, 0.2, 1.0, 1.0), last_k=4, max_reps=1, update="restore", block=2,
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

# the control: uniformly random kept sets at exactly FastSTAR's preset ratios, update and guidance (without the
# knobs that spread FastSTAR's selection over the grid: the control's draw stays uniform)
SELECTION_SPREAD = ("block", "anchors")
PRESETS["random"] = {name: {k: v for k, v in knobs.items() if k not in SELECTION_SPREAD}
                     for name, knobs in PRESETS["faststar"].items() if not name.startswith("partial-")}

DEFAULT_PRESET = {"faststar": "balanced", "random": "balanced", "fastvar": "balanced", "stagevar": "original",
                  "skip": "last1"}
# the presets offered to users (README, `faststar serve`), slowest first; the others are kept for measurements
PUBLIC_PRESETS = ("quality", "balanced", "fast-hq", "fast")


def preset_params(method: str, preset: str) -> dict:
    """A copy of the knobs of ``PRESETS[method][preset]`` (clear errors on unknown names)."""
    if method not in PRESETS:
        raise ValueError(f"no presets for method {method!r}; methods with presets: {sorted(PRESETS)}")
    table = PRESETS[method]
    if preset not in table:
        raise ValueError(f"unknown preset {preset!r} for {method}; choose one of {sorted(table)}")
    return copy.deepcopy(table[preset])
