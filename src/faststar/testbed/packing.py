"""Teacher-forced training of the STAR transformer: one packed sequence per video, a visibility mask, bit losses.

A sample is packed as [text slots (text_pad) | every visual step of the schedule in order | tail padding]. A visual
step sees its text (the valid slots only), the last repetition of its reference scale (the previous clip's last
scale) and itself; text sees valid text; padding sees only itself. Inputs and positions are exactly what
``faststar.generate`` feeds the model at inference: the input of a step is ``word_embed(area(canvas -> thw))`` of
the clip's canvas before the step's codes are added, RoPE positions come from ``visual_positions`` with scale
position ``text_maxlen + global step index``, text token n sits at (n, 0, 0, 0).

Two attention paths compute the same thing: ``"mask"`` calls ``STARTransformer.forward_packed`` with a dense
boolean mask (SDPA; the reference, used on the CPU), ``"flex"`` runs the same blocks with FlexAttention and a
block-sparse mask built from the dense one (the GPU path: the mask is ~90 % empty, and SDPA has no fused kernel
for boolean masks with grouped-query attention).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..model.rope import rope_cos_sin, text_positions, visual_positions
from ..schedule import Schedule
from ..vae.quant import multiscale_quantize

FLEX_BLOCK = 128


@dataclass
class PackedLayout:
    schedule: Schedule
    text_pad: int                  # text slots
    n_vis: int                     # visual tokens (all steps)
    seq_len: int                   # text_pad + n_vis + tail padding
    step_of: torch.Tensor          # [n_vis] long: global step of each visual token
    scale_of: torch.Tensor         # [n_vis] long: global scale of each visual token
    ref_step: torch.Tensor         # [num_steps] long: the step whose K/V a step also sees (-1: none)
    step_range: list               # per step: (start, end) in the visual part
    sem_idx: torch.Tensor          # visual tokens of semantic steps
    det_idx: torch.Tensor          # visual tokens of detail steps
    semantic_bits: int
    detail_bits: int
    weight: torch.Tensor           # [n_vis] loss weight of each token (sums to 1)
    cos: torch.Tensor              # [seq_len, head_dim / 2]
    sin: torch.Tensor

    def to(self, device) -> "PackedLayout":
        out = PackedLayout(**self.__dict__)
        for k, v in self.__dict__.items():
            if isinstance(v, torch.Tensor):
                setattr(out, k, v.to(device))
        return out

    @property
    def num_scales(self) -> int:
        return len(self.schedule.scales)


def build_layout(schedule: Schedule, cfg, text_pad: int, *, multiple: int = 1, weight_power: float = 0.5,
                 device=None) -> PackedLayout:
    """Positions, step bookkeeping and loss weights of the packed sequence.

    weight_power: each step's mean bit loss is weighted by tokens**weight_power (0: every step alike, 1: every
    token alike); 0.5 keeps the small early scales, which set the layout, from being drowned by the last ones.
    """
    steps = schedule.steps
    HW = schedule.final_hw
    step_of, scale_of, pos, ranges, sem, det, w = [], [], [], [], [], [], []
    ref = []
    off = 0
    for st in steps:
        s = st.scale
        n = s.num_tokens
        step_of.append(torch.full((n,), st.index, dtype=torch.long))
        scale_of.append(torch.full((n,), s.index, dtype=torch.long))
        pos.append(visual_positions(s.thw, HW, s.frame_start, cfg.text_maxlen + st.index))
        ranges.append((off, off + n))
        (sem if s.semantic else det).append(torch.arange(off, off + n))
        w.append(torch.full((n,), float(n) ** weight_power / n))
        if s.ref_scale is not None:
            r = schedule.scales[s.ref_scale]
            ref.append(r.first_step + r.reps - 1)
        else:
            ref.append(-1)
        off += n
    n_vis = off
    seq = text_pad + n_vis
    seq = -(-seq // multiple) * multiple
    tail = seq - text_pad - n_vis
    pos_all = torch.cat([text_positions(text_pad), torch.cat(pos), torch.zeros(tail, 4, dtype=torch.int32)])
    cos, sin = rope_cos_sin(pos_all, cfg.head_dim, cfg.rope_theta)
    weight = torch.cat(w)
    weight = weight / weight.sum()
    sem_bits = {s.bits for s in schedule.scales if s.semantic}
    det_bits = {s.bits for s in schedule.scales if not s.semantic}
    lay = PackedLayout(schedule=schedule, text_pad=text_pad, n_vis=n_vis, seq_len=seq, step_of=torch.cat(step_of),
                       scale_of=torch.cat(scale_of), ref_step=torch.tensor(ref, dtype=torch.long), step_range=ranges,
                       sem_idx=torch.cat(sem) if sem else torch.zeros(0, dtype=torch.long),
                       det_idx=torch.cat(det) if det else torch.zeros(0, dtype=torch.long),
                       semantic_bits=sem_bits.pop() if sem_bits else cfg.semantic_bits,
                       detail_bits=det_bits.pop() if det_bits else cfg.detail_bits, weight=weight, cos=cos, sin=sin)
    return lay.to(device) if device is not None else lay


# ------------------------------------------------------------------------------------------------------------------
# visibility

def visual_mask(layout: PackedLayout) -> torch.Tensor:
    """[n_vis, n_vis] bool: a visual token sees its own step and its reference step."""
    so = layout.step_of
    ref_of_q = layout.ref_step[so]
    return (so[:, None] == so[None, :]) | (ref_of_q[:, None] == so[None, :])


def dense_mask(layout: PackedLayout, text_lens: torch.Tensor, vis: torch.Tensor | None = None) -> torch.Tensor:
    """[B, N, N] bool (True = may attend) for samples whose captions have ``text_lens`` valid tokens."""
    Lp, nv, N = layout.text_pad, layout.n_vis, layout.seq_len
    dev = layout.step_of.device
    vis = visual_mask(layout) if vis is None else vis
    lens = text_lens.to(dev).long()
    if int(lens.max()) > Lp or int(lens.min()) < 1:
        raise ValueError(f"text lengths must be in [1, {Lp}], got {lens.tolist()}")
    B = lens.shape[0]
    idx = torch.arange(N, device=dev)
    valid_text = idx[None, :] < lens[:, None]                                # [B, N] key is valid text
    m = torch.zeros(B, N, N, dtype=torch.bool, device=dev)
    m[:, Lp:Lp + nv, Lp:Lp + nv] = vis
    is_text_q = idx < Lp
    vis_q = (idx >= Lp) & (idx < Lp + nv)
    m |= (vis_q[None, :, None] | (is_text_q[None, :, None] & valid_text[:, :, None])) & valid_text[:, None, :]
    diag_only = ~(vis_q[None, :] | valid_text)                               # padding rows: themselves
    m[:, idx, idx] |= diag_only
    return m


class FlexMasks:
    """Block masks for FlexAttention built from dense [B, N, N] masks.

    The dense mask is copied into a buffer that lives as long as this object, and the ``mask_mod`` that reads it
    is created once per batch size: a compiled flex_attention then sees the same function every step and does not
    recompile (a fresh closure per step would).
    """

    def __init__(self, block: int = FLEX_BLOCK):
        self.block = block
        self._buf: dict = {}

    def __call__(self, dense: torch.Tensor):
        from torch.nn.attention.flex_attention import BlockMask
        B, N, _ = dense.shape
        block = self.block
        if N % block:
            raise ValueError(f"sequence length {N} is not a multiple of the flex block size {block}")
        key = (B, N, dense.device)
        if key not in self._buf:
            buf = torch.zeros(B, N, N, dtype=torch.bool, device=dense.device)

            def mask_mod(b, h, q, kv, buf=buf):
                return buf[b, q, kv]
            self._buf[key] = (buf, mask_mod)
        buf, mask_mod = self._buf[key]
        buf.copy_(dense)
        nb = N // block
        blocks = dense.view(B, nb, block, nb, block)
        anyb = blocks.any(dim=4).any(dim=2)
        allb = blocks.all(dim=4).all(dim=2)
        partial = anyb & ~allb

        def to_idx(b):
            num = b.sum(-1).to(torch.int32)[:, None]                               # [B, 1, Qb]
            order = torch.argsort((~b).to(torch.int8), dim=-1, stable=True).to(torch.int32)[:, None]
            return num, order

        kv_num, kv_idx = to_idx(partial)
        full_num, full_idx = to_idx(allb)
        try:
            return BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=block,
                                            mask_mod=mask_mod, seq_lengths=(N, N))
        except TypeError:       # older torch: no seq_lengths (N is a multiple of the block size anyway)
            return BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=block,
                                            mask_mod=mask_mod)


_MASKS = FlexMasks()


def flex_block_mask(dense: torch.Tensor):
    """A FlexAttention BlockMask from a dense [B, N, N] mask (N a multiple of FLEX_BLOCK)."""
    return _MASKS(dense)


class _PassThrough:
    """Stands in for the KV cache: the blocks' attention gets this step's own K/V (all of the packed sequence)."""

    @staticmethod
    def update(layer, k, v):
        return k, v


_FLEX = {}


def _flex_fn(compiled: bool):
    key = bool(compiled)
    if key not in _FLEX:
        from torch.nn.attention.flex_attention import flex_attention
        if compiled:
            try:                    # a few batch sizes (train, eval) each compile once; leave room
                import torch._dynamo
                torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
            except AttributeError:
                pass
        _FLEX[key] = torch.compile(flex_attention, dynamic=False) if compiled else flex_attention
    return _FLEX[key]


def packed_hidden(model, x_BNC: torch.Tensor, layout: PackedLayout, mask, mode: str = "mask",
                  compiled: bool = True) -> torch.Tensor:
    """Hidden states [B, N, C] of the packed sequence. ``mask``: the dense [B, N, N] mask ("mask" mode) or a
    BlockMask ("flex" mode)."""
    if mode == "mask":
        return model.forward_packed(x_BNC, layout.cos, layout.sin, mask[:, None])
    if mode != "flex":
        raise ValueError(f"attention mode must be 'mask' or 'flex', got {mode!r}")
    flex = _flex_fn(compiled)

    def attn(q, k, v):          # [B, N, H, D], [B, N, K, D]
        o = flex(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), block_mask=mask,
                 enable_gqa=q.shape[2] != k.shape[2])
        return o.transpose(1, 2)

    x = x_BNC.to(model.block_dtype)
    cache = _PassThrough()
    for i, blk in enumerate(model.layers):
        x = blk(x, layout.cos, layout.sin, cache, i, attn)
    return x


# ------------------------------------------------------------------------------------------------------------------
# inputs, labels, losses

@torch.no_grad()
def teacher_data(z_1CTHW: torch.Tensor, schedule: Schedule, bits_width: int = 64
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Step inputs [n_vis, 64] (area view of the canvas before each step, fp32) and bit labels [n_vis, bits_width]
    (uint8; semantic steps fill the first 16 columns) of one latent, in packed order."""
    rec: dict = {}
    bits_list, _ = multiscale_quantize(z_1CTHW.float(), schedule, record=rec)
    inp, lab = [], []
    for st, b in zip(schedule.steps, bits_list):
        x = rec[f"q.step{st.index:02d}.scale_input"][0]                  # [64, t, h, w]
        inp.append(x.flatten(1).t())
        b = b.reshape(-1, b.shape[-1])
        lab.append(F.pad(b, (0, bits_width - b.shape[-1])))
    return torch.cat(inp), torch.cat(lab)


