"""The generation loop: the only loop over clips, scales and repetitions.

For each step of the schedule: take the clip canvas' view at the scale, embed it, ask the accelerator for a plan,
run the blocks (on the kept tokens), compute logits (fp32), temperature and guidance, sample bits with uniforms
keyed by token position, lift the codes (zero where pruned: Partial Update) onto the canvas. The last repetition
of a scale that a later clip references commits its K/V as that clip's context. Teacher-forced steps take their
bits from the caller (image-to-video, video continuation, reference checks).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from .accel.base import DENSE, Accelerator, StepContext, StepOutput, StepPlan
from .model.rope import rope_cos_sin, text_positions, visual_positions
from .model.transformer import STARTransformer
from .sampling import GuidanceConfig, expected_codes, guide, nonfinite, sample_bits, step_uniforms
from .schedule import Schedule, step_flops
from .vae.quant import area_down, bits_to_codes, lift_codes


@dataclass
class GenerationOutput:
    latent: torch.Tensor                       # summed codes of all clips [1, 64, T, H, W] (fp32)
    bits: list                                 # per step: uint8 [t, h, w, d] (0 where pruned) or None if skipped
    masks: list                                # per step: bool [t, h, w] kept mask, or None for dense steps
    stats: list = field(default_factory=list)  # per step accounting
    text_time_s: float = 0.0
    total_time_s: float = 0.0

    def summary(self) -> dict:
        dense = sum(s["flops_dense"] for s in self.stats)
        run = sum(s["flops"] for s in self.stats)
        return dict(steps=len(self.stats), tokens_dense=sum(s["tokens"] * s["dense_branches"] for s in self.stats),
                    tokens_run=sum(s["tokens_run"] * s["branches"] for s in self.stats),
                    flops_dense=dense, flops=run, flop_speedup=dense / max(run, 1.0),
                    transformer_time_s=self.total_time_s)


def _key_weight(plan: StepPlan, keep: torch.Tensor | None, n: int) -> float:
    """Attention weight of a pruned step's own keys: N / n_kept with proportional attention, else 1."""
    if not plan.proportional or keep is None or keep.numel() == 0:
        return 1.0
    return n / keep.numel()


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def generate(model: STARTransformer, schedule: Schedule, text_LC: torch.Tensor, *, seed: int = 0,
             guidance: GuidanceConfig = GuidanceConfig(), uncond_LC: torch.Tensor | None = None,
             teacher_bits: dict[int, torch.Tensor] | None = None, accelerator: Accelerator | None = None,
             skip_unread_forwards: bool = True, record: dict | None = None, record_layers: set | None = None,
             progress=None, time_steps: bool = False) -> GenerationOutput:
    """Generate the summed codes of one video.

    text_LC: prompt embedding [L, text_channels] (valid tokens). teacher_bits: step index -> uint8 [t, h, w, d].
    skip_unread_forwards: a teacher-forced step whose K/V nothing reads later runs no forward (same result).
    record: optional dict that receives the golden-format tensors of every step (input_embeds, logits_*, canvas,
    rope_pos, layer outputs for steps in record_layers). progress: optional callable(step, schedule) per step.
    time_steps: per-step device time with CUDA events (or a synchronized host clock on CPU), for benchmarks.
    """
    cfg = model.cfg
    dev = model.device
    acc = accelerator or Accelerator()
    teacher_bits = teacher_bits or {}
    acc.reset(schedule, model, seed)
    HW = schedule.final_hw
    use_uncond = guidance.needs_uncond
    batch = 2 if use_uncond else 1
    L = text_LC.shape[0]
    cache = model.new_cache(schedule.max_kv_len(L), batch=batch)

    # text pass: the prefix tokens run through all blocks once; their K/V become the cache's text prefix
    t0 = time.perf_counter()
    prefix = model.text_prefix(text_LC.to(dev), None if uncond_LC is None else uncond_LC.to(dev), batch=batch)
    cos, sin = rope_cos_sin(text_positions(L), cfg.head_dim, cfg.rope_theta, device=dev)
    text_layers = [] if record is not None else None
    model.forward_blocks(prefix, cos, sin, cache, layer_outputs=text_layers)
    cache.commit_text()
    if record is not None:
        record["text.prefix_tokens"] = prefix.float().cpu()
        record["text.rope_pos"] = text_positions(L)
        for i, h in enumerate(text_layers):
            record[f"text.layer{i}.out"] = h[0].float().cpu()
    if time_steps:
        _sync(dev)
    text_time = time.perf_counter() - t0

    kw = dict(depth=cfg.depth, width=cfg.width, num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads,
              mlp_hidden=cfg.mlp_hidden)
    canvases, bits_out, masks, stats = [], [], [], []
    canvas = prev_canvas = None
    nan_flags = []
    t_start = time.perf_counter()
    events = []
    use_events = time_steps and dev.type == "cuda"
    for st in schedule.steps:
        s = st.scale
        ts = time.perf_counter()
        if use_events:
            ev0 = torch.cuda.Event(enable_timing=True)
            ev0.record()
        t_c, H, W = schedule.clip_thw[s.clip]
        if s.index_in_clip == 0 and st.rep == 0:
            if canvas is not None:
                prev_canvas = canvas
            canvas = torch.zeros(1, cfg.d_vae, t_c, H, W, device=dev)
        N = s.num_tokens
        refs = list(cache.ref_lens) if s.ref_scale is not None else [0] * cfg.depth   # per-layer context
        ref_tok = refs[-1]                                                # context this step attends to
        is_ref = schedule.is_ref_step(st)
        forced = teacher_bits.get(st.index)
        x_view = area_down(canvas, s.thw)
        tokens = model.embed(x_view.flatten(2).transpose(1, 2)[0])             # [N, C] fp32
        ctx = StepContext(schedule, st, canvas, prev_canvas, x_view, tokens, is_ref, forced is not None, seed, model)
        plan: StepPlan = acc.plan(ctx) if forced is None else DENSE
        unread = forced is not None and skip_unread_forwards and not is_ref and record is None
        if unread:
            plan = StepPlan(run=False)
        if is_ref and not plan.run:
            plan = DENSE    # a step that a later clip attends to always runs (its K/V is the context)
        branches = min(plan.branches, batch)
        keep = plan.keep_idx
        pos = visual_positions(s.thw, HW, s.frame_start, cfg.text_maxlen + st.index)
        hidden = None
        guided = None
        ran = None                          # tokens that ran the (last) blocks; None = all
        if plan.run:
            x = tokens
            p = pos
            cos, sin = rope_cos_sin(p, cfg.head_dim, cfg.rope_theta, device=dev)
            layer_outs = [] if (record is not None and record_layers and st.index in record_layers) else None
            if plan.prune_layer > 0 and plan.select is not None:
                h = x[None].expand(branches, -1, -1)
                h = model.forward_blocks(h, cos, sin, cache, layer_outputs=layer_outs, layers=range(plan.prune_layer))
                keep = plan.select(h, ctx)
                if keep is not None:
                    h = h[:, keep]
                    cos, sin = cos[keep], sin[keep]
                h = model.forward_blocks(h, cos, sin, cache, layer_outputs=layer_outs,
                                         layers=range(plan.prune_layer, cfg.depth),
                                         key_weight=_key_weight(plan, keep, N))
            elif keep is not None and keep.numel() == 0:
                # nothing runs the blocks (a step filled by ``restore`` from cached hidden states)
                h = x.new_zeros(branches, 0, x.shape[-1], dtype=model.block_dtype)
            else:
                if keep is not None:
                    x, cos, sin = x[keep], cos[keep], sin[keep]
                h = model.forward_blocks(x[None].expand(branches, -1, -1), cos, sin, cache, layer_outputs=layer_outs,
                                         key_weight=_key_weight(plan, keep, N))
            if is_ref:
                cache.commit_ref(branches)
            ran = keep
            if plan.restore is not None and keep is not None:
                h = plan.restore(h, keep, ctx)          # all positions get hidden states, logits and codes
                keep = None
            hidden = h
            logits = model.logits(h, s.bits)                                      # [B, Nk, 2d] fp32
            guided = guide(logits[0], logits[1] if branches == 2 else None, s.tau, guidance)
            if plan.guidance_delta is not None and branches == 1 and use_uncond:
                delta = plan.guidance_delta(ctx, guidance)                        # [N, 2d]
                guided = guided + (delta if keep is None else delta[keep])
            if forced is None:
                u = step_uniforms(seed, st.index, N, s.bits, dev)
                b = sample_bits(guided, u if keep is None else u[keep], check_nan=False)
                nan_flags.append((st.index, nonfinite(guided)))
            if record is not None:
                record[f"step{st.index:03d}.input_embeds"] = tokens.float().cpu()
                record[f"step{st.index:03d}.logits_cond"] = logits[0].float().cpu()
                if branches == 2:
                    record[f"step{st.index:03d}.logits_uncond"] = logits[1].float().cpu()
                record[f"step{st.index:03d}.logits_guided"] = guided.float().cpu()
                record[f"step{st.index:03d}.rope_pos"] = pos
                if layer_outs is not None:
                    for i, lo in enumerate(layer_outs):
                        record[f"step{st.index:03d}.layer{i}.out"] = lo[0].float().cpu()
        # codes of this step: teacher-forced, sampled (zero at pruned positions), or none
        if forced is not None:
            bits_full = forced.to(dev).reshape(N, s.bits)
            codes_Nd = bits_to_codes(bits_full)
            mask = None
        elif plan.run:
            codes_Nd = bits_to_codes(b)
            if plan.restored_codes == "mean" and ran is not None and keep is None:
                # restored (not run) positions: the mean code of their restored logits instead of a sample
                restored = torch.ones(N, dtype=torch.bool, device=dev)
                restored[ran] = False
                codes_Nd = torch.where(restored[:, None], expected_codes(guided), codes_Nd)
            if keep is not None:
                full = codes_Nd.new_zeros(N, s.bits)
                full[keep] = codes_Nd
                codes_Nd = full
                bits_full = torch.zeros(N, s.bits, dtype=torch.uint8, device=dev)
                bits_full[keep] = b
            else:
                bits_full = b
            mask = None
            if ran is not None:
                mask = torch.zeros(N, dtype=torch.bool, device=dev)
                mask[ran] = True
        else:
            codes_Nd = torch.zeros(N, s.bits, device=dev)
            bits_full = None
            mask = torch.zeros(N, dtype=torch.bool, device=dev)
        codes = codes_Nd.reshape(1, *s.thw, s.bits).permute(0, 4, 1, 2, 3)
        canvas = canvas + lift_codes(codes, cfg.d_vae, (H, W))
        if record is not None:
            record[f"step{st.index:03d}.canvas"] = canvas[0].float().cpu()
        acc.observe(ctx, StepOutput(st, ran, hidden, codes, canvas))
        bits_out.append(None if bits_full is None else bits_full.reshape(*s.thw, s.bits))
        masks.append(None if mask is None else mask.reshape(s.thw))
        if schedule.is_last_of_clip(st):
            canvases.append(canvas)
        # accounting
        n_run = 0 if not plan.run else (N if ran is None else int(ran.numel()))
        p_layer = plan.prune_layer if (plan.run and plan.select is not None) else 0   # blocks that ran all N
        lin = att = 0.0
        if plan.run:
            for layer in range(cfg.depth):
                n_q = N if layer < p_layer else n_run
                fl = step_flops(n_q, L + refs[layer] + n_q, batch=branches, **dict(kw, depth=1))
                lin, att = lin + fl[0], att + fl[1]
        lin_d, att_d = step_flops(N, L + (schedule.scales[s.ref_scale].num_tokens if s.ref_scale is not None else 0)
                                  + N, batch=batch, **kw)
        if use_events:
            ev1 = torch.cuda.Event(enable_timing=True)
            ev1.record()
            events.append((len(stats), ev0, ev1))
        elif time_steps:
            _sync(dev)
        stats.append(dict(step=st.index, scale=s.index, clip=s.clip, thw=list(s.thw), rep=st.rep, tokens=N,
                          tokens_run=n_run, branches=branches if plan.run else 0, dense_branches=batch,
                          ref_tokens=ref_tok, prune_layer=p_layer,
                          teacher_forced=forced is not None, flops=lin + att if plan.run else 0.0,
                          # a teacher-forced step that nothing reads is skipped by the dense engine as well
                          flops_dense=0.0 if unread else lin_d + att_d, time_s=time.perf_counter() - ts, **plan.info))
        if progress is not None:
            progress(st, schedule)
    for k, flag in nan_flags:
        if bool(flag):
            raise FloatingPointError(f"NaN or Inf in the guided logits of step {k}: check the weights and the dtype")
    _sync(dev)
    for i, e0, e1 in events:
        stats[i]["time_s"] = e0.elapsed_time(e1) / 1000.0
    return GenerationOutput(latent=torch.cat(canvases, dim=2), bits=bits_out, masks=masks, stats=stats,
                            text_time_s=text_time, total_time_s=time.perf_counter() - t_start + text_time)
