"""Typed model configuration and named presets.

A preset is a plain dict entry; derived sizes are computed once in ``__post_init__`` (gpt-fast habit).
Nothing here reads files or knows argparse (the release's folder names are at the end).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path


@dataclass
class TransformerConfig:
    depth: int = 36
    width: int = 4096                 # embed_dim C
    num_heads: int = 32
    num_kv_heads: int = 8             # GQA: query head j uses KV head j // (num_heads // num_kv_heads)
    mlp_ratio: float = 4.0            # MLP hidden = round(width * mlp_ratio / 256) * 256, as the reference sizes it
    text_channels: int = 2048         # T5-XL hidden size for the official model
    text_maxlen: int = 512            # also the RoPE scale-axis offset of the first visual step
    cfg_uncond_len: int = 512         # rows of the learned null-text embedding
    d_vae: int = 64                   # latent channels fed to word_embed
    semantic_bits: int = 16           # bits per token on semantic scales (semantic_head2 has 2x outputs)
    detail_bits: int = 64             # bits per token on detail scales (head has 2x outputs)
    block_chunks: int = 6             # only shapes the checkpoint key names: block_chunks.{c}.module.{j}
    rms_eps: float = 1e-6
    rope_theta: float = 10000.0
    name: str = "custom"
    # derived
    head_dim: int = field(init=False)
    mlp_hidden: int = field(init=False)

    def __post_init__(self):
        if self.width % self.num_heads:
            raise ValueError(f"width {self.width} is not divisible by num_heads {self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} is not divisible by num_kv_heads {self.num_kv_heads}")
        if self.depth % self.block_chunks:
            raise ValueError(f"depth {self.depth} is not divisible by block_chunks {self.block_chunks}")
        self.head_dim = self.width // self.num_heads
        if self.head_dim % 8:
            raise ValueError(f"head_dim {self.head_dim} must be a multiple of 8 (4 RoPE axes x rotary pairs)")
        self.mlp_hidden = int(round(self.width * self.mlp_ratio / 256)) * 256

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.init}

    @classmethod
    def from_dict(cls, d: dict) -> "TransformerConfig":
        known = {f.name for f in fields(cls) if f.init}
        unknown = sorted(set(d) - known - {"head_dim", "mlp_hidden"})
        if unknown:
            raise ValueError(f"unknown TransformerConfig keys: {unknown}; known: {sorted(known)}")
        return cls(**{k: v for k, v in d.items() if k in known})


TRANSFORMER_PRESETS: dict[str, dict] = {
    # the released InfinityStar 8B (infinity_qwen8b)
    "infinitystar-8b": dict(depth=36, width=4096, num_heads=32, num_kv_heads=8, text_channels=2048, block_chunks=6),
    # the tiny model of ../shared/golden/transformer_tiny
    "golden-tiny": dict(depth=4, width=128, num_heads=4, num_kv_heads=2, text_channels=32, block_chunks=2),
    # our shipped testbed model (text from all-MiniLM-L6-v2, 384-d)
    "testbed": dict(depth=8, width=384, num_heads=6, num_kv_heads=2, text_channels=384, block_chunks=2,
                    cfg_uncond_len=64),
}


def transformer_config(name: str, **overrides) -> TransformerConfig:
    if name not in TRANSFORMER_PRESETS:
        raise KeyError(f"unknown transformer preset {name!r}; choose one of {sorted(TRANSFORMER_PRESETS)}")
    d = dict(TRANSFORMER_PRESETS[name])
    d.update(overrides)
    return TransformerConfig(name=name, **d)


# the release's folder layout (FoundationVision/InfinityStar): one transformer folder per resolution, the VAE, T5
OFFICIAL_TRANSFORMER_DIRS = {"720p": "infinitystar_8b_720p_weights", "480p": "infinitystar_8b_480p_weights"}
OFFICIAL_VAE = "infinitystar_videovae.pth"
OFFICIAL_T5 = Path("text_encoder") / "flan-t5-xl-official"
