"""Command line: faststar generate | demo | inspect | check-reference | bench | eval.

Flags map one to one onto pipeline / config fields; the logic lives in the library.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _cmd_check_reference(a) -> int:
    from .reference import check_case, summarize
    worst_fail = False
    for case in a.case:
        try:
            results = check_case(case)
        except (FileNotFoundError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"reference case {case}: {len(results)} tensors compared")
        print(f"  {'quantity':22s} {'count':>5s} {'max abs err':>12s} {'atol':>9s}  worst tensor")
        for r in summarize(results):
            flag = "ok  " if r["ok"] else "FAIL"
            print(f"{flag}{r['quantity']:22s} {r['count']:5d} {r['max_abs_err']:12.3e} {r['atol']:9.1e}  {r['worst']}")
        bad = [r for r in results if not r["ok"]]
        for r in bad[:20]:
            print(f"  FAIL {r['name']}: max abs err {r['max_abs_err']:.3e} > {r['atol']:.1e} {r.get('error', '')}")
        worst_fail |= bool(bad)
    print("FAILED" if worst_fail else "all within tolerance")
    return 1 if worst_fail else 0


def _load_pipe(a):
    from .pipeline import FastStarPipeline
    return FastStarPipeline.from_pretrained(a.model_dir, resolution=a.resolution or "720p", device=a.device,
                                            dtype=a.dtype, attention=a.attention, text_encoder=a.text_encoder,
                                            precision=a.precision, max_memory=a.max_memory)


def _accelerator(a):
    """The accelerator that ``--accel`` / ``--preset`` name, built before any model loads (a typo fails at once).
    ``--accel`` takes a method (``faststar``) or a whole method string as ``faststar eval`` does
    (``faststar:quality+anchors=0``); ``--preset`` names the preset of a bare method. None for dense."""
    from . import accel
    if not a.accel:
        if a.preset:
            raise ValueError(f"--preset {a.preset!r} needs --accel (for example --accel faststar)")
        return None
    if a.accel == "dense" and not a.preset:
        return None
    try:
        return accel.make_accelerator(a.accel, a.preset)
    except TypeError as e:            # unknown knob names
        raise ValueError(str(e)) from None


def _cmd_generate(a) -> int:
    from . import accel
    from .io import check_video_path, write_video
    try:                # a bad output path or accelerator fails now, not after loading and generating
        check_video_path(a.output)
    except ValueError as e:
        print(f"error: --output: {e}", file=sys.stderr)
        return 2
    try:
        acc = _accelerator(a)
    except ValueError as e:
        print(f"error: --accel: {e}", file=sys.stderr)
        return 2
    try:
        pipe = _load_pipe(a)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: cannot load the model: {e}", file=sys.stderr)
        return 2
    if acc is not None:
        accel.apply(pipe, acc)
    try:
        out = pipe(a.prompt, image=a.image, video=a.video, duration=a.duration, resolution=a.resolution,
                   seed=a.seed, progress=not a.quiet)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    path = Path(a.output)
    write_video(path, out.frames, fps=out.fps)
    if a.save_masks:
        from .accel.viz import mask_video
        sched = pipe.spec.schedule(a.resolution, a.duration)
        mpath = path.with_name(path.stem + "_masks" + path.suffix)
        write_video(mpath, mask_video(out.masks, sched, out.frames), fps=out.fps)
        print(f"masks: {mpath}")
    t = out.timings
    print(f"wrote {path}: {out.frames.shape[0]} frames {out.frames.shape[2]}x{out.frames.shape[1]} @ {out.fps} fps, "
          f"seed {out.seed}, schedule {out.schedule}, accelerator {out.accelerator.get('method')}")
    print("time: " + ", ".join(f"{k[:-2]} {v:.2f}s" for k, v in t.items()))
    s = out.summary
    print(f"tokens run {s['tokens_run']:,} of {s['tokens_dense']:,}; FLOP-model speedup {s['flop_speedup']:.2f}x")
    if "peak_gpu_gib" in s:
        plan = s.get("memory_plan")
        print(f"peak GPU memory {s['peak_gpu_gib']:.1f} GiB (text, transformer, decode; {s['precision']})"
              + (f", planned {plan['peak_gib']:.1f} GiB" if plan else ""))
    return 0


def _cmd_inspect(a) -> int:
    from .pipeline import inspect_model_dir
    rep = inspect_model_dir(a.model_dir, a.resolution)
    print(f"model folder {rep['folder']} (layout: {rep.get('kind', '?')})")
    for k, v in rep["found"].items():
        print(f"  ok  {k}: {v}")
    for p in rep["problems"]:
        print(f"  PROBLEM {p}")
    return 1 if rep["problems"] else 0


def _cmd_bench(a) -> int:
    from .bench import run_bench
    run_bench(resolutions=a.res.split(","), duration=a.duration, methods=a.methods.split(","), preset=a.preset,
              backend=a.attention, with_vae=a.vae, out_json=a.out, warmup=a.warmup,
              precisions=a.precision.split(","), max_memory=a.max_memory, fp8_mode=a.fp8_mode)
    return 0


def _cmd_demo(a) -> int:
    from .demo import run_demo
    run_demo(a.out, device=a.device)
    return 0


def _cmd_eval(a) -> int:
    from .eval import main_eval
    return main_eval(a)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="faststar", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    g = sub.add_parser("generate", help="generate a video (text-to-video, image-to-video, continuation)")
    g.add_argument("--prompt", required=True)
    g.add_argument("--model-dir", default=None, help="model folder (default: the embedded testbed model)")
    g.add_argument("--image", default=None, help="image-to-video: the first frame")
    g.add_argument("--video", default=None, help="video continuation: the first 5 s (official 480p, duration 10)")
    g.add_argument("--duration", type=int, default=None, help="seconds (official: 5 or 10)")
    g.add_argument("--resolution", default=None, help="720p or 480p (official models)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--output", "-o", default="out/video.mp4", help=".mp4 or .gif")
    g.add_argument("--device", default="auto")
    g.add_argument("--dtype", default=None, help="bf16 (GPU default) or fp32 (CPU default)")
    g.add_argument("--attention", default="auto", help="auto, sdpa, fa3 or fp8 (fa3's FP8 forward where available)")
    g.add_argument("--precision", default="bf16", choices=["bf16", "fp8", "auto"],
                   help="transformer weights: bf16, fp8 (torchao float8, GPUs of compute capability >= 8.9) or auto")
    g.add_argument("--max-memory", default=None, metavar="SIZE",
                   help="GPU memory budget, e.g. 24GB: chunking and placement are planned to fit, or it fails first")
    g.add_argument("--text-encoder", default=None,
                   help="override the text encoder: t5:<folder>, minilm, cached:<file.safetensors>")
    g.add_argument("--accel", default=None,
                   help="dense, faststar, fastvar, stagevar, skip, random; or a method string as in eval, "
                        "e.g. faststar:quality+anchors=0")
    g.add_argument("--preset", default=None, help="accelerator preset, e.g. quality, balanced, fast-hq, fast")
    g.add_argument("--save-masks", action="store_true", help="also write a video of the pruning masks")
    g.add_argument("--quiet", action="store_true")
    g.set_defaults(fn=_cmd_generate)

    i = sub.add_parser("inspect", help="check a model folder: what is missing or mismatched")
    i.add_argument("model_dir")
    i.add_argument("--resolution", default="720p")
    i.set_defaults(fn=_cmd_inspect)

    c = sub.add_parser("check-reference", help="run reference case folders (golden format) and compare")
    c.add_argument("case", nargs="+")
    c.set_defaults(fn=_cmd_check_reference)

    b = sub.add_parser("bench", help="GPU latency benchmark at full size with random weights")
    b.add_argument("--res", default="720p,480p")
    b.add_argument("--duration", type=int, default=5)
    b.add_argument("--methods", default="dense")
    b.add_argument("--preset", default="infinitystar-8b")
    b.add_argument("--attention", default="auto")
    b.add_argument("--vae", action="store_true", help="also time the VAE decode (end to end)")
    b.add_argument("--warmup", default="all", choices=["all", "new"],
                   help="warm up every method before timing it, or only one that brings a new kind of step")
    b.add_argument("--out", default="bench.json")
    b.add_argument("--precision", default="bf16", help="comma list of bf16, fp8: each timed in the same run")
    b.add_argument("--fp8-mode", default="dynamic", choices=["dynamic", "weight_only"])
    b.add_argument("--max-memory", default=None, metavar="SIZE",
                   help="plan chunking / KV layout for this budget (memory planner) instead of the unchunked engine")
    b.set_defaults(fn=_cmd_bench)

    d = sub.add_parser("demo", help="generate sample videos with the embedded testbed, dense and FastSTAR")
    d.add_argument("--out", default="out/demo")
    d.add_argument("--device", default="auto")
    d.set_defaults(fn=_cmd_demo)

    e = sub.add_parser("eval", help="quality and speed of accelerators against dense")
    e.add_argument("--out", default="out/eval")
    e.add_argument("--model-dir", default=None)
    e.add_argument("--methods", default=None, help="comma list of method[:preset] (default: a standard set)")
    e.add_argument("--prompts", default=None, help="JSONL file of {prompt, image?}")
    e.add_argument("--seeds", default="0,1")
    e.add_argument("--quick", action="store_true", help="a reduced set that finishes on a CPU in minutes")
    e.add_argument("--device", default="auto")
    e.add_argument("--text-encoder", default=None, help="override, e.g. cached:<file.safetensors>")
    e.add_argument("--merge", nargs="+", default=None, metavar="RESULTS_JSON",
                   help="generate nothing: merge results.json files of runs on parts of a method list into --out")
    e.set_defaults(fn=_cmd_eval)
    return p


def main(argv=None) -> int:
    """Run one command. Errors a user can act on (a bad value, a missing file, no GPU, out of memory) print one
    line and return 2; ``FASTSTAR_DEBUG=1`` shows the traceback instead."""
    import os
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        if os.environ.get("FASTSTAR_DEBUG"):
            raise
        kind = "" if isinstance(e, ValueError) else f"{type(e).__name__}: "
        print(f"faststar {args.cmd}: error: {kind}{e}  (FASTSTAR_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"faststar {args.cmd}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
