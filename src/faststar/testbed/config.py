"""The testbed model in one place: pixel size, schedule, VAE config, transformer preset, training defaults.

The testbed is a small model of the InfinityStar architecture trained on a few real clips (see ``data.py``):

* 256 x 448 pixels (latent grid 16 x 28), 17 pixel frames = 5 latent frames = clip 0 (1 latent frame, the image)
  + clip 1 (4 latent frames).
* pyramid (1,1) ... (16,28); the first 5 scales are semantic (16 bits, ``semantic_head2``), the last 3 detail
  (64 bits, ``head``); image repetitions [3]*8, video [3,3,3,3,3,2,1,1]; tau 1.0 (image) / 0.4 (video).
* the engine's VideoVAE at small widths; the engine's STARTransformer "testbed" preset (faststar.config).
"""
from __future__ import annotations

from dataclasses import dataclass

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
# (32, 64, 64, 64, 64): 7.0 M parameters, 14 MB in fp16 (one file under the 16 MiB limit of a device run); the
# (32, 64, 128, 128, 128) variant has 20.7 M (41 MB in fp16), too big next to the 35 MB transformer.
VAE_KWARGS = dict(block_out_channels=(32, 64, 64, 64, 64), layers_per_block=2)

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


# ------------------------------------------------------------------------------------------------------------------
# what the trainer needs to know about a model: the testbed, or a tiny variant for CPU tests

@dataclass
class TrainSpec:
    """Sizes of one trainable model: pixels, schedule, VAE widths, transformer config."""
    name: str
    pixel_hw: tuple[int, int]
    schedule: dict                       # build_schedule kwargs (JSON-ready)
    vae: dict                            # VAEConfig overrides
    transformer: dict                    # TransformerConfig fields
    text_pad: int = 64                   # text slots of the packed sequence (>= longest caption, = cfg_uncond_len)
    vae_crop_hw: tuple[int, int] | None = None   # random crops in VAE phase 1 (None = whole frames)

    @property
    def pixel_frames(self) -> int:
        return 4 * (sum(self.schedule["clip_frames"]) - 1) + 1

    def build_schedule(self) -> Schedule:
        kw = dict(self.schedule)
        kw["pyramid"] = [tuple(p) for p in kw["pyramid"]]
        return build_schedule(name=self.name, **kw)

    def vae_config(self):
        from ..vae.model import VAEConfig
        return VAEConfig(**{**self.vae, "name": self.name})

    def transformer_config(self) -> TransformerConfig:
        return TransformerConfig.from_dict({**self.transformer, "name": self.name})

    def to_dict(self) -> dict:
        return dict(name=self.name, pixel_hw=list(self.pixel_hw), schedule=self.schedule, vae=self.vae,
                    transformer=self.transformer, text_pad=self.text_pad,
                    vae_crop_hw=list(self.vae_crop_hw) if self.vae_crop_hw else None)


def testbed_spec() -> TrainSpec:
    return TrainSpec(name=NAME, pixel_hw=PIXEL_HW, schedule=schedule_kwargs(),
                     vae={k: list(v) if isinstance(v, tuple) else v for k, v in VAE_KWARGS.items()},
                     transformer=testbed_transformer_config().to_dict(), text_pad=64, vae_crop_hw=(128, 224))


def tiny_spec() -> TrainSpec:
    """A CPU-sized variant for tests: 64 x 112 pixels (grid 4 x 7), 5 frames = clips [1, 1], 3 scales."""
    sched = dict(pyramid=[[1, 1], [2, 3], [4, 7]], clip_frames=[1, 1], image_reps=[2, 1, 1], video_reps=[2, 1, 1],
                 semantic_scales=2, tau_image=1.0, tau_video=0.4)
    tf = transformer_config("testbed", depth=2, width=64, num_heads=2, num_kv_heads=1, block_chunks=1).to_dict()
    return TrainSpec(name="faststar-testbed-tiny", pixel_hw=(64, 112), schedule=sched,
                     vae=dict(block_out_channels=[8, 16, 16, 16, 16], layers_per_block=1), transformer=tf,
                     text_pad=64, vae_crop_hw=None)


def testbed_long_spec() -> TrainSpec:
    """A second testbed for the accelerator study: the testbed with a video clip of 8 latent frames (33 pixel
    frames) instead of 4, so the last clip has twice the temporal redundancy (the 8B's 5 s clip has 20). Same pixel
    size, pyramid, VAE (train it with ``--init-vae`` from the shipped testbed) and transformer size."""
    spec = testbed_spec()
    spec.name = NAME + "-long"
    spec.schedule = {**spec.schedule, "clip_frames": [1, 8]}
    return spec


SPECS = {"testbed": testbed_spec, "testbed-long": testbed_long_spec, "tiny": tiny_spec}
