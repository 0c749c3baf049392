"""faststar.io: reading (images, real clips), atomic writing (mp4, gif, png), to_uint8, contact_sheet."""
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from faststar.io import (contact_sheet, read_image, read_video, to_uint8, video_info, write_image, write_video)
from faststar.metrics import psnr

CLIPS = Path(__file__).resolve().parents[2] / "shared" / "data" / "clips"


@pytest.fixture(scope="module")
def cup_frames():
    if not CLIPS.is_dir():
        pytest.skip(f"footage not found at {CLIPS}")
    return read_video(CLIPS / "cup.mp4", num_frames=8, size=(64, 96), start=20, stride=2)


@pytest.fixture
def cup_png(clips, tmp_path):
    """Frame 30 of shared/data/clips/cup.mp4 (640x480), saved as PNG."""
    frame = read_video(clips / "cup.mp4", num_frames=1, start=30)[0]
    return write_image(tmp_path / "cup_frame30.png", frame), frame


def _cover_crop_reference(frame, H, W):
    """Independent statement of the reference I2V preprocessing, for comparison."""
    img = Image.fromarray(frame)
    w, h = img.size
    s = max(H / h, W / w)
    nw, nh = round(w * s), round(h * s)
    img = img.resize((nw, nh), Image.Resampling.LANCZOS)
    left, top = (nw - W) // 2, (nh - H) // 2
    arr = np.asarray(img)[top:top + H, left:left + W].astype(np.float32)
    return torch.from_numpy(arr / 255 * 2 - 1).permute(2, 0, 1)


# -- reading video ---------------------------------------------------------------------------------------------
def test_video_info_real_clips(clips):
    info = video_info(clips / "cup.mp4")
    assert (info.frames, info.width, info.height) == (217, 640, 480)
    assert info.fps == pytest.approx(26.777, abs=1e-3)
    # tree.avi's header claims 444 frames; it holds 68 (counted packets agree with decoding)
    assert video_info(clips / "tree.avi").frames == 444
    assert video_info(clips / "tree.avi", exact=True).frames == 68


