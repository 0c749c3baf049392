"""The STAR transformer (InfinityStar ``infinity_qwen*``) in plain PyTorch.

Qwen-style pre-RMSNorm blocks: x + Attn(RMSNorm(x)), then x + SwiGLU(RMSNorm(x)). Attention is GQA with RMSNorm
on q and k per head, 4-D RoPE, no biases, no mask, no cross-attention: the text enters as prefix tokens whose K/V
are cached once. Two bitwise heads run in fp32: ``semantic_head2`` (2 logits x 16 bits) and ``head``
(2 logits x 64 bits). Parameter names equal the release's state-dict keys (``block_chunks.{c}.module.{j}.*``).

The forward is dumb on purpose: tokens, rotary tables and a cache in, hidden states out. The generation loop,
guidance, sampling and accelerators live elsewhere. Memory budgets (``faststar.memory``) set ``chunk_tokens`` from
outside: a block then runs its projections, MLP and elementwise work over token chunks (attention stays one call)
and the logits head goes chunk by chunk, so no [all tokens x MLP width] tensor exists at once.
Letters: B batch (CFG rows), N tokens, C width, H query heads, K kv heads, D head dim, L text tokens.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import TransformerConfig
from .attention import BACKENDS, select_backend
from .cache import KVCache
from .rope import apply_rope


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return y.to(x.dtype) * weight.to(x.dtype)


def add_rms_norm(x: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float):
    """Residual add, then RMSNorm of the sum: returns (x + delta, norm(x + delta))."""
    x = x + delta
    return x, rms_norm(x, weight, eps)


def norm_rope(x_BNHD: torch.Tensor, weight: torch.Tensor, eps: float, cos, sin) -> torch.Tensor:
    """Per-head RMSNorm (q_norm / k_norm), then RoPE."""
    return apply_rope(rms_norm(x_BNHD, weight, eps), cos, sin)


def silu_mul(g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    return F.silu(g) * u


def token_chunks(start: int, stop: int, size: int) -> list[slice]:
    """Slices of at most ``size`` tokens covering [start, stop) (one slice when size <= 0)."""
    size = stop - start if size <= 0 else size
    return [slice(a, min(a + size, stop)) for a in range(start, stop, max(size, 1))]


class Kernels:
    """The elementwise pieces of a block. Eager by default (the readable reference); ``compile_kernels()``
    swaps in torch.compile'd versions that fuse each piece into one GPU kernel (same math)."""
    rms_norm = staticmethod(rms_norm)
    add_rms_norm = staticmethod(add_rms_norm)
    norm_rope = staticmethod(norm_rope)
    silu_mul = staticmethod(silu_mul)
    compiled = False


def compile_kernels(enable: bool = True) -> bool:
    """Fuse the elementwise pieces with torch.compile (needs Triton on GPU). Returns whether it is on."""
    if not enable:
        Kernels.rms_norm, Kernels.add_rms_norm = staticmethod(rms_norm), staticmethod(add_rms_norm)
        Kernels.norm_rope, Kernels.silu_mul = staticmethod(norm_rope), staticmethod(silu_mul)
        Kernels.compiled = False
        return False
    try:
        c = lambda f: staticmethod(torch.compile(f, dynamic=True, fullgraph=True))  # noqa: E731
        Kernels.rms_norm, Kernels.add_rms_norm = c(rms_norm), c(add_rms_norm)
        Kernels.norm_rope, Kernels.silu_mul = c(norm_rope), c(silu_mul)
        Kernels.compiled = True
    except Exception as e:  # no compiler backend: stay eager, say why
        import warnings
        warnings.warn(f"torch.compile unavailable ({e}); using eager kernels", stacklevel=2)
        compile_kernels(False)
    return Kernels.compiled


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return rms_norm(x, self.weight, self.eps)


