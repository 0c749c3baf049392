"""Quality on the testbed against speed at 8B: one table and one Pareto plot per method family.

    python benchmarks/pareto_8b.py --eval benchmarks/results/testbed_v2_session9.json [--eval more.json ...] \
        --bench benchmarks/results/timing_s14.json [--bench more.json ...] --out benchmarks/results/pareto_8b_s14

Quality (PSNR / SSIM against dense of the same seed, and the detail measures latent PSNR, detail retention and
latent detail retention where the eval run has them) comes from `faststar eval` runs on the testbed; `--metric`
picks the plot's quality axis (default psnr). Speed is the
end-to-end speedup (transformer + VAE decode) of the same configuration at 8B / 720p 5 s from `faststar bench`.
Each configuration's speed is, in this order of preference:
  measured  - the configuration itself was timed in a bench run (the first --bench that timed it; each run's
              speedup is against its own dense run);
  same plan - another timed configuration runs exactly the same steps with the same token counts and guidance
              branches (a scoring variant, the random control at the same ratios): its time is used;
  predicted - a per-step latency model fitted on the bench run's own steps (t = a + b n + c n (n + ctx), per
              guidance branch, for steps of >= 3,000 tokens; smaller steps take their dense time) applied to the
              configuration's plan. Marked as such in the table and drawn hollow in the plot.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from faststar.accel import accelerator_from_record, flop_plan
from faststar.eval import METRICS
from faststar.eval import _family as eval_family
from faststar.eval import load_results
from faststar.schedule import official_schedule

BIG = 3000          # steps with fewer tokens are launch-bound: modelled by their dense time


def plan_signature(acc, schedule) -> tuple:
    """(tokens run, guidance branches) of every step: what the time of a run depends on."""
    fp = flop_plan(acc if acc is not None else "dense", schedule=schedule)
    return tuple((r["tokens_run"], r["branches"]) for r in fp["steps"]), max(r["prune_layer"] for r in fp["steps"])


def bench_signature(run: dict) -> tuple:
    return tuple((s["tokens_run"], s["branches"]) for s in run["per_step"])


class LatencyModel:
    """Per-step device time from a bench run: dense steps as measured, large pruned steps by least squares."""

    def __init__(self, bench: dict, resolution: str = "720p"):
        runs = [r for r in bench["runs"] if r["resolution"] == resolution]
        dense = next(r for r in runs if r["method"] == "dense")
        self.dense_ms = {s["step"]: 1000 * s["time_s"] for s in dense["per_step"]}
        self.vae_s = dense.get("vae_decode_s", 0.0)
        self.dense_e2e = dense["end_to_end_s"]
        self.schedule = official_schedule(resolution, dense.get("duration", 5))
        ref = {st.index: (self.schedule.scales[st.scale.ref_scale].num_tokens if st.scale.ref_scale is not None
                          else 0) for st in self.schedule.steps}
        self.ref, self.text = ref, bench.get("text_tokens", 128)
        rows, ys = [], []
        for r in runs:
            for s in r["per_step"]:
                if s["tokens_run"] >= BIG and s["branches"] > 0:
                    rows.append(self._features(s["step"], s["tokens_run"], s["branches"]))
                    ys.append(1000 * s["time_s"])
        self.coef, *_ = np.linalg.lstsq(np.array(rows), np.array(ys), rcond=None)

    def _features(self, step: int, n: int, branches: int):
        ctx = self.text + self.ref[step] + n
        return [1.0, n * branches, n * ctx * branches / 1e4]

    def step_ms(self, row: dict) -> float:
        n, N, br = row["tokens_run"], row["tokens"], row["branches"]
        if n == 0 or br == 0:
            return 0.0
        if n == N and br == 2 and row["prune_layer"] == 0:
            return self.dense_ms[row["step"]]
        if N < BIG:
            return self.dense_ms[row["step"]] * (n / N) ** 0.5 * (0.6 if br == 1 else 1.0)
        return float(np.dot(self.coef, self._features(row["step"], n, br)))

    def e2e_speedup(self, acc) -> float:
        fp = flop_plan(acc, schedule=self.schedule)
        t = sum(self.step_ms(r) for r in fp["steps"]) / 1000
        return self.dense_e2e / (t + self.vae_s)


def family(method: str, acc: dict) -> str:
    """The eval plot's family ("faststar (restore)", "skip", ...), with FastSTAR's score variant named."""
    fam = eval_family(dict(method=method, accelerator=acc))
    if fam.startswith("faststar ("):
        var = ("temporal only" if acc.get("spatial") == "off" else "spatial only" if acc.get("temporal") == "off"
               else "prev_clip" if acc.get("temporal") == "prev_clip" else None)
        if var:
            fam = fam.replace("faststar (", f"faststar {var} (", 1)
    return fam


def knobs(acc: dict | None) -> str:
    """The resolved knobs that decide a pruning plan, compactly (method strings name presets as they were then)."""
    if not acc or "keep_ratios" not in acc:
        return ""
    kr = acc["keep_ratios"]
    parts = ["keep " + ("/".join(f"{x:g}" for x in kr) if isinstance(kr, (list, tuple)) else f"{kr:g}")]
    if acc.get("last_k") is not None:
        parts.append(f"last {acc['last_k']}")
    if acc.get("max_reps"):
        parts.append(f"reps {acc['max_reps']}")
    if acc.get("single_branch_last"):
        parts.append(f"1-branch {acc['single_branch_last']}")
    if acc.get("block"):              # how the kept set is drawn: same plan, so same speed, but not the same video
        parts.append(f"block {acc['block']}")
    if acc.get("anchors"):
        parts.append(f"anchors {float(acc['anchors']):g}")
    return ", ".join(parts)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--eval", action="append", required=True, help="faststar eval results.json (repeatable)")
    ap.add_argument("--bench", action="append", required=True,
                    help="faststar bench JSON with a dense run (repeatable; the latency model is fitted on all their "
                         "runs, with the first file's dense step times)")
    ap.add_argument("--res", default="720p")
    ap.add_argument("--out", required=True, help="output stem: writes <out>.md, <out>.png, <out>.json")
    ap.add_argument("--metric", default="psnr", choices=sorted(METRICS), help="quality axis of the plot")
    a = ap.parse_args(argv)
    metric = a.metric
    benches = [json.loads(Path(b).read_text()) for b in a.bench]
    pooled = dict(benches[0], runs=benches[0]["runs"] + [r for b in benches[1:] for r in b["runs"]
                                                         if r["method"] != "dense"])
    model = LatencyModel(pooled, a.res)
    by_sig = {}
    for r in pooled["runs"]:
        if r["resolution"] == a.res:
            by_sig.setdefault(bench_signature(r), r)
    rows = []
    floors = []
    for path in a.eval:
        res = load_results(path)
        floors.append(res["noise_floor"].get(metric))
        for r in res["summary"]:
            m = r["method"]
            acc = accelerator_from_record(r.get("accelerator"))
            sig, prune_layer = plan_signature(acc, model.schedule)
            hit = by_sig.get(sig)
            predicted = model.e2e_speedup(acc)
            same_config = (hit is not None and hit["method"] == m
                           and hit.get("accelerator") in (None, r.get("accelerator")))
            if hit is not None and (prune_layer == 0 or same_config):
                sp = hit["speedup_end_to_end"]
                how = "measured" if same_config else f"same plan as {hit['method']}"
            else:
                sp, how = predicted, "predicted"
            rows.append(dict(method=m, family=family(m, r.get("accelerator", {})), psnr=r["psnr"],
                             psnr_min=r["psnr_min"], ssim=r["ssim"], n=r["n"], testbed_flop_speedup=r["flop_speedup"],
                             latent_psnr=r.get("latent_psnr"), detail_retention=r.get("detail_retention"),
                             latent_detail_retention=r.get("latent_detail_retention"),
                             speedup_8b=sp, speed_source=how, predicted_8b=predicted,
                             accelerator=r.get("accelerator"), eval=Path(path).stem, eval_device=res["device"],
                             seeds=res["seeds"]))
    rows.sort(key=lambda r: (r["family"], r["speedup_8b"]))
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(dict(bench=a.bench, evals=a.eval, noise_floor=floors,
                                                        latency_model=list(map(float, model.coef)), rows=rows),
                                                   indent=1))
    lines = ["| family | configuration (as run) | knobs | testbed PSNR dB | min | SSIM | latent PSNR dB | detail ret. "
             "| latent detail ret. | videos | eval run | 8B e2e speedup | speed from |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def fmt(v, d=2):
        return "-" if v is None else f"{v:.{d}f}"
    for r in rows:
        lines.append(f"| {r['family']} | `{r['method']}` | {knobs(r['accelerator'])} | {r['psnr']:.2f} | "
                     f"{r['psnr_min']:.2f} | {r['ssim']:.3f} | {fmt(r['latent_psnr'])} | "
                     f"{fmt(r['detail_retention'])} | {fmt(r['latent_detail_retention'])} | {r['n']} | "
                     f"{r['eval']} ({r['eval_device']}) | {r['speedup_8b']:.2f}x | {r['speed_source']} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(10, 6.5))
    fams = sorted({r["family"] for r in rows})
    cmap = plt.get_cmap("tab20")
    for i, f in enumerate(fams):
        rs = sorted([r for r in rows if r["family"] == f and r.get(metric) is not None],
                    key=lambda r: r["speedup_8b"])
        front = [r for r in rs if not any(q["speedup_8b"] >= r["speedup_8b"] and q[metric] > r[metric] for q in rs)]
        ax.plot([r["speedup_8b"] for r in front], [r[metric] for r in front], "-", color=cmap(i % 20), lw=1.2,
                alpha=0.7)
        for r in rs:
            hollow = r["speed_source"] == "predicted"
            ax.plot(r["speedup_8b"], r[metric], "s" if r["eval_device"] == "cpu" else "o", color=cmap(i % 20),
                    mfc="none" if hollow else cmap(i % 20))
        ax.plot([], [], "o-", color=cmap(i % 20), label=f)
    for fl in sorted(set(round(f, 2) for f in floors if f is not None and np.isfinite(f))):
        ax.axhline(fl, color="grey", ls=":", lw=1)
        ax.text(ax.get_xlim()[0], fl, f" seed-to-seed floor {fl:.2f}", va="bottom", fontsize=7, color="grey")
    ax.set_xlabel(f"end-to-end speedup at 8B / {a.res} 5 s on an H200 (hollow: latency-model prediction; "
                  "squares: testbed quality from a CPU eval run)")
    ax.set_ylabel(f"testbed {METRICS[metric]}")
    ax.set_title("Quality (testbed) vs speed (8B): every configuration, lines join each family's Pareto front")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)
    plt.close(fig)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
