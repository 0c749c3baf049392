"""Generation split over torchrun ranks (faststar.parallel; gloo on the CPU): guidance-parallel (parallel='cfg', the
two guidance branches on two ranks) and sequence-parallel (parallel='sp', Ulysses over heads, 2 ranks: the tiny
model has 2 kv heads) make the same video as one process, bit for bit (bits, masks and latent; both at one
thread: torchrun's ranks run single-threaded, so the reference does too), dense, under FastSTAR presets (pruned
steps, single-branch late scales: rank 1 idles there) and a two-phase baseline (scores at a prune layer)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from faststar.accel import make_accelerator
from faststar.generate import generate
from faststar.parallel import make_parallel
from tiny_accel import SEED, tiny, tiny_model  # noqa: F401

TESTS = Path(__file__).resolve().parent
SRC = str(TESTS.parent / "src")
METHODS = ["dense", "faststar:balanced", "faststar:fast", "fastvar:balanced", "stagevar:original", "stagevar:cfg0"]


def _torchrun(args, n=2):
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([SRC, str(TESTS), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
                           *args], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("layout", ["cfg", "sp"])
def test_two_ranks_are_bit_identical_to_one_process(tmp_path, layout):
    r = _torchrun([str(TESTS / "parallel_worker.py"), str(tmp_path), layout, *METHODS])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    got = [load_file(str(tmp_path / f"rank{k}.safetensors")) for k in (0, 1)]
    assert got[0].keys() == got[1].keys()
    for k in got[0]:
        assert torch.equal(got[0][k], got[1][k]), k              # both ranks hold the same video
    model, sched, text = tiny_model()
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for method in METHODS:
            acc = None if method == "dense" else make_accelerator(method)
            ref = generate(model, sched, text, seed=SEED, accelerator=acc)
            assert torch.equal(got[0][f"{method}.latent"], ref.latent), method
            for i, (b, m) in enumerate(zip(ref.bits, ref.masks)):
                assert (b is None) == (f"{method}.bits{i:03d}" not in got[0]), (method, i)
                if b is not None:
                    assert torch.equal(got[0][f"{method}.bits{i:03d}"], b), (method, i)
                if m is not None:
                    assert torch.equal(got[0][f"{method}.mask{i:03d}"], m), (method, i)
            if method != "dense":
                assert any(m is not None and not m.all() for m in ref.masks) or method.startswith("stagevar")
            if method.startswith(("faststar", "stagevar")):
                assert any(row["branches"] == 1 for row in ref.stats), method     # single-branch steps ran
    finally:
        torch.set_num_threads(n)


def test_the_layout_must_fit_the_world_size(tiny):
    model, sched, text, _ = tiny
    with pytest.raises(ValueError, match="world size is 1: launch with torchrun --nproc-per-node 2"):
        generate(model, sched, text, seed=SEED, parallel="cfg")
    with pytest.raises(ValueError, match="world size is 1: launch with torchrun --nproc-per-node P"):
        generate(model, sched, text, seed=SEED, parallel="sp")
    with pytest.raises(ValueError, match="together is not built yet"):
        make_parallel("cfg+sp")
    with pytest.raises(ValueError, match="unknown parallel layout 'tp'"):
        make_parallel("tp")


def test_three_ranks_are_refused_with_one_line(tmp_path):
    r = _torchrun([str(TESTS / "parallel_worker.py"), str(tmp_path), "cfg", "dense"], n=3)
    assert r.returncode != 0
    assert "parallel='cfg' puts the two guidance branches on 2 ranks, but the world size is 3" in r.stderr
    from faststar.parallel import SequenceParallel
    sp = SequenceParallel.__new__(SequenceParallel)            # the head check alone, without a process group
    sp.world = 3
    with pytest.raises(ValueError, match="4 query / 2 kv heads do not divide over 3 ranks"):
        sp.check(2, tiny_model()[0].cfg)


def test_cli_parallel_cfg_writes_the_one_process_video(tmp_path, capsys):
    from faststar.cli import main as cli_main
    from faststar.io import read_video
    from test_pipeline import tiny_pipe
    folder = tiny_pipe().save_pretrained(tmp_path / "model")
    args = ["generate", "--model-dir", str(folder), "--prompt", "a red ball", "--seed", "2", "--device", "cpu",
            "--accel", "faststar", "--preset", "balanced", "--quiet"]
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert cli_main(args + ["-o", str(tmp_path / "one.mp4")]) == 0
    finally:
        torch.set_num_threads(n)
    r = _torchrun(["-m", "faststar.cli", *args, "--parallel", "cfg", "-o", str(tmp_path / "two.mp4")])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stdout.count("wrote ") == 1                              # rank 0 writes, rank 1 does not
    assert (read_video(tmp_path / "one.mp4") == read_video(tmp_path / "two.mp4")).all()
    capsys.readouterr()
    assert cli_main(args + ["--parallel", "cfg", "-o", str(tmp_path / "x.mp4")]) == 2   # one process: refused
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--parallel: parallel='cfg'" in err and "world size is 1" in err
    assert cli_main(args + ["--parallel", "cfg+sp", "-o", str(tmp_path / "x.mp4")]) == 2
    assert "not built yet" in capsys.readouterr().err
    assert not (tmp_path / "x.mp4").exists()