class Attention(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        C, H, K, D = cfg.width, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.H, self.K, self.D = H, K, D
        self.q_proj = nn.Linear(C, H * D, bias=False)
        self.k_proj = nn.Linear(C, K * D, bias=False)
        self.v_proj = nn.Linear(C, K * D, bias=False)
        self.o_proj = nn.Linear(H * D, C, bias=False)
        self.q_norm = RMSNorm(D, cfg.rms_eps)
        self.k_norm = RMSNorm(D, cfg.rms_eps)
        self.wqkv: torch.Tensor | None = None    # fused view set by fuse_()

    def fuse_(self):
        """Concatenate q/k/v weights into one matrix; the three Linear weights become views of it."""
        w = torch.cat([self.q_proj.weight.data, self.k_proj.weight.data, self.v_proj.weight.data], 0)
        a, b = self.q_proj.out_features, self.k_proj.out_features
        self.q_proj.weight = nn.Parameter(w[:a], requires_grad=False)
        self.k_proj.weight = nn.Parameter(w[a:a + b], requires_grad=False)
        self.v_proj.weight = nn.Parameter(w[a + b:], requires_grad=False)
        self.wqkv = w

    def project(self, x_BNC, cos, sin):
        """q, k, v [B, N, heads, D] of normed tokens: projections, q/k RMSNorm and RoPE."""
        B, N, _ = x_BNC.shape
        if self.wqkv is not None:
            q, k, v = F.linear(x_BNC, self.wqkv).split([self.H * self.D, self.K * self.D, self.K * self.D], -1)
        else:
            q, k, v = self.q_proj(x_BNC), self.k_proj(x_BNC), self.v_proj(x_BNC)
        q = Kernels.norm_rope(q.view(B, N, self.H, self.D), self.q_norm.weight, self.q_norm.eps, cos, sin)
        k = Kernels.norm_rope(k.view(B, N, self.K, self.D), self.k_norm.weight, self.k_norm.eps, cos, sin)
        return q, k, v.view(B, N, self.K, self.D)

    def forward(self, x_BNC, cos, sin, cache: KVCache | None, layer: int, attn_fn, attn_mask=None):
        B, N, _ = x_BNC.shape
        q, k, v = self.project(x_BNC, cos, sin)
        if cache is None:     # packed training forward: all steps in one sequence, visibility by mask
            o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                               attn_mask=attn_mask, enable_gqa=self.H != self.K).transpose(1, 2)
        else:
            k_all, v_all = cache.update(layer, k, v)
            o = attn_fn(q, k_all, v_all)                   # [B, N, H, D]
        return self.o_proj(o.reshape(B, N, self.H * self.D))


class MLP(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.width, cfg.mlp_hidden, bias=False)
        self.up_proj = nn.Linear(cfg.width, cfg.mlp_hidden, bias=False)
        self.down_proj = nn.Linear(cfg.mlp_hidden, cfg.width, bias=False)
        self.w_gate_up: torch.Tensor | None = None

    def fuse_(self):
        w = torch.cat([self.gate_proj.weight.data, self.up_proj.weight.data], 0)
        m = self.gate_proj.out_features
        self.gate_proj.weight = nn.Parameter(w[:m], requires_grad=False)
        self.up_proj.weight = nn.Parameter(w[m:], requires_grad=False)
        self.w_gate_up = w

    def forward(self, x):
        if self.w_gate_up is not None:
            g, u = F.linear(x, self.w_gate_up).chunk(2, -1)
        else:
            g, u = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(Kernels.silu_mul(g, u))


