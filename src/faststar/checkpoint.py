"""Checkpoint reading and strict loading.

Formats: a folder with ``model.safetensors.index.json`` and shards (the release's layout), a folder with one
``*.safetensors``, a single ``.safetensors`` file, or a torch file (``.pth/.pt/.bin``) read with
``weights_only=True`` (never a pickle with code execution), optionally unwrapped at a key (``"vae"``).
Loading is strict: every missing, unexpected and mis-shaped key is listed in one error. Tensors are streamed
one at a time into a model built on the meta device, cast to each parameter's dtype (bf16 blocks, fp32 rest).

Safety: the shard names of an index file must stay inside its folder (no ``..``, no absolute path, no symlink that
leads out of it; the one exception is a Hugging Face cache snapshot, whose files are links into the repository's
``blobs/``). A corrupt or truncated file, a pickle that would run code, and a tensor with NaN or Inf values are
each refused with one ``CheckpointError`` naming the file (and the tensor).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open

INDEX_NAME = "model.safetensors.index.json"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, corrupt, unsafe, or not matching the model."""


class KeyMismatchError(CheckpointError):
    """Keys or shapes that do not match the model; the message's first line says so, the lines after list them."""


def _safe_open(f: Path):
    """``safe_open`` that names the file when its header is corrupt or its data is truncated."""
    try:
        return safe_open(str(f), "pt")
    except Exception as e:          # SafetensorError (corrupt header, truncated data), OSError
        msg = " ".join(str(e).split())
        raise CheckpointError(f"{f} is not a readable safetensors file (corrupt or truncated?): {msg}") from None


def _allowed_roots(folder: Path) -> list[Path]:
    """Folders a shard of ``folder`` may resolve into: the folder itself, and for a Hugging Face cache snapshot
    (``.../snapshots/<revision>/...``) the repository's ``blobs/`` (the cache stores files there, linked by name)."""
    root = folder.resolve()
    roots = [root]
    for anc in [folder.absolute(), *folder.absolute().parents]:
        if anc.parent.name == "snapshots":
            roots.append((anc.parent.parent / "blobs").resolve())
            break
    return roots


def shard_path(folder: Path, name) -> Path:
    """The file an index's weight map names, refused unless it stays inside ``folder``."""
    index = folder / INDEX_NAME
    if not isinstance(name, str) or not name.strip():
        raise CheckpointError(f"{index}: a shard name must be a file name, got {name!r}")
    rel = Path(name)
    if rel.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise CheckpointError(f"{index} names the shard {name!r} by an absolute path; shards must be files inside "
                              f"{folder}")
    if ".." in rel.parts or ".." in name.replace("\\", "/").split("/"):
        raise CheckpointError(f"{index} names the shard {name!r}, which leads out of {folder} ('..')")
    if rel.suffix != ".safetensors":
        raise CheckpointError(f"{index} names the shard {name!r}; shards must be .safetensors files")
    path = folder / rel
    target = path.resolve()
    if not any(target == r or r in target.parents for r in _allowed_roots(folder)):
        raise CheckpointError(f"{index}: the shard {name!r} is a link that leads out of {folder} (to {target})")
    return path


def _read_index(folder: Path) -> dict[str, Path]:
    index = folder / INDEX_NAME
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"cannot read {index}: {e}") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{index} is not valid JSON ({e})") from None
    wm = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(wm, dict) or not wm:
        raise CheckpointError(f"{index} has no 'weight_map' object (tensor name -> shard file)")
    files = {str(k): shard_path(folder, f) for k, f in wm.items()}
    missing = sorted({str(f.relative_to(folder)) for f in files.values() if not f.is_file()})
    if missing:
        raise CheckpointError(f"{index} names shard files that are missing: {missing}")
    return files


def _torch_load_error(p: Path, e: Exception) -> CheckpointError:
    """One line for a torch file that cannot be read weights-only, without torch's advice to turn the check off."""
    import re
    text = str(e)
    if "Weights only load failed" in text or "weights_only" in text:
        m = re.search(r"GLOBAL ([\w.]+)", text) or re.search(r"global ([\w.]+)", text)
        what = f" (it names {m.group(1)})" if m else ""
        return CheckpointError(f"refusing {p}: loading it would run code from the file{what}; faststar loads "
                               f"tensors only and never runs a checkpoint's code. Use a .safetensors copy of "
                               f"these weights")
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(e).__name__)
    return CheckpointError(f"cannot read {p} as a torch weights file (corrupt or truncated?): {first}")


