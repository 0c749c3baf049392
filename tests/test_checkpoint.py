"""faststar.checkpoint: what a damaged or hostile checkpoint gets (one CheckpointError naming the file and the
tensor), through the library and through `faststar generate` / `faststar inspect` (exit code, one line, no file)."""
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from faststar.checkpoint import INDEX_NAME, CheckpointError, TensorSource, load_checkpoint, shard_path
from faststar.cli import main as cli_main
from faststar.pipeline import TESTBED_DIR

TESTBED_TF = TESTBED_DIR / "transformer"


def _copy_testbed_transformer(dst: Path) -> Path:
    shutil.copytree(TESTBED_TF, dst)
    return dst


def _err_line(capsys):
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _small_model():
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))


def test_index_shards_must_stay_inside_the_folder(tmp_path):
    folder = _copy_testbed_transformer(tmp_path / "tf")
    index = json.loads((folder / INDEX_NAME).read_text())
    outside = tmp_path / "outside.safetensors"
    shutil.copy(folder / "model-00001-of-00003.safetensors", outside)
    (folder / "link.safetensors").symlink_to(outside)
    key = next(iter(index["weight_map"]))
    for bad, msg in (("../outside.safetensors", "leads out of"),
                     (str(outside), "absolute path"),
                     ("link.safetensors", "link that leads out of"),
                     ("sub/../../outside.safetensors", "leads out of"),
                     ("model.pth", "must be .safetensors"),
                     (7, "must be a file name")):
        index["weight_map"][key] = bad
        (folder / INDEX_NAME).write_text(json.dumps(index))
        with pytest.raises(CheckpointError, match=msg):
            TensorSource(folder)
    # a link that stays inside is fine, and so is the Hugging Face cache layout (snapshot files link to blobs/)
    (folder / "inner.safetensors").symlink_to(folder / "model-00001-of-00003.safetensors")
    assert shard_path(folder, "inner.safetensors") == folder / "inner.safetensors"
    snap = tmp_path / "models--x--y" / "snapshots" / "abc"
    blobs = tmp_path / "models--x--y" / "blobs"
    blobs.mkdir(parents=True)
    snap.mkdir(parents=True)
    shutil.copy(outside, blobs / "sha1")
    (snap / "m.safetensors").symlink_to(Path("../../blobs/sha1"))
    assert shard_path(snap, "m.safetensors").resolve() == (blobs / "sha1").resolve()


def test_bad_index_files(tmp_path):
    folder = _copy_testbed_transformer(tmp_path / "tf")
    for text, msg in (("{not json", "not valid JSON"), ('{"metadata": {}}', "no 'weight_map'"), ("[]", "no 'weight_map'")):
        (folder / INDEX_NAME).write_text(text)
        with pytest.raises(CheckpointError, match=msg):
            TensorSource(folder)


