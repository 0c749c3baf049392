"""FP8 weights and FP8 attention, applied from outside the model (torchao float8).

    check_fp8(device)                                  # one clear error where FP8 cannot run
    quantize_fp8_(transformer, mode="dynamic")         # blocks' nn.Linear -> float8 (from the loaded bf16 weights)
    use_fp8_attention(transformer)                     # attention through fa3's FP8 forward (bf16 elsewhere)

Only the 36 blocks' linear layers are quantized: the bitwise heads, the token / text embeddings and the guidance
and sampling math stay fp32 as the release runs them, the norms stay bf16. Two modes, compared by the benchmark:

* ``"dynamic"``: float8 weights and activations quantized per call (torchao ``Float8DynamicActivationFloat8Weight``,
  per-row scales by default, ``granularity="tensor"`` for one scale per tensor): FP8 tensor-core matrix products,
  on GPUs of compute capability >= 8.9 (Ada, Hopper) only;
* ``"weight_only"``: float8 weights, dequantized to bf16 for each product (``Float8WeightOnly``): half the weight
  memory, bf16 speed; this one also runs on the CPU (the tests use it).

Fused q/k/v and gate/up matrices are not quantized (they are not Linear modules): quantize before
``fuse_projections_``, which the pipeline then skips.
"""
from __future__ import annotations

import warnings

import torch

PRECISIONS = ("bf16", "fp8", "auto")
FP8_MODES = ("dynamic", "weight_only")


class PrecisionError(RuntimeError):
    """FP8 was asked for where it cannot run."""


def fp8_unavailable(device) -> str | None:
    """Why FP8 matrix products cannot run on ``device`` (None: they can)."""
    dev = torch.device(device) if not isinstance(device, torch.device) else device
    if dev.type != "cuda":
        return f"FP8 needs a CUDA GPU of compute capability >= 8.9 (Ada or Hopper); this run is on {dev.type}"
    if not torch.cuda.is_available():
        return "FP8 needs a CUDA GPU; torch sees none"
    cap = torch.cuda.get_device_capability(dev)
    if cap < (8, 9):
        return (f"FP8 needs compute capability >= 8.9 (Ada or Hopper); {torch.cuda.get_device_name(dev)} has "
                f"{cap[0]}.{cap[1]}")
    try:
        import torchao  # noqa: F401
    except Exception as e:
        return f"FP8 needs torchao (pip install 'faststar[fp8]'): {e}"
    return None


def check_fp8(device) -> None:
    why = fp8_unavailable(device)
    if why:
        raise PrecisionError(f"precision='fp8' cannot run here: {why}. Use precision='bf16' (or 'auto', which "
                             "falls back to bf16)")


def resolve_precision(precision: str, device, log=None) -> str:
    """'bf16' | 'fp8' | 'auto' -> 'bf16' or 'fp8'. fp8 where it cannot run: PrecisionError; auto: fp8 where it
    can, else bf16 with a message saying why."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {list(PRECISIONS)}")
    if precision == "bf16":
        return "bf16"
    if precision == "fp8":
        check_fp8(device)
        return "fp8"
    why = fp8_unavailable(device)
    if why:
        msg = f"precision='auto': using bf16 ({why})"
        (log or (lambda m: warnings.warn(m, stacklevel=3)))(msg)
        return "bf16"
    return "fp8"


def _block_linear(module: torch.nn.Module, fqn: str) -> bool:
    return isinstance(module, torch.nn.Linear) and fqn.startswith("block_chunks.")


def fp8_config(mode: str = "dynamic", granularity: str = "row"):
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, Float8WeightOnlyConfig, PerRow, \
        PerTensor
    if mode not in FP8_MODES:
        raise ValueError(f"unknown FP8 mode {mode!r}; choose one of {list(FP8_MODES)}")
    if granularity not in ("row", "tensor"):
        raise ValueError(f"unknown FP8 granularity {granularity!r}; choose 'row' or 'tensor'")
    if mode == "weight_only":
        return Float8WeightOnlyConfig()
    return Float8DynamicActivationFloat8WeightConfig(granularity=PerRow() if granularity == "row" else PerTensor())


def quantize_fp8_(transformer, mode: str = "dynamic", granularity: str = "row", check_device: bool = True):
    """Quantize the blocks' linear layers to float8 in place (from whatever bf16/fp32 weights are loaded).
    Returns the number of Linear modules quantized."""
    if check_device and mode == "dynamic":
        check_fp8(transformer.device)
    if any(getattr(blk.attn, "wqkv", None) is not None for blk in transformer.layers):
        raise PrecisionError("quantize before fuse_projections_: fused q/k/v and gate/up matrices are not Linear "
                             "modules and would stay bf16")
    from torchao.quantization import quantize_
    n = sum(1 for name, m in transformer.named_modules() if _block_linear(m, name))
    quantize_(transformer, fp8_config(mode, granularity), filter_fn=_block_linear)
    transformer.precision = f"fp8-{mode}" + ("" if mode == "weight_only" else f"-{granularity}")
    return n


def is_fp8(transformer) -> bool:
    return str(getattr(transformer, "precision", "bf16")).startswith("fp8")


# -- FP8 attention -------------------------------------------------------------------------------------------------
E4M3_MAX = 448.0


def _to_e4m3(t: torch.Tensor, B: int, Hk: int):
    """t in float8 e4m3 with one scale per tensor; returns (t8, descale [B, Hk] fp32) as fa3 takes them."""
    scale = t.detach().abs().amax().float().clamp_min(1e-12) / E4M3_MAX
    return (t / scale.to(t.dtype)).to(torch.float8_e4m3fn), scale.expand(B, Hk).contiguous()


def fa3_fp8_attention(q, k, v):
    """Attention through fa3's FP8 forward: q, k, v quantized to e4m3 (one scale per tensor), output in q's dtype."""
    from .model.attention import _load_fa3
    fn = _load_fa3()
    B, Hk = q.shape[0], k.shape[2]
    q8, qd = _to_e4m3(q, B, Hk)
    k8, kd = _to_e4m3(k, B, Hk)
    v8, vd = _to_e4m3(v, B, Hk)
    out = fn(q8, k8, v8, softmax_scale=q.shape[-1] ** -0.5, causal=False, q_descale=qd, k_descale=kd, v_descale=vd)
    out = out[0] if isinstance(out, tuple) else out
    return out.to(q.dtype)


def fp8_attention_unavailable(device) -> str | None:
    from .model.attention import available_backends
    why = fp8_unavailable(device)
    if why and "torchao" not in why:
        return why
    fa3 = available_backends(device).get("fa3")
    return None if fa3 == "ok" else f"FP8 attention runs on fa3: {fa3}"


def use_fp8_attention(transformer, strict: bool = False, log=None) -> str:
    """Route the transformer's attention through fa3's FP8 forward where it can run (registered as backend
    'fa3-fp8'); elsewhere keep the current backend (strict: raise). Returns the backend in use."""
    from .model.attention import BACKENDS
    why = fp8_attention_unavailable(transformer.device)
    if why:
        if strict:
            raise PrecisionError(f"attention='fp8' cannot run here: {why}")
        (log or (lambda m: warnings.warn(m, stacklevel=3)))(f"attention='fp8': keeping {transformer.attn_backend} "
                                                             f"({why})")
        return transformer.attn_backend
    BACKENDS.setdefault("fa3-fp8", fa3_fp8_attention)
    transformer.attn_backend = "fa3-fp8"
    return "fa3-fp8"
