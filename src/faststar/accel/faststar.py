"""FastSTAR: spatiotemporal token pruning of the late scales, as docs/method (``method.md``) defines it.

Two halves, tomesd style:
- Pure scoring functions at module level (``channel_cosine``, ``scale_views``, ``spatial_similarity``,
  ``temporal_similarity``, ``normalize``, ``importance``, ``select_topk``, ``select_threshold``,
  ``select_stratified``, ``select_anchored``, ``keep_count``, ``resize_tokens``). They take tensors and know nothing
  about the loop, so they are unit tested on constructed canvases.
- ``FastSTAR(Accelerator)``: turns a ``FastSTARConfig`` into per-step plans. Which steps are prunable and how many
  tokens they keep is a pure function of the schedule (``budget``), shared with the FLOP prediction.

Importance of token i at a prunable step of scale k (the current clip's canvas before the step):
    x_k = down_k(canvas), u_k = up_k(down_{k-1}(canvas))                      (area down, trilinear up)
    S_sp(i) = cos(x_k(i), u_k(i))                           converged / flat -> 1, edges and texture lower
    S_tm(i) = cos(x_k(f, y, x), x_k(f-1, y, x))              ("prev_frame"; frame -1 = previous clip's last frame)
            or cos(x_k(f, y, x), ref_k(y, x))                ("prev_clip": the previous clip's last frame)
            or cos(x_k(f, y, x), x_k(f', y, x))              ("copy_source": f' the latest earlier frame kept at
                                                              (y, x); chosen frame by frame, select_copy_source)
    I(i) = w_sp * n(1 - S_sp(i)) + w_tm * n(1 - S_tm(i))    n = rank or divide-by-mean within the step, or
           [+ w_detail * n(D(i))]                           raw; D = local gradient energy of x_k (off by default)
The top ``ceil(rho * N)`` tokens by I run (shared by both guidance halves, indices sorted); in threshold mode, the
tokens with I above a bound (at most ``ceil(rho * N)``).
``update="partial"``: pruned positions get a zero code (the canvas keeps its value there);
``update="restore"``: pruned positions take the previous scale's last-block hidden states (its last repetition),
resized, and are sampled like the rest.
``update="copy"``: a pruned position takes the hidden states of the latest earlier frame of its (y, x) column
that ran in this step (the same scale; temporal redundancy used directly), restored as above where there is none.
``update="mean"``: restored like that, but a pruned position gets the mean code of its restored logits
((2 p - 1) / sqrt(d) per bit) instead of a sample: the value closest, in expected squared error, to what the dense
run would have drawn there; a sample from stale logits misses by twice the code whenever it disagrees.

Helpers shared with the baselines (``position_from_end``, ``detail_scale_count``, ``single_branch``,
``own_generator``, ``match_batch``) live here too.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F

from ..sampling import bit_means, guide
from ..schedule import Scale, Schedule, Step
from ..vae.quant import area_down
from .base import Accelerator, StepBudget, StepContext, StepOutput, StepPlan

SPATIAL_MODES = ("canvas", "hidden", "confidence", "hindsight", "off")
TEMPORAL_MODES = ("prev_frame", "prev_clip", "copy_source", "off")
SEQUENTIAL_TEMPORAL = ("copy_source",)   # scored frame by frame while the kept set is chosen (select_copy_source)
NORMS = ("rank", "mean", "raw")
UPDATES = ("partial", "restore", "mean", "copy")
RESTORING = ("restore", "mean", "copy")       # updates that give every pruned position hidden states
FILLS = ("zero", "restore", "mean")
SELECT_MODES = ("ratio", "threshold")
KEEP_REPS = ("first", "last")


# ------------------------------------------------------------------------------------------------------------
# pure scoring functions

def channel_cosine(a: torch.Tensor, b: torch.Tensor, dim: int = 1, eps: float = 1e-6) -> torch.Tensor:
    """Cosine similarity along ``dim``, of the two vectors each extended by one constant component sqrt(eps).

    (a.b + eps) / sqrt((|a|^2 + eps)(|b|^2 + eps)): two all-zero vectors compare as 1 (equal), a zero vector
    against a clearly non-zero one as ~0, and equal vectors as exactly 1. Computed in fp32; result in [-1, 1].
    """
    a, b = a.float(), b.float()
    dot = (a * b).sum(dim)
    na = a.pow(2).sum(dim) + eps
    nb = b.pow(2).sum(dim) + eps
    return ((dot + eps) * torch.rsqrt(na * nb)).clamp(-1.0, 1.0)


def scale_views(canvas_BCTHW: torch.Tensor, thw: tuple[int, int, int], prev_thw: tuple[int, int, int]
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_k, u_k): the canvas at scale k, and the canvas at scale k-1 brought back to k's grid (trilinear)."""
    x = area_down(canvas_BCTHW, thw)
    coarse = area_down(canvas_BCTHW, prev_thw)
    if tuple(coarse.shape[-3:]) == tuple(thw):
        return x, coarse
    u = F.interpolate(coarse.float(), size=tuple(thw), mode="trilinear", align_corners=False)
    return x, u


