"""Held-out measures of the testbed (faststar.testbed.evaluate): the SSIM decay curve and photo reconstruction."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from faststar.testbed.evaluate import frame_ssim_curve, photo_psnr


def test_frame_ssim_curve():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)
    still = np.stack([base] * 17)
    assert frame_ssim_curve(still) == [1.0] * 17
    # noise growing with k: SSIM to frame 0 falls monotonically from 1
    noisy = np.stack([np.clip(base + rng.normal(0, 4 * k, base.shape), 0, 255).astype(np.uint8) for k in range(17)])
    c = frame_ssim_curve(noisy)
    assert c[0] == 1.0 and all(a > b for a, b in zip(c[1:], c[2:])) and c[-1] < 0.9
    assert len(frame_ssim_curve(noisy, 5)) == 5
    with pytest.raises(ValueError, match="need 17 frames"):
        frame_ssim_curve(noisy[:10])


def test_photo_psnr_is_the_one_frame_round_trip():
    from faststar.testbed.config import tiny_spec
    from faststar.testbed.train import psnr, quantize_batch
    from faststar.vae.model import VideoVAE
    spec = tiny_spec()
    torch.manual_seed(0)
    vae = VideoVAE(spec.vae_config()).eval()
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, (2, *spec.pixel_hw, 3), dtype=np.uint8)
    sch = spec.build_schedule()
    r = photo_psnr(vae, imgs, sch)
    assert r["photos"] == 2
    with torch.no_grad():
        x = torch.from_numpy(imgs[1]).permute(2, 0, 1).float()[None, :, None] / 127.5 - 1
        z = vae.encode(x)
        assert z.shape[2] == 1                                    # one latent frame: the image clip
        assert r["per_photo"][1]["psnr"] == pytest.approx(psnr(vae.decode(z), x), rel=1e-9)
        q = quantize_batch(z, sch.first_clips(1))
        assert r["per_photo"][1]["psnr_quantized"] == pytest.approx(psnr(vae.decode(q), x), rel=1e-9)
    assert r["psnr"] == pytest.approx(np.mean([p["psnr"] for p in r["per_photo"]]))
