"""Scale schedules: clips, scales, repetitions, heads, temperatures and references. Pure integers.

A schedule is a flat tuple of ``Scale``s grouped into clips. Clip 0 is a single latent frame (the first frame,
an image pyramid); every later clip holds ``frames_per_clip`` latent frames and runs the same spatial pyramid with
t = frames_per_clip. Every scale of clip c >= 1 attends to the cached K/V of the last scale of clip c - 1.

The official pyramids follow the InfinityStar rule: for a base side s and aspect r = h / w,
``pw = round(sqrt(s^2 / r))`` and ``ph = round(pw_float * r)`` (round half to even), over the base sides below.
A resolution budget keeps the first 11/13/14/15 sides. The FLOP model is the analytical one of the spec (linear
layers plus attention, x depth, x CFG batch); heads, norms, RoPE, embeddings, text encoder and VAE are excluded.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

BASE_SIDES = (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 16, 24, 32, 40, 60)
# pixel budget -> number of base sides kept
BUDGET_SCALES = {"0.06M": 11, "0.25M": 13, "0.40M": 14, "0.90M": 15}
RESOLUTIONS = {"720p": "0.90M", "480p": "0.40M"}
# nominal h/w ratios; the templates are the real h/w of the largest grid of each, and their inverses
NOMINAL_H_DIV_W = (1.0, 100 / 116, 3 / 4, 2 / 3, 9 / 16, 1 / 2, 2 / 5, 1 / 3)
DEFAULT_ASPECT = 0.571   # what the release asks for; its nearest template is 9:16 (landscape 16:9)
VAE_STRIDE = 16
TEMPORAL_STRIDE = 4


def _pyramid(h_div_w: float, n: int) -> list[tuple[int, int]]:
    out = []
    for s in BASE_SIDES[:n]:
        pw_f = math.sqrt(s * s / h_div_w)
        ph_f = pw_f * h_div_w
        out.append((int(np.round(ph_f)), int(np.round(pw_f))))
    return out


def aspect_templates(budget: str = "0.90M") -> dict[float, list[tuple[int, int]]]:
    """Template h/w (3 decimals, truncated as the reference keys them) -> (h, w) pyramid."""
    n = BUDGET_SCALES[budget]
    out: dict[float, list[tuple[int, int]]] = {}
    for r in NOMINAL_H_DIV_W:
        full = _pyramid(r, len(BASE_SIDES))
        real = full[-1][0] / full[-1][1]
        out[int(real * 1000) / 1000] = full[:n]
        if r != 1.0:
            out[int(1 / real * 1000) / 1000] = [(w, h) for h, w in full[:n]]
    return dict(sorted(out.items()))


def nearest_template(h_div_w: float, budget: str = "0.90M") -> float:
    keys = np.array(list(aspect_templates(budget)))
    return float(keys[np.argmin(np.abs(keys - h_div_w))])


@dataclass(frozen=True)
class Scale:
    index: int                 # global scale index si
    clip: int
    index_in_clip: int
    thw: tuple[int, int, int]
    reps: int
    bits: int                  # 16 (semantic head) or 64 (detail head)
    tau: float
    frame_start: int           # first latent frame of the clip (RoPE frame offset)
    ref_scale: int | None      # global index of the scale whose K/V this scale attends to
    first_step: int            # global visual step index of the first repetition

    @property
    def num_tokens(self) -> int:
        t, h, w = self.thw
        return t * h * w

    @property
    def semantic(self) -> bool:
        return self.bits != 64


@dataclass(frozen=True)
class Step:
    index: int                 # global visual step k (RoPE scale position = text_maxlen + k)
    scale: Scale
    rep: int

    @property
    def last_rep(self) -> bool:
        return self.rep == self.scale.reps - 1


@dataclass(frozen=True)
class Schedule:
    scales: tuple[Scale, ...]
    clip_thw: tuple[tuple[int, int, int], ...]     # full canvas (t_c, H, W) per clip
    name: str = "custom"

    @cached_property
    def steps(self) -> tuple[Step, ...]:
        return tuple(Step(s.first_step + r, s, r) for s in self.scales for r in range(s.reps))

    @property
    def num_steps(self) -> int:
        return len(self.steps)

    @property
    def num_clips(self) -> int:
        return len(self.clip_thw)

    @property
    def latent_frames(self) -> int:
        return sum(t for t, _, _ in self.clip_thw)

    @property
    def pixel_frames(self) -> int:
        return TEMPORAL_STRIDE * (self.latent_frames - 1) + 1

    @property
    def final_hw(self) -> tuple[int, int]:
        return self.clip_thw[0][1], self.clip_thw[0][2]

    def clip_scales(self, clip: int) -> tuple[Scale, ...]:
        return tuple(s for s in self.scales if s.clip == clip)

    @cached_property
    def referenced_scales(self) -> frozenset[int]:
        """Scales whose last repetition's K/V a later scale attends to."""
        return frozenset(s.ref_scale for s in self.scales if s.ref_scale is not None)

    def is_ref_step(self, step: Step) -> bool:
        return step.last_rep and step.scale.index in self.referenced_scales

    def is_last_of_clip(self, step: Step) -> bool:
        s = step.scale
        return step.last_rep and (s.index + 1 == len(self.scales) or self.scales[s.index + 1].clip != s.clip)

    def max_ref_tokens(self) -> int:
        return max([self.scales[s].num_tokens for s in self.referenced_scales] or [0])

    def max_kv_len(self, text_len: int) -> int:
        m = 0
        for s in self.scales:
            ref = self.scales[s.ref_scale].num_tokens if s.ref_scale is not None else 0
            m = max(m, ref + s.num_tokens)
        return text_len + m

    def first_clips(self, n: int) -> "Schedule":
        """The schedule of the first n clips (same step indices): what teacher forcing of given frames encodes."""
        if not 1 <= n <= self.num_clips:
            raise ValueError(f"n must be in [1, {self.num_clips}], got {n}")
        return Schedule(tuple(s for s in self.scales if s.clip < n), self.clip_thw[:n], name=f"{self.name}[:{n}]")

    def pixel_size(self, stride: int = VAE_STRIDE) -> tuple[int, int]:
        H, W = self.final_hw
        return H * stride, W * stride

    def describe(self) -> str:
        rows = [f"schedule {self.name}: {len(self.scales)} scales, {self.num_steps} steps, clips {list(self.clip_thw)}"]
        for s in self.scales:
            rows.append(f"  si={s.index:2d} clip={s.clip} thw={s.thw} reps={s.reps} bits={s.bits} tau={s.tau} "
                        f"ref={s.ref_scale} steps={s.first_step}..{s.first_step + s.reps - 1}")
        return "\n".join(rows)


