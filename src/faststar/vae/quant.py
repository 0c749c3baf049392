"""Bitwise spherical quantization (BSQ) and the multi-scale canvas.

Tensors carry their layout in the name suffix: B batch, C channels (64 latent or d code bits), T/t frames,
H/W the clip's full latent grid, h/w one scale's grid, N tokens, d bits per token.

The canvas of a clip is the running sum of every step's codes lifted to the clip's full grid. A step of scale
(t, h, w) sees ``area(canvas -> (t, h, w))``; its codes (d = 16 or 64 channels) are lifted to 64 x H x W per
frame by one trilinear resize of the (d, h, w) volume (so a 16-bit code is interpolated along the channel axis,
half-pixel centres, not repeated) and added to the canvas.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..schedule import Schedule


def bits_to_codes(bits_Nd: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """0/1 labels -> codes (2b - 1) / sqrt(d), same shape."""
    d = bits_Nd.shape[-1]
    return (bits_Nd.to(dtype) * 2 - 1) / math.sqrt(d)


def area_down(canvas_BCTHW: torch.Tensor, thw: tuple[int, int, int]) -> torch.Tensor:
    """Adaptive average pooling to (t, h, w): PyTorch 'area' semantics."""
    if tuple(canvas_BCTHW.shape[-3:]) == tuple(thw):
        return canvas_BCTHW
    return F.interpolate(canvas_BCTHW, size=tuple(thw), mode="area")


def lift_codes(codes_BdThw: torch.Tensor, channels: int, HW: tuple[int, int]) -> torch.Tensor:
    """[B, d, t, h, w] -> [B, channels, t, H, W]: per frame, trilinear over (d, h, w) -> (channels, H, W)."""
    B, d, t, h, w = codes_BdThw.shape
    H, W = HW
    if d == channels and (h, w) == (H, W):
        return codes_BdThw
    x = codes_BdThw.permute(0, 2, 1, 3, 4).reshape(B * t, 1, d, h, w)
    x = F.interpolate(x, size=(channels, H, W), mode="trilinear", align_corners=False)
    return x.reshape(B, t, channels, H, W).permute(0, 2, 1, 3, 4)


def down_channels(x_BCThw: torch.Tensor, d: int) -> torch.Tensor:
    """Average groups of C/d consecutive channels (the semantic quantizer's 64 -> 16 area pooling)."""
    B, C, t, h, w = x_BCThw.shape
    if C == d:
        return x_BCThw
    x = x_BCThw.permute(0, 2, 1, 3, 4).reshape(B * t, 1, C, h, w)
    x = F.interpolate(x, size=(d, h, w), mode="area")
    return x.reshape(B, t, d, h, w).permute(0, 2, 1, 3, 4)


def bsq_bits(x_BdThw: torch.Tensor) -> torch.Tensor:
    """BSQ labels: l2-normalize over channels, take the sign. Returns uint8 [B, t, h, w, d]."""
    n = x_BdThw / x_BdThw.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return (n > 0).permute(0, 2, 3, 4, 1).to(torch.uint8)


def codes_grid(bits_Nd: torch.Tensor, thw: tuple[int, int, int], keep_idx: torch.Tensor | None = None,
               num_tokens: int | None = None) -> torch.Tensor:
    """Sampled bits (of all tokens, or of kept tokens only) -> code grid [1, d, t, h, w]; pruned tokens get 0."""
    t, h, w = thw
    d = bits_Nd.shape[-1]
    codes = bits_to_codes(bits_Nd)
    if keep_idx is not None:
        full = codes.new_zeros(t * h * w, d)
        full[keep_idx] = codes
        codes = full
    return codes.reshape(1, t, h, w, d).permute(0, 4, 1, 2, 3)


@torch.no_grad()
def multiscale_quantize(z_BCTHW: torch.Tensor, schedule: Schedule, record: dict | None = None
                        ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Residual multi-scale BSQ of a latent over a schedule (the encoder side of teacher forcing).

    Returns the bit labels of every step ([t, h, w, d] uint8, schedule step order) and the summed codes
    [B, 64, T, H, W] (the concatenated final canvases). ``record`` (optional dict) receives per-step tensors
    ``q.step{k:02d}.{scale_input,residual,bits,codes,canvas}`` for comparison with reference data.
    """
    B, C, T, H, W = z_BCTHW.shape
    if B != 1:
        raise ValueError(f"multiscale_quantize takes one latent (B=1), got B={B}")
    if T < schedule.latent_frames:
        raise ValueError(f"latent has {T} frames, the schedule needs {schedule.latent_frames}")
    if (H, W) != schedule.final_hw:
        raise ValueError(f"latent grid {(H, W)} does not match the schedule's final grid {schedule.final_hw}")
    bits_list = []
    canvases = []
    frame = 0
    canvas = None
    for st in schedule.steps:
        s = st.scale
        t_c = schedule.clip_thw[s.clip][0]
        if s.index_in_clip == 0 and st.rep == 0:
            frame = s.frame_start
            target = z_BCTHW[:, :, frame:frame + t_c].float()
            canvas = target.new_zeros(target.shape)
        scale_input = area_down(canvas, s.thw)
        resid = area_down(target - canvas, s.thw)
        resid = down_channels(resid, s.bits)
        bits = bsq_bits(resid)                                   # [1, t, h, w, d]
        codes = bits_to_codes(bits).permute(0, 4, 1, 2, 3)       # [1, d, t, h, w]
        canvas = canvas + lift_codes(codes, C, (H, W))
        bits_list.append(bits[0])
        if record is not None:
            k = st.index
            record[f"q.step{k:02d}.scale_input"] = scale_input
            record[f"q.step{k:02d}.residual"] = resid
            record[f"q.step{k:02d}.bits"] = bits
            record[f"q.step{k:02d}.codes"] = codes
            record[f"q.step{k:02d}.canvas"] = canvas
        if schedule.is_last_of_clip(st):
            canvases.append(canvas)
    return bits_list, torch.cat(canvases, dim=2)


def summed_codes_from_bits(bits_list: list[torch.Tensor], schedule: Schedule, channels: int = 64) -> torch.Tensor:
    """Rebuild the summed codes [1, 64, T, H, W] from per-step labels (schedule step order)."""
    H, W = schedule.final_hw
    canvases = []
    canvas = None
    for st, bits in zip(schedule.steps, bits_list):
        s = st.scale
        if s.index_in_clip == 0 and st.rep == 0:
            canvas = torch.zeros(1, channels, schedule.clip_thw[s.clip][0], H, W)
        codes = bits_to_codes(bits.reshape(-1, bits.shape[-1])).reshape(1, *s.thw, -1).permute(0, 4, 1, 2, 3)
        canvas = canvas + lift_codes(codes, channels, (H, W))
        if schedule.is_last_of_clip(st):
            canvases.append(canvas)
    return torch.cat(canvases, dim=2)
