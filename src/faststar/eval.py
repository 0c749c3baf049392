"""Quality and speed of accelerators against the dense engine, reproducibly.

For a model (the embedded testbed by default), a prompt set (shipped default or a JSONL file of
``{"prompt": ..., "image": optional path}``) and several seeds: run dense and every requested accelerator
configuration, then report PSNR / SSIM of each accelerated video against the dense video of the same prompt and
seed, the seed-to-seed noise floor (dense seed s vs dense seed s + 1000), the FLOP-model speedup and the measured
wall-time speedup (transformer + VAE decode). Every finished run is stored under ``OUT/runs`` and never redone
(resumable). Writes ``results.json``, ``results.md``, ``pareto.png`` and ``latency.png``.

Beside PSNR / SSIM every comparison records three detail-aware measures (``faststar.metrics``): ``detail_retention``
(3x3-Laplacian energy of the luma of the decoded frames relative to the dense video), ``latent_detail_retention``
(energy of the finest-scale residual of the final latent canvas relative to the dense canvas) and ``latent_psnr``
(final canvas against the dense canvas, the dense canvas's range as peak). PSNR against a stochastic dense sample
rewards a blurrier video over an equally detailed but different one (skipping the last scale scores like keeping
most of it); the retentions say how much of the detail is left. ``--metric`` picks the Pareto plot's quality axis.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np

DEFAULT_PROMPTS = Path(__file__).resolve().parent / "data" / "eval_prompts.jsonl"

# method[:preset] strings; the standard comparison set (at several speedups each)
# (spec syntax: faststar.accel.parse_method_spec)
STANDARD_METHODS = [
    "faststar:quality", "faststar:balanced", "faststar:fast-hq", "faststar:fast", "faststar:paper",
    # FastSTAR's variants: one score term, Partial Update
    *[f"faststar:{p}+{v}" for v in ("w_tm=0", "w_sp=0", "update=partial") for p in ("quality", "fast")],
    "random:quality", "random:balanced", "random:fast-hq", "random:fast", "random:paper",
    "fastvar:hart", "fastvar:balanced", "fastvar:fast",
    "stagevar:cfg0-last2", "stagevar:cfg0", "stagevar:original", "stagevar:cfg0-video", "stagevar:original-video",
    "skip:last1", "skip:last2", "skip:last3",
]
QUICK_METHODS = ["faststar:balanced", "faststar:fast", "random:balanced", "skip:last1"]
# quality measures of a comparison (row keys): the Pareto plot's quality axis is one of them (``--metric``)
METRICS = {"psnr": "PSNR vs same-seed dense (dB)", "ssim": "SSIM vs same-seed dense",
           "latent_psnr": "latent-canvas PSNR vs same-seed dense (dB)",
           "detail_retention": "detail retention (Laplacian energy vs dense)",
           "latent_detail_retention": "latent detail retention (finest-scale residual energy vs dense)"}


def load_prompts(path: str | Path | None) -> list[dict]:
    path = Path(path) if path else DEFAULT_PROMPTS
    if not path.exists():
        raise FileNotFoundError(f"prompt file not found: {path}")
    items = []
    for i, line in enumerate(path.read_text().splitlines()):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{i + 1}: not JSON ({e})") from None
        if "prompt" not in d:
            raise ValueError(f"{path}:{i + 1}: every line needs a 'prompt'")
        if d.get("image"):
            img = Path(d["image"])
            d["image"] = str(img if img.is_absolute() else (path.parent / img))
        items.append(d)
    if not items:
        raise ValueError(f"{path} holds no prompts")
    return items


def _key(*parts) -> str:
    return hashlib.sha1("|".join(str(p) for p in parts).encode()).hexdigest()[:16]


class Runner:
    def __init__(self, pipe, out: Path, log=print):
        self.pipe, self.out, self.log = pipe, out, log
        (out / "runs").mkdir(parents=True, exist_ok=True)

    def run(self, method: str, item: dict, seed: int) -> tuple[dict, np.ndarray]:
        """One generation (cached on disk): metadata and frames (``run_latent`` also gives the final canvas)."""
        meta, frames, _ = self.run_latent(method, item, seed)
        return meta, frames

    def run_latent(self, method: str, item: dict, seed: int) -> tuple[dict, np.ndarray, np.ndarray | None]:
        """One generation (cached on disk): metadata, frames and the final latent canvas [1, 64, T, h, w] (float32;
        None for a run cached before canvases were stored)."""
        from . import accel
        acc = accel.accelerator_from_spec(method)
        # keyed by what runs (the resolved knobs), not by the name: a preset that changes meaning is not reused
        what = "dense" if acc is None else json.dumps({k: v for k, v in acc.describe().items() if k != "preset"},
                                                      sort_keys=True)
        # and by the weights: a retrained model of the same name does not reuse the old model's videos
        k = _key(what, item["prompt"], item.get("image"), seed, self.pipe.spec.name, self.pipe.fingerprint())
        meta_f, frames_f = self.out / "runs" / f"{k}.json", self.out / "runs" / f"{k}.npz"
        if meta_f.exists() and frames_f.exists():
            meta = json.loads(meta_f.read_text())
            meta["method"] = method
            with np.load(frames_f) as z:
                return meta, z["frames"], (z["latent"] if "latent" in z.files else None)
        if acc is None:
            accel.remove(self.pipe)
        else:
            accel.apply(self.pipe, acc)
        try:
            out = self.pipe(item["prompt"], image=item.get("image"), seed=seed, progress=False)
        finally:
            accel.remove(self.pipe)
        meta = dict(method=method, prompt=item["prompt"], image=item.get("image"), seed=seed, timings=out.timings,
                    accelerator=out.accelerator,
                    summary=out.summary,
                    per_scale_time=_per_scale_time(out.stats))
        latent = out.latent.float().cpu().numpy()
        np.savez_compressed(frames_f, frames=out.frames, latent=latent)
        meta_f.write_text(json.dumps(meta))
        return meta, out.frames, latent


def detail_measures(frames, latent, dframes, dlatent, dense_energy: dict, schedule) -> dict:
    """``detail_retention``, ``latent_detail_retention`` and ``latent_psnr`` of one video against the dense video of
    its prompt and seed (``dense_energy``: a per-dense-video cache of its energies). A canvas missing from an old
    cached run gives None for the two latent measures."""
    from .metrics import _ratio, detail_energy, latent_detail_energy, latent_psnr
    if "pixel" not in dense_energy:
        dense_energy["pixel"] = detail_energy(dframes)
    out = dict(detail_retention=_ratio(detail_energy(frames), dense_energy["pixel"]),
               latent_detail_retention=None, latent_psnr=None)
    if latent is not None and dlatent is not None:
        if "latent" not in dense_energy:
            dense_energy["latent"] = latent_detail_energy(dlatent, schedule)
        out["latent_detail_retention"] = _ratio(latent_detail_energy(latent, schedule), dense_energy["latent"])
        out["latent_psnr"] = latent_psnr(latent, dlatent)
    return out


def _per_scale_time(stats):
    d: dict[int, float] = {}
    for s in stats:
        d[s["scale"]] = d.get(s["scale"], 0.0) + s["time_s"]
    return d


def run_eval(pipe, out_dir, methods: list[str], prompts: list[dict], seeds: list[int], log=print,
             progress: bool = True, metric: str = "psnr") -> dict:
    from .accel import check_method_specs
    from .metrics import psnr, ssim
    methods = check_method_specs(methods)          # a typo fails now, not after the dense videos
    schedule = pipe.spec.schedule(None, None)      # the canvases' clips and grids (latent detail)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runner = Runner(pipe, out, log)
    # warm-up (untimed, not stored): lazy initialisation, kernel compilation and CUDA graph capture must not count
    # against whichever configuration happens to run first
    for it in (prompts if pipe.device.type == "cuda" else prompts[:1]):
        # on a GPU every prompt length is a new set of CUDA-graph shapes: capture them all before timing
        pipe(it["prompt"], image=it.get("image"), seed=10_007, progress=False)
    jobs = [("dense", it, s) for it in prompts for s in seeds] + \
           [("dense", it, s + 1000) for it in prompts for s in seeds] + \
           [(m, it, s) for m in methods for it in prompts for s in seeds]
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(jobs), desc="eval", unit="video")
    rows = []
    dense_cache: dict = {}
    interrupted = False
    try:
        for m, it, s in jobs:
            meta, frames, latent = runner.run_latent(m, it, s)
            if bar is not None:
                bar.set_postfix_str(m)
                bar.update(1)
            if m == "dense":
                dense_cache[(it["prompt"], it.get("image"), s)] = (meta, frames, latent, {})
                continue
            dmeta, dframes, dlatent, denergy = dense_cache[(it["prompt"], it.get("image"), s)]
            rows.append(dict(method=m, prompt=it["prompt"], image=it.get("image"), seed=s,
                             psnr=psnr(frames, dframes), ssim=ssim(frames, dframes),
                             **detail_measures(frames, latent, dframes, dlatent, denergy, schedule),
                             flop_speedup=meta["summary"]["flop_speedup"],
                             time_s=meta["timings"]["transformer_s"] + meta["timings"].get("vae_decode_s", 0.0),
                             dense_time_s=dmeta["timings"]["transformer_s"] + dmeta["timings"].get("vae_decode_s", 0.0),
                             per_scale_time=meta["per_scale_time"], accelerator=meta.get("accelerator", {})))
    except KeyboardInterrupt:
        # Ctrl-C (or `timeout -s INT`): every finished run is on disk; write the results gathered so far
        interrupted = True
        log(f"interrupted: writing the results of {len(rows)} finished comparisons (rerun to resume)")
    if bar is not None:
        bar.close()
    floor = []
    for it in prompts:
        for s in seeds:
            a = dense_cache.get((it["prompt"], it.get("image"), s))
            b = dense_cache.get((it["prompt"], it.get("image"), s + 1000))
            if a is None or b is None:
                continue
            floor.append(dict(prompt=it["prompt"], image=it.get("image"), seed=s, psnr=psnr(a[1], b[1]),
                              ssim=ssim(a[1], b[1]), **detail_measures(b[1], b[2], a[1], a[2], a[3], schedule)))
    summary = summarize_rows(rows)
    dense_rows = [v[0] for v in dense_cache.values()]
    result = dict(model=pipe.spec.name, device=str(pipe.device), seeds=seeds, prompts=prompts, methods=methods,
                  date=time.strftime("%Y-%m-%d %H:%M"), complete=not interrupted, noise_floor=dict(
                      psnr=float(np.mean([f["psnr"] for f in floor])) if floor else float("nan"),
                      ssim=float(np.mean([f["ssim"] for f in floor])) if floor else float("nan"),
                      **{k: _mean_or_none([f.get(k) for f in floor], cap=100.0 if k == "latent_psnr" else None)
                         for k in DETAIL_KEYS},
                      per_video=floor),
                  dense_time_s=float(np.mean([d["timings"]["transformer_s"] + d["timings"].get("vae_decode_s", 0.0)
                                              for d in dense_rows])),
                  dense_per_scale_time=_mean_dicts([d["per_scale_time"] for d in dense_rows]),
                  summary=summary, rows=rows)
    write_results(result, out, metric=metric)
    return result


def compact_results(result: dict) -> dict:
    """A copy of an eval result whose rows drop their ``accelerator`` record where it equals their method's record
    in the summary (one per method, the same for every row of a run): the file shrinks by about half, and
    ``load_results`` puts the records back. Nothing else changes."""
    acc = {r["method"]: r.get("accelerator") for r in result.get("summary", [])}
    rows = [{k: v for k, v in row.items() if not (k == "accelerator" and v == acc.get(row["method"]))}
            for row in result.get("rows", [])]
    return {**result, "rows": rows}


def load_results(path) -> dict:
    """An eval results.json, compact (``compact_results``) or not, with every row's ``accelerator`` record."""
    result = json.loads(Path(path).read_text())
    acc = {r["method"]: r.get("accelerator") for r in result.get("summary", [])}
    for row in result.get("rows", []):
        if "accelerator" not in row and acc.get(row["method"]) is not None:
            row["accelerator"] = acc[row["method"]]
    return result


