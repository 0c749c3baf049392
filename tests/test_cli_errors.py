"""`faststar generate` on bad input: one line on stderr naming the flag, exit 2, no file left, and every input
that can be checked without the weights is checked before any model loads (docs/bad-inputs.md lists the classes).
Checks run on the embedded testbed; what must generate uses the tiny model of test_pipeline (64x96, 8 steps)."""
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import faststar
from faststar import cli
from faststar.cli import main as cli_main
from faststar.io import video_info, write_image
from faststar.sampling import SEED_MAX, check_seed

SRC = Path(faststar.__file__).resolve().parents[1]
PHOTO = Path(faststar.__file__).parent / "data" / "cup_frame30.jpg"


@pytest.fixture
def no_load(monkeypatch):
    """Fail the test if a model starts loading: these inputs must be refused before that."""
    loads = []

    def load(a):
        loads.append(a)
        raise AssertionError("the model was loaded before the bad input was found")
    monkeypatch.setattr(cli, "_load_pipe", load)
    return loads


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    sys.path.insert(0, str(Path(__file__).parent))
    from test_pipeline import tiny_pipe
    return tiny_pipe().save_pretrained(tmp_path_factory.mktemp("tiny") / "model")


def _one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _run(args, capsys, out):
    """cli.main; argparse's own errors exit through SystemExit(2)."""
    try:
        rc = cli_main(["generate", "-o", str(out), *args])
    except SystemExit as e:
        rc = e.code
    return rc, capsys.readouterr().err


BAD = [
    (["--prompt", ""], "--prompt: the prompt is empty"),
    (["--prompt", "   \t"], "--prompt: the prompt is empty"),
    (["--prompt", "x", "--seed", "1.7"], "argument --seed: seed must be an integer"),
    (["--prompt", "x", "--seed", "-5"], "seed -5 is out of range"),
    (["--prompt", "x", "--seed", str(2 ** 63)], f"seed {2 ** 63} is out of range"),
    (["--prompt", "x", "--seed", "12345678901234567890123"], "is out of range"),
    (["--prompt", "x", "--seed", "abc"], "seed must be an integer"),
    (["--prompt", "x", "--duration", "abc"], "argument --duration: invalid int value"),
    (["--prompt", "x", "--duration", "5"], "--duration 5: model faststar-testbed generates 1 s"),
    (["--prompt", "x", "--resolution", "720p"], "--resolution '720p': model faststar-testbed generates 256x448"),
    (["--prompt", "x", "--image", "/no/such/photo.jpg"], "--image: no such file: /no/such/photo.jpg"),
    (["--prompt", "x", "--image", str(SRC)], "is a folder, not an image"),
    (["--prompt", "x", "--image", __file__], "--image: cannot read image"),
    (["--prompt", "x", "--video", "/no/such/clip.mp4"], "--video: no such file"),
    (["--prompt", "x", "--image", str(PHOTO), "--video", __file__], "not both"),
    (["--prompt", "x", "--device", "cuda"], "--device cuda:"),
    (["--prompt", "x", "--device", "warp9"], "--device 'warp9': not a device"),
    (["--prompt", "x", "--dtype", "fp13"], "--dtype: unknown dtype 'fp13'"),
    (["--prompt", "x", "--attention", "fa9"], "--attention 'fa9': unknown backend"),
    (["--prompt", "x", "--attention", "fa3", "--device", "cpu"], "--attention fa3: not available here"),
    (["--prompt", "x", "--text-encoder", "bert"], "--text-encoder 'bert': expected"),
    (["--prompt", "x", "--text-encoder", "cached:/no/file.safetensors"], "no file '/no/file.safetensors'"),
    (["--prompt", "x", "--accel", "faststar:quality+anchors=abc"], "knob anchors=abc: could not convert"),
    (["--prompt", "x", "--accel", "faststar+keep_ratios=x/y"], "knob keep_ratios=x/y"),
    (["--prompt", "x", "--accel", "warp"], "unknown acceleration method 'warp'"),
    (["--prompt", "x", "--save-masks"], "--save-masks shows which tokens an accelerator pruned; it needs --accel"),
    (["--prompt", "x", "--accel", "dense", "--save-masks"], "it needs --accel"),
    (["--prompt", "x", "--model-dir", "/no/such/model"], "--model-dir: model folder not found: /no/such/model"),
    (["--prompt", "x", "--bogus-flag"], "unrecognized arguments: --bogus-flag"),
]


@pytest.mark.parametrize("args,msg", BAD, ids=[" ".join(a)[:50] for a, _ in BAD])
def test_bad_input_is_one_line_before_loading(args, msg, tmp_path, capsys, no_load):
    out = tmp_path / "v.mp4"
    rc, err = _run(args, capsys, out)
    line = _one_line(err)
    assert rc == 2 and msg in line, line
    assert line.startswith(("faststar generate: error:", "faststar: error:"))
    assert no_load == [] and list(tmp_path.iterdir()) == []


