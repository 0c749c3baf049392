"""Memory budgets: a model of a run's GPU memory and a planner that makes a run fit a budget.

    plan = plan_memory("24GB", cfg, schedule)          # -> MemoryPlan, or BudgetError naming what would fit
    apply_plan(transformer, plan)                        # chunk sizes and KV layout, set from outside the model

A run has three phases, each with its own peak: text encoding (the transformer's weights are already on the GPU;
the text encoder with them, or on the CPU), generation (weights, KV cache, the biggest step's activations) and the
VAE decode (weights and cache still there, unless offloaded; the VAE and one decode chunk). The planner tries the
knobs from fastest to leanest and takes the first combination whose largest phase fits:

* ``chunk_tokens``: blocks and logits head over token chunks (``STARTransformer.set_chunking``), no
  [N x MLP width] tensor; ``attn_pieces`` > 1 also splits attention over query pieces (only when chunks alone do
  not fit: one kernel call is the fast path);
* a compact KV cache: only the text and the reference scale stay per layer, a big step shares one buffer;
* the text encoder on the CPU; smaller VAE decode chunks; the transformer off the GPU while the VAE decodes;
* FP8 weights, only when allowed (``precision="auto"`` or ``allow_fp8``).

The byte counts come from the config (parameter counts of a meta-device model, tensor shapes of the engine); two
constants come from measurements on an H200 and an H100 (``benchmarks/RESULTS.md`` sections 1, 5 and 10,
``../shared/spec/h100-measurements.md``): the fixed overhead (CUDA context is not counted by
``max_memory_allocated``; this is workspaces, graph pools, compiled kernels) and the VAE decoder's activation bytes
per latent frame of a chunk. ``calibration()`` recomputes today's unchunked engine against those readings.
"""
from __future__ import annotations

import itertools
import re
from dataclasses import asdict, dataclass, field

GiB = 2 ** 30

# -- measured constants (see the module docstring) -----------------------------------------------------------------
# Unchunked engine at 720p 5 s dense: 58.9 GiB (H100) / 59.1 GiB (H200) peak, with the bench's VAE (0.45 GiB)
# resident; this model gives 57.1 GiB without overhead (``calibration()``): 1.3 GiB of workspaces, graph pools and
# compiled kernels, taken as fixed. Check: 480p after 720p (the 720p cache is reused) 48.3 GiB measured.
FIXED_OVERHEAD_BYTES = int(1.3 * GiB)
VAE_RELEASE_BYTES = int(0.45 * GiB)      # release VAE: encoder fp32, decoder bf16 (half_decoder_)
# VAE decode at 720p, bf16 decoder (RESULTS section 10, notebook): 10.0 GiB peak with 2-latent-frame chunks (first
# chunk 3 latent = 9 pixel frames), 16.6 GiB with 4 (17 pixel frames), 7.6 GiB at 480p with 4: a line of
# 2.1 GiB + 0.825 GiB per pixel frame of the biggest chunk (+ 0.45 GiB of weights), scaled by the latent area.
VAE_DECODE_FIXED_720P = 2.1 * GiB
VAE_DECODE_PER_PIXEL_FRAME_720P = 0.825 * GiB
T5_XL_ENCODER_PARAMS = 1_220_000_000                    # flan-t5-xl encoder (the release's text encoder)
# GB and GiB both mean 2^30 here: a card sold as "24 GB" holds 24 GiB (an RTX 4090: 24,564 MiB)
SIZES = {"B": 1, "KB": 2 ** 10, "MB": 2 ** 20, "GB": 2 ** 30, "TB": 2 ** 40,
         "KIB": 2 ** 10, "MIB": 2 ** 20, "GIB": 2 ** 30, "TIB": 2 ** 40}


class BudgetError(ValueError):
    """The run does not fit the budget (or a budget cannot be used here); the message says what would."""


def parse_size(text) -> int:
    """'24GB', '24 GiB', '16g', '16' -> bytes (binary units; a bare number is GiB); an int is bytes."""
    if isinstance(text, (int, float)):
        return int(text)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    if not m:
        raise BudgetError(f"cannot read the memory size {text!r}; write it like 24GB or 16GiB")
    num, unit = float(m.group(1)), m.group(2).upper()
    if unit in ("", "G"):
        unit = "GIB"
    if unit not in SIZES:
        raise BudgetError(f"unknown memory unit {m.group(2)!r} in {text!r}; use GB, GiB, MB or MiB")
    return int(num * SIZES[unit])


def fmt_gib(n: float) -> str:
    return f"{n / GiB:.1f} GiB"