def write_results(result: dict, out: Path, metric: str = "psnr") -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(compact_results(result), separators=(",", ":")))
    (out / "results.md").write_text(results_markdown(result))
    plot_pareto(result, out / "pareto.png", metric=metric)
    plot_latency(result, out / "latency.png")


def merge_results(parts: list[dict]) -> dict:
    """One result from eval runs of the same model, prompts and seeds on parts of a method list (for example one
    process per GPU). Their dense videos must agree (same noise floor, video by video); a method run in several parts
    keeps its first part's rows."""
    if not parts:
        raise ValueError("nothing to merge")
    first = parts[0]
    for i, r in enumerate(parts[1:], 2):
        for key in ("model", "prompts", "seeds"):
            if r[key] != first[key]:
                raise ValueError(f"part {i} was run with other {key} than part 1: {r[key]!r} vs {first[key]!r}")
        a = [f["psnr"] for f in first["noise_floor"]["per_video"]]
        b = [f["psnr"] for f in r["noise_floor"]["per_video"]]
        if len(a) != len(b) or any(abs(x - y) > 1e-3 for x, y in zip(a, b)):
            raise ValueError(f"part {i}'s dense videos differ from part 1's (noise floor per video {b} vs {a}): "
                             "not the same weights, or a non-deterministic device")
    methods, rows, seen = [], [], set()
    for r in parts:
        methods += [m for m in r["methods"] if m not in methods]
        for row in r["rows"]:
            k = (row["method"], row["prompt"], row.get("image"), row["seed"])
            if k not in seen:
                seen.add(k)
                rows.append(row)
    devices = list(dict.fromkeys(r["device"] for r in parts))
    return dict(first, device=", ".join(devices), methods=methods, date=max(r["date"] for r in parts),
                complete=all(r.get("complete", True) for r in parts),
                dense_time_s=float(np.mean([r["dense_time_s"] for r in parts])),
                dense_per_scale_time=_mean_dicts([r["dense_per_scale_time"] for r in parts]),
                summary=summarize_rows(rows), rows=rows, merged_from=len(parts))


