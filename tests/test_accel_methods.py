"""Method strings, presets, apply / remove and records (accel/methods.py, presets.py)."""
from pathlib import Path

import pytest

from faststar import official_schedule
from faststar.accel import (METHODS, PRESETS, accelerator_from_record, accelerator_from_spec, apply,
                            check_method_specs, flop_plan, make_accelerator, parse_method_spec, remove,
                            spec_from_record)
from faststar.accel.base import Accelerator
from faststar.accel.baselines import FastVAR, SkipScales, StageVAR
from faststar.accel.faststar import FastSTAR, FastSTARConfig, RandomPrune
from faststar.accel.presets import SELECTION_SPREAD

HISTORICAL = Path(__file__).resolve().parents[1] / "benchmarks" / "methods" / "historical_presets.txt"


def test_the_public_presets():
    assert set(PRESETS["faststar"]) == {"quality", "balanced", "fast-hq", "fast", "paper"}
    assert set(PRESETS["random"]) == set(PRESETS["faststar"])
    assert len([f for f in FastSTARConfig.__dataclass_fields__]) <= 12


def test_parse_method_spec():
    assert parse_method_spec("faststar:fast+update=partial+keep_ratios=0.3/0.5+last_k=none+block=2") == (
        "faststar", "fast", dict(update="partial", keep_ratios=(0.3, 0.5), last_k=None, block=2))
    assert parse_method_spec("fastvar+keep_ratios=0.3/") == ("fastvar", None, dict(keep_ratios=(0.3,)))
    assert parse_method_spec("faststar:paper+dense_last_rep=false")[2] == dict(dense_last_rep=False)
    with pytest.raises(ValueError, match="expected key=value"):
        parse_method_spec("faststar+block")


def test_apply_remove_reversible_and_idempotent():
    class Holder:
        accelerator = None
    h = Holder()
    assert apply(h, "faststar") is h
    assert isinstance(h.accelerator, FastSTAR) and h.accelerator.preset == "balanced"
    first = h.accelerator.describe()
    apply(h, "faststar")
    assert h.accelerator.describe() == first
    apply(h, "fastvar", "hart")
    assert isinstance(h.accelerator, FastVAR) and h.accelerator.cfg.keep_ratios == (0.25, 0.5)
    apply(h, "faststar", "fast", w_tm=0.5)
    assert h.accelerator.cfg.w_tm == 0.5 and h.accelerator.cfg.keep_ratios == PRESETS["faststar"]["fast"]["keep_ratios"]
    remove(h)
    remove(h)
    assert h.accelerator is None
    with pytest.raises(TypeError, match="accelerator"):
        apply(object(), "faststar")
    with pytest.raises(ValueError, match="unknown acceleration method"):
        apply(h, "tome")
    with pytest.raises(TypeError, match="unknown faststar option"):
        apply(h, "faststar", keep_ratio=0.5)
    with pytest.raises(TypeError, match="unknown faststar option"):
        apply(h, "faststar", mode="threshold")                  # a knob that left the package
    with pytest.raises(ValueError, match="unknown preset"):
        apply(h, "faststar", "guided-fast")                     # a historical plan: a method string now
    assert h.accelerator is None                                 # a failed apply leaves it removed
    apply(h, "faststar:quality+anchors=0+keep_ratios=0.7/1/1")
    c = h.accelerator.cfg
    assert c.anchors == 0.0 and c.keep_ratios == (0.7, 1.0, 1.0) and c.w_detail == 1.0
    assert apply(h, "faststar+w_tm=0.5", "fast", w_tm=0.25).accelerator.cfg.w_tm == 0.25
    with pytest.raises(ValueError, match="names the preset 'quality'"):
        make_accelerator("faststar:quality", "fast")
    assert type(make_accelerator("dense")) is Accelerator and accelerator_from_spec("dense") is None
    assert accelerator_from_spec("dense+single_branch_last=2").guidance.last == 2
    with pytest.raises(ValueError, match="no presets"):
        make_accelerator("dense", "fast")
    assert set(METHODS) == {"dense", "faststar", "fastvar", "stagevar", "skip", "random"}
    assert isinstance(make_accelerator("random"), RandomPrune)
    assert isinstance(make_accelerator("stagevar"), StageVAR) and isinstance(make_accelerator("skip"), SkipScales)
    assert check_method_specs([" dense", "faststar:paper "]) == ["dense", "faststar:paper"]
    with pytest.raises(ValueError, match="method 'faststar:nope'"):
        check_method_specs(["faststar:nope"])
    # a bad knob value names the knob (eval and bench check their method lists through this before loading)
    with pytest.raises(ValueError, match=r"^method 'faststar:balanced\+anchors=abc': knob anchors=abc: "):
        check_method_specs(["dense", "faststar:balanced+anchors=abc"])


