"""Device benchmark of issues 26 (memory) and 29 (FP8): the whole pipeline (a release-size T5 encoder, the 8B
transformer, the release VAE, all random weights), timed and its peak GPU memory read, per part:

    engine    each method x resolution at one precision under the memory planner's plan for --budget (chunked
              blocks, compact KV cache, text encoder and VAE visiting the GPU), plus (--baseline) today's
              unchunked engine, dense, in the same process; --lean adds dense under the smallest plan
    modes     dense with each FP8 mode (weight-only, dynamic per-row, dynamic per-tensor): which one to ship
    fraction  dense under torch.cuda.set_per_process_memory_fraction(--fraction-gib) with the plan for that
              budget: completes or not (run it in its own process: the cap stays for the process)
    logits    FP8 (and FP8 attention) logits against bf16 on the first steps (clip 0, teacher-forced), 8B model
    fp8attn   dense with FP8 weights + fa3 FP8 attention
    testbed   FP8 on the testbed model: PSNR / latent error against bf16 dense, beside the `quality` preset
    table     merge every JSON in --out-dir into one markdown table

    PYTHONPATH=src python3 benchmarks/memory_fp8.py --part engine --precision bf16 --baseline --out-dir $OUT
    PYTHONPATH=src python3 benchmarks/memory_fp8.py --part table --out-dir $OUT

``--dry-run`` runs every part on the CPU with the tiny golden config and the testbed schedule (checks the script,
measures nothing). benchmarks/device_memory_fp8.sh runs the three device calls.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from faststar.bench import _git_commit, build_random_transformer, build_random_vae, plan_kinds, random_init_  # noqa
from faststar.memory import GiB, parse_size, smallest_plan  # noqa: E402
from faststar.pipeline import FastStarPipeline, ModelSpec  # noqa: E402

PRESETS = ["dense", "faststar:quality", "faststar:balanced", "faststar:fast-hq", "faststar:fast"]
PROMPT = "a red fox runs through fresh snow in a pine forest, morning light, the camera follows it"
REFERENCE_PEAK = {"720p": 55.8, "480p": 34.2}       # the reference code's peaks (spec/reference-timing-h200.md)


class RandomT5(torch.nn.Module):
    """A T5 encoder of the release's size (flan-t5-xl: 24 layers, width 2048, FF 5120 gated-GELU; 1.2 B parameters)
    with random weights in bf16. No tokenizer files exist here: a prompt's bytes are its token ids (mod the vocab),
    padded or cut to ``tokens``; the encoder's work and memory are those of a real 128-token prompt."""

    def __init__(self, device, tokens: int = 128, d_model: int = 2048, layers: int = 24, heads: int = 32,
                 d_ff: int = 5120, seed: int = 0):
        super().__init__()
        from transformers import T5Config, T5EncoderModel
        cfg = T5Config(d_model=d_model, d_kv=d_model // heads, d_ff=d_ff, num_layers=layers, num_heads=heads,
                       feed_forward_proj="gated-gelu", vocab_size=32128, is_encoder_decoder=False)
        with torch.device("meta"):
            m = T5EncoderModel(cfg)
        m.to_empty(device=device)
        random_init_(m, seed)
        self.model = m.to(torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32).eval()
        self.model.requires_grad_(False)
        self.tokens = tokens

    @property
    def device(self):
        return next(self.model.parameters()).device

    @torch.no_grad()
    def encode(self, prompts):
        out = []
        for p in prompts:
            ids = list(p.encode())[: self.tokens]
            ids = (ids + [1] * self.tokens)[: self.tokens]
            x = torch.tensor([ids], device=self.device) % 32100
            out.append(self.model(input_ids=x).last_hidden_state[0])
        return out


def _env(args) -> dict:
    dev = torch.device(args.device)
    d = dict(torch=torch.__version__, python=platform.python_version(), commit=_git_commit(),
             date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), part=args.part, dry_run=args.dry_run)
    if dev.type == "cuda":
        p = torch.cuda.get_device_properties(dev)
        d.update(gpu=p.name, gpu_total_gib=p.total_memory / GiB, capability=list(torch.cuda.get_device_capability()))
    return d