def _mean_dicts(ds):
    keys = sorted({k for d in ds for k in d}, key=lambda x: int(x))
    return {k: float(np.mean([d.get(k, 0.0) for d in ds])) for k in keys}


DETAIL_KEYS = ("latent_psnr", "detail_retention", "latent_detail_retention")


def _mean_or_none(vals, cap: float | None = None):
    """Mean of the values that are not None (each capped at ``cap``: an identical canvas has infinite PSNR);
    None when there are none."""
    vals = [v if cap is None else min(v, cap) for v in vals if v is not None]
    return float(np.mean(vals)) if vals else None


def summarize_rows(rows: list[dict]) -> list[dict]:
    by: dict[str, list] = {}
    for r in rows:
        by.setdefault(r["method"], []).append(r)
    out = []
    for m, rs in by.items():
        ps = [r["psnr"] for r in rs]
        by_task = {task: [min(r["psnr"], 100.0) for r in rs if bool(r.get("image")) == (task == "i2v")]
                   for task in ("t2v", "i2v")}
        out.append(dict(method=m, n=len(rs), accelerator=rs[0].get("accelerator", {}),
                        psnr=float(np.mean([min(p, 100.0) for p in ps])), psnr_min=float(np.min(ps)),
                        **{f"psnr_{task}": float(np.mean(v)) if v else None for task, v in by_task.items()},
                        ssim=float(np.mean([r["ssim"] for r in rs])),
                        latent_psnr=_mean_or_none([r.get("latent_psnr") for r in rs], cap=100.0),
                        detail_retention=_mean_or_none([r.get("detail_retention") for r in rs]),
                        latent_detail_retention=_mean_or_none([r.get("latent_detail_retention") for r in rs]),
                        flop_speedup=float(np.mean([r["flop_speedup"] for r in rs])),
                        wall_speedup=float(np.mean([r["dense_time_s"] / r["time_s"] for r in rs])),
                        per_scale_time=_mean_dicts([r["per_scale_time"] for r in rs])))
    return out


