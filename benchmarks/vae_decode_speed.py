"""Speed of the full-size video VAE decode on one GPU under several variants, each checked against the baseline.

    FASTSTAR_COMMIT=<hash> PYTHONPATH=src python3 benchmarks/vae_decode_speed.py --out $OUT/vae_decode.json
    python benchmarks/vae_decode_speed.py --smoke --out /tmp/vae_smoke.json        # CPU check, tiny VAE

The VAE is ``VideoVAE(vae_config("infinitystar"))`` (release widths) with random weights filled by
``faststar.bench.random_init_`` (timing does not depend on weight values), rebuilt from the same seed for every
variant. It decodes a random latent of a 5 s video: 720p [1, 64, 21, 45, 80], 480p [1, 64, 21, 30, 53]. Each variant:
one warm-up decode (cuDNN autotuning / compilation happen there; its time is reported as ``warmup_s``), then
``--reps`` timed decodes with ``torch.cuda.synchronize`` around each; median seconds, peak GiB allocated during the
timed decodes, and the difference of the last output from the baseline's output over the whole video (max abs,
relative L2, and PSNR after the pipeline's uint8 mapping ``faststar.io.to_uint8``: clamp to [-1, 1], round
(x + 1) * 127.5).

A variant is a '+'-joined set of features (``baseline`` is the empty set):

    fp32      fp32 weights and activations, no autocast (convs in TF32, PyTorch's default): the accuracy yardstick
    cudnn     torch.backends.cudnn.benchmark = True (set before the warm-up)
    bf16      the whole VAE cast to bf16 and the latent in bf16, no autocast
    bf16dec   only the decoder in bf16 (VideoVAE.half_decoder_: scale and proj_up stay fp32 on an fp32 latent,
              decode() casts the decoder's input to its dtype): what the pipeline does on CUDA
    cl        channels_last_3d: the 5-D conv weights, the latent and each decoder input chunk
    chunk4    chunk_plan = decode_chunk_plan(T', 4) (the default plan is decode_chunk 2)
    chunk6    chunk_plan = decode_chunk_plan(T', 6)
    compile   vae.decoder.compile(dynamic=False) (torch.compile in place); the compile time is in warmup_s

The baseline is what ``faststar.bench.time_one`` does: fp32 weights, ``torch.autocast(bf16)`` around
``vae.decode(latent)``, default chunks. ``best`` stands for the union of the features that made a measured variant
at least ``--min-gain`` faster than the same variant without that feature (at the first resolution, among variants
whose uint8 PSNR against the baseline is at least ``--min-psnr``); ``best+compile`` adds compilation on top.

Default plan: at the first resolution (720p) baseline, fp32, cudnn, bf16, bf16dec, cl+cudnn, chunk4+cudnn,
chunk6+cudnn, best; at the other resolutions (480p) baseline and best. Expected time on one H200: about 1.5 to 2
minutes after start-up (9 variants x 4 decodes of about 1-3 s at 720p, cuDNN autotuning in the cudnn warm-ups,
2 x 4 decodes of under 1 s at 480p). compile is not in the default plan (inductor compiles two decoder graphs, the
first chunk and the later ones: about a minute on a 2-core CPU for the tiny VAE, unknown on the GPU); try it in a
second run, e.g. ``--res 720p --variants best,best+compile --best cudnn+bf16+chunk6`` with the first run's best.
Results are written after every variant, so a run cut short keeps what it measured. An exception in a variant is
recorded in its row and the next variant runs.

``--smoke`` runs the same code on the CPU with a tiny VAE (widths 8-16) and a latent [1, 64, 5, 4, 6]; features
that only mean something on a GPU (cudnn, compile) are dropped, and a variant left with nothing new is skipped.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import statistics
import time
import traceback
from pathlib import Path

import torch

from faststar.bench import _git_commit, build_random_vae
from faststar.io import to_uint8
from faststar.metrics import psnr
from faststar.vae.model import VideoVAE, decode_chunk_plan, vae_config

LATENT_SHAPES = {"720p": (1, 64, 21, 45, 80), "480p": (1, 64, 21, 30, 53)}
SMOKE_LATENT_SHAPE = (1, 64, 5, 4, 6)
SMOKE_WIDTHS = (8, 16, 16, 16, 16)

FEATURES = ("fp32", "cudnn", "bf16", "bf16dec", "cl", "chunk4", "chunk6", "compile")
GPU_ONLY = {"cudnn", "compile"}                       # dropped in --smoke
EXCLUSIVE = [("fp32", "bf16", "bf16dec"), ("chunk4", "chunk6")]
CHUNKS = {"chunk4": 4, "chunk6": 6}

DEFAULT_VARIANTS = "baseline,fp32,cudnn,bf16,bf16dec,cl+cudnn,chunk4+cudnn,chunk6+cudnn,best"
DEFAULT_LATER_VARIANTS = "baseline,best"


# ------------------------------------------------------------------------------------------------------------------
# variants

def parse_variant(name: str) -> list[str]:
    """'cl+cudnn' -> ['cl', 'cudnn']; 'baseline' -> []; 'best' stays a token (resolved when it runs)."""
    tokens = [t for t in name.split("+") if t and t != "baseline"]
    for t in tokens:
        if t not in FEATURES and t != "best":
            raise SystemExit(f"unknown feature {t!r} in variant {name!r}; known: baseline, best, {', '.join(FEATURES)}")
    for group in EXCLUSIVE:
        if sum(t in group for t in tokens) > 1:
            raise SystemExit(f"variant {name!r} combines features that exclude each other: {group}")
    return tokens


def canonical(features) -> str:
    feats = [f for f in FEATURES if f in features]
    return "+".join(feats) if feats else "baseline"


def choose_best(runs: list[dict], min_gain: float) -> tuple[set, dict]:
    """Features that made a measured, accurate variant at least ``min_gain`` faster than the measured variant
    without them; of features that exclude each other the one with the larger gain wins."""
    times = {frozenset(r["features"]): r["median_s"] for r in runs
             if r.get("median_s") is not None and r.get("accurate")}
    gains: dict[str, float] = {}
    for feats, t in times.items():
        for f in feats:
            without = times.get(feats - {f})
            if without is not None:
                gains[f] = max(gains.get(f, 0.0), without / t)
    chosen = {f for f, g in gains.items() if g >= 1 + min_gain}
    for group in EXCLUSIVE:
        members = sorted((f for f in group if f in chosen), key=gains.get)
        chosen -= set(members[:-1])
    return chosen, {f: round(g, 4) for f, g in gains.items()}


def prepare(vae: VideoVAE, latent: torch.Tensor, features: set) -> tuple[torch.Tensor, bool]:
    """Apply the features to a fresh VAE; returns the latent to decode and whether to run under autocast."""
    decoder_format = None
    if "bf16" in features:
        vae.to(torch.bfloat16)
        latent = latent.to(torch.bfloat16)
    if "bf16dec" in features:
        vae.half_decoder_()                    # decode() feeds the decoder in its dtype
    if "cl" in features:
        # not vae.to(memory_format=...): it also converts the 4-D RMSNorm gammas [C, 1, 1, 1] and fails
        # ("required rank 5 tensor to use channels_last_3d format")
        for p in vae.parameters():
            if p.dim() == 5:
                p.data = p.data.contiguous(memory_format=torch.channels_last_3d)
        latent = latent.contiguous(memory_format=torch.channels_last_3d)
        decoder_format = torch.channels_last_3d
    if decoder_format is not None:
        def convert_input(module, args):
            return (args[0].contiguous(memory_format=decoder_format), *args[1:])
        vae.decoder.register_forward_pre_hook(convert_input)
    if "compile" in features:
        vae.decoder.compile(dynamic=False)
    autocast = not ({"fp32", "bf16", "bf16dec"} & features)
    return latent, autocast


# ------------------------------------------------------------------------------------------------------------------
# measuring

def sync(dev: torch.device):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed_decode(vae, latent, plan, autocast: bool) -> tuple[torch.Tensor, float]:
    dev = latent.device
    sync(dev)
    t0 = time.perf_counter()
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocast):
        video = vae.decode(latent, chunk_plan=plan)
    sync(dev)
    return video, time.perf_counter() - t0


def compare(video: torch.Tensor, ref: dict) -> dict:
    """Difference of a decoded video from the baseline's over the whole video."""
    if tuple(video.shape) != ref["shape"]:
        raise RuntimeError(f"output shape {tuple(video.shape)} differs from the baseline's {ref['shape']}")
    dev = video.device
    v = video.float()
    r = ref["video"].to(dev).float()
    d = v - r
    out = dict(max_abs=d.abs().max().item(), rel_l2=(d.norm() / r.norm()).item())
    del v, r, d
    u8 = torch.from_numpy(to_uint8(video)).to(dev)
    ref_u8 = torch.from_numpy(ref["u8"]).to(dev)
    out.update(psnr_u8=psnr(u8, ref_u8), u8_frac_differ=(u8 != ref_u8).float().mean().item(),
               u8_max_diff=int((u8.int() - ref_u8.int()).abs().max().item()))
    return out


