"""GPU latency benchmark at full size with random weights (timing does not depend on weight values).

Builds the named transformer preset (default the released 8B architecture) directly on the GPU in bf16, runs the
official schedules dense and with each requested accelerator, and reports per-step / per-scale device time
(CUDA events), total transformer time, optional VAE decode time, peak memory and achieved TFLOP/s from the FLOP
model. Every method is measured in the same process after a warm-up run, and reported as ratios against dense.
"""
from __future__ import annotations

import json
import platform
import subprocess
import time
from pathlib import Path

import torch

from .generate import generate
from .model.transformer import STARTransformer, build_transformer
from .sampling import GuidanceConfig
from .schedule import official_schedule, schedule_flops
from .vae.model import inference_decode


@torch.no_grad()
def random_init_(module: torch.nn.Module, seed: int = 0, std: float = 0.02) -> None:
    """Fill a (possibly just materialised) module with random values: norms 1, biases 0, weights N(0, std^2)."""
    gen = None
    for name, p in module.named_parameters():
        if gen is None or gen.device != p.device:
            gen = torch.Generator(device=p.device).manual_seed(seed)
        if name.endswith("bias"):
            p.zero_()
        elif p.ndim == 1 or "norm" in name or name.endswith("gamma"):
            p.fill_(1.0)
        else:
            p.normal_(0.0, std, generator=gen)


def build_random_transformer(preset: str = "infinitystar-8b", device="cuda", dtype=torch.bfloat16,
                             backend: str = "auto", seed: int = 0, compile: bool = True,
                             graphs: bool = True, precision: str = "bf16", fp8_mode: str = "dynamic",
                             fp8_granularity: str = "row") -> STARTransformer:
    """precision "fp8": the random bf16 weights quantized (``faststar.precision``), as loading a checkpoint does;
    backend "fp8": fa3's FP8 attention where available."""
    model = build_transformer(preset, device="meta")
    model.cast_blocks_(dtype)
    model.to_empty(device=device)
    random_init_(model, seed)
    model.eval().requires_grad_(False)
    if precision == "fp8":
        from .precision import quantize_fp8_
        quantize_fp8_(model, mode=fp8_mode, granularity=fp8_granularity)
    else:
        model.fuse_projections_()
    model.set_attention_backend("auto" if backend == "fp8" else backend)
    if backend == "fp8":
        from .precision import use_fp8_attention
        use_fp8_attention(model)
    from .model.transformer import compile_kernels
    compile_kernels(compile)
    if graphs:
        from .model.graphs import enable_cuda_graphs
        enable_cuda_graphs(model)
    return model


def build_random_vae(dev, seed: int, cfg=None):
    """The video VAE (release widths unless ``cfg``) built on the meta device, materialised on ``dev`` and filled by
    ``random_init_``: timing does not depend on the weights' values."""
    from .vae.model import VideoVAE, vae_config
    with torch.device("meta"):
        vae = VideoVAE(cfg if cfg is not None else vae_config("infinitystar"))
    vae.to_empty(device=dev)
    random_init_(vae, seed)
    return vae.eval().requires_grad_(False)


def _git_commit() -> str:
    import os
    if os.environ.get("FASTSTAR_COMMIT"):
        return os.environ["FASTSTAR_COMMIT"]
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True,
                                       stderr=subprocess.DEVNULL).strip()
    except Exception:
        return "unknown"


def per_scale(stats: list[dict]) -> list[dict]:
    out: dict[int, dict] = {}
    for s in stats:
        d = out.setdefault(s["scale"], dict(scale=s["scale"], thw=s["thw"], tokens=s["tokens"], reps=0,
                                            tokens_run=0, time_ms=0.0, flops=0.0, flops_dense=0.0))
        d["reps"] += 1
        d["tokens_run"] += s["tokens_run"]
        d["time_ms"] += 1000 * s["time_s"]
        d["flops"] += s["flops"]
        d["flops_dense"] += s["flops_dense"]
    return list(out.values())


def plan_kinds(acc, schedule, model_cfg) -> set:
    """The kinds of step a method runs ("dense", "pruned", "single-branch", "pruned+single-branch"): the shapes
    that compile and capture on first use. ``run_bench(warmup="new")`` warms a method up only when it brings a kind
    no earlier method of the run has brought (compiled kernels take dynamic token counts after their first
    recompile, so a new keep ratio needs no new warm-up; a new guidance batch size does)."""
    if acc is None:
        return {"dense"}
    acc.setup(model_cfg)
    kinds = set()
    for st in schedule.steps:
        b = acc.budget(schedule, st)
        if not b.run:
            continue
        pruned = b.tokens is not None and b.tokens < st.scale.num_tokens
        single = acc.guidance.branches(schedule, st.scale) == 1
        kinds.add("pruned+single-branch" if pruned and single else "pruned" if pruned
                  else "single-branch" if single else "dense")
    return kinds


