"""Full-reference fidelity metrics between two videos (e.g. pruned vs dense output of the same seed).

Inputs are uint8 numpy arrays or tensors shaped [T, H, W, C] (C = 3 or 1) or single images [H, W, C]; float inputs
work too when ``max_val`` matches their range. Torch inputs stay on their device and numpy inputs run on CPU, unless
``device=`` is given (e.g. "cuda"). All arithmetic is float64, a chunk of frames at a time. Cost of ``ssim`` on CPU:
about 1 s per 720p frame on 2 cores (so ~1.5 min for an 81-frame 720p video); pass ``device="cuda"`` for long runs.

* ``psnr``: one MSE pooled over every pixel of every frame (not the mean of per-frame PSNRs), so a single bad frame
  cannot be averaged away into +inf frames. Identical inputs give ``float('inf')``.
* ``ssim``: Wang et al. (2004) SSIM with an 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, population
  (not sample) covariances, computed on the "valid" region only (no padding: a 5-pixel border is not a window
  centre). Default ``channels="rgb"``: SSIM per RGB channel, averaged over channels, pixels and frames; this matches
  ``skimage.metrics.structural_similarity(a, b, channel_axis=-1, gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=255)`` frame by frame. ``channels="luma"`` computes it on BT.601 luma
  Y = 0.299 R + 0.587 G + 0.114 B instead (the original paper's grey-scale setting).
"""
from __future__ import annotations

import math

import numpy as np
import torch


def _from_numpy(x) -> torch.Tensor:
    x = np.asarray(x)
    return torch.from_numpy(x if x.flags.writeable else x.copy())


def _pair(a, b, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    dev = torch.device(device) if device is not None else \
        next((x.device for x in (a, b) if isinstance(x, torch.Tensor)), torch.device("cpu"))
    a, b = (x.detach().to(dev) if isinstance(x, torch.Tensor) else _from_numpy(x).to(dev) for x in (a, b))
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.ndim == 3:
        a, b = a[None], b[None]
    if a.ndim != 4 or a.shape[-1] not in (1, 3):
        raise ValueError(f"expected [T, H, W, C] or [H, W, C] with C in (1, 3); got {tuple(a.shape)}")
    return a, b                     # original dtype; converted to float64 chunk by chunk to bound memory


def psnr(a, b, max_val: float = 255.0, chunk: int = 8, device=None) -> float:
    """Peak signal-to-noise ratio in dB over whole videos: 10 log10(max_val^2 / MSE), MSE over all elements.

    Returns ``float('inf')`` when the inputs are identical (MSE = 0). ``chunk`` frames are converted to float64 at
    a time to bound memory.
    """
    a, b = _pair(a, b, device)
    sq = 0.0
    for i in range(0, a.shape[0], chunk):
        sq += (a[i:i + chunk].double() - b[i:i + chunk].double()).pow_(2).sum().item()
    mse = sq / a.numel()
    if mse == 0:
        return float("inf")
    return 10.0 * math.log10(max_val ** 2 / mse)


def _gaussian_1d(size: int, sigma: float) -> list[float]:
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-x ** 2 / (2 * sigma ** 2))
    return (g / g.sum()).tolist()


def _blur_valid(z: torch.Tensor, g: list[float]) -> torch.Tensor:
    """Separable Gaussian over the last two dims, valid region only (no padding).

    Shifted slices accumulated in place: on CPU this is ~7x faster than float64 ``F.conv2d`` (im2col path).
    """
    k = len(g)
    H, W = z.shape[-2] - k + 1, z.shape[-1] - k + 1
    h = z[..., :W] * g[0]
    for i in range(1, k):
        h.add_(z[..., i:i + W], alpha=g[i])
    out = h[..., :H, :] * g[0]
    for i in range(1, k):
        out.add_(h[..., i:i + H, :], alpha=g[i])
    return out


def _ssim_map_sum(x: torch.Tensor, y: torch.Tensor, g: list[float], c1: float, c2: float):
    """Sum and count of the SSIM map (valid windows) for a chunk of frames [N, C, H, W]."""
    mu_x, mu_y = _blur_valid(x, g), _blur_valid(y, g)
    sxx = _blur_valid(x * x, g).sub_(mu_x * mu_x)
    syy = _blur_valid(y * y, g).sub_(mu_y * mu_y)
    sxy = _blur_valid(x * y, g).sub_(mu_x * mu_y)
    num = (2 * mu_x * mu_y + c1).mul_(2 * sxy + c2)
    den = (mu_x * mu_x + mu_y * mu_y + c1).mul_(sxx.add_(syy).add_(c2))
    s = num.div_(den)
    return s.sum(), s.numel()


def ssim(a, b, max_val: float = 255.0, channels: str = "rgb", win_size: int = 11, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03, chunk: int = 8, device=None) -> float:
    """Mean SSIM over frames (Gaussian 11x11, sigma 1.5, K1 0.01, K2 0.03; see module docstring).

    ``channels``: ``"rgb"`` (per-channel SSIM averaged; default) or ``"luma"`` (BT.601 Y). Frames must be at least
    ``win_size`` pixels in each direction. ``chunk`` frames are processed at a time to bound memory.
    """
    a, b = _pair(a, b, device)
    T, H, W, C = a.shape
    if H < win_size or W < win_size:
        raise ValueError(f"frames of {H}x{W} are smaller than the {win_size}x{win_size} SSIM window")
    if channels not in ("rgb", "luma"):
        raise ValueError(f"channels must be 'rgb' or 'luma'; got {channels!r}")
    g = _gaussian_1d(win_size, sigma)
    c1, c2 = (k1 * max_val) ** 2, (k2 * max_val) ** 2
    luma = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64, device=a.device)
    total, count = 0.0, 0
    for i in range(0, T, chunk):
        x, y = a[i:i + chunk].double(), b[i:i + chunk].double()
        if channels == "luma" and C == 3:
            x, y = (x * luma).sum(-1, keepdim=True), (y * luma).sum(-1, keepdim=True)
        x, y = x.permute(0, 3, 1, 2).contiguous(), y.permute(0, 3, 1, 2).contiguous()     # [N, C, H, W]
        s, n = _ssim_map_sum(x, y, g, c1, c2)
        total += s.item()
        count += n
    return total / count
