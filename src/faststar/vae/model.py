"""The InfinityStar video VAE: a causal 3-D conv autoencoder with DC down/up blocks and a patchified latent.

Layout: tensors are [B, C, T, H, W]; names carry a shape suffix where it helps (x_BCTHW). The state dict uses the
official key names (``encoder.down_blocks.0.resnets.0.conv1.conv.weight`` ...), so a released checkpoint loads with
``strict=True``.

Pipeline (fp32 reference numerics, see golden README section 5):

* encode: frames in chunks of ``encode_chunk`` (the first chunk takes ``encode_chunk + T % encode_chunk``), causal
  conv caches carried between chunks -> ``encoder_out`` [B, 2*latent, T', H/8, W/8] -> 2x2 pixel-unshuffle (channel
  c*4 + dy*2 + dx) -> posterior mean (first half) / log-variance -> ``proj_down`` (Linear over channels) times
  ``scale_learnable_parameters[0]`` -> z [B, 64, T', H/16, W/16].
* decode: ``proj_up(z / scale)`` -> pixel-shuffle -> s [B, 16, T', H/8, W/8] -> latent-frame chunks of
  ``decode_chunk`` (the first takes 3 when T' is odd, 4 when T' is even) -> decoder with SpatialNorm conditioned on s.

The first frame of a video is an image: in the first chunk, DC blocks keep it out of temporal pooling (encoder) and
merge the first ``tf`` generated frames into one (decoder), so T = 4 (T' - 1) + 1. The reference decides this per
block from "T odd (or split_first)"; for the chunk plans it uses (odd first chunk, even later chunks, split_first
for an even T') that is the same as "first chunk", which is the rule used here. It also makes any chunk plan give
the same result as one pass over the whole sequence (the causal caches carry everything else).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch
import torch.nn as nn
import torch.nn.functional as F


# ------------------------------------------------------------------------------------------------------------------
# configuration

@dataclass
class VAEConfig:
    block_out_channels: tuple[int, ...] = (96, 192, 384, 384, 384)
    layers_per_block: int = 2                  # ResBlocks per encoder block (decoder blocks have one more)
    in_channels: int = 3
    latent_channels: int = 16                  # Gaussian latent channels before patchify
    patch_size: int = 2                        # pixel-unshuffle factor of the latent
    spatial_compression_list: tuple[int, ...] = (2, 2, 2)    # encoder blocks 0.. that halve H and W
    temporal_compression_list: tuple[int, ...] = (2, 2)      # encoder blocks 0.. that halve T (first frame apart)
    embed_dim: int = 64                        # channels of z = latent_channels * patch_size**2
    semantic_dim: int = 16                     # BSQ semantic quantizer bits (mask buffer size)
    detail_dim: int = 64                       # BSQ detail quantizer bits (mask buffer size)
    num_scale_parameters: int = 4              # length of scale_learnable_parameters (only [0] is used)
    encode_chunk: int = 8                      # pixel frames per encoder chunk
    decode_chunk: int = 2                      # latent frames per decoder chunk
    logvar_clamp: tuple[float, float] = (-30.0, 20.0)
    name: str = "custom"
    # derived
    spatial_stride: int = field(init=False)    # pixels per latent cell (16 for the release)
    temporal_stride: int = field(init=False)   # frames per latent frame after the first (4 for the release)

    def __post_init__(self):
        self.block_out_channels = tuple(int(c) for c in self.block_out_channels)
        self.spatial_compression_list = tuple(int(c) for c in self.spatial_compression_list)
        self.temporal_compression_list = tuple(int(c) for c in self.temporal_compression_list)
        self.logvar_clamp = tuple(float(v) for v in self.logvar_clamp)
        n = len(self.block_out_channels) - 1
        B = self.block_out_channels
        if n < 1:
            raise ValueError(f"block_out_channels needs at least 2 entries, got {list(B)}")
        if any(f != 2 for f in self.spatial_compression_list + self.temporal_compression_list):
            raise ValueError("DC blocks only support factor 2; got spatial "
                             f"{list(self.spatial_compression_list)}, temporal {list(self.temporal_compression_list)}")
        if len(self.spatial_compression_list) > n - 1 or len(self.temporal_compression_list) > len(
                self.spatial_compression_list):
            raise ValueError(f"with {n} blocks at most {n - 1} spatial downsamplers (and no more temporal than "
                             f"spatial ones) fit; got spatial {list(self.spatial_compression_list)}, temporal "
                             f"{list(self.temporal_compression_list)}")
        for i in range(len(self.spatial_compression_list)):
            if (4 * B[i]) % B[i + 1]:
                raise ValueError(f"DC down block {i}: 4*{B[i]} channels do not split into groups of {B[i + 1]}")
            if B[i + 1] % 4:
                raise ValueError(f"DC down block {i}: output channels {B[i + 1]} are not a multiple of 4")
        if B[-1] != B[-2]:
            raise ValueError(f"the last two block_out_channels must match (no channel change in the mid block), "
                             f"got {B[-2]} and {B[-1]}")
        if self.latent_channels * self.patch_size ** 2 != self.embed_dim:
            raise ValueError(f"latent_channels * patch_size^2 = {self.latent_channels * self.patch_size ** 2} "
                             f"must equal embed_dim = {self.embed_dim}")
        if self.encode_chunk % 4 or self.decode_chunk < 1:
            raise ValueError(f"encode_chunk must be a multiple of 4 and decode_chunk >= 1, "
                             f"got {self.encode_chunk}, {self.decode_chunk}")
        self.spatial_stride = self.patch_size * 2 ** len(self.spatial_compression_list)
        self.temporal_stride = 2 ** len(self.temporal_compression_list)

    @property
    def num_blocks(self) -> int:
        return len(self.block_out_channels) - 1

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.init}


VAE_PRESETS: dict[str, dict] = {
    # the released infinitystar_videovae.pth
    "infinitystar": dict(block_out_channels=(96, 192, 384, 384, 384)),
    # ../shared/golden/vae_tiny
    "golden-tiny": dict(block_out_channels=(8, 16, 16, 16, 16)),
}


def vae_config(name: str = "infinitystar", **overrides) -> VAEConfig:
    """A named preset, optionally with fields overridden."""
    if name not in VAE_PRESETS:
        raise ValueError(f"unknown VAE preset {name!r}; known: {sorted(VAE_PRESETS)}")
    return VAEConfig(**{**VAE_PRESETS[name], **overrides, "name": name})


# ------------------------------------------------------------------------------------------------------------------
# layers

def rms_normalize(x_BCTHW: torch.Tensor, gamma_C111: torch.Tensor) -> torch.Tensor:
    """x / max(||x||_2 over channels, 1e-12) * sqrt(C) * gamma (no eps inside the norm)."""
    C = x_BCTHW.shape[1]
    return F.normalize(x_BCTHW, dim=1) * (gamma_C111 * C ** 0.5)      # one full-size multiply


class RMSNorm(nn.Module):
    """Channel RMS norm of the encoder (key ``gamma`` [C, 1, 1, 1])."""

    def __init__(self, channels: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(channels, 1, 1, 1))

    def forward(self, x_BCTHW: torch.Tensor) -> torch.Tensor:
        return rms_normalize(x_BCTHW, self.gamma)


_ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.aten, "mkldnn_convolution")


def conv3d(conv: nn.Conv3d, x_BCTHW: torch.Tensor) -> torch.Tensor:
    """``conv(x)``; for fp32 inference on the CPU it calls oneDNN directly. PyTorch's CPU dispatch sends 5-D inputs
    with N*C*T*H <= 20480 (a rule made for 4-D) to its im2col path, about 5x slower at the decoder's middle sizes on
    a 2-core machine; oneDNN gives the same values to float rounding."""
    if (_ONEDNN and x_BCTHW.device.type == "cpu" and x_BCTHW.dtype == torch.float32 and not torch.is_grad_enabled()
            and conv.weight.dtype == torch.float32 and conv.padding_mode == "zeros"):
        return torch.ops.aten.mkldnn_convolution(x_BCTHW.contiguous(), conv.weight.contiguous(), conv.bias,
                                                 list(conv.padding), list(conv.stride), list(conv.dilation),
                                                 conv.groups)
    return conv(x_BCTHW)


class CausalConv3d(nn.Module):
    """3-D conv, causal in time: the past is the previous chunk's last frames, or copies of the first frame.

    Spatial padding is zeros (k // 2). ``cache`` holds the last (kt - 1) frames of the time-padded input of the
    previous call; ``reset()`` clears it. Key names: ``conv.weight`` / ``conv.bias``.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int = 3):
        super().__init__()
        self.conv = nn.Conv3d(c_in, c_out, kernel, padding=(0, kernel // 2, kernel // 2))
        self.time_pad = kernel - 1
        self.cache: torch.Tensor | None = None

    def reset(self):
        self.cache = None

    def forward(self, x_BCTHW: torch.Tensor) -> torch.Tensor:
        if self.time_pad == 0:
            return conv3d(self.conv, x_BCTHW)
        past = self.cache
        if past is None:
            past = x_BCTHW[:, :, :1].expand(-1, -1, self.time_pad, -1, -1)
        x = torch.cat([past, x_BCTHW], dim=2)
        self.cache = x[:, :, -self.time_pad:].detach().clone()
        return conv3d(self.conv, x)


class SpatialNorm(nn.Module):
    """RMS-normalize f and modulate it with the latent s: norm(f) * conv_y(s') + conv_b(s').

    s' is s resized to f's (t, h, w) with nearest interpolation; in the first chunk the first frame (the image) is
    resized on its own and the others from s[:, :, 1:].
    """

    def __init__(self, channels: int, zq_channels: int):
        super().__init__()
        self.norm_layer = RMSNorm(channels)
        self.conv_y = CausalConv3d(zq_channels, channels, kernel=1)
        self.conv_b = CausalConv3d(zq_channels, channels, kernel=1)

    @staticmethod
    def _resize(s_BCThw: torch.Tensor, thw: tuple[int, int, int], first_chunk: bool) -> torch.Tensor:
        T, H, W = thw
        if tuple(s_BCThw.shape[-3:]) == (T, H, W):
            return s_BCThw
        if first_chunk and T > 1:
            return torch.cat([F.interpolate(s_BCThw[:, :, :1], size=(1, H, W), mode="nearest"),
                              F.interpolate(s_BCThw[:, :, 1:], size=(T - 1, H, W), mode="nearest")], dim=2)
        return F.interpolate(s_BCThw, size=(T, H, W), mode="nearest")

    def forward(self, f_BCTHW: torch.Tensor, s_BCThw: torch.Tensor, first_chunk: bool) -> torch.Tensor:
        # conv_y / conv_b are 1x1x1: they commute with nearest resizing, so they run at the latent's size
        thw = tuple(f_BCTHW.shape[-3:])
        y = self._resize(self.conv_y(s_BCThw), thw, first_chunk)
        b = self._resize(self.conv_b(s_BCThw), thw, first_chunk)
        return torch.addcmul(b, self.norm_layer(f_BCTHW), y)


class ResBlock(nn.Module):
    """x + conv2(silu(norm2(conv1(silu(norm1(x)))))); encoder norms are RMS, decoder norms SpatialNorm."""

    def __init__(self, channels: int, zq_channels: int | None = None):
        super().__init__()
        spatial = zq_channels is not None
        self.norm1 = SpatialNorm(channels, zq_channels) if spatial else RMSNorm(channels)
        self.norm2 = SpatialNorm(channels, zq_channels) if spatial else RMSNorm(channels)
        self.conv1 = CausalConv3d(channels, channels)
        self.conv2 = CausalConv3d(channels, channels)
        self.spatial = spatial

    def _norm(self, norm, x, s, first_chunk):
        return norm(x, s, first_chunk) if self.spatial else norm(x)

    def forward(self, x_BCTHW, s_BCThw=None, first_chunk: bool = True):
        h = self.conv1(F.silu(self._norm(self.norm1, x_BCTHW, s_BCThw, first_chunk)))
        h = self.conv2(F.silu(self._norm(self.norm2, h, s_BCThw, first_chunk)))
        return x_BCTHW + h


class NormActConv(nn.Module):
    """conv(silu(rms(x))): the main path of the DC blocks (keys ``norm.gamma``, ``conv.conv.*``)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.norm = RMSNorm(c_in)
        self.conv = CausalConv3d(c_in, c_out)

    def forward(self, x_BCTHW):
        return self.conv(F.silu(self.norm(x_BCTHW)))


def space_to_channel(x_BCTHW: torch.Tensor) -> torch.Tensor:
    """[B, C, T, H, W] -> [B, 4C, T, H/2, W/2], new channel = (dy*2 + dx)*C + c."""
    B, C, T, H, W = x_BCTHW.shape
    x = x_BCTHW.reshape(B, C, T, H // 2, 2, W // 2, 2).permute(0, 4, 6, 1, 2, 3, 5)
    return x.reshape(B, 4 * C, T, H // 2, W // 2)


def channel_to_space(x_BCTHW: torch.Tensor, c_out: int, tf: int) -> torch.Tensor:
    """[B, tf*4*c_out, T, H, W] -> [B, c_out, T*tf, 2H, 2W]; channel ((pt*2 + dy)*2 + dx)*c_out + c goes to
    frame t*tf + pt, pixel (2y + dy, 2x + dx)."""
    B, _, T, H, W = x_BCTHW.shape
    x = x_BCTHW.reshape(B, tf, 2, 2, c_out, T, H, W).permute(0, 4, 5, 1, 6, 2, 7, 3)
    return x.reshape(B, c_out, T * tf, 2 * H, 2 * W)


def pool_time(x_BCTHW: torch.Tensor, tf: int, first_chunk: bool) -> torch.Tensor:
    """Average groups of tf frames; the first frame of the first chunk stays alone."""
    if tf == 1:
        return x_BCTHW
    first = x_BCTHW[:, :, :1] if first_chunk else None
    rest = x_BCTHW[:, :, 1:] if first_chunk else x_BCTHW
    B, C, T, H, W = rest.shape
    if T % tf:
        raise ValueError(f"temporal pooling by {tf} needs a multiple of {tf} frames after the first-frame split; "
                         f"got {T} ({'first' if first_chunk else 'later'} chunk)")
    rest = rest.reshape(B, C, T // tf, tf, H, W).mean(dim=3)
    return rest if first is None else torch.cat([first, rest], dim=2)


class DCDown(nn.Module):
    """Space-to-channel 2x2 (and time / tf) downsampler with an averaged shortcut."""

    def __init__(self, c_in: int, c_out: int, tf: int):
        super().__init__()
        self.conv = NormActConv(c_in, c_out // 4)
        self.c_in, self.c_out, self.tf = c_in, c_out, tf

    def forward(self, x_BCTHW: torch.Tensor, first_chunk: bool) -> torch.Tensor:
        h = pool_time(space_to_channel(self.conv(x_BCTHW)), self.tf, first_chunk)
        sc = pool_time(space_to_channel(x_BCTHW), self.tf, first_chunk)
        B, _, T, H, W = sc.shape
        sc = sc.reshape(B, 4 * self.c_in // self.c_out, self.c_out, T, H, W).mean(dim=1)
        return h + sc


class DCUp(nn.Module):
    """Channel-to-space 2x2 (and time x tf) upsampler with a tiled shortcut; in the first chunk the first tf
    output frames are averaged into one (the image frame)."""

    def __init__(self, c_in: int, c_out: int, tf: int):
        super().__init__()
        self.conv = NormActConv(c_in, c_out * 4 * tf)
        self.c_in, self.c_out, self.tf = c_in, c_out, tf
        self.repeats = 4 * tf * c_out // c_in

    def forward(self, x_BCTHW: torch.Tensor, first_chunk: bool) -> torch.Tensor:
        h = channel_to_space(self.conv(x_BCTHW), self.c_out, self.tf)
        sc = channel_to_space(x_BCTHW.repeat(1, self.repeats, 1, 1, 1), self.c_out, self.tf)
        out = h + sc
        if self.tf > 1 and first_chunk:
            out = torch.cat([out[:, :, :self.tf].mean(dim=2, keepdim=True), out[:, :, self.tf:]], dim=2)
        return out


class DownBlock(nn.Module):
    def __init__(self, channels: int, c_out: int, layers: int, spatial: bool, tf: int):
        super().__init__()
        self.resnets = nn.ModuleList(ResBlock(channels) for _ in range(layers))
        if spatial:
            self.downsamplers = nn.ModuleList([DCDown(channels, c_out, tf)])
        else:
            self.downsamplers = None

    def forward(self, x, first_chunk: bool):
        for r in self.resnets:
            x = r(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x, first_chunk)
        return x


class UpBlock(nn.Module):
    def __init__(self, channels: int, c_out: int, layers: int, zq_channels: int, spatial: bool, tf: int):
        super().__init__()
        self.resnets = nn.ModuleList(ResBlock(channels, zq_channels) for _ in range(layers))
        if spatial:
            self.upsamplers = nn.ModuleList([DCUp(channels, c_out, tf)])
        else:
            self.upsamplers = None

    def forward(self, x, s, first_chunk: bool):
        for r in self.resnets:
            x = r(x, s, first_chunk)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, first_chunk)
        return x


class MidBlock(nn.Module):
    def __init__(self, channels: int, zq_channels: int | None = None):
        super().__init__()
        self.resnets = nn.ModuleList(ResBlock(channels, zq_channels) for _ in range(2))

    def forward(self, x, s=None, first_chunk: bool = True):
        for r in self.resnets:
            x = r(x, s, first_chunk) if s is not None else r(x)
        return x


class Encoder(nn.Module):
    """Pixels [B, 3, T, H, W] (one chunk) -> [B, 2*latent, T', H/8, W/8]."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        B = cfg.block_out_channels
        ns, nt = len(cfg.spatial_compression_list), len(cfg.temporal_compression_list)
        self.conv_in = CausalConv3d(cfg.in_channels, B[0])
        self.down_blocks = nn.ModuleList(
            DownBlock(B[i], B[i + 1], cfg.layers_per_block, spatial=i < ns, tf=2 if i < nt else 1)
            for i in range(cfg.num_blocks))
        self.mid_block = MidBlock(B[-2])
        self.norm_out = RMSNorm(B[-2])
        self.conv_out = CausalConv3d(B[-2], 2 * cfg.latent_channels)

    def forward(self, x_BCTHW: torch.Tensor, first_chunk: bool) -> torch.Tensor:
        x = self.conv_in(x_BCTHW)
        for blk in self.down_blocks:
            x = blk(x, first_chunk)
        x = self.mid_block(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class Decoder(nn.Module):
    """Latent s [B, 16, T', h, w] (one chunk) -> pixels [B, 3, T, 8h, 8w]."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        rev = cfg.block_out_channels[::-1]
        n = cfg.num_blocks
        ns, nt = len(cfg.spatial_compression_list), len(cfg.temporal_compression_list)
        zc = cfg.latent_channels
        self.conv_in = CausalConv3d(zc, rev[0])
        self.mid_block = MidBlock(rev[0], zc)
        # up block i mirrors encoder block n-1-i; it upsamples when that one downsampled
        self.up_blocks = nn.ModuleList(
            UpBlock(rev[i], rev[i + 1], cfg.layers_per_block + 1, zc, spatial=(n - 1 - i) < ns,
                    tf=2 if (n - 1 - i) < nt else 1)
            for i in range(n))
        self.norm_out = SpatialNorm(rev[-1], zc)
        self.conv_out = CausalConv3d(rev[-1], cfg.in_channels)
        for i, blk in enumerate(self.up_blocks):
            if blk.upsamplers is None and i + 1 < n and rev[i] != rev[i + 1]:
                raise ValueError(f"up block {i} has no upsampler but changes channels {rev[i]} -> {rev[i + 1]}")

    def forward(self, s_BCThw: torch.Tensor, first_chunk: bool) -> torch.Tensor:
        x = self.conv_in(s_BCThw)
        x = self.mid_block(x, s_BCThw, first_chunk)
        for blk in self.up_blocks:
            x = blk(x, s_BCThw, first_chunk)
        return self.conv_out(F.silu(self.norm_out(x, s_BCThw, first_chunk)))


class BSQMasks(nn.Module):
    """Only the bit-weight buffers of the official BSQ quantizers (``mask`` = 2^(d-1) ... 2^0, int64, wrapping)."""

    def __init__(self, dim: int):
        super().__init__()
        vals = [(1 << (dim - 1 - i)) for i in range(dim)]
        vals = [v - (1 << 64) if v >= (1 << 63) else v for v in vals]
        self.register_buffer("mask", torch.tensor(vals, dtype=torch.int64))


class MultiScaleQuantizerBuffers(nn.Module):
    """Stands in for the official ``MultiScaleBSQTP`` in the state dict; the math is in faststar.vae.quant."""

    def __init__(self, semantic_dim: int, detail_dim: int):
        super().__init__()
        self.lfq_semantic = BSQMasks(semantic_dim)
        self.lfq_detail = BSQMasks(detail_dim)


# ------------------------------------------------------------------------------------------------------------------
# chunk plans

def encode_chunk_sizes(num_frames: int, chunk: int = 8) -> list[int]:
    """Pixel-frame chunks: the first takes chunk + T % chunk (all of T if that is more), the rest chunk each."""
    first = min(num_frames, chunk + num_frames % chunk)
    return [first] + [chunk] * ((num_frames - first) // chunk)


def decode_chunk_plan(num_latent: int, chunk: int = 2) -> list[int]:
    """Latent-frame chunks: the first takes chunk + 1 + (T' - 1) % chunk frames (all of T' if fewer), the rest
    ``chunk`` each. For chunk 2: odd T' -> 3 + 2 + ..., even T' -> 4 + 2 + ... (the reference's ``split_first``
    case: the image frame is split off inside a 4-frame chunk)."""
    if num_latent <= 0:
        raise ValueError(f"need at least one latent frame, got {num_latent}")
    first = min(num_latent, chunk + 1 + (num_latent - 1) % chunk)
    return [first] + [chunk] * ((num_latent - first) // chunk)


def lean_decode_plan(num_latent: int, chunk: int = 1) -> list[int]:
    """The image frame alone, then ``chunk`` latent frames per chunk (the rest in the last): the least memory per
    chunk for memory budgets. The causal caches carry across chunks, so the video is the same as with
    ``decode_chunk_plan`` (tests/test_chunking.py)."""
    if num_latent <= 0:
        raise ValueError(f"need at least one latent frame, got {num_latent}")
    rest = num_latent - 1
    return [1] + [chunk] * (rest // chunk) + ([rest % chunk] if rest % chunk else [])


# latent frames per decoder chunk on a GPU: 1.06x faster than 2 at 720p on an H200 (benchmarks/notebook, section 10)
GPU_DECODE_CHUNK = 4


def inference_decode(vae: "VideoVAE", z_BCThw: torch.Tensor, chunk: int | None = None, lean: bool = False,
                     on_chunk=None) -> torch.Tensor:
    """The decode that generation uses: on CUDA in ``chunk`` (default GPU_DECODE_CHUNK) latent-frame chunks, under
    bf16 autocast unless the decoder is already in a half dtype (``half_decoder_``); on the CPU as the VAE is (fp32,
    default chunks, or ``chunk`` if given). ``lean``: the image frame alone first (``lean_decode_plan``), for
    memory budgets. ``on_chunk``: callable(done_latent_frames, total) after each chunk (progress bars)."""
    cuda = z_BCThw.device.type == "cuda"
    T = z_BCThw.shape[2]
    if lean:
        plan = lean_decode_plan(T, chunk or 1)
    else:
        plan = decode_chunk_plan(T, chunk or GPU_DECODE_CHUNK) if cuda or chunk else None
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda and vae.decoder_dtype == torch.float32):
        return vae.decode(z_BCThw, chunk_plan=plan, on_chunk=on_chunk)


# ------------------------------------------------------------------------------------------------------------------
# the model

@dataclass
class EncoderOutput:
    encoder_out: torch.Tensor                 # [B, 2*latent, T', H/8, W/8]
    posterior_mean: torch.Tensor              # [B, 64, T', H/16, W/16]
    posterior_logvar_clamped: torch.Tensor    # [B, 64, T', H/16, W/16]


class VideoVAE(nn.Module):
    """InfinityStar video VAE with the official state-dict layout (301 entries for the release)."""

    def __init__(self, cfg: VAEConfig | None = None):
        super().__init__()
        cfg = cfg or VAEConfig()
        self.cfg = cfg
        D = cfg.embed_dim
        self.scale_learnable_parameters = nn.Parameter(torch.ones(cfg.num_scale_parameters))
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantizer = MultiScaleQuantizerBuffers(cfg.semantic_dim, cfg.detail_dim)
        self.quantize = self.quantizer          # the official model registers it under both names
        self.proj_down = nn.Linear(D, D)
        self.proj_down_two = nn.Linear(D, D)   # present in the checkpoint, unused at inference
        self.proj_up = nn.Linear(D, D)
        self.proj_up_two = nn.Linear(D, D)     # present in the checkpoint, unused at inference

    # ---- helpers
    def reset_caches(self):
        """Forget the causal-conv history (done at the start of every encode/decode)."""
        for m in self.modules():
            if isinstance(m, CausalConv3d):
                m.reset()

    @staticmethod
    def _channel_linear(x_BCTHW: torch.Tensor, lin: nn.Linear) -> torch.Tensor:
        return F.linear(x_BCTHW.movedim(1, -1), lin.weight, lin.bias).movedim(-1, 1)

    def _check_video(self, video: torch.Tensor):
        c = self.cfg
        if video.dim() != 5:
            raise ValueError(f"video must be [B, {c.in_channels}, T, H, W], got shape {tuple(video.shape)}")
        B, C, T, H, W = video.shape
        if C != c.in_channels:
            raise ValueError(f"video must have {c.in_channels} channels on dim 1 ([B, C, T, H, W]), got {C} "
                             f"(shape {tuple(video.shape)})")
        if T % c.temporal_stride != 1:
            raise ValueError(f"number of frames must be 1 mod {c.temporal_stride} (1, 5, 9, ..., 81), got {T}")
        if H % c.spatial_stride or W % c.spatial_stride or H == 0 or W == 0:
            raise ValueError(f"height and width must be positive multiples of {c.spatial_stride}, got {H}x{W}")

    def _check_latent(self, z: torch.Tensor):
        c = self.cfg
        if z.dim() != 5 or z.shape[1] != c.embed_dim or min(z.shape[2:]) < 1:
            raise ValueError(f"latent must be [B, {c.embed_dim}, T', h, w] with T', h, w >= 1, "
                             f"got shape {tuple(z.shape)}")

    # ---- encoder side
    @torch.no_grad()
    def encode_raw(self, video_BCTHW: torch.Tensor, chunk_sizes: list[int] | None = None) -> EncoderOutput:
        """Encoder output, posterior mean and clamped log-variance (no projection, no sampling)."""
        self._check_video(video_BCTHW)
        T = video_BCTHW.shape[2]
        sizes = chunk_sizes or encode_chunk_sizes(T, self.cfg.encode_chunk)
        if sum(sizes) != T:
            raise ValueError(f"chunk sizes {sizes} do not add up to {T} frames")
        self.reset_caches()
        outs, t0 = [], 0
        try:
            for i, n in enumerate(sizes):
                outs.append(self.encoder(video_BCTHW[:, :, t0:t0 + n], first_chunk=i == 0))
                t0 += n
        finally:
            self.reset_caches()
        enc = torch.cat(outs, dim=2)
        return EncoderOutput(enc, *self.posterior_from_features(enc))

    def posterior_from_features(self, enc_BCTHW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder output -> (posterior mean, clamped log-variance) [B, embed_dim, T', H/16, W/16]: per-frame
        pixel-unshuffle (channel c*p*p + dy*p + dx), then the first embed_dim channels are the mean."""
        p = self.cfg.patch_size
        B, C, Tl, h, w = enc_BCTHW.shape
        patched = F.pixel_unshuffle(enc_BCTHW.transpose(1, 2).reshape(B * Tl, C, h, w), p)
        patched = patched.reshape(B, Tl, C * p * p, h // p, w // p).transpose(1, 2)
        D = self.cfg.embed_dim
        lo, hi = self.cfg.logvar_clamp
        return patched[:, :D], patched[:, D:].clamp(lo, hi)

    @torch.no_grad()
    def encode(self, video_BCTHW: torch.Tensor, sample: bool = False,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Video in [-1, 1], [B, 3, T, H, W] with T = 1 mod 4 -> z [B, 64, (T-1)/4 + 1, H/16, W/16].

        ``sample=False`` uses the posterior mean (deterministic); ``sample=True`` draws mean + exp(logvar/2)*eps with
        ``generator``.
        """
        return self.latent_from_posterior(self.encode_raw(video_BCTHW), sample=sample, generator=generator)

    @torch.no_grad()
    def latent_from_posterior(self, raw: EncoderOutput, sample: bool = False,
                              generator: torch.Generator | None = None) -> torch.Tensor:
        """z = proj_down(mean or a posterior sample) * scale_learnable_parameters[0]."""
        lat = raw.posterior_mean
        if sample:
            eps = torch.randn(lat.shape, generator=generator, dtype=lat.dtype,
                              device=generator.device if generator is not None else lat.device).to(lat.device)
            lat = lat + torch.exp(0.5 * raw.posterior_logvar_clamped) * eps
        return self._channel_linear(lat, self.proj_down) * self.scale_learnable_parameters[0]

    # ---- decoder side
    def decoder_input(self, z_BCThw: torch.Tensor) -> torch.Tensor:
        """Latent [B, 64, T', h, w] -> the decoder's input: unscaled, projected up, pixel-shuffled by the patch size
        (differentiable; shared by ``decode`` and the testbed's training)."""
        z = self._channel_linear(z_BCThw / self.scale_learnable_parameters[0], self.proj_up)
        p = self.cfg.patch_size
        B, D, Tl, h, w = z.shape
        s = F.pixel_shuffle(z.transpose(1, 2).reshape(B * Tl, D, h, w), p)
        return s.reshape(B, Tl, D // (p * p), h * p, w * p).transpose(1, 2)

    @property
    def decoder_dtype(self) -> torch.dtype:
        return self.decoder.conv_in.conv.weight.dtype

    def half_decoder_(self, dtype: torch.dtype = torch.bfloat16) -> "VideoVAE":
        """Inference on a GPU: the decoder's weights in ``dtype`` (the latent projection stays fp32; ``decode``
        casts its output for the decoder). On an H200 at 720p: 1.14x faster than fp32 weights under bf16 autocast,
        half the peak memory, uint8 PSNR 51 dB against it (benchmarks/notebook, section 10)."""
        self.decoder.to(dtype)
        return self

    @torch.no_grad()
    def decode(self, z_BCThw: torch.Tensor, chunk_plan: list[int] | None = None, on_chunk=None) -> torch.Tensor:
        """z [B, 64, T', h, w] -> video [B, 3, 4(T'-1)+1, 16h, 16w] (not clamped, in the decoder's dtype), decoded
        chunk by chunk. on_chunk: optional callable(done_latent_frames, total) after each chunk (progress bars)."""
        self._check_latent(z_BCThw)
        Tl = z_BCThw.shape[2]
        plan = chunk_plan or decode_chunk_plan(Tl, self.cfg.decode_chunk)
        if sum(plan) != Tl:
            raise ValueError(f"decode chunk plan {plan} does not add up to {Tl} latent frames")
        s = self.decoder_input(z_BCThw).to(self.decoder_dtype)
        self.reset_caches()
        outs, t0 = [], 0
        try:
            for i, n in enumerate(plan):
                outs.append(self.decoder(s[:, :, t0:t0 + n], first_chunk=i == 0))
                t0 += n
                if on_chunk is not None:
                    on_chunk(t0, Tl)
        finally:
            self.reset_caches()
        return torch.cat(outs, dim=2)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def build_vae(name_or_cfg: str | VAEConfig = "infinitystar", device=None, dtype=None) -> VideoVAE:
    cfg = vae_config(name_or_cfg) if isinstance(name_or_cfg, str) else name_or_cfg
    return VideoVAE(cfg).to(device=device, dtype=dtype).eval().requires_grad_(False)
