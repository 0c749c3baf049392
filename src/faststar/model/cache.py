"""Preallocated K/V cache for one generation.

Per layer one K and one V buffer [B, max_len, Hkv, D], laid out as
``[text | reference scale | current step]``. The text pass writes at 0 and becomes the text prefix; a step writes
its own K/V right after the prefix and attends to ``[:prefix + N]``. When a step's K/V is needed by later scales
(the last repetition of a referenced scale) ``commit_ref`` moves it into the reference slot, replacing the
previous one, which no later scale needs any more. No torch.cat per step.

With ``resident_len`` < ``max_len`` (memory budgets, ``faststar.memory``) each layer keeps only ``resident_len``
positions (text, reference, and room for a step up to the reference's size); a bigger step, which no later scale
reads, has its K/V in one buffer shared by all layers, into which each layer's prefix is copied before its step's
K/V is written. At 720p this is about 2.6 GiB instead of 20.8 GiB for the 8B model.
"""
from __future__ import annotations

import torch


class KVCache:
    def __init__(self, depth: int, batch: int, max_len: int, num_kv_heads: int, head_dim: int,
                 dtype=torch.bfloat16, device=None, resident_len: int | None = None):
        resident = max_len if resident_len is None else min(resident_len, max_len)
        shape = (batch, resident, num_kv_heads, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(depth)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(depth)]
        self.shared_k = self.shared_v = None       # the big steps' buffer, shared by all layers
        if resident < max_len:
            big = (batch, max_len, num_kv_heads, head_dim)
            self.shared_k = torch.zeros(big, dtype=dtype, device=device)
            self.shared_v = torch.zeros(big, dtype=dtype, device=device)
        self.batch, self.max_len, self.resident_len = batch, max_len, resident
        self.shared_step = [False] * depth         # per layer: the last step's K/V sit in the shared buffer
        self.text_len = 0
        self.ref_lens = [0] * depth     # per layer: a two-phase pruned step caches different lengths per layer
        self.step_lens = [0] * depth

    def reset(self) -> None:
        """Forget the contents (buffers are reused by the next generation)."""
        self.text_len = 0
        self.ref_lens = [0] * len(self.ref_lens)
        self.step_lens = [0] * len(self.step_lens)

    def fits(self, batch: int, max_len: int, dtype, device, resident_len: int | None = None) -> bool:
        k = self.k[0]
        want = max_len if resident_len is None else min(resident_len, max_len)
        return (self.batch == batch and self.max_len >= max_len and k.dtype == dtype and k.device == device
                and self.resident_len == want)

    @property
    def ref_len(self) -> int:
        return self.ref_lens[-1]

    def prefix_len(self, layer: int = -1) -> int:
        return self.text_len + self.ref_lens[layer]

    def nbytes(self) -> int:
        extra = [t for t in (self.shared_k, self.shared_v) if t is not None]
        return sum(t.numel() * t.element_size() for t in self.k + self.v + extra)

    def step_views(self, layer: int, B: int, N: int):
        """Where a step of N tokens puts its K/V in ``layer``: (k_step, v_step, k_all, v_all), the first two the
        writable [B, N] slots after the prefix, the last two prefix + step (what the step attends to)."""
        P = self.prefix_len(layer)
        if P + N > self.max_len:
            raise RuntimeError(f"KV cache too small: need {P + N} positions, allocated {self.max_len}")
        self.step_lens[layer] = N
        k, v = self.k[layer], self.v[layer]
        self.shared_step[layer] = P + N > self.resident_len
        if self.shared_step[layer]:         # a big step: the shared buffer, with this layer's prefix copied in
            self.shared_k[:B, :P] = k[:B, :P]
            self.shared_v[:B, :P] = v[:B, :P]
            k, v = self.shared_k, self.shared_v
        return k[:B, P:P + N], v[:B, P:P + N], k[:B, :P + N], v[:B, :P + N]

    def update(self, layer: int, k_BNHD: torch.Tensor, v_BNHD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this step's K/V after the prefix; return K/V over prefix + step (rows [:B])."""
        B, N = k_BNHD.shape[:2]
        k_step, v_step, k_all, v_all = self.step_views(layer, B, N)
        k_step.copy_(k_BNHD)
        v_step.copy_(v_BNHD)
        return k_all, v_all

    def commit_text(self) -> None:
        """The step just run was the text pass: it becomes the text prefix."""
        if self.text_len or any(self.ref_lens):
            raise RuntimeError("the text pass must run once, before any visual step")
        if self.shared_step[0]:
            raise RuntimeError(f"the text ({self.step_lens[0]} tokens) does not fit the cache's resident part")
        self.text_len = self.step_lens[0]

    def commit_ref(self, batch_used: int) -> None:
        """The step just run is referenced by later scales: move its K/V into the reference slot."""
        T = self.text_len
        if any(self.shared_step):
            raise RuntimeError(f"a referenced step of {self.step_lens[-1]} tokens does not fit the cache's resident "
                               f"part ({self.resident_len} positions per layer): raise resident_len")
        for layer in range(len(self.k)):
            P, N = self.prefix_len(layer), self.step_lens[layer]
            for buf in (self.k[layer], self.v[layer]):
                src = buf[:batch_used, P:P + N].clone()
                buf[:batch_used, T:T + N] = src
                if batch_used < self.batch:   # a single-branch step: the other rows reuse row 0's reference
                    buf[batch_used:, T:T + N] = src[:1]
            self.ref_lens[layer] = N