def build_schedule(pyramid: list[tuple[int, int]], clip_frames: list[int], *, image_reps: list[int],
                   video_reps: list[int], semantic_scales: int, tau_image: float = 1.0, tau_video: float = 0.4,
                   semantic_bits: int = 16, detail_bits: int = 64, name: str = "custom") -> Schedule:
    """Custom schedule: one spatial pyramid, clip 0 with t = clip_frames[0] (normally 1), then video clips."""
    n = len(pyramid)
    if not clip_frames or clip_frames[0] < 1:
        raise ValueError(f"clip_frames must start with the image clip's frame count, got {clip_frames}")
    if len(image_reps) != n or len(video_reps) != n:
        raise ValueError(f"repetition lists must have {n} entries (one per pyramid scale); "
                         f"got image {len(image_reps)}, video {len(video_reps)}")
    if any(r < 1 for r in list(image_reps) + list(video_reps)):
        raise ValueError("every scale needs at least one repetition")
    if not 0 <= semantic_scales <= n:
        raise ValueError(f"semantic_scales must be in [0, {n}], got {semantic_scales}")
    H, W = pyramid[-1]
    scales: list[Scale] = []
    step = 0
    frame = 0
    clip_thw = []
    for c, t_c in enumerate(clip_frames):
        reps = image_reps if c == 0 else video_reps
        ref = (len(scales) - 1) if c > 0 else None    # last scale of the previous clip
        for i, (h, w) in enumerate(pyramid):
            scales.append(Scale(index=len(scales), clip=c, index_in_clip=i, thw=(t_c, h, w), reps=reps[i],
                                bits=semantic_bits if i < semantic_scales else detail_bits,
                                tau=tau_image if c == 0 else tau_video, frame_start=frame,
                                ref_scale=ref, first_step=step))
            step += reps[i]
        clip_thw.append((t_c, H, W))
        frame += t_c
    return Schedule(tuple(scales), tuple(clip_thw), name=name)


SUPPORTED_DURATIONS = (5, 10)