def _write(args, name: str, report: dict) -> None:
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(report, indent=1, default=str))


def _sizes(args):
    """Model preset, VAE config, text width, resolutions for the real runs or the CPU dry run."""
    if args.dry_run:        # tiny: a 3-scale pyramid of 4 x 6 latents, three clips
        from faststar.testbed.config import testbed_vae_config
        sched = dict(pyramid=[(1, 1), (2, 3), (4, 6)], clip_frames=[1, 2, 2], image_reps=[1, 2, 1],
                     video_reps=[2, 1, 1], semantic_scales=1)
        return "golden-tiny", testbed_vae_config(), dict(d_model=32, layers=2, heads=4, d_ff=64), ["testbed"], sched
    return "infinitystar-8b", None, {}, args.res.split(","), None


def build_pipe(args, precision: str, backend: str = "auto", fp8_mode: str | None = None, granularity: str = "row"):
    preset, vae_cfg, t5_kw, _, sched_kw = _sizes(args)
    dev = torch.device(args.device)
    model = build_random_transformer(preset, dev, backend=backend, precision=precision,
                                     fp8_mode=fp8_mode or args.fp8_mode, fp8_granularity=granularity,
                                     compile=dev.type == "cuda", graphs=dev.type == "cuda")
    vae = build_random_vae(dev, 0, cfg=vae_cfg)
    if dev.type == "cuda":
        vae.half_decoder_()
    te = RandomT5(dev, **t5_kw)
    if sched_kw is not None:
        spec = ModelSpec(kind="testbed", default_resolution="testbed", default_duration=1,
                         official_prompt_format=False, smooth_first_frame=False, schedule_kwargs=sched_kw,
                         name="dry-run")
    else:
        spec = ModelSpec(kind="official", default_resolution="720p", name="infinitystar-8b (random weights)")
    pipe = FastStarPipeline(model, vae, te, spec, device=dev)
    pipe.precision = precision
    pipe.max_memory = None
    return pipe


def set_budget(pipe, budget):
    """budget None: today's engine (everything resident, unchunked); else the planner decides per call."""
    from faststar.memory import MemoryPlan, apply_plan
    pipe.max_memory = None if budget is None else parse_size(budget)
    dev = pipe.device
    if budget is None:
        apply_plan(pipe.transformer, MemoryPlan())
        pipe._place(pipe.text_encoder, dev)
        pipe._place(pipe.vae, dev)
    else:
        pipe._place(pipe.text_encoder, "cpu")
        pipe._place(pipe.vae, "cpu")
    pipe.transformer.release_cache()
    if dev.type == "cuda":
        torch.cuda.empty_cache()


def run_once(pipe, res, method, seed=0):
    from faststar.accel import accelerator_from_spec
    acc = accelerator_from_spec(method)
    if pipe.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = pipe(PROMPT, resolution=None if res == "testbed" else res, duration=None if res == "testbed" else 5,
               seed=seed, progress=False, accelerator=acc)
    if pipe.device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    s = out.summary
    return dict(method=method, resolution=res, precision=pipe.precision, wall_s=wall,
                text_s=out.timings.get("text_encoder_s"), transformer_s=out.timings.get("transformer_s"),
                decode_s=out.timings.get("vae_decode_s"), total_s=out.timings.get("total_s"),
                peak_gib=s.get("peak_gpu_gib"), planned_peak_gib=(s.get("memory_plan") or {}).get("peak_gib"),
                memory_plan=s.get("memory_plan"), flop_speedup=s.get("flop_speedup"),
                latent_sha=_sha(out.latent), frames=None if out.frames is None else list(out.frames.shape))


def _sha(t):
    import hashlib
    return hashlib.sha1(t.float().contiguous().numpy().tobytes()).hexdigest()[:12]


