"""Image and video I/O: reading conditions, writing results, small visual helpers.

Reading:
  * ``read_image`` reproduces the reference I2V preprocessing: load as RGB, LANCZOS-resize so the image covers the
    target H x W, centre-crop, map to [-1, 1]. The reference reads with OpenCV, which applies the EXIF orientation,
    so we apply it too (``ImageOps.exif_transpose``).
  * ``read_video`` / ``video_info`` decode with PyAV (FFmpeg is bundled in the ``av`` wheel).

Writing (``write_video``, ``write_image``) is atomic: the file is written under a temporary name in the target
folder and moved into place with ``os.replace``, so a failure (a full disk, Ctrl-C, an encoder error) never leaves
a half-written file at ``path``; a killed process can leave only a hidden ``.NAME.*.tmp.SUFFIX`` beside it.
MP4/MOV/MKV are H.264 (libx264, yuv420p) through PyAV; ``.gif`` goes through Pillow.

Files are deterministic: the same frames give the same bytes. libx264's lookahead (macroblock-tree rate control)
does not give the same bits from run to run here, even on one thread, so it is switched off (``mbtree=0``; the
frame-type decision and the rest of ``preset=medium`` stay), the encoder runs on one thread, and the muxer writes
no library version or time (``+bitexact``).
"""
from __future__ import annotations

import math
import os
import uuid
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv")
_CONTAINER_FORMAT = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska"}


# ---------------------------------------------------------------------------------------------------------------
# resizing shared by images and video frames
# ---------------------------------------------------------------------------------------------------------------
def _cover_size(h: int, w: int, H: int, W: int) -> tuple[int, int]:
    """Smallest rounded (h', w') with the aspect of (h, w) that covers (H, W): scale = max(H/h, W/w)."""
    scale = max(H / h, W / w)
    return max(H, round(h * scale)), max(W, round(w * scale))


def _cover_crop(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """LANCZOS-resize ``img`` so it covers ``size`` = (H, W), then take the centre H x W crop."""
    H, W = int(size[0]), int(size[1])
    if H <= 0 or W <= 0:
        raise ValueError(f"size must be two positive ints (H, W); got {size}")
    w, h = img.size
    nh, nw = _cover_size(h, w, H, W)
    if (nh, nw) != (h, w):
        img = img.resize((nw, nh), resample=Image.Resampling.LANCZOS)
    top, left = (nh - H) // 2, (nw - W) // 2
    if (nh, nw) != (H, W):
        img = img.crop((left, top, left + W, top + H))
    return img


def _check_size(size) -> tuple[int, int] | None:
    if size is None:
        return None
    if len(size) != 2 or int(size[0]) <= 0 or int(size[1]) <= 0:
        raise ValueError(f"size must be (H, W) with positive ints; got {size!r}")
    return int(size[0]), int(size[1])


# ---------------------------------------------------------------------------------------------------------------
# images
# ---------------------------------------------------------------------------------------------------------------
def _to_pil(src) -> Image.Image:
    """Open a path, a PIL image or a uint8 array ([H, W], [H, W, 3] or [H, W, 4]) as an RGB PIL image."""
    if isinstance(src, Image.Image):
        return src.convert("RGB")
    if isinstance(src, torch.Tensor):
        src = src.detach().cpu().numpy()
    if isinstance(src, np.ndarray):
        if src.dtype != np.uint8:
            raise ValueError(f"image array must be uint8 [H, W(, 3|4)]; got dtype {src.dtype}")
        if src.ndim == 3 and src.shape[2] == 1:
            src = src[..., 0]
        if not (src.ndim == 2 or (src.ndim == 3 and src.shape[2] in (3, 4))):
            raise ValueError(f"image array must be [H, W], [H, W, 3] or [H, W, 4]; got shape {src.shape}")
        return Image.fromarray(np.ascontiguousarray(src)).convert("RGB")
    path = Path(src)
    if not path.is_file():
        raise ValueError(f"cannot read image {str(path)!r}: no such file")
    try:
        with Image.open(path) as img:
            img.load()                      # force the full decode here, so truncated files fail now
            img = ImageOps.exif_transpose(img)
            return img.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"cannot read image {str(path)!r}: {type(e).__name__}: {e}") from e


