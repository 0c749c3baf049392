"""One cost model: the loop's per-step statistics and flop_plan agree, step by step, on every preset (both call
schedule.step_cost after the same forcing rules)."""
import pytest
import torch

from faststar.accel import PRESETS, flop_plan, make_accelerator
from faststar.schedule import step_flops
from tiny_accel import run, tiny  # noqa: F401

ALL = ["dense"] + [f"{m}:{p}" for m, table in PRESETS.items() for p in table] + ["fastvar+prune_layer=1"]


def _agree(out, plan):
    for row, pred in zip(out.stats, plan["steps"]):
        assert (row["tokens_run"], row["branches"], row["ref_tokens"], row["prune_layer"]) == \
            (pred["tokens_run"], pred["branches"], pred["ref_tokens"], pred["prune_layer"]), row["step"]
        assert row["flops"] == pytest.approx(pred["flops"], rel=1e-12)
        assert row["flops_dense"] == pytest.approx(pred["flops_dense"], rel=1e-12)
    assert out.summary()["flops"] == pytest.approx(plan["flops"], rel=1e-12)


@pytest.mark.parametrize("method", ALL)
def test_stats_match_flop_plan(tiny, method):
    model, sched, text, _ = tiny
    acc = make_accelerator(method)
    out = run(tiny, acc)
    _agree(out, flop_plan(method, schedule=sched, model_cfg=model.cfg, text_len=text.shape[0]))
    if method != "dense" and not method.startswith("stagevar:cfg0"):
        assert out.summary()["flops"] < out.summary()["flops_dense"]


@pytest.mark.parametrize("method", ["dense", "faststar:fast", "skip:last1"])
def test_teacher_forced_steps_cost_the_same_in_both(tiny, method):
    """Image-to-video: clip 0 teacher-forced; only its last step (clip 1's context) runs, dense, in both."""
    model, sched, text, dense = tiny
    teacher = {st.index: dense.bits[st.index] for st in sched.steps if st.scale.clip == 0}
    out = run(tiny, make_accelerator(method), teacher_bits=teacher)
    plan = flop_plan(method, schedule=sched, model_cfg=model.cfg, text_len=text.shape[0], teacher_steps=teacher)
    _agree(out, plan)
    assert [r["tokens_run"] > 0 for r in out.stats[:5]] == [False, False, False, False, True]
    assert [r["flops_dense"] for r in out.stats[:4]] == [0.0] * 4


def test_a_pruned_step_costs_its_kept_tokens(tiny):
    model, sched, text, _ = tiny
    last = run(tiny, make_accelerator("faststar:paper")).stats[-1]
    assert last["tokens_run"] == 44                          # ceil(0.3 * 144)
    kw = dict(depth=model.cfg.depth, width=model.cfg.width, num_heads=model.cfg.num_heads,
              num_kv_heads=model.cfg.num_kv_heads, mlp_hidden=model.cfg.mlp_hidden, batch=2)
    n, ref = last["tokens_run"], last["ref_tokens"]
    assert ref == 44                                         # clip 1's last step ran 44 tokens: clip 2's context
    assert last["flops"] == pytest.approx(sum(step_flops(n, text.shape[0] + ref + n, **kw)), rel=1e-12)
    assert last["flops_dense"] == pytest.approx(sum(step_flops(144, text.shape[0] + 144 + 144, **kw)), rel=1e-12)
    assert torch.is_tensor(run(tiny, None).latent)
