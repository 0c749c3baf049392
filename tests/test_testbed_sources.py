"""The testbed's extra data (faststar.testbed.sources): every file is pinned by SHA-256, the held-out split is the
one more-sources.md asks for, clips are cut into windows inside shots, photos into crops of the training size."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from faststar.testbed import sources as S

PHOTO = Path(__file__).resolve().parents[1] / "src" / "faststar" / "data" / "cup_frame30.jpg"


def test_every_file_is_pinned_and_the_split_is_held_out():
    for item in S.NEW_CLIPS + S.PHOTOS:
        assert item["package"] in S.PACKAGES, item["name"]
        assert len(S.MEMBER_SHA256[item["member"]]) == 64, item["name"]
        assert item["split"] in ("train", "val") and item["caption"] and item["license"]
    assert all(len(d) == 64 for _, _, d in S.PACKAGES.values())
    names = [i["name"] for i in S.NEW_CLIPS + S.PHOTOS]
    assert len(names) == len(set(names))
    # more-sources.md: mate-backgrounds and carphone_pristine are for independent evaluation only
    mate = [p for p in S.PHOTOS if p["package"].startswith("mate-backgrounds")]
    assert len(mate) == 12 and all(p["split"] == "val" for p in mate)
    assert {c["name"]: c["split"] for c in S.NEW_CLIPS}["carphone"] == "val"
    # and a couple more from the new sources
    assert {"cap13", "test_B"} <= {c["name"] for c in S.NEW_CLIPS if c["split"] == "val"}
    assert {"picosdeeuropa", "ColorfulCups"} <= {p["name"] for p in S.PHOTOS if p["split"] == "val"}
    assert sum(p["split"] == "train" for p in S.PHOTOS) >= 60


def test_cuts_and_windows():
    rng = np.random.default_rng(0)
    a = np.full((30, 8, 8, 3), 40, np.uint8) + rng.integers(0, 5, (30, 8, 8, 3), dtype=np.uint8)
    a[12:] += 150                                                 # a new shot starts at frame 12
    assert S.find_cuts(a) == [12]
    # 5 s windows at 12.5 fps = 62 frames, inside shots; a shot (or a rest) shorter than 17 frames gives none
    assert S.window_bounds(200, 12.5, [], 10) == [(0, 62), (62, 124), (124, 186)]
    assert S.window_bounds(200, 12.5, [70], 10) == [(0, 62), (70, 132), (132, 194)]
    assert S.window_bounds(30, 12.5, [12], 10) == [(12, 30)]
    assert S.window_bounds(30, 12.5, [14, 16], 10) == []
    # at most 4 of the 16 windows, spread evenly
    assert S.window_bounds(1000, 12.5, [], 4) == [(0, 62), (310, 372), (620, 682), (930, 992)]


def test_photo_crops(tmp_path):
    from PIL import Image
    crops = S.photo_crops(PHOTO)
    assert crops and all(c.size == (448, 256) for c in crops)
    big = tmp_path / "big.jpg"
    Image.open(PHOTO).convert("RGB").resize((1920, 1080)).save(big)
    crops = S.photo_crops(big)
    assert len(crops) == 4 and all(c.size == (448, 256) for c in crops)
    # the three 2x crops span the photo's width: left, middle, right are different pictures
    arr = [np.asarray(c, dtype=np.int16) for c in crops[1:]]
    assert np.abs(arr[0] - arr[2]).mean() > 1
    tiny = tmp_path / "tiny.jpg"
    Image.open(PHOTO).convert("RGB").resize((200, 120)).save(tiny)
    assert S.photo_crops(tiny) == []                              # would need 2.2x upscaling


def test_sha_check_rejects_another_file(tmp_path):
    f = tmp_path / "x.bin"
    f.write_bytes(b"not the package")
    with pytest.raises(ValueError, match="SHA-256"):
        S._check(f, "0" * 64)