def test_spec_from_record_rebuilds_every_preset_exactly():
    for method, table in PRESETS.items():
        for preset in table:
            rec = make_accelerator(method, preset).describe()
            again = accelerator_from_spec(spec_from_record(rec)).describe()
            rebuilt = accelerator_from_record(rec).describe()
            assert rebuilt == rec
            rec.pop("preset"), again.pop("preset")
            assert again == rec, (method, preset, spec_from_record(rec))
    old = make_accelerator("faststar", "paper", keep_ratios=(0.5,)).describe()     # a 1-ratio tuple stays one
    del old["max_reps"], old["single_branch_clip0"]                                 # a record lacking knobs
    acc = accelerator_from_spec(spec_from_record(old))
    assert acc.cfg.keep_ratios == (0.5,) and acc.cfg.max_reps == 0 and acc.guidance.clip0 == -1
    assert spec_from_record(None) == "dense" and accelerator_from_spec(spec_from_record({"method": "dense"})) is None


def test_historical_presets_are_method_strings_that_resolve():
    lines = [ln for ln in HISTORICAL.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    names = [ln[2:] for ln in HISTORICAL.read_text().splitlines() if ln.startswith("# faststar:")]
    assert len(lines) == 17 and "faststar:guided-fast" in names
    for ln in lines:
        acc = accelerator_from_spec(ln)
        assert acc.name in ("faststar", "random")
        assert ln.split(":")[0] + ":" + ln.split(":")[1].split("+")[0] not in names   # not a preset name


def test_presets_flop_savings_at_8b_720p():
    sched = official_schedule("720p", 5)
    saved = {p: flop_plan("faststar", p, sched, "infinitystar-8b")["saved"] for p in PRESETS["faststar"]}
    assert 0.40 <= saved["quality"] <= 0.50 and saved["balanced"] >= 0.60 and saved["fast"] >= 0.78
    assert saved["fast"] > saved["fast-hq"] > saved["balanced"] > saved["quality"]
    assert 0.45 < saved["paper"] < saved["balanced"]           # two branches everywhere, 720p last scale at 30 %
    assert flop_plan("dense", schedule=sched)["saved"] == 0.0
    for m, table in PRESETS.items():
        for p in table:
            assert 0.0 < flop_plan(m, p, sched)["saved"] < 1.0, (m, p)


def test_random_presets_are_faststar_ratios_with_a_uniform_draw():
    assert PRESETS["faststar"]["fast"]["block"] == 2 and "block" not in PRESETS["random"]["fast"]
    sched = official_schedule("720p", 5)
    for p, knobs in PRESETS["random"].items():
        assert not set(knobs) & set(SELECTION_SPREAD), p
        assert {k: v for k, v in PRESETS["faststar"][p].items() if k not in SELECTION_SPREAD} == knobs, p
        assert flop_plan("random", p, sched)["saved"] == pytest.approx(flop_plan("faststar", p, sched)["saved"]), p


def test_records_from_before_the_split_rebuild_where_they_use_no_removed_knob():
    old = dict(method="faststar", preset="guided-balanced", keep_ratios=[0.0, 0.4, 1.0], mode="ratio", threshold=1.0,
               floor=0.1, cap=0.9, last_k=None, prune_clip0=False, spatial="canvas", temporal="off", w_sp=1.0,
               w_tm=1.0, w_detail=0.0, norm="rank", update="restore", probe_layer=2, eps=1e-6,
               dense_ref_steps=False, single_branch_last=0, single_branch_clip0=-1, reuse_guidance=False, block=0,
               anchors=0.0, max_reps=0, skipped="zero", skipped_reps="zero", keep_reps="first", rep_keep=0.0,
               proportional=False, seed_offset=0)
    acc = accelerator_from_record(old)
    assert acc.cfg.keep_ratios == (0.0, 0.4, 1.0) and acc.cfg.w_tm == 0.0 and acc.cfg.update == "restore"
    rnd = accelerator_from_record({**old, "method": "random", "spatial": "off", "temporal": "off", "seed_offset": 2})
    assert isinstance(rnd, RandomPrune) and rnd.cfg.seed_offset == 2
    with pytest.raises(ValueError, match="mode='threshold', a knob that left the package"):
        accelerator_from_record({**old, "mode": "threshold"})
    sv = accelerator_from_record(dict(method="stagevar", single_branch_last=3, low_rank_last=1, rank_ratio=0.1,
                                      sampling="norm", clip0=False, resize="area", seed_offset=0))
    assert (sv.guidance.last, sv.guidance.clip0, sv.cfg.clip0) == (3, 0, False)
