"""FastSTAR's importance score: pure functions of canvas views, nothing about the loop (method.md, "Per-token
importance").

    x_k = down_k(canvas), u_k = up_k(down_{k-1}(canvas))                      (area down, trilinear up)
    S_sp(i) = cos(x_k(i), u_k(i))                converged / flat -> 1, edges and texture lower
    S_tm(i) = cos(x_k(f, y, x), x_k(f-1, y, x))  frame -1 = the previous clip's last frame; clip 0 has no S_tm
    D(i)    = local gradient energy of x_k       (an optional third term: where a wrong code shows most)
    "sum": I = w_sp n(1 - S_sp) + w_tm n(1 - S_tm) [+ w_detail n(D)], n = rank within the step
    "l2":  I = || (w_sp (1 - S_sp), w_tm (1 - S_tm) [, w_detail D]) ||_2 on the raw terms
High importance = not converged or moving = keep.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..vae.quant import area_down

COMBINES = ("sum", "l2")


def channel_cosine(a: torch.Tensor, b: torch.Tensor, dim: int = 1, eps: float = 1e-6) -> torch.Tensor:
    """Cosine similarity along ``dim``, of the two vectors each extended by one constant component sqrt(eps).

    (a.b + eps) / sqrt((|a|^2 + eps)(|b|^2 + eps)): two all-zero vectors compare as 1 (equal), a zero vector
    against a clearly non-zero one as ~0, and equal vectors as exactly 1. Computed in fp32; result in [-1, 1].
    """
    a, b = a.float(), b.float()
    dot = (a * b).sum(dim)
    na = a.pow(2).sum(dim) + eps
    nb = b.pow(2).sum(dim) + eps
    return ((dot + eps) * torch.rsqrt(na * nb)).clamp(-1.0, 1.0)


def scale_views(canvas_BCTHW: torch.Tensor, thw: tuple[int, int, int], prev_thw: tuple[int, int, int]
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_k, u_k): the canvas at scale k, and the canvas at scale k-1 brought back to k's grid (trilinear)."""
    x = area_down(canvas_BCTHW, thw)
    coarse = area_down(canvas_BCTHW, prev_thw)
    if tuple(coarse.shape[-3:]) == tuple(thw):
        return x, coarse
    u = F.interpolate(coarse.float(), size=tuple(thw), mode="trilinear", align_corners=False)
    return x, u


def spatial_similarity(x_BCthw: torch.Tensor, u_BCthw: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """S_sp per token [N] (t, h, w raster order): cos over channels of the fine and the upsampled coarse view."""
    return channel_cosine(x_BCthw, u_BCthw, dim=1, eps=eps)[0].flatten()


def last_frame_view(prev_canvas_BCTHW: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """The preceding clip's last latent frame area-resized to (h, w): [B, C, 1, h, w] in fp32 (the temporal
    reference of a clip's frame 0)."""
    return area_down(prev_canvas_BCTHW[:, :, -1:].float(), (1, *hw))


def temporal_similarity(x_BCthw: torch.Tensor, prev_canvas_BCTHW: torch.Tensor | None,
                        eps: float = 1e-6) -> torch.Tensor | None:
    """S_tm per token [N]: frame f against frame f-1 of the same view at the same (y, x); frame 0 against the
    preceding clip's last latent frame resized to (h, w). None when there is no preceding clip (clip 0)."""
    if prev_canvas_BCTHW is None:
        return None
    h, w = x_BCthw.shape[-2:]
    ref = last_frame_view(prev_canvas_BCTHW, (h, w)).to(x_BCthw.dtype)                   # [B, C, 1, h, w]
    other = torch.cat([ref, x_BCthw[:, :, :-1]], dim=2)
    return channel_cosine(x_BCthw, other, dim=1, eps=eps)[0].flatten()


def detail_energy(x_BCthw: torch.Tensor) -> torch.Tensor:
    """D per token [N] (t, h, w raster order): the squared local gradient of the view, summed over channels and
    over the forward differences in y and x (0 past the last row / column). Where the canvas has edges a wrong
    code changes the decoded video most: a proxy of the decoder's local gain."""
    x = x_BCthw[0].float()
    d = torch.zeros_like(x[0])
    d[:, :-1] += (x[:, :, 1:] - x[:, :, :-1]).pow(2).sum(0)
    d[:, :, :-1] += (x[:, :, :, 1:] - x[:, :, :, :-1]).pow(2).sum(0)
    return d.flatten()


def rank_normalize(v: torch.Tensor) -> torch.Tensor:
    """Average rank of each value (ties share a rank) scaled to [0, 1]: a term's weight then means the same
    whatever its spread."""
    v = v.float()
    n = v.numel()
    if n <= 1:
        return torch.zeros_like(v)
    sorted_v, order = torch.sort(v, stable=True)
    _, inverse, counts = torch.unique_consecutive(sorted_v, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).float() - 1.0
    avg = ends - (counts.float() - 1.0) / 2.0            # mean position of each group of equal values
    ranks = torch.empty_like(v)
    ranks[order] = avg[inverse]
    return ranks / (n - 1)


def importance(s_sp: torch.Tensor | None, s_tm: torch.Tensor | None, w_sp: float = 1.0, w_tm: float = 1.0,
               detail: torch.Tensor | None = None, w_detail: float = 0.0, combine: str = "sum") -> torch.Tensor:
    """The importance per token [N] (module docstring); a missing term (None or weight 0) contributes nothing."""
    terms = [(1.0 - s.float(), w) for s, w in ((s_sp, w_sp), (s_tm, w_tm)) if s is not None and w != 0]
    if detail is not None and w_detail != 0:
        terms.append((detail.float(), w_detail))
    if not terms:
        raise ValueError("importance needs at least one score term with a non-zero weight")
    if combine == "l2":
        return torch.stack([w * v for v, w in terms]).pow(2).sum(0).sqrt()
    if combine != "sum":
        raise ValueError(f"combine must be one of {COMBINES}, got {combine!r}")
    out = None
    for v, w in terms:
        t = w * rank_normalize(v)
        out = t if out is None else out + t
    return out
