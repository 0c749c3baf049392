"""FP8 (torchao float8): where it can run, the clear errors elsewhere, and the swap of the blocks' Linear layers
(weight-only float8 runs on the CPU; dynamic float8 needs a GPU of compute capability >= 8.9)."""
import pytest
import torch

from faststar.bench import random_init_
from faststar.cli import main as cli_main
from faststar.model.rope import rope_cos_sin, text_positions
from faststar.model.transformer import build_transformer
from faststar.precision import PrecisionError, check_fp8, fp8_unavailable, is_fp8, quantize_fp8_, \
    resolve_precision, use_fp8_attention

torchao = pytest.importorskip("torchao")


def test_fp8_unavailable_on_cpu():
    assert "CUDA GPU" in fp8_unavailable("cpu")
    with pytest.raises(PrecisionError, match="precision='fp8' cannot run here"):
        check_fp8("cpu")


def test_capability_check(monkeypatch):
    """Compute capability < 8.9 (an A100, 8.0) is refused; 9.0 (H100) passes."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "NVIDIA A100")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (8, 0))
    assert "8.0" in fp8_unavailable("cuda") and "8.9" in fp8_unavailable("cuda")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (9, 0))
    assert fp8_unavailable("cuda") is None


def test_resolve_precision():
    assert resolve_precision("bf16", "cpu") == "bf16"
    msgs = []
    assert resolve_precision("auto", "cpu", log=msgs.append) == "bf16"
    assert len(msgs) == 1 and "using bf16" in msgs[0]
    with pytest.raises(PrecisionError):
        resolve_precision("fp8", "cpu")
    with pytest.raises(ValueError, match="unknown precision"):
        resolve_precision("int4", "cpu")


def _tiny(dtype=torch.bfloat16):
    m = build_transformer("golden-tiny", dtype=dtype)
    random_init_(m, seed=2, std=0.05)
    return m.eval().requires_grad_(False)


def _run(m, x):
    N = x.shape[1]
    cos, sin = rope_cos_sin(text_positions(N), m.cfg.head_dim, m.cfg.rope_theta)
    h = m.forward_blocks(x, cos, sin, m.new_cache(N, 1))
    return m.logits(h, m.cfg.detail_bits)


def test_weight_only_fp8_swaps_block_linears_on_cpu():
    from torchao.quantization import Float8Tensor
    torch.manual_seed(0)
    m = _tiny()
    x = torch.randn(1, 40, m.cfg.width)
    ref = _run(m, x)
    head_w = m.head.weight.clone()
    n = quantize_fp8_(m, mode="weight_only")
    assert n == 7 * m.cfg.depth and is_fp8(m)
    lin = m.layers[0].mlp.up_proj.weight
    assert isinstance(lin, Float8Tensor) and lin.qdata.dtype == torch.float8_e4m3fn
    assert all(isinstance(b.attn.o_proj.weight, Float8Tensor) for b in m.layers)
    # heads, embeddings and norms untouched
    assert type(m.head.weight) is torch.nn.Parameter and torch.equal(m.head.weight, head_w)
    assert m.word_embed.weight.dtype == torch.float32 and not isinstance(m.text_proj.weight, Float8Tensor)
    out = _run(m, x)
    rel = ((out - ref).norm() / ref.norm()).item()
    assert 0 < rel < 0.05                      # e4m3 weights: close to bf16, not equal


def test_dynamic_fp8_on_cpu_is_a_clear_error():
    m = _tiny()
    with pytest.raises(PrecisionError, match="cannot run here"):
        quantize_fp8_(m, mode="dynamic")


def test_fused_projections_are_refused():
    m = _tiny().fuse_projections_()
    with pytest.raises(PrecisionError, match="before fuse_projections_"):
        quantize_fp8_(m, mode="weight_only")


def test_fp8_attention_falls_back_on_cpu():
    m = _tiny()
    msgs = []
    assert use_fp8_attention(m, log=msgs.append) == "sdpa" and "keeping sdpa" in msgs[0]
    with pytest.raises(PrecisionError, match="attention='fp8'"):
        use_fp8_attention(m, strict=True)


def test_pipeline_precision_on_cpu():
    from faststar.pipeline import FastStarPipeline
    with pytest.raises(PrecisionError, match="precision='fp8' cannot run here"):
        FastStarPipeline.from_pretrained(device="cpu", precision="fp8")
    with pytest.warns(UserWarning, match="using bf16"):
        pipe = FastStarPipeline.from_pretrained(device="cpu", precision="auto")
    assert pipe.precision == "bf16" and not is_fp8(pipe.transformer)


def test_cli_fp8_on_cpu_one_line(capsys, tmp_path):
    rc = cli_main(["generate", "--prompt", "a cat", "--device", "cpu", "--precision", "fp8",
                   "--output", str(tmp_path / "v.mp4"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot run here" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_bench_refuses_unknown_precision():
    from faststar.bench import run_bench
    with pytest.raises(ValueError, match="unknown precision"):
        run_bench(precisions=["fp4"])


def test_cli_bench_bad_precision_one_line(capsys):
    assert cli_main(["bench", "--precision", "bf16,fp4"]) == 2
    err = capsys.readouterr().err
    assert "unknown precision" in err and len(err.strip().splitlines()) == 1
