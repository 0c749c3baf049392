"""Sequence-chunked blocks and head, and the compact KV cache: the same numbers as the unchunked engine."""
import json

import pytest
import torch

import faststar.reference as reference
from faststar.bench import random_init_
from faststar.generate import generate
from faststar.memory import kv_resident_len
from faststar.model.rope import rope_cos_sin, text_positions
from faststar.model.transformer import build_transformer, token_chunks
from faststar.reference import check_case, schedule_from_case
from faststar.schedule import build_schedule


def test_token_chunks_cover_every_token_once():
    assert token_chunks(0, 10, 4) == [slice(0, 4), slice(4, 8), slice(8, 10)]
    assert token_chunks(3, 10, 0) == [slice(3, 10)]
    assert token_chunks(5, 5, 4) == []


def _model(dtype=torch.float32):
    m = build_transformer("golden-tiny", dtype=dtype)
    random_init_(m, seed=3, std=0.05)
    return m.eval().requires_grad_(False)


def test_elementwise_chunks_bit_identical():
    """Per-token work (norms, q/k norm + RoPE, SiLU gate) has the same arithmetic per row: chunks are bit-identical.
    (Row chunks of a CPU matmul are not always: oneDNN blocks 74 rows differently from 7, 1e-5 apart; see below.)"""
    from faststar.model.transformer import norm_rope, rms_norm, silu_mul
    torch.manual_seed(0)
    x = torch.randn(2, 37, 4, 32)
    w = torch.rand(32) + 0.5
    cos, sin = rope_cos_sin(text_positions(37), 32, 10000.0)
    whole = norm_rope(x, w, 1e-6, cos, sin)
    parts = torch.cat([norm_rope(x[:, s], w, 1e-6, cos[s], sin[s]) for s in token_chunks(0, 37, 5)], 1)
    assert torch.equal(whole, parts)
    g, u = torch.randn(2, 37, 64), torch.randn(2, 37, 64)
    assert torch.equal(silu_mul(g, u), torch.cat([silu_mul(g[:, s], u[:, s]) for s in token_chunks(0, 37, 5)], 1))
    y = x.flatten(2)
    assert torch.equal(rms_norm(y, torch.ones(128), 1e-6),
                       torch.cat([rms_norm(y[:, s], torch.ones(128), 1e-6) for s in token_chunks(0, 37, 5)], 1))


@pytest.mark.parametrize("chunk,pieces", [(7, 1), (16, 3), (1, 2)])
def test_chunked_blocks_equal_unchunked(chunk, pieces):
    """fp32 on the CPU: chunked blocks, head and cache equal the unchunked engine to 1e-5 relative (the matmuls'
    row blocking is the only difference; the elementwise parts are bit-identical, test above)."""
    torch.manual_seed(0)
    m = _model()
    L, N = 5, 37
    text = torch.randn(2, L, m.cfg.width)
    x = torch.randn(2, N, m.cfg.width)
    cos_t, sin_t = rope_cos_sin(text_positions(L), m.cfg.head_dim, m.cfg.rope_theta)
    cos, sin = rope_cos_sin(text_positions(N) + L, m.cfg.head_dim, m.cfg.rope_theta)

    def run():
        c = m.new_cache(L + N, batch=2)
        m.forward_blocks(text, cos_t, sin_t, c)
        c.commit_text()
        outs = []
        h = m.forward_blocks(x, cos, sin, c, layer_outputs=outs)
        return h, outs, m.logits(h, m.cfg.detail_bits), [t[:, :L + N].clone() for t in c.k]

    h0, o0, l0, k0 = run()
    m.set_chunking(chunk, pieces)
    h1, o1, l1, k1 = run()
    m.set_chunking(0)
    def close(a, b):
        return ((a - b).abs().max() / a.abs().max()).item() < 1e-5
    assert close(h0, h1) and close(l0, l1)
    assert len(o0) == len(o1) == m.cfg.depth and all(close(a, b) for a, b in zip(o0, o1))
    assert all(close(a, b) for a, b in zip(k0, k1))
    assert not torch.equal(o1[0], o1[1])      # recorded layer outputs are copies, not the buffer written in place
    assert x.shape == (2, N, m.cfg.width) and not torch.equal(h1, x)     # the input was not written into


def test_chunked_bf16_within_rounding():
    """bf16 blocks: chunking keeps each row's arithmetic, so the outputs agree to bf16 rounding (CPU kernels may
    block a matmul differently for other row counts)."""
    torch.manual_seed(1)
    m = _model(torch.bfloat16)
    N = 50
    x = torch.randn(1, N, m.cfg.width)
    cos, sin = rope_cos_sin(text_positions(N), m.cfg.head_dim, m.cfg.rope_theta)
    a = m.forward_blocks(x, cos, sin, m.new_cache(N, 1)).float()
    m.set_chunking(8)
    b = m.forward_blocks(x, cos, sin, m.new_cache(N, 1)).float()
    assert ((a - b).norm() / a.norm()).item() < 1e-2


