"""Video VAE: golden reference case, release state-dict layout, chunking and input validation."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from faststar.vae.model import (VAEConfig, VideoVAE, decode_chunk_plan, encode_chunk_sizes, vae_config)

SHARED = Path(__file__).resolve().parents[2] / "shared"
GOLDEN = SHARED / "golden"


def _need_shared():
    if not SHARED.exists():
        pytest.skip(f"shared reference folder {SHARED} is absent")


@pytest.fixture(scope="module")
def tiny_vae():
    """golden-tiny architecture with seeded random weights (non-trivial norms and scale)."""
    torch.manual_seed(0)
    vae = VideoVAE(vae_config("golden-tiny")).eval()
    with torch.no_grad():
        for name, p in vae.named_parameters():
            if name.endswith("gamma") or name == "scale_learnable_parameters":
                p.copy_(1 + 0.1 * torch.randn_like(p))
    return vae


# ---------------------------------------------------------------------------------------------------- golden data

def test_golden_vae_case_all_within_tolerance():
    _need_shared()
    from faststar.vae.golden import check_vae_case
    results = check_vae_case(GOLDEN / "vae_tiny")
    names = {r["name"] for r in results}
    for required in ("encoder_out", "posterior_mean", "posterior_logvar_clamped", "z", "decoded", "chunked.z",
                     "chunked.decoded", "q.summed_codes", "summed_codes_from_bits", "decoded_from_bits_clamped",
                     "q.step00.bits", "q.step19.canvas"):
        assert required in names
    assert len(results) == 10 + 20 * 5
    bad = [r for r in results if not r["ok"]]
    assert not bad, bad
    bits = [r for r in results if r["name"].endswith(".bits")]
    assert len(bits) == 20 and all(r["max_abs_err"] == 0 and r["atol"] == 0 for r in bits)
    by_name = {r["name"]: r for r in results}
    assert by_name["z"]["atol"] == 1e-4 and by_name["z"]["max_abs_err"] < 1e-5
    assert by_name["decoded"]["max_abs_err"] < 1e-5


def test_golden_tiny_preset_matches_case_keys():
    _need_shared()
    cfg = json.loads((GOLDEN / "vae_tiny" / "config.json").read_text())
    with torch.device("meta"):
        vae = VideoVAE(vae_config("golden-tiny"))
    listed = [(k, list(s)) for k, s, _ in cfg["state_dict_keys_in_order"]]
    assert [(k, list(v.shape)) for k, v in vae.state_dict().items()] == listed
    assert vae.num_parameters() == cfg["num_parameters"] == 482_043


# ------------------------------------------------------------------------------------------- release architecture

def test_release_state_dict_matches_manifest():
    _need_shared()
    man = json.loads((GOLDEN / "manifest_vae.json").read_text())
    with torch.device("meta"):
        vae = VideoVAE(vae_config("infinitystar"))
    sd = vae.state_dict()
    assert len(sd) == man["num_state_dict_entries"] == 301
    assert list(sd.keys()) == [e["key"] for e in man["state_dict"]]
    params = dict(vae.named_parameters())
    for e in man["state_dict"]:
        t = sd[e["key"]]
        assert list(t.shape) == e["shape"], e["key"]
        assert str(t.dtype).removeprefix("torch.") == e["dtype"], e["key"]
        assert (e["key"] in params) == (e["kind"] == "parameter"), e["key"]
    buffers = [e["key"] for e in man["state_dict"] if e["kind"] == "buffer"]
    assert sorted(buffers) == sorted(f"{p}.lfq_{q}.mask" for p in ("quantizer", "quantize")
                                     for q in ("semantic", "detail"))
    assert vae.num_parameters() == man["num_parameters"] == 184_659_383


def test_bsq_mask_values():
    vae = VideoVAE(vae_config("golden-tiny"))
    m16 = vae.quantizer.lfq_semantic.mask
    assert m16.dtype == torch.int64 and m16.tolist() == [2 ** (15 - i) for i in range(16)]
    m64 = vae.quantize.lfq_detail.mask
    assert m64[0].item() == -(2 ** 63) and m64[1].item() == 2 ** 62 and m64[-1].item() == 1


# ------------------------------------------------------------------------------------------------------ chunking

def test_chunk_plans():
    assert [encode_chunk_sizes(t) for t in (1, 5, 9, 13, 17, 21, 81)] == [
        [1], [5], [9], [13], [9, 8], [13, 8], [9] + [8] * 9]
    assert [decode_chunk_plan(t) for t in (1, 2, 3, 4, 5, 6, 21)] == [
        [1], [2], [3], [4], [3, 2], [4, 2], [3] + [2] * 9]


def test_encode_is_chunk_invariant(tiny_vae):
    torch.manual_seed(1)
    video = torch.rand(1, 3, 17, 32, 32) * 2 - 1
    ref = tiny_vae.encode_raw(video, chunk_sizes=[17]).encoder_out
    assert ref.shape == (1, 32, 5, 4, 4)
    for sizes in ([9, 8], [1, 8, 8], [5, 4, 8]):
        out = tiny_vae.encode_raw(video, chunk_sizes=sizes).encoder_out
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    z = tiny_vae.encode(video)
    assert z.shape == (1, 64, 5, 2, 2)
    # later chunks must hold whole 4-frame groups
    with pytest.raises(ValueError, match="multiple of 2"):
        tiny_vae.encode_raw(video, chunk_sizes=[9, 6, 2])


def test_decode_is_chunk_invariant_and_even_latents(tiny_vae):
    torch.manual_seed(2)
    z = torch.randn(1, 64, 6, 2, 3)
    full = tiny_vae.decode(z, chunk_plan=[6])
    assert full.shape == (1, 3, 21, 32, 48)
    default = tiny_vae.decode(z)          # [4 (split first), 2]
    torch.testing.assert_close(default, full, atol=1e-5, rtol=0)
    for plan in ([1, 2, 2, 1], [1, 5], [2, 2, 2]):
        torch.testing.assert_close(tiny_vae.decode(z, chunk_plan=plan), full, atol=1e-5, rtol=0)
    # causality: the first 4 latents alone give the first 13 frames; T' = 2 gives 5 frames
    torch.testing.assert_close(tiny_vae.decode(z[:, :, :4]), full[:, :, :13], atol=1e-5, rtol=0)
    two = tiny_vae.decode(z[:, :, :2])
    assert two.shape == (1, 3, 5, 32, 48)
    torch.testing.assert_close(two, full[:, :, :5], atol=1e-5, rtol=0)
    one = tiny_vae.decode(z[:, :, :1])
    assert one.shape == (1, 3, 1, 32, 48)
    torch.testing.assert_close(one, full[:, :, :1], atol=1e-5, rtol=0)


def test_odd_decode_matches_one_pass(tiny_vae):
    torch.manual_seed(3)
    z = torch.randn(1, 64, 5, 2, 2)
    out = tiny_vae.decode(z)
    assert out.shape == (1, 3, 17, 32, 32)
    torch.testing.assert_close(out, tiny_vae.decode(z, chunk_plan=[5]), atol=1e-5, rtol=0)


def test_sampled_encode_is_seeded(tiny_vae):
    torch.manual_seed(4)
    video = torch.rand(1, 3, 5, 32, 32) * 2 - 1
    mean_z = tiny_vae.encode(video)
    a = tiny_vae.encode(video, sample=True, generator=torch.Generator().manual_seed(7))
    b = tiny_vae.encode(video, sample=True, generator=torch.Generator().manual_seed(7))
    c = tiny_vae.encode(video, sample=True, generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert (a - mean_z).abs().max() > 1e-3 and (a - c).abs().max() > 1e-3
    # the sample is mean + exp(logvar / 2) * eps pushed through proj_down * scale
    raw = tiny_vae.encode_raw(video)
    eps = torch.randn(raw.posterior_mean.shape, generator=torch.Generator().manual_seed(7))
    lat = raw.posterior_mean + torch.exp(0.5 * raw.posterior_logvar_clamped) * eps
    expect = torch.nn.functional.linear(lat.movedim(1, -1), tiny_vae.proj_down.weight,
                                        tiny_vae.proj_down.bias).movedim(-1, 1) * tiny_vae.scale_learnable_parameters[0]
    torch.testing.assert_close(a, expect, atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------- input validation

@pytest.mark.parametrize("shape, match", [
    ((1, 3, 8, 32, 32), "1 mod 4"),
    ((1, 3, 6, 32, 32), "1 mod 4"),
    ((1, 3, 5, 40, 32), "multiples of 16"),
    ((1, 3, 5, 32, 24), "multiples of 16"),
    ((1, 4, 5, 32, 32), "3 channels"),
    ((3, 5, 32, 32), r"\[B, 3, T, H, W\]"),
])
def test_encode_rejects_bad_shapes(tiny_vae, shape, match):
    with pytest.raises(ValueError, match=match):
        tiny_vae.encode(torch.zeros(shape))


def test_decode_rejects_bad_latent(tiny_vae):
    with pytest.raises(ValueError, match="64"):
        tiny_vae.decode(torch.zeros(1, 16, 3, 2, 2))
    with pytest.raises(ValueError, match="64"):
        tiny_vae.decode(torch.zeros(64, 3, 2, 2))
    with pytest.raises(ValueError, match="add up"):
        tiny_vae.decode(torch.zeros(1, 64, 3, 2, 2), chunk_plan=[2])


def test_config_validation():
    with pytest.raises(ValueError, match="unknown VAE preset"):
        vae_config("nope")
    with pytest.raises(ValueError, match="embed_dim"):
        VAEConfig(block_out_channels=(8, 16, 16, 16, 16), embed_dim=32)
    cfg = vae_config("infinitystar")
    assert cfg.spatial_stride == 16 and cfg.temporal_stride == 4 and cfg.encode_chunk == 8 and cfg.decode_chunk == 2


def test_conv3d_cpu_path_matches_the_module():
    """The VAE's conv3d helper (oneDNN called directly for fp32 CPU inference) gives nn.Conv3d's values."""
    from faststar.vae.model import conv3d
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(8, 16, 3, padding=(0, 1, 1))
    x = torch.randn(1, 8, 5, 12, 20)                       # N*C*T*H = 480: PyTorch would pick its im2col path
    with torch.no_grad():
        torch.testing.assert_close(conv3d(conv, x), conv(x), rtol=1e-5, atol=1e-5)
        one = torch.nn.Conv3d(8, 4, 1)
        torch.testing.assert_close(conv3d(one, x), one(x), rtol=1e-5, atol=1e-5)
    y = conv3d(conv, x)                                     # with autograd: the module itself, differentiable
    assert y.requires_grad and torch.equal(y, conv(x))


def test_half_decoder_keeps_the_latent_projection_and_decodes_close(tiny_vae):
    """half_decoder_: only the decoder's weights go to bf16 (proj_up and the scale stay fp32, so a checkpoint's scale
    is not rounded); decode then feeds the decoder in its dtype and returns the video close to the fp32 one;
    inference_decode on the CPU is plain decode (fp32, default chunks)."""
    import copy

    from faststar.vae.model import inference_decode
    z = torch.randn(1, 64, 5, 2, 3, generator=torch.Generator().manual_seed(4))
    ref = tiny_vae.decode(z)
    assert torch.equal(inference_decode(tiny_vae, z), ref)
    half = copy.deepcopy(tiny_vae).half_decoder_()
    assert half.decoder_dtype == torch.bfloat16 and tiny_vae.decoder_dtype == torch.float32
    assert half.proj_up.weight.dtype == torch.float32 and half.scale_learnable_parameters.dtype == torch.float32
    out = half.decode(z)
    assert out.dtype == torch.bfloat16 and out.shape == ref.shape
    rel = (out.float() - ref).norm() / ref.norm()
    assert 0 < rel < 0.05, rel
