"""`faststar eval` on a tiny model: every number present, dense-vs-dense at the cap, pruned runs below it."""
import json
import math
import sys
from pathlib import Path


from faststar.cli import main as cli_main

sys.path.insert(0, str(Path(__file__).parent))
from test_pipeline import tiny_pipe  # noqa: E402


def test_eval_cli_tiny_model(tmp_path, capsys):
    folder = tiny_pipe().save_pretrained(tmp_path / "model")
    prompts = tmp_path / "p.jsonl"
    photo = Path(__file__).resolve().parents[1] / "src" / "faststar" / "data" / "cup_frame30.jpg"
    prompts.write_text(json.dumps({"prompt": "a ball rolls"}) + "\n"
                       + json.dumps({"prompt": "a hand turns a cup", "image": str(photo)}) + "\n")
    out = tmp_path / "eval"
    args = ["eval", "--model-dir", str(folder), "--prompts", str(prompts), "--seeds", "0",
            "--methods", "faststar:balanced+keep_ratios=0.5/0.7/1.0,random:balanced", "--out", str(out),
            "--device", "cpu"]
    assert cli_main(args) == 0
    res = json.loads((out / "results.json").read_text())
    for k in ("noise_floor", "summary", "rows", "dense_time_s", "dense_per_scale_time"):
        assert k in res
    assert {r["method"] for r in res["summary"]} == {"faststar:balanced+keep_ratios=0.5/0.7/1.0", "random:balanced"}
    for r in res["rows"]:
        for k in ("psnr", "ssim", "flop_speedup", "time_s", "dense_time_s"):
            assert isinstance(r[k], float) and not math.isnan(r[k]), k
        assert r["flop_speedup"] > 1.0
        assert r["psnr"] < 100                       # pruned: below the cap
    assert len(res["noise_floor"]["per_video"]) == 2
    # text-to-video and image-to-video apart: one prompt of each, seed 0, so each is that one video's PSNR
    for sm in res["summary"]:
        rows = {bool(r["image"]): r["psnr"] for r in res["rows"] if r["method"] == sm["method"]}
        assert sm["psnr_t2v"] == rows[False] and sm["psnr_i2v"] == rows[True]
        assert abs(sm["psnr"] - (rows[False] + rows[True]) / 2) < 1e-9
    assert "| T2V PSNR | I2V PSNR |" in (out / "results.md").read_text()
    # results.json is compact: a row's accelerator record lives once, in its method's summary entry
    from faststar.eval import compact_results, load_results
    assert all("accelerator" not in r for r in res["rows"])
    full = load_results(out / "results.json")
    acc = {sm["method"]: sm["accelerator"] for sm in full["summary"]}
    assert {r["accelerator"]["method"] for r in full["rows"]} == {"faststar", "random"}
    assert all(r["accelerator"] == acc[r["method"]] for r in full["rows"])
    assert compact_results(full) == res
    for f in ("results.md", "pareto.png", "latency.png"):
        assert (out / f).stat().st_size > 0
    # resumable: a second call redoes nothing and gives the same numbers
    n_runs = len(list((out / "runs").glob("*.json")))
    assert cli_main(args) == 0
    assert len(list((out / "runs").glob("*.json"))) == n_runs
    res2 = json.loads((out / "results.json").read_text())
    assert [r["psnr"] for r in res2["rows"]] == [r["psnr"] for r in res["rows"]]
    # dense against itself: infinite PSNR
    from faststar.metrics import psnr
    import numpy as np
    dense = [p for p in (out / "runs").glob("*.json") if json.loads(p.read_text())["method"] == "dense"][0]
    frames = np.load(dense.with_suffix(".npz"))["frames"]
    assert psnr(frames, frames) == float("inf")
    assert "noise floor" in (out / "results.md").read_text().lower()


