"""Pruning masks drawn over the decoded video: kept regions as generated, pruned regions darkened and tinted."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..schedule import TEMPORAL_STRIDE, Schedule

MODES = ("last", "union", "mean")


def _latent_frame_of(num_frames: int, schedule: Schedule) -> list[int]:
    """Latent frame shown by each output frame: the VAE's 1 + 4k layout when the count matches, the latent
    frames themselves when it equals the latent count, else proportional."""
    T = schedule.latent_frames
    if num_frames == schedule.pixel_frames:
        return [0 if p == 0 else (p - 1) // TEMPORAL_STRIDE + 1 for p in range(num_frames)]
    if num_frames == T:
        return list(range(T))
    return [min(T - 1, p * T // num_frames) for p in range(num_frames)]


def pruned_maps(masks: list, schedule: Schedule, size: tuple[int, int], mode: str = "last") -> list:
    """Per latent frame: a float map [H, W] in [0, 1] of how pruned each pixel is (1 = pruned), or None when no
    step of that frame's clip pruned anything.

    mode "last": the kept mask of the clip's last pruned step that ran some tokens (usually the largest such
    scale); "union": pruned
    only where no pruned step kept the position; "mean": the fraction of the clip's pruned steps that pruned it.
    A skipped step counts as pruning everything.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if len(masks) != schedule.num_steps:
        raise ValueError(f"got {len(masks)} masks for a schedule of {schedule.num_steps} steps")
    out = []
    for c, (t_c, _, _) in enumerate(schedule.clip_thw):
        steps = [st for st in schedule.steps if st.scale.clip == c and masks[st.index] is not None]
        for f in range(t_c):
            if not steps:
                out.append(None)
                continue
            layers = []
            for st in steps:
                m = masks[st.index].detach().to("cpu", torch.float32)          # [t, h, w], 1 = kept
                ti = min(m.shape[0] - 1, f * m.shape[0] // t_c)
                up = F.interpolate(m[ti][None, None], size=size, mode="nearest")[0, 0]
                layers.append(up)
            if mode == "last":
                # the clip's last step that ran some tokens (a scale that did not run at all shows nothing of the
                # selection); the last step when every pruned step of the clip was skipped
                ran = [lay for st, lay in zip(steps, layers) if bool(masks[st.index].any())]
                kept = ran[-1] if ran else layers[-1]
            elif mode == "union":
                kept = torch.stack(layers).amax(0)
            else:
                kept = torch.stack(layers).mean(0)
            out.append((1.0 - kept).numpy())
    return out


def mask_video(masks: list, schedule: Schedule, frames_uint8: np.ndarray, *, mode: str = "last",
               shade: float = 0.35, tint: tuple[int, int, int] = (200, 30, 30), tint_strength: float = 0.35
               ) -> np.ndarray:
    """Overlay the pruning masks on decoded frames [T, H, W, 3] uint8 -> same shape, uint8.

    masks: GenerationOutput.masks / VideoOutput.masks (per step bool [t, h, w] kept mask, None = dense step).
    Kept pixels are left as they are; pruned pixels become ``frame * shade`` blended toward ``tint`` by
    ``tint_strength`` (partially pruned pixels in mode "mean" in between). Frames of clips without pruning are
    unchanged.
    """
    frames = np.asarray(frames_uint8)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    T, H, W, _ = frames.shape
    maps = pruned_maps(masks, schedule, (H, W), mode)
    lat = _latent_frame_of(T, schedule)
    tint_arr = np.asarray(tint, dtype=np.float32)
    out = frames.copy()
    for p in range(T):
        m = maps[lat[p]]
        if m is None:
            continue
        x = frames[p].astype(np.float32)
        dark = x * shade * (1.0 - tint_strength) + tint_arr * tint_strength
        a = m[..., None].astype(np.float32)
        out[p] = np.clip(np.rint(x * (1.0 - a) + dark * a), 0, 255).astype(np.uint8)
    return out
