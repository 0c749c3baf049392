"""faststar.metrics: PSNR and SSIM against hand-computed values, a direct per-window reference, and values that
scikit-image 0.26.0 gave for the same inputs (a one-off check; scikit-image is not a dependency)."""
import math

import numpy as np
import pytest
import torch

from faststar.metrics import psnr, ssim


def _pattern():
    """Deterministic 2-frame 32x40 RGB pair (no RNG, so the recorded scikit-image values stay valid)."""
    t, y, x, c = np.meshgrid(np.arange(2), np.arange(32), np.arange(40), np.arange(3), indexing="ij")
    a = ((x * 7 + y * 13 + t * 29 + c * 50) % 256).astype(np.uint8)
    b = np.clip(a.astype(np.int64) + ((x * y + 3 * t + c) % 23) - 11, 0, 255).astype(np.uint8)
    return a, b


def _ssim_direct(x, y, L=255.0):
    """SSIM of two grey images by the definition: every valid 11x11 window, Gaussian weights, population stats."""
    r = np.arange(11) - 5
    w = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * 1.5 ** 2))
    w /= w.sum()
    c1, c2 = (0.01 * L) ** 2, (0.03 * L) ** 2
    vals = []
    for i in range(x.shape[0] - 10):
        for j in range(x.shape[1] - 10):
            px, py = x[i:i + 11, j:j + 11], y[i:i + 11, j:j + 11]
            mx, my = (w * px).sum(), (w * py).sum()
            vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
            cxy = (w * (px - mx) * (py - my)).sum()
            vals.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2)))
    return float(np.mean(vals))


# -- PSNR ------------------------------------------------------------------------------------------------------
def test_psnr_known_values():
    a = np.zeros((3, 8, 8, 3), np.uint8)
    assert psnr(a, a) == float("inf")
    assert psnr(a, a + 16) == pytest.approx(10 * math.log10(255 ** 2 / 256), abs=1e-12)
    assert psnr(a, a + 16) == pytest.approx(24.048404, abs=1e-6)
    # MSE is pooled over the whole video: one identical frame and one off by 4 -> MSE 8
    b = a.copy()
    b[1] = 4
    b[2] = 0
    assert psnr(a, b) == pytest.approx(10 * math.log10(255 ** 2 / (16 / 3)), abs=1e-12)
    # float inputs in [0, 1] with max_val=1; tensors and numpy agree
    x = torch.linspace(0, 1, 2 * 4 * 4 * 3).view(2, 4, 4, 3)
    assert psnr(x, x + 0.1, max_val=1.0) == pytest.approx(20.0, abs=1e-5)
    assert psnr(torch.from_numpy(a), a + 16) == psnr(a, a + 16)
    assert psnr(a, b, chunk=1, device="cpu") == psnr(a, b)


def test_psnr_no_uint8_wraparound():
    a = np.full((1, 4, 4, 3), 250, np.uint8)
    b = np.full((1, 4, 4, 3), 5, np.uint8)                # a - b in uint8 would wrap; must be 245
    assert psnr(a, b) == pytest.approx(10 * math.log10(255 ** 2 / 245 ** 2), abs=1e-12)


def test_psnr_shape_errors():
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(np.zeros((2, 4, 4, 3)), np.zeros((3, 4, 4, 3)))
    with pytest.raises(ValueError, match="expected"):
        psnr(np.zeros((2, 4, 4, 5)), np.zeros((2, 4, 4, 5)))


# -- SSIM ------------------------------------------------------------------------------------------------------
def test_ssim_identical_and_constant():
    a, _ = _pattern()
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    # constant images: variances vanish, SSIM = (2 m1 m2 + C1) / (m1^2 + m2^2 + C1)
    x = np.full((1, 16, 16, 3), 100, np.uint8)
    y = np.full((1, 16, 16, 3), 110, np.uint8)
    c1 = (0.01 * 255) ** 2
    expected = (2 * 100 * 110 + c1) / (100 ** 2 + 110 ** 2 + c1)
    assert ssim(x, y) == pytest.approx(expected, abs=1e-12)
    assert ssim(x, y, channels="luma") == pytest.approx(expected, abs=1e-12)