def test_output_path_checks(tmp_path, capsys, no_load):
    for out, msg in ((tmp_path / "missing" / "v.mp4", "does not exist (create it, or pass --mkdir)"),
                     (tmp_path / "v.avi", "unsupported suffix '.avi'"),
                     (tmp_path / "dir.mp4", "it is a folder")):
        rc, err = _run(["--prompt", "x"], capsys, out)
        assert rc == 2 and msg in _one_line(err)
        (tmp_path / "dir.mp4").mkdir(exist_ok=True)
    assert not (tmp_path / "missing").exists() and [p.name for p in tmp_path.iterdir()] == ["dir.mp4"]
    # --mkdir creates it (and the run goes on to load the model)
    with pytest.raises(AssertionError, match="model was loaded"):
        cli_main(["generate", "--prompt", "x", "--mkdir", "-o", str(tmp_path / "new" / "v.mp4")])
    assert (tmp_path / "new").is_dir()


def test_unreadable_and_truncated_image(tmp_path, capsys, no_load):
    data = PHOTO.read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
    rc, err = _run(["--prompt", "x", "--image", str(tmp_path / "cut.jpg")], capsys, tmp_path / "v.mp4")
    assert rc == 2 and "cut.jpg" in _one_line(err)
    if os.geteuid() != 0:                      # root reads any file
        (tmp_path / "locked.jpg").write_bytes(data)
        (tmp_path / "locked.jpg").chmod(0)
        rc, err = _run(["--prompt", "x", "--image", str(tmp_path / "locked.jpg")], capsys, tmp_path / "v.mp4")
        assert rc == 2 and "not readable" in _one_line(err)
    assert not (tmp_path / "v.mp4").exists()


def test_help_lists_the_sizes_of_the_model(tiny_folder, capsys):
    def help_of(*extra):
        """The help of --duration and --resolution."""
        with pytest.raises(SystemExit):
            cli_main(["generate", *extra, "--help"])
        h = " ".join(capsys.readouterr().out.split())
        return h[h.index("--duration DURATION "):h.index("--seed SEED ")]
    h = help_of()
    assert "256x448 for the embedded testbed (its one size)" in h and "720p" not in h and "480p" not in h
    assert "1 for the embedded testbed" in h
    assert "64x96 for model tiny-test" in help_of("--model-dir", str(tiny_folder))
    official = tiny_folder.parent / "official"
    (official / "infinitystar_8b_480p_weights").mkdir(parents=True)
    h = help_of("--model-dir", str(official))
    assert "output size: 480p for model official" in h and "5 or 10" in h


def test_seed_through_the_api():
    assert check_seed(0) == 0 and check_seed(SEED_MAX) == SEED_MAX and check_seed(np.int64(7)) == 7
    assert check_seed("42") == 42 and type(check_seed(np.int32(3))) is int
    for bad in (1.7, 2.0, -1, SEED_MAX + 1, 2 ** 64, True, "1.5", "abc", None, torch.tensor([1, 2])):
        with pytest.raises(ValueError, match="seed"):
            check_seed(bad)


def test_api_rejects_a_float_seed(tiny_folder):
    from faststar.pipeline import FastStarPipeline
    pipe = FastStarPipeline.from_pretrained(tiny_folder, device="cpu")
    with pytest.raises(ValueError, match="seed must be an integer"):
        pipe("x", seed=1.7, progress=False)
    with pytest.raises(ValueError, match="out of range"):
        pipe("x", seed=-5, progress=False)
    assert pipe("x", seed=np.int64(3), progress=False, decode=False).seed == 3


def test_nan_logits_stop_with_the_step(tiny_folder, tmp_path, capsys):
    """Finite weights whose logits overflow: the run stops naming the step, exit 2, no noise video."""
    import shutil
    folder = tmp_path / "model"
    shutil.copytree(tiny_folder, folder)
    sd = load_file(str(folder / "transformer.safetensors"))
    sd["head.weight"] = torch.full_like(sd["head.weight"], 3e38)
    save_file(sd, str(folder / "transformer.safetensors"))
    out = tmp_path / "v.mp4"
    rc = cli_main(["generate", "--model-dir", str(folder), "--prompt", "a cup", "-o", str(out), "--quiet"])
    line = _one_line(capsys.readouterr().err)
    assert rc == 2 and re.search(r"error: numerical failure: NaN or Inf in the guided logits of step \d+: check the "
                                 r"weights and the dtype$", line), line
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_nonfinite_flag():
    from faststar.sampling import nonfinite
    x = torch.zeros(3, 4)
    assert not bool(nonfinite(x))
    for v in (float("nan"), float("inf"), -float("inf")):
        x[1, 2] = v
        assert bool(nonfinite(x))


