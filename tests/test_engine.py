"""The STAR engine against the reference: golden tensors, the 8B manifest, schedules, FLOPs, loading."""
import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

import faststar
from faststar.bench import random_init_
from faststar.checkpoint import CheckpointError, TensorSource, load_checkpoint, load_transformer, \
    transformer_config_from_shapes
from faststar.cli import main as cli_main
from faststar.generate import generate
from faststar.model.attention import available_backends, select_backend
from faststar.model.rope import visual_positions
from faststar.reference import check_case, schedule_from_case
from faststar.sampling import GuidanceConfig, apg, sample_bits, step_uniforms
from faststar.schedule import aspect_templates, build_schedule, official_schedule, schedule_flops


# ---------------------------------------------------------------------------------------------- golden tensors
@pytest.mark.parametrize("case", ["transformer_tiny", "transformer_tiny_i2v"])
def test_golden_case_matches_reference(golden, case):
    results = check_case(golden / case)
    names = {r["name"] for r in results}
    # every recorded quantity of every step is compared
    idx = json.loads((golden / case / "index.json").read_text())
    assert len(idx["steps"]) == 26
    for k in range(26):
        for q in ("input_embeds", "logits_cond", "logits_uncond", "logits_guided", "canvas", "rope_pos"):
            assert f"step{k:03d}.{q}" in names
    assert "final_summed_codes" in names and "text.prefix_tokens" in names
    bad = [r for r in results if not r["ok"]]
    assert not bad, bad[:5]
    worst = max(r["max_abs_err"] for r in results if r["quantity"] == "logits_cond")
    assert worst < 1e-4


def test_check_reference_cli(golden, capsys):
    assert cli_main(["check-reference", str(golden / "transformer_tiny")]) == 0
    out = capsys.readouterr().out
    assert "logits_guided" in out and "all within tolerance" in out


