"""The generation loop: the only loop over clips, scales and repetitions.

For each step of the schedule: take the clip canvas' view at the scale, embed it, ask the accelerator for a plan,
run the blocks (on the kept tokens), compute logits (fp32), temperature and guidance, sample bits with uniforms
keyed by token position, lift the codes (zero where pruned: Partial Update) onto the canvas. The last repetition
of a scale that a later clip references commits its K/V as that clip's context. Teacher-forced steps take their
bits from the caller (image-to-video, video continuation, reference checks).

What watches the loop is outside it: ``callback`` (a ``StepInfo`` after every step; returning True stops) and
observers (``StepObserver``: golden recording, per-step device timing, progress bars).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from .accel.base import DENSE, Accelerator, StepContext, StepOutput, StepPlan, step_mode
from .accel.restore import restore_hidden
from .model.rope import rope_cos_sin, text_positions, visual_positions
from .model.transformer import STARTransformer
from .sampling import GuidanceConfig, guide, nonfinite, sample_bits, step_uniforms
from .schedule import Schedule, Step, step_cost
from .vae.quant import area_down, bits_to_codes, lift_codes


@dataclass
class GenerationOutput:
    latent: torch.Tensor                       # summed codes of all clips [1, 64, T, H, W] (fp32); if stopped:
                                               # the finished clips and the current clip's canvas so far
    bits: list                                 # per step: uint8 [t, h, w, d] (0 where pruned) or None if skipped
    masks: list                                # per step: bool [t, h, w] kept mask, or None for dense steps
    stats: list = field(default_factory=list)  # per step accounting
    text_time_s: float = 0.0
    total_time_s: float = 0.0
    stopped_at: int | None = None              # the step after which a callback stopped the loop; None = ran out

    def summary(self) -> dict:
        dense = sum(s["flops_dense"] for s in self.stats)
        run = sum(s["flops"] for s in self.stats)
        return dict(steps=len(self.stats), tokens_dense=sum(s["tokens"] * s["dense_branches"] for s in self.stats),
                    tokens_run=sum(s["tokens_run"] * s["branches"] for s in self.stats),
                    flops_dense=dense, flops=run, flop_speedup=dense / max(run, 1.0),
                    transformer_time_s=self.total_time_s)


@dataclass
class StepInfo:
    """What a ``callback`` sees after every step."""
    step: int                                  # index in schedule.steps
    num_steps: int
    clip: int
    num_clips: int
    scale: int                                 # index of the scale within its clip
    num_scales: int                            # scales in this clip
    rep: int
    canvas: torch.Tensor                       # the current clip's canvas after this step [1, 64, t, H, W]; read-only
    clip_canvases: list                        # final canvases of the clips before this one (so far: these + canvas)
    elapsed_s: float                           # since the loop started
    tokens: int                                # tokens of the step
    tokens_run: int                            # tokens that ran the blocks (0: the step did not run)


class StepObserver:
    """Watches the loop without changing it. Override what you need."""

    every_forward = False                      # True: teacher-forced steps that nothing reads still run
    layer_steps: frozenset = frozenset()       # steps whose per-layer outputs ``on_forward`` gets

    def on_text(self, prefix: torch.Tensor, layer_outputs: list | None) -> None:
        """After the text pass: the prefix tokens [B, L, C] and (if ``every_forward``) each block's output."""

    def before_step(self, st: Step) -> None:
        pass

    def on_forward(self, st: Step, tokens, logits, guided, pos, layer_outputs) -> None:
        """After a step's forward: input tokens [N, C], logits [B, n, 2d], guided logits, RoPE positions."""

    def step_done(self, st: Step, canvas: torch.Tensor) -> None:
        """The step's canvas update is issued (before its stats row is written)."""

    def finish(self, stats: list) -> None:
        """After the loop (the device synchronized)."""


