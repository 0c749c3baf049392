"""The GPU benchmark's CPU-checkable parts: clear refusal without CUDA, per-scale aggregation, the plot."""

import pytest
import torch

from faststar.bench import per_scale, plot_bench, random_init_, run_bench
from faststar.model.transformer import build_transformer


def test_bench_needs_cuda():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        run_bench(resolutions=("480p",))


def test_random_init_fills_norms_and_weights():
    m = build_transformer("golden-tiny")
    random_init_(m, 0, std=0.02)
    assert torch.all(m.norm_hidden_sates.weight == 1) and torch.all(m.head.bias == 0)
    assert 0.015 < m.word_embed.weight.std().item() < 0.025


def test_per_scale_and_plot(tmp_path):
    stats = [dict(scale=0, thw=[1, 1, 1], tokens=1, tokens_run=1, time_s=0.01, flops=1.0, flops_dense=1.0),
             dict(scale=0, thw=[1, 1, 1], tokens=1, tokens_run=1, time_s=0.02, flops=1.0, flops_dense=1.0),
             dict(scale=1, thw=[1, 2, 3], tokens=6, tokens_run=3, time_s=0.05, flops=2.0, flops_dense=4.0)]
    ps = per_scale(stats)
    assert ps[0]["reps"] == 2 and ps[0]["time_ms"] == pytest.approx(30.0) and ps[1]["tokens_run"] == 3
    runs = [dict(resolution="720p", method=m, per_scale=ps, end_to_end_s=t, speedup_end_to_end=2.0 / t,
                 vae_decode_s=0.1) for m, t in (("dense", 2.0), ("faststar:balanced", 1.0))]
    png = plot_bench(dict(gpu="test", preset="golden-tiny", runs=runs), tmp_path / "b.png")
    assert png.stat().st_size > 5000


def test_plan_kinds_decide_which_methods_need_a_warm_up():
    from faststar.accel import accelerator_from_spec
    from faststar.bench import plan_kinds
    from faststar.config import transformer_config
    from faststar.schedule import official_schedule
    sch, cfg = official_schedule("720p", 5), transformer_config("infinitystar-8b")

    def kinds(spec):
        return plan_kinds(accelerator_from_spec(spec), sch, cfg)
    assert kinds("dense") == {"dense"}
    assert kinds("skip:last1") == {"dense"}                       # a step that does not run compiles nothing
    assert kinds("faststar:paper") == {"dense", "pruned"}
    assert kinds("fastvar:hart") == {"dense", "pruned"}
    assert kinds("stagevar:cfg0") == {"dense", "single-branch"}
    assert kinds("faststar:paper+single_branch_last=2") == {"dense", "pruned", "single-branch",
                                                             "pruned+single-branch"}
    assert kinds("faststar:paper+last_k=2+single_branch_last=2") == {"dense", "single-branch", "pruned+single-branch"}
    assert kinds("faststar:balanced") == {"dense", "single-branch", "pruned+single-branch"}


def _paired_vs_random():
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "paired_vs_random.py"
    spec = importlib.util.spec_from_file_location("paired_vs_random", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_paired_vs_random_counts_per_video_wins():
    mod = _paired_vs_random()
    rows = [dict(method=m, prompt=p, seed=s, psnr=v) for m, p, s, v in [
        ("faststar:quality", "a", 0, 30.0), ("faststar:quality", "b", 0, 25.0), ("faststar:quality", "a", 1, 28.0),
        ("random:quality", "a", 0, 29.0), ("random:quality", "b", 0, 26.0), ("random:quality", "a", 1, 27.5),
        ("faststar:fast", "a", 0, 20.0), ("skip:last1", "a", 0, 31.0)]]
    out = mod.paired(dict(rows=rows))
    assert len(out) == 1 and out[0]["method"] == "faststar:quality"        # faststar:fast has no random pair
    assert out[0]["videos"] == 3 and out[0]["wins"] == 2
    assert out[0]["mean_diff_db"] == pytest.approx((1.0 - 1.0 + 0.5) / 3)


def test_paired_vs_random_spread_knobs_pair_with_uniform_control_and_explicit_pairs():
    mod = _paired_vs_random()
    assert mod.control_name("faststar:fast+block=2+w_detail=1") == "random:fast"
    rows = [dict(method=m, prompt=p, seed=0, psnr=v) for m, p, v in [
        ("faststar:fast+block=2", "a", 26.0), ("faststar:fast+block=2", "b", 25.0),
        ("random:fast", "a", 25.5), ("random:fast", "b", 25.5),
        ("stagevar:cfg0-video", "a", 37.0), ("stagevar:cfg0-video", "b", 36.0)]]
    out = mod.paired(dict(rows=rows))
    assert [(r["method"], r["control"], r["wins"]) for r in out] == [("faststar:fast+block=2", "random:fast", 1)]
    assert out[0]["mean_diff_db"] == pytest.approx(0.0)
    assert out[0]["se_db"] == pytest.approx(0.5)               # diffs +0.5, -0.5: sd 0.707, / sqrt(2)
    by = mod._by_method(dict(rows=rows))
    a, b = mod.split_pair("faststar:fast+block=2=stagevar:cfg0-video", by)
    assert (a, b) == ("faststar:fast+block=2", "stagevar:cfg0-video")
    assert mod.compare(by, a, b)["mean_diff_db"] == pytest.approx(-11.0)
    with pytest.raises(SystemExit, match="not two methods"):
        mod.split_pair("faststar:fast=random:slow", by)