def read_image(src, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Read an image as a float32 tensor [3, H, W] in [-1, 1].

    ``src``: a path, a PIL image or a uint8 array. With ``size=(H, W)`` the image is LANCZOS-resized to cover H x W
    (scale = max(H/h, W/w), dims rounded) and centre-cropped, as the reference I2V preprocessing does; with
    ``size=None`` it keeps its own size. Raises ``ValueError`` naming the file if it cannot be read.
    """
    img = _to_pil(src)
    size = _check_size(size)
    if size is not None:
        img = _cover_crop(img, size)
    x_HW3 = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy())
    return x_HW3.permute(2, 0, 1).float().div_(255.0).mul_(2.0).sub_(1.0)


# ---------------------------------------------------------------------------------------------------------------
# video reading
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VideoInfo:
    frames: int       # frame count (container header, or counted packets; see video_info)
    fps: float
    width: int
    height: int


def _open_video(path):
    import av
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"cannot read video {str(path)!r}: no such file")
    try:
        container = av.open(str(path), mode="r")
    except av.error.FFmpegError as e:
        raise ValueError(f"cannot read video {str(path)!r}: {type(e).__name__}: {e}") from e
    if not container.streams.video:
        container.close()
        raise ValueError(f"cannot read video {str(path)!r}: the file has no video stream")
    return container, container.streams.video[0]


def video_info(path, exact: bool = False) -> VideoInfo:
    """Frame count, fps, width and height of the first video stream.

    The frame count comes from the container header when it has one. Headers can be wrong (the cinepak
    ``tree.avi`` in shared/data claims 444 frames and holds 68), so ``exact=True`` counts the non-empty packets
    instead (no decoding; one packet per frame for the usual video codecs). A header without a count is always
    counted.
    """
    import av
    container, stream = _open_video(path)
    try:
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
        n = int(stream.frames or 0)
        if exact or n <= 0:
            try:
                n = sum(1 for p in container.demux(stream) if p.size > 0)
            except av.error.FFmpegError as e:
                raise ValueError(f"cannot read video {str(path)!r}: {type(e).__name__}: {e}") from e
        return VideoInfo(frames=n, fps=fps, width=int(stream.codec_context.width),
                         height=int(stream.codec_context.height))
    finally:
        container.close()


def read_video(path, num_frames: int | None = None, size: tuple[int, int] | None = None, start: int = 0,
               stride: int = 1) -> np.ndarray:
    """Decode frames ``start, start+stride, ...`` of the first video stream as uint8 RGB [T, H, W, 3].

    ``num_frames=None`` reads to the end. With ``size=(H, W)`` each frame is cover-resized (LANCZOS) and
    centre-cropped exactly like ``read_image``. Raises ``ValueError`` if the file cannot be decoded or holds fewer
    frames than requested (the message gives both counts).
    """
    import av
    if start < 0 or stride < 1:
        raise ValueError(f"need start >= 0 and stride >= 1; got start={start}, stride={stride}")
    if num_frames is not None and num_frames < 1:
        raise ValueError(f"num_frames must be >= 1 or None; got {num_frames}")
    size = _check_size(size)
    last = None if num_frames is None else start + (num_frames - 1) * stride
    frames, seen = [], 0
    container, stream = _open_video(path)
    try:
        stream.thread_type = "AUTO"
        for i, frame in enumerate(container.decode(stream)):
            seen = i + 1
            if i >= start and (i - start) % stride == 0:
                if size is None:
                    frames.append(frame.to_ndarray(format="rgb24"))
                else:
                    frames.append(np.asarray(_cover_crop(frame.to_image(), size), dtype=np.uint8))
            if last is not None and i >= last:
                break
    except av.error.FFmpegError as e:
        raise ValueError(f"cannot decode video {str(path)!r} after {seen} frames: {type(e).__name__}: {e}") from e
    finally:
        container.close()
    if num_frames is not None and len(frames) < num_frames:
        raise ValueError(f"video {str(path)!r} has {seen} frames; start={start}, stride={stride}, "
                         f"num_frames={num_frames} needs {last + 1}")
    if not frames:
        raise ValueError(f"video {str(path)!r} has {seen} decodable frames; none at or after start={start}")
    return np.stack(frames)


# ---------------------------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------------------------
def _as_uint8_frames(frames) -> np.ndarray:
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu().numpy()
    if isinstance(frames, (list, tuple)):
        frames = np.stack([np.asarray(f) for f in frames])
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [T, H, W, 3]; got dtype {frames.dtype} (use to_uint8 first)")
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise ValueError(f"frames must be uint8 [T, H, W, 3] with T >= 1; got shape {frames.shape}")
    return np.ascontiguousarray(frames)


def _atomic_write(path, write_fn) -> Path:
    """Call ``write_fn(tmp_path)`` on a temporary name beside ``path``, then move it into place. On any failure
    (including KeyboardInterrupt) the temporary file is removed; an OS error (a full disk, a file-size limit, no
    permission) is raised again as one ``OSError`` that names ``path``, not the temporary name."""
    path = Path(path)
    if not path.parent.is_dir():
        raise ValueError(f"cannot write {str(path)!r}: folder {str(path.parent)!r} does not exist")
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        write_fn(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        if isinstance(e, OSError) and not isinstance(e, BrokenPipeError):
            reason = e.strerror or " ".join(str(e).split()) or type(e).__name__
            raise OSError(e.errno, f"cannot write {str(path)!r}: {reason}; nothing was left there") from e
        raise
    return path


# libx264 settings that give the same bytes for the same frames (see the module docstring)
H264_DETERMINISTIC = {"threads": "1", "x264-params": "mbtree=0"}


def _write_h264(tmp: Path, frames: np.ndarray, fps: float, crf: int, container_format: str) -> None:
    import av
    T, H, W, _ = frames.shape
    with av.open(str(tmp), mode="w", format=container_format, options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.options = {"crf": str(crf), "preset": "medium", **H264_DETERMINISTIC}
        for f in frames:
            frame = av.VideoFrame.from_ndarray(f, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():          # flush
            container.mux(packet)


def _write_gif(tmp: Path, frames: np.ndarray, fps: float) -> None:
    images = [Image.fromarray(f) for f in frames]
    # GIF stores delays in 1/100 s; Pillow merges consecutive identical frames into one longer frame.
    images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)


def write_video(path, frames, fps: float = 16, crf: int = 18, pad_odd: bool = True) -> Path:
    """Write uint8 RGB frames [T, H, W, 3] to ``path`` and return it.

    ``.mp4`` / ``.mov`` / ``.mkv``: H.264 (libx264, yuv420p, constant-quality ``crf``; 18 is visually near lossless).
    yuv420p needs even sizes: with ``pad_odd=True`` an odd height/width is padded by one replicated edge row/column,
    otherwise a ``ValueError`` is raised. ``.gif``: Pillow, palette per frame, looping. The write is atomic.
    """
    frames = _as_uint8_frames(frames)
    path = Path(path)
    suffix = _check_video_suffix(path)
    if not fps > 0:
        raise ValueError(f"fps must be > 0; got {fps}")
    if suffix == ".gif":
        return _atomic_write(path, lambda tmp: _write_gif(tmp, frames, fps))
    T, H, W, _ = frames.shape
    if H % 2 or W % 2:
        if not pad_odd:
            raise ValueError(f"H.264 yuv420p needs even height and width; got {H}x{W} (pass pad_odd=True to pad)")
        frames = np.pad(frames, ((0, 0), (0, H % 2), (0, W % 2), (0, 0)), mode="edge")
    return _atomic_write(path, lambda tmp: _write_h264(tmp, frames, fps, crf, _CONTAINER_FORMAT[suffix]))


def _check_video_suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix != ".gif" and suffix not in VIDEO_SUFFIXES:
        raise ValueError(f"cannot write {str(path)!r}: unsupported suffix {suffix!r}; use one of "
                         f"{list(VIDEO_SUFFIXES) + ['.gif']}")
    return suffix


def check_video_path(path, mkdir: bool = False) -> Path:
    """Fail before any work if ``write_video`` could not write ``path``: its suffix, PyAV for H.264 containers, a
    folder that exists (created only with ``mkdir=True``) and can be written to, not a folder itself. Returns the
    path."""
    path = Path(path)
    if not str(path).strip() or path.name in ("", ".", ".."):
        raise ValueError(f"cannot write {str(path)!r}: not a file name")
    suffix = _check_video_suffix(path)
    if suffix in VIDEO_SUFFIXES:
        try:
            import av  # noqa: F401
        except ImportError as e:
            raise ValueError(f"writing {suffix} needs PyAV (pip install av); or write a .gif") from e
    if path.exists() and path.is_dir():
        raise ValueError(f"cannot write {str(path)!r}: it is a folder")
    parent = path.parent
    if not parent.is_dir():
        if parent.exists():
            raise ValueError(f"cannot write {str(path)!r}: {str(parent)!r} is not a folder")
        if not mkdir:
            raise ValueError(f"cannot write {str(path)!r}: folder {str(parent)!r} does not exist "
                             f"(create it, or pass --mkdir)")
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ValueError(f"cannot create folder {str(parent)!r}: {e.strerror or e}") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write {str(path)!r}: folder {str(parent)!r} is not writable")
    return path


def write_image(path, frame) -> Path:
    """Write one uint8 frame [H, W, 3] or [H, W] (format from the suffix: png, jpg, webp, ...); atomic."""
    if isinstance(frame, torch.Tensor):
        frame = frame.detach().cpu().numpy()
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or not (frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] == 3)):
        raise ValueError(f"frame must be uint8 [H, W, 3] or [H, W]; got {frame.dtype} {frame.shape}")
    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"cannot write {str(path)!r}: unknown image suffix {path.suffix!r}")
    img = Image.fromarray(np.ascontiguousarray(frame))
    return _atomic_write(path, lambda tmp: img.save(tmp, format=fmt))


# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------
def to_uint8(video: torch.Tensor) -> np.ndarray:
    """Map a decoded video in [-1, 1] to uint8 frames [T, H, W, 3].

    Accepts [1, 3, T, H, W] (B must be 1; select a sample first otherwise), [3, T, H, W] or an image [3, H, W]
    (returned as T=1). Clamps to [-1, 1], then rounds (x + 1) / 2 * 255.
    """
    x = video.detach()
    if x.ndim == 5:
        if x.shape[0] != 1:
            raise ValueError(f"to_uint8 takes one video; got batch {x.shape[0]} in shape {tuple(x.shape)}")
        x = x[0]
    elif x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[0] != 3:
        raise ValueError(f"expected [1, 3, T, H, W], [3, T, H, W] or [3, H, W]; got {tuple(video.shape)}")
    x = x.float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)        # [3, T, H, W]
    return x.permute(1, 2, 3, 0).contiguous().cpu().numpy()


def contact_sheet(frames, cols: int = 4, pad: int = 2, pad_value: int = 255) -> np.ndarray:
    """Tile equal-size frames ([H, W, 3] or [H, W] uint8; a list or a [T, H, W(, 3)] array) into one image.

    Row-major, ``cols`` per row, ``pad`` pixels of ``pad_value`` between and around tiles; empty cells stay padding.
    """
    frames = [np.asarray(f) for f in frames]
    if not frames:
        raise ValueError("contact_sheet needs at least one frame")
    frames = [np.repeat(f[..., None], 3, axis=2) if f.ndim == 2 else f for f in frames]
    h, w = frames[0].shape[:2]
    for i, f in enumerate(frames):
        if f.shape != (h, w, 3) or f.dtype != np.uint8:
            raise ValueError(f"frame {i} is {f.dtype} {f.shape}; all frames must be uint8 {(h, w, 3)}")
    cols = max(1, min(int(cols), len(frames)))
    rows = math.ceil(len(frames) / cols)
    sheet = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), pad_value, dtype=np.uint8)
    for i, f in enumerate(frames):
        r, c = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        sheet[y:y + h, x:x + w] = f
    return sheet