def test_eval_interrupted_writes_partial_results_and_resumes(tmp_path, monkeypatch):
    """Ctrl-C in the middle keeps the finished runs, writes what is known (flagged), and a rerun completes it."""
    from faststar import eval as ev
    pipe = tiny_pipe()
    prompts = [{"prompt": "a ball rolls"}]
    methods = ["faststar:balanced+keep_ratios=0.5/0.7/1.0", "random:balanced"]
    real_run, calls = ev.Runner.run_latent, []

    def flaky(self, method, item, seed):
        calls.append(method)
        if len(calls) == 4:                       # dense s, dense s+1000, the first method, then Ctrl-C
            raise KeyboardInterrupt
        return real_run(self, method, item, seed)
    monkeypatch.setattr(ev.Runner, "run_latent", flaky)
    res = ev.run_eval(pipe, tmp_path, methods, prompts, [0], progress=False)
    assert res["complete"] is False and [r["method"] for r in res["rows"]] == methods[:1]
    assert "INTERRUPTED" in (tmp_path / "results.md").read_text()
    assert len(res["noise_floor"]["per_video"]) == 1
    monkeypatch.setattr(ev.Runner, "run_latent", real_run)
    n_runs = len(list((tmp_path / "runs").glob("*.json")))
    assert n_runs == 3
    full = ev.run_eval(pipe, tmp_path, methods, prompts, [0], progress=False)
    assert full["complete"] is True and [r["method"] for r in full["rows"]] == methods
    assert full["rows"][0]["psnr"] == res["rows"][0]["psnr"]


def test_eval_cache_is_keyed_by_the_resolved_config(tmp_path):
    """Two names for the same knobs share a run; the same name with other knobs does not."""
    from faststar import eval as ev
    pipe = tiny_pipe()
    r = ev.Runner(pipe, tmp_path)
    item = {"prompt": "a ball rolls"}
    r.run("faststar:balanced+keep_ratios=0.5/0.7/1.0", item, 0)
    r.run("faststar:quality+keep_ratios=0.5/0.7/1.0+w_detail=0", item, 0)      # quality = balanced + the detail term
    assert len(list((tmp_path / "runs").glob("*.json"))) == 1
    r.run("faststar:balanced+keep_ratios=0.5/0.8/1.0", item, 0)
    assert len(list((tmp_path / "runs").glob("*.json"))) == 2


def test_eval_cache_is_keyed_by_the_weights(tmp_path):
    """A retrained model of the same name (same spec, other weights) does not reuse the old model's videos."""
    import torch
    from faststar import eval as ev
    a, b = tiny_pipe(), tiny_pipe()
    assert a.fingerprint() == b.fingerprint()
    with torch.no_grad():
        next(iter(b.transformer.parameters())).add_(1e-3)
    b._fingerprint = None
    assert a.fingerprint() != b.fingerprint()
    item = {"prompt": "a ball rolls"}
    ev.Runner(a, tmp_path, log=lambda *_: None).run("dense", item, 0)
    ev.Runner(a, tmp_path, log=lambda *_: None).run("dense", item, 0)
    assert len(list((tmp_path / "runs").glob("*.json"))) == 1
    ev.Runner(b, tmp_path, log=lambda *_: None).run("dense", item, 0)
    assert len(list((tmp_path / "runs").glob("*.json"))) == 2


