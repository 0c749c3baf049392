"""Resumable testbed training (CPU, tiny config): a run cut into calls gives the weights of one uninterrupted run;
photos train the VAE and the first clip's scales; portable checkpoints resume at their step."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

SHARED = Path(__file__).resolve().parents[2] / "shared"
CLIPS = SHARED / "data" / "clips"
PHOTO = Path(__file__).resolve().parents[1] / "src" / "faststar" / "data" / "cup_frame30.jpg"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Two training clips and a held-out one (24 frames each), plus two photos (one held out) as a pack has them."""
    if not CLIPS.is_dir():
        pytest.skip("../shared/data/clips is absent")
    from PIL import Image
    from faststar.testbed.data import CAPTIONS_FILE, EMBEDDINGS_FILE, caption_table, embed_captions, prepare_data
    from faststar.testbed.data import CLIPS as CLIP_TABLE
    from faststar.text import TinyTextEncoder
    tmp = tmp_path_factory.mktemp("resume")
    enc = TinyTextEncoder(384)
    d = prepare_data(tmp / "data", only=["tree", "bikes", "cup"], max_frames=24, encoder=enc)
    meta = json.loads((d / CAPTIONS_FILE).read_text())
    (d / "photos").mkdir()
    im = Image.open(PHOTO).convert("RGB").resize((448, 256))
    photos = []
    for name, split, box in (("a", "train", (0, 0, 448, 256)), ("b", "val", (40, 20, 300, 200))):
        im.crop(box).resize((448, 256)).save(d / "photos" / f"{name}.0.jpg", quality=92)
        photos.append(dict(name=name, files=[f"photos/{name}.0.jpg"], split=split, caption=f"photo {name}",
                           key=f"photo.{name}"))
    meta["photos"] = photos
    chosen = [c for c in CLIP_TABLE if c["name"] in ("tree", "bikes", "cup")]
    embed_captions(caption_table(chosen) + [(p["key"], p["caption"]) for p in photos], d / EMBEDDINGS_FILE,
                   encoder=enc)
    (d / CAPTIONS_FILE).write_text(json.dumps(meta))
    return d


def _common(data, out, *extra):
    return ["--data", str(data), "--out", str(out), "--export", "", "--spec", "tiny", "--log-every", "1",
            "--val-windows", "1", "--minutes-vae", "5", "--minutes-gpt", "5", "--vae-steps", "4", "--gpt-steps", "2",
            "--lr-vae", "2e-3", "--photo-frac", "0.5", "--photo-batch-mult", "1", "--warmup-vae", "2",
            "--warmup-gpt", "2", *extra]


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def test_resume_in_calls_equals_one_run(data, tmp_path):
    from faststar.testbed.train import main
    one = tmp_path / "one"
    log = main(_common(data, one))
    assert log["summary"]["vae_steps"] == 4 and log["summary"]["gpt_steps"] == 2
    assert [r["phase"] for r in log["vae"]] == [1, 1, 1, 2]      # 75 % reconstruction, then quantized decoding
    assert any(r["photo"] for r in log["vae"]) and not all(r["photo"] for r in log["vae"])
    assert "vae_val_photos" in log and log["vae_val_photos"]["photos"] == 1
    # the same training in three calls: VAE 2 steps (stops there: no transformer), VAE 2 more (across the phase
    # split and the calibration) + transformer 1, transformer 1 more
    cut = tmp_path / "cut"
    l1 = main(_common(data, cut, "--max-vae-steps", "2"))
    assert l1["summary"]["unfinished"] == "vae" and [r["step"] for r in l1["vae"]] == [1, 2]
    assert not (cut / "gpt.pt").exists()
    l2 = main(_common(data, cut, "--resume", "--max-gpt-steps", "1"))
    assert [r["step"] for r in l2["vae"]] == [1, 2, 3, 4] and [r["step"] for r in l2["gpt"]] == [1]
    l3 = main(_common(data, cut, "--resume"))
    assert [r["step"] for r in l3["gpt"]] == [1, 2]
    # identical weights, optimizer moments and losses (CPU arithmetic is deterministic)
    for what in ("vae", "gpt"):
        a, b = _weights(one / f"{what}.pt"), _weights(cut / f"{what}.pt")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), what
        oa = torch.load(one / f"{what}.pt", weights_only=True)["opt"]["state"]
        ob = torch.load(cut / f"{what}.pt", weights_only=True)["opt"]["state"]
        assert all(torch.equal(oa[i]["exp_avg_sq"], ob[i]["exp_avg_sq"]) for i in oa)
    assert [r["loss"] for r in l3["vae"]] == [r["loss"] for r in log["vae"]]
    assert [r["loss"] for r in l3["gpt"]] == [r["loss"] for r in log["gpt"]]


def test_portable_checkpoint_resumes_at_its_step(data, tmp_path):
    """--portable writes fp16 weights (files under 16 MiB) and the loop state; --resume DIR continues from them
    with a fresh optimizer warming up again."""
    from faststar.checkpoint import load_checkpoint
    from faststar.testbed.config import tiny_spec
    from faststar.testbed.train import main
    from faststar.vae.model import VideoVAE
    run, port = tmp_path / "run", tmp_path / "portable"
    common = ["--vae-phase1-frac", "1.0", "--minutes-gpt", "0"]
    main(_common(data, run, *common, "--max-vae-steps", "2", "--portable", str(port)))
    st = json.loads((port / "vae_state.json").read_text())
    assert st["step"] == 2 and st["phase"] == 1 and (port / "train_log.json").exists()
    assert all(p.stat().st_size < 16 * 2 ** 20 for p in port.rglob("*") if p.is_file())
    full = _weights(run / "vae.pt")
    vae = VideoVAE(tiny_spec().vae_config())
    load_checkpoint(vae, port / "vae")
    for k, v in vae.state_dict().items():
        assert torch.equal(v, full[k].half().float() if v.is_floating_point() else full[k]), k
    log = main(_common(data, tmp_path / "elsewhere", *common, "--resume", str(port)))
    rows = [r for r in log["vae"] if r["step"] > 2]
    assert [r["step"] for r in log["vae"]] == [1, 2, 3, 4]      # the history came along with the checkpoint
    assert rows[0]["lr"] < rows[1]["lr"]                         # warming up again: the moments are new
    assert log["summary"]["vae_steps"] == 4


def test_photo_windows_count_on_the_image_scales_only():
    from faststar.testbed import packing
    from faststar.testbed.config import tiny_spec
    from faststar.testbed.train import token_weight
    spec = tiny_spec()
    sch = spec.build_schedule()
    lay = packing.build_layout(sch, spec.transformer_config(), text_pad=8)
    n0 = len(sch.clip_scales(0))
    assert token_weight(lay, torch.tensor([False, False]), n0) is None
    w = token_weight(lay, torch.tensor([False, True]), n0)
    assert torch.equal(w[0], lay.weight)
    img = lay.scale_of < n0
    assert torch.equal(w[1][img], lay.weight[img]) and not w[1][~img].any()
    assert np.isclose(float(w[1].sum()), float(lay.weight[img].sum()))