# -- what the run is made of ---------------------------------------------------------------------------------------
@dataclass
class RunShape:
    """The sizes a memory estimate needs, all read off the config and the schedule."""
    depth: int
    width: int
    mlp_hidden: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    block_linear_params: int        # the blocks' nn.Linear weights (what FP8 quantizes)
    block_other_params: int         # the blocks' norms (stay bf16)
    other_params: int               # heads, embeddings, text projection, cfg_uncond (fp32)
    max_tokens: int                 # the biggest step's token count
    max_kv_len: int                 # text + reference + step, largest
    kv_resident_len: int            # positions per layer the compact cache keeps
    text_len: int
    batch: int                      # guidance rows (2 with CFG/APG)
    latent_frames: int              # T' of the decoded latent
    latent_hw: tuple[int, int]
    bits: int                       # the head's bits per token at the biggest step

    @classmethod
    def of(cls, cfg, schedule, text_len: int = 128, batch: int = 2) -> "RunShape":
        import torch
        from .model.transformer import STARTransformer
        with torch.device("meta"):
            m = STARTransformer(cfg)
        lin = oth = blk_other = 0
        for name, p in m.named_parameters():
            if name.startswith("block_chunks."):
                if p.ndim == 2:
                    lin += p.numel()
                else:
                    blk_other += p.numel()
            else:
                oth += p.numel()
        big = max(schedule.scales, key=lambda s: s.num_tokens)
        T = sum(t for t, _, _ in schedule.clip_thw)
        return cls(depth=cfg.depth, width=cfg.width, mlp_hidden=cfg.mlp_hidden, num_heads=cfg.num_heads,
                   num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim, block_linear_params=lin,
                   block_other_params=blk_other, other_params=oth, max_tokens=big.num_tokens,
                   max_kv_len=schedule.max_kv_len(text_len), kv_resident_len=kv_resident_len(schedule, text_len),
                   text_len=text_len, batch=batch, latent_frames=T, latent_hw=tuple(schedule.final_hw),
                   bits=big.bits)


def kv_resident_len(schedule, text_len: int, small_step_room: int = 0) -> int:
    """Positions per layer that must stay: the text, then for every referenced scale its own reference plus
    itself (it is written after its reference, then becomes the reference), and optionally room for steps of up to
    ``small_step_room`` tokens after the largest reference. Without that room a small step of a later clip copies
    the prefix (text + reference, 3,728 positions at 720p) into the shared buffer per layer: about 1 GB of copies
    per step, some 20 ms over a 720p video, for 0.3 GiB less memory."""
    need = small_step_room + schedule.max_ref_tokens()
    for idx in schedule.referenced_scales:
        s = schedule.scales[idx]
        ref = schedule.scales[s.ref_scale].num_tokens if s.ref_scale is not None else 0
        need = max(need, ref + s.num_tokens)
    return min(text_len + need, schedule.max_kv_len(text_len))


# -- the plan -----------------------------------------------------------------------------------------------------
@dataclass
class MemoryPlan:
    precision: str = "bf16"          # "bf16" | "fp8"
    chunk_tokens: int = 0            # 0 = unchunked
    attn_pieces: int = 1
    compact_kv: bool = False
    text_on_gpu: bool = True
    decode_chunk: int = 4            # latent frames per VAE decode chunk (GPU_DECODE_CHUNK is 4)
    decode_lean: bool = False        # the image frame decoded alone first (vae.model.lean_decode_plan)
    offload_for_decode: bool = False  # the transformer's weights leave the GPU while the VAE decodes
    budget_bytes: int | None = None
    phases: dict = field(default_factory=dict)   # phase -> predicted peak bytes
    parts: dict = field(default_factory=dict)    # component -> bytes
    kv_resident_len: int = 0

    @property
    def peak_bytes(self) -> int:
        return max(self.phases.values()) if self.phases else 0

    def describe(self) -> dict:
        d = asdict(self)
        d["peak_gib"] = round(self.peak_bytes / GiB, 2)
        d["phases_gib"] = {k: round(v / GiB, 2) for k, v in self.phases.items()}
        d["parts_gib"] = {k: round(v / GiB, 3) for k, v in self.parts.items()}
        del d["phases"], d["parts"]
        return d

    def summary(self) -> str:
        bits = [self.precision, f"chunks {self.chunk_tokens or 'off'}"]
        if self.attn_pieces > 1:
            bits.append(f"attention in {self.attn_pieces} pieces")
        bits.append("compact KV" if self.compact_kv else "full KV")
        bits.append("text encoder on GPU" if self.text_on_gpu else "text encoder on CPU")
        bits.append(f"decode {self.decode_chunk}-frame chunks" + (", image frame alone" if self.decode_lean else ""))
        if self.offload_for_decode:
            bits.append("transformer off the GPU during decode")
        budget = f" of {fmt_gib(self.budget_bytes)}" if self.budget_bytes else ""
        return f"memory plan: predicted peak {fmt_gib(self.peak_bytes)}{budget} ({', '.join(bits)})"