def test_eval_merge_of_parts(tmp_path, capsys):
    """Runs on parts of a method list (one process per GPU) merge into the result of the whole list."""
    import pytest
    from faststar.eval import merge_results
    folder = tiny_pipe().save_pretrained(tmp_path / "model")
    common = ["eval", "--model-dir", str(folder), "--seeds", "0", "--device", "cpu", "--prompts"]
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "a ball rolls"}) + "\n")
    a_m, b_m = "faststar:balanced+keep_ratios=0.5/0.7/1.0", "random:balanced"
    for name, methods in (("a", a_m), ("b", f"{b_m},{a_m}"), ("whole", f"{a_m},{b_m}")):
        assert cli_main(common + [str(prompts), "--methods", methods, "--out", str(tmp_path / name)]) == 0
    assert cli_main(["eval", "--merge", str(tmp_path / "a" / "results.json"), str(tmp_path / "b" / "results.json"),
                     "--out", str(tmp_path / "merged")]) == 0
    merged = json.loads((tmp_path / "merged" / "results.json").read_text())
    whole = json.loads((tmp_path / "whole" / "results.json").read_text())
    assert merged["methods"] == [a_m, b_m] and merged["merged_from"] == 2
    assert len(merged["rows"]) == 2                       # the method in both parts counted once
    psnr = {r["method"]: r["psnr"] for r in merged["summary"]}
    assert psnr == pytest.approx({r["method"]: r["psnr"] for r in whole["summary"]})
    assert merged["noise_floor"]["psnr"] == pytest.approx(whole["noise_floor"]["psnr"])
    assert (tmp_path / "merged" / "pareto.png").stat().st_size > 0
    # parts of other runs do not merge
    other = dict(whole, seeds=[1])
    with pytest.raises(ValueError, match="seeds"):
        merge_results([whole, other])
    bad = json.loads(json.dumps(whole))
    bad["noise_floor"]["per_video"][0]["psnr"] += 1.0
    with pytest.raises(ValueError, match="dense videos differ"):
        merge_results([whole, bad])


def test_eval_checks_every_method_before_generating(tmp_path, capsys):
    """A bad method string anywhere in the list fails at once, naming it (library and CLI), before any video."""
    import pytest
    from faststar.accel import check_method_specs
    from faststar.eval import run_eval

    class NoGeneration:
        device = None

        def __call__(self, *a, **k):
            raise AssertionError("generated a video before the methods were checked")

    with pytest.raises(ValueError, match=r"method 'faststar:balanced\+w_sq=1': unknown faststar option"):
        run_eval(NoGeneration(), tmp_path / "e", ["dense", "faststar:balanced+w_sq=1"], [{"prompt": "x"}], [0])
    with pytest.raises(ValueError, match="method 'skip:last9'"):
        check_method_specs(["skip:last9"])
    assert check_method_specs([" dense", "faststar:fast "]) == ["dense", "faststar:fast"]
    assert cli_main(["eval", "--methods", "faststar:quality,random:nope", "--seeds", "0",
                     "--out", str(tmp_path / "c")]) == 2
    assert "method 'random:nope': unknown preset 'nope'" in capsys.readouterr().err
    assert cli_main(["eval", "--seeds", "0,one", "--out", str(tmp_path / "c")]) == 2
    assert "--seeds must be a comma list of integers, got '0,one'" in capsys.readouterr().err
    assert not (tmp_path / "e").exists() and not (tmp_path / "c").exists()


def test_results_markdown_pairs_faststar_with_its_random_control():
    """results.md adds FastSTAR against random selection at the same knobs (score and spread knobs dropped)."""
    from faststar.eval import control_name, results_markdown, summarize_rows
    assert control_name("faststar:quality+anchors=0+w_tm=0") == "random:quality"
    assert control_name("faststar:fast+last_k=3+block=2") == "random:fast+last_k=3"
    assert control_name("faststar:paper+combine=sum") == "random:paper"
    rows = [dict(method=m, prompt=p, image=None, seed=0, psnr=v, ssim=0.9, flop_speedup=1.5, time_s=1.0,
                 dense_time_s=2.0, per_scale_time={"0": 0.1})
            for m, p, v in [("faststar:quality+anchors=0", "a", 30.0), ("faststar:quality+anchors=0", "b", 28.0),
                            ("random:quality", "a", 29.0), ("random:quality", "b", 28.5),
                            ("skip:last1", "a", 25.0), ("skip:last1", "b", 25.0)]]
    res = dict(model="m", device="cpu", date="d", seeds=[0], prompts=[{"prompt": "a"}, {"prompt": "b"}],
               noise_floor=dict(psnr=17.0, ssim=0.6), dense_time_s=2.0, summary=summarize_rows(rows), rows=rows)
    md = results_markdown(res)
    assert "| faststar:quality+anchors=0 | random:quality | 1/2 | +0.25 (0.75) |" in md
    assert "T2V PSNR" not in md and "skip:last1 | random" not in md


