"""Model folders from the Hugging Face Hub: only the files one resolution needs, into the standard cache.

    folder = resolve("FoundationVision/InfinityStar", resolution="720p")     # a snapshot folder in the HF cache

The release's repository holds both resolutions' transformers (35 GB each); one resolution needs its transformer
folder, the VAE and the T5 encoder. A faststar model repository (``config.json`` of kind ``faststar-testbed``) needs
its config, transformer and VAE files. The cache is huggingface_hub's (``HF_HOME`` / ``HF_HUB_CACHE``), offline mode
is ``HF_HUB_OFFLINE=1``; both are read when ``resolve`` runs. Without network, every needed file must be in the cache,
else one message names the missing ones.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from .config import OFFICIAL_T5 as _T5_PATH, OFFICIAL_TRANSFORMER_DIRS, OFFICIAL_VAE

OFFICIAL_T5 = _T5_PATH.as_posix()
T5_FILES = ("config.json", "spiece.model", "model.safetensors.index.json")
TESTBED_FILES = ("config.json", "vae.safetensors")

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class HubFilesMissing(FileNotFoundError):
    """The files a model needs are not all in the cache and cannot be downloaded."""


def looks_like_repo_id(name) -> bool:
    """``org/name`` that is not an existing local path."""
    return isinstance(name, str) and bool(_REPO_ID.match(name)) and not Path(name).exists()


def offline() -> bool:
    from huggingface_hub import constants
    v = os.environ.get("HF_HUB_OFFLINE")
    if v is not None:
        return v.strip().upper() in ("1", "ON", "YES", "TRUE")
    return bool(constants.HF_HUB_OFFLINE)


def cache_dir(explicit=None) -> Path:
    """The hub cache: the argument, else HF_HUB_CACHE, else HF_HOME/hub, else huggingface_hub's default."""
    if explicit is not None:
        return Path(explicit)
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    from huggingface_hub import constants
    return Path(constants.HF_HUB_CACHE)


def allow_patterns(resolution: str) -> list[str]:
    """What one resolution needs of the release (and of a faststar model repository, whose files these also
    match: config.json, transformer/, vae.safetensors)."""
    if resolution not in OFFICIAL_TRANSFORMER_DIRS:
        raise ValueError(f"unsupported resolution {resolution!r}; supported: {sorted(OFFICIAL_TRANSFORMER_DIRS)}")
    return [f"{OFFICIAL_TRANSFORMER_DIRS[resolution]}/*", OFFICIAL_VAE, f"{OFFICIAL_T5}/*",
            "config.json", "transformer/*", "transformer.safetensors", "vae.safetensors"]


def _shards(index_file: Path, folder: str) -> list[str]:
    weight_map = json.loads(index_file.read_text()).get("weight_map", {})
    return [f"{folder}/{f}" for f in sorted(set(weight_map.values()))]


def needed_files(repo_id: str, resolution: str, revision: str | None, cache: Path) -> tuple[list[str], list[str]]:
    """(needed, missing) file names of the repository for this resolution, as far as the cache tells: the shard
    lists come from the cached index files (an index that is missing is itself listed)."""
    from huggingface_hub import try_to_load_from_cache

    def cached(name):
        p = try_to_load_from_cache(repo_id, name, cache_dir=str(cache), revision=revision)
        return Path(p) if isinstance(p, str) and Path(p).exists() else None

    needed: list[str] = []
    cfg = cached("config.json")
    kind = json.loads(cfg.read_text()).get("kind") if cfg is not None else None
    if kind == "faststar-testbed":
        needed += list(TESTBED_FILES)
        idx = cached("transformer/model.safetensors.index.json")
        if idx is not None:
            needed += ["transformer/model.safetensors.index.json"] + _shards(idx, "transformer")
        elif cached("transformer.safetensors") is not None:
            needed.append("transformer.safetensors")
        else:
            needed.append("transformer.safetensors (or transformer/model.safetensors.index.json and its shards)")
    else:
        tdir = OFFICIAL_TRANSFORMER_DIRS[resolution]
        needed.append(f"{tdir}/model.safetensors.index.json")
        idx = cached(needed[-1])
        if idx is not None:
            needed += _shards(idx, tdir)
        needed.append(OFFICIAL_VAE)
        needed += [f"{OFFICIAL_T5}/{f}" for f in T5_FILES]
        t5_idx = cached(f"{OFFICIAL_T5}/model.safetensors.index.json")
        if t5_idx is not None:
            needed += _shards(t5_idx, OFFICIAL_T5)
    missing = [n for n in needed if cached(n) is None]
    return needed, missing


def resolve(repo_id: str, *, resolution: str = "720p", revision: str | None = None, cache_dir_=None,
            token=None) -> Path:
    """The local snapshot folder of ``repo_id`` holding what ``resolution`` needs; downloads what is missing
    unless offline. Raises HubFilesMissing naming the missing files when they can be neither found nor fetched."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:
        raise ImportError("loading from the Hugging Face Hub needs huggingface_hub: pip install huggingface_hub") \
            from None
    cache = cache_dir(cache_dir_)
    patterns = allow_patterns(resolution)
    endpoint = os.environ.get("HF_ENDPOINT") or None
    where = f"{repo_id}@{revision or 'main'}"
    reason = "HF_HUB_OFFLINE=1" if offline() else None
    if reason is None:
        try:
            folder = Path(snapshot_download(repo_id, revision=revision, cache_dir=str(cache),
                                            allow_patterns=patterns, token=token, endpoint=endpoint))
        except LocalEntryNotFoundError as e:          # no connection and nothing cached
            reason = f"the Hub cannot be reached ({str(e).splitlines()[0][:120]})"
        else:
            needed, missing = needed_files(repo_id, resolution, revision, cache)
            if not missing:
                return folder
            reason = "a download from the Hub did not bring them (no network, or not in the repository)"
    try:
        folder = Path(snapshot_download(repo_id, revision=revision, cache_dir=str(cache), allow_patterns=patterns,
                                        local_files_only=True))
    except LocalEntryNotFoundError:
        folder = None
    needed, missing = needed_files(repo_id, resolution, revision, cache)
    if folder is None or missing:
        lacks = (f"{len(missing)} of the {len(needed)} files that {where} needs at {resolution}: {', '.join(missing)}"
                 if folder is not None else f"{where} altogether (no snapshot of that revision; files needed: "
                 f"{', '.join(missing)})")
        official = not any(n.startswith(("transformer", "vae.")) for n in needed)
        include = " --include " + " ".join(repr(p) for p in patterns[:3]) if official else ""
        raise HubFilesMissing(f"{reason}, and the cache {cache} lacks {lacks} (download them once with network: "
                              f"`hf download {repo_id}{include}`)")
    return folder