def run_variant(cfg, dev, latent0, features: set, *, seed: int, reps: int,
                ref: dict | None) -> tuple[dict, dict | None]:
    """Build, prepare, warm up, time, compare. Returns the row and, for the baseline, the reference output."""
    row: dict = {}
    new_ref = None
    vae = video = None
    try:
        torch.backends.cudnn.benchmark = "cudnn" in features
        vae = build_random_vae(dev, seed, cfg)
        latent, autocast = prepare(vae, latent0, features)
        chunk = next((CHUNKS[f] for f in features if f in CHUNKS), None)
        plan = decode_chunk_plan(latent.shape[2], chunk) if chunk else None
        row.update(autocast_bf16=autocast, latent_dtype=str(latent.dtype).replace("torch.", ""),
                   chunk_plan=plan or decode_chunk_plan(latent.shape[2], cfg.decode_chunk))
        video, warm = timed_decode(vae, latent, plan, autocast)
        row["warmup_s"] = warm
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        times = []
        for _ in range(reps):
            video = None                     # free the previous output before the next decode
            video, t = timed_decode(vae, latent, plan, autocast)
            times.append(t)
        row.update(times_s=times, median_s=statistics.median(times),
                   peak_gib=torch.cuda.max_memory_allocated(dev) / 2 ** 30 if dev.type == "cuda" else None,
                   out_dtype=str(video.dtype).replace("torch.", ""), out_shape=list(video.shape),
                   out_channels_last=video.is_contiguous(memory_format=torch.channels_last_3d))
        if "compile" in features:
            row["compile_s_approx"] = warm - row["median_s"]
        if ref is None:          # this is the baseline: keep its output (off the GPU) as the reference
            new_ref = dict(video=video.cpu(), u8=to_uint8(video), shape=tuple(video.shape))
            v = video.float()
            row["baseline_out_stats"] = dict(std=v.std().item(), mean=v.mean().item(),
                                             frac_outside_pm1=(v.abs() > 1).float().mean().item())
            row.update(diff=dict(max_abs=0.0, rel_l2=0.0, psnr_u8=math.inf, u8_frac_differ=0.0, u8_max_diff=0))
            del v
        else:
            row["diff"] = compare(video, ref)
    except Exception as e:  # noqa: BLE001 - one variant's failure is a result, the others still run
        row["error"] = f"{type(e).__name__}: {e}"[:2000]
        row["traceback"] = traceback.format_exc(limit=6)[-3000:]
    finally:
        torch.backends.cudnn.benchmark = False
        del vae, video
        gc.collect()
        if "compile" in features:
            torch._dynamo.reset()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return row, new_ref