def test_read_video_start_stride_and_resize(clips):
    full = read_video(clips / "tree.avi")
    assert full.shape == (68, 240, 320, 3) and full.dtype == np.uint8
    sub = read_video(clips / "tree.avi", num_frames=4, start=3, stride=5)
    np.testing.assert_array_equal(sub, full[3:19:5])
    tail = read_video(clips / "tree.avi", start=60)
    np.testing.assert_array_equal(tail, full[60:])
    # per-frame resize is exactly read_image's preprocessing, quantised back to uint8
    small = read_video(clips / "tree.avi", num_frames=2, start=3, stride=5, size=(50, 40))
    assert small.shape == (2, 50, 40, 3)
    for k in range(2):
        x = read_image(full[3 + 5 * k], size=(50, 40))
        np.testing.assert_array_equal(small[k], ((x + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy())


def test_read_video_errors(clips, tmp_path):
    with pytest.raises(ValueError, match=r"has 68 frames.*needs 101"):
        read_video(clips / "tree.avi", num_frames=51, stride=2)
    with pytest.raises(ValueError, match="no such file"):
        read_video(tmp_path / "missing.mp4")
    bad = tmp_path / "notavideo.mp4"
    bad.write_text("this is not a video")
    with pytest.raises(ValueError, match="notavideo.mp4"):
        read_video(bad)
    with pytest.raises(ValueError, match="notavideo.mp4"):
        video_info(bad)


# -- writing video ---------------------------------------------------------------------------------------------
def test_mp4_round_trip(cup_frames, tmp_path):
    out = write_video(tmp_path / "cup.mp4", cup_frames, fps=16)
    back = read_video(out)
    assert back.shape == cup_frames.shape == (8, 64, 96, 3)
    info = video_info(out)
    assert (info.frames, info.width, info.height, info.fps) == (8, 96, 64, 16.0)
    q18 = psnr(back, cup_frames)
    assert q18 > 36                      # measured 38.0 dB; yuv420p chroma subsampling alone caps it near 41 dB
    assert [p.name for p in tmp_path.iterdir()] == ["cup.mp4"]
    q35 = psnr(read_video(write_video(tmp_path / "cup35.mp4", cup_frames, crf=35)), cup_frames)
    assert q35 < q18 - 3                 # crf reaches the encoder (measured 30.8 dB)


def test_mp4_odd_size_padding(cup_frames, tmp_path):
    odd = cup_frames[:3, :63, :95]
    back = read_video(write_video(tmp_path / "odd.mp4", odd))
    assert back.shape == (3, 64, 96, 3)
    assert psnr(back[:, :63, :95], odd) > 35
    with pytest.raises(ValueError, match="even height and width; got 63x95"):
        write_video(tmp_path / "odd2.mp4", odd, pad_odd=False)


def test_gif_round_trip(cup_frames, tmp_path):
    out = write_video(tmp_path / "cup.gif", cup_frames, fps=10)
    with Image.open(out) as im:
        assert im.n_frames == 8 and im.size == (96, 64)
        assert im.info["duration"] == 100
    back = read_video(out)
    assert back.shape == cup_frames.shape
    assert psnr(back, cup_frames) > 30           # 256-colour palette per frame


def test_write_video_is_atomic(cup_frames, tmp_path, monkeypatch):
    target = tmp_path / "clip.mp4"
    target.write_bytes(b"previous contents")
    # a real encoder failure: libx264 rejects the option value
    with pytest.raises(av.error.ArgumentError, match="not-a-number"):
        write_video(target, cup_frames, crf="not-a-number")
    assert target.read_bytes() == b"previous contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]

    # a failure in the middle of the stream, once a partial file is on disk (x264 buffers ~40 frames first)
    real = av.VideoFrame.from_ndarray
    partial_sizes = []

    def failing(arr, format):
        tmp_files = [p for p in tmp_path.iterdir() if p.name != "clip.mp4"]
        if tmp_files and tmp_files[0].stat().st_size > 0:
            partial_sizes.append(tmp_files[0].stat().st_size)
            raise RuntimeError("simulated failure after a partial write")
        return real(arr, format=format)

    monkeypatch.setattr(av.VideoFrame, "from_ndarray", staticmethod(failing))
    with pytest.raises(RuntimeError, match="partial write"):
        write_video(target, np.concatenate([cup_frames] * 16))
    assert partial_sizes and partial_sizes[0] > 0
    assert target.read_bytes() == b"previous contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]


def test_write_video_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "a.mp4", np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
        write_video(tmp_path / "a.mp4", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="unsupported suffix"):
        write_video(tmp_path / "a.webm", np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="does not exist"):
        write_video(tmp_path / "nofolder" / "a.mp4", np.zeros((2, 8, 8, 3), np.uint8))
    assert list(tmp_path.iterdir()) == []


# -- images ----------------------------------------------------------------------------------------------------
def test_read_image_real_photo(cup_png):
    path, frame = cup_png
    x = read_image(path)                                     # no resize: exact pixels
    assert x.shape == (3, 480, 640) and x.dtype == torch.float32
    torch.testing.assert_close(x, torch.from_numpy(frame).permute(2, 0, 1).float() / 255 * 2 - 1)
    for H, W in [(64, 96), (96, 64), (480, 640), (45, 80)]:
        y = read_image(path, size=(H, W))
        assert y.shape == (3, H, W)
        assert y.min() >= -1 and y.max() <= 1
        torch.testing.assert_close(y, _cover_crop_reference(frame, H, W), atol=1e-6, rtol=0)
    # path, PIL image and array give the same tensor
    torch.testing.assert_close(read_image(Image.open(path), size=(64, 96)), read_image(frame, size=(64, 96)))
    torch.testing.assert_close(read_image(path, size=(64, 96)), read_image(frame, size=(64, 96)))


def test_read_image_modes_and_exif(tmp_path):
    grey = np.arange(24 * 32, dtype=np.uint8).reshape(24, 32)
    x = read_image(grey)
    assert x.shape == (3, 24, 32)
    torch.testing.assert_close(x[0], x[2])
    rgba = np.dstack([np.full((24, 32, 3), 200, np.uint8), np.zeros((24, 32), np.uint8)])
    torch.testing.assert_close(read_image(rgba), torch.full((3, 24, 32), 200 / 255 * 2 - 1))
    # EXIF orientation 6 (rotate 90 degrees clockwise), applied as OpenCV's imread does
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(tmp_path / "rot.jpg", exif=exif)
    assert read_image(tmp_path / "rot.jpg").shape == (3, 32, 24)


def test_read_image_errors(cup_png, tmp_path):
    path, _ = cup_png
    with pytest.raises(ValueError, match="missing.png.*no such file"):
        read_image(tmp_path / "missing.png")
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ValueError, match="notes.png"):
        read_image(tmp_path / "notes.png")
    data = path.read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated.png"):
        read_image(tmp_path / "truncated.png", size=(64, 96))
    with pytest.raises(ValueError, match="dtype float32"):
        read_image(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="size must be"):
        read_image(path, size=(0, 10))


def test_write_image_round_trip(tmp_path):
    frame = (np.arange(20 * 30 * 3) % 251).astype(np.uint8).reshape(20, 30, 3)
    p = write_image(tmp_path / "f.png", frame)
    np.testing.assert_array_equal(np.asarray(Image.open(p)), frame)
    with pytest.raises(ValueError, match="unknown image suffix"):
        write_image(tmp_path / "f.xyz", frame)
    assert [q.name for q in tmp_path.iterdir()] == ["f.png"]


# -- helpers ---------------------------------------------------------------------------------------------------
def test_to_uint8():
    v = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.999, 1.0, 3.0]).view(1, 1, 7, 1, 1).expand(1, 3, 7, 1, 1)
    out = to_uint8(v)
    assert out.shape == (7, 1, 1, 3) and out.dtype == np.uint8
    assert out[:, 0, 0, 0].tolist() == [0, 0, 64, 128, 255, 255, 255]   # 63.75 -> 64, 127.5 -> 128 (half-even)
    x = torch.rand(3, 2, 4, 5) * 2 - 1
    np.testing.assert_array_equal(to_uint8(x), to_uint8(x[None]))
    assert to_uint8(x[:, 0]).shape == (1, 4, 5, 3)
    np.testing.assert_array_equal(to_uint8(x)[1, 2, 3], ((x[:, 1, 2, 3] + 1) * 127.5).round().to(torch.uint8))
    with pytest.raises(ValueError, match="batch 2"):
        to_uint8(torch.zeros(2, 3, 1, 4, 4))