class TensorSource:
    """Lazy access to the tensors of a checkpoint: names, shapes, and one tensor at a time."""

    def __init__(self, path: str | os.PathLike, key: str | None = None):
        self.path = Path(path)
        self._files: dict[str, Path] = {}     # tensor name -> file (safetensors)
        self._torch_sd: dict | None = None
        p = self.path
        if not p.exists():
            raise CheckpointError(f"checkpoint not found: {p}")
        if p.is_dir():
            index = p / INDEX_NAME
            if index.exists():
                self._files = _read_index(p)
                for f in sorted(set(self._files.values())):
                    with _safe_open(f):             # every shard's header is read now, so a bad one fails here
                        pass
            else:
                shards = sorted(p.glob("*.safetensors"))
                if not shards:
                    raise CheckpointError(f"no {INDEX_NAME} and no *.safetensors in {p}")
                for f in shards:
                    with _safe_open(f) as h:
                        for k in h.keys():
                            self._files[k] = f
        elif p.suffix == ".safetensors":
            with _safe_open(p) as h:
                self._files = {k: p for k in h.keys()}
        elif p.suffix in (".pth", ".pt", ".bin", ".ckpt"):
            try:
                sd = torch.load(str(p), map_location="cpu", weights_only=True, mmap=True)
            except Exception as e:
                raise _torch_load_error(p, e) from None
            if key is not None:
                if not isinstance(sd, dict) or key not in sd:
                    raise CheckpointError(f"{p} has no top-level key {key!r} "
                                          f"(found {sorted(sd)[:10] if isinstance(sd, dict) else type(sd)})")
                sd = sd[key]
            if not isinstance(sd, dict):
                raise CheckpointError(f"{p} does not hold a state dict")
            odd = sorted(str(k) for k, v in sd.items() if not isinstance(v, torch.Tensor))
            if odd:
                raise CheckpointError(f"{p} holds entries that are not tensors: {odd[:10]}"
                                      + (f" and {len(odd) - 10} more" if len(odd) > 10 else ""))
            self._torch_sd = sd
        else:
            raise CheckpointError(f"unknown checkpoint format: {p} (expected a folder, .safetensors or .pth)")
        if key is not None and self._files:
            pre = key + "."
            self._files = {k[len(pre):]: f for k, f in self._files.items() if k.startswith(pre)}

    def keys(self) -> list[str]:
        return list(self._torch_sd) if self._torch_sd is not None else list(self._files)

    def shapes(self) -> dict[str, tuple]:
        if self._torch_sd is not None:
            return {k: tuple(v.shape) for k, v in self._torch_sd.items()}
        out = {}
        for f, ks in self._by_file().items():
            with _safe_open(f) as h:
                have = set(h.keys())
                gone = [k for k in ks if k not in have]
                if gone:
                    raise CheckpointError(f"{f} lacks tensors that {INDEX_NAME} places in it: {sorted(gone)[:10]}")
                for k in ks:
                    out[k] = tuple(h.get_slice(k).get_shape())
        return out

    def _by_file(self) -> dict[Path, list[str]]:
        by_file: dict[Path, list[str]] = {}
        for k, f in self._files.items():
            by_file.setdefault(f, []).append(k)
        return by_file

    def items(self):
        """Yield (name, tensor) one at a time (file by file for safetensors)."""
        if self._torch_sd is not None:
            yield from self._torch_sd.items()
            return
        for f, ks in self._by_file().items():
            with _safe_open(f) as h:
                for k in ks:
                    try:
                        t = h.get_tensor(k)
                    except Exception as e:
                        raise CheckpointError(f"{f}: cannot read tensor {k!r} (corrupt file?): "
                                              f"{' '.join(str(e).split())}") from None
                    yield k, t

    def file_of(self, key: str) -> Path:
        """The file that holds tensor ``key``."""
        return self._files.get(key, self.path)


def compare_keys(expected: dict[str, tuple], found: dict[str, tuple]) -> tuple[list, list, list]:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    mismatched = sorted((k, tuple(expected[k]), tuple(found[k])) for k in set(expected) & set(found)
                        if tuple(expected[k]) != tuple(found[k]))
    return missing, unexpected, mismatched


def format_key_report(missing, unexpected, mismatched, limit: int = 40) -> str:
    lines = []

    def block(title, items):
        if items:
            lines.append(f"{title} ({len(items)}):")
            lines.extend(f"  {x}" for x in items[:limit])
            if len(items) > limit:
                lines.append(f"  ... and {len(items) - limit} more")

    block("missing keys", missing)
    block("unexpected keys", unexpected)
    block("shape mismatches (key, expected, found)", mismatched)
    return "\n".join(lines)