class Block(nn.Module):
    chunk_tokens = 0        # > 0: steps of more tokens run ``forward_chunked`` (set by STARTransformer.set_chunking)
    attn_pieces = 1         # query pieces of the attention call in ``forward_chunked`` (1 = one kernel call)

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        # registration order = the release's state-dict order
        self.attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.width, cfg.rms_eps)
        self.post_attention_layernorm = RMSNorm(cfg.width, cfg.rms_eps)

    def forward(self, x, cos, sin, cache, layer, attn_fn, attn_mask=None):
        h = Kernels.rms_norm(x, self.input_layernorm.weight, self.input_layernorm.eps)
        a = self.attn(h, cos, sin, cache, layer, attn_fn, attn_mask)
        x, h = Kernels.add_rms_norm(x, a, self.post_attention_layernorm.weight, self.post_attention_layernorm.eps)
        return x + self.mlp(h)

    def forward_chunked(self, x, cos, sin, cache: KVCache, layer: int, attn_fn):
        """The same block with everything but attention over chunks of ``chunk_tokens`` tokens; writes the result
        into x (the caller owns it). Alive at once: x, q, the attention output and one chunk's MLP activations."""
        B, N, _ = x.shape
        at, n = self.attn, self.chunk_tokens
        ln1, ln2 = self.input_layernorm, self.post_attention_layernorm
        q = x.new_empty(B, N, at.H, at.D)
        k_step, v_step, k_all, v_all = cache.step_views(layer, B, N)
        for s in token_chunks(0, N, n):
            q[:, s], k_step[:, s], v_step[:, s] = at.project(Kernels.rms_norm(x[:, s], ln1.weight, ln1.eps),
                                                             cos[s], sin[s])
        for piece in token_chunks(0, N, -(-N // self.attn_pieces)):
            o = attn_fn(q[:, piece], k_all, v_all).reshape(B, -1, at.H * at.D)
            for s in token_chunks(piece.start, piece.stop, n):
                r = slice(s.start - piece.start, s.stop - piece.start)
                xs, h = Kernels.add_rms_norm(x[:, s], at.o_proj(o[:, r]), ln2.weight, ln2.eps)
                x[:, s] = xs + self.mlp(h)
            del o
        return x


class BlockChunk(nn.Module):
    """Only here so that parameter names match the release (block_chunks.{c}.module.{j})."""

    def __init__(self, blocks: list[Block]):
        super().__init__()
        self.module = nn.ModuleList(blocks)


class STARTransformer(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        C = cfg.width
        self.cfg_uncond = nn.Parameter(torch.zeros(cfg.cfg_uncond_len, cfg.text_channels))
        self.sos_token = nn.Parameter(torch.zeros(1, 1, C))         # in the release's state dict; unused
        self.text_proj = nn.Linear(cfg.text_channels, C)
        self.word_embed = nn.Linear(cfg.d_vae, C)
        self.norm_hidden_sates = RMSNorm(C, cfg.rms_eps)            # (sic) the release's key name
        self.head = nn.Linear(C, 2 * cfg.detail_bits)
        self.semantic_head2 = nn.Linear(C, 2 * cfg.semantic_bits)
        per = cfg.depth // cfg.block_chunks
        self.block_chunks = nn.ModuleList(
            BlockChunk([Block(cfg) for _ in range(per)]) for _ in range(cfg.block_chunks))
        self.attn_backend = "sdpa"
        self.chunk_tokens = 0              # > 0: big steps over token chunks (set_chunking)
        self.kv_resident_len = 0           # > 0: KV positions kept per layer; bigger steps share one buffer

    # -- structure ------------------------------------------------------------------------------------------------
    @property
    def layers(self) -> list[Block]:
        return [b for chunk in self.block_chunks for b in chunk.module]

    @property
    def block_dtype(self) -> torch.dtype:
        return self.block_chunks[0].module[0].input_layernorm.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.word_embed.weight.device

    def extra_repr(self) -> str:
        return f"attn_backend={self.attn_backend}, chunk_tokens={self.chunk_tokens}"

    def set_chunking(self, chunk_tokens: int = 0, attn_pieces: int = 1, kv_resident_len: int = 0
                     ) -> "STARTransformer":
        """Memory knobs, set from outside (``faststar.memory.apply_plan``); all 0 / 1 = the unchunked engine.
        chunk_tokens: steps with more tokens run blocks and head over chunks of that many tokens. attn_pieces:
        split those steps' attention over query pieces. kv_resident_len: see ``KVCache``'s resident_len."""
        self.chunk_tokens, self.kv_resident_len = int(chunk_tokens), int(kv_resident_len)
        for blk in self.layers:
            blk.chunk_tokens, blk.attn_pieces = int(chunk_tokens), max(1, int(attn_pieces))
        return self

    def set_attention_backend(self, name: str = "auto") -> str:
        self.attn_backend = select_backend(name, self.device, self.block_dtype)
        return self.attn_backend

    def fuse_projections_(self) -> "STARTransformer":
        """Fuse q/k/v and gate/up weights for speed (inference only; call after the final .to())."""
        for blk in self.layers:
            blk.attn.fuse_()
            blk.mlp.fuse_()
        return self

    def cast_blocks_(self, dtype: torch.dtype) -> "STARTransformer":
        """Blocks in `dtype` (bf16 as the release runs them), everything else stays fp32."""
        self.block_chunks.to(dtype)
        return self

    def new_cache(self, max_len: int, batch: int = 2) -> KVCache:
        """A reset KV cache of at least ``max_len`` positions; the buffers are kept and reused by the next call
        when they are big enough (static buffers are what lets CUDA graphs replay across generations)."""
        c = self.cfg
        cache = getattr(self, "_kv_cache", None)
        resident = self.kv_resident_len or None
        if cache is None or not cache.fits(batch, max_len, self.block_dtype, self.device, resident):
            self._kv_cache = None           # free the old buffers first
            cache = KVCache(c.depth, batch, max_len, c.num_kv_heads, c.head_dim, dtype=self.block_dtype,
                            device=self.device, resident_len=resident)
            self._kv_cache = cache
        cache.reset()
        return cache

    def release_cache(self) -> None:
        self._kv_cache = None

    # -- pieces of a step -----------------------------------------------------------------------------------------
    def text_prefix(self, text_LC: torch.Tensor, uncond_LC: torch.Tensor | None = None, batch: int = 2
                    ) -> torch.Tensor:
        """[B, L, C] prefix tokens: row 0 the prompt, row 1 the null text (cfg_uncond[:L]) or a negative prompt."""
        L = text_LC.shape[0]
        if uncond_LC is None:
            if L > self.cfg_uncond.shape[0]:
                raise ValueError(f"text has {L} tokens but cfg_uncond holds {self.cfg_uncond.shape[0]}")
            uncond_LC = self.cfg_uncond[:L]
        if uncond_LC.shape != text_LC.shape:
            raise ValueError(f"negative prompt embedding {tuple(uncond_LC.shape)} must match the prompt's "
                             f"{tuple(text_LC.shape)} (there is no attention mask)")
        rows = [text_LC, uncond_LC][:batch]
        x = torch.stack([r.to(self.text_proj.weight) for r in rows])
        return self.text_proj(x)

    def embed(self, x_N64: torch.Tensor) -> torch.Tensor:
        """Canvas view tokens [N, 64] -> [N, C] in fp32."""
        return self.word_embed(x_N64.to(self.word_embed.weight.dtype))

    def forward_blocks(self, x_BNC: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache,
                       layer_outputs: list | None = None, layers: range | None = None) -> torch.Tensor:
        """Run blocks ``layers`` (default all) on x; each writes its K/V after the cache prefix and attends to it."""
        attn_fn = BACKENDS[self.attn_backend]
        x = x_BNC.to(self.block_dtype)
        chunked = 0 < self.chunk_tokens < x.shape[1]
        if chunked and x.data_ptr() == x_BNC.data_ptr():
            x = x.clone(memory_format=torch.contiguous_format)      # chunked blocks write into x: our own copy
        blocks = self.layers
        for i in (layers if layers is not None else range(len(blocks))):
            x = blocks[i].forward_chunked(x, cos, sin, cache, i, attn_fn) if chunked else \
                blocks[i](x, cos, sin, cache, i, attn_fn)
            if layer_outputs is not None:
                layer_outputs.append(x.clone() if chunked else x)
        return x

    def logits(self, h_BNC: torch.Tensor, bits: int) -> torch.Tensor:
        """Final RMSNorm, then the bitwise head in fp32: [B, N, 2 * bits], pair (2k, 2k+1) = bit k is (0, 1)."""
        head = self.semantic_head2 if bits == self.cfg.semantic_bits else self.head
        if head.out_features != 2 * bits:
            raise ValueError(f"no head for {bits} bits per token")
        N = h_BNC.shape[-2]
        out = h_BNC.new_empty(*h_BNC.shape[:-1], head.out_features, dtype=torch.float32)
        w, b = head.weight.float(), head.bias.float()
        with torch.autocast(device_type=h_BNC.device.type, enabled=False):
            for s in token_chunks(0, N, self.chunk_tokens):      # one chunk unless chunking is set
                out[..., s, :] = F.linear(self.norm_hidden_sates(h_BNC[..., s, :]).float(), w, b)
        return out

    def forward_packed(self, x_BNC: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                       attn_mask: torch.Tensor) -> torch.Tensor:
        """Training forward: text and every step of a sample packed in one sequence; ``attn_mask`` [N, N] (bool,
        True = may attend) encodes who sees whom (text: text; a step: its text, its reference step, itself)."""
        x = x_BNC.to(self.block_dtype)
        for i, blk in enumerate(self.layers):
            x = blk(x, cos, sin, None, i, None, attn_mask)
        return x

    def forward(self, x_BNC, cos, sin, cache):  # for tools that expect a forward
        return self.forward_blocks(x_BNC, cos, sin, cache)


def build_transformer(name_or_cfg: str | TransformerConfig = "infinitystar-8b", device=None,
                      dtype: torch.dtype | None = None, **overrides) -> STARTransformer:
    """Build a named preset (``"infinitystar-8b"``, ``"golden-tiny"``, ``"testbed"``) or a config.

    ``device="meta"`` builds without memory (e.g. to inspect the state-dict layout). ``dtype`` casts the blocks
    only (heads, embeddings, text projection and cfg_uncond stay fp32, as the release runs them).
    """
    from ..config import transformer_config
    cfg = name_or_cfg if isinstance(name_or_cfg, TransformerConfig) else transformer_config(name_or_cfg, **overrides)
    with torch.device(device or "cpu"):
        model = STARTransformer(cfg)
    if dtype is not None:
        model.cast_blocks_(dtype)
    return model