class GoldenRecorder(StepObserver):
    """The golden-format tensors of every step (input_embeds, logits_*, canvas, rope_pos, layer outputs for the
    steps in ``layer_steps``) into ``record``."""

    every_forward = True

    def __init__(self, record: dict, layer_steps=()):
        self.record = record
        self.layer_steps = frozenset(layer_steps or ())
        self.L = 0

    def on_text(self, prefix, layer_outputs):
        L = prefix.shape[1]
        self.record["text.prefix_tokens"] = prefix.float().cpu()
        self.record["text.rope_pos"] = text_positions(L)
        for i, h in enumerate(layer_outputs or []):
            self.record[f"text.layer{i}.out"] = h[0].float().cpu()

    def on_forward(self, st, tokens, logits, guided, pos, layer_outputs):
        k, r = f"step{st.index:03d}", self.record
        r[f"{k}.input_embeds"] = tokens.float().cpu()
        r[f"{k}.logits_cond"] = logits[0].float().cpu()
        if logits.shape[0] == 2:
            r[f"{k}.logits_uncond"] = logits[1].float().cpu()
        r[f"{k}.logits_guided"] = guided.float().cpu()
        r[f"{k}.rope_pos"] = pos
        for i, lo in enumerate(layer_outputs or []):
            r[f"{k}.layer{i}.out"] = lo[0].float().cpu()

    def step_done(self, st, canvas):
        self.record[f"step{st.index:03d}.canvas"] = canvas[0].float().cpu()


