"""The memory planner on the 8B config (meta device, nothing allocated) and the budget's error paths."""
import pytest
import torch

from faststar.cli import main as cli_main
from faststar.config import transformer_config
from faststar.memory import GiB, BudgetError, MemoryPlan, RunShape, apply_plan, calibration, device_budget_check, \
    estimate, kv_resident_len, parse_size, plan_memory, smallest_plan
from faststar.schedule import official_schedule

CFG = transformer_config("infinitystar-8b")


def test_parse_size():
    assert parse_size("24GB") == 24 * GiB == parse_size("24 GiB") == parse_size("24g") == parse_size("24")
    assert parse_size("512MB") == 512 * 2 ** 20
    assert parse_size(1234) == 1234
    with pytest.raises(BudgetError, match="cannot read"):
        parse_size("lots")
    with pytest.raises(BudgetError, match="unknown memory unit"):
        parse_size("24 parsecs")


def test_run_shape_of_8b():
    s = RunShape.of(CFG, official_schedule("720p", 5))
    # the 8B blocks' linear weights: 36 x (q 4096^2 + k, v 4096 x 1024 + o 4096^2 + 3 x 4096 x 16384)
    assert s.block_linear_params == 36 * (2 * 4096 ** 2 + 2 * 4096 * 1024 + 3 * 4096 * 16384)
    assert s.max_tokens == 72000 and s.max_kv_len == 128 + 3600 + 72000
    # resident KV: text + clip 0's last scale (the reference of clip 1)
    assert s.kv_resident_len == 128 + 3600
    assert kv_resident_len(official_schedule("720p", 5), 128, small_step_room=1024) == 128 + 3600 + 1024
    # 10 s: clip 2 references clip 1's last scale (72,000 tokens), written after clip 0's reference (3,600)
    assert kv_resident_len(official_schedule("720p", 10), 128) == 128 + 3600 + 72000


def test_calibration_against_measured_peaks():
    """Today's unchunked engine, modelled, against RESULTS section 1 / 5 and the H100 readings (58.9 GiB at 720p;
    48.3 GiB at 480p after 720p, whose cache buffers were kept)."""
    rows = {r["run"]: r for r in calibration()}
    assert abs(rows["720p"]["model_gib"] - 58.9) < 0.5
    assert abs(rows["480p after 720p"]["model_gib"] - 48.3) < 1.0


def test_chunking_and_compact_kv_shrink_the_prediction():
    s = RunShape.of(CFG, official_schedule("720p", 5))
    full = estimate(s, MemoryPlan()).phases["generate"]
    chunked = estimate(s, MemoryPlan(chunk_tokens=4096)).phases["generate"]
    compact = estimate(s, MemoryPlan(chunk_tokens=4096, compact_kv=True)).phases["generate"]
    fp8 = estimate(s, MemoryPlan(chunk_tokens=4096, compact_kv=True, precision="fp8")).phases["generate"]
    assert full > chunked + 14 * GiB           # no [2 x 72,000 x 32,768] gate/up tensor (8.8 GiB) and friends
    assert chunked > compact + 18 * GiB        # 20.8 GiB of KV -> 1.9 GiB
    assert 7.9 * GiB < compact - fp8 < 8.3 * GiB    # FP8 halves the 16.3 GiB of block weights


@pytest.mark.parametrize("res,prec,budget", [("720p", "bf16", "24GB"), ("480p", "bf16", "22GB"),
                                             ("720p", "fp8", "16GB"), ("480p", "fp8", "14GB")])
def test_plans_fit_their_budget(res, prec, budget):
    p = plan_memory(budget, CFG, official_schedule(res, 5), precision=prec)
    assert p.peak_bytes <= parse_size(budget) and p.precision == prec
    assert p.compact_kv and p.chunk_tokens > 0
    assert set(p.phases) == {"text", "generate", "decode"}


def test_generous_budget_keeps_the_fast_path():
    p = plan_memory("80GB", CFG, official_schedule("720p", 5))
    assert p.chunk_tokens == 0 and not p.compact_kv and p.text_on_gpu and p.decode_chunk == 4


def test_over_budget_names_the_smallest_budget():
    sch = official_schedule("720p", 5)
    lean = smallest_plan(CFG, sch)
    with pytest.raises(BudgetError) as e:
        plan_memory("4GB", CFG, sch)
    msg = str(e.value)
    assert "does not fit in 4.0 GiB" in msg and f"{lean.peak_bytes / GiB:.1f} GiB" in msg
    assert "--max-memory" in msg and "FP8" in msg
    # and that budget is indeed enough
    assert plan_memory(f"{lean.peak_bytes / GiB + 0.05:.2f}GiB", CFG, sch).peak_bytes <= lean.peak_bytes + 1
    # FP8 allowed ('auto'): a smaller plan exists
    assert plan_memory(f"{lean.peak_bytes / GiB - 2:.2f}GiB", CFG, sch, allow_fp8=True).precision == "fp8"


def test_predicted_peaks_against_the_issue_targets():
    """The planner's leanest 8B plans (issue 26's targets: 22 / 18 GiB bf16, 14 / 12 GiB fp8). Printed for the
    record; the bound asserted is what this design reaches (see memory.py: the loop's fp32 tokens, x, q and
    the weights are the floor)."""
    got = {}
    for res in ("720p", "480p"):
        for prec in ("bf16", "fp8"):
            got[res, prec] = smallest_plan(CFG, official_schedule(res, 5), precision=prec).peak_bytes / GiB
    print(got)
    assert got["720p", "bf16"] < 24 and got["480p", "bf16"] < 22
    assert got["720p", "fp8"] < 16 and got["480p", "fp8"] < 14


def test_apply_plan_sets_chunking_on_the_model():
    with torch.device("meta"):
        from faststar.model.transformer import STARTransformer
        m = STARTransformer(CFG)
    sch = official_schedule("720p", 5)
    p = plan_memory("24GB", CFG, sch)
    apply_plan(m, p)
    assert m.chunk_tokens == p.chunk_tokens and m.kv_resident_len == kv_resident_len(sch, 128)
    assert all(b.chunk_tokens == p.chunk_tokens and b.attn_pieces == p.attn_pieces for b in m.layers)
    apply_plan(m, MemoryPlan())
    assert m.chunk_tokens == 0 and m.kv_resident_len == 0


def test_budget_on_cpu_is_a_clear_error():
    with pytest.raises(BudgetError, match="budgets GPU memory"):
        device_budget_check("cpu", "24GB")


def test_cli_max_memory_on_cpu_one_line(capsys, tmp_path):
    rc = cli_main(["generate", "--prompt", "a cat", "--device", "cpu", "--max-memory", "24GB",
                   "--output", str(tmp_path / "v.mp4"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "budgets GPU memory" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_pipeline_max_memory_on_cpu_is_a_clear_error():
    from faststar.pipeline import FastStarPipeline
    with pytest.raises(BudgetError, match="budgets GPU memory"):
        FastStarPipeline.from_pretrained(device="cpu", max_memory="24GB")