def spatial_similarity(x_BCthw: torch.Tensor, u_BCthw: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """S_sp per token [N] (t, h, w raster order): cos over channels of the fine and the upsampled coarse view."""
    return channel_cosine(x_BCthw, u_BCthw, dim=1, eps=eps)[0].flatten()


def last_frame_view(prev_canvas_BCTHW: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """The preceding clip's last latent frame area-resized to (h, w): [B, C, 1, h, w] in fp32 (the temporal
    reference of a clip's frame 0)."""
    return area_down(prev_canvas_BCTHW[:, :, -1:].float(), (1, *hw))


def temporal_similarity(x_BCthw: torch.Tensor, prev_canvas_BCTHW: torch.Tensor | None, mode: str = "prev_frame",
                        eps: float = 1e-6) -> torch.Tensor | None:
    """S_tm per token [N], or None when there is no preceding clip (clip 0) or the mode is "off".

    prev_frame: frame f against frame f-1 of the same view at the same (y, x); frame 0 against the preceding
    clip's last latent frame resized to (h, w). prev_clip: every frame against that resized last frame.
    """
    if mode not in TEMPORAL_MODES:
        raise ValueError(f"temporal must be one of {TEMPORAL_MODES}, got {mode!r}")
    if mode in ("off",) + SEQUENTIAL_TEMPORAL or prev_canvas_BCTHW is None:
        return None                      # copy_source depends on the kept set: select_copy_source scores it
    t, h, w = x_BCthw.shape[-3:]
    ref = last_frame_view(prev_canvas_BCTHW, (h, w)).to(x_BCthw.dtype)                   # [B, C, 1, h, w]
    if mode == "prev_clip":
        other = ref.expand_as(x_BCthw)
    else:
        other = torch.cat([ref, x_BCthw[:, :, :-1]], dim=2)
    return channel_cosine(x_BCthw, other, dim=1, eps=eps)[0].flatten()


def detail_energy(x_BCthw: torch.Tensor) -> torch.Tensor:
    """D per token [N] (t, h, w raster order): the squared local gradient of the view, summed over channels and
    over the forward differences in y and x (0 past the last row / column). Where the canvas has edges a wrong
    code changes the decoded video most: a proxy of the decoder's local gain."""
    x = x_BCthw[0].float()
    d = torch.zeros_like(x[0])
    d[:, :-1] += (x[:, :, 1:] - x[:, :, :-1]).pow(2).sum(0)
    d[:, :, :-1] += (x[:, :, :, 1:] - x[:, :, :, :-1]).pow(2).sum(0)
    return d.flatten()


def bit_confidence(logits_N2d: torch.Tensor) -> torch.Tensor:
    """Per token [N], how decided its bits are: the mean over bits of m^2, m = 2 p(1) - 1 (0 = every bit a coin
    flip, 1 = every bit certain). 1 - m^2 is the expected squared error, in units of 1/d, of a bit filled with its
    mean code when the distribution is right: the "confidence" spatial score ranks tokens by how little a
    coarse-scale prediction leaves to decide."""
    return bit_means(logits_N2d).pow(2).mean(-1)


def normalize(v: torch.Tensor, mode: str = "rank", eps: float = 1e-12) -> torch.Tensor:
    """Normalize one score term within a step so that term weights mean something.

    rank: average rank of each value (ties share a rank) scaled to [0, 1]; mean: v / mean(v) (mean 1); raw: v
    itself (1 - cosine lies in [0, 2]): a bound on it means the same on every step and video, what threshold
    mode needs to keep fewer tokens where a step has less left to do.
    """
    v = v.float()
    if mode == "raw":
        return v
    if mode == "mean":
        return v / v.mean().clamp_min(eps)
    if mode != "rank":
        raise ValueError(f"norm must be one of {NORMS}, got {mode!r}")
    n = v.numel()
    if n <= 1:
        return torch.zeros_like(v)
    sorted_v, order = torch.sort(v, stable=True)
    _, inverse, counts = torch.unique_consecutive(sorted_v, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).float() - 1.0
    avg = ends - (counts.float() - 1.0) / 2.0            # mean position of each group of equal values
    ranks = torch.empty_like(v)
    ranks[order] = avg[inverse]
    return ranks / (n - 1)


def importance(s_sp: torch.Tensor | None, s_tm: torch.Tensor | None, w_sp: float = 1.0, w_tm: float = 1.0,
               norm: str = "rank", detail: torch.Tensor | None = None, w_detail: float = 0.0) -> torch.Tensor:
    """I = w_sp * n(1 - S_sp) + w_tm * n(1 - S_tm) [+ w_detail * n(D)]; a missing term (None) contributes
    nothing. High = keep."""
    terms = [(1.0 - s.float(), w) for s, w in ((s_sp, w_sp), (s_tm, w_tm)) if s is not None and w != 0]
    if detail is not None and w_detail != 0:
        terms.append((detail.float(), w_detail))
    if not terms:
        raise ValueError("importance needs at least one score term with a non-zero weight")
    out = None
    for v, w in terms:
        t = w * normalize(v, norm)
        out = t if out is None else out + t
    return out


def select_anchored(score_N: torch.Tensor, n_keep: int, share: float, generator: torch.Generator) -> torch.Tensor:
    """n_keep indices: ``round(share * n_keep)`` of them uniformly at random (context spread over the whole step,
    whatever the score), the rest the highest-scoring of the others. Sorted ascending."""
    N = score_N.numel()
    n_a = min(n_keep, int(round(share * n_keep)))
    s = score_N.detach().float().clone()           # stays on its device: no copy of the scores to the host
    if n_a > 0:
        s[torch.randperm(N, generator=generator)[:n_a].to(s.device)] = float("inf")
    return select_topk(s, n_keep)


def keep_count(ratio: float, n: int) -> int:
    """ceil(ratio * n) clamped to [1, n] (ratio rounded to 1e-9 so that 0.3 * 10 keeps 3, not 4)."""
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"keep ratio must be in (0, 1], got {ratio}")
    return max(1, min(n, math.ceil(round(ratio * n, 9))))


def select_topk(score_N: torch.Tensor, n_keep: int) -> torch.Tensor:
    """Indices of the n_keep highest scores (ties: lower index first), sorted ascending (coalesced gathers)."""
    n = score_N.numel()
    if not 1 <= n_keep <= n:
        raise ValueError(f"n_keep must be in [1, {n}], got {n_keep}")
    order = torch.sort(score_N, descending=True, stable=True).indices[:n_keep]
    return torch.sort(order).values


def select_stratified(score_N: torch.Tensor, thw: tuple[int, int, int], n_keep: int, block: int) -> torch.Tensor:
    """n_keep indices spread over the grid: every (1 x block x block) tile of every frame keeps about the same share
    of its tokens, the highest-scoring ones of the tile (round-robin over tiles by within-tile rank, ties by score).
    Sorted ascending."""
    n = score_N.numel()
    t, h, w = thw
    if n != t * h * w:
        raise ValueError(f"{n} scores for a {thw} grid")
    if not 1 <= n_keep <= n:
        raise ValueError(f"n_keep must be in [1, {n}], got {n_keep}")
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    dev = score_N.device
    f = torch.arange(t, device=dev).view(t, 1, 1)
    y = torch.arange(h, device=dev).view(1, h, 1) // block
    x = torch.arange(w, device=dev).view(1, 1, w) // block
    nby, nbx = -(-h // block), -(-w // block)
    tile = ((f * nby + y) * nbx + x).flatten()                               # [N] tile id of each token
    by_score = torch.sort(score_N.float(), descending=True, stable=True).indices
    order = by_score[torch.sort(tile[by_score], stable=True).indices]       # grouped by tile, best first
    sizes = torch.bincount(tile, minlength=int(tile.max()) + 1)
    starts = torch.cumsum(sizes, 0) - sizes
    pos = torch.arange(n, device=dev) - starts[tile[order]]                  # rank within the tile
    frac = (pos.float() + 0.5) / sizes[tile[order]].float()                  # share of the tile kept so far
    pick = order[torch.sort(frac, stable=True).indices[:n_keep]]             # stable: ties keep score order
    return torch.sort(pick).values


def threshold_count(score_N: torch.Tensor, threshold: float, floor: float = 0.0, cap: float = 1.0) -> int:
    """How many tokens threshold mode keeps: those with score > threshold, at least ceil(floor * N) (at least 1)
    and at most ceil(cap * N)."""
    n = score_N.numel()
    lo = keep_count(floor, n) if floor > 0 else 1
    hi = keep_count(cap, n)
    return max(lo, min(hi, int((score_N > threshold).sum())))


def select_threshold(score_N: torch.Tensor, threshold: float, floor: float = 0.0, cap: float = 1.0
                     ) -> torch.Tensor:
    """Every token with score > threshold, at least ceil(floor * N) and at most ceil(cap * N) of them (the
    highest); sorted ascending."""
    return select_topk(score_N, threshold_count(score_N, threshold, floor, cap))


def temporal_copy_sources(keep: torch.Tensor, thw: tuple[int, int, int]) -> torch.Tensor:
    """For every token of a (t, h, w) grid [N]: the flat index of the latest kept token of its (y, x) column at
    a frame <= its own (itself when kept), or -1 when no frame up to its own is kept."""
    t, h, w = thw
    N = t * h * w
    flat = torch.full((N,), -1, dtype=torch.long, device=keep.device)
    flat[keep] = keep.long()
    return flat.view(t, h * w).cummax(0).values.flatten()


def select_copy_source(x_BCthw: torch.Tensor, ref_BC1hw: torch.Tensor | None, base_N: torch.Tensor | None,
                       n_keep: int, w_tm: float = 1.0, norm: str = "rank", eps: float = 1e-6, share: float = 0.0,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """The kept set of a step chosen frame by frame, with the temporal term measured against the frame a pruned
    token would be copied from (``update="copy"``). Sorted ascending.

    Frame f keeps its share of n_keep (split as evenly as the count allows). A token's importance is its
    ``base_N`` (the step's other terms, already weighted; None = none) plus ``w_tm`` times the normalized (within
    the frame) dissimilarity 1 - cos of its view to the view at the same (y, x) of its column's copy source: the
    latest earlier frame of this step where that column was kept. A column kept nowhere before has no source
    (dissimilarity 2, the most: a copy would fall back to restoring it); frame 0 compares with ``ref_BC1hw``,
    the preceding clip's last frame (None: no temporal term there). So a column that stays still is pruned as
    long as its source holds, and the frames take turns keeping the columns that nothing covers yet.
    ``share`` > 0 draws that share of each frame's kept tokens uniformly (as ``select_anchored``).
    """
    t, h, w = x_BCthw.shape[-3:]
    HW, N = h * w, t * h * w
    if not 1 <= n_keep <= N:
        raise ValueError(f"n_keep must be in [1, {N}], got {n_keep}")
    if base_N is not None and base_N.numel() != N:
        raise ValueError(f"base score has {base_N.numel()} tokens, the grid {(t, h, w)} has {N}")
    dev = x_BCthw.device
    xv = x_BCthw[0].float().reshape(x_BCthw.shape[1], t, HW)                      # [C, t, HW]
    counts = [n_keep // t + (1 if f < n_keep % t else 0) for f in range(t)]
    src = torch.full((HW,), -1, dtype=torch.long, device=dev)                     # copy source frame per column
    cols = torch.arange(HW, device=dev)
    kept = []
    for f in range(t):
        if counts[f] == 0:
            continue
        score = torch.zeros(HW, device=dev) if base_N is None else base_N[f * HW:(f + 1) * HW].float()
        if f == 0:
            sim = None if ref_BC1hw is None else channel_cosine(
                xv[:, 0], ref_BC1hw[0].float().reshape(-1, HW), dim=0, eps=eps)
        else:
            sim = channel_cosine(xv[:, f], xv[:, src.clamp_min(0), cols], dim=0, eps=eps)
            sim = torch.where(src >= 0, sim, torch.full_like(sim, -1.0))
        if sim is not None and w_tm != 0:
            score = score + w_tm * normalize(1.0 - sim, norm)
        if share > 0:
            if generator is None:
                raise ValueError("share > 0 draws tokens at random: pass a generator")
            keep_f = select_anchored(score, counts[f], share, generator)
        else:
            keep_f = select_topk(score, counts[f])
        src[keep_f] = f
        kept.append(keep_f + f * HW)
    return torch.sort(torch.cat(kept)).values


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

    def same(self, scale: Scale):
        """(thw, h_BNC) of ``scale`` itself (its last repetition that ran), or None."""
        return self._h.get((scale.clip, scale.index_in_clip))

    def fill(self, h_kept: torch.Tensor, keep: torch.Tensor, scale: Scale, mode: str,
             source=None) -> torch.Tensor:
        """[B, N, C]: the previous scale's states (or ``source`` = (thw, h_BNC)) resized to this scale's grid,
        computed states at ``keep``."""
        thw, h_prev = source if source is not None else self.previous(scale)
        full = match_batch(resize_tokens(h_prev, thw, scale.thw, mode), h_kept.shape[0])
        full = full.to(h_kept.dtype).clone()
        full[:, keep] = h_kept
        return full


def match_batch(h_BNC: torch.Tensor, batch: int) -> torch.Tensor:
    """Cached rows for a step with ``batch`` guidance rows: a single row is shared, extra rows are dropped."""
    if h_BNC.shape[0] == batch:
        return h_BNC
    if h_BNC.shape[0] == 1:
        return h_BNC.expand(batch, -1, -1)
    return h_BNC[:batch]


# ------------------------------------------------------------------------------------------------------------
# schedule helpers (pure ints), shared with the baselines

def position_from_end(schedule: Schedule, scale: Scale) -> int:
    """0 for the last scale of its clip, 1 for the one before, ..."""
    return len(schedule.clip_scales(scale.clip)) - 1 - scale.index_in_clip


def detail_scale_count(schedule: Schedule, clip: int) -> int:
    """Scales of the clip that use the detail head (64 bits): the default prunable set."""
    return sum(not s.semantic for s in schedule.clip_scales(clip))


def single_branch(schedule: Schedule, scale: Scale, last_n: int, clip0: bool = True) -> bool:
    """StageVAR-style guidance off: the last ``last_n`` scales of each clip (clip 0 too unless clip0=False)."""
    return last_n > 0 and (clip0 or scale.clip > 0) and position_from_end(schedule, scale) < last_n


def own_generator(seed: int, step: int, salt: int = 0) -> torch.Generator:
    """A CPU generator of the accelerator's own, keyed by (seed, step, salt): the sampler's stream is untouched."""
    g = torch.Generator(device="cpu")
    g.manual_seed((int(seed) * 2_654_435_761 + 97_531 * (int(step) + 1) + 1_000_003 * int(salt)) % (2 ** 63 - 1))
    return g


def _knob(v) -> float | tuple[float, ...]:
    """A per-scale knob as given: one float (every scale) or a tuple of floats (per scale from the last)."""
    if isinstance(v, (int, float)):
        return float(v)
    return tuple(float(x) for x in v)


def _values(v: float | tuple[float, ...]) -> tuple[float, ...]:
    """The values of a per-scale knob, as a tuple."""
    return (v,) if isinstance(v, float) else v


def _ratios(v) -> tuple[float, ...]:
    """Keep ratios listed per scale from the last (a single number: the last scale only)."""
    return _values(_knob(v))


def per_scale(value: float | tuple[float, ...], j: int, default: float) -> float:
    """A per-scale knob at position ``j`` from the clip's last scale: a float applies to every scale, a tuple lists
    (last, second last, ...) and ``default`` holds beyond it."""
    if isinstance(value, float):
        return value
    return value[j] if j < len(value) else default


def _check_ratios(name: str, ratios: tuple[float, ...] | float) -> None:
    for r in _values(ratios):
        if not 0.0 <= r <= 1.0:
            raise ValueError(f"{name} must hold keep ratios in [0, 1] (0 = the scale does not run), got {ratios}")


# ------------------------------------------------------------------------------------------------------------
# the accelerator

@dataclass
class FastSTARConfig:
    """FastSTAR knobs. ``keep_ratios`` is the one that matters; the rest have defaults to try first.

    keep_ratios: keep ratio per prunable scale, counted from the clip's LAST scale: (last, second last, ...);
        0 = that scale does not run (canvas unchanged there, as with skipping it).
        A float means the same ratio on every prunable scale; prunable scales beyond the tuple run dense.
        Lower = faster, less faithful. (Default = the "balanced" preset of presets.py.)
    mode: "ratio" (top ceil(rho*N)) or "threshold" (keep I > threshold, at least ``floor`` and at most
        min(rho, ``cap``) of N: a scale's keep ratio is then its cap, and 0 and 1 still mean that the scale does
        not run / runs dense, so ``mode="threshold"`` on a preset thresholds the scales the preset prunes). How
        many tokens run then depends on the step and the video; with norm="raw", fewer where the score is low
        everywhere (still, converged), up to the cap where it is not.
    threshold, floor, cap: threshold mode only. With norm="mean" each term has mean 1 within the step, so I has
        mean w_sp + w_tm; with norm="rank" each term lies in [0, 1]. FLOP predictions assume the cap; the
        accounting of a run (``stats``) counts the tokens that ran.
    last_k: how many of each clip's last scales are prunable; None = the detail (64-bit) scales, the default.
    prune_clip0: also prune clip 0 (the first frame). Off: it is a single frame, cheap, and every later clip
        starts from it.
    spatial: "canvas" (cos of the scale-k and scale-(k-1) canvas views), "hidden" (the same on the hidden
        states after ``probe_layer`` blocks, against the previous scale's, cached and resized; costs those blocks
        dense), "confidence" (convergence read from the previous scale's last-block hidden states resized to this
        grid and put through this scale's head: S = mean over bits of (2p - 1)^2, so tokens whose bits that
        coarse prediction leaves undecided rank first; costs the head on all tokens), "hindsight" (where restoring
        failed one scale earlier: at the previous scale, the bit means of its own logits against those of the
        scale before's hidden states resized to it, E(i) = mean over bits |m - m_restored|, resized to this grid;
        tokens whose restored bits would have been sampled differently rank first; costs the head twice on the
        previous scale's tokens), or "off".
    temporal: "prev_frame" (against the previous latent frame), "prev_clip" (against the preceding clip's last
        frame), "copy_source" (against the frame a pruned token would be copied from under ``update="copy"``:
        the kept set is chosen frame by frame, each frame keeping its share, see ``select_copy_source``; ratio
        mode only), or "off". Clip 0 never has a temporal term.
    w_sp, w_tm: weights of the two normalized terms.
    w_detail: weight of a third term, the local gradient energy of the scale's canvas view (``detail_energy``):
        where the canvas has edges, a wrong code changes the decoded frames most (0 = off, the default).
    norm: "rank" (robust, scale-free), "mean" (keeps relative magnitudes) or "raw" (the terms as they are, 1 - cosine
        in [0, 2]: with threshold mode, a bound that means the same on every step and video).
    update: "partial" (pruned positions get zero codes: Partial Update), "restore" (FastVAR-like: pruned
        positions take the previous scale's last-block hidden states (its last repetition), resized trilinearly;
        all positions are sampled) or "mean" (restored the same way; pruned positions get the mean code of their
        restored logits instead of a sample) or "copy" (a pruned position takes the hidden states of the latest
        earlier frame of its (y, x) column that ran in this step; restored where none did). A tuple gives one
        per prunable scale from the last, like ``keep_ratios`` (its last entry holds beyond it): ("partial",
        "restore") = Partial Update on the last scale, restore on the one before.
    skipped: what a prunable scale with keep ratio 0 adds to the canvas: "zero" (nothing, as skipping it), or
        every position restored from the previous scale's last-block hidden states like ``update="restore"``:
        "restore" (sampled with the step's position-keyed uniforms) or "mean" (the mean code). A filled step
        runs no block, only the head and guidance on the restored states.
    skipped_reps: the same for the repetitions that ``max_reps`` drops, restored from the scale's last
        repetition that ran.
    max_reps: > 0 runs at most this many repetitions of each prunable scale (0 = all of them).
    keep_reps: which repetitions ``max_reps`` keeps: "first" (reps 0 .. max_reps-1) or "last" (the final
        max_reps of the scale).
    rep_keep: > 0 runs the repetitions that ``max_reps`` drops on this fraction of their tokens instead of not at
        all, the most important ones by the step's score, with Partial Update (zero codes at the others: only the
        unsettled positions get the extra refinement). 0 = dropped (the default).
    probe_layer: blocks run on all tokens before scoring when spatial="hidden".
    eps: cosine epsilon (all-zero vectors compare equal).
    dense_ref_steps: a step that a later clip attends to runs dense (its K/V is the next clip's context);
        off: the next clip sees only the kept positions.
    single_branch_last: n > 0 also runs a single guidance branch (no CFG/APG) on the last n scales of each clip
        (the StageVAR combination); 0 = off.
    single_branch_clip0: the same for clip 0 (the first frame) alone; -1 = as ``single_branch_last``. Clip 0's
        last scales are a fixed cost of every plan (1.3 s of a 720p run on an H200), and image-to-video never runs
        them (clip 0 is the given image).
    reuse_guidance: on the single-branch steps, add the guidance correction (guided minus conditional logits)
        of the clip's last step that ran both branches, computed through this step's head on that step's cond
        and uncond last-block hidden states resized to this grid (APG over all positions, then this step's kept
        ones): guidance from cached states at the cost of a head, instead of none.
    block: ratio mode only; > 0 spreads the kept tokens: every block x block tile of every latent frame keeps about
        the same share, its most important tokens (0 = plain top-k over the whole step).
    proportional: proportional attention on pruned steps: each kept token's key counts N / n_kept times against
        the text and reference keys, so the step's own tokens keep the share of attention they have dense (off:
        the kept tokens see the context as if the step had only n_kept tokens).
    seed_offset: only used by the "random" control (its own generator).
    """
    keep_ratios: tuple[float, ...] | float = (0.3, 0.55, 0.8)
    mode: str = "ratio"
    threshold: float = 1.0
    floor: float = 0.1
    cap: float = 0.9
    last_k: int | None = None
    prune_clip0: bool = False
    spatial: str = "canvas"
    temporal: str = "prev_frame"
    w_sp: float = 1.0
    w_tm: float = 1.0
    w_detail: float = 0.0
    norm: str = "rank"
    update: str | tuple[str, ...] = "partial"
    probe_layer: int = 2
    eps: float = 1e-6
    dense_ref_steps: bool = False
    single_branch_last: int = 0
    single_branch_clip0: int = -1
    reuse_guidance: bool = False
    block: int = 0
    anchors: tuple[float, ...] | float = 0.0
    max_reps: int = 0
    skipped: str = "zero"
    skipped_reps: str = "zero"
    keep_reps: str = "first"
    rep_keep: float = 0.0
    proportional: bool = False
    seed_offset: int = 0

    def __post_init__(self):
        self.keep_ratios = _knob(self.keep_ratios)
        _check_ratios("keep_ratios", self.keep_ratios)
        self.anchors = _knob(self.anchors)
        for name in ("w_sp", "w_tm", "w_detail", "threshold", "floor", "cap"):
            setattr(self, name, float(getattr(self, name)))      # "w_detail=1" and 1.0 are the same config
        if not isinstance(self.update, str):
            self.update = tuple(self.update)
            if not self.update:
                raise ValueError("update: an empty tuple; give one of UPDATES, or one per scale from the last")
        for u in (self.update,) if isinstance(self.update, str) else self.update:
            if u not in UPDATES:
                raise ValueError(f"update must be one of {UPDATES} (or a tuple of them, per scale from the last), "
                                 f"got {self.update!r}")
        for name, val, ok in (("mode", self.mode, SELECT_MODES), ("spatial", self.spatial, SPATIAL_MODES),
                              ("temporal", self.temporal, TEMPORAL_MODES), ("norm", self.norm, NORMS),
                              ("skipped", self.skipped, FILLS),
                              ("skipped_reps", self.skipped_reps, FILLS)):
            if val not in ok:
                raise ValueError(f"{name} must be one of {ok}, got {val!r}")
        if not 0.0 < self.floor <= self.cap <= 1.0:
            raise ValueError(f"need 0 < floor <= cap <= 1, got floor={self.floor}, cap={self.cap}")
        if self.last_k is not None and self.last_k < 0:
            raise ValueError(f"last_k must be >= 0 or None, got {self.last_k}")
        if self.probe_layer < 1:
            raise ValueError(f"probe_layer must be >= 1, got {self.probe_layer}")
        if self.single_branch_last < 0:
            raise ValueError(f"single_branch_last must be >= 0, got {self.single_branch_last}")
        if self.single_branch_clip0 < -1:
            raise ValueError(f"single_branch_clip0 must be >= 0, or -1 (= single_branch_last), got "
                             f"{self.single_branch_clip0}")
        if self.block < 0:
            raise ValueError(f"block must be >= 0 (0 = plain top-k), got {self.block}")
        shares = _values(self.anchors)
        if not all(0.0 <= a <= 1.0 for a in shares):
            raise ValueError(f"anchors must be in [0, 1] (share of kept tokens drawn at random), got {self.anchors}")
        if self.temporal in SEQUENTIAL_TEMPORAL and (self.mode != "ratio" or self.block > 0):
            raise ValueError(f"temporal={self.temporal!r} chooses the kept set frame by frame: it needs mode='ratio' "
                             f"and block=0 (got mode={self.mode!r}, block={self.block})")
        if any(a > 0 for a in shares) and self.block > 0:
            raise ValueError("anchors and block are two ways to spread the kept tokens: set one of them")
        if self.max_reps < 0:
            raise ValueError(f"max_reps must be >= 0 (0 = every repetition), got {self.max_reps}")
        if self.keep_reps not in KEEP_REPS:
            raise ValueError(f"keep_reps must be one of {KEEP_REPS}, got {self.keep_reps!r}")
        self.rep_keep = float(self.rep_keep)
        if not 0.0 <= self.rep_keep <= 1.0:
            raise ValueError(f"rep_keep must be in [0, 1], got {self.rep_keep}")
        if self.rep_keep > 0 and (self.max_reps == 0 or self.mode != "ratio"):
            raise ValueError("rep_keep runs the repetitions that max_reps drops on part of their tokens: it needs "
                             f"max_reps > 0 and mode='ratio' (got max_reps={self.max_reps}, mode={self.mode!r})")


class FastSTAR(Accelerator):
    """Spatiotemporal token pruning on the last scales of each video clip (see the module docstring)."""

    name = "faststar"
    config_class = FastSTARConfig

    def __init__(self, config: FastSTARConfig | None = None, **overrides):
        cfg = config if config is not None else self.config_class()
        if overrides:
            cfg = replace(cfg, **overrides)
        self._validate(cfg)
        self.cfg = cfg
        self.preset: str | None = None
        self.depth: int | None = None
        self._probe: dict = {}         # (clip, index_in_clip) -> hidden after probe_layer blocks, all tokens
        self._prev = PrevScaleHidden()  # previous scale's full last-block hidden (restore)
        self._guided = None             # (clip, thw, h [2, N, C]) of the clip's last step that ran both branches
        self._resized = None            # (step index, (thw, h)): previous-scale states resized by this step's score
        self._hindsight: dict = {}      # (clip, index_in_clip) -> (thw, E [N]): restore error measured there

    def _validate(self, cfg):
        if cfg.spatial == "off" and cfg.temporal == "off":
            raise ValueError("spatial and temporal are both 'off': nothing to score (the 'random' method is the "
                             "unscored control)")

    # -- state ----------------------------------------------------------------------------------------------
    def setup(self, model_cfg) -> None:
        """Bind to a model's shape (also used by the FLOP prediction, which has no model)."""
        self.depth = model_cfg.depth
        if self.cfg.spatial == "hidden" and self.cfg.probe_layer >= self.depth:
            raise ValueError(f"probe_layer {self.cfg.probe_layer} must be below the model depth {self.depth}")

    def reset(self, schedule: Schedule, model, seed: int) -> None:
        self.setup(model.cfg)
        self._probe = {}
        self._prev.clear()
        self._guided = None
        self._resized = None
        self._hindsight = {}

    def describe(self) -> dict:
        return {"method": self.name, "preset": self.preset, **asdict(self.cfg)}

    # -- what runs where (pure schedule logic, shared by plan and budget) -------------------------------------
    def keep_ratio(self, schedule: Schedule, step: Step) -> float | None:
        """Keep ratio of a prunable step (threshold mode: the cap; a dropped repetition run in part: rep_keep),
        or None if the step is not prunable."""
        rho = self._scale_ratio(schedule, step.scale)
        if rho and self._partial_rep(schedule, step):
            return self.cfg.rep_keep
        return rho

    def _scale_ratio(self, schedule: Schedule, s: Scale) -> float | None:
        """Keep ratio of a prunable scale (threshold mode: the cap), or None if the scale is not prunable."""
        c = self.cfg
        if s.clip == 0 and not c.prune_clip0:
            return None
        k = c.last_k if c.last_k is not None else detail_scale_count(schedule, s.clip)
        j = position_from_end(schedule, s)
        if j >= k:
            return None
        rho = per_scale(c.keep_ratios, j, 1.0)
        if c.mode == "threshold" and 0.0 < rho < 1.0:
            return min(rho, c.cap)             # the scale's cap (0: the scale does not run; 1: it runs dense)
        return rho

    def update_at(self, schedule: Schedule, step: Step) -> str:
        """The update rule (one of UPDATES) of a pruned step: ``update`` itself, or its entry for the scale's
        position from the clip's end (the last entry beyond the tuple). A dropped repetition run in part
        (``rep_keep``) refines only its kept positions: Partial Update, whatever ``update`` says."""
        if self._partial_rep(schedule, step):
            return "partial"
        u = self.cfg.update
        if isinstance(u, str):
            return u
        return u[min(position_from_end(schedule, step.scale), len(u) - 1)]

    def _scored(self, clip: int) -> bool:
        """Whether a score exists on this clip (clip 0 has no temporal term)."""
        return self.cfg.spatial != "off" or (self.cfg.temporal != "off" and clip > 0)

    def _pruned_tokens(self, schedule: Schedule, step: Step) -> int | None:
        """Tokens kept at a pruned step (threshold mode: the cap), or None when the step runs dense."""
        c = self.cfg
        rho = self.keep_ratio(schedule, step)
        if rho is None or rho >= 1.0 or rho == 0.0 or not self._scored(step.scale.clip):
            return None                        # dense, or (ratio 0) not run at all: see _skipped
        if c.dense_ref_steps and schedule.is_ref_step(step):
            return None
        N = step.scale.num_tokens
        n = keep_count(rho, N)
        return n if (n < N or c.mode == "threshold") else None   # threshold mode: n is only the cap

    def _uses_probe(self) -> bool:
        return self.cfg.spatial == "hidden"

    def _runs_reps(self, schedule: Schedule, scale: Scale) -> int:
        """How many repetitions of ``scale`` run in full (``max_reps`` on prunable scales; a scale with a
        referenced step runs them all)."""
        r = self.cfg.max_reps
        if r <= 0 or r >= scale.reps or self._scale_ratio(schedule, scale) is None:
            return scale.reps
        if any(schedule.is_ref_step(schedule.steps[scale.first_step + i]) for i in range(scale.reps)):
            return scale.reps
        return r

    def _rep_dropped(self, schedule: Schedule, step: Step) -> bool:
        """A repetition that ``max_reps`` does not run in full (``keep_reps`` says which ones it keeps)."""
        reps, r = step.scale.reps, self._runs_reps(schedule, step.scale)
        if r >= reps:
            return False
        return step.rep >= r if self.cfg.keep_reps == "first" else step.rep < reps - r

    def _partial_rep(self, schedule: Schedule, step: Step) -> bool:
        """A dropped repetition that runs on ``rep_keep`` of its tokens (Partial Update) instead of not at all."""
        return self.cfg.rep_keep > 0 and self._rep_dropped(schedule, step)

    def _fill_mode(self, schedule: Schedule, step: Step) -> tuple[str, str] | None:
        """For a step that does not run its blocks (keep ratio 0, or a repetition beyond ``max_reps``): (fill,
        source), fill one of FILLS, source "previous" (the scale before) or "same" (this scale's last repetition
        that produced hidden states). None for a step that runs. A ratio-0 scale's first repetition follows
        ``skipped``, its later ones ``skipped_reps``."""
        c = self.cfg
        if self.keep_ratio(schedule, step) == 0.0:
            return (c.skipped, "previous") if step.rep == 0 else (c.skipped_reps, "same")
        if self.cfg.rep_keep == 0 and self._rep_dropped(schedule, step):
            return (c.skipped_reps, "same")
        return None

    def _skipped(self, schedule: Schedule, step: Step) -> bool:
        """Keep ratio 0, or a repetition beyond ``max_reps``: no block runs (zero codes everywhere unless the
        step is filled from cached hidden states, see ``skipped``)."""
        return self._fill_mode(schedule, step) is not None

    def _filled(self, schedule: Schedule, step: Step) -> bool:
        """A skipped step that gets restored codes (a step a later clip attends to is never filled: it runs)."""
        f = self._fill_mode(schedule, step)
        return f is not None and f[0] != "zero" and not schedule.is_ref_step(step)

    def budget(self, schedule: Schedule, step: Step) -> StepBudget:
        c = self.cfg
        n_sb = c.single_branch_clip0 if (step.scale.clip == 0 and c.single_branch_clip0 >= 0) else c.single_branch_last
        br = 1 if single_branch(schedule, step.scale, n_sb) else 2
        if self._skipped(schedule, step):
            # a filled step runs no block (tokens 0): only the head and guidance on restored states
            return StepBudget(True, br, 0, 0) if self._filled(schedule, step) else StepBudget(run=False)
        n = self._pruned_tokens(schedule, step)
        if n is None:
            return StepBudget(True, br, None, 0)
        return StepBudget(True, br, n, self.cfg.probe_layer if self._uses_probe() else 0)

    def _next_scale_pruned(self, schedule: Schedule, step: Step) -> bool:
        """The next scale of the clip is pruned: this scale's probe hidden states are its reference."""
        s = step.scale
        if s.index_in_clip + 1 >= len(schedule.clip_scales(s.clip)):
            return False
        nxt = schedule.scales[s.index + 1]
        return self._pruned_tokens(schedule, schedule.steps[nxt.first_step]) is not None

    def _hidden_needed_after(self, schedule: Schedule, step: Step) -> bool:
        """A later step restores from, or scores with, this step's last-block hidden states: the next repetition
        is filled from it, or the next scale is filled from it, pruned with restore, or scored by confidence."""
        c, s = self.cfg, step.scale
        if step.rep + 1 < s.reps and self._filled(schedule, schedule.steps[s.first_step + step.rep + 1]):
            return True
        n_clip = len(schedule.clip_scales(s.clip))
        if c.spatial == "hindsight" and any(
                s.index_in_clip + a < n_clip
                and self._pruned_tokens(schedule, schedule.steps[schedule.scales[s.index + a].first_step]) is not None
                for a in (1, 2)):
            return True                        # the restore error of the next scale is measured against this one
        if s.index_in_clip + 1 >= n_clip:
            return False
        nxt = schedule.steps[schedule.scales[s.index + 1].first_step]
        if self._skipped(schedule, nxt):
            return self._filled(schedule, nxt) and self._fill_mode(schedule, nxt)[1] == "previous"
        nxt_restores = self.update_at(schedule, nxt) in RESTORING
        return self._next_scale_pruned(schedule, step) and (nxt_restores or c.spatial == "confidence")

    # -- plan -----------------------------------------------------------------------------------------------
    def plan(self, ctx: StepContext) -> StepPlan:
        p = self._plan(ctx)
        if self.cfg.reuse_guidance and p.run and p.branches == 1:
            src = self._guided
            if src is not None and src[0] == ctx.scale.clip:
                p.guidance_delta = self._guidance_delta
                p.info["guidance"] = "reused"
            else:
                p.info["guidance"] = "none: no earlier step of the clip ran both branches"
        return p

    def _guidance_delta(self, ctx: StepContext, g) -> torch.Tensor:
        """guided - cond logits of the cached two-branch hidden states, resized to this grid, through its head."""
        _, thw, h = self._guided
        s = ctx.scale
        lg = ctx.model.logits(resize_tokens(h, thw, s.thw, "trilinear"), s.bits)     # [2, N, 2d]
        return guide(lg[0], lg[1], s.tau, g) - lg[0] * (1.0 / s.tau)

    def _plan(self, ctx: StepContext) -> StepPlan:
        c, st, sch = self.cfg, ctx.step, ctx.schedule
        b = self.budget(sch, st)
        if not b.run:
            return StepPlan(run=False, info=dict(keep_ratio=0.0, n_keep=0))
        if b.tokens == 0:
            return self._fill_plan(ctx, b)
        if b.tokens is None:
            if self._uses_probe() and self._next_scale_pruned(sch, st):
                return StepPlan(branches=b.branches, prune_layer=c.probe_layer, select=self._capture)
            return StepPlan(branches=b.branches)
        rho = self.keep_ratio(sch, st)
        info = dict(keep_ratio=rho, n_keep=b.tokens)
        restore, update = None, self.update_at(sch, st)
        info["update"] = update
        if update in RESTORING:
            if self._prev.previous(st.scale) is not None:
                restore = self._copy if update == "copy" else self._restore
            else:
                info["restore_fallback"] = "no previous-scale hidden states: partial update"
        codes = "mean" if update == "mean" else "sample"
        if self._uses_probe():
            def select(h_BNC, ctx_, _info=info):
                return self._select(ctx_, h_BNC, _info)
            return StepPlan(branches=b.branches, prune_layer=c.probe_layer, select=select, restore=restore,
                            restored_codes=codes, proportional=c.proportional, info=info)
        keep = self._select(ctx, None, info)
        return StepPlan(keep_idx=keep, branches=b.branches, restore=restore, restored_codes=codes,
                        proportional=c.proportional, info=info)

    def _fill_plan(self, ctx: StepContext, b: StepBudget) -> StepPlan:
        """A skipped step filled from cached hidden states: no token runs the blocks, every position is restored."""
        fill, source = self._fill_mode(ctx.schedule, ctx.step)
        src = self._prev.previous(ctx.scale) if source == "previous" else self._prev.same(ctx.scale)
        info = dict(keep_ratio=0.0, n_keep=0)
        if src is None:
            info["fill_fallback"] = "no hidden states to restore from: zero codes"
            return StepPlan(run=False, info=info)
        info["filled"] = fill

        def restore(h_kept, keep, ctx_, _src=src):
            return self._prev.fill(h_kept, keep, ctx_.scale, "trilinear", source=_src)
        return StepPlan(keep_idx=torch.zeros(0, dtype=torch.long, device=ctx.canvas.device), branches=b.branches,
                        restore=restore, restored_codes="mean" if fill == "mean" else "sample", info=info)

    # -- scoring and selection ------------------------------------------------------------------------------
    def _prev_thw(self, ctx: StepContext) -> tuple[int, int, int]:
        s = ctx.scale
        if s.index_in_clip == 0:
            return (s.thw[0], 1, 1)
        return ctx.schedule.scales[s.index - 1].thw

    def _importance(self, ctx: StepContext, h_BNC: torch.Tensor | None, info: dict) -> torch.Tensor:
        c, s = self.cfg, ctx.scale
        s_sp = None
        if c.spatial == "confidence":
            prev = self._prev.previous(s)
            if prev is not None:
                # the restore of this step needs every row resized: do it once and hand it over
                restores = self.update_at(ctx.schedule, ctx.step) in RESTORING
                rows = prev[1] if restores else prev[1][:1]
                g = resize_tokens(rows, prev[0], s.thw, "trilinear")
                self._resized = (ctx.step.index, (s.thw, g))
                s_sp = bit_confidence(ctx.model.logits(g[:1], s.bits)[0])
            else:
                info["spatial_fallback"] = "no previous-scale hidden states: canvas score"
        elif c.spatial == "hindsight":
            hs = self._hindsight.get((s.clip, s.index_in_clip - 1))
            if hs is not None:
                err = F.interpolate(hs[1].view(1, 1, *hs[0]), size=tuple(s.thw), mode="trilinear",
                                    align_corners=False).flatten()
                s_sp = 1.0 - err               # importance ranks 1 - S_sp = the expected restore error
            else:
                info["spatial_fallback"] = "no restore error measured at the previous scale: canvas score"
        elif c.spatial == "hidden" and h_BNC is not None:
            prev = self._probe.get((s.clip, s.index_in_clip - 1))
            if prev is not None:
                g = resize_tokens(prev[1][:1], prev[0], s.thw, "trilinear")[0]
                s_sp = channel_cosine(h_BNC[0], g, dim=-1, eps=c.eps)
            else:
                info["spatial_fallback"] = "no previous-scale hidden states: canvas score"
        if c.spatial != "off" and s_sp is None:
            x, u = scale_views(ctx.canvas, s.thw, self._prev_thw(ctx))
            s_sp = spatial_similarity(x, u, c.eps)
        s_tm = temporal_similarity(ctx.x_view, ctx.prev_clip_canvas, c.temporal, c.eps)
        if s_sp is not None:
            info["s_sp_mean"] = float(s_sp.mean())
        if s_tm is not None:
            info["s_tm_mean"] = float(s_tm.mean())
        dt = None
        if c.w_detail:
            dt = detail_energy(area_down(ctx.canvas, s.thw))
            info["detail_mean"] = float(dt.mean())
        return importance(s_sp, s_tm, c.w_sp, c.w_tm, c.norm, dt, c.w_detail)

    def _select(self, ctx: StepContext, h_BNC: torch.Tensor | None, info: dict) -> torch.Tensor | None:
        c, s = self.cfg, ctx.scale
        if h_BNC is not None:
            self._store_probe(s, h_BNC)
        share = per_scale(c.anchors, position_from_end(ctx.schedule, s), 0.0)
        gen = own_generator(ctx.seed, ctx.step.index, salt=2) if share > 0 else None
        N = ctx.num_tokens
        if c.temporal in SEQUENTIAL_TEMPORAL and s.clip > 0:
            # the temporal term depends on the kept set: scored frame by frame while it is chosen
            scored = (c.spatial != "off" and c.w_sp != 0) or c.w_detail != 0
            score = self._importance(ctx, h_BNC, info) if scored else None
            ref = None if ctx.prev_clip_canvas is None else last_frame_view(ctx.prev_clip_canvas, s.thw[1:])
            keep = select_copy_source(ctx.x_view, ref, score, info["n_keep"], c.w_tm, c.norm, c.eps, share, gen)
        else:
            keep = self._select_scored(self._importance(ctx, h_BNC, info), s, share, gen, info)
        info["kept_fraction"] = keep.numel() / N
        if keep.numel() >= N:
            return None
        return keep.to(ctx.canvas.device)

    def _select_scored(self, score: torch.Tensor, s: Scale, share: float, gen, info: dict) -> torch.Tensor:
        """The kept set from a whole-step score: spread over tiles, anchored, top-k, or threshold mode."""
        c = self.cfg
        if c.mode == "ratio" and c.block > 0:
            keep = select_stratified(score, s.thw, info["n_keep"], c.block)
        elif c.mode == "ratio" and share > 0:
            keep = select_anchored(score, info["n_keep"], share, gen)
        elif c.mode == "ratio":
            keep = select_topk(score, info["n_keep"])
        else:
            info["n_keep"] = self._threshold_count(score, info)
            keep = select_topk(score, info["n_keep"])
        return keep

    def _threshold_count(self, score: torch.Tensor, info: dict) -> int:
        """Threshold mode: how many tokens of the step pass the bound, between the floor and the step's cap."""
        rho = info["keep_ratio"]
        return threshold_count(score, self.cfg.threshold, min(self.cfg.floor, rho), rho)

    def _store_probe(self, scale: Scale, h_BNC: torch.Tensor) -> None:
        key = (scale.clip, scale.index_in_clip)
        for k in [k for k in self._probe if k[0] != scale.clip or k[1] < scale.index_in_clip - 1]:
            del self._probe[k]
        self._probe[key] = (scale.thw, h_BNC)

    def _capture(self, h_BNC: torch.Tensor, ctx: StepContext):
        self._store_probe(ctx.scale, h_BNC)
        return None

    # -- restore --------------------------------------------------------------------------------------------
    def _copy(self, h_kept: torch.Tensor, keep: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        """update="copy": a pruned position takes the hidden states of the latest earlier frame of its (y, x)
        column that ran in this step (computed at this scale, with this step's context); a position with no
        earlier kept frame is restored from the previous scale."""
        full = self._restore(h_kept, keep, ctx)
        src = temporal_copy_sources(keep, ctx.scale.thw)
        take = src >= 0
        take[keep] = False
        if bool(take.any()):
            full[:, take] = full[:, src[take]]
        return full

    def _restore(self, h_kept: torch.Tensor, keep: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        cached = self._resized
        src = cached[1] if cached is not None and cached[0] == ctx.step.index else None   # resized by the score
        return self._prev.fill(h_kept, keep, ctx.scale, "trilinear", source=src)

    def observe(self, ctx: StepContext, out: StepOutput) -> None:
        h = out.hidden
        if h is None or h.shape[1] != ctx.num_tokens:
            return
        if (self.cfg.reuse_guidance and h.shape[0] == 2
                and max(self.cfg.single_branch_last, self.cfg.single_branch_clip0) > 0):
            self._guided = (ctx.scale.clip, ctx.scale.thw, h)
        # keep the full last-block hidden states of the last step of a scale that produced them (ran or was
        # filled), when a later step restores from or scores with them
        if self._hidden_needed_after(ctx.schedule, ctx.step):
            if self.cfg.spatial == "hindsight" and self._next_scale_pruned(ctx.schedule, ctx.step):
                self._measure_restore_error(ctx, h)
            self._prev.put(ctx.scale, h)

    def _measure_restore_error(self, ctx: StepContext, h_BNC: torch.Tensor) -> None:
        """E(i) at this scale: how differently its bits would have been drawn from the previous scale's hidden
        states resized here (what a restored position gets) than from its own (conditional branch)."""
        s, prev = ctx.scale, self._prev.previous(ctx.scale)
        self._hindsight = {k: v for k, v in self._hindsight.items()
                           if k[0] == s.clip and s.index_in_clip - 1 <= k[1] < s.index_in_clip}
        if prev is None:
            return
        restored = resize_tokens(prev[1][:1], prev[0], s.thw, "trilinear")
        m_own = bit_means(ctx.model.logits(h_BNC[:1], s.bits)[0])
        m_res = bit_means(ctx.model.logits(restored, s.bits)[0])
        self._hindsight[(s.clip, s.index_in_clip)] = (s.thw, (m_own - m_res).abs().mean(-1))


class RandomPrune(FastSTAR):
    """The control: a uniformly random kept subset at FastSTAR's ratios (same update, same schedule), drawn from
    the accelerator's own generator keyed by (seed + seed_offset, step), so the sampler's stream is unchanged.

    In threshold mode the control keeps, at every step, as many tokens as FastSTAR's threshold would there (it
    computes FastSTAR's score for the count alone) and draws that many uniformly: same tokens run, same FLOPs,
    only the choice of which differs."""

    name = "random"

    def __init__(self, config: FastSTARConfig | None = None, **overrides):
        super().__init__(config, **overrides)
        if self.cfg.mode == "ratio":
            self.cfg = replace(self.cfg, spatial="off", temporal="off")   # no score: not used, no probe blocks

    def _validate(self, cfg):
        if cfg.mode == "threshold":
            super()._validate(cfg)            # the count of each step comes from FastSTAR's score

    def _scored(self, clip: int) -> bool:
        return True if self.cfg.mode == "ratio" else super()._scored(clip)

    def _importance(self, ctx: StepContext, h_BNC, info: dict) -> torch.Tensor:
        if self.cfg.mode == "threshold":
            info["n_keep"] = self._threshold_count(super()._importance(ctx, h_BNC, info), info)
        g = own_generator(ctx.seed + self.cfg.seed_offset, ctx.step.index, salt=1)
        return torch.rand(ctx.num_tokens, generator=g).to(ctx.canvas.device)

    def _select_scored(self, score: torch.Tensor, s: Scale, share: float, gen, info: dict) -> torch.Tensor:
        if self.cfg.mode == "threshold":
            return select_topk(score, info["n_keep"])      # FastSTAR's count, drawn uniformly
        return super()._select_scored(score, s, share, gen, info)
