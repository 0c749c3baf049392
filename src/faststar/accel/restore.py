"""Hidden states for the positions a step did not run, shared by FastSTAR, FastVAR and StageVAR.

A pruned step runs its kept tokens through the blocks; a restoring method hands the loop, in its plan, the hidden
states of every position (``StepPlan.fill``: the previous scale's cached last-block states resized to this grid,
or FastVAR's own) and the loop puts the computed ones over it (``restore_hidden``). Logits and codes are then
produced for all positions.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..schedule import Scale


def resize_tokens(h_BNC: torch.Tensor, thw_from: tuple[int, int, int], thw_to: tuple[int, int, int],
                  mode: str = "trilinear") -> torch.Tensor:
    """Hidden states of a (t, h, w) token grid resized to another grid: [B, N_from, C] -> [B, N_to, C].

    Interpolates in fp32 one batch row at a time (peak memory), returns the input dtype. mode: "trilinear"
    (align_corners False) or "area" (FastVAR's choice; for upsampling it repeats values) or "nearest-exact".
    """
    B, N, C = h_BNC.shape
    if N != math.prod(thw_from):
        raise ValueError(f"hidden has {N} tokens, grid {tuple(thw_from)} has {math.prod(thw_from)}")
    if tuple(thw_from) == tuple(thw_to):
        return h_BNC
    kw = dict(align_corners=False) if mode == "trilinear" else {}
    rows = []
    for b in range(B):
        x = h_BNC[b].float().T.reshape(1, C, *thw_from)
        x = F.interpolate(x, size=tuple(thw_to), mode=mode, **kw)
        rows.append(x.reshape(C, -1).T.to(h_BNC.dtype))
    return torch.stack(rows)


def match_batch(h_BNC: torch.Tensor, batch: int) -> torch.Tensor:
    """Cached rows for a step with ``batch`` guidance rows: a single row is shared, extra rows are dropped."""
    if h_BNC.shape[0] == batch:
        return h_BNC
    if h_BNC.shape[0] == 1:
        return h_BNC.expand(batch, -1, -1)
    return h_BNC[:batch]


def temporal_copy_sources(keep: torch.Tensor, thw: tuple[int, int, int]) -> torch.Tensor:
    """For every token of a (t, h, w) grid [N]: the flat index of the latest kept token of its (y, x) column at
    a frame <= its own (itself when kept), or -1 when no frame up to its own is kept."""
    t, h, w = thw
    flat = torch.full((t * h * w,), -1, dtype=torch.long, device=keep.device)
    flat[keep] = keep.long()
    return flat.view(t, h * w).cummax(0).values.flatten()


def restore_hidden(h_kept: torch.Tensor, keep: torch.Tensor, fill: torch.Tensor,
                   copy_from: torch.Tensor | None = None) -> torch.Tensor:
    """[B, N, C]: ``fill`` (one row shared, or one per guidance row) with the computed states at ``keep``; with
    ``copy_from`` (``temporal_copy_sources``), a pruned position whose column ran at an earlier frame of this step
    takes that position's computed states instead."""
    full = match_batch(fill, h_kept.shape[0]).to(h_kept.dtype).clone()
    full[:, keep] = h_kept
    if copy_from is not None:
        take = copy_from >= 0
        take[keep] = False
        if bool(take.any()):
            full[:, take] = full[:, copy_from[take]]
    return full


class PrevScaleHidden:
    """Full last-block hidden states of a clip's scales (their last repetition), kept only as long as the next
    scale may need them: what a restored step fills its pruned positions from."""

    def __init__(self):
        self._h: dict = {}        # (clip, index_in_clip) -> (thw, h_BNC)

    def clear(self) -> None:
        self._h = {}

    def put(self, scale: Scale, h_BNC: torch.Tensor) -> None:
        self._h = {k: v for k, v in self._h.items() if k[0] == scale.clip and k[1] >= scale.index_in_clip - 1}
        self._h[(scale.clip, scale.index_in_clip)] = (scale.thw, h_BNC)

    def previous(self, scale: Scale):
        """(thw, h_BNC) of the scale before ``scale`` in its clip, or None."""
        return self._h.get((scale.clip, scale.index_in_clip - 1))

    def resized(self, scale: Scale, mode: str) -> torch.Tensor | None:
        """The previous scale's states resized to ``scale``'s grid [B, N, C] (a ``StepPlan.fill``), or None."""
        prev = self.previous(scale)
        return None if prev is None else resize_tokens(prev[1], prev[0], scale.thw, mode)