# knobs that only change how FastSTAR scores tokens or spreads its kept set: the random control does not read them
SCORE_KNOBS = ("w_sp", "w_tm", "w_detail", "combine")


def control_name(method: str) -> str:
    """``random:X`` for ``faststar:X``, without the knobs that random selection does not read (scores, spread)."""
    from .accel.presets import SELECTION_SPREAD
    parts = method[len("faststar:"):].split("+")
    unread = SCORE_KNOBS + SELECTION_SPREAD
    kept = [parts[0]] + [p for p in parts[1:] if p.split("=")[0] not in unread]
    return "random:" + "+".join(kept)


def psnr_by_video(rows: list[dict]) -> dict[str, dict]:
    """method -> {(prompt, image, seed): PSNR}."""
    by: dict[str, dict] = {}
    for r in rows:
        by.setdefault(r["method"], {})[(r["prompt"], r.get("image"), r["seed"])] = r["psnr"]
    return by


def compare_methods(by: dict[str, dict], method: str, control: str) -> dict:
    """Per-video PSNR of ``method`` minus ``control`` over their common videos: how many ``method`` wins, the mean
    difference and its standard error."""
    vids, ctrl = by[method], by[control]
    keys = sorted(vids.keys() & ctrl.keys(), key=str)
    diffs = [vids[k] - ctrl[k] for k in keys]
    n = len(diffs)
    mean = sum(diffs) / n if n else float("nan")
    se = (sum((d - mean) ** 2 for d in diffs) / (n - 1) / n) ** 0.5 if n > 1 else float("nan")
    return dict(method=method, control=control, videos=n, wins=sum(d > 0 for d in diffs), mean_diff_db=mean,
                se_db=se)