def time_one(model, schedule, text, *, seed: int, accelerator=None, guidance=GuidanceConfig(),
             vae=None, decode_chunk: int | None = None, decode_lean: bool = False) -> dict:
    dev = model.device
    torch.cuda.synchronize(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    out = generate(model, schedule, text, seed=seed, guidance=guidance, accelerator=accelerator, time_steps=True)
    torch.cuda.synchronize(dev)
    wall = time.perf_counter() - t0
    res = dict(transformer_s=wall, text_pass_s=out.text_time_s,
               steps_device_s=sum(s["time_s"] for s in out.stats),
               peak_gib=torch.cuda.max_memory_allocated(dev) / 2 ** 30, **out.summary())
    res["tflops_achieved"] = res["flops"] / wall / 1e12
    res["per_step"] = [{k: v for k, v in s.items() if k in ("step", "scale", "thw", "rep", "tokens", "tokens_run",
                                                            "branches", "flops", "time_s")} for s in out.stats]
    res["per_scale"] = per_scale(out.stats)
    if vae is not None:
        torch.cuda.synchronize(dev)
        t1 = time.perf_counter()
        video = inference_decode(vae, out.latent.to(dev), chunk=decode_chunk, lean=decode_lean)
        torch.cuda.synchronize(dev)
        res["vae_decode_s"] = time.perf_counter() - t1
        res["frames"] = int(video.shape[2])
        res["peak_gib_with_vae"] = torch.cuda.max_memory_allocated(dev) / 2 ** 30
        del video
    res["end_to_end_s"] = res["transformer_s"] + res.get("vae_decode_s", 0.0)
    res["peak_gib_whole_run"] = torch.cuda.max_memory_allocated(dev) / 2 ** 30     # generation + decode
    return res


def run_bench(resolutions=("720p", "480p"), duration: int = 5, methods=("dense",), preset: str = "infinitystar-8b",
              backend: str = "auto", text_len: int = 128, seed: int = 0, warmup: bool | str = True,
              with_vae: bool = False,
              out_json: str | Path | None = None, log=print, compile: bool = True, graphs: bool = True,
              precisions=("bf16",), max_memory=None, fp8_mode: str = "dynamic") -> dict:
    """Every method at every resolution, once per precision (``"bf16"``, ``"fp8"``: one model at a time, built from
    the same random bf16 weights). ``max_memory``: the memory planner's chunking and KV layout for that budget
    (``faststar.memory``) instead of the unchunked engine. Speedups are against dense of the same precision and
    (``speedup_vs_bf16_dense``) against bf16 dense of the same run."""
    from .accel import check_method_specs
    from .precision import PRECISIONS, check_fp8
    methods = check_method_specs(methods)           # a typo fails before the 8B model is built
    bad = [p for p in precisions if p not in PRECISIONS or p == "auto"]
    if bad:
        raise ValueError(f"unknown precision {bad}; bench takes a comma list of bf16, fp8")
    if not torch.cuda.is_available():
        raise RuntimeError("faststar bench needs a CUDA GPU (it runs the full-size model with random weights)")
    dev = torch.device("cuda")
    if "fp8" in precisions:
        check_fp8(dev)                              # before the first model is built
    vae = None
    if with_vae:
        vae = build_random_vae(dev, seed).half_decoder_()     # as the pipeline decodes on a GPU
    report = dict(gpu=torch.cuda.get_device_name(dev), torch=torch.__version__, python=platform.python_version(),
                  commit=_git_commit(), date=time.strftime("%Y-%m-%d"), preset=preset, backend=backend,
                  compiled_kernels=compile, cuda_graphs=graphs, precisions=list(precisions), fp8_mode=fp8_mode,
                  max_memory=max_memory, text_tokens=text_len, runs=[])
    bf16_dense: dict = {}
    for prec in precisions:
        model = None
        torch.cuda.empty_cache()
        t_build = time.perf_counter()
        model = build_random_transformer(preset, dev, backend=backend, seed=seed, compile=compile, graphs=graphs,
                                         precision=prec, fp8_mode=fp8_mode)
        log(f"built {preset} ({prec}) on {torch.cuda.get_device_name(dev)} in {time.perf_counter() - t_build:.1f}s, "
            f"attention backend {model.attn_backend}, compiled kernels {compile}, CUDA graphs {graphs}")
        report["backend"] = model.attn_backend
        _bench_precision(model, prec, report, bf16_dense, resolutions, duration, methods, text_len, seed, warmup,
                         vae, max_memory, out_json, log)
        del model
        if out_json:
            Path(out_json).write_text(json.dumps(report, indent=1))
    if out_json:
        plot_bench(report, Path(out_json).with_suffix(".png"))
    return report


def _bench_precision(model, prec, report, bf16_dense, resolutions, duration, methods, text_len, seed, warmup, vae,
                     max_memory, out_json, log):
    dev = model.device
    gen = torch.Generator(device=dev).manual_seed(seed)
    text = torch.randn(text_len, model.cfg.text_channels, device=dev, generator=gen)
    for res_name in resolutions:
        schedule = official_schedule(res_name, duration)
        fl = schedule_flops(schedule, model.cfg, text_len=text_len)
        plan = None
        if max_memory is not None:
            from .memory import apply_plan, plan_memory
            plan = plan_memory(max_memory, model.cfg, schedule, precision=prec, text_len=text_len,
                               text_encoder_bytes=0, decode=vae is not None)
            apply_plan(model, plan)
            model.release_cache()
            log(f"[{res_name}] {plan.summary()}")
        dchunk = plan.decode_chunk if plan is not None else None
        dlean = plan is not None and plan.decode_lean
        if warmup:
            t = time.perf_counter()
            time_one(model, schedule, text, seed=seed, vae=vae, decode_chunk=dchunk, decode_lean=dlean)
            log(f"[{res_name}] warm-up run {time.perf_counter() - t:.1f}s")
        dense_time = None
        seen: set = {"dense"}
        for m in methods:
            from .accel import accelerator_from_spec
            acc = accelerator_from_spec(m)
            name = m.split(":")[0].split("+")[0]
            kinds = plan_kinds(acc, schedule, model.cfg)
            warmed = False
            if acc is not None and (warmup is True or warmup == "all" or (warmup == "new" and kinds - seen)):
                # a method's own shapes (single-branch batch 1, pruned token counts) compile / capture on first use
                time_one(model, schedule, text, seed=seed, accelerator=acc)
                warmed = True
            seen |= kinds
            r = time_one(model, schedule, text, seed=seed, accelerator=acc, vae=vae, decode_chunk=dchunk,
                         decode_lean=dlean)
            r.update(resolution=res_name, duration=duration, method=m, flop_model_total=fl["total"],
                     own_warmup=warmed, accelerator=acc.describe() if acc is not None else None, precision=prec,
                     memory_plan=plan.describe() if plan is not None else None)
            if name == "dense" and dense_time is None:
                dense_time = r
                if prec == "bf16":
                    bf16_dense[res_name] = r
            if dense_time is not None:
                r["speedup_transformer"] = dense_time["transformer_s"] / r["transformer_s"]
                r["speedup_end_to_end"] = dense_time["end_to_end_s"] / r["end_to_end_s"]
            if res_name in bf16_dense:
                r["speedup_vs_bf16_dense"] = bf16_dense[res_name]["end_to_end_s"] / r["end_to_end_s"]
            log(f"[{res_name}] {prec} {m:24s} transformer {r['transformer_s']:7.2f}s  e2e {r['end_to_end_s']:7.2f}s  "
                f"peak {r['peak_gib_whole_run']:6.1f} GiB  {r['tflops_achieved']:6.1f} TFLOP/s  "
                f"flop-speedup {r['flop_speedup']:.2f}x  speedup {r.get('speedup_end_to_end', float('nan')):.2f}x")
            report["runs"].append(r)
            if out_json:
                Path(out_json).write_text(json.dumps(report, indent=1))


def _label(run: dict) -> str:
    prec = run.get("precision", "bf16")
    return run["method"] + ("" if prec == "bf16" else f" [{prec}]")


def plot_bench(report: dict, path: str | Path) -> Path:
    """Per-scale device time of every run (stacked by scale is unreadable at 30 scales: grouped bars), plus the
    end-to-end time of each method with its speedup over dense."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    runs = report["runs"]
    res_names = sorted({r["resolution"] for r in runs})
    fig, axes = plt.subplots(len(res_names), 2, figsize=(16, 4.5 * len(res_names)), squeeze=False,
                             gridspec_kw=dict(width_ratios=[3, 1]))
    for row, res in zip(axes, res_names):
        rs = [r for r in runs if r["resolution"] == res]
        scales = [s["scale"] for s in rs[0]["per_scale"]]
        w = 0.8 / len(rs)
        for i, r in enumerate(rs):
            t = {s["scale"]: s["time_ms"] / 1000 for s in r["per_scale"]}
            row[0].bar(np.arange(len(scales)) + i * w, [t.get(s, 0.0) for s in scales], w, label=_label(r))
        row[0].set_xticks(np.arange(len(scales)) + 0.4 - w / 2, scales)
        row[0].set_xlabel("scale index")
        row[0].set_ylabel("device time (s, all repetitions)")
        row[0].set_title(f"{res}: per-scale latency ({report.get('gpu', '')}, {report.get('preset', '')})")
        row[0].legend(fontsize=7)
        names = [_label(r).split("+update")[0] for r in rs]
        e2e = [r["end_to_end_s"] for r in rs]
        bars = row[1].barh(np.arange(len(rs)), e2e, color="tab:blue")
        for b, r in zip(bars, rs):
            row[1].text(b.get_width(), b.get_y() + b.get_height() / 2, f" {r.get('speedup_end_to_end', 1):.2f}x",
                        va="center", fontsize=8)
        row[1].set_yticks(np.arange(len(rs)), names, fontsize=7)
        row[1].invert_yaxis()
        row[1].set_xlabel("end to end (s)" if any("vae_decode_s" in r for r in rs) else "transformer (s)")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
