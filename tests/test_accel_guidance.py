"""Single-branch late guidance: one policy beside any method (accel/guidance.py)."""
import pytest

from faststar.accel import PRESETS, flop_plan, make_accelerator
from faststar.accel.guidance import TWO_BRANCHES, LateSingleBranch
from tiny_accel import run, tiny  # noqa: F401


def test_the_policy_counts_scales_from_each_clips_end(tiny):
    _, sched, _, _ = tiny
    p = LateSingleBranch(2)
    assert [p.branches(sched, s) for s in sched.scales if s.clip == 1] == [2, 2, 2, 1, 1]
    assert [p.branches(sched, s) for s in sched.scales if s.clip == 0] == [2, 2, 2, 1, 1]
    video = LateSingleBranch(2, clip0=0)
    assert [video.branches(sched, s) for s in sched.scales if s.clip == 0] == [2] * 5
    first = LateSingleBranch(0, clip0=1)
    assert [first.branches(sched, s) for s in sched.scales] == [2, 2, 2, 2, 1] + [2] * 10
    assert all(TWO_BRANCHES.branches(sched, s) == 2 for s in sched.scales)
    with pytest.raises(ValueError, match="single_branch_clip0"):
        LateSingleBranch(1, clip0=-2)
    with pytest.raises(ValueError, match="single_branch_last"):
        LateSingleBranch(-1)


@pytest.mark.parametrize("method", ["dense", "faststar:paper", "fastvar:hart", "skip:last1", "random:paper"])
def test_the_policy_applies_beside_any_method(tiny, method):
    """+single_branch_last=2 on any method: exactly the last two scales of each clip run one branch (a step the
    loop forces dense runs both), and the rest of the plan is unchanged."""
    model, sched, text, _ = tiny
    base = run(tiny, make_accelerator(method))
    acc = make_accelerator(method + "+single_branch_last=2")
    out = run(tiny, acc)
    for st, a, b in zip(sched.steps, base.stats, out.stats):
        assert a["tokens_run"] == b["tokens_run"]
        if b["tokens_run"]:
            single = st.scale.index_in_clip >= 3 and not (method == "skip:last1" and st.index == 11)
            assert b["branches"] == (1 if single else 2), (method, st.index)
    fp = flop_plan(acc, schedule=sched, model_cfg=model.cfg, text_len=text.shape[0])
    assert [r["branches"] for r in fp["steps"]] == [r["branches"] for r in out.stats]
    assert acc.describe()["single_branch_last"] == 2


def test_a_faststar_preset_names_the_whole_recipe():
    acc = make_accelerator("faststar:balanced")
    assert acc.guidance == LateSingleBranch(3, 0)
    assert acc.describe()["single_branch_last"] == 3 and acc.describe()["single_branch_clip0"] == 0
    assert make_accelerator("faststar:paper").guidance == TWO_BRANCHES
    assert make_accelerator("faststar:balanced+single_branch_last=0").guidance == LateSingleBranch(0, 0)
    for name, knobs in PRESETS["faststar"].items():
        g = make_accelerator("faststar", name).guidance
        assert (g.last, g.clip0) == (knobs.get("single_branch_last", 0), knobs.get("single_branch_clip0", -1))