def timed_methods(args, pipe, res, methods, engine, budget, report, name, warm: bool = True):
    """Warm up (a method bringing a new kind of step warms itself up), then time each method once. warm=False:
    no warm-up (the leanest plan's run, read for its peak; compiled kernels are warm from the planned runs)."""
    from faststar.accel import accelerator_from_spec
    seen = set()
    sched = pipe.spec.schedule(None if res == "testbed" else res, None if res == "testbed" else 5)
    for m in methods:
        kinds = plan_kinds(accelerator_from_spec(m), sched, pipe.transformer.cfg)
        try:
            if warm and kinds - seen:
                run_once(pipe, res, m)
            seen |= kinds
            r = run_once(pipe, res, m)
        except Exception as e:       # an out-of-memory or a bug: recorded, the run goes on
            r = dict(method=m, resolution=res, precision=pipe.precision, error=f"{type(e).__name__}: {e}"[:600])
            traceback.print_exc()
        r.update(engine=engine, budget=budget)
        report["runs"].append(r)
        print(json.dumps({k: v for k, v in r.items() if k != "memory_plan"}), flush=True)
        _write(args, name, report)


def part_engine(args):
    _, _, _, resolutions, _ = _sizes(args)
    name = f"engine_{args.precision}"
    report = dict(_env(args), precision=args.precision, fp8_mode=args.fp8_mode, runs=[])
    pipe = build_pipe(args, args.precision)
    methods = args.methods.split(",")
    for res in resolutions:
        if args.baseline:
            set_budget(pipe, None)
            timed_methods(args, pipe, res, ["dense"], "unchunked (today)", None, report, name)
        set_budget(pipe, args.budget)
        timed_methods(args, pipe, res, methods, "planned", args.budget, report, name)
        if args.lean:
            sched = pipe.spec.schedule(None if res == "testbed" else res, None if res == "testbed" else 5)
            nbytes = lambda mod: sum(p.numel() * p.element_size() for p in mod.parameters())  # noqa: E731
            lean = smallest_plan(pipe.transformer.cfg, sched, precision=args.precision,
                                 text_len=pipe.transformer.cfg.text_maxlen,
                                 text_encoder_bytes=nbytes(pipe.text_encoder), vae_bytes=nbytes(pipe.vae))
            b = f"{lean.peak_bytes / GiB + 0.05:.2f}GiB"
            set_budget(pipe, b)
            timed_methods(args, pipe, res, ["dense"], "leanest plan (no warm-up)", b, report, name, warm=False)
    return report


def part_modes(args):
    _, _, _, resolutions, _ = _sizes(args)
    report = dict(_env(args), runs=[])
    modes = [("weight_only", "row"), ("dynamic", "row"), ("dynamic", "tensor")]
    if args.dry_run:
        modes = modes[:1]                      # dynamic FP8 needs a GPU of capability >= 8.9
    for mode, gran in modes:
        pipe = build_pipe(args, "fp8", fp8_mode=mode, granularity=gran)
        pipe.precision = f"fp8-{mode}" + ("" if mode == "weight_only" else f"-{gran}")
        set_budget(pipe, args.budget)
        timed_methods(args, pipe, resolutions[-1], ["dense"], "planned", args.budget, report, "modes")
        del pipe
        if args.device == "cuda":
            torch.cuda.empty_cache()
    return report


def part_fraction(args):
    dev = torch.device(args.device)
    cap = parse_size(f"{args.fraction_gib}GiB")
    report = dict(_env(args), precision=args.precision, fraction_gib=args.fraction_gib, runs=[])
    if dev.type == "cuda":
        total = torch.cuda.get_device_properties(dev).total_memory
        torch.cuda.set_per_process_memory_fraction(cap / total, dev)
        report["fraction"] = cap / total
    import os
    report["alloc_conf"] = os.environ.get("PYTORCH_CUDA_ALLOC_CONF")
    _, _, _, resolutions, _ = _sizes(args)
    pipe = build_pipe(args, args.precision)
    # plan 1 GiB under the cap (what the memory model does not see: fragmentation), or the leanest plan
    res = resolutions[0]
    sched = pipe.spec.schedule(None if res == "testbed" else res, None if res == "testbed" else 5)
    nbytes = lambda mod: sum(p.numel() * p.element_size() for p in mod.parameters())  # noqa: E731
    lean = smallest_plan(pipe.transformer.cfg, sched, precision=args.precision,
                         text_len=pipe.transformer.cfg.text_maxlen, text_encoder_bytes=nbytes(pipe.text_encoder),
                         vae_bytes=nbytes(pipe.vae))
    plan_gib = min(args.fraction_gib, max(lean.peak_bytes / GiB + 0.05, args.fraction_gib - 1.0))
    budget = f"{plan_gib:.2f}GiB"
    set_budget(pipe, budget)
    timed_methods(args, pipe, res, ["dense"], f"under a {args.fraction_gib} GiB cap", budget, report,
                  f"fraction_{args.precision}_{args.fraction_gib}")
    report["completed"] = all("error" not in r for r in report["runs"])
    return report