def test_long_prompt_warns_once(tiny_folder, tmp_path, capsys):
    out = tmp_path / "v.mp4"
    rc = cli_main(["generate", "--model-dir", str(tiny_folder), "--prompt", "a cup " * 500, "-o", str(out),
                   "--quiet"])
    err = capsys.readouterr().err
    assert rc == 0 and out.exists()
    assert _one_line(err) == ("faststar generate: warning: the prompt is 3,001 tokens; the text encoder reads the "
                              "first 64 and ignores the rest")
    rc = cli_main(["generate", "--model-dir", str(tiny_folder), "--prompt", "a cup", "-o", str(out), "--quiet"])
    assert rc == 0 and capsys.readouterr().err == ""


def test_quiet_silences_the_loading_bar(capfd):
    from faststar.text import load_text_encoder
    load_text_encoder("minilm")
    assert "Loading weights" in capfd.readouterr().err          # the bar this is about
    with cli._progress_bars(False):
        load_text_encoder("minilm")
    assert "Loading weights" not in capfd.readouterr().err
    load_text_encoder("minilm")                                  # restored afterwards
    assert "Loading weights" in capfd.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# the process level: a closed pipe, a closed stdout, Ctrl-C in the decode, a full disk
# ---------------------------------------------------------------------------------------------------------------
def _cmd(folder, out, *extra):
    return [sys.executable, "-m", "faststar.cli", "generate", "--model-dir", str(folder), "--prompt", "a cup",
            "-o", str(out), "--quiet", *extra]


def _env():
    return dict(os.environ, PYTHONPATH=str(SRC), PYTHONDONTWRITEBYTECODE="1", OMP_NUM_THREADS="1")


def test_broken_pipe_and_closed_stdout(tiny_folder, tmp_path):
    out = tmp_path / "v.mp4"
    # `faststar generate ... | head -0`: the reader is gone before the report is printed
    p = subprocess.Popen(_cmd(tiny_folder, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(120) == 141 and err == "", err         # as a process ended by SIGPIPE; no traceback
    assert video_info(out, exact=True).frames == 9       # written before the report: complete
    out.unlink()
    # stdout closed (`>&-`): the report goes nowhere, the video is written, nothing lands inside it
    r = subprocess.run(_cmd(tiny_folder, out), stdin=subprocess.DEVNULL, capture_output=False, env=_env(),
                       stderr=subprocess.PIPE, preexec_fn=lambda: os.close(1), timeout=120)
    assert r.returncode == 0 and r.stderr.decode() == ""
    assert video_info(out, exact=True).frames == 9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.mp4"]


def test_sigint_during_decode_leaves_no_file(tiny_folder, tmp_path):
    """A real SIGINT while the VAE decode runs (the decode is held there by a sleep so the signal cannot miss it)."""
    out = tmp_path / "v.mp4"
    code = ("import sys, time\n"
            "from faststar.pipeline import FastStarPipeline as P\n"
            "real = P.decode\n"
            "def decode(self, latent, **kw):\n"
            "    print('decoding', file=sys.stderr, flush=True)\n"
            "    time.sleep(60)\n"
            "    return real(self, latent, **kw)\n"
            "P.decode = decode\n"
            "from faststar.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    cmd = [sys.executable, "-c", code, *_cmd(tiny_folder, out)[3:]]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    seen = []
    while True:                                  # other stderr lines (warnings) may come first
        ln = p.stderr.readline()
        if not ln or ln.strip() == b"decoding":
            break
        seen.append(ln)
    assert ln.strip() == b"decoding", seen + [p.stderr.read()]
    p.send_signal(signal.SIGINT)
    rc = p.wait(60)
    err = p.stderr.read().decode()
    assert rc == 130 and err.strip() == "faststar generate: interrupted", err
    assert list(tmp_path.iterdir()) == []


def test_disk_full_leaves_no_file(tiny_folder, tmp_path):
    """A file-size limit (ulimit -f) smaller than the video: the write fails, one line, nothing left."""
    import resource
    out = tmp_path / "v.mp4"
    limit = 4096

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    r = subprocess.run(_cmd(tiny_folder, out), capture_output=True, env=_env(), preexec_fn=small_files,
                       timeout=120)
    line = _one_line(r.stderr.decode())
    assert r.returncode == 2, line
    assert line == f"faststar generate: error: cannot write {str(out)!r}: File too large; nothing was left there"
    assert list(tmp_path.iterdir()) == []