def test_contact_sheet():
    frames = [np.full((4, 6, 3), 10 * i, np.uint8) for i in range(5)]
    sheet = contact_sheet(frames, cols=2, pad=1, pad_value=255)
    assert sheet.shape == (3 * 5 + 1, 2 * 7 + 1, 3)
    assert (sheet[1:5, 1:7] == 0).all() and (sheet[1:5, 8:14] == 10).all()
    assert (sheet[11:15, 1:7] == 40).all() and (sheet[11:15, 8:14] == 255).all()   # empty cell
    assert (sheet[0] == 255).all() and (sheet[:, 7] == 255).all()
    assert contact_sheet(np.zeros((3, 4, 6), np.uint8), cols=8, pad=0).shape == (4, 18, 3)
    with pytest.raises(ValueError, match="frame 1"):
        contact_sheet([np.zeros((4, 6, 3), np.uint8), np.zeros((5, 6, 3), np.uint8)])



def test_same_frames_give_the_same_mp4_bytes(clips, tmp_path):
    """libx264's macroblock-tree lookahead gave different bits (and decoded pixels up to 20 levels apart) for the
    same frames at this size; with the deterministic settings three writes are byte-identical."""
    import hashlib
    frames = read_video(clips / "cup.mp4", num_frames=24, size=(256, 448))
    digests, decoded = set(), []
    for i in range(3):
        p = write_video(tmp_path / f"v{i}.mp4", frames)
        digests.add(hashlib.sha256(p.read_bytes()).hexdigest())
        decoded.append(read_video(p))
    assert len(digests) == 1
    assert all(np.array_equal(decoded[0], d) for d in decoded[1:])
    assert psnr(decoded[0], frames) > 38                      # the quality stays near lossless
    assert b"Lavf" not in (tmp_path / "v0.mp4").read_bytes()   # no library version in the file (bitexact)


def test_disk_full_leaves_no_partial_file(cup_frames, tmp_path):
    """A file-size limit (as `ulimit -f`) below the video's size: an OSError naming the final path, not the
    temporary one, and nothing left in the folder (a previous file at the path is kept)."""
    import resource
    target = tmp_path / "clip.mp4"
    target.write_bytes(b"previous contents")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))
    try:
        with pytest.raises(OSError) as e:
            write_video(target, np.concatenate([cup_frames] * 4))
        with pytest.raises(OSError, match="File too large"):
            write_video(tmp_path / "clip.gif", cup_frames)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert e.value.strerror == f"cannot write {str(target)!r}: File too large; nothing was left there"
    assert target.read_bytes() == b"previous contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]


def test_check_video_path_does_not_create_folders(tmp_path):
    from faststar.io import check_video_path
    with pytest.raises(ValueError, match="does not exist"):
        check_video_path(tmp_path / "a" / "b" / "v.mp4")
    assert not (tmp_path / "a").exists()
    assert check_video_path(tmp_path / "a" / "b" / "v.mp4", mkdir=True).parent.is_dir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is not a folder"):
        check_video_path(tmp_path / "file" / "v.mp4", mkdir=True)


def test_killed_writer_leaves_nothing_under_the_final_name(tmp_path):
    """SIGKILL in the middle of an mp4 write (after the encoder has written part of the file): the final name
    never appears; only the hidden temporary file is left."""
    import os
    import signal
    import subprocess
    import sys
    target = tmp_path / "v.mp4"
    code = ("import sys, time, av, numpy as np\n"
            "from faststar.io import write_video\n"
            "real, n = av.VideoFrame.from_ndarray, [0]\n"
            "def slow(arr, format):\n"
            "    n[0] += 1\n"
            "    if n[0] == 60:\n"
            "        print('writing', flush=True)\n"
            "        time.sleep(60)\n"
            "    return real(arr, format=format)\n"
            "av.VideoFrame.from_ndarray = staticmethod(slow)\n"
            "f = np.random.default_rng(0).integers(0, 255, (80, 64, 96, 3), dtype=np.uint8)\n"
            "write_video(sys.argv[1], f)\n")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    p = subprocess.Popen([sys.executable, "-c", code, str(target)], stdout=subprocess.PIPE, env=env)
    assert p.stdout.readline().strip() == b"writing"
    partial = [q for q in tmp_path.iterdir()]
    p.send_signal(signal.SIGKILL)
    p.wait(30)
    assert len(partial) == 1 and partial[0].name.startswith(".v.") and partial[0].stat().st_size > 0
    assert not target.exists()