def paired_with_random(res: dict) -> list[dict]:
    """Every FastSTAR configuration of a run against random selection at the same knobs, where the run has both:
    the comparison that isolates FastSTAR's choice of tokens."""
    by = psnr_by_video(res["rows"])
    return [compare_methods(by, m, control_name(m)) for m in by
            if m.startswith("faststar:") and control_name(m) in by]


def results_markdown(res: dict) -> str:
    lines = [f"# faststar eval: {res['model']} on {res['device']} ({res['date']})", "",
             f"Seeds {res['seeds']}, {len(res['prompts'])} prompts. Quality: PSNR / SSIM of each accelerated video "
             f"against the dense video of the same prompt and seed (uint8 RGB, all frames). Noise floor (dense seed s "
             f"vs dense seed s+1000): PSNR {res['noise_floor']['psnr']:.2f} dB, SSIM {res['noise_floor']['ssim']:.3f}. "
             f"Dense time {res['dense_time_s']:.2f} s per video (transformer + VAE decode)." +
             ("" if res.get("complete", True) else " INTERRUPTED: partial results (rerun the command to resume)."),
             "",
             "Detail: `latent PSNR` is the final latent canvas against the dense canvas (the dense canvas's range as "
             "peak); `detail ret.` the high-frequency energy of the decoded frames (mean square of the 3x3 Laplacian "
             "of BT.601 luma) relative to the dense video; `latent detail ret.` the energy of the canvas's "
             "finest-scale residual (canvas minus the canvas taken down to the second-finest grid and back up) "
             "relative to the dense canvas. 1.00 = as much detail as dense. Noise floor: latent PSNR "
             f"{_fmt(res['noise_floor'].get('latent_psnr'))} dB, detail ret. "
             f"{_fmt(res['noise_floor'].get('detail_retention'))}, latent detail ret. "
             f"{_fmt(res['noise_floor'].get('latent_detail_retention'))}.",
             ""]
    # text-to-video and image-to-video apart when the prompt set has both (image-to-video keeps the given first
    # frame, so the two tasks land at different PSNRs)
    split = any(p.get("image") for p in res["prompts"]) and not all(p.get("image") for p in res["prompts"])
    head = "| method | PSNR dB | min PSNR |" + (" T2V PSNR | I2V PSNR |" if split else "")
    lines += [head + " SSIM | latent PSNR dB | detail ret. | latent detail ret. | FLOP speedup | wall speedup |",
              "|---" * (11 if split else 9) + "|"]
    for r in sorted(res["summary"], key=lambda r: (r["method"].split(":")[0], r["flop_speedup"])):
        tasks = "".join(f" {_fmt(r.get(f'psnr_{t}'))} |" for t in ("t2v", "i2v")) if split else ""
        lines.append(f"| {r['method']} | {r['psnr']:.2f} | {r['psnr_min']:.2f} |{tasks} {r['ssim']:.3f} | "
                     f"{_fmt(r.get('latent_psnr'))} | {_fmt(r.get('detail_retention'))} | "
                     f"{_fmt(r.get('latent_detail_retention'))} | "
                     f"{r['flop_speedup']:.2f}x | {r['wall_speedup']:.2f}x |")
    pairs = paired_with_random(res)
    if pairs:
        lines += ["", "FastSTAR against random selection at the same knobs (same plan and speed; per video of the same "
                  "prompt and seed):", "",
                  "| configuration | against | videos better | mean PSNR difference dB (standard error) |",
                  "|---|---|---|---|"]
        lines += [f"| {r['method']} | {r['control']} | {r['wins']}/{r['videos']} | {r['mean_diff_db']:+.2f} "
                  f"({r['se_db']:.2f}) |" for r in pairs]
    return "\n".join(lines) + "\n"


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def _family(row: dict) -> str:
    """Plot grouping: the method, plus the FastSTAR update mode (partial / restore are different curves). Uses the
    recorded accelerator config when present (presets change over time), else the method string."""
    method = row["method"]
    name = method.split(":")[0].split("+")[0]
    if name in ("faststar", "random"):
        acc = row.get("accelerator") or {}
        upd = acc.get("update")
        if upd is None:
            upd = next((u for u in ("copy", "restore", "partial") if f"update={u}" in method), "partial")
        return f"{name} ({upd})"
    return name


