"""The testbed trainer: training forward == inference path, and the whole pipeline on a tiny config (CPU)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from faststar.checkpoint import load_checkpoint, load_transformer
from faststar.generate import generate
from faststar.model.transformer import STARTransformer
from faststar.sampling import GuidanceConfig
from faststar.testbed import packing
from faststar.testbed import config as tb_config
from faststar.testbed.config import tiny_spec
from faststar.testbed.train import init_transformer_, vae_decode, vae_latent, vae_posterior
from faststar.vae.model import VideoVAE
from faststar.vae.quant import multiscale_quantize

SHARED = Path(__file__).resolve().parents[2] / "shared"
CLIPS = SHARED / "data" / "clips"


def test_testbed_schedule_shape():
    s = tb_config.testbed_schedule()
    assert s.num_steps == 43 and len(s.scales) == 16
    assert sum(st.scale.num_tokens for st in s.steps) == 7872
    assert s.pixel_size() == (256, 448) and s.pixel_frames == 17
    assert [sc.bits for sc in s.clip_scales(1)] == [16] * 5 + [64] * 3
    assert [sc.reps for sc in s.clip_scales(1)] == [3, 3, 3, 3, 3, 2, 1, 1]
    spec = tb_config.testbed_spec()
    # packed sequence of the GPU run: 64 text slots + 7872 visual tokens = 62 flex blocks exactly
    assert (spec.text_pad + 7872) % packing.FLEX_BLOCK == 0


def test_testbed_long_spec_doubles_the_video_clip_only():
    base, long = tb_config.testbed_spec(), tb_config.testbed_long_spec()
    s, video = long.build_schedule(), base.build_schedule().clip_scales(1)
    assert long.pixel_frames == 33 and s.pixel_frames == 33 and s.pixel_size() == (256, 448)
    assert [sc.thw for sc in s.clip_scales(1)] == [(8, h, w) for _, h, w in (sc.thw for sc in video)]
    # every step of the video clip has twice the tokens: the total grows by the video clip's dense total
    assert sum(st.scale.num_tokens for st in s.steps) == 7872 + sum(sc.num_tokens * sc.reps for sc in video)
    assert (long.vae, long.transformer, long.pixel_hw) == (base.vae, base.transformer, base.pixel_hw)
    assert "testbed-long" in tb_config.SPECS and long.name != base.name


def _random_model(spec, seed=0):
    torch.manual_seed(seed)
    m = STARTransformer(spec.transformer_config()).eval()
    init_transformer_(m)
    with torch.no_grad():               # larger weights than the init, so that mistakes show in the logits
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m


@pytest.mark.parametrize("mode", ["mask", "flex"])
def test_packed_forward_equals_generate(mode):
    """Teacher-forced logits of the packed training forward == those of the inference loop, step by step, for a
    batch of two captions of different lengths."""
    spec = tiny_spec()
    sch = spec.build_schedule()
    m = _random_model(spec)
    torch.manual_seed(1)
    zs = [torch.randn(1, 64, 2, 4, 7), torch.randn(1, 64, 2, 4, 7) * 0.5]
    texts = [torch.randn(5, 384), torch.randn(3, 384)]
    lay = packing.build_layout(sch, m.cfg, text_pad=8, multiple=packing.FLEX_BLOCK if mode == "flex" else 1)
    inp, lab = zip(*[packing.teacher_data(z, sch) for z in zs])
    tb = torch.zeros(2, 8, 384)
    for i, t in enumerate(texts):
        tb[i, :t.shape[0]] = t
    x = packing.embed_inputs(m, tb, torch.stack(inp), lay)
    dm = packing.dense_mask(lay, torch.tensor([5, 3]))
    with torch.no_grad():
        h = packing.packed_hidden(m, x, lay, dm if mode == "mask" else packing.flex_block_mask(dm), mode,
                                  compiled=False)
    for b in range(2):
        bits = multiscale_quantize(zs[b], sch)[0]
        rec = {}
        generate(m, sch, texts[b], guidance=GuidanceConfig(mode="none"),
                 teacher_bits={st.index: x for st, x in zip(sch.steps, bits)}, record=rec)
        hv = h[b, 8:8 + lay.n_vis]
        for st, (a, e) in zip(sch.steps, lay.step_range):
            ref = rec[f"step{st.index:03d}.logits_cond"]
            got = m.logits(hv[a:e][None], st.scale.bits)[0]
            assert torch.allclose(got, ref, atol=2e-5, rtol=1e-5), (b, st.index, (got - ref).abs().max())
            # labels: the quantizer's bits of the step, in packed order (semantic steps fill 16 of 64 columns)
            d = st.scale.bits
            assert torch.equal(lab[b][a:e, :d], bits[st.index].reshape(-1, d))
            assert not lab[b][a:e, d:].any()


def test_mask_visibility():
    """A step sees its text, itself and the last repetition of the previous clip's last scale, nothing else."""
    spec = tiny_spec()
    sch = spec.build_schedule()
    lay = packing.build_layout(sch, spec.transformer_config(), text_pad=4)
    m = packing.dense_mask(lay, torch.tensor([2]))[0]
    Lp = 4
    last0 = [st for st in sch.steps if st.scale.clip == 0][-1]
    for st, (a, e) in zip(sch.steps, lay.step_range):
        row = m[Lp + a]
        seen_steps = {int(lay.step_of[j - Lp]) for j in torch.nonzero(row).flatten().tolist() if j >= Lp}
        want = {st.index} | ({last0.index} if st.scale.clip == 1 else set())
        assert seen_steps == want, (st.index, seen_steps, want)
        assert row[:2].all() and not row[2:Lp].any()          # valid text only
    assert m[0, :2].all() and not m[0, 2:].any()                # text sees text
    assert m[3, 3] and m[3].sum() == 1                          # padding sees itself


