"""Command line: faststar generate | serve | demo | inspect | check-reference | bench | eval.

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


def _load_pipe(a, device=None):
    from .pipeline import FastStarPipeline
    return FastStarPipeline.from_pretrained(a.model_dir, resolution=a.resolution or "720p", device=device or a.device,
                                            dtype=a.dtype, attention=a.attention, text_encoder=a.text_encoder,
                                            revision=getattr(a, "revision", None), precision=getattr(a, "precision", "bf16"),
                                            max_memory=getattr(a, "max_memory", None))


def _cmd_generate_batch(a) -> int:
    """``--prompts FILE --out-dir DIR``: faststar.batch does the work (it checks every line before loading)."""
    from .batch import run_batch
    from .errors import UserError
    if a.parallel:
        raise UserError("--parallel splits one video; a batch (--prompts) splits its lines over the ranks instead")
    if a.prompt or a.image or a.video:
        raise UserError("--prompts takes the prompts (and images) from its file; drop --prompt/--image/--video")
    if not a.out_dir:
        raise UserError("--prompts needs --out-dir")

    def load(device):
        with _progress_bars(not a.quiet):
            return _load_pipe(a, device)
    r = run_batch(a.prompts, a.out_dir, load_pipe=load, device=a.device, progress=not a.quiet,
                  generate_kwargs=dict(duration=a.duration, resolution=a.resolution))
    if r["rank"] == 0:
        print(f"batch {a.prompts}: {r['jobs']} jobs over {r['world']} rank(s): {r['done']} generated, "
              f"{r['skipped']} already there, in {a.out_dir}")
    return 0


def _parallel_layout(a):
    """(layout, device) for ``--parallel``: torchrun's ranks, checked against the world size before loading."""
    if not a.parallel:
        return None, None
    from .batch import dist_env, rank_device
    from .errors import UserError
    from .parallel import make_parallel
    device = rank_device(a.device, dist_env()[2])
    try:
        return make_parallel(a.parallel, device), device
    except ValueError as e:
        raise UserError(f"--parallel: {e}") from None


def _cmd_generate(a) -> int:
    """Check every input (no model loaded yet), load, generate, write; failures raise to ``errors.run_command``."""
    from . import accel
    from .errors import UserError
    from .inputs import check_generate_inputs
    from .io import write_video
    if a.prompts:
        return _cmd_generate_batch(a)
    if a.prompt is None:
        raise UserError("give --prompt (one video) or --prompts FILE --out-dir DIR (a batch)")
    checked = check_generate_inputs(a)          # one UserError naming the flag, before any model loads
    par, device = _parallel_layout(a)
    with _progress_bars(not a.quiet):
        pipe = _load_pipe(a) if device is None else _load_pipe(a, device)
    if checked.accelerator is not None:
        accel.apply(pipe, checked.accelerator)
    _warn_long_prompt(pipe, a.prompt, a.duration)
    out = pipe(a.prompt, image=a.image, video=a.video, duration=a.duration, resolution=a.resolution,
               seed=a.seed, progress=not a.quiet, parallel=par)
    if par is not None and par.rank != 0:
        return 0                        # every rank holds the video; rank 0 writes it
    path = checked.output
    write_video(path, out.frames, fps=out.fps)
    if a.save_masks:
        from .accel.viz import mask_video
        sched = pipe.spec.schedule(a.resolution, a.duration)
        mpath = path.with_name(path.stem + "_masks" + path.suffix)
        write_video(mpath, mask_video(out.masks, sched, out.frames), fps=out.fps)
        print(f"masks: {mpath}")
    t = out.timings
    acc_name = out.accelerator.get("method")
    if out.accelerator.get("preset"):
        acc_name += f" (preset {out.accelerator['preset']})"
    print(f"wrote {path}: {out.frames.shape[0]} frames {out.frames.shape[2]}x{out.frames.shape[1]} @ {out.fps} fps, "
          f"seed {out.seed}, schedule {out.schedule}, accelerator {acc_name}")
    print("time: " + ", ".join(f"{k[:-2]} {v:.2f}s" for k, v in t.items()))
    s = out.summary
    print(f"tokens run {s['tokens_run']:,} of {s['tokens_dense']:,}; FLOP-model speedup {s['flop_speedup']:.2f}x")
    if "peak_gpu_gib" in s:
        plan = s.get("memory_plan")
        print(f"peak GPU memory {s['peak_gpu_gib']:.1f} GiB (text, transformer, decode; {s['precision']})"
              + (f", planned {plan['peak_gib']:.1f} GiB" if plan else ""))
    return 0


