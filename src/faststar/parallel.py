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
cache holds the unconditional text prefix. Giving the idle rank sequence-parallel work instead needs ``sp``, which
is not built yet.

The layer outputs that observers ask for are the rank's own branch (rank 0: the conditional one, as golden records).
"""
from __future__ import annotations

import os

import torch

LAYOUTS = ("cfg",)
PLANNED = ("sp", "cfg+sp")


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
        raise ValueError(f"parallel={layout!r}: sequence parallelism is not built yet; choose one of {LAYOUTS}")
    if layout not in LAYOUTS:
        raise ValueError(f"unknown parallel layout {layout!r}; choose one of {LAYOUTS}")
    return GuidanceParallel(device=device)


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

    def check(self, batch: int) -> None:
        if batch != 2:
            raise ValueError("parallel='cfg' needs two guidance branches; this guidance is single-branch "
                             "(mode 'none' or scale 1)")

    def cache_rows(self, batch: int) -> int:
        return 1

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