def _pareto_front(points):
    """Points (x, y) not dominated by a faster-and-better one, sorted by x."""
    front = [p for p in points if not any(q[0] >= p[0] and q[1] > p[1] for q in points if q is not p)]
    return sorted(front)


def plot_pareto(res: dict, path: Path, metric: str = "psnr") -> None:
    """Quality (``metric``: a key of ``METRICS``) against the FLOP-model and the measured speedup, one colour per
    method family, with each family's Pareto front."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(14, 5))
    fams: dict[str, list] = {}
    for r in res["summary"]:
        fams.setdefault(_family(r), []).append(r)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, xkey, xlabel in ((axes[0], "flop_speedup", "FLOP-model speedup"),
                             (axes[1], "wall_speedup", "measured wall-time speedup (transformer + VAE decode)")):
        for i, (fam, rs) in enumerate(sorted(fams.items())):
            pts = [(r[xkey], r[metric]) for r in rs if r.get(metric) is not None]
            if not pts:
                continue
            c = colors[i % len(colors)]
            ax.scatter(*zip(*pts), color=c, label=fam, s=25)
            front = _pareto_front(pts)
            ax.plot(*zip(*front), color=c, lw=1.2)
        floor = res["noise_floor"].get(metric)
        if floor is not None and math.isfinite(floor):
            ax.axhline(floor, color="gray", ls="--", lw=1, label="seed-to-seed floor")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(METRICS[metric])
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.suptitle(f"quality vs speedup: {res['model']} on {res['device']} (lines: each family's Pareto front)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_latency(res: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(10, 4))
    dense = res["dense_per_scale_time"]
    scales = list(dense)
    x = np.arange(len(scales))
    ax.bar(x - 0.2, [dense[s] for s in scales], 0.4, label="dense")
    best = [r for r in res["summary"] if r["method"] == "faststar:balanced"]
    if best:
        ax.bar(x + 0.2, [best[0]["per_scale_time"].get(s, 0.0) for s in scales], 0.4, label="faststar:balanced")
    ax.set_xticks(x, scales)
    ax.set_xlabel("scale index")
    ax.set_ylabel("time per video (s, all repetitions)")
    ax.legend()
    ax.set_title("per-scale latency")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main_eval(*, out: str = "out/eval", methods: str | None = None, prompts: str | None = None, seeds: str = "0,1",
              quick: bool = False, merge: list | None = None, model_dir: str | None = None, device: str = "auto",
              text_encoder: str | None = None, metric: str = "psnr") -> int:
    """``faststar eval``: the arguments as the CLI spells them (comma lists as strings)."""
    if merge:
        res = merge_results([load_results(f) for f in merge])
        write_results(res, Path(out), metric=metric)
        print(results_markdown(res))
        print(f"merged {len(merge)} runs into {out}/results.json, results.md, pareto.png, latency.png")
        return 0
    from .accel import check_method_specs
    from .pipeline import FastStarPipeline
    items = load_prompts(prompts)
    try:
        seed_list = [int(s) for s in seeds.split(",")]
    except ValueError:
        raise ValueError(f"--seeds must be a comma list of integers, got {seeds!r}") from None
    method_list = check_method_specs(methods.split(",") if methods else
                                     QUICK_METHODS if quick else STANDARD_METHODS)   # before the model loads
    pipe = FastStarPipeline.from_pretrained(model_dir, device=device, text_encoder=text_encoder)
    if quick:
        items, seed_list = items[:2], seed_list[:1]
    res = run_eval(pipe, out, method_list, items, seed_list, metric=metric)
    print(results_markdown(res))
    print(f"wrote {out}/results.json, results.md, pareto.png, latency.png")
    return 0