# ------------------------------------------------------------------------------------------------------------------
# report

def fmt(x, width: int, spec: str) -> str:
    return f"{'-':>{width}s}" if x is None else f"{x:{width}{spec}}"


def print_table(runs: list[dict]):
    head = (f"{'res':5s} {'variant':22s} {'ran as':22s} {'median s':>9s} {'speedup':>7s} {'peak GiB':>8s} "
            f"{'warm-up s':>9s} {'max|d|':>8s} {'rel L2':>8s} {'PSNR u8':>8s}  note")
    print(head)
    print("-" * len(head))
    for r in runs:
        d = r.get("diff") or {}
        note = r.get("error", r.get("skipped", ""))[:70]
        print(f"{r['resolution']:5s} {r['variant']:22s} {r.get('ran_as', '-'):22s} {fmt(r.get('median_s'), 9, '.3f')} "
              f"{fmt(r.get('speedup'), 7, '.2f')} {fmt(r.get('peak_gib'), 8, '.2f')} "
              f"{fmt(r.get('warmup_s'), 9, '.2f')} {fmt(d.get('max_abs'), 8, '.1e')} {fmt(d.get('rel_l2'), 8, '.1e')} "
              f"{fmt(d.get('psnr_u8'), 8, '.2f')}  {note}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__[__doc__.index("A variant"):],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="vae_decode_speed.json", help="JSON report (rewritten after every variant)")
    ap.add_argument("--res", default="720p,480p", help=f"resolutions, of {sorted(LATENT_SHAPES)}")
    ap.add_argument("--variants", default=DEFAULT_VARIANTS, help="variants at the first resolution")
    ap.add_argument("--later-variants", default=DEFAULT_LATER_VARIANTS,
                    help="variants at the other resolutions ('same': as --variants)")
    ap.add_argument("--reps", type=int, default=None,
                    help="timed decodes per variant after one warm-up (default 3; 1 with --smoke)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-psnr", type=float, default=40.0,
                    help="uint8 PSNR (dB) against the baseline a variant needs to count for 'best'")
    ap.add_argument("--min-gain", type=float, default=0.02, help="speedup a feature needs to join 'best'")
    ap.add_argument("--best", default=None,
                    help="set 'best' to these features (e.g. cudnn+bf16+chunk6 from an earlier run) instead of "
                         "choosing it from this run's measurements")
    ap.add_argument("--smoke", action="store_true", help="CPU check with a tiny VAE and latent")
    a = ap.parse_args(argv)

    resolutions = [r for r in a.res.split(",") if r]
    for r in resolutions:
        if r not in LATENT_SHAPES:
            raise SystemExit(f"unknown resolution {r!r}; known: {sorted(LATENT_SHAPES)}")
    first_variants = [v for v in a.variants.split(",") if v]
    later_variants = first_variants if a.later_variants == "same" else [v for v in a.later_variants.split(",") if v]
    for v in first_variants + later_variants + ([a.best] if a.best else []):
        parse_variant(v)                                  # fail on a typo before anything runs

    if a.reps is None:
        a.reps = 1 if a.smoke else 3
    if a.smoke:
        dev = torch.device("cpu")
        cfg = vae_config("infinitystar", block_out_channels=SMOKE_WIDTHS)
    else:
        if not torch.cuda.is_available():
            raise SystemExit("this benchmark needs a CUDA GPU (use --smoke for the CPU check)")
        dev = torch.device("cuda")
        cfg = vae_config("infinitystar")
    t_start = time.perf_counter()
    report = dict(gpu=torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu (smoke)",
                  torch=torch.__version__, cuda=torch.version.cuda,
                  cudnn=torch.backends.cudnn.version() if dev.type == "cuda" else None,
                  cudnn_allow_tf32=torch.backends.cudnn.allow_tf32, python=platform.python_version(),
                  date=time.strftime("%Y-%m-%d %H:%M:%S"), commit=_git_commit(), smoke=a.smoke,
                  vae=cfg.to_dict(), seed=a.seed, reps=a.reps, min_psnr=a.min_psnr, min_gain=a.min_gain,
                  latents={}, best={}, runs=[])
    best_features: set | None = None
    if a.best is not None:
        best_features = set(parse_variant(a.best)) - {"best"}
        report["best"] = dict(chosen_at="--best", features=canonical(best_features), gains=None)

    def save():
        report["total_s"] = time.perf_counter() - t_start
        Path(a.out).write_text(json.dumps(report, indent=1, default=str))

    for i, res in enumerate(resolutions):
        shape = SMOKE_LATENT_SHAPE if a.smoke else LATENT_SHAPES[res]
        report["latents"][res] = list(shape)
        gen = torch.Generator(device=dev).manual_seed(a.seed)
        latent = torch.randn(shape, generator=gen, device=dev)
        names = first_variants if i == 0 else later_variants
        names = ["baseline"] + [n for n in names if parse_variant(n)]   # the baseline first, once
        ref = None
        res_runs: list[dict] = []
        done: dict[frozenset, dict] = {}
        for name in names:
            tokens = parse_variant(name)
            row = dict(resolution=res, variant=name)
            if "best" in tokens:
                if best_features is None:
                    best_features, gains = choose_best(res_runs, a.min_gain)
                    report["best"] = dict(chosen_at=res, features=canonical(best_features), gains=gains)
                    print(f"[{res}] best = {canonical(best_features)} (gains over the variant without: {gains})")
                tokens = [t for t in tokens if t != "best"] + sorted(best_features)
            features = set(tokens) - GPU_ONLY if a.smoke else set(tokens)
            if a.smoke and tokens and not features:
                row["skipped"] = f"needs a GPU ({'+'.join(tokens)})"
            elif frozenset(features) in done:            # e.g. best turned out to be a variant already timed
                prev = done[frozenset(features)]
                row.update({k: v for k, v in prev.items() if k not in ("variant", "wall_s")},
                           same_as=prev["variant"])
            else:
                row.update(ran_as=canonical(features), features=sorted(features))
                t = time.perf_counter()
                result, new_ref = run_variant(cfg, dev, latent, features, seed=a.seed, reps=a.reps, ref=ref)
                row.update(result, wall_s=time.perf_counter() - t)
                if ref is None:
                    if new_ref is None:
                        report["runs"].append(row)
                        save()
                        print_table([row])
                        raise SystemExit(f"[{res}] the baseline failed; nothing to compare against")
                    ref = new_ref
                done[frozenset(features)] = row
            if row.get("median_s") is not None:
                base = res_runs[0]["median_s"] if res_runs else row["median_s"]
                row["speedup"] = base / row["median_s"]
                row["accurate"] = "diff" in row and row["diff"]["psnr_u8"] >= a.min_psnr
            res_runs.append(row)
            report["runs"].append(row)
            save()
            if row.get("median_s") is not None:
                msg = (f"median {row['median_s']:.3f}s  speedup {row['speedup']:.2f}x  "
                       f"PSNR u8 {row.get('diff', {}).get('psnr_u8', math.nan):.2f} dB  {row.get('error', '')}")
            else:
                msg = row.get("skipped") or row.get("error", "")
            print(f"[{res}] {name:22s} {msg[:300]}", flush=True)
        del ref, latent
    save()
    print()
    print(f"{report['gpu']}, torch {report['torch']}, commit {report['commit']}, total {report['total_s']:.0f}s")
    print_table(report["runs"])
    if report["best"]:
        print(f"best (chosen at {report['best']['chosen_at']}): {report['best']['features']}")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