def embed_inputs(model, text_BLC: torch.Tensor, inp_BNV64: torch.Tensor, layout: PackedLayout) -> torch.Tensor:
    """[B, N, C] packed input tokens: text_proj(text slots) | word_embed(step inputs) | zeros."""
    B = inp_BNV64.shape[0]
    t = model.text_proj(text_BLC.to(model.text_proj.weight.dtype))
    v = model.word_embed(inp_BNV64.to(model.word_embed.weight.dtype))
    parts = [t, v.to(t.dtype)]
    tail = layout.seq_len - layout.text_pad - layout.n_vis
    if tail:
        parts.append(t.new_zeros(B, tail, t.shape[-1]))
    return torch.cat(parts, dim=1)


def bit_loss(model, h_BNC: torch.Tensor, bits_BNV: torch.Tensor, layout: PackedLayout,
             token_weight: torch.Tensor | None = None):
    """Bitwise cross-entropy (2-way softmax per bit) through semantic_head2 / head.

    Returns (loss, token_loss [B, n_vis], token_acc [B, n_vis]): loss = sum over tokens of weight x mean bit CE,
    averaged over the batch; token_acc = fraction of bits whose argmax matches. ``token_weight`` ([B, n_vis],
    optional) replaces the layout's weights per sequence (e.g. zero on the video tokens of a photo).
    """
    Lp = layout.text_pad
    hv = h_BNC[:, Lp:Lp + layout.n_vis]
    B = hv.shape[0]
    tok_loss = hv.new_zeros(B, layout.n_vis, dtype=torch.float32)
    tok_acc = hv.new_zeros(B, layout.n_vis, dtype=torch.float32)
    for idx, nb in ((layout.sem_idx, layout.semantic_bits), (layout.det_idx, layout.detail_bits)):
        if idx.numel() == 0:
            continue
        lg = model.logits(hv[:, idx], nb).view(B, idx.numel(), nb, 2)
        lab = bits_BNV[:, idx, :nb].long()
        ce = F.cross_entropy(lg.reshape(-1, 2), lab.reshape(-1), reduction="none").view(B, idx.numel(), nb)
        tok_loss[:, idx] = ce.mean(-1)
        tok_acc[:, idx] = (lg.argmax(-1) == lab).float().mean(-1)
    w = layout.weight if token_weight is None else token_weight
    loss = (tok_loss * w).sum(-1).mean()
    return loss, tok_loss.detach(), tok_acc.detach()


def per_scale(values_BNV: torch.Tensor, layout: PackedLayout) -> torch.Tensor:
    """Mean of a per-token quantity per scale: [num_scales]."""
    v = values_BNV.float().mean(0)
    S = layout.num_scales
    tot = torch.zeros(S, device=v.device).index_add_(0, layout.scale_of, v)
    cnt = torch.zeros(S, device=v.device).index_add_(0, layout.scale_of, torch.ones_like(v))
    return tot / cnt.clamp_min(1)