def part_logits(args, attention_only=False):
    """bf16 vs FP8 logits on the first steps: clip 0 of the 720p schedule (45 steps, up to 3,600 tokens),
    teacher-forced with the bf16 run's bits, so both see the same inputs at every step."""
    from faststar.generate import generate
    from faststar.model.transformer import build_transformer
    from faststar.precision import fp8_attention_unavailable, quantize_fp8_, use_fp8_attention
    preset, _, _, resolutions, sched_kw = _sizes(args)
    dev = torch.device(args.device)
    if sched_kw is not None:
        from faststar.schedule import build_schedule
        sched = build_schedule(name="dry-run", **sched_kw).first_clips(1)
    else:
        from faststar.schedule import official_schedule
        sched = official_schedule(resolutions[0], 5).first_clips(1)
    m = build_transformer(preset, device="meta")
    m.cast_blocks_(torch.bfloat16)
    m.to_empty(device=dev)
    random_init_(m, 0)
    m.eval().requires_grad_(False)
    m.set_attention_backend("auto")
    text = torch.randn(128, m.cfg.text_channels, device=dev, generator=torch.Generator(dev).manual_seed(0))
    rec_ref: dict = {}
    ref = generate(m, sched, text, seed=0, record=rec_ref)
    teacher = {i: b for i, b in enumerate(ref.bits) if b is not None}
    report = dict(_env(args), schedule=sched.name, steps=len(sched.steps), comparisons={})

    def compare(tag):
        rec: dict = {}
        generate(m, sched, text, seed=0, record=rec, teacher_bits=teacher)
        rows = []
        for k in sorted(x for x in rec_ref if x.endswith(".logits_cond") or x.endswith(".logits_guided")):
            a, b = rec_ref[k], rec[k]
            d = (a - b).abs()
            rows.append(dict(name=k, max_abs=d.max().item(), mean_abs=d.mean().item(),
                             ref_abs_mean=a.abs().mean().item(), rel_l2=((a - b).norm() / a.norm()).item()))
        cond = [r for r in rows if r["name"].endswith("logits_cond")]
        report["comparisons"][tag] = dict(
            max_abs=max(r["max_abs"] for r in cond), mean_abs=sum(r["mean_abs"] for r in cond) / len(cond),
            mean_rel_l2=sum(r["rel_l2"] for r in cond) / len(cond), ref_abs_mean=cond[0]["ref_abs_mean"],
            per_step=rows)
        print(tag, {k: v for k, v in report["comparisons"][tag].items() if k != "per_step"}, flush=True)
        _write(args, "logits", report)

    compare("bf16 repeat (run-to-run floor)")
    mode = args.fp8_mode if dev.type == "cuda" else "weight_only"
    quantize_fp8_(m, mode=mode)
    compare(f"fp8 weights ({mode})")
    why = fp8_attention_unavailable(dev)
    if why is None:
        use_fp8_attention(m)
        compare(f"fp8 weights ({mode}) + fp8 attention (fa3)")
    else:
        report["fp8_attention"] = f"not run: {why}"
    return report


def part_fp8attn(args):
    from faststar.precision import fp8_attention_unavailable
    report = dict(_env(args), runs=[])
    why = fp8_attention_unavailable(torch.device(args.device))
    if why:
        report["skipped"] = why
        return report
    _, _, _, resolutions, _ = _sizes(args)
    pipe = build_pipe(args, "fp8", backend="fp8")
    pipe.precision = "fp8+fp8-attention"
    for res in resolutions:
        set_budget(pipe, args.budget)
        timed_methods(args, pipe, res, args.methods.split(","), "planned", args.budget, report, "fp8attn")
    return report


