"""Property-based tests (hypothesis): random method strings and random command-line values never give a
traceback. The method-string parser raises ValueError (one line) or builds an accelerator; `faststar generate`'s
parser and input checks (everything before the model loads) end in exit 2 with one line, or pass."""
import argparse
import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from faststar import accel
from faststar.cli import build_parser
from faststar.errors import UserError, one_line
from faststar.inputs import check_generate_inputs

KNOBS = sorted({f.name for c in accel.METHODS.values() if getattr(c, "config_class", None) is not None
                for f in dataclasses.fields(c.config_class)})
VALUES = st.one_of(st.text(max_size=8), st.sampled_from(
    ["abc", "1e400", "nan", "inf", "-inf", "-1", "0", "1.5", "0.3/0.5", "/", "//", "true", "none", "x/y", "1/abc",
     "99999999999999999999", "1e-400", "off", "partial/restore", ""]))
SPECS = st.builds(lambda m, p, ks: m + (":" + p if p is not None else "") + "".join(f"+{k}={v}" for k, v in ks),
                  st.sampled_from(sorted(accel.METHODS) + ["", "Faststar", "warp"]),
                  st.one_of(st.none(), st.sampled_from(["quality", "balanced", "fast-hq", "fast", ""]),
                            st.text(max_size=6)),
                  st.lists(st.tuples(st.sampled_from(KNOBS + ["bogus"]), VALUES), max_size=3))
FAST = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


@FAST
@given(st.one_of(SPECS, st.text(max_size=40)))
def test_method_strings_never_give_a_traceback(spec):
    try:
        accel.check_method_specs([spec])
    except ValueError as e:
        assert one_line(e) == " ".join(str(e).split()) and str(e).strip()


@FAST
@given(SPECS)
def test_cli_names_the_knob_of_a_bad_value(spec):
    """Through --accel, a value that does not convert is reported with its knob's name."""
    try:
        from faststar.inputs import build_accelerator
        build_accelerator(spec, None)
    except UserError as e:
        msg = str(e)
        assert msg.startswith("--accel ") and "\n" not in msg
        if "could not convert" in msg:
            assert "knob " in msg


TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
FLAGS = {
    "--prompt": st.one_of(TEXT, st.just(""), st.just(" ")),
    "--seed": st.one_of(TEXT, st.integers(-2 ** 70, 2 ** 70).map(str), st.floats().map(str)),
    "--duration": st.one_of(TEXT, st.integers(-3, 12).map(str)),
    "--resolution": st.one_of(TEXT, st.sampled_from(["720p", "480p", "256x448", "auto"])),
    "--image": st.one_of(TEXT, st.sampled_from(["/", "/etc/hostname", "/dev/null", "."])),
    "--output": st.one_of(TEXT, TEXT.map(lambda s: s + ".mp4"), st.sampled_from(["/", "/proc/x.mp4", ".gif"])),
    "--device": st.one_of(TEXT, st.sampled_from(["cpu", "cuda", "cuda:1", "mps", "meta", "cpu:0", "cuda:-1"])),
    "--dtype": st.one_of(TEXT, st.sampled_from(["bf16", "fp32", "fp16", "auto"])),
    "--attention": st.one_of(TEXT, st.sampled_from(["auto", "sdpa", "fa3"])),
    "--text-encoder": st.one_of(TEXT, st.sampled_from(["t5", "t5:/", "minilm", "tiny:x", "cached:", "tiny:32"])),
    "--accel": st.one_of(TEXT, SPECS),
    "--preset": st.one_of(TEXT, st.sampled_from(["quality", "fast"])),
}


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.dictionaries(st.sampled_from(sorted(FLAGS)), st.none(), min_size=1).flatmap(
    lambda d: st.fixed_dictionaries({k: FLAGS[k] for k in d})), st.booleans())
def test_random_generate_inputs_never_give_a_traceback(tmp_path_factory, flags, save_masks):
    flags.setdefault("--prompt", "a cup")
    flags.setdefault("--output", str(tmp_path_factory.getbasetemp() / "never-written.mp4"))
    argv = ["generate"] + [f"{k}={v}" for k, v in flags.items()] + (["--save-masks"] if save_masks else [])
    parser = build_parser(describe_sizes=False)
    try:
        a = parser.parse_args(argv)
    except SystemExit as e:                      # argparse: one line, exit 2
        assert e.code == 2
        return
    try:
        check_generate_inputs(a)
    except ValueError as e:                      # UserError, CheckpointError: one line naming the problem
        assert "\n" not in str(e) and str(e).strip()


def test_argparse_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        build_parser(describe_sizes=False).parse_args(["generate", "--seed", "x"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1
    assert isinstance(build_parser(), argparse.ArgumentParser)