class _progress_bars:
    """With ``on=False``, silence the loaders' own progress bars (transformers, huggingface_hub) for the block."""

    def __init__(self, on: bool):
        self.on, self.undo = on, None

    def __enter__(self):
        if not self.on:
            try:
                from transformers.utils import logging as tlog
            except ImportError:
                return self
            if tlog.is_progress_bar_enabled():
                tlog.disable_progress_bar()
                self.undo = tlog.enable_progress_bar
        return self

    def __exit__(self, *exc):
        if self.undo is not None:
            self.undo()
        return False


def _warn_long_prompt(pipe, prompt: str, duration) -> None:
    """One line on stderr when the text encoder will cut the prompt (it reads a fixed number of tokens)."""
    from .inputs import prompt_overflow
    from .text import format_prompt
    text = format_prompt(prompt, duration or pipe.spec.default_duration) if pipe.spec.official_prompt_format \
        else prompt
    over = prompt_overflow(pipe.text_encoder, text)
    if over:
        n, limit = over
        print(f"faststar generate: warning: the prompt is {n:,} tokens; the text encoder reads the first {limit:,} "
              f"and ignores the rest", file=sys.stderr)


def _cmd_inspect(a) -> int:
    from .pipeline import TESTBED_DIR, inspect_model_dir
    rep = inspect_model_dir(a.model_dir or TESTBED_DIR, a.resolution)
    print(f"model folder {rep['folder']} (layout: {rep.get('kind', '?')})")
    for k, v in rep["found"].items():
        print(f"  ok  {k}: {v}")
    for p in rep["problems"]:
        print(f"  PROBLEM {p}")
    return 1 if rep["problems"] else 0


def _cmd_serve(a) -> int:
    from .web import serve
    pipe = _load_pipe(a)
    print(f"faststar studio on http://{a.host}:{a.port} (model {pipe.spec.name}, device {pipe.device}); Ctrl+C stops")
    serve(pipe, host=a.host, port=a.port, preview_every=a.preview_every)
    return 0


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
    return main_eval(out=a.out, methods=a.methods, prompts=a.prompts, seeds=a.seeds, quick=a.quick, merge=a.merge,
                     model_dir=a.model_dir, device=a.device, text_encoder=a.text_encoder, metric=a.metric)


