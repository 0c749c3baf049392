"""The testbed model in one place: pixel size, schedule, VAE config, transformer preset, training defaults.

The testbed is a small model of the InfinityStar architecture trained on a few real clips (see ``data.py``):

* 256 x 448 pixels (latent grid 16 x 28), 17 pixel frames = 5 latent frames = clip 0 (1 latent frame, the image)
  + clip 1 (4 latent frames).
* pyramid (1,1) ... (16,28); the first 5 scales are semantic (16 bits, ``semantic_head2``), the last 3 detail
  (64 bits, ``head``); image repetitions [3]*8, video [3,3,3,3,3,2,1,1]; tau 1.0 (image) / 0.4 (video).
* the engine's VideoVAE at small widths; the engine's STARTransformer "testbed" preset (faststar.config).
"""
from __future__ import annotations

from ..config import TransformerConfig, transformer_config
from ..schedule import Schedule, build_schedule

PIXEL_HW = (256, 448)
PIXEL_FRAMES = 17
FPS = 16
PYRAMID = [(1, 1), (2, 3), (3, 5), (4, 7), (6, 11), (8, 14), (12, 21), (16, 28)]
CLIP_FRAMES = [1, 4]
SEMANTIC_SCALES = 5
IMAGE_REPS = [3] * 8
VIDEO_REPS = [3, 3, 3, 3, 3, 2, 1, 1]
TAU_IMAGE = 1.0
TAU_VIDEO = 0.4
TEXT_ENCODER = "minilm"
NAME = "faststar-testbed"

# the engine VAE at small widths (same block structure, DC down/up blocks, 16x spatial / 4x temporal)
VAE_KWARGS = dict(block_out_channels=(32, 64, 128, 128, 128), layers_per_block=2)

# guidance defaults written to config.json (APG as the release; tune at inference)
GUIDANCE = dict(mode="apg", scale=4.0, norm_threshold=0.05, eta=0.0)


def schedule_kwargs() -> dict:
    """build_schedule keyword arguments (JSON-ready; what config.json stores under "schedule")."""
    return dict(pyramid=[list(p) for p in PYRAMID], clip_frames=list(CLIP_FRAMES), image_reps=list(IMAGE_REPS),
                video_reps=list(VIDEO_REPS), semantic_scales=SEMANTIC_SCALES, tau_image=TAU_IMAGE,
                tau_video=TAU_VIDEO)


def testbed_schedule(name: str = NAME) -> Schedule:
    """The testbed schedule: 2 clips (1 + 4 latent frames), 16 scales, 43 steps, 7,872 visual tokens."""
    kw = schedule_kwargs()
    kw["pyramid"] = [tuple(p) for p in kw["pyramid"]]
    return build_schedule(name=name, **kw)


def testbed_vae_config(**overrides):
    """VAEConfig of the testbed VAE (the engine's VideoVAE, small widths)."""
    from ..vae.model import VAEConfig
    return VAEConfig(**{**VAE_KWARGS, **overrides, "name": "testbed"})


def testbed_transformer_config(**overrides) -> TransformerConfig:
    """The "testbed" preset of faststar.config (depth 8, width 384, 6 heads, 2 kv heads, MiniLM text 384-d)."""
    return transformer_config("testbed", **overrides)
