"""Scale-out of one generation over ``torchrun`` ranks (torch.distributed: NCCL on GPUs, gloo on the CPU).

``parallel="cfg"`` (guidance-parallel, 2 ranks): rank 0 runs the conditional branch, rank 1 the unconditional one,
each with a KV cache of one row. After every call of the blocks the two last-block outputs are all-gathered, so
both ranks hold the [2, N, C] hidden states that one process would have: the logits, the guidance, the sampled bits,
the canvas and every accelerator decision (scores at a prune layer, restored states) are then computed from the same
tensors on both ranks, and both ranks sample the same bits. The exchange is the hidden states rather than the
logits because the accelerators read them (FastVAR/ToMe-style scores, restore caches); it is N x C per step.

Single-branch steps (late scales under ``single_branch_last``, or guidance off on clip 0): only the conditional
branch exists, so rank 1 idles and receives rank 0's output by broadcast: running the conditional branch there too
would only repeat rank 0's work, and the unconditional branch has nothing to do. When such a step is a reference
(later scales attend to its K/V), rank 0 also broadcasts the step's K/V, which one process copies into its
unconditional row (``KVCache.commit_ref`` reuses row 0's reference): rank 1 could not compute them itself, its
cache holds the unconditional text prefix. Giving the idle rank sequence-parallel work instead is ``cfg+sp``, not
built yet.

``parallel="sp"`` (sequence-parallel, Ulysses, P ranks, P dividing the kv heads): see ``SequenceParallel``. Both
layouts exchange only outside the model file: a layout's ``forward_blocks`` stands in for the model's, and the loop
calls the layout's ``new_cache`` / ``commit_ref``.

The layer outputs that observers ask for are the rank's own branch (rank 0: the conditional one, as golden records).
"""
from __future__ import annotations

import os

import torch

LAYOUTS = ("cfg", "sp")
PLANNED = ("cfg+sp",)


def init_from_env(device: torch.device | str | None = None) -> bool:
    """Join torchrun's process group if ``WORLD_SIZE`` > 1 and none exists yet (NCCL for a CUDA device, else gloo).
    Returns whether a group is initialized."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return True
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1 or not dist.is_available():
        return False
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda":
        dist.init_process_group("nccl", device_id=dev)
    else:
        dist.init_process_group("gloo")
    return True


def make_parallel(layout, device=None):
    """``None`` (one process), a layout name, or an already built layout object."""
    if layout is None or layout == "none":
        return None
    if not isinstance(layout, str):
        return layout
    if layout in PLANNED:
        raise ValueError(f"parallel={layout!r}: guidance- and sequence-parallel together is not built yet; "
                         f"choose one of {LAYOUTS}")
    if layout not in LAYOUTS:
        raise ValueError(f"unknown parallel layout {layout!r}; choose one of {LAYOUTS}")
    return GuidanceParallel(device=device) if layout == "cfg" else SequenceParallel(device=device)


def _world(group) -> int:
    import torch.distributed as dist
    return dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1


class GuidanceParallel:
    """Conditional branch on rank 0, unconditional on rank 1 (see the module docstring)."""

    name = "cfg"

    def __init__(self, group=None, device=None):
        import torch.distributed as dist
        init_from_env(device)
        world = dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1
        if world != 2:
            raise ValueError(f"parallel='cfg' puts the two guidance branches on 2 ranks, but the world size is "
                             f"{world}: launch with torchrun --nproc-per-node 2")
        self.dist, self.group = dist, group
        self.rank = dist.get_rank(group)
        self.src = dist.get_global_rank(group, 0) if group is not None else 0

    def check(self, batch: int, cfg=None) -> None:
        if batch != 2:
            raise ValueError("parallel='cfg' needs two guidance branches; this guidance is single-branch "
                             "(mode 'none' or scale 1)")

    def new_cache(self, model, max_len: int, batch: int):
        return model.new_cache(max_len, batch=1)

    def commit_ref(self, cache, branches: int) -> None:
        """The step just run is referenced by later scales. Guided: each rank commits its own row. Single-branch:
        one process copies the conditional K/V into both rows, so rank 1 (which idled) takes rank 0's."""
        cache.commit_ref(1)
        if branches == 2:
            return
        dev = cache.k[0].device
        lens = torch.tensor(cache.step_lens, dtype=torch.int64, device=dev)
        self.dist.broadcast(lens, src=self.src, group=self.group)
        cache.step_lens = [int(n) for n in lens.tolist()]
        T = cache.text_len
        for layer in range(len(cache.k)):
            N = cache.step_lens[layer]
            cache.ref_lens[layer] = N
            for buf in (cache.k[layer], cache.v[layer]):
                slot = buf[:1, T:T + N].contiguous()
                self.dist.broadcast(slot, src=self.src, group=self.group)
                if self.rank != 0:
                    buf[:1, T:T + N] = slot

    def forward_blocks(self, model, x_BNC, cos, sin, cache, layer_outputs=None, layers=None):
        """What ``model.forward_blocks`` returns in one process, [B, N, C], on both ranks."""
        B = x_BNC.shape[0]
        if B == 2:
            h = model.forward_blocks(x_BNC[self.rank:self.rank + 1], cos, sin, cache, layer_outputs=layer_outputs,
                                     layers=layers).contiguous()
            parts = [torch.empty_like(h) for _ in range(2)]
            self.dist.all_gather(parts, h, group=self.group)
            return torch.cat(parts)
        if self.rank == 0:
            h = model.forward_blocks(x_BNC, cos, sin, cache, layer_outputs=layer_outputs, layers=layers)
            h = h.contiguous()
        else:                     # idle: the K/V of a single-branch step reach rank 1 only if referenced
            h = torch.empty(x_BNC.shape, dtype=model.block_dtype, device=x_BNC.device)
        self.dist.broadcast(h, src=self.src, group=self.group)
        return h