@pytest.mark.parametrize("case", ["transformer_tiny", "transformer_tiny_i2v"])
def test_golden_cases_pass_chunked_with_compact_cache(golden, case, monkeypatch):
    """Every golden case at the README tolerances with chunks forced small (5 tokens, attention in 2 pieces)
    and the compact KV cache (big steps in the shared buffer)."""
    cfg = json.loads((golden / case / "config.json").read_text())
    sched = schedule_from_case(cfg)
    L = 0
    load = reference.load_transformer

    def chunked_load(*a, **kw):
        m = load(*a, **kw)
        # the text length is read from the case inputs below; the resident part only has to hold text + refs
        m.set_chunking(5, 2, kv_resident_len(sched, text_len=L, small_step_room=0))
        return m
    from safetensors.torch import load_file
    inp = load_file(str(golden / case / "inputs.safetensors"))
    L = inp["text_embedding"].shape[0]
    assert kv_resident_len(sched, L, ) < sched.max_kv_len(L)     # the shared buffer is used
    monkeypatch.setattr(reference, "load_transformer", chunked_load)
    results = check_case(golden / case)
    bad = [r for r in results if not r["ok"]]
    assert not bad, bad[:5]
    assert max(r["max_abs_err"] for r in results if r["quantity"] == "logits_cond") < 1e-4


def test_compact_cache_generation_equals_full_cache():
    """A whole generation (sampling included) with the compact cache and chunks gives the same latent (sampled bits
    agree: the 1e-6 matmul differences flip no bit here)."""
    m = _model()
    sched = build_schedule(pyramid=[(1, 1), (2, 3), (4, 6)], clip_frames=[1, 2, 2], image_reps=[1, 2, 1],
                           video_reps=[2, 1, 1], semantic_scales=1, name="tiny")
    text = torch.randn(6, m.cfg.text_channels)
    assert kv_resident_len(sched, 6, small_step_room=2) < sched.max_kv_len(6)     # the shared buffer is used
    a = generate(m, sched, text, seed=4)
    m.set_chunking(3, 1, kv_resident_len(sched, 6, small_step_room=2))
    m.release_cache()
    b = generate(m, sched, text, seed=4)
    m.set_chunking(0)
    m.release_cache()
    assert torch.equal(a.latent, b.latent)
    assert m.new_cache(sched.max_kv_len(6)).shared_k is None


@pytest.mark.parametrize("method", ["faststar:balanced", "faststar:fast"])
def test_presets_with_chunking_and_compact_cache(method):
    """The accelerator presets (pruned steps, single-branch steps, two-phase selection) run unchanged on the
    chunked engine with the compact cache: same latent as the unchunked engine."""
    from faststar.accel import accelerator_from_spec
    m = _model()
    sched = build_schedule(pyramid=[(1, 1), (2, 3), (4, 6)], clip_frames=[1, 2, 2], image_reps=[1, 2, 1],
                           video_reps=[2, 1, 1], semantic_scales=1, name="tiny")
    text = torch.randn(6, m.cfg.text_channels)
    a = generate(m, sched, text, seed=1, accelerator=accelerator_from_spec(method))
    m.set_chunking(4, 2, kv_resident_len(sched, 6, small_step_room=2))
    m.release_cache()
    b = generate(m, sched, text, seed=1, accelerator=accelerator_from_spec(method))
    m.set_chunking(0)
    assert b.summary()["tokens_run"] < b.summary()["tokens_dense"]        # the preset really pruned
    assert torch.equal(a.latent, b.latent)


def test_lean_decode_plan_same_video():
    """The VAE decode in budget plans: the image frame alone, then 1 or 2 latent frames per chunk; the causal
    caches carry across chunks, so the video equals the default chunking's (fp32 CPU: to rounding)."""
    from faststar.bench import build_random_vae
    from faststar.testbed.config import testbed_vae_config
    from faststar.vae.model import decode_chunk_plan, inference_decode, lean_decode_plan
    assert lean_decode_plan(21, 1) == [1] * 21 and lean_decode_plan(21, 4) == [1, 4, 4, 4, 4, 4]
    assert lean_decode_plan(6, 2) == [1, 2, 2, 1] and sum(lean_decode_plan(6, 2)) == 6
    torch.manual_seed(0)
    vae = build_random_vae("cpu", 0, cfg=testbed_vae_config())
    z = torch.randn(1, 64, 5, 4, 6) * 0.3
    ref = vae.decode(z, chunk_plan=decode_chunk_plan(5, 2))
    for chunk in (1, 2):
        out = inference_decode(vae, z, chunk=chunk, lean=True)
        assert out.shape == ref.shape and (out - ref).abs().max().item() < 1e-5
