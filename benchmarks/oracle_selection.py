"""How much can the choice of kept tokens matter? An oracle selection against the scores and random selection.

    python benchmarks/oracle_selection.py --methods faststar:balanced,faststar:fast --seeds 0 --out out/oracle

For each FastSTAR configuration X, on the testbed (the embedded default model) and each prompt:

1. a probe generation runs X with every partially pruned step run in full; at each such step it measures, per
   token, the damage of not running it: the mean over bits of |bit mean from the token's own hidden states -
   bit mean from what the configured update gives it| (for restore/copy updates: the previous scale's hidden
   states resized; for Partial Update: the token's own bit means, since its code becomes zero); and it records
   FastSTAR's importance score of the same step;
2. `oracle`: X with the kept set = the tokens of highest measured damage (the best a score of this kind can do
   when it knows the answer); `anti-oracle`: the lowest; `faststar` and `random`: X and the random control.

The steps before a clip's first partially pruned step are identical in the probe and in the pruned run, so the
oracle's damage is exact there (at the presets that prune one step per clip, exact everywhere).
Reported: PSNR against the dense video of the same seed per selection, and the Spearman correlation of the
FastSTAR score (and of a random draw) with the measured damage.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from faststar import accel  # noqa: E402
from faststar.accel.base import StepPlan  # noqa: E402
from faststar.accel.faststar import FastSTAR, RandomPrune  # noqa: E402
from faststar.accel.restore import resize_tokens  # noqa: E402
from faststar.accel.scores import scale_views, spatial_similarity, temporal_similarity  # noqa: E402
from faststar.eval import load_prompts  # noqa: E402
from faststar.metrics import psnr  # noqa: E402
from faststar.sampling import bit_means  # noqa: E402


def _partial_steps(acc: FastSTAR, schedule) -> set[int]:
    out = set()
    for st in schedule.steps:
        b = acc.budget(schedule, st)
        if b.run and b.tokens is not None and 0 < b.tokens < st.scale.num_tokens:
            out.add(st.index)
    return out


class Probe(FastSTAR):
    """X with its partially pruned steps run in full, measuring the per-token damage of pruning them."""

    def reset(self, schedule, seed):
        super().reset(schedule, seed)
        self.partial = _partial_steps(self, schedule)
        self.damage: dict[int, torch.Tensor] = {}
        self.score: dict[int, torch.Tensor] = {}
        self.inputs: dict[int, tuple] = {}

    def plan(self, ctx):
        if ctx.step.index not in self.partial:
            return super().plan(ctx)
        s = ctx.scale
        self.score[ctx.step.index] = self.selector.score(ctx, {}).float().cpu()
        prev_thw = (s.thw[0], 1, 1) if s.index_in_clip == 0 else ctx.schedule.scales[s.index - 1].thw
        self.inputs[ctx.step.index] = (ctx.canvas.clone(), ctx.x_view.clone(), prev_thw,
                                       None if ctx.prev_clip_canvas is None else ctx.prev_clip_canvas.clone())
        return StepPlan()

    def observe(self, ctx, out):
        s = ctx.scale
        if ctx.step.index in self.partial and out.hidden is not None and out.hidden.shape[1] == s.num_tokens:
            m_own = bit_means(ctx.head(out.hidden[:1])[0])
            prev = self._prev.previous(s)
            if self.cfg.update == "partial" or prev is None:
                d = m_own.abs().mean(-1)
            else:
                m_fill = bit_means(ctx.head(resize_tokens(prev[1][:1], prev[0], s.thw, "trilinear"))[0])
                d = (m_own - m_fill).abs().mean(-1)
            self.damage[ctx.step.index] = d.float().cpu()
        super().observe(ctx, out)


class TableSelector:
    """A selector whose score is a table of per-step scores (highest kept): the oracle, through FastSTAR's
    selector argument."""

    def __init__(self, table: dict[int, torch.Tensor], sign: float):
        self.table, self.sign = table, sign

    def score(self, ctx, info):
        return (self.sign * self.table[ctx.step.index]).to(ctx.canvas.device)


def Oracle(table, sign, config, guidance=None):
    return FastSTAR(config, selector=TableSelector(table, sign), guidance=guidance)


def scale_damage(pipe, prompt: str, seed: int, cfg, image=None) -> tuple[int, torch.Tensor, torch.Tensor, "Probe"]:
    """For a configuration that partially prunes one scale of the last clip: per token of that scale, the damage
    in the decoded video and in the latent of not running it (its update instead) with everything else as the
    configuration runs it: (step index, pixel damage [N], latent damage [N], the probe). Both are local maps: the
    squared difference of the run-in-full and the pruned-everywhere (one token kept) videos (latents), averaged
    over the token's footprint in the clip's frames."""
    from dataclasses import replace
    sch = pipe.spec.schedule(None, None)
    probe = Probe(cfg)
    probe.setup(pipe.transformer.cfg)
    probe.reset(sch, seed)
    part = [st for st in sch.steps if st.index in probe.partial]
    if not part or len({st.scale.index for st in part}) != 1 or part[0].scale.clip != sch.scales[-1].clip:
        raise ValueError("the pixel oracle handles configurations that partially prune one scale of the last clip")
    full = pipe(prompt, image=image, seed=seed, progress=False, accelerator=probe)
    ratios = cfg.keep_ratios if isinstance(cfg.keep_ratios, tuple) else (cfg.keep_ratios,)
    tiny = tuple(1e-9 if 0.0 < r < 1.0 else r for r in ratios)      # one token runs, the rest get the update
    filled = pipe(prompt, image=image, seed=seed, progress=False,
                  accelerator=FastSTAR(replace(cfg, keep_ratios=tiny), guidance=probe.guidance))
    t, h, w = part[0].scale.thw
    T = full.latent.shape[2]
    a = torch.from_numpy(full.frames).float()
    b = torch.from_numpy(filled.frames).float()
    e = ((a - b) ** 2).mean(-1)                                   # [F, H, W]
    e = e[1 + 4 * (T - t - 1):] if T > t else e                   # the clip's pixel frames: 4 per latent frame
    e = torch.nn.functional.adaptive_avg_pool3d(e[None, None], (t, h, w))
    lat = ((full.latent[:, :, T - t:] - filled.latent[:, :, T - t:]) ** 2).sum(1, keepdim=True)
    lat = torch.nn.functional.adaptive_avg_pool3d(lat, (t, h, w))
    return part[0].index, e.flatten(), lat.flatten(), probe


def proxies(probe: Probe, k: int) -> dict[str, torch.Tensor]:
    """Cheap per-token candidates for the decoder's sensitivity at step k, from what the step's plan sees."""
    canvas, x, prev_thw, prev_clip = probe.inputs[k]
    thw = tuple(x.shape[-3:])
    xs, u = scale_views(canvas, thw, prev_thw)
    x0 = xs[0].float()                                                 # [C, t, h, w]
    gy = torch.zeros_like(x0[0])
    gx = torch.zeros_like(x0[0])
    gy[:, 1:] = (x0[:, :, 1:] - x0[:, :, :-1]).pow(2).sum(0)
    gx[:, :, 1:] = (x0[:, :, :, 1:] - x0[:, :, :, :-1]).pow(2).sum(0)
    out = {"1-S_sp": 1 - spatial_similarity(xs, u), "high-pass |x-u|^2": (xs - u).pow(2).sum(1)[0].flatten(),
           "|x|^2": x0.pow(2).sum(0).flatten(), "gradient |dx|^2": (gx + gy).flatten()}
    tm = temporal_similarity(x, prev_clip)
    if tm is not None:
        out["1-S_tm"] = 1 - tm
    return out


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra = a.argsort().argsort().double()
    rb = b.argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm() + 1e-12))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--methods", default="faststar:balanced,faststar:fast",
                    help="comma-separated faststar:PRESET[+knob=value...] specs")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--prompts", default=None, help="prompt file (default: the eval prompts)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model-dir", default=None, help="default: the embedded testbed")
    ap.add_argument("--text-encoder", default=None, help="override, e.g. cached:<file.safetensors>")
    ap.add_argument("--out", default="out/oracle")
    ap.add_argument("--proxies-only", action="store_true",
                    help="with --pixel: only the correlations of cheap proxies with the pixel damage (no oracle runs)")
    ap.add_argument("--pixel", action="store_true",
                    help="also the pixel- and latent-damage oracles (configurations that partially prune one scale)")
    a = ap.parse_args(argv)
    from faststar.pipeline import FastStarPipeline
    pipe = FastStarPipeline.from_pretrained(a.model_dir, device=a.device, text_encoder=a.text_encoder)
    prompts = load_prompts(a.prompts)
    seeds = [int(s) for s in a.seeds.split(",")]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for it in prompts:
        for seed in seeds:
            accel.remove(pipe)
            d_out = pipe(it["prompt"], image=it.get("image"), seed=seed, progress=False)
            dense, d_lat = d_out.frames, d_out.latent
            for spec in a.methods.split(","):
                base = accel.accelerator_from_spec(spec)
                cfg, g = base.cfg, base.guidance
                probe = Probe(cfg, guidance=base.guidance)
                pipe(it["prompt"], image=it.get("image"), seed=seed, progress=False, decode=False, accelerator=probe)
                row = dict(method=spec, prompt=it["prompt"], seed=seed,
                           rho_score=[spearman(probe.score[k], probe.damage[k]) for k in sorted(probe.damage)],
                           rho_random=[spearman(torch.rand(v.numel(), generator=torch.Generator().manual_seed(k)),
                                                v) for k, v in sorted(probe.damage.items())])
                runs = [("faststar", base), ("random", RandomPrune(**vars(cfg), guidance=base.guidance)),
                        ("oracle", Oracle(probe.damage, 1.0, cfg, g)), ("anti-oracle", Oracle(probe.damage, -1.0, cfg, g))]
                if a.pixel:
                    k, e_pix, e_lat, px_probe = scale_damage(pipe, it["prompt"], seed, cfg, it.get("image"))
                    row["rho_proxies_pixel"] = {n: spearman(v.cpu(), e_pix) for n, v in proxies(px_probe, k).items()}
                    row["rho_score_pixel"] = spearman(probe.score[k], e_pix)
                    row["rho_bits_pixel"] = spearman(probe.damage[k], e_pix)
                    row["rho_latent_pixel"] = spearman(e_lat, e_pix)
                    runs += [("pixel-oracle", Oracle({k: e_pix}, 1.0, cfg, g)),
                             ("latent-oracle", Oracle({k: e_lat}, 1.0, cfg, g))]
                if a.proxies_only:
                    runs = []
                    print(json.dumps(row["rho_proxies_pixel"]), flush=True)
                for name, acc in runs:
                    o = pipe(it["prompt"], image=it.get("image"), seed=seed, progress=False, accelerator=acc)
                    row[name] = psnr(o.frames, dense)
                    row["latent_mse_" + name] = float(((o.latent - d_lat) ** 2).mean())
                rows.append(row)
                print(json.dumps(row), flush=True)
    (out / "oracle.json").write_text(json.dumps(dict(methods=a.methods.split(","), seeds=seeds, rows=rows), indent=1))
    if a.proxies_only:
        for spec in a.methods.split(","):
            rs = [r for r in rows if r["method"] == spec]
            print(f"`{spec}`: Spearman with the pixel damage, mean over {len(rs)} videos")
            for n in rs[0]["rho_proxies_pixel"]:
                print(f"  {n}: {sum(r['rho_proxies_pixel'][n] for r in rs) / len(rs):+.3f}")
        return
    names = ["faststar", "random", "oracle", "anti-oracle"] + (["pixel-oracle", "latent-oracle"] if a.pixel else [])
    print("\n| configuration | " + " | ".join(f"{n} dB (latent MSE)" for n in names) + " | Spearman(score, damage) |")
    print("|---|" + "---|" * (len(names) + 1))
    for spec in a.methods.split(","):
        rs = [r for r in rows if r["method"] == spec]
        mean = lambda k: sum(r[k] for r in rs) / len(rs)  # noqa: E731
        rho = [x for r in rs for x in r["rho_score"]]
        cells = " | ".join(f"{mean(n):.2f} ({mean('latent_mse_' + n):.4f})" for n in names)
        print(f"| `{spec}` | {cells} | {sum(rho) / max(len(rho), 1):+.3f} |")
        if a.pixel:
            print("  Spearman with the pixel damage: score %+.3f, bit damage %+.3f, latent damage %+.3f" % tuple(
                mean(k) for k in ("rho_score_pixel", "rho_bits_pixel", "rho_latent_pixel")))


if __name__ == "__main__":
    main()
