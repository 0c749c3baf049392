"""Full-size GPU benchmark of the faststar engine (random bf16 weights, official schedules).

    PYTHONPATH=src python benchmarks/bench_engine.py --out results.json [--res 720p,480p] [--methods dense,...]
          [--backend auto|sdpa|fa3] [--vae]

Writes the JSON report (per-step CUDA-event times, per-scale totals, peak memory, TFLOP/s, speedups vs dense).
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from faststar.bench import run_bench  # noqa: E402

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench.json")
    ap.add_argument("--res", default="720p,480p")
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--methods", default="dense")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--preset", default="infinitystar-8b")
    ap.add_argument("--no-warmup", action="store_true")
    ap.add_argument("--warmup", default="all", choices=["all", "new"],
                    help="warm up every method before timing it (all), or only a method that runs a kind of step "
                         "no earlier method ran (new: pruned, single-branch, both)")
    ap.add_argument("--vae", action="store_true")
    ap.add_argument("--eager", action="store_true", help="do not compile the elementwise kernels")
    ap.add_argument("--no-graphs", action="store_true", help="do not replay small steps from CUDA graphs")
    a = ap.parse_args()
    run_bench(resolutions=a.res.split(","), duration=a.duration, methods=a.methods.split(","), preset=a.preset,
              backend=a.backend, warmup=(a.warmup if not a.no_warmup else False), with_vae=a.vae, out_json=a.out,
              compile=not a.eager, graphs=not a.no_graphs)