class StepTimer(StepObserver):
    """Per-step device time for benchmarks: CUDA events on a GPU, else a synchronized host clock (the stats row's
    ``time_s``)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.events: list = []
        self._ev0 = None

    def before_step(self, st):
        if self.device.type == "cuda":
            self._ev0 = torch.cuda.Event(enable_timing=True)
            self._ev0.record()

    def step_done(self, st, canvas):
        if self.device.type == "cuda":
            ev1 = torch.cuda.Event(enable_timing=True)
            ev1.record()
            self.events.append((st.index, self._ev0, ev1))
        else:
            _sync(self.device)

    def finish(self, stats):
        by_step = {s["step"]: s for s in stats}
        for k, e0, e1 in self.events:
            by_step[k]["time_s"] = e0.elapsed_time(e1) / 1000.0


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _progress_callback(progress: Callable, schedule: Schedule) -> Callable:
    """The old ``progress(step, schedule)`` hook as a callback."""
    def callback(info: StepInfo):
        progress(schedule.steps[info.step], schedule)
    return callback


@torch.no_grad()
def generate(model: STARTransformer, schedule: Schedule, text_LC: torch.Tensor, *, seed: int = 0,
             guidance: GuidanceConfig = GuidanceConfig(), uncond_LC: torch.Tensor | None = None,
             teacher_bits: dict[int, torch.Tensor] | None = None, accelerator: Accelerator | None = None,
             skip_unread_forwards: bool = True, callback: Callable[[StepInfo], bool | None] | None = None,
             observers=(), record: dict | None = None, record_layers: set | None = None,
             progress: Callable | None = None, time_steps: bool = False, parallel=None) -> GenerationOutput:
    """Generate the summed codes of one video.

    text_LC: prompt embedding [L, text_channels] (valid tokens). teacher_bits: step index -> uint8 [t, h, w, d].
    skip_unread_forwards: a teacher-forced step whose K/V nothing reads later runs no forward (same result).
    callback: called with a ``StepInfo`` after every step; returning True stops the loop after that step
    (``stopped_at``). observers: ``StepObserver``s. Shorthands for observers: record (a dict that receives the
    golden-format tensors, layer outputs for the steps in record_layers), progress (callable(step, schedule) per
    step), time_steps (per-step device time in the stats, for benchmarks). parallel: None (one process) or
    ``"cfg"`` (guidance-parallel over 2 torchrun ranks) or ``"sp"`` (sequence-parallel, Ulysses), see
    ``faststar.parallel``: every rank returns the same output.
    """
    from .parallel import make_parallel
    observers = list(observers)
    if record is not None:
        observers.append(GoldenRecorder(record, record_layers))
    if time_steps:
        observers.append(StepTimer(model.device))
    callbacks = [c for c in (callback, progress and _progress_callback(progress, schedule)) if c is not None]
    loop = _Loop(model, schedule, seed=seed, guidance=guidance, accelerator=accelerator or Accelerator(),
                 teacher_bits=teacher_bits or {}, skip_unread=skip_unread_forwards, observers=observers,
                 parallel=make_parallel(parallel, model.device))
    text_time = loop.text_pass(text_LC, uncond_LC)
    t_start = time.perf_counter()
    stopped_at = None
    for st in schedule.steps:
        info = loop.step(st, t_start)
        if any([bool(cb(info)) for cb in callbacks]):
            stopped_at = st.index
            break
    loop.check_nan()
    _sync(model.device)
    for o in observers:
        o.finish(loop.stats)
    return GenerationOutput(latent=loop.latent(), bits=loop.bits, masks=loop.masks, stats=loop.stats,
                            text_time_s=text_time, total_time_s=time.perf_counter() - t_start + text_time,
                            stopped_at=stopped_at)


class _Loop:
    """The state of one generation and its parts: text pass, one step (plan, forward, codes, canvas, stats)."""

    def __init__(self, model, schedule, *, seed, guidance, accelerator, teacher_bits, skip_unread, observers,
                 parallel=None):
        self.model, self.schedule, self.seed, self.guidance = model, schedule, seed, guidance
        self.acc, self.teacher, self.observers = accelerator, teacher_bits, observers
        self.skip_unread = skip_unread and not any(o.every_forward for o in observers)
        self.dev = model.device
        self.batch = 2 if guidance.needs_uncond else 1
        self.par = parallel                    # None, or a layout that splits the branches over ranks
        if self.par is not None:
            self.par.check(self.batch, model.cfg)
        self.acc.setup(model.cfg)
        self.acc.reset(schedule, seed)
        self.clip_canvases, self.bits, self.masks, self.stats = [], [], [], []
        self.canvas = self.prev_canvas = None
        self.nan_flags = []
        self.L = 0
        self.cache = None

    # -- the text prefix ----------------------------------------------------------------------------------------
    def text_pass(self, text_LC, uncond_LC) -> float:
        """The prefix tokens run through all blocks once; their K/V become the cache's text prefix."""
        m, cfg = self.model, self.model.cfg
        self.L = text_LC.shape[0]
        max_len = self.schedule.max_kv_len(self.L)
        self.cache = m.new_cache(max_len, batch=self.batch) if self.par is None else \
            self.par.new_cache(m, max_len, self.batch)
        t0 = time.perf_counter()
        prefix = m.text_prefix(text_LC.to(self.dev), None if uncond_LC is None else uncond_LC.to(self.dev),
                               batch=self.batch)
        cos, sin = rope_cos_sin(text_positions(self.L), cfg.head_dim, cfg.rope_theta, device=self.dev)
        layers = [] if any(o.every_forward for o in self.observers) else None
        self._blocks(prefix, cos, sin, layer_outputs=layers)
        self.cache.commit_text()
        for o in self.observers:
            o.on_text(prefix, layers)
        if any(isinstance(o, StepTimer) for o in self.observers):
            _sync(self.dev)
        return time.perf_counter() - t0

    # -- one step -----------------------------------------------------------------------------------------------
    def step(self, st: Step, t_start: float) -> StepInfo:
        s, sch, cfg = st.scale, self.schedule, self.model.cfg
        ts = time.perf_counter()
        for o in self.observers:
            o.before_step(st)
        t_c, H, W = sch.clip_thw[s.clip]
        if s.index_in_clip == 0 and st.rep == 0:
            if self.canvas is not None:
                self.prev_canvas = self.canvas
            self.canvas = torch.zeros(1, cfg.d_vae, t_c, H, W, device=self.dev)
        refs = list(self.cache.ref_lens) if s.ref_scale is not None else [0] * cfg.depth   # per-layer context
        is_ref = sch.is_ref_step(st)
        forced = self.teacher.get(st.index)
        x_view = area_down(self.canvas, s.thw)
        tokens = self.model.embed(x_view.flatten(2).transpose(1, 2)[0])             # [N, C] fp32
        branches = min(self.acc.guidance.branches(sch, s), self.batch)
        ctx = StepContext(sch, st, self.canvas, self.prev_canvas, x_view, tokens, is_ref, self.seed, branches,
                          lambda h, _bits=s.bits: self.model.logits(h, _bits))
        plan = self.acc.plan(ctx) if forced is None else DENSE
        mode = step_mode(plan.run, teacher_forced=forced is not None, is_ref=is_ref, skip_unread=self.skip_unread)
        if mode != "plan":
            plan, branches = (DENSE, self.batch) if mode == "dense" else (StepPlan(run=False), branches)
        ctx.branches = branches
        hidden = ran = keep = sampled = None
        if plan.run:
            hidden, ran, keep, sampled = self._forward(st, plan, ctx, tokens, is_ref, forced is None)
        codes, bits_full, mask = self._codes(st, plan, forced, sampled, keep, ran)
        self.canvas = self.canvas + lift_codes(codes, cfg.d_vae, (H, W))
        for o in self.observers:
            o.step_done(st, self.canvas)
        self.acc.observe(ctx, StepOutput(st, ran, hidden, codes, self.canvas))
        self.bits.append(None if bits_full is None else bits_full.reshape(*s.thw, s.bits))
        self.masks.append(None if mask is None else mask.reshape(s.thw))
        if sch.is_last_of_clip(st):
            self.clip_canvases.append(self.canvas)
        n_run = 0 if not plan.run else (s.num_tokens if ran is None else int(ran.numel()))
        p_layer = plan.prune_layer if (plan.select_at_prune_layer is not None and ran is not None) else 0
        flops, dense = step_cost(cfg, sch, st, text_len=self.L, tokens_run=n_run, prune_layer=p_layer,
                                 branches=branches if plan.run else 0, ref_lens=refs, batch=self.batch)
        unread = forced is not None and mode == "skip"     # skipped by the dense engine as well
        self.stats.append(dict(step=st.index, scale=s.index, clip=s.clip, thw=list(s.thw), rep=st.rep,
                               tokens=s.num_tokens, tokens_run=n_run, branches=branches if plan.run else 0,
                               dense_branches=self.batch, ref_tokens=refs[-1], prune_layer=p_layer,
                               teacher_forced=forced is not None, flops=flops, flops_dense=0.0 if unread else dense,
                               time_s=time.perf_counter() - ts, **plan.info))
        clip_scales = sch.clip_scales(s.clip)
        return StepInfo(step=st.index, num_steps=sch.num_steps, clip=s.clip, num_clips=sch.num_clips,
                        scale=s.index_in_clip, num_scales=len(clip_scales), rep=st.rep, canvas=self.canvas,
                        clip_canvases=self.clip_canvases[:s.clip], elapsed_s=time.perf_counter() - t_start,
                        tokens=s.num_tokens, tokens_run=n_run)

    def _forward(self, st: Step, plan: StepPlan, ctx: StepContext, tokens, is_ref: bool, sample: bool):
        """Blocks on the kept tokens (two-phase when the plan selects at its prune layer), restore, logits,
        guidance and (unless teacher-forced) sampling. Returns (hidden, ran, keep, sampled bits)."""
        m, cfg, s, branches = self.model, self.model.cfg, st.scale, ctx.branches
        pos = visual_positions(s.thw, self.schedule.final_hw, s.frame_start, cfg.text_maxlen + st.index)
        cos, sin = rope_cos_sin(pos, cfg.head_dim, cfg.rope_theta, device=self.dev)
        layer_outs = [] if any(st.index in o.layer_steps for o in self.observers) else None
        keep, fill = plan.keep_idx, plan.fill
        if plan.prune_layer > 0 and plan.select_at_prune_layer is not None:
            h = self._blocks(tokens[None].expand(branches, -1, -1), cos, sin,
                             layer_outputs=layer_outs, layers=range(plan.prune_layer))
            keep, fill = plan.select_at_prune_layer(h, ctx)
            if keep is not None:
                h, cos, sin = h[:, keep], cos[keep], sin[keep]
            h = self._blocks(h, cos, sin, layer_outputs=layer_outs,
                             layers=range(plan.prune_layer, cfg.depth))
        else:
            x = tokens
            if keep is not None:
                x, cos, sin = x[keep], cos[keep], sin[keep]
            h = self._blocks(x[None].expand(branches, -1, -1), cos, sin, layer_outputs=layer_outs)
        if is_ref:
            if self.par is None:
                self.cache.commit_ref(branches)
            else:
                self.par.commit_ref(self.cache, branches)
        ran = keep
        if fill is not None and keep is not None:
            h = restore_hidden(h, keep, fill, plan.copy_from)   # all positions get hidden states, logits and codes
            keep = None
        logits = m.logits(h, s.bits)                                                  # [B, Nk, 2d] fp32
        guided = guide(logits[0], logits[1] if branches == 2 else None, s.tau, self.guidance)
        sampled = None
        if sample:
            u = step_uniforms(self.seed, st.index, s.num_tokens, s.bits, self.dev)
            sampled = sample_bits(guided, u if keep is None else u[keep], check_nan=False)
            self.nan_flags.append((st.index, nonfinite(guided)))
        for o in self.observers:
            o.on_forward(st, tokens, logits, guided, pos, layer_outs)
        return h, ran, keep, sampled

    def _blocks(self, x, cos, sin, **kw):
        """The blocks on x [B, N, C]; a parallel layout runs the rank's rows and exchanges the outputs so every
        rank returns what one process would."""
        if self.par is None:
            return self.model.forward_blocks(x, cos, sin, self.cache, **kw)
        return self.par.forward_blocks(self.model, x, cos, sin, self.cache, **kw)

    def _codes(self, st: Step, plan: StepPlan, forced, sampled, keep, ran):
        """The step's code grid [1, d, t, h, w] (teacher-forced, sampled with zeros at pruned positions, or
        none), its bits [N, d] (None if it did not run) and kept mask [N] (None = all)."""
        s, N = st.scale, st.scale.num_tokens
        mask = None
        if forced is not None:
            bits_full = forced.to(self.dev).reshape(N, s.bits)
            codes_Nd = bits_to_codes(bits_full)
        elif plan.run:
            codes_Nd = bits_to_codes(sampled)
            bits_full = sampled
            if keep is not None:
                full = codes_Nd.new_zeros(N, s.bits)
                full[keep] = codes_Nd
                codes_Nd = full
                bits_full = torch.zeros(N, s.bits, dtype=torch.uint8, device=self.dev)
                bits_full[keep] = sampled
            if ran is not None:
                mask = torch.zeros(N, dtype=torch.bool, device=self.dev)
                mask[ran] = True
        else:
            codes_Nd = torch.zeros(N, s.bits, device=self.dev)
            bits_full = None
            mask = torch.zeros(N, dtype=torch.bool, device=self.dev)
        return codes_Nd.reshape(1, *s.thw, s.bits).permute(0, 4, 1, 2, 3), bits_full, mask

    # -- the end ------------------------------------------------------------------------------------------------
    def check_nan(self) -> None:
        for k, flag in self.nan_flags:
            if bool(flag):
                raise FloatingPointError(f"NaN or Inf in the guided logits of step {k}: check the weights and the dtype")

    def latent(self) -> torch.Tensor:
        """The finished clips' canvases, then the current clip's canvas if it is not finished (a stopped loop)."""
        parts = list(self.clip_canvases)
        if self.canvas is not None and (not parts or parts[-1] is not self.canvas):
            parts.append(self.canvas)
        return torch.cat(parts, dim=2)
