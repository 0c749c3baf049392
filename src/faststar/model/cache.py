"""Preallocated K/V cache for one generation.

Per layer one K and one V buffer [B, max_len, Hkv, D], laid out as
``[text | reference scale | current step]``. The text pass writes at 0 and becomes the text prefix; a step writes
its own K/V right after the prefix and attends to ``[:prefix + N]``. When a step's K/V is needed by later scales
(the last repetition of a referenced scale) ``commit_ref`` moves it into the reference slot, replacing the
previous one, which no later scale needs any more. No torch.cat per step.
"""
from __future__ import annotations

import torch


class KVCache:
    def __init__(self, depth: int, batch: int, max_len: int, num_kv_heads: int, head_dim: int,
                 dtype=torch.bfloat16, device=None):
        shape = (batch, max_len, num_kv_heads, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(depth)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(depth)]
        self.batch, self.max_len = batch, max_len
        self.text_len = 0
        self.ref_lens = [0] * depth     # per layer: a two-phase pruned step caches different lengths per layer
        self.step_lens = [0] * depth

    def reset(self) -> None:
        """Forget the contents (buffers are reused by the next generation)."""
        self.text_len = 0
        self.ref_lens = [0] * len(self.ref_lens)
        self.step_lens = [0] * len(self.step_lens)

    def fits(self, batch: int, max_len: int, dtype, device) -> bool:
        k = self.k[0]
        return self.batch == batch and self.max_len >= max_len and k.dtype == dtype and k.device == device

    @property
    def ref_len(self) -> int:
        return self.ref_lens[-1]

    def prefix_len(self, layer: int = -1) -> int:
        return self.text_len + self.ref_lens[layer]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)

    def update(self, layer: int, k_BNHD: torch.Tensor, v_BNHD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this step's K/V after the prefix; return K/V over prefix + step (rows [:B])."""
        B, N = k_BNHD.shape[:2]
        P = self.prefix_len(layer)
        if P + N > self.max_len:
            raise RuntimeError(f"KV cache too small: need {P + N} positions, allocated {self.max_len}")
        self.k[layer][:B, P:P + N] = k_BNHD
        self.v[layer][:B, P:P + N] = v_BNHD
        self.step_lens[layer] = N
        return self.k[layer][:B, :P + N], self.v[layer][:B, :P + N]

    def commit_text(self) -> None:
        """The step just run was the text pass: it becomes the text prefix."""
        if self.text_len or any(self.ref_lens):
            raise RuntimeError("the text pass must run once, before any visual step")
        self.text_len = self.step_lens[0]

    def commit_ref(self, batch_used: int) -> None:
        """The step just run is referenced by later scales: move its K/V into the reference slot."""
        T = self.text_len
        for layer in range(len(self.k)):
            P, N = self.prefix_len(layer), self.step_lens[layer]
            for buf in (self.k[layer], self.v[layer]):
                src = buf[:batch_used, P:P + N].clone()
                buf[:batch_used, T:T + N] = src
                if batch_used < self.batch:   # a single-branch step: the other rows reuse row 0's reference
                    buf[batch_used:, T:T + N] = src[:1]
            self.ref_lens[layer] = N