def test_eval_detail_measures_on_the_tiny_model(tmp_path):
    """Every comparison carries detail_retention, latent_detail_retention and latent_psnr, recomputable from the
    stored frames and canvases; skipping the last scale loses finest-scale latent detail; results.md has the
    columns and the Pareto plot takes any of the measures; an old cached run without a canvas gives None."""
    import numpy as np
    import pytest
    from faststar import eval as ev
    from faststar.metrics import detail_retention, latent_detail_retention, latent_psnr
    pipe = tiny_pipe()
    methods = ["skip:last1", "random:balanced"]
    res = ev.run_eval(pipe, tmp_path, methods, [{"prompt": "a ball rolls"}], [0], progress=False)
    sch = pipe.spec.schedule(None, None)
    runner = ev.Runner(pipe, tmp_path)
    _, dframes, dlat = runner.run_latent("dense", {"prompt": "a ball rolls"}, 0)
    assert dlat.shape == (1, 64, 3, 4, 6) and dlat.dtype == np.float32
    for r in res["rows"]:
        _, frames, lat = runner.run_latent(r["method"], {"prompt": "a ball rolls"}, 0)
        assert r["detail_retention"] == pytest.approx(detail_retention(frames, dframes), rel=1e-12)
        assert r["latent_detail_retention"] == pytest.approx(latent_detail_retention(lat, dlat, sch), rel=1e-12)
        assert r["latent_psnr"] == pytest.approx(latent_psnr(lat, dlat), rel=1e-12)
        assert 0 < r["detail_retention"] and math.isfinite(r["latent_psnr"])
    skip = next(r for r in res["rows"] if r["method"] == "skip:last1")
    assert skip["latent_detail_retention"] < 1.0            # the finest grid's codes of the last clip are missing
    for sm in res["summary"]:
        row = next(r for r in res["rows"] if r["method"] == sm["method"])
        for k in ("latent_psnr", "detail_retention", "latent_detail_retention"):
            assert sm[k] == pytest.approx(row[k])            # one video: the mean is that video's value
    for k in ("latent_psnr", "detail_retention", "latent_detail_retention"):
        assert isinstance(res["noise_floor"][k], float)
    md = (tmp_path / "results.md").read_text()
    assert "| latent PSNR dB | detail ret. | latent detail ret. |" in md and "3x3 Laplacian" in md
    assert f"| skip:last1 | {skip['psnr']:.2f} |" in md and f"{skip['latent_detail_retention']:.2f}" in md
    for metric in ev.METRICS:
        ev.plot_pareto(res, tmp_path / f"p_{metric}.png", metric=metric)
        assert (tmp_path / f"p_{metric}.png").stat().st_size > 0
    with pytest.raises(ValueError, match="unknown metric"):
        ev.plot_pareto(res, tmp_path / "x.png", metric="sharpness")
    # a run cached before canvases were stored: frames only -> latent measures None, pixel ones still there
    for f in (tmp_path / "runs").glob("*.npz"):
        with np.load(f) as z:
            frames = z["frames"]
        np.savez_compressed(f, frames=frames)
    old = ev.run_eval(pipe, tmp_path, methods, [{"prompt": "a ball rolls"}], [0], progress=False)
    assert all(r["latent_psnr"] is None and r["latent_detail_retention"] is None for r in old["rows"])
    assert [r["detail_retention"] for r in old["rows"]] == [r["detail_retention"] for r in res["rows"]]
    assert all(sm["latent_psnr"] is None for sm in old["summary"])
    assert "| - | " in (tmp_path / "results.md").read_text()