def test_corrupt_and_truncated_safetensors(tmp_path):
    good = TESTBED_TF / "model-00002-of-00003.safetensors"
    data = good.read_bytes()
    cases = {"truncated": data[: len(data) // 2], "cut-by-8-bytes": data[:-8], "garbage": b"\x00" * 64,
             "bad-header": data[:8] + b"{" * 32 + data[40:], "empty": b""}
    for name, blob in cases.items():
        f = tmp_path / f"{name}.safetensors"
        f.write_bytes(blob)
        with pytest.raises(CheckpointError, match="not a readable safetensors file") as e:
            TensorSource(f)
        assert str(f) in str(e.value) and "\n" not in str(e.value)
    # a shard of an index folder: found when the folder is opened, not in the middle of loading
    folder = _copy_testbed_transformer(tmp_path / "tf")
    (folder / "model-00003-of-00003.safetensors").write_bytes(data[:1000])
    with pytest.raises(CheckpointError, match="model-00003-of-00003.safetensors is not a readable"):
        TensorSource(folder)


def test_pickle_with_code_is_refused_without_torch_advice(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo should-never-run > " + str(tmp_path / "ran"),))
    f = tmp_path / "vae.pth"
    with open(f, "wb") as h:
        torch.save({"w": torch.zeros(2), "x": Evil()}, h)
    with pytest.raises(CheckpointError) as e:
        TensorSource(f)
    msg = str(e.value)
    assert "refusing" in msg and "run code" in msg and "system" in msg
    assert "weights_only" not in msg and "False" not in msg and "\n" not in msg
    assert not (tmp_path / "ran").exists()
    # a truncated torch file: named, one line
    (tmp_path / "cut.pth").write_bytes(f.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="cannot read .*cut.pth as a torch weights file"):
        TensorSource(tmp_path / "cut.pth")


def test_nan_and_inf_weights_are_named(tmp_path):
    m = _small_model()
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    sd["1.weight"][0, 1] = float("nan")
    sd["0.bias"][2] = float("inf")
    save_file(sd, str(tmp_path / "w.safetensors"))
    with pytest.raises(CheckpointError, match=r"tensor '0.bias' holds 1 non-finite values \(0 NaN, 1 Inf\)"):
        load_checkpoint(_small_model(), tmp_path / "w.safetensors")
    sd["0.bias"][2] = 0.0
    save_file(sd, str(tmp_path / "w.safetensors"))
    with pytest.raises(CheckpointError, match=r"w.safetensors: tensor '1.weight' holds 1 non-finite values \(1 NaN"):
        load_checkpoint(_small_model(), tmp_path / "w.safetensors")
    # a value that overflows only in the model's dtype counts too (fp32 1e6 -> fp16 inf)
    sd["1.weight"][0, 1] = 1e6
    save_file(sd, str(tmp_path / "w.safetensors"))
    with pytest.raises(CheckpointError, match="'1.weight' holds 1 non-finite"):
        load_checkpoint(_small_model().half(), tmp_path / "w.safetensors")
    info = load_checkpoint(_small_model(), tmp_path / "w.safetensors")
    assert info["loaded"] == 4


def test_cli_corrupt_and_nan_checkpoints(tmp_path, capsys, monkeypatch):
    """generate and inspect on a damaged model folder: one line, exit 2 (inspect: the problem listed, exit 1),
    no output file; the corrupt file is found before any weights load."""
    from faststar import pipeline
    folder = tmp_path / "model"
    shutil.copytree(TESTBED_DIR, folder)
    shard = folder / "transformer" / "model-00002-of-00003.safetensors"
    good = shard.read_bytes()
    shard.write_bytes(good[: len(good) // 3])
    out = tmp_path / "v.mp4"
    loads = []
    monkeypatch.setattr(pipeline, "load_checkpoint", lambda *a, **k: loads.append(a))
    assert cli_main(["generate", "--model-dir", str(folder), "--prompt", "a cup", "-o", str(out)]) == 2
    line = _err_line(capsys)
    assert "model-00002-of-00003.safetensors is not a readable safetensors file" in line
    assert loads == [] and not out.exists()
    assert cli_main(["inspect", str(folder)]) == 1
    assert "model-00002-of-00003.safetensors is not a readable" in capsys.readouterr().out
    monkeypatch.undo()
    # NaN in a weight: named by the loader (tensor and file), no video
    sd = load_file(str(folder / "vae.safetensors"))
    name = sorted(k for k, v in sd.items() if v.is_floating_point())[3]
    sd[name].view(-1)[0] = float("nan")
    save_file(sd, str(folder / "vae.safetensors"))
    shard.write_bytes(good)
    assert cli_main(["generate", "--model-dir", str(folder), "--prompt", "a cup", "-o", str(out), "--quiet"]) == 2
    line = _err_line(capsys)
    assert f"tensor {name!r} holds 1 non-finite values (1 NaN" in line and "vae.safetensors" in line
    assert not out.exists()


def test_cli_index_traversal(tmp_path, capsys):
    folder = tmp_path / "model"
    shutil.copytree(TESTBED_DIR, folder)
    index_file = folder / "transformer" / INDEX_NAME
    index = json.loads(index_file.read_text())
    key = next(iter(index["weight_map"]))
    index["weight_map"][key] = "../../../../etc/passwd.safetensors"
    index_file.write_text(json.dumps(index))
    out = tmp_path / "v.mp4"
    assert cli_main(["generate", "--model-dir", str(folder), "--prompt", "a cup", "-o", str(out)]) == 2
    line = _err_line(capsys)
    assert "leads out of" in line and "passwd" in line and not out.exists()
    assert cli_main(["inspect", str(folder)]) == 1
    assert "leads out of" in capsys.readouterr().out