def part_testbed(args):
    """FP8 on the testbed: 6 prompts x --seeds, fp8 dense (and the `quality` preset in bf16) against bf16 dense of
    the same seed: pixel PSNR (uint8 frames) and the latent's relative L2 error. Text from cached MiniLM
    embeddings (--text-cache, made here with faststar.text.save_embeddings: the device has no MiniLM)."""
    import json as _json
    import faststar
    from faststar.metrics import psnr
    from faststar.text import load_text_encoder
    dev = args.device
    te = load_text_encoder(f"cached:{args.text_cache}")
    prompts = te.prompts[: args.videos] if args.dry_run else te.prompts
    seeds = range(1 if args.dry_run else args.seeds)
    mode = "weight_only" if args.dry_run else args.fp8_mode
    bf = FastStarPipeline.from_pretrained(device=dev, text_encoder=te)
    f8 = FastStarPipeline.from_pretrained(device=dev, text_encoder=te, fp8_mode=mode,
                                          precision="fp8" if not args.dry_run else "bf16")
    if args.dry_run:                                 # CPU: weight-only FP8 (dynamic needs a GPU)
        from faststar.precision import quantize_fp8_
        quantize_fp8_(f8.transformer, mode="weight_only")
    report = dict(_env(args), fp8_mode=mode, videos=[])
    for p in prompts:
        for seed in seeds:
            ref = bf(p, seed=seed, progress=False)
            row = dict(prompt=p, seed=seed)
            out = f8(p, seed=seed, progress=False)
            row["fp8_psnr"] = psnr(ref.frames, out.frames)
            row["fp8_latent_rel_l2"] = ((out.latent - ref.latent).norm() / ref.latent.norm()).item()
            faststar.apply(bf, "faststar", "quality")
            q = bf(p, seed=seed, progress=False)
            faststar.remove(bf)
            row["quality_psnr"] = psnr(ref.frames, q.frames)
            row["quality_latent_rel_l2"] = ((q.latent - ref.latent).norm() / ref.latent.norm()).item()
            report["videos"].append(row)
            print(_json.dumps(row), flush=True)
            _write(args, "testbed", report)
    v = report["videos"]
    for k in ("fp8_psnr", "quality_psnr", "fp8_latent_rel_l2", "quality_latent_rel_l2"):
        fin = [r[k] for r in v if r[k] != float("inf")]
        report[f"mean_{k}"] = sum(fin) / len(fin) if fin else float("inf")
        report[f"min_{k}" if "psnr" in k else f"max_{k}"] = (min if "psnr" in k else max)(r[k] for r in v)
    return report