def expected_entries(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and persistent buffers, as state_dict() would list them, without copying."""
    return dict(model.state_dict(keep_vars=True))


def load_checkpoint(model: torch.nn.Module, source: TensorSource | str | os.PathLike, *, strict: bool = True,
                    what: str = "model", check_finite: bool = True) -> dict:
    """Stream the checkpoint's tensors into ``model`` (which may live on any device, or be on meta: then it is
    materialised on the CPU). Each tensor is cast to the parameter's dtype. Strict: any key problem raises one
    KeyMismatchError that lists them all. ``check_finite``: a floating tensor holding NaN or Inf (after the cast,
    so an overflow to fp16 counts too) raises a CheckpointError naming it and its file."""
    src = source if isinstance(source, TensorSource) else TensorSource(source)
    entries = expected_entries(model)
    expected = {k: tuple(v.shape) for k, v in entries.items()}
    missing, unexpected, mismatched = compare_keys(expected, src.shapes())
    if strict and (missing or unexpected or mismatched):
        raise KeyMismatchError(f"{what} checkpoint {src.path} does not match the model:\n"
                              + format_key_report(missing, unexpected, mismatched))
    if any(v.is_meta for v in entries.values()):
        model.to_empty(device="cpu")
        entries = expected_entries(model)
    loaded = 0
    with torch.no_grad():
        for k, t in src.items():
            if k in entries and tuple(entries[k].shape) == tuple(t.shape):
                dst = entries[k]
                dst.copy_(t.to(dst.dtype))
                if check_finite and dst.is_floating_point() and not bool(torch.isfinite(dst).all()):
                    bad = int((~torch.isfinite(dst)).sum())
                    nan = int(torch.isnan(dst).sum())
                    raise CheckpointError(f"{what} checkpoint {src.file_of(k)}: tensor {k!r} holds {bad:,} "
                                          f"non-finite values ({nan:,} NaN, {bad - nan:,} Inf) of "
                                          f"{dst.numel():,}; the file is damaged or holds diverged weights")
                loaded += 1
    return dict(loaded=loaded, missing=missing, unexpected=unexpected, mismatched=mismatched)


def transformer_config_from_shapes(shapes: dict[str, tuple], **extra):
    """Read the architecture from the checkpoint's shapes instead of trusting flags."""
    from .config import TransformerConfig
    need = ["word_embed.weight", "text_proj.weight", "cfg_uncond", "head.weight", "semantic_head2.weight"]
    miss = [k for k in need if k not in shapes]
    if miss:
        raise CheckpointError(f"not an InfinityStar transformer checkpoint: missing {miss}")
    C, d_vae = shapes["word_embed.weight"]
    Ct = shapes["text_proj.weight"][1]
    blocks = sorted({tuple(int(x) for x in k.split(".")[1:4:2]) for k in shapes if k.startswith("block_chunks.")})
    if not blocks:
        raise CheckpointError("no block_chunks.* keys in the checkpoint")
    chunks = max(c for c, _ in blocks) + 1
    depth = len(blocks)
    D = shapes["block_chunks.0.module.0.attn.q_norm.weight"][0]
    K = shapes["block_chunks.0.module.0.attn.k_proj.weight"][0] // D
    M = shapes["block_chunks.0.module.0.mlp.gate_proj.weight"][0]
    cfg = TransformerConfig(depth=depth, width=C, num_heads=C // D, num_kv_heads=K, mlp_ratio=M / C,
                            text_channels=Ct, cfg_uncond_len=shapes["cfg_uncond"][0], d_vae=d_vae,
                            semantic_bits=shapes["semantic_head2.weight"][0] // 2,
                            detail_bits=shapes["head.weight"][0] // 2, block_chunks=chunks, **extra)
    if cfg.mlp_hidden != M:
        raise CheckpointError(f"MLP hidden size {M} is not reproducible from width {C}")
    return cfg


def load_transformer(path: str | os.PathLike, *, device="cpu", dtype: torch.dtype = torch.bfloat16,
                     name: str | None = None):
    """Build the transformer that the checkpoint describes and load it strictly.

    Blocks are cast to ``dtype`` (bf16 as the release runs them); embeddings, heads and cfg_uncond stay fp32.
    """
    from .model.transformer import STARTransformer
    src = TensorSource(path)
    cfg = transformer_config_from_shapes(src.shapes(), name=name or Path(path).name)
    with torch.device("meta"):
        model = STARTransformer(cfg)
    model.cast_blocks_(dtype)            # on meta: no memory yet
    model.to_empty(device=device)
    load_checkpoint(model, src, what="transformer")
    return model.eval().requires_grad_(False)