def test_ssim_matches_scikit_image_values():
    # skimage.metrics.structural_similarity(a[t], b[t], gaussian_weights=True, sigma=1.5,
    #     use_sample_covariance=False, data_range=255, channel_axis=-1), mean over t  (scikit-image 0.26.0);
    # luma: the same on a[t] @ [0.299, 0.587, 0.114] without channel_axis
    a, b = _pattern()
    assert ssim(a, b) == pytest.approx(0.9744499759402718, abs=1e-10)
    assert ssim(a, b, channels="luma") == pytest.approx(0.9707983225944452, abs=1e-10)


def test_ssim_matches_direct_definition():
    a, b = _pattern()
    a, b = a[:, :20, :24].astype(np.float64), b[:, :20, :24].astype(np.float64)
    rgb = np.mean([_ssim_direct(a[t, ..., c], b[t, ..., c]) for t in range(2) for c in range(3)])
    assert ssim(a, b) == pytest.approx(rgb, abs=1e-12)
    Y = lambda z: z @ np.array([0.299, 0.587, 0.114])
    luma = np.mean([_ssim_direct(Y(a[t]), Y(b[t])) for t in range(2)])
    assert ssim(a, b, channels="luma") == pytest.approx(luma, abs=1e-12)


def test_ssim_properties():
    a, b = _pattern()
    assert ssim(a, b) == pytest.approx(ssim(b, a), abs=1e-14)
    assert ssim(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(ssim(a, b), abs=1e-14)
    # mean over frames; chunking does not change it; a single image is a 1-frame video
    per_frame = [ssim(a[t], b[t]) for t in range(2)]
    assert ssim(a, b, chunk=1) == pytest.approx(np.mean(per_frame), abs=1e-14)
    assert ssim(a, b, device="cpu") == ssim(a, b)
    ro = a.copy()
    ro.flags.writeable = False                                # read-only arrays are accepted without warnings
    assert ssim(ro, b) == ssim(a, b)
    # more noise -> lower SSIM
    noisier = np.clip(a.astype(int) + 3 * (b.astype(int) - a.astype(int)), 0, 255).astype(np.uint8)
    assert ssim(a, noisier) < ssim(a, b) < 1.0
    with pytest.raises(ValueError, match="smaller than the 11x11"):
        ssim(a[:, :10], b[:, :10])
    with pytest.raises(ValueError, match="channels"):
        ssim(a, b, channels="hsv")


# -- detail-aware measures -------------------------------------------------------------------------------------
from faststar.metrics import (detail_energy, detail_retention, finest_residual, latent_detail_energy,  # noqa: E402
                              latent_detail_retention, latent_psnr)
from faststar.schedule import build_schedule  # noqa: E402


def _wave(amp=10.0, T=2, H=6, W=12, omega=math.pi / 2):
    """Grey RGB frames (R = G = B, so luma = the value): amp * cos(omega * column) + 128."""
    col = amp * np.cos(omega * np.arange(W))
    f = np.broadcast_to(col[None, None, :, None], (T, H, W, 3)) + 128.0
    return np.ascontiguousarray(f)


def test_detail_energy_known_values():
    # constant frames: no detail
    assert detail_energy(np.full((2, 8, 8, 3), 77, np.uint8)) == 0.0
    # cos(pi/2 j): the Laplacian is (2 cos w - 2) x = -2 x, the mean of cos^2 over the 10 valid columns is 1/2
    assert detail_energy(_wave(10.0)) == pytest.approx(4 * 100 / 2, rel=1e-12)
    # a checkerboard A (-1)^(i+j): each neighbour has the opposite sign, the Laplacian is -8 x, energy 64 A^2
    i, j = np.meshgrid(np.arange(9), np.arange(11), indexing="ij")
    board = (5.0 * (-1.0) ** (i + j))[None, :, :, None]
    assert detail_energy(board) == pytest.approx(64 * 25, rel=1e-12)
    # luma weights: a pure-green checkerboard has 0.587^2 of the grey one's energy
    rgb = np.zeros((1, 9, 11, 3))
    rgb[..., 1] = board[..., 0]
    assert detail_energy(rgb) == pytest.approx(0.587 ** 2 * 64 * 25, rel=1e-12)
    # uint8 numpy and torch agree
    u = _wave(40.0).round().astype(np.uint8)
    assert detail_energy(torch.from_numpy(u)) == detail_energy(u)


def test_detail_retention_blur_lowers_it_by_the_filter_response():
    """A horizontal blur [a, 1 - 2a, a] (circular over 3 periods, so the wave stays a wave) scales cos(w j) by 1 - 2a + 2a cos w:
    at w = pi/2 the retention is exactly (1 - 2a)^2."""
    x = _wave(30.0)
    assert detail_retention(x, x) == 1.0
    for a in (0.1, 0.25):
        blur = (1 - 2 * a) * x + a * (np.roll(x, 1, axis=2) + np.roll(x, -1, axis=2))
        assert detail_retention(blur, x) == pytest.approx((1 - 2 * a) ** 2, rel=1e-12)
    # added detail gives more than 1; a shift of the same content (another sample, as detailed) gives 1
    assert detail_retention(_wave(60.0), x) == pytest.approx(4.0, rel=1e-12)
    assert detail_retention(np.roll(x, 1, axis=2), x) == pytest.approx(1.0, rel=1e-12)
    with pytest.raises(ValueError, match="shapes differ"):
        detail_retention(x, x[:1])


def _tiny_schedule():
    return build_schedule([(1, 1), (2, 2), (4, 4)], [1, 2], image_reps=[1, 1, 1], video_reps=[1, 1, 1],
                          semantic_scales=1)


def _checker_canvas(amp, base=0.3, T=3, H=4, W=4, C=64):
    i, j = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    z = np.broadcast_to(amp * (-1.0) ** (i + j), (1, C, T, H, W)) + base
    return torch.tensor(np.ascontiguousarray(z))


def test_latent_detail_energy_known_values():
    sch = _tiny_schedule()
    # a constant canvas is all coarse: down to 2x2 and back up gives it back, no finest-scale residual
    assert latent_detail_energy(torch.full((1, 64, 3, 4, 4), 0.7), sch) == pytest.approx(0.0, abs=1e-24)
    # a 4x4 checkerboard averages to zero on every 2x2 cell: the residual is the checkerboard itself
    z = _checker_canvas(0.2)
    r = finest_residual(z, sch)
    assert torch.allclose(r, z - 0.3, atol=1e-15)
    assert latent_detail_energy(z, sch) == pytest.approx(0.04, rel=1e-12)
    assert latent_detail_retention(_checker_canvas(0.1), z, sch) == pytest.approx(0.25, rel=1e-12)
    assert latent_detail_retention(z, z, sch) == 1.0
    with pytest.raises(ValueError, match="latent frames"):
        latent_detail_energy(z[:, :, :2], sch)


def test_latent_psnr_known_values():
    z = _checker_canvas(0.2)                           # range 0.1 .. 0.5: peak 0.4
    assert latent_psnr(z, z) == float("inf")
    assert latent_psnr(z + 0.004, z) == pytest.approx(20 * math.log10(0.4 / 0.004), rel=1e-9)   # 40 dB
    assert latent_psnr(z.numpy(), z.numpy() - 0.04) == pytest.approx(20.0, rel=1e-9)
    with pytest.raises(ValueError, match="canvas shapes differ"):
        latent_psnr(z, z[:, :, :2])