class _Parser(argparse.ArgumentParser):
    """argparse with the one-line error of the rest of the CLI (the usage block is what --help is for)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def _flag_value(argv, flag: str):
    """The value of ``flag`` in a raw argument list (``--flag V`` or ``--flag=V``), or None."""
    for i, x in enumerate(argv):
        if x == flag and i + 1 < len(argv):
            return argv[i + 1]
        if x.startswith(flag + "="):
            return x[len(flag) + 1:]
    return None


def build_parser(model_dir=None, describe_sizes: bool = True) -> argparse.ArgumentParser:
    """The parser. ``model_dir``: the folder a command line names, so that --resolution / --duration list the
    sizes of that model (or of the embedded testbed), not sizes it does not have; ``describe_sizes=False`` skips
    reading it (no help will be shown)."""
    from .inputs import seed_arg, size_help
    if not describe_sizes:
        size_help = lambda model_dir, what: None    # noqa: E731
    from . import __version__
    p = _Parser(prog="faststar", description=__doc__)
    p.add_argument("--version", action="version", version=f"faststar {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True)

    g = sub.add_parser("generate", help="generate a video (text-to-video, image-to-video, continuation)")
    g.add_argument("--prompt", default=None)
    g.add_argument("--prompts", default=None,
                   help="batch: a JSONL file, one {prompt, image?, seed?, method?} a line (resumable; under "
                        "torchrun each rank takes every N-th line)")
    g.add_argument("--out-dir", default=None, help="batch: the folder of the outputs (00000.mp4 + .json, ...)")
    g.add_argument("--model-dir", default=None,
                   help="model folder or Hub id, e.g. FoundationVision/InfinityStar (default: the testbed model)")
    g.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit) of a Hub id")
    g.add_argument("--image", default=None, help="image-to-video: the first frame")
    g.add_argument("--video", default=None, help="video continuation: its first frames are kept, the rest generated (release models: --duration 10)")
    g.add_argument("--duration", type=int, default=None, help=size_help(model_dir, "duration"))
    g.add_argument("--resolution", default=None, help=size_help(model_dir, "resolution"))
    g.add_argument("--seed", type=seed_arg, default=0, help="an integer 0..2**63-2 (same seed, same video)")
    g.add_argument("--output", "-o", default="video.mp4", help=".mp4, .mov, .mkv or .gif (default: video.mp4)")
    g.add_argument("--mkdir", action="store_true", help="create the output's folder if it does not exist")
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
    g.add_argument("--preset", default=None, help="accelerator preset, e.g. quality, balanced, fast-hq, fast, paper")
    g.add_argument("--save-masks", action="store_true", help="also write a video of the pruning masks")
    g.add_argument("--parallel", default=None,
                   help="split one video over torchrun ranks: cfg = the two guidance branches on 2 ranks, "
                        "sp = each step's tokens over P ranks (Ulysses; P divides the kv heads, 8 for the 8B)")
    g.add_argument("--quiet", action="store_true", help="no progress bars (the loaders' included)")
    g.set_defaults(fn=_cmd_generate)

    w = sub.add_parser("serve", help="a web studio (Gradio) with a live coarse-to-fine preview")
    w.add_argument("--model-dir", default=None,
                   help="model folder or Hub id, e.g. FoundationVision/InfinityStar (default: the testbed)")
    w.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit) of a Hub id")
    w.add_argument("--port", type=int, default=7860)
    w.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    w.add_argument("--resolution", default=None, help="720p or 480p (official models)")
    w.add_argument("--device", default="auto")
    w.add_argument("--dtype", default=None)
    w.add_argument("--attention", default="auto")
    w.add_argument("--text-encoder", default=None)
    w.add_argument("--preview-every", type=int, default=2, help="a preview every this many scales")
    w.set_defaults(fn=_cmd_serve)

    i = sub.add_parser("inspect", help="check a model folder: what is missing or mismatched")
    i.add_argument("model_dir", nargs="?", default=None, help="model folder (default: the embedded testbed)")
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
    e.add_argument("--metric", default="psnr",
                   choices=["psnr", "ssim", "latent_psnr", "detail_retention", "latent_detail_retention"],
                   help="quality axis of pareto.png (default psnr)")
    e.set_defaults(fn=_cmd_eval)
    return p


def main(argv=None) -> int:
    """Run one command. Errors a user can act on (a bad value, a missing or corrupt file, no GPU, out of memory,
    NaN) print one line and return 2 (``faststar.errors``); ``FASTSTAR_DEBUG=1`` shows the traceback instead."""
    from .errors import guard_std_fds, run_command
    guard_std_fds()
    argv = sys.argv[1:] if argv is None else [str(x) for x in argv]
    want_help = any(x in ("-h", "--help") for x in argv)
    args = build_parser(_flag_value(argv, "--model-dir"), describe_sizes=want_help).parse_args(argv)
    return run_command(args.cmd, args.fn, args)


if __name__ == "__main__":
    sys.exit(main())