def test_check_reference_cli_fails_on_wrong_weights(golden, tmp_path, capsys):
    case = tmp_path / "case"
    case.mkdir()
    for f in ("config.json", "index.json", "inputs.safetensors", "steps.safetensors"):
        (case / f).write_bytes((golden / "transformer_tiny" / f).read_bytes())
    w = load_file(str(golden / "transformer_tiny" / "weights.safetensors"))
    w["block_chunks.1.module.0.mlp.up_proj.weight"] = w["block_chunks.1.module.0.mlp.up_proj.weight"] * 1.01
    save_file(w, str(case / "weights.safetensors"))
    assert cli_main(["check-reference", str(case)]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_i2v_skipping_unread_forwards_is_exact(golden):
    """I2V: clip-0 forwards whose output nothing reads can be skipped with an identical result."""
    cfg = json.loads((golden / "transformer_tiny_i2v" / "config.json").read_text())
    model = load_transformer(golden / "transformer_tiny" / "weights.safetensors", dtype=torch.float32)
    sched = schedule_from_case(cfg)
    inp = load_file(str(golden / "transformer_tiny_i2v" / "inputs.safetensors"))
    teacher = {k: inp[f"gt_bits.step{k:03d}"] for k in range(12)}
    a = generate(model, sched, inp["text_embedding"], seed=5, teacher_bits=teacher, skip_unread_forwards=False)
    b = generate(model, sched, inp["text_embedding"], seed=5, teacher_bits=teacher, skip_unread_forwards=True)
    assert torch.equal(a.latent, b.latent)
    ran = [s for s in b.stats if s["clip"] == 0 and s["branches"] > 0]
    assert [s["step"] for s in ran] == [11]           # only the step whose K/V clip 1 reads


def test_apg_golden_cases(golden):
    from faststar.reference import check_apg_cases
    res = check_apg_cases(golden / "transformer_tiny")
    assert len(res) == 6 and all(r["ok"] for r in res)


# ---------------------------------------------------------------------------------------------- 8B manifest
def test_8b_preset_matches_manifest(golden):
    man = json.loads((golden / "manifest_transformer_8b.json").read_text())
    model = faststar.build_transformer("infinitystar-8b", device="meta", dtype=torch.bfloat16)
    sd = model.state_dict()
    assert list(sd) == [e["key"] for e in man["state_dict"]]          # same keys, same order
    for e in man["state_dict"]:
        t = sd[e["key"]]
        assert list(t.shape) == list(e["shape"]), e["key"]
        dtype_name = e["dtype_after_load_transformer"].replace("torch.", "")
        want = {"bfloat16": torch.bfloat16, "float32": torch.float32}[dtype_name]
        assert t.dtype == want, e["key"]
    assert sum(t.numel() for t in sd.values()) == man["num_parameters"] == 8_768_382_112


# ---------------------------------------------------------------------------------------------- schedules
def test_720p_schedule_matches_spec_table():
    s = official_schedule("720p", 5)
    assert len(s.scales) == 30 and s.num_steps == 85
    pyr = [(1, 1), (2, 3), (2, 4), (3, 5), (4, 7), (4, 8), (5, 9), (6, 11), (8, 13), (9, 16), (12, 21), (18, 32),
           (24, 43), (30, 53), (45, 80)]
    assert [sc.thw for sc in s.scales] == [(1, h, w) for h, w in pyr] + [(20, h, w) for h, w in pyr]
    assert [sc.reps for sc in s.scales] == [3] * 15 + [3] * 12 + [2, 1, 1]
    assert [sc.bits for sc in s.scales[15:]] == [16] * 12 + [64] * 3
    assert [sc.tau for sc in s.scales] == [1.0] * 15 + [0.4] * 15
    assert all(sc.ref_scale is None for sc in s.scales[:15]) and all(sc.ref_scale == 14 for sc in s.scales[15:])
    assert s.scales[29].first_step == 84 and s.scales[27].first_step == 81
    assert s.pixel_size() == (720, 1280) and s.pixel_frames == 81
    assert sum(sc.num_tokens * sc.reps for sc in s.scales) == 244_197
    assert sum(sc.num_tokens for sc in s.scales) == 157_479


def test_480p_schedules():
    s = official_schedule("480p", 5)
    assert len(s.scales) == 28 and s.pixel_size() == (480, 848)
    assert [sc.reps for sc in s.scales[14:]] == [3] * 12 + [2, 1]
    assert [sc.bits for sc in s.scales[:14]] == [16] * 11 + [64] * 3
    s10 = official_schedule("480p", 10)
    assert len(s10.scales) == 42 and s10.clip_thw == ((1, 30, 53), (20, 30, 53), (20, 30, 53))
    assert all(sc.ref_scale == 27 for sc in s10.scales[28:])          # clip 2 references clip 1, not clip 0
    assert s10.scales[28].frame_start == 21 and s10.scales[28].first_step == 81
    assert s10.pixel_frames == 161


def test_aspect_templates_and_errors():
    keys = list(aspect_templates("0.90M"))
    assert len(keys) == 15 and keys[0] == 0.336 and keys[-1] == 2.971 and 0.562 in keys
    port = official_schedule("720p", 5, aspect="9:16")
    assert port.final_hw == (80, 45)
    with pytest.raises(ValueError, match="unsupported resolution"):
        official_schedule("1080p", 5)
    with pytest.raises(ValueError, match="unsupported duration"):
        official_schedule("720p", 7)


def test_flop_model_reproduces_spec_totals():
    cfg = faststar.transformer_config("infinitystar-8b")
    assert schedule_flops(official_schedule("720p", 5), cfg)["total"] / 1e15 == pytest.approx(18.52, abs=0.01)
    assert schedule_flops(official_schedule("480p", 5), cfg)["total"] / 1e15 == pytest.approx(8.79, abs=0.01)
    assert schedule_flops(official_schedule("480p", 10), cfg)["total"] / 1e15 == pytest.approx(22.48, abs=0.01)
    f = schedule_flops(official_schedule("720p", 5), cfg)
    last = f["steps"][-1]
    assert (last["linear"] + last["attention"]) / f["total"] == pytest.approx(0.4834, abs=0.001)


def test_rope_positions_on_final_grid():
    pos = visual_positions((2, 3, 4), (4, 6), frame_start=1, scale_pos=529)
    assert pos.shape == (24, 4)
    assert sorted(set(pos[:, 2].tolist())) == [0, 1, 3]
    assert sorted(set(pos[:, 3].tolist())) == [0, 2, 3, 4]
    assert set(pos[:, 1].tolist()) == {1, 2} and set(pos[:, 0].tolist()) == {529}
    assert pos[5].tolist() == [529, 1, 1, 2]           # token n = (f*h + i)*w + j, row-major t->h->w


# ---------------------------------------------------------------------------------------------- sampling
def test_sampling_is_position_keyed_and_reproducible():
    u1 = step_uniforms(7, 3, 50, 16, "cpu")
    u2 = step_uniforms(7, 3, 50, 16, "cpu")
    assert torch.equal(u1, u2) and not torch.equal(u1, step_uniforms(7, 4, 50, 16, "cpu"))
    logits = torch.randn(50, 32)
    full = sample_bits(logits, u1)
    keep = torch.tensor([1, 7, 30])
    assert torch.equal(sample_bits(logits[keep], u1[keep]), full[keep])
    with pytest.raises(FloatingPointError, match="NaN"):
        sample_bits(torch.full((2, 4), float("nan")), torch.rand(2, 2))


def test_sampling_matches_probabilities():
    logits = torch.zeros(20000, 2)
    logits[:, 1] = math.log(3.0)                        # p(bit = 1) = 0.75
    b = sample_bits(logits, step_uniforms(0, 0, 20000, 1, "cpu"))
    assert b.float().mean().item() == pytest.approx(0.75, abs=0.01)


def test_cfg_and_apg_formulas():
    c, u = torch.randn(6, 8), torch.randn(6, 8)
    from faststar.sampling import guide
    g = guide(c, u, 0.5, GuidanceConfig(mode="cfg", scale=3.0))
    assert torch.allclose(g, 3 * c / 0.5 - 2 * u / 0.5)
    a = apg(c, u, 34.0, 0.0, 0.0)                       # no clipping: guided - cond is orthogonal to cond
    assert abs(((a - c) * c).sum().item()) < 1e-3
    assert torch.equal(guide(c, None, 2.0, GuidanceConfig()), c / 2.0)


# ---------------------------------------------------------------------------------------------- generation
def _tiny(seed=0):
    m = faststar.build_transformer("golden-tiny")
    random_init_(m, seed, std=0.06)
    return m.eval()


def _sched():
    return build_schedule([(1, 1), (2, 3), (4, 6), (8, 12)], [1, 3, 3], image_reps=[2, 2, 2, 1],
                          video_reps=[2, 2, 1, 1], semantic_scales=2)


def test_same_seed_same_video_and_accounting():
    m, s = _tiny(), _sched()
    text = torch.randn(9, 32, generator=torch.Generator().manual_seed(1))
    a = generate(m, s, text, seed=11)
    b = generate(m, s, text, seed=11)
    c = generate(m, s, text, seed=12)
    assert torch.equal(a.latent, b.latent) and not torch.equal(a.latent, c.latent)
    assert a.latent.shape == (1, 64, 7, 8, 12)
    assert len(a.stats) == s.num_steps and all(st["tokens_run"] == st["tokens"] for st in a.stats)
    summ = a.summary()
    assert summ["flop_speedup"] == pytest.approx(1.0)
    assert summ["flops_dense"] == pytest.approx(schedule_flops(s, m.cfg, text_len=9)["total"]
                                                - schedule_flops(s, m.cfg, text_len=9)["text"])


def test_kv_cache_holds_text_and_one_reference():
    m, s = _tiny(), _sched()
    cache_lens = []
    from faststar.accel.base import Accelerator

    class Spy(Accelerator):
        def plan(self, ctx):
            return super().plan(ctx)

        def observe(self, ctx, out):
            cache_lens.append(ctx.step.scale.clip)
    generate(m, s, torch.randn(5, 32), seed=0, accelerator=Spy())
    assert len(cache_lens) == s.num_steps
    assert s.max_kv_len(5) == 5 + 3 * 8 * 12 * 2      # text + reference (3x8x12) + a 3x8x12 step


def test_guidance_none_runs_one_branch():
    m, s = _tiny(), _sched()
    out = generate(m, s, torch.randn(5, 32), seed=0, guidance=GuidanceConfig(mode="none"))
    assert all(st["branches"] == 1 for st in out.stats)


def test_attention_backends_cpu():
    assert select_backend("auto", "cpu", torch.float32) == "sdpa"
    av = available_backends("cpu")
    assert av["sdpa"] == "ok" and av["fa3"] != "ok"
    with pytest.raises(RuntimeError, match="not available"):
        select_backend("fa3", "cpu")
    with pytest.raises(ValueError, match="unknown attention backend"):
        select_backend("flash9", "cpu")


# ---------------------------------------------------------------------------------------------- checkpoints
def test_sharded_checkpoint_loads_like_single_file(golden, tmp_path):
    sd = load_file(str(golden / "transformer_tiny" / "weights.safetensors"))
    keys = list(sd)
    shards = {"model-00001-of-00002.safetensors": keys[:20], "model-00002-of-00002.safetensors": keys[20:]}
    wm = {}
    for fname, ks in shards.items():
        save_file({k: sd[k] for k in ks}, str(tmp_path / fname))
        wm.update({k: fname for k in ks})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wm}))
    a = load_transformer(tmp_path, dtype=torch.bfloat16)
    assert a.block_dtype == torch.bfloat16 and a.head.weight.dtype == torch.float32
    b = load_transformer(golden / "transformer_tiny" / "weights.safetensors", dtype=torch.float32)
    assert a.cfg.depth == 4 and a.cfg.num_kv_heads == 2 and a.cfg.block_chunks == 2 and a.cfg.text_channels == 32
    assert torch.equal(a.head.weight, b.head.weight)
    assert torch.equal(a.block_chunks[1].module[1].mlp.down_proj.weight,
                       b.block_chunks[1].module[1].mlp.down_proj.weight.to(torch.bfloat16))


