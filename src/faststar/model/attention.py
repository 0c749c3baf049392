"""Attention backends, chosen at run time with a stated reason.

Every backend takes q [B, Nq, H, D] and k, v [B, Nk, Hkv, D] (GQA: query head j reads KV head j // (H / Hkv)),
full bidirectional attention with scale D^-0.5, and returns [B, Nq, H, D].

- ``sdpa``: torch.nn.functional.scaled_dot_product_attention (on GPU it picks cuDNN / flash itself).
- ``fa3``: the FlashAttention-3 forward kernel of the ``fa3-fwd`` wheel (Hopper), if it imports.
"""
from __future__ import annotations

import importlib
import math
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


def _merge(o1, lse1, o2, lse2):
    """Softmax attention over two key sets from each one's output [B, N, H, D] and log-sum-exp [B, H, N]."""
    m = torch.maximum(lse1, lse2)
    a1, a2 = torch.exp(lse1 - m), torch.exp(lse2 - m)
    a1, a2 = (a / (a1 + a2) for a in (a1, a2))
    to = lambda a: a.transpose(1, 2).unsqueeze(-1)          # [B, H, N] -> [B, N, H, 1]
    return (o1.float() * to(a1) + o2.float() * to(a2)).to(o1.dtype)


def _fa3_with_lse(q, k, v):
    """fa3 forward returning (out [B, N, H, D], log-sum-exp [B, H, N] fp32)."""
    fn = _load_fa3()
    kw = dict(softmax_scale=q.shape[-1] ** -0.5, causal=False)
    try:
        out = fn(q, k, v, return_attn_probs=True, **kw)
    except TypeError:
        out = fn(q, k, v, **kw)
    if not isinstance(out, tuple) or len(out) < 2 or out[1].shape != (q.shape[0], q.shape[2], q.shape[1]):
        raise RuntimeError("this fa3_fwd_interface.flash_attn_func does not return the softmax log-sum-exp "
                           "[B, H, N] that weighted attention needs; use the sdpa backend")
    return out[0], out[1].float()


def weighted_step_attention(attn_fn, weight: float):
    """An attention function in which each of the step's own keys (the last Nq of the key sequence: a step
    attends to its prefix, then to itself) counts ``weight`` times against the prefix keys: their logits get
    + log(weight). With weight = N / n_kept the kept keys of a pruned step carry the attention mass that all N
    would have had against the text and reference context (ToMe's proportional attention, one size for all).

    sdpa: one call with an additive key bias. fa3: the prefix and the step attended separately (two kernel calls
    with their log-sum-exp), merged with the step's part weighted."""
    if weight <= 0:
        raise ValueError(f"key weight must be > 0, got {weight}")
    log_w = math.log(weight)

    def fa3_weighted(q, k, v):
        P = k.shape[1] - q.shape[1]
        o1, lse1 = _fa3_with_lse(q, k[:, :P], v[:, :P])
        o2, lse2 = _fa3_with_lse(q, k[:, P:], v[:, P:])
        return _merge(o1, lse1, o2, lse2 + log_w)

    def sdpa_weighted(q, k, v):
        Nq, Nk = q.shape[1], k.shape[1]
        bias = torch.zeros(Nk, dtype=q.dtype, device=q.device)
        bias[Nk - Nq:] = log_w
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           attn_mask=bias.view(1, 1, 1, Nk), enable_gqa=q.shape[2] != k.shape[2])
        return o.transpose(1, 2)

    return fa3_weighted if attn_fn is fa3_attention else sdpa_weighted


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