def official_schedule(resolution: str = "720p", duration: int = 5, aspect: float | str = DEFAULT_ASPECT,
                      frames_per_clip: int = 20) -> Schedule:
    """The release's schedule (``infinity_elegant_clip20frames_v2``) for a resolution, duration and aspect.

    ``aspect`` is h/w (0.5625 for landscape 16:9) or a string ``"16:9"`` (w:h); it snaps to the nearest template.
    """
    if resolution not in RESOLUTIONS:
        raise ValueError(f"unsupported resolution {resolution!r}; supported: {sorted(RESOLUTIONS)}")
    if duration not in SUPPORTED_DURATIONS:
        raise ValueError(f"unsupported duration {duration!r} s; supported: {list(SUPPORTED_DURATIONS)} s at 16 fps")
    budget = RESOLUTIONS[resolution]
    if isinstance(aspect, str):
        try:
            a, b = (float(x) for x in aspect.split(":"))
        except ValueError:
            raise ValueError(f"aspect must be h/w as a number or 'W:H' like '16:9', got {aspect!r}") from None
        aspect = b / a
    key = nearest_template(float(aspect), budget)
    pyramid = aspect_templates(budget)[key]
    n = len(pyramid)
    frames = 16 * duration + 1
    latent = (frames - 1) // TEMPORAL_STRIDE + 1
    clips = [1] + [frames_per_clip] * ((latent - 1 + frames_per_clip - 1) // frames_per_clip)
    rest = latent - 1 - frames_per_clip * (len(clips) - 2)
    clips[-1] = rest  # the last clip is shortened when the latent frames do not fill it (never for 5 s / 10 s)
    if resolution == "720p":
        video_reps = [3] * (n - 3) + [2, 1, 1]
        semantic = 12
    else:
        video_reps = [3] * (n - 2) + [2, 1]
        semantic = 11
    return build_schedule(pyramid, clips, image_reps=[3] * n, video_reps=video_reps, semantic_scales=semantic,
                          tau_image=1.0, tau_video=0.4, name=f"{resolution}-{duration}s-hw{key}")


# ----------------------------------------------------------------------------------------------------------------
# FLOP model

def linear_flops_per_token(width: int, num_heads: int, num_kv_heads: int, mlp_hidden: int) -> int:
    head_dim = width // num_heads
    q_o = 2 * width * width
    kv = 2 * width * num_kv_heads * head_dim
    mlp = 3 * width * mlp_hidden
    return 2 * (q_o + kv + mlp)


def step_flops(n_q: int, n_kv: int, *, depth: int, width: int, num_heads: int, num_kv_heads: int, mlp_hidden: int,
               batch: int = 2) -> tuple[float, float]:
    """(linear, attention) FLOPs of one forward over n_q query tokens that attend to n_kv keys."""
    lin = linear_flops_per_token(width, num_heads, num_kv_heads, mlp_hidden) * n_q
    att = 4 * n_q * n_kv * width
    return float(lin * depth * batch), float(att * depth * batch)


def schedule_flops(schedule: Schedule, cfg, text_len: int = 128, batch: int = 2) -> dict:
    """Per-step and total FLOPs of a dense run (cfg: a TransformerConfig)."""
    kw = dict(depth=cfg.depth, width=cfg.width, num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads,
              mlp_hidden=cfg.mlp_hidden, batch=batch)
    text_lin, text_att = step_flops(text_len, text_len, **kw)
    steps = []
    for st in schedule.steps:
        s = st.scale
        ref = schedule.scales[s.ref_scale].num_tokens if s.ref_scale is not None else 0
        lin, att = step_flops(s.num_tokens, ref + text_len + s.num_tokens, **kw)
        steps.append(dict(step=st.index, scale=s.index, tokens=s.num_tokens, linear=lin, attention=att))
    total = text_lin + text_att + sum(x["linear"] + x["attention"] for x in steps)
    return dict(text=text_lin + text_att, steps=steps, total=total)


def step_cost(cfg, schedule: Schedule, step: Step, *, text_len: int, tokens_run: int | None, prune_layer: int,
              branches: int, ref_lens, batch: int = 2) -> tuple[float, float]:
    """(FLOPs as run, FLOPs dense) of one step: the one cost model of the loop's statistics and of the FLOP
    prediction (``faststar.accel.flop_plan``).

    tokens_run: tokens through blocks [prune_layer, depth) (None = all N; 0 with branches 0 = the step did not
    run); blocks [0, prune_layer) run all N. ref_lens: per-layer length of the reference context this step
    attends to (a pruned referenced step leaves the next clip fewer keys). The dense cost runs all N with the
    full reference, on ``batch`` guidance rows.
    """
    s = step.scale
    N = s.num_tokens
    n_run = N if tokens_run is None else tokens_run
    kw = dict(depth=1, width=cfg.width, num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads,
              mlp_hidden=cfg.mlp_hidden)
    flops = 0.0
    if branches > 0:
        for layer in range(cfg.depth):
            n_q = N if layer < prune_layer else n_run
            flops += sum(step_flops(n_q, text_len + ref_lens[layer] + n_q, batch=branches, **kw))
    full_ref = schedule.scales[s.ref_scale].num_tokens if s.ref_scale is not None else 0
    dense = sum(step_flops(N, text_len + full_ref + N, batch=batch, **dict(kw, depth=cfg.depth)))
    return flops, dense