def test_strict_loading_lists_every_bad_key(golden, tmp_path):
    sd = load_file(str(golden / "transformer_tiny" / "weights.safetensors"))
    del sd["head.bias"]
    sd["extra.weight"] = torch.zeros(3)
    sd["word_embed.bias"] = torch.zeros(7)
    save_file(sd, str(tmp_path / "bad.safetensors"))
    m = faststar.build_transformer("golden-tiny", device="meta")
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(m, tmp_path / "bad.safetensors")
    msg = str(e.value)
    assert "head.bias" in msg and "extra.weight" in msg and "word_embed.bias" in msg and "(128,)" in msg


def test_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        TensorSource(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no model.safetensors.index.json"):
        TensorSource(tmp_path / "empty")
    torch.save({"vae": {"a": torch.zeros(2)}}, tmp_path / "x.pth")
    assert TensorSource(tmp_path / "x.pth", key="vae").shapes() == {"a": (2,)}
    with pytest.raises(CheckpointError, match="no top-level key"):
        TensorSource(tmp_path / "x.pth", key="ema")


def test_config_read_from_shapes():
    m = faststar.build_transformer("infinitystar-8b", device="meta")
    cfg = transformer_config_from_shapes({k: tuple(v.shape) for k, v in m.state_dict().items()})
    ref = faststar.transformer_config("infinitystar-8b")
    for f in ("depth", "width", "num_heads", "num_kv_heads", "mlp_hidden", "text_channels", "block_chunks"):
        assert getattr(cfg, f) == getattr(ref, f), f
