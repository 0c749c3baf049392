"""Attention backends, chosen at run time with a stated reason.

Every backend takes q [B, Nq, H, D] and k, v [B, Nk, Hkv, D] (GQA: query head j reads KV head j // (H / Hkv)),
full bidirectional attention with scale D^-0.5, and returns [B, Nq, H, D].

- ``sdpa``: torch.nn.functional.scaled_dot_product_attention (on GPU it picks cuDNN / flash itself).
- ``fa3``: the FlashAttention-3 forward kernel of the ``fa3-fwd`` wheel (Hopper), if it imports.
"""
from __future__ import annotations

import importlib
import warnings

import torch
import torch.nn.functional as F

_FA3 = None


def _load_fa3():
    global _FA3
    if _FA3 is None:
        try:
            _FA3 = importlib.import_module("fa3_fwd_interface").flash_attn_func
        except Exception as e:  # any import failure means: not available
            _FA3 = e
    return None if isinstance(_FA3, Exception) else _FA3


def sdpa_attention(q, k, v):
    Hq, Hkv = q.shape[2], k.shape[2]
    o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                       enable_gqa=Hq != Hkv)
    return o.transpose(1, 2)


def fa3_attention(q, k, v):
    fn = _load_fa3()
    out = fn(q, k, v, softmax_scale=q.shape[-1] ** -0.5, causal=False)
    return out[0] if isinstance(out, tuple) else out


BACKENDS = {"sdpa": sdpa_attention, "fa3": fa3_attention}


def available_backends(device: torch.device | str | None = None) -> dict[str, str]:
    """name -> 'ok' or the reason it cannot run here."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    out = {"sdpa": "ok"}
    if dev.type != "cuda":
        out["fa3"] = "needs a CUDA device"
    elif _load_fa3() is None:
        out["fa3"] = f"fa3_fwd_interface not importable ({_FA3!r})"
    elif torch.cuda.get_device_capability(dev)[0] != 9:
        out["fa3"] = "needs a Hopper GPU (sm_90)"
    else:
        out["fa3"] = "ok"
    return out


def select_backend(name: str = "auto", device=None, dtype=torch.bfloat16) -> str:
    """Resolve 'auto' to the fastest available backend; an explicit name that cannot run raises."""
    avail = available_backends(device)
    if name == "auto":
        if avail.get("fa3") == "ok" and dtype in (torch.bfloat16, torch.float16):
            return "fa3"
        return "sdpa"
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {['auto'] + list(BACKENDS)}")
    if avail[name] != "ok":
        raise RuntimeError(f"attention backend {name!r} is not available: {avail[name]}")
    if name == "fa3" and dtype not in (torch.bfloat16, torch.float16):
        warnings.warn("fa3 runs in bf16/fp16 only; fp32 inputs are cast", stacklevel=2)
    return name