class HeadShardedCache:
    """A ``KVCache`` of this rank's kv heads (all positions) behind the step's all-to-all: ``update`` takes the K/V
    of the rank's tokens (all heads) and stores those of all tokens (the rank's heads)."""

    def __init__(self, inner, sp: "SequenceParallel"):
        self.inner, self.sp = inner, sp

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def update(self, layer, k_BNHD, v_BNHD):
        return self.inner.update(layer, self.sp.tokens_to_heads(k_BNHD), self.sp.tokens_to_heads(v_BNHD))


class SequenceParallel:
    """Ulysses sequence parallelism over P ranks: each rank runs the blocks on 1/P of a step's tokens (kept tokens
    of a pruned step included: the split is of whatever the step runs); around attention an all-to-all trades
    tokens for heads, so a rank attends with H/P query heads and K/P kv heads over all tokens, and back. The KV
    cache is sharded by kv heads to match (text prefix and reference too). P must divide the kv heads (8 for the
    8B model: degree up to 8). Every rank returns the full hidden states (all-gathered after the last block), so the
    rest of the step runs as in one process. Both guidance branches run on every rank. The blocks run unchunked."""

    name = "sp"

    def __init__(self, group=None, device=None):
        import torch.distributed as dist
        init_from_env(device)
        self.world = _world(group)
        if self.world < 2:
            raise ValueError(f"parallel='sp' splits each step's tokens over the ranks, but the world size is "
                             f"{self.world}: launch with torchrun --nproc-per-node P (P divides the kv heads)")
        self.dist, self.group = dist, group
        self.rank = dist.get_rank(group)
        self.sizes: list[int] = []

    def check(self, batch: int, cfg=None) -> None:
        if cfg is not None and (cfg.num_kv_heads % self.world or cfg.num_heads % self.world):
            raise ValueError(f"parallel='sp' shards the attention heads: {cfg.num_heads} query / {cfg.num_kv_heads}"
                             f" kv heads do not divide over {self.world} ranks")

    def new_cache(self, model, max_len: int, batch: int):
        from .model.cache import KVCache
        c = model.cfg
        inner = KVCache(c.depth, batch, max_len, c.num_kv_heads // self.world, c.head_dim, dtype=model.block_dtype,
                        device=model.device)
        return HeadShardedCache(inner, self)

    # -- the two all-to-alls ---------------------------------------------------------------------------------------
    def tokens_to_heads(self, x):
        """[B, n_rank, H, D] (this rank's tokens, all heads) -> [B, N, H/P, D] (all tokens, this rank's heads)."""
        P, B, n, H, D = self.world, x.shape[0], x.shape[1], x.shape[2], x.shape[3]
        hp = H // P
        send = x.reshape(B, n, P, hp, D).permute(2, 0, 1, 3, 4).contiguous().reshape(-1)
        recv = x.new_empty(B * sum(self.sizes) * hp * D)
        self.dist.all_to_all_single(recv, send, output_split_sizes=[B * m * hp * D for m in self.sizes],
                                    input_split_sizes=[B * n * hp * D] * P, group=self.group)
        parts = recv.split([B * m * hp * D for m in self.sizes])
        return torch.cat([t.view(B, m, hp, D) for t, m in zip(parts, self.sizes)], dim=1)

    def heads_to_tokens(self, o):
        """[B, N, H/P, D] -> [B, n_rank, H, D]."""
        P, B, hp, D = self.world, o.shape[0], o.shape[2], o.shape[3]
        n = self.sizes[self.rank]
        send = torch.cat([t.reshape(-1) for t in o.split(self.sizes, dim=1)])
        recv = o.new_empty(P * B * n * hp * D)
        self.dist.all_to_all_single(recv, send, output_split_sizes=[B * n * hp * D] * P,
                                    input_split_sizes=[B * m * hp * D for m in self.sizes], group=self.group)
        return recv.view(P, B, n, hp, D).permute(1, 2, 0, 3, 4).reshape(B, n, P * hp, D)

    def commit_ref(self, cache, branches: int) -> None:
        cache.commit_ref(branches)

    def forward_blocks(self, model, x_BNC, cos, sin, cache, layer_outputs=None, layers=None):
        """What ``model.forward_blocks`` returns in one process, [B, N, C], on every rank."""
        from .model.attention import BACKENDS
        B, N, C = x_BNC.shape
        P = self.world
        self.sizes = [N // P + (1 if i < N % P else 0) for i in range(P)]
        a = sum(self.sizes[:self.rank])
        n = self.sizes[self.rank]
        base = BACKENDS[model.attn_backend]

        def attn(q, k_all, v_all):
            return self.heads_to_tokens(base(self.tokens_to_heads(q), k_all, v_all))
        x = x_BNC[:, a:a + n].to(model.block_dtype)
        c, s = cos[a:a + n], sin[a:a + n]
        for i in (layers if layers is not None else range(len(model.layers))):
            x = model.layers[i](x, c, s, cache, i, attn)
            if layer_outputs is not None:
                layer_outputs.append(x)        # this rank's tokens
        m = max(self.sizes)
        pad = torch.zeros(B, m, C, dtype=x.dtype, device=x.device)
        pad[:, :n] = x
        parts = [torch.empty_like(pad) for _ in range(P)]
        self.dist.all_gather(parts, pad, group=self.group)
        return torch.cat([t[:, :k] for t, k in zip(parts, self.sizes)], dim=1)
