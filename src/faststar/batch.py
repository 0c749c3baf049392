"""Batch generation: many videos from a JSONL file, resumable, split over ``torchrun`` ranks.

    faststar generate --prompts prompts.jsonl --out-dir DIR            # one process
    torchrun --nproc-per-node 8 -m faststar.cli generate --prompts prompts.jsonl --out-dir DIR

One JSON object a line: ``prompt`` (required), ``image`` (image-to-video, optional), ``seed`` (default 0),
``method`` (a method string as ``--accel`` takes it, default ``dense``). Line ``i`` (counting the non-blank lines
from 0) is written to ``DIR/{i:05d}.mp4`` with ``DIR/{i:05d}.json`` beside it (the line, timings, a sha256 of the
frames). The whole file is checked before any model loads: a bad line stops the run with its line number.

Resumable: a job whose video exists is skipped. Both files are written atomically (temporary name in DIR, then
``os.replace``; the JSON first, the video last), so a killed run leaves no partial file under a final name and a
rerun does exactly the jobs that are missing. Ranks: job ``i`` belongs to rank ``i % WORLD_SIZE`` (a fixed split by
line index; ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` come from ``torchrun``, multi-host through its rendezvous). Each
rank generates its share on its own device (``cuda:LOCAL_RANK``, or the CPU); the process group (NCCL on GPUs,
gloo on the CPU) only sums the counts at the end.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

KEYS = {"prompt", "image", "seed", "method"}


@dataclass(frozen=True)
class Job:
    index: int                 # the job's number (non-blank lines from 0): its output name and its rank
    line: int                  # 1-based line number in the file
    prompt: str
    image: str | None = None
    seed: int = 0
    method: str = "dense"

    @property
    def stem(self) -> str:
        return f"{self.index:05d}"


def read_jobs(path: str | Path) -> list[Job]:
    """Parse and check a prompts file; ``ValueError`` naming the file and line of the first bad line."""
    from .accel import make_accelerator
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"prompts file not found: {path}")
    jobs: list[Job] = []
    methods_ok: set[str] = set()
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not raw.strip():
            continue
        where = f"{path} line {n}"
        try:
            d = json.loads(raw)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not valid JSON ({e.msg})") from None
        if not isinstance(d, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(d).__name__}")
        unknown = sorted(set(d) - KEYS)
        if unknown:
            raise ValueError(f"{where}: unknown keys {unknown}; allowed: {sorted(KEYS)}")
        prompt = d.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"{where}: 'prompt' must be a non-empty string")
        seed = d.get("seed", 0)
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"{where}: 'seed' must be a non-negative integer, got {seed!r}")
        image = d.get("image")
        if image is not None:
            if not isinstance(image, str):
                raise ValueError(f"{where}: 'image' must be a path string")
            ip = Path(image) if Path(image).is_absolute() else path.parent / image
            if not ip.is_file():
                raise ValueError(f"{where}: image not found: {ip}")
            image = str(ip)
        method = d.get("method", "dense")
        if not isinstance(method, str) or not method:
            raise ValueError(f"{where}: 'method' must be a method string such as 'faststar:balanced'")
        if method not in methods_ok:
            try:
                if method != "dense":
                    make_accelerator(method)
            except (ValueError, TypeError, KeyError) as e:
                raise ValueError(f"{where}: method {method!r}: {e}") from None
            methods_ok.add(method)
        jobs.append(Job(index=len(jobs), line=n, prompt=prompt, image=image, seed=seed, method=method))
    if not jobs:
        raise ValueError(f"{path}: no prompts (one JSON object a line)")
    return jobs


def rank_share(jobs: list[Job], rank: int, world: int) -> list[Job]:
    """The jobs of ``rank``: every ``world``-th by index, starting at ``rank``."""
    return [j for j in jobs if j.index % world == rank]


def pending(jobs: list[Job], out_dir: Path) -> list[Job]:
    """The jobs whose video is not there yet."""
    return [j for j in jobs if not (out_dir / f"{j.stem}.mp4").exists()]


def _write_json_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(json.dumps(obj, indent=1))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def dist_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from ``torchrun``'s environment; (0, 1, 0) outside it."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def rank_device(device: str | None, local_rank: int) -> str:
    import torch
    if device in (None, "auto"):
        return f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and torch.cuda.is_available():
        return f"cuda:{local_rank}"
    return device


def run_batch(prompts: str | Path, out_dir: str | Path, *, load_pipe, device: str | None = "auto",
              progress: bool = True, generate_kwargs: dict | None = None) -> dict:
    """Generate this rank's pending jobs. ``load_pipe(device)`` returns the pipeline (called only when there is
    work). Returns {"jobs", "done", "skipped", "rank", "world"} with done/skipped summed over ranks."""
    from . import accel
    from .io import write_video
    jobs = read_jobs(prompts)                       # everything checked before anything loads
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rank, world, local_rank = dist_env()
    mine = rank_share(jobs, rank, world)
    todo = pending(mine, out_dir)
    for job in todo:                                # a killed run's temporary files (only this rank writes them)
        for stale in out_dir.glob(f".{job.stem}.*"):
            stale.unlink(missing_ok=True)
    dev = rank_device(device, local_rank)
    group = _init_group(world, dev)
    done = 0
    if todo:
        pipe = load_pipe(dev)
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=len(mine), initial=len(mine) - len(todo), desc=f"batch rank {rank}/{world}",
                       unit="video", position=rank)
        try:
            for job in todo:
                acc = None if job.method == "dense" else accel.make_accelerator(job.method)
                t0 = time.perf_counter()
                out = pipe(job.prompt, image=job.image, seed=job.seed, accelerator=acc, progress=False,
                           **(generate_kwargs or {}))
                meta = dict(asdict(job), frames_sha256=hashlib.sha256(out.frames.tobytes()).hexdigest(),
                            frames_shape=list(out.frames.shape), fps=out.fps, schedule=out.schedule,
                            timings=out.timings, summary=out.summary, rank=rank, world=world,
                            wall_s=time.perf_counter() - t0)
                _write_json_atomic(out_dir / f"{job.stem}.json", meta)
                write_video(out_dir / f"{job.stem}.mp4", out.frames, fps=out.fps)      # last: the done marker
                done += 1
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
    counts = [done, len(mine) - len(todo)]
    if group:
        import torch
        import torch.distributed as dist
        t = torch.tensor(counts, dtype=torch.int64, device=dev if dev.startswith("cuda") else "cpu")
        dist.all_reduce(t)
        counts = t.tolist()
        dist.destroy_process_group()
    return dict(jobs=len(jobs), done=counts[0], skipped=counts[1], rank=rank, world=world)


def _init_group(world: int, device: str) -> bool:
    """Join torchrun's process group (NCCL for CUDA devices, gloo on the CPU) when there is more than one rank."""
    if world <= 1:
        return False
    import torch.distributed as dist
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        kw = {"device_id": __import__("torch").device(device)} if backend == "nccl" else {}
        dist.init_process_group(backend, **kw)
    return True