def test_vae_training_passes_equal_inference():
    """The single-pass differentiable encode/decode equal the engine's chunked inference encode/decode."""
    torch.manual_seed(0)
    vae = VideoVAE(tiny_spec().vae_config()).eval()
    with torch.no_grad():
        vae.scale_learnable_parameters.fill_(1.7)
    x = torch.rand(1, 3, 17, 32, 48) * 2 - 1
    with torch.no_grad():
        mean, logvar = vae_posterior(vae, x)
        z = vae_latent(vae, mean)
        assert torch.allclose(z, vae.encode(x), atol=1e-5)
        assert torch.allclose(vae_decode(vae, z), vae.decode(z), atol=1e-5)


def _loss_dropped(rows, key="loss", k=3):
    vals = [r[key] for r in rows]
    assert all(map(lambda v: v == v and abs(v) < 1e6, vals)), vals
    return sum(vals[-k:]) / k < sum(vals[:k]) / k


@pytest.mark.skipif(not CLIPS.is_dir(), reason="../shared/data/clips is absent")
def test_train_pipeline_tiny(tmp_path):
    from faststar.pipeline import FastStarPipeline, config_from_dict
    from faststar.testbed.data import prepare_data
    from faststar.testbed.train import main
    from faststar.text import TinyTextEncoder
    from faststar.vae.model import VAEConfig
    data = prepare_data(tmp_path / "data", only=["tree", "bikes", "cup"], max_frames=24,
                        encoder=TinyTextEncoder(384))
    meta = json.loads((data / "captions.json").read_text())
    assert {c["name"]: c["split"] for c in meta["clips"]} == {"tree": "train", "bikes": "train", "cup": "val"}
    run, w = tmp_path / "run", tmp_path / "weights"
    common = ["--data", str(data), "--out", str(run), "--export", str(w), "--spec", "tiny", "--log-every", "1",
              "--val-windows", "1", "--minutes-vae", "5", "--minutes-gpt", "5"]
    log = main(common + ["--max-vae-steps", "14", "--max-gpt-steps", "40", "--lr-vae", "2e-3",
                         "--samples", str(tmp_path / "samples.png")])
    assert (tmp_path / "samples.png").stat().st_size > 1000
    assert len(log["vae"]) == 14 and len(log["gpt"]) == 40
    assert _loss_dropped(log["vae"]) and _loss_dropped(log["gpt"], k=5)
    assert log["summary"]["calibration"]["rel_err"] <= log["summary"]["calibration"]["rel_err_before"]
    assert len(log["gpt_val"]["acc_per_scale"]) == 6
    # exported files load back strictly, and the pipeline generates from them
    cfg = json.loads((w / "config.json").read_text())
    assert cfg["kind"] == "faststar-testbed" and cfg["text_encoder"] == "minilm"
    tf = load_transformer(w / "transformer", dtype=torch.float32)
    assert tf.cfg.depth == 2 and tf.cfg.text_channels == 384
    vae = VideoVAE(config_from_dict(VAEConfig, cfg["vae"]))
    assert load_checkpoint(vae, w / "vae.safetensors")["loaded"] == len(vae.state_dict())
    assert all(p.stat().st_size < 16 * 2 ** 20 for p in w.rglob("*") if p.is_file())
    pipe = FastStarPipeline.from_pretrained(w, text_encoder=TinyTextEncoder(384), device="cpu")
    out = pipe("a tree behind a window", seed=0, progress=False)
    assert out.frames.shape == (5, 64, 112, 3)
    # resume: the transformer continues from its checkpoint, the VAE is reused
    log2 = main(common + ["--resume", "--minutes-vae", "0", "--max-gpt-steps", "44"])
    steps = [r["step"] for r in log2["gpt"]]
    assert steps[:40] == list(range(1, 41)) and steps[40:] == [41, 42, 43, 44]
    assert log2["summary"]["gpt_steps"] == 44
    # a fresh transformer on the exported VAE (--init-vae): the VAE is taken as exported, not trained
    run3, w3 = tmp_path / "run3", tmp_path / "weights3"
    log3 = main(["--data", str(data), "--out", str(run3), "--export", str(w3), "--spec", "tiny", "--log-every", "1",
                 "--val-windows", "1", "--minutes-vae", "0", "--minutes-gpt", "5", "--max-gpt-steps", "3",
                 "--init-vae", str(w)])
    assert len(log3["gpt"]) == 3
    # the VAE's history comes along: its runs, loss rows and held-out PSNR stay in the new model's log
    assert log3["vae"] == log2["vae"] and log3["vae_val"] == log2["vae_val"]
    assert [r["argv"] for r in log3["runs"][:-1]] == [r["argv"] for r in log2["runs"]]
    assert log3["summary"]["vae_steps"] == 14
    from safetensors.torch import load_file
    a, b = load_file(str(w / "vae.safetensors")), load_file(str(w3 / "vae.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
