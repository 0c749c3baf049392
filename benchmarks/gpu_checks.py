"""Correctness checks that need the GPU (run on the device before timing).

1. The golden T2V / I2V cases on CUDA in fp32 (SDPA) within the reference tolerances.
2. A random model of the 8B width (4 layers), bf16, teacher-forced on a small schedule: logits of every step with
   eager kernels + SDPA vs compiled kernels + CUDA graphs (SDPA and fa3), as relative errors.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
import torch  # noqa: E402

from faststar.bench import random_init_  # noqa: E402
from faststar.generate import generate  # noqa: E402
from faststar.model.graphs import disable_cuda_graphs, enable_cuda_graphs  # noqa: E402
from faststar.model.transformer import build_transformer, compile_kernels  # noqa: E402
from faststar.reference import check_case  # noqa: E402
from faststar.schedule import build_schedule  # noqa: E402

golden = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("shared/golden")
if golden.is_dir():
    import faststar.reference as R
    for case in ("transformer_tiny", "transformer_tiny_i2v"):
        res = R.check_transformer_case(golden / case, device="cuda")
        worst = {}
        for r in res:
            q = r["quantity"]
            worst[q] = max(worst.get(q, 0.0), r["max_abs_err"])
        print(f"golden {case} on CUDA fp32: {'OK' if all(r['ok'] for r in res) else 'FAIL'} "
              + " ".join(f"{k}={v:.1e}" for k, v in sorted(worst.items())))
else:
    print("golden data not carried; skipped")

torch.backends.cuda.matmul.allow_tf32 = True
dev = torch.device("cuda")
model = build_transformer("infinitystar-8b", device="meta", depth=4, block_chunks=1)
model.cast_blocks_(torch.bfloat16)
model.to_empty(device=dev)
random_init_(model, 0)
model.eval().requires_grad_(False)
model.fuse_projections_()
sched = build_schedule([(1, 1), (2, 3), (4, 7), (9, 16), (18, 32)], [1, 8], image_reps=[2, 2, 2, 1, 1],
                       video_reps=[3, 3, 2, 1, 1], semantic_scales=3)
text = torch.randn(40, 2048, device=dev, generator=torch.Generator(device=dev).manual_seed(0))
ref_run = generate(model, sched, text, seed=1)
teacher = {st.index: b for st, b in zip(sched.steps, ref_run.bits)}


def logits_of(tag):
    rec = {}
    generate(model, sched, text, seed=1, teacher_bits=teacher, record=rec)
    return {k: v for k, v in rec.items() if k.endswith("logits_cond")}


model.set_attention_backend("sdpa")
compile_kernels(False)
base = logits_of("eager-sdpa")
for name, backend, comp, graphs in [("compiled+graphs sdpa", "sdpa", True, True),
                                    ("compiled+graphs fa3", "fa3", True, True), ("eager fa3", "fa3", False, False)]:
    try:
        model.set_attention_backend(backend)
    except RuntimeError as e:
        print(f"{name}: skipped ({e})")
        continue
    compile_kernels(comp)
    runner = enable_cuda_graphs(model) if graphs else None
    got = logits_of(name)
    got2 = logits_of(name)           # second run: replays
    rel = max(((got[k] - base[k]).norm() / base[k].norm()).item() for k in base)
    same = all(torch.equal(got[k], got2[k]) for k in got)
    extra = f", graphs captured {runner.captures} replayed {runner.replays}" if runner else ""
    print(f"{name}: max relative logits error vs eager sdpa {rel:.2e}; repeat identical {same}{extra}")
    disable_cuda_graphs(model)
# same seed, same video on the GPU (bf16, compiled, graphs)
compile_kernels(True)
enable_cuda_graphs(model)
a = generate(model, sched, text, seed=3).latent
b = generate(model, sched, text, seed=3).latent
print("same seed -> same latent on GPU:", torch.equal(a, b))
