"""Hub loading: from_pretrained("org/name") against a cache laid out as huggingface_hub lays it out
(models--org--name/{blobs,refs,snapshots}), checked with huggingface_hub's own cache reader, offline."""
import hashlib
import json
import os
import socket
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path

import pytest
import torch

pytest.importorskip("huggingface_hub")
from huggingface_hub import scan_cache_dir, try_to_load_from_cache  # noqa: E402
from huggingface_hub.file_download import repo_folder_name  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from faststar import hub  # noqa: E402
from faststar.cli import main as cli_main  # noqa: E402
from faststar.pipeline import TESTBED_DIR, FastStarPipeline  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_pipeline import tiny_pipe  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COMMIT_A = "a" * 40
COMMIT_B = "b" * 40


def add_snapshot(cache: Path, repo_id: str, files: dict, commit: str, ref: str | None = "main") -> Path:
    """Put ``files`` (repo path -> bytes or a local file) into the cache as huggingface_hub does: content in
    blobs/<sha256>, snapshots/<commit>/<path> a relative symlink to the blob, refs/<ref> the commit hash."""
    repo = cache / repo_folder_name(repo_id=repo_id, repo_type="model")
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snap = repo / "snapshots" / commit
    for name, content in files.items():
        data = content if isinstance(content, bytes) else Path(content).read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snap / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    if ref:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return snap