def estimate(shape: RunShape, plan: MemoryPlan, *, text_encoder_bytes: int = 0, vae_bytes: int = 0,
             decode: bool = True, overhead: int = FIXED_OVERHEAD_BYTES) -> MemoryPlan:
    """Fill ``plan.phases`` / ``plan.parts`` with the predicted bytes of each phase of the run."""
    s, bf = shape, 2
    B, N, C, M = shape.batch, shape.max_tokens, shape.width, shape.mlp_hidden
    kvd = s.num_kv_heads * s.head_dim
    lin_bytes = s.block_linear_params * (1 if plan.precision == "fp8" else bf)
    if plan.precision == "fp8":     # one fp32 scale per output row of every quantized weight
        lin_bytes += 4 * s.depth * (C + 2 * kvd + C + 2 * M + C)
    weights = lin_bytes + s.block_other_params * bf + s.other_params * 4
    per_pos = s.depth * 2 * B * kvd * bf                         # K and V of one position in every layer
    if plan.compact_kv:
        kv = per_pos * s.kv_resident_len + 2 * B * s.max_kv_len * kvd * bf
    else:
        kv = per_pos * s.max_kv_len
    tokens = N * C * 4                                           # the step's fp32 tokens (held by the loop)
    row = B * N * C * bf                                         # one [B, N, C] bf16 activation
    sampling = 3 * B * N * 2 * s.bits * 4                        # logits, guided logits, uniforms (fp32)
    if plan.chunk_tokens and plan.chunk_tokens < N:
        n = plan.chunk_tokens
        q = B * N * s.num_heads * s.head_dim * bf
        o = row // plan.attn_pieces
        chunk = B * n * (4 * C + 3 * M) * bf + 2 * B * n * C * 4   # MLP of a chunk + fp32 norm temporaries
        if plan.attn_pieces == 1:      # q is freed after the one call; the MLP chunks then run beside o
            acts = tokens + row + max(q + o, o + chunk)
        else:
            acts = tokens + row + q + o + chunk
    else:   # today's block: input, attention out, residual, norm, gate/up, activation, down
        acts = tokens + 4 * row + B * N * 3 * M * bf + row
    gen = weights + kv + acts + sampling + overhead
    text = weights + overhead + (text_encoder_bytes if plan.text_on_gpu else 0)
    # the VAE decode: the biggest chunk's pixel frames (decode_chunk_plan's first chunk holds the image frame and
    # chunk + (T' - 1) % chunk more; lean_decode_plan's chunks hold chunk latent frames), scaled by the area
    h, w = s.latent_hw
    area = (h * w) / (45 * 80)
    T, c = s.latent_frames, plan.decode_chunk
    if plan.decode_lean:
        pixel_frames = 4 * min(c, max(T - 1, 0)) or 1
    else:
        first = min(T, c + 1 + (T - 1) % c)
        pixel_frames = 1 + 4 * (first - 1)
    dec_act = int((VAE_DECODE_FIXED_720P + VAE_DECODE_PER_PIXEL_FRAME_720P * pixel_frames) * area)
    resident = 0 if plan.offload_for_decode else weights + kv
    dec = resident + vae_bytes + dec_act + overhead if decode else 0
    plan.phases = {"text": text, "generate": gen}
    if decode:
        plan.phases["decode"] = dec
    plan.parts = dict(weights=weights, kv_cache=kv, activations=acts, sampling=sampling, overhead=overhead,
                      text_encoder=text_encoder_bytes if plan.text_on_gpu else 0, vae=vae_bytes,
                      vae_decode_activations=dec_act if decode else 0)
    plan.kv_resident_len = s.kv_resident_len if plan.compact_kv else 0
    return plan


def candidate_plans(allow_fp8: bool, precision: str, max_tokens: int):
    """Plans from fastest to leanest (the planner takes the first that fits)."""
    precisions = ["bf16", "fp8"] if allow_fp8 else [precision]
    chunks = [0] + [c for c in (16384, 8192, 4096, 2048, 1024) if c < max_tokens]
    decodes = ((4, False), (2, False), (2, True), (1, True))
    for prec, offload, pieces, chunk, text_gpu, (dec, lean), compact in itertools.product(
            precisions, (False, True), (1, 2, 4), chunks, (True, False), decodes, (False, True)):
        if pieces > 1 and not chunk:
            continue
        yield MemoryPlan(precision=prec, chunk_tokens=chunk, attn_pieces=pieces, compact_kv=compact,
                         text_on_gpu=text_gpu, decode_chunk=dec, decode_lean=lean, offload_for_decode=offload)


