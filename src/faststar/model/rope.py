"""4-D scale-aware rotary position embedding.

head_dim / 2 rotary pairs, pair j = dims (2j, 2j+1) (interleaved), split into four groups of nf = head_dim / 8
frequencies laid out [scale | frame | height | width]; angle[a * nf + i] = pos_a * theta^(-i / nf).

Positions of a visual token at frame f, row i, column j of a (t, h, w) scale of global step k:
scale = text_maxlen + k, frame = frame_start + f, height = round(i * H / h), width = round(j * W / w), where
(H, W) is the final grid, so every scale lives on full-resolution coordinates. Text token n: (n, 0, 0, 0).
"""
from __future__ import annotations

import torch


def text_positions(L: int) -> torch.Tensor:
    pos = torch.zeros(L, 4, dtype=torch.int32)
    pos[:, 0] = torch.arange(L, dtype=torch.int32)
    return pos


def visual_positions(thw: tuple[int, int, int], HW: tuple[int, int], frame_start: int, scale_pos: int) -> torch.Tensor:
    """[N, 4] int32 positions (scale, frame, h, w) of a scale's tokens in t -> h -> w order."""
    t, h, w = thw
    H, W = HW
    hp = torch.round(torch.arange(h, dtype=torch.float32) * (H / h)).to(torch.int32)
    wp = torch.round(torch.arange(w, dtype=torch.float32) * (W / w)).to(torch.int32)
    fp = torch.arange(t, dtype=torch.int32) + frame_start
    F_, Hh, Ww = torch.meshgrid(fp, hp, wp, indexing="ij")
    pos = torch.stack([torch.full_like(F_, scale_pos), F_, Hh, Ww], dim=-1)
    return pos.reshape(-1, 4)


def rope_cos_sin(pos_N4: torch.Tensor, head_dim: int, theta: float = 10000.0, device=None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape [N, head_dim // 2] in fp32."""
    nf = head_dim // 8
    inv_freq = theta ** (-torch.arange(nf, dtype=torch.float32, device=device) / nf)     # [nf]
    ang = pos_N4.to(device=device, dtype=torch.float32)[:, :, None] * inv_freq           # [N, 4, nf]
    ang = ang.reshape(pos_N4.shape[0], 4 * nf)
    return ang.cos(), ang.sin()


def apply_rope(x_BNHD: torch.Tensor, cos_ND2: torch.Tensor, sin_ND2: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs; computed in fp32 and cast back to x's dtype."""
    B, N, Hh, D = x_BNHD.shape
    xf = x_BNHD.float().reshape(B, N, Hh, D // 2, 2)
    x0, x1 = xf[..., 0], xf[..., 1]
    c = cos_ND2[None, :, None, :]
    s = sin_ND2[None, :, None, :]
    out = torch.stack([x0 * c - x1 * s, x1 * c + x0 * s], dim=-1)
    return out.reshape(B, N, Hh, D).to(x_BNHD.dtype)