def part_table(args):
    runs, extra = [], []
    for f in sorted(Path(args.out_dir).glob("*.json")):
        d = json.loads(f.read_text())
        for r in d.get("runs", []):
            runs.append(dict(r, gpu=d.get("gpu"), commit=d.get("commit"), date=d.get("date")))
        if "comparisons" in d:
            for tag, c in d["comparisons"].items():
                extra.append(f"| {tag} | {c['max_abs']:.4g} | {c['mean_abs']:.4g} | {c['mean_rel_l2']:.4g} | "
                             f"{c['ref_abs_mean']:.4g} |")
        if "mean_fp8_psnr" in d:
            extra.append(f"| testbed, {len(d['videos'])} videos: fp8 ({d['fp8_mode']}) vs bf16 dense | PSNR "
                         f"{d['mean_fp8_psnr']:.2f} dB (min {d['min_fp8_psnr']:.2f}) | latent rel L2 "
                         f"{d['mean_fp8_latent_rel_l2']:.4f} | quality preset: {d['mean_quality_psnr']:.2f} dB | "
                         f"{d['mean_quality_latent_rel_l2']:.4f} |")
        if "completed" in d:
            extra.append(f"| cap {d['fraction_gib']} GiB, {d['precision']} | completed: {d['completed']} | | | |")
    base = {(r["resolution"]): r for r in runs if r.get("engine") == "unchunked (today)" and "total_s" in r}
    bf = {(r["resolution"]): r for r in runs if r.get("engine") == "planned" and r.get("method") == "dense"
          and r.get("precision") == "bf16" and "total_s" in r}
    lines = ["| res | precision | method | engine | budget | text s | transformer s | decode s | total s | "
             "peak GiB | planned GiB | vs bf16 dense | vs today's dense | reference peak |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        if "error" in r:
            lines.append(f"| {r['resolution']} | {r['precision']} | {r['method']} | {r.get('engine')} | "
                         f"{r.get('budget')} | error: {r['error'][:80]} |||||||||")
            continue
        b, d = base.get(r["resolution"]), bf.get(r["resolution"])
        f = lambda v: "" if v is None else f"{v:.2f}"  # noqa: E731
        lines.append(f"| {r['resolution']} | {r['precision']} | {r['method']} | {r.get('engine')} | "
                     f"{r.get('budget') or '-'} | {f(r['text_s'])} | {f(r['transformer_s'])} | {f(r['decode_s'])} | "
                     f"{f(r['total_s'])} | {f(r['peak_gib'])} | {f(r['planned_peak_gib'])} | "
                     f"{f(d['total_s'] / r['total_s']) + 'x' if d else ''} | "
                     f"{f(b['total_s'] / r['total_s']) + 'x' if b else ''} | "
                     f"{REFERENCE_PEAK.get(r['resolution'], '')} |")
    if extra:
        lines += ["", "| check | max abs | mean abs | mean rel L2 | mean abs bf16 logit |", "|---|---|---|---|---|"]
        lines += extra
    gpus = sorted({str(r.get("gpu")) for r in runs})
    text = f"GPU {', '.join(gpus)}; commits {sorted({str(r.get('commit')) for r in runs})}\n\n" + "\n".join(lines)
    (Path(args.out_dir) / "table.md").write_text(text + "\n")
    print(text)
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", required=True,
                    choices=["engine", "modes", "fraction", "logits", "fp8attn", "testbed", "table"])
    ap.add_argument("--text-cache", default=".carry/minilm_eval6.safetensors")
    ap.add_argument("--seeds", type=int, default=6)
    ap.add_argument("--videos", type=int, default=2, help="dry run: prompts used")
    ap.add_argument("--out-dir", default="out/memory_fp8")
    ap.add_argument("--precision", default="bf16", choices=["bf16", "fp8"])
    ap.add_argument("--fp8-mode", default="dynamic", choices=["dynamic", "weight_only"])
    ap.add_argument("--res", default="720p,480p")
    ap.add_argument("--methods", default=",".join(PRESETS))
    ap.add_argument("--budget", default=None, help="memory budget of the planned runs (default 24GB bf16, 16GB fp8)")
    ap.add_argument("--baseline", action="store_true", help="also time today's unchunked engine, dense")
    ap.add_argument("--lean", action="store_true", help="also run dense under the smallest plan")
    ap.add_argument("--fraction-gib", type=float, default=24)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny config, testbed schedule: checks the script")
    args = ap.parse_args()
    if args.dry_run:
        args.device = "cpu"
        args.fp8_mode = "weight_only"
    if args.budget is None:
        args.budget = "24GB" if args.precision == "bf16" else "16GB"
    if args.part != "table" and args.device == "cuda":
        print(torch.cuda.get_device_name(), torch.__version__, flush=True)
    fn = dict(engine=part_engine, modes=part_modes, fraction=part_fraction, logits=part_logits,
              fp8attn=part_fp8attn, testbed=part_testbed, table=part_table)[args.part]
    t = time.perf_counter()
    report = fn(args)
    if report is not None:
        report["part_wall_s"] = time.perf_counter() - t
        name = {"engine": f"engine_{args.precision}", "fraction": f"fraction_{args.precision}_{args.fraction_gib}"
                }.get(args.part, args.part)
        _write(args, name, report)
    print(f"part {args.part} done in {time.perf_counter() - t:.0f}s", flush=True)


if __name__ == "__main__":
    main()
