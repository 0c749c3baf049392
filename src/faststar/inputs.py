"""Checks of a command's inputs before any model loads (a model takes 5-20 s to load on the testbed, minutes at 8B).

``check_generate_inputs(args)`` checks every flag of ``faststar generate`` that can be checked without the weights:
the prompt, the seed, the output path, the model folder's sizes (read from its files, not from the weights), the
resolution and duration against them, the conditioning image or video (decoded now), the device, dtype, attention
backend, text encoder spec, the accelerator and its knobs, and ``--save-masks``. Each problem raises one
``UserError`` that names the flag and what was expected. After the model loads, ``prompt_overflow`` tells whether
the text encoder will cut the prompt.
"""
from __future__ import annotations

import argparse
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _show(x) -> str:
    """A value the user typed, as it can be printed on one line (quoted and escaped if it holds a newline or other
    unprintable characters)."""
    s = str(x)
    return s if s.isprintable() else repr(s)


def seed_arg(text: str) -> int:
    """argparse ``type=`` for ``--seed``: an integer 0..SEED_MAX, else a one-line error naming the range."""
    from .sampling import check_seed
    try:
        return check_seed(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


# ---------------------------------------------------------------------------------------------------------------
# what a model folder can generate, read from its small files
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class ModelSizes:
    name: str
    kind: str                                  # "testbed", "official" or "unknown" (a Hub id, not yet downloaded)
    resolutions: list = field(default_factory=list)
    durations: list = field(default_factory=list)
    folder: Path | None = None

    def describe(self) -> str:
        if self.kind == "unknown":
            return f"{self.name}: sizes known once it is downloaded"
        return (f"{self.name}: resolution {' or '.join(self.resolutions)}, "
                f"duration {' or '.join(str(d) for d in self.durations)} s")


def model_sizes(model_dir) -> ModelSizes:
    """The resolutions and durations a model folder generates (the embedded testbed for ``None``), without
    loading weights: a faststar folder's ``config.json`` gives its one size; the release's layout gives the
    resolutions whose transformer folder is there (both if neither is) and 5 or 10 s."""
    from .pipeline import OFFICIAL_TRANSFORMER_DIRS, TESTBED_DIR
    from .schedule import SUPPORTED_DURATIONS
    folder = Path(model_dir) if model_dir is not None else TESTBED_DIR
    if not folder.is_dir():
        if model_dir is not None and _HUB_ID.match(str(model_dir)) and not folder.exists():
            return ModelSizes(str(model_dir), "unknown")
        what = "is not a folder" if folder.exists() else "not found"
        raise UserError(f"--model-dir: model folder {what}: {_show(folder)}")
    cfg_file = folder / "config.json"
    cfg = {}
    if cfg_file.exists():
        try:
            cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UserError(f"--model-dir: cannot read {cfg_file}: {' '.join(str(e).split())}") from None
        if not isinstance(cfg, dict):
            raise UserError(f"--model-dir: {cfg_file} is not a JSON object")
    if cfg.get("kind") == "faststar-testbed":
        missing = [k for k in ("transformer", "vae", "schedule") if not isinstance(cfg.get(k), dict)]
        if missing:
            raise UserError(f"--model-dir: {cfg_file} lacks the {missing} section(s) of a faststar model folder")
        name = str(cfg.get("name", "faststar-testbed"))
        return ModelSizes(name, "testbed", [str(cfg.get("resolution", "testbed"))], [int(cfg.get("duration", 1))],
                          folder)
    present = [r for r, d in OFFICIAL_TRANSFORMER_DIRS.items() if (folder / d).exists()]
    return ModelSizes(folder.name or str(folder), "official", present or list(OFFICIAL_TRANSFORMER_DIRS),
                      list(SUPPORTED_DURATIONS), folder)


def check_model_files(sizes: ModelSizes, resolution=None) -> None:
    """Open the headers of the weight files the load will read (cheap: no tensor data), so that a missing,
    corrupt, truncated or unsafe file fails before minutes of loading the others."""
    from .checkpoint import TensorSource
    from .pipeline import OFFICIAL_TRANSFORMER_DIRS, OFFICIAL_VAE, _find_testbed_file
    if sizes.folder is None:
        return
    if sizes.kind == "testbed":
        files = [(_find_testbed_file(sizes.folder, n), None) for n in ("transformer", "vae")]
    else:
        res = resolution if resolution in OFFICIAL_TRANSFORMER_DIRS else sizes.resolutions[0]
        vae = sizes.folder / OFFICIAL_VAE
        files = [(sizes.folder / OFFICIAL_TRANSFORMER_DIRS[res], None), (vae, "vae")]
    for f, key in files:
        if f is not None and Path(f).exists():      # a missing file is named by the loader, with the rest
            TensorSource(f, key=key)


def size_help(model_dir, what: str) -> str:
    """Help text of ``--resolution`` / ``--duration`` for the model a command line names (or the testbed)."""
    try:
        sizes = model_sizes(model_dir)
    except UserError:
        sizes = None
    if sizes is None or sizes.kind == "unknown":
        return ("output size of the model (an InfinityStar release folder: 720p or 480p)" if what == "resolution"
                else "seconds (an InfinityStar release folder: 5 or 10)")
    who = "the embedded testbed" if model_dir is None else f"model {sizes.name}"
    if what == "resolution":
        only = " (its one size)" if len(sizes.resolutions) == 1 else ""
        return f"output size: {' or '.join(sizes.resolutions)} for {who}{only}"
    only = " (its one length)" if len(sizes.durations) == 1 else ""
    return f"seconds: {' or '.join(str(d) for d in sizes.durations)} for {who}{only}"


# ---------------------------------------------------------------------------------------------------------------
# single checks
# ---------------------------------------------------------------------------------------------------------------
def check_prompt(prompt, flag: str = "--prompt") -> str:
    if not isinstance(prompt, str) or not prompt.strip():
        raise UserError(f"{flag}: the prompt is empty; describe the video to generate")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as e:
        raise UserError(f"{flag}: the prompt is not valid text (undecodable character at position {e.start})") \
            from None
    return prompt


def check_sizes(sizes: ModelSizes, resolution, duration, video=None) -> None:
    if sizes.kind == "unknown":
        return
    if resolution not in (None, "auto") and resolution not in sizes.resolutions:
        raise UserError(f"--resolution {resolution!r}: model {sizes.name} generates "
                        f"{' or '.join(sizes.resolutions)}")
    if duration is not None and duration not in sizes.durations:
        raise UserError(f"--duration {duration}: model {sizes.name} generates "
                        f"{' or '.join(str(d) for d in sizes.durations)} s")
    if video is not None and sizes.kind == "official" and duration != 10:
        raise UserError("--video: continuation generates 10 s from the first 5 s; pass --duration 10")


def check_image(path, flag: str = "--image") -> None:
    """The image exists, can be read and decodes (the whole file, so a truncated one fails now)."""
    from .io import read_image
    p = Path(path)
    if not p.exists():
        raise UserError(f"{flag}: no such file: {_show(path)}")
    if p.is_dir():
        raise UserError(f"{flag}: {_show(path)} is a folder, not an image")
    if not os.access(p, os.R_OK):
        raise UserError(f"{flag}: {_show(path)} is not readable (permission denied)")
    try:
        read_image(p)
    except ValueError as e:
        raise UserError(f"{flag}: {' '.join(str(e).split())}") from None


def check_video(path, flag: str = "--video") -> None:
    from .io import video_info
    p = Path(path)
    if not p.exists():
        raise UserError(f"{flag}: no such file: {_show(path)}")
    if not os.access(p, os.R_OK) or p.is_dir():
        raise UserError(f"{flag}: {_show(path)} is not a readable file")
    try:
        info = video_info(p)
    except ValueError as e:
        raise UserError(f"{flag}: {' '.join(str(e).split())}") from None
    if info.width <= 0 or info.height <= 0:
        raise UserError(f"{flag}: {_show(path)} has no decodable video frames")


def check_device(device) -> str:
    """A device string torch understands and this machine has ('auto' always passes)."""
    import torch
    if device in (None, "auto"):
        return "auto"
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise UserError(f"--device {device!r}: not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.backends.cuda.is_built():
            raise UserError(f"--device {device}: this PyTorch ({torch.__version__}) is built without CUDA; "
                            f"use --device cpu, or install a CUDA build of torch")
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise UserError(f"--device {device}: no CUDA GPU is visible to this process; use --device cpu")
        if dev.index is not None and dev.index >= n:
            raise UserError(f"--device {device}: there are {n} CUDA GPU(s) here (cuda:0..cuda:{n - 1})")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise UserError(f"--device {device}: MPS is not available here; use --device cpu")
    elif dev.type != "cpu":
        raise UserError(f"--device {device!r}: faststar runs on cpu or cuda")
    return str(dev)


def check_dtype(dtype) -> None:
    from .pipeline import _parse_dtype
    import torch
    try:
        _parse_dtype(dtype, torch.device("cpu"))
    except ValueError as e:
        raise UserError(f"--dtype: {e}") from None


def check_attention(name, device) -> None:
    from .model.attention import BACKENDS, available_backends
    if name in (None, "auto"):
        return
    if name not in BACKENDS:
        raise UserError(f"--attention {name!r}: unknown backend; choose one of {['auto', *BACKENDS]}")
    import torch
    dev = torch.device("cuda" if device in (None, "auto") and torch.cuda.is_available() else
                       ("cpu" if device in (None, "auto") else device))
    why = available_backends(dev).get(name, "ok")
    if why != "ok":
        raise UserError(f"--attention {name}: not available here ({why}); use --attention auto")


def check_text_encoder(spec) -> None:
    """The spec's form, and that a file or folder it names is there (the encoder itself loads with the model)."""
    if spec is None:
        return
    kind, _, arg = str(spec).partition(":")
    kind = kind.strip().lower()
    if kind not in ("t5", "minilm", "tiny", "cached"):
        raise UserError(f"--text-encoder {spec!r}: expected t5:<folder>, minilm, tiny:<channels> or "
                        f"cached:<file.safetensors>")
    if kind == "t5" and not Path(arg).is_dir():
        raise UserError(f"--text-encoder {spec!r}: no folder {arg!r}" if arg else
                        "--text-encoder t5 needs a folder: t5:/path/to/flan-t5-xl-official")
    if kind == "cached" and not Path(arg).is_file():
        raise UserError(f"--text-encoder {spec!r}: no file {arg!r}")
    if kind == "tiny" and not all(p.strip().isdigit() for p in arg.split(":") if p):
        raise UserError(f"--text-encoder {spec!r}: expected tiny:<channels> or tiny:<channels>:<seed>")


def build_accelerator(spec, preset):
    """The accelerator ``--accel`` / ``--preset`` name (None for dense). A bad knob value is reported with the
    knob's name (``anchors=abc``), not only the conversion that failed."""
    from . import accel
    if not spec:
        if preset:
            raise UserError(f"--preset {preset!r} needs --accel (for example --accel faststar)")
        return None
    if spec == "dense" and not preset:
        return None
    try:
        return accel.make_accelerator(spec, preset)
    except (ValueError, TypeError) as e:
        raise UserError(f"--accel {_show(spec)}: {_knob_message(spec, preset, e)}") from None


def _knob_message(spec: str, preset, err: Exception) -> str:
    from .accel.methods import explain_spec_error
    return explain_spec_error(spec, preset, err)


# ---------------------------------------------------------------------------------------------------------------
# the generate command
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class GenerateInputs:
    output: Path
    sizes: ModelSizes
    accelerator: object = None


def check_precision_and_budget(precision: str, max_memory, device) -> None:
    """``--precision fp8`` where FP8 cannot run and ``--max-memory`` without a GPU fail before the model loads, with
    the library's own message (``faststar.precision`` / ``faststar.memory``)."""
    import torch
    from .memory import BudgetError, device_budget_check, parse_size
    from .precision import PrecisionError, check_fp8
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu") if device in (None, "auto") else \
        torch.device(device)
    try:
        if precision == "fp8":
            check_fp8(dev)
        if max_memory is not None:
            parse_size(max_memory)
            device_budget_check(dev, max_memory)
    except (PrecisionError, BudgetError, ValueError) as e:
        raise UserError(" ".join(str(e).split())) from None


def check_generate_inputs(a) -> GenerateInputs:
    """Every check of ``faststar generate`` that needs no weights; raises one UserError naming the flag."""
    from .io import check_video_path
    check_prompt(a.prompt)
    if getattr(a, "negative_prompt", None) is not None and not str(a.negative_prompt).strip():
        raise UserError("--negative-prompt: empty; leave it out for no negative prompt")
    try:
        out = check_video_path(a.output, mkdir=getattr(a, "mkdir", False))
    except ValueError as e:
        raise UserError(f"--output: {e}") from None
    sizes = model_sizes(a.model_dir)
    if a.image is not None and a.video is not None:
        raise UserError("--image and --video: give an image (image-to-video) or a video (continuation), not both")
    check_sizes(sizes, a.resolution, a.duration, a.video)
    check_model_files(sizes, a.resolution)
    if a.image is not None:
        check_image(a.image)
    if a.video is not None:
        check_video(a.video)
    check_device(a.device)
    check_dtype(a.dtype)
    check_attention(a.attention, a.device)
    check_precision_and_budget(getattr(a, "precision", "bf16"), getattr(a, "max_memory", None), a.device)
    check_text_encoder(a.text_encoder)
    acc = build_accelerator(a.accel, a.preset)
    if a.save_masks and acc is None:
        raise UserError("--save-masks shows which tokens an accelerator pruned; it needs --accel "
                        "(for example --accel faststar); a dense run prunes none")
    return GenerateInputs(output=out, sizes=sizes, accelerator=acc)


def prompt_overflow(text_encoder, text: str) -> tuple[int, int] | None:
    """(tokens of ``text``, the encoder's limit) when the encoder will cut the prompt, else None (also when the
    encoder cannot tell)."""
    limit = getattr(text_encoder, "max_length", None)
    if not isinstance(limit, int) or limit <= 0:
        return None
    tok = getattr(text_encoder, "tokenizer", None)
    if tok is not None:
        try:
            n = len(tok(text, truncation=False, verbose=False)["input_ids"])
        except Exception:                                   # a tokenizer without these options: cannot tell
            return None
    elif hasattr(text_encoder, "tokenize"):
        n = len(list(text.encode("utf-8"))) + 1              # TinyTextEncoder: bytes + the end token
    else:
        return None
    return (n, limit) if n > limit else None