def _plans(budget_b, cfg, schedule, precision, allow_fp8, text_len, batch, text_encoder_bytes, vae_bytes, decode):
    if text_encoder_bytes is None:
        text_encoder_bytes = 2 * T5_XL_ENCODER_PARAMS if cfg.text_channels == 2048 else 0
    shape = RunShape.of(cfg, schedule, text_len=text_len, batch=batch)
    for cand in candidate_plans(allow_fp8, precision, shape.max_tokens):
        estimate(shape, cand, text_encoder_bytes=text_encoder_bytes, vae_bytes=vae_bytes, decode=decode)
        cand.budget_bytes = budget_b
        yield cand


def plan_memory(budget, cfg, schedule, *, precision: str = "bf16", allow_fp8: bool = False, text_len: int = 128,
                batch: int = 2, text_encoder_bytes: int | None = None, vae_bytes: int = VAE_RELEASE_BYTES,
                decode: bool = True) -> MemoryPlan:
    """The fastest plan whose predicted peak fits ``budget`` (bytes or '24GB'); BudgetError naming the smallest
    budget that would work when none does. ``text_encoder_bytes``: default a bf16 flan-t5-xl encoder when the
    text width is T5-XL's (2048), else 0. ``vae_bytes``: the VAE's weights (default the release VAE's)."""
    budget_b = parse_size(budget)
    best = None
    for cand in _plans(budget_b, cfg, schedule, precision, allow_fp8, text_len, batch, text_encoder_bytes,
                       vae_bytes, decode):
        if cand.peak_bytes <= budget_b:
            return cand
        if best is None or cand.peak_bytes < best.peak_bytes:
            best = cand
    hint = "" if allow_fp8 or precision == "fp8" else "; FP8 weights need less (precision='fp8' or 'auto')"
    raise BudgetError(f"{schedule.name} does not fit in {fmt_gib(budget_b)} of GPU memory: the smallest plan "
                      f"needs {fmt_gib(best.peak_bytes)} (--max-memory {best.peak_bytes / GiB + 0.05:.1f}GiB; "
                      f"{best.summary().split('(')[1].rstrip(')')}){hint}")


def smallest_plan(cfg, schedule, **kw) -> MemoryPlan:
    """The plan with the smallest predicted peak (what ``--max-memory`` needs at least)."""
    budget = None
    for cand in _plans(None, cfg, schedule, kw.get("precision", "bf16"), kw.get("allow_fp8", False),
                       kw.get("text_len", 128), kw.get("batch", 2), kw.get("text_encoder_bytes"),
                       kw.get("vae_bytes", VAE_RELEASE_BYTES), kw.get("decode", True)):
        if budget is None or cand.peak_bytes < budget.peak_bytes:
            budget = cand
    budget.budget_bytes = budget.peak_bytes
    return budget


def apply_plan(transformer, plan: MemoryPlan):
    """Set the plan's chunking and KV layout on a transformer (undo: ``apply_plan(t, MemoryPlan())``)."""
    return transformer.set_chunking(plan.chunk_tokens, plan.attn_pieces, plan.kv_resident_len)


def device_budget_check(device, budget) -> int:
    """A budget is about GPU memory: on a CPU-only machine (or device) it is an error, not a traceback."""
    import torch
    dev = torch.device(device) if not isinstance(device, torch.device) else device
    if dev.type != "cuda" or not torch.cuda.is_available():
        raise BudgetError(f"--max-memory / max_memory budgets GPU memory, but this run is on {dev.type} "
                          f"(no CUDA GPU{' available' if not torch.cuda.is_available() else ' selected'}); "
                          "leave it out on the CPU")
    return parse_size(budget)


def calibration() -> list[dict]:
    """Today's unchunked engine (full KV, VAE resident, no decode in the peak) against the measured peaks."""
    from .config import transformer_config
    from .schedule import official_schedule
    cfg = transformer_config("infinitystar-8b")
    s720 = RunShape.of(cfg, official_schedule("720p", 5))
    s480 = RunShape.of(cfg, official_schedule("480p", 5))
    s480.max_kv_len = s720.max_kv_len                  # bench ran 720p first: its cache buffers were kept
    rows = []
    for name, shape, measured in (("720p", s720, 58.9), ("480p after 720p", s480, 48.3)):
        p = estimate(shape, MemoryPlan(), decode=False, overhead=FIXED_OVERHEAD_BYTES + VAE_RELEASE_BYTES)
        rows.append(dict(run=name, model_gib=round(p.phases["generate"] / GiB, 2), measured_gib=measured))
    return rows