def folder_files(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def hf_home(tmp_path, monkeypatch):
    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return tiny_pipe().save_pretrained(tmp_path_factory.mktemp("tiny") / "model")


def test_the_embedded_testbed_loads_from_an_offline_hub_cache(hf_home):
    files = {k: v for k, v in folder_files(TESTBED_DIR).items() if k.endswith((".json", ".safetensors"))}
    add_snapshot(hf_home / "hub", "faststar/testbed", files, COMMIT_A)
    # huggingface_hub reads the cache we laid out as its own
    info = scan_cache_dir(hf_home / "hub")
    (repo,) = info.repos
    assert repo.repo_id == "faststar/testbed" and {r.commit_hash for r in repo.revisions} == {COMMIT_A}
    assert repo.nb_files == len(files)
    pipe = FastStarPipeline.from_pretrained("faststar/testbed", device="cpu")
    assert pipe.spec.kind == "testbed" and pipe.spec.name == "faststar-testbed"
    want = {}
    for shard in sorted((TESTBED_DIR / "transformer").glob("*.safetensors")):
        want.update(load_file(shard))
    got = pipe.transformer.state_dict()
    assert set(want) <= set(got)
    for k in list(want)[::7]:
        assert torch.equal(got[k].float(), want[k].float()), k


def test_only_the_snapshot_in_the_cache_is_used_and_revision_is_honoured(hf_home, tiny_folder):
    files = folder_files(tiny_folder)
    snap_a = add_snapshot(hf_home / "hub", "me/tiny", files, COMMIT_A)
    cfg_b = json.loads((tiny_folder / "config.json").read_text())
    cfg_b["name"] = "tiny-at-b"
    snap_b = add_snapshot(hf_home / "hub", "me/tiny", dict(files, **{"config.json": json.dumps(cfg_b).encode()}),
                          COMMIT_B, ref="v2")
    assert hub.resolve("me/tiny") == snap_a
    assert hub.resolve("me/tiny", revision="v2") == snap_b
    assert hub.resolve("me/tiny", revision=COMMIT_B) == snap_b
    assert FastStarPipeline.from_pretrained("me/tiny", device="cpu").spec.name == "tiny-test"
    pipe_b = FastStarPipeline.from_pretrained("me/tiny", revision="v2", device="cpu")
    assert pipe_b.spec.name == "tiny-at-b"
    out = pipe_b("a ball", seed=1, progress=False)
    assert out.frames.shape == (9, 64, 96, 3)
    with pytest.raises(hub.HubFilesMissing, match="me/tiny@v9 altogether"):
        hub.resolve("me/tiny", revision="v9")


def test_a_missing_file_names_it(hf_home, tiny_folder):
    snap = add_snapshot(hf_home / "hub", "me/tiny", folder_files(tiny_folder), COMMIT_A)
    (snap / "vae.safetensors").unlink()
    with pytest.raises(FileNotFoundError) as e:
        FastStarPipeline.from_pretrained("me/tiny", device="cpu")
    msg = str(e.value)
    assert isinstance(e.value, hub.HubFilesMissing)
    assert "HF_HUB_OFFLINE=1" in msg and "vae.safetensors" in msg and "1 of the 3 files" in msg
    assert "transformer.safetensors" not in msg.split("files:")[0] and str(hf_home / "hub") in msg
    assert "\n" not in msg


def test_the_cli_loads_a_hub_id_offline_and_reports_missing_files_in_one_line(tmp_path, tiny_folder):
    home = tmp_path / "hf"
    snap = add_snapshot(home / "hub", "me/tiny", folder_files(tiny_folder), COMMIT_A)
    env = dict(os.environ, HF_HOME=str(home), HF_HUB_OFFLINE="1",
               PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("HF_HUB_CACHE", None)
    cmd = [sys.executable, "-m", "faststar.cli", "generate", "--prompt", "a ball", "--model-dir", "me/tiny",
           "--quiet", "--device", "cpu", "-o", str(tmp_path / "v.mp4")]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "v.mp4").exists() and "schedule tiny-test" in r.stdout
    (snap / "transformer.safetensors").unlink()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "transformer.safetensors" in lines[0] and "Traceback" not in r.stderr


def _official_files(resolution: str, shards: int = 6) -> dict:
    """The release's file names (spec infinitystar.md section 7.1) with small placeholder contents: enough for the
    resolver, which reads only the index files."""
    tdir = hub.OFFICIAL_TRANSFORMER_DIRS[resolution]
    names = [f"model-{i:05d}-of-{shards:05d}.safetensors" for i in range(1, shards + 1)]
    index = {"metadata": {}, "weight_map": {f"block{i}.weight": n for i, n in enumerate(names)}}
    files = {f"{tdir}/model.safetensors.index.json": json.dumps(index).encode()}
    files.update({f"{tdir}/{n}": f"shard {n}".encode() for n in names})
    return files


def _official_common() -> dict:
    t5 = hub.OFFICIAL_T5
    t5_index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    return {hub.OFFICIAL_VAE: b"vae", f"{t5}/config.json": b"{}", f"{t5}/spiece.model": b"spm",
            f"{t5}/model.safetensors.index.json": json.dumps(t5_index).encode(),
            f"{t5}/model-00001-of-00002.safetensors": b"t1", f"{t5}/model-00002-of-00002.safetensors": b"t2"}


def test_official_layout_needs_one_resolution_vae_and_t5(hf_home):
    repo = "FoundationVision/InfinityStar"
    snap = add_snapshot(hf_home / "hub", repo, {**_official_files("720p"), **_official_common()}, COMMIT_A)
    assert hub.resolve(repo, resolution="720p") == snap
    needed, missing = hub.needed_files(repo, "720p", None, hf_home / "hub")
    assert missing == [] and len(needed) == 1 + 6 + 1 + 3 + 2
    assert not any("480p" in n for n in needed)
    # the download patterns fetch exactly these (and no 480p file)
    pats = hub.allow_patterns("720p")
    assert all(any(fnmatch(n, p) for p in pats) for n in needed)
    assert not any(fnmatch(n, p) for n in _official_files("480p") for p in pats)
    # 480p is not in the cache: the message names its index (the shard list lives in it)
    with pytest.raises(hub.HubFilesMissing, match="infinitystar_8b_480p_weights/model.safetensors.index.json"):
        hub.resolve(repo, resolution="480p")
    # one shard gone: named
    (snap / "infinitystar_8b_720p_weights" / "model-00003-of-00006.safetensors").unlink()
    with pytest.raises(hub.HubFilesMissing) as e:
        hub.resolve(repo, resolution="720p")
    assert "1 of the 13 files" in str(e.value)
    assert "infinitystar_8b_720p_weights/model-00003-of-00006.safetensors" in str(e.value)
    assert try_to_load_from_cache(repo, "infinitystar_videovae.pth", cache_dir=str(hf_home / "hub")) is not None


def test_no_network_falls_back_to_the_cache(hf_home, tiny_folder, monkeypatch):
    """HF_HUB_OFFLINE unset but the Hub unreachable (a closed local port as the endpoint): the cache serves."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    snap = add_snapshot(hf_home / "hub", "me/tiny", folder_files(tiny_folder), COMMIT_A)
    assert hub.resolve("me/tiny") == snap
    (snap / "config.json").unlink()
    with pytest.raises(hub.HubFilesMissing, match="config.json"):
        hub.resolve("me/tiny")


def test_local_folders_and_repo_ids_are_told_apart(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert hub.looks_like_repo_id("FoundationVision/InfinityStar")
    (tmp_path / "FoundationVision" / "InfinityStar").mkdir(parents=True)
    assert not hub.looks_like_repo_id("FoundationVision/InfinityStar")     # an existing local folder wins
    assert not hub.looks_like_repo_id("/abs/path") and not hub.looks_like_repo_id("a/b/c")
    with pytest.raises(ValueError, match="unsupported resolution"):
        hub.allow_patterns("1080p")


def test_version_and_inspect_without_a_folder(capsys):
    from faststar import __version__
    with pytest.raises(SystemExit) as e:
        cli_main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"faststar {__version__}"
    assert cli_main(["inspect"]) == 0
    out = capsys.readouterr().out
    assert str(TESTBED_DIR) in out and "layout: testbed" in out and "all keys and shapes match" in out
