"""Batch generation (faststar.batch): a JSONL file of jobs, checked before loading, resumable, split over torchrun
ranks (gloo on the CPU). The model is the tiny test pipeline saved as a model folder (the embedded testbed takes
minutes per video on a CPU)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from faststar.batch import pending, rank_share, read_jobs
from faststar.cli import main as cli_main
from test_pipeline import tiny_pipe

SRC = str(Path(__file__).resolve().parents[1] / "src")
JOBS = [dict(prompt="a red ball", seed=1), dict(prompt="waves on a beach", seed=2, method="faststar:balanced"),
        dict(prompt="a cat walks", seed=3), dict(prompt="a red ball", seed=4, method="skip:last1"),
        dict(prompt="snow falls", seed=5)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("batch")
    folder = tiny_pipe().save_pretrained(root / "model")
    prompts = root / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps(j) for j in JOBS) + "\n\n")
    single = root / "single"
    assert cli_main(["generate", "--prompts", str(prompts), "--out-dir", str(single), "--model-dir", str(folder),
                     "--device", "cpu", "--quiet"]) == 0
    return root, folder, prompts, single


def _meta(d: Path) -> dict:
    return {p.stem: json.loads(p.read_text()) for p in sorted(d.glob("*.json"))}


def _torchrun(folder, prompts, out_dir, n=2, **popen):
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}", "-m",
           "faststar.cli", "generate", "--prompts", str(prompts), "--out-dir", str(out_dir), "--model-dir",
           str(folder), "--device", "cpu", "--quiet"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            **popen)


def _finished(d: Path) -> list[str]:
    """The outputs under their final names (a killed run may leave temporary .NNNNN.*.tmp.mp4 files)."""
    return sorted(x.stem for x in d.glob("[0-9][0-9][0-9][0-9][0-9].mp4"))


def _descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (torchrun starts its ranks in sessions of their own)."""
    kids = []
    for st in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = st.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(st.parent.name))
    return [d for k in kids for d in _descendants(k)] + kids


def test_single_process_writes_every_job_and_a_rerun_skips_them(setup, capsys):
    root, folder, prompts, single = setup
    meta = _meta(single)
    assert sorted(meta) == [f"{i:05d}" for i in range(len(JOBS))]
    assert all((single / f"{k}.mp4").stat().st_size > 0 for k in meta)
    assert [m["seed"] for m in meta.values()] == [j["seed"] for j in JOBS]
    assert meta["00001"]["summary"]["flop_speedup"] > 1.0           # the line's method ran
    assert meta["00000"]["summary"]["flop_speedup"] == 1.0
    assert meta["00000"]["frames_sha256"] != meta["00002"]["frames_sha256"]
    assert not [p for p in single.iterdir() if p.name.startswith(".")]      # no temporary files left
    mtimes = {p.name: p.stat().st_mtime_ns for p in single.iterdir()}
    capsys.readouterr()
    assert cli_main(["generate", "--prompts", str(prompts), "--out-dir", str(single), "--model-dir", str(folder),
                     "--device", "cpu", "--quiet"]) == 0
    assert "0 generated, 5 already there" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in single.iterdir()} == mtimes


def test_two_ranks_write_each_output_once_equal_to_one_process_and_resume_after_a_kill(setup):
    root, folder, prompts, single = setup
    out = root / "ranks"
    p = _torchrun(folder, prompts, out)
    deadline = time.time() + 120
    while not _finished(out) and time.time() < deadline and p.poll() is None:
        time.sleep(0.05)
    for pid in _descendants(p.pid) + [p.pid]:        # kill both ranks (their own sessions) and torchrun
        os.kill(pid, signal.SIGKILL)
    p.wait()
    time.sleep(0.5)
    first = _finished(out)
    assert first and len(first) < len(JOBS), first
    assert not [x for x in out.glob("[0-9]*.mp4") if x.stat().st_size == 0]
    p = _torchrun(folder, prompts, out)
    log, _ = p.communicate(timeout=300)
    assert p.returncode == 0, log
    assert f"{len(JOBS) - len(first)} generated, {len(first)} already there" in log
    meta, ref = _meta(out), _meta(single)
    assert sorted(meta) == sorted(ref)
    for k in ref:
        assert meta[k]["frames_sha256"] == ref[k]["frames_sha256"], k      # the same video as one process
        assert meta[k]["world"] == 2 and meta[k]["rank"] == int(k) % 2
    assert not [x for x in out.iterdir() if x.name.startswith(".")]
    (out / "00003.mp4").unlink()                     # a deleted output is the only one redone
    p = _torchrun(folder, prompts, out)
    log, _ = p.communicate(timeout=300)
    assert p.returncode == 0 and "1 generated, 4 already there" in log, log
    assert _meta(out)["00003"]["frames_sha256"] == ref["00003"]["frames_sha256"]


def test_split_and_pending(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text("\n".join(json.dumps(dict(prompt=f"p{i}")) for i in range(7)))
    jobs = read_jobs(f)
    shares = [rank_share(jobs, r, 3) for r in range(3)]
    assert [[j.index for j in s] for s in shares] == [[0, 3, 6], [1, 4], [2, 5]]
    (tmp_path / "00004.mp4").write_bytes(b"x")
    assert [j.index for j in pending(jobs, tmp_path)] == [0, 1, 2, 3, 5, 6]


@pytest.mark.parametrize("line, msg", [
    ("{not json", "line 3: not valid JSON"),
    ('["a"]', "line 3: expected a JSON object"),
    ('{"prompt": ""}', "line 3: 'prompt' must be a non-empty string"),
    ('{"prompt": "x", "sed": 1}', "line 3: unknown keys ['sed']"),
    ('{"prompt": "x", "seed": -1}', "line 3: 'seed' must be a non-negative integer"),
    ('{"prompt": "x", "image": "nope.png"}', "line 3: image not found"),
    ('{"prompt": "x", "method": "faststar:nosuch"}', "line 3: method 'faststar:nosuch'"),
])
def test_a_bad_line_is_one_line_with_its_number_before_loading(tmp_path, capsys, line, msg):
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "ok"}\n\n' + line + "\n")
    rc = cli_main(["generate", "--prompts", str(f), "--out-dir", str(tmp_path / "o"),
                   "--model-dir", str(tmp_path / "no-model-here")])      # would fail to load: never reached
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and msg in err, err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
