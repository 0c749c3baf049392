"""Train the testbed (VAE, then transformer) on the prepared clips, time-budgeted and resumable, in one command.

    PYTHONPATH=src python -m faststar.testbed.train --data .carry/testbed_data --out out/testbed_run \
        --export src/faststar/testbed/weights [--minutes-vae 8.4 --minutes-gpt 4.5] [--resume]

The defaults are the recipe of the shipped testbed (v2), which was trained in two commands: the VAE alone
(``--minutes-gpt 0``), then the transformer on it (``--minutes-vae 0 --init-vae <that export>``).

1. VAE (the engine's VideoVAE at small widths): phase 1 reconstructs random 17-frame windows (random crops,
   flips) with L1 + MSE + a small KL on a posterior sample; then the latent scale is calibrated (the
   ``scale_learnable_parameters[0]`` that makes the multi-scale BSQ of the schedule lose the least, relative to the
   latent); phase 2 feeds the decoder the multi-scale-quantized latent (straight-through, plus a commitment
   term that keeps the encoder's latent where the scale was calibrated), since generation decodes sums of codes.
2. Every training window is encoded (posterior mean, fp32, as the pipeline encodes) and quantized over the
   schedule: bit labels + step inputs. The transformer is trained teacher-forced on packed sequences (text + all
   43 steps, block visibility; ``packing.py``) with the bitwise cross-entropy; captions are dropped 10 % of the time
   (the text becomes ``cfg_uncond[:L]``, as the unconditional branch at inference).
3. Export (``--export``): ``transformer/`` (fp16 safetensors shards + model.safetensors.index.json, each file under
   16 MiB), ``vae.safetensors`` (fp16), ``config.json`` (the faststar testbed folder format that
   ``FastStarPipeline.from_pretrained`` reads) and ``train_log.json``.

Checkpoints (model + optimizer) and the JSON log live in ``--out``; ``--resume`` continues each phase from them and
trains for the given minutes more (``--minutes-vae 0`` skips the VAE; ``--init-vae FOLDER`` takes an exported
model's VAE and its log instead).

Training in several device calls (``benchmarks/testbed_train_device.md``): ``--vae-steps`` / ``--gpt-steps`` fix
each phase's length in steps (the LR schedule and the VAE's phase split follow the step, not the clock), so calls of
any length add up to one training. A checkpoint (every ``--ckpt-minutes`` and when a call stops, 45 s before
``--max-minutes``) holds the model, the AdamW state, the step and phase, and every RNG state (the loop's Python
``random`` for window picks, flips and crops; the batch ``torch.Generator``; torch's global CPU / CUDA RNG): a resumed
run gives the weights of an uninterrupted one (bit-identical on CPU, ``tests/test_testbed_resume.py``). A call whose
VAE is not finished stops after the VAE (no transformer, no export). ``--portable DIR`` also writes a compact
checkpoint (fp16 weights under 16 MiB a file, loop state, log; no optimizer moments) that a device call can send
back, and ``--resume DIR`` continues from it on a fresh machine (AdamW restarts with a fresh warm-up: close to, not
the same as, an uninterrupted run).

Photos (a pack's ``photos``): ``--photo-frac`` of the VAE steps train on batches of photo crops as one-frame videos;
the transformer gets every crop as a still video whose loss counts on the first clip's (image) scales only.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..model.transformer import STARTransformer
from ..vae.model import VideoVAE
from ..vae.quant import multiscale_quantize
from . import packing
from .config import FPS, GUIDANCE, NAME, SPECS, TEXT_ENCODER, TrainSpec
from .data import load_clips, load_embeddings

REPO = Path(__file__).resolve().parents[3]
DEFAULT_EXPORT = Path(__file__).resolve().parent / "weights"
MAX_FILE_BYTES = 15 * 2 ** 20


# ------------------------------------------------------------------------------------------------------------------
# small utilities

class Log:
    """Append-only JSON log (rewritten atomically on flush) plus a console line for the important events."""

    def __init__(self, path: Path, resume: bool):
        self.path = path
        self.data = {"events": [], "vae": [], "gpt": []}
        if resume and path.exists():
            self.data = json.loads(path.read_text())

    def add(self, kind: str, **kw):
        self.data.setdefault(kind, []).append(kw)

    def event(self, msg: str, **kw):
        print(f"[testbed] {msg}", flush=True)
        self.add("events", msg=msg, time=time.time(), **kw)
        self.flush()

    def flush(self):
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        os.replace(tmp, self.path)


def atomic_save(obj, path: Path):
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def rng_state(rng: random.Random | None = None, gen: torch.Generator | None = None) -> dict:
    """Everything random a training loop draws from, to put in a checkpoint: the Python ``random.Random`` of the
    loop (window picks, flips, crops), a ``torch.Generator`` (batch indices, caption dropout), torch's global CPU
    RNG (posterior samples) and every CUDA device's."""
    st = dict(torch_cpu=torch.get_rng_state())
    if rng is not None:
        v, internal, gauss = rng.getstate()
        st["python"] = dict(version=v, internal=torch.tensor(internal, dtype=torch.int64), gauss=gauss)
    if gen is not None:
        st["generator"] = gen.get_state()
    if torch.cuda.is_available():
        st["torch_cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict | None, rng: random.Random | None = None, gen: torch.Generator | None = None) -> None:
    if not st:
        return
    torch.set_rng_state(st["torch_cpu"].cpu())
    if rng is not None and "python" in st:
        p = st["python"]
        rng.setstate((p["version"], tuple(int(x) for x in p["internal"].tolist()), p["gauss"]))
    if gen is not None and "generator" in st:
        gen.set_state(st["generator"].cpu())
    if "torch_cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in st["torch_cuda"]])


PORTABLE_STATE = "{}_state.json"


def save_portable(folder: Path, what: str, module, state: dict) -> list[Path]:
    """A compact checkpoint that fits the device's file limits (files under 16 MiB, 64 MiB together): the weights
    in fp16 (sharded) and the loop state as JSON, without the optimizer moments (a resume from it restarts AdamW
    with a fresh warm-up; only a full checkpoint (``vae.pt`` / ``gpt.pt``) continues exactly)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = save_sharded(_fp16_state(module), folder / what)
    js = {k: v for k, v in state.items() if k != "rng"}
    (folder / PORTABLE_STATE.format(what)).write_text(json.dumps(js, indent=1))
    return paths + [folder / PORTABLE_STATE.format(what)]


def load_portable(folder: Path, what: str, module) -> dict | None:
    """Weights and loop state of a ``save_portable`` folder into ``module``; None when the folder has none."""
    from ..checkpoint import load_checkpoint
    folder = Path(folder)
    f = folder / PORTABLE_STATE.format(what)
    if not f.exists():
        return None
    load_checkpoint(module, folder / what)
    return json.loads(f.read_text())


def find_checkpoint(args, out: Path, what: str) -> tuple[Path | None, Path | None]:
    """(full checkpoint ``<what>.pt``, portable folder) to resume from: ``--out`` first (a warm machine still holds
    the exact checkpoint), then ``--resume PATH`` (a run folder or a portable folder)."""
    places = []
    if args.resume:
        places.append(out)
    if isinstance(args.resume, str):
        places.append(Path(args.resume))
    for d in places:
        if (d / f"{what}.pt").exists():
            return d / f"{what}.pt", None
        if (d / PORTABLE_STATE.format(what)).exists():
            return None, d
    return None, None


def lr_at(base: float, step: int, warmup: int, progress: float, floor: float = 0.1) -> float:
    """Linear warm-up, flat, then a linear decay over the last 25 % of the time budget down to floor * base."""
    w = min(1.0, (step + 1) / max(1, warmup))
    d = 1.0 if progress < 0.75 else max(floor, 1.0 - (1.0 - floor) * (progress - 0.75) / 0.25)
    return base * w * d


def set_lr(opt, lr):
    for g in opt.param_groups:
        g["lr"] = lr


def optimizer_step(opt, loss: torch.Tensor, params, what: str, step: int) -> tuple[float, float]:
    """Backward, clip the gradient norm to 1, step; (loss value, gradient norm). A non-finite loss stops training."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    gn = torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    lv = loss.item()
    if not math.isfinite(lv):
        raise FloatingPointError(f"{what} loss is {lv} at step {step}")
    return lv, float(gn)


def reconstruction_loss(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The VAE's reconstruction objective: L1 + MSE."""
    return (y - x).abs().mean() + (y - x).pow(2).mean()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two videos in [-1, 1] (clamped), as 8-bit-range images."""
    mse = ((a.clamp(-1, 1) - b.clamp(-1, 1)) / 2).pow(2).mean().item()
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


class Budget:
    """Wall-clock budget of a phase, capped by a global deadline."""

    def __init__(self, seconds: float, deadline: float | None):
        self.start = time.time()
        self.seconds = seconds
        if deadline is not None:
            self.seconds = max(0.0, min(seconds, deadline - self.start))

    @property
    def elapsed(self) -> float:
        return time.time() - self.start

    @property
    def progress(self) -> float:
        return min(1.0, self.elapsed / max(self.seconds, 1e-9))

    def done(self) -> bool:
        return self.elapsed >= self.seconds


def bar(total_s: float, desc: str):
    from tqdm.auto import tqdm
    interactive = sys.stderr.isatty()
    return tqdm(total=max(1, int(round(total_s))), desc=desc, unit="s", mininterval=1 if interactive else 20,
                bar_format="{desc}: {percentage:3.0f}%|{bar:20}| {n}/{total}s {postfix}", leave=True)


# ------------------------------------------------------------------------------------------------------------------
# data on the device

class Frames:
    """All frames of the training clips on the device (uint8), with the valid window starts of each clip."""

    def __init__(self, clips, device, hw: tuple[int, int]):
        self.clips = clips
        self.frames = []
        for c in clips:
            f = torch.from_numpy(c.frames).to(device)                        # [T, H, W, 3] uint8
            if tuple(f.shape[1:3]) != tuple(hw):
                x = f.permute(0, 3, 1, 2).float()
                x = F.interpolate(x, size=hw, mode="area")
                f = x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
            self.frames.append(f)
        self.hw = hw

    def windows(self, length: int, stride: int = 1, cap: int | None = None) -> list[tuple[int, int]]:
        """(clip, start) of windows, at most ``cap`` per clip (evenly spread)."""
        out = []
        for ci, c in enumerate(self.clips):
            starts = c.window_starts(length, stride)
            if cap is not None and len(starts) > cap:
                starts = [starts[int(round(i))] for i in np.linspace(0, len(starts) - 1, cap)]
            out += [(ci, s) for s in starts]
        return out

    def video(self, ci: int, start: int, length: int, flip: bool = False, crop: tuple[int, int] | None = None,
              rng: random.Random | None = None) -> torch.Tensor:
        """[3, T, H, W] in [-1, 1]."""
        f = self.frames[ci][start:start + length]
        if crop is not None and tuple(crop) != tuple(self.hw):
            rng = rng or random
            y = rng.randrange(0, self.hw[0] - crop[0] + 1)
            x = rng.randrange(0, self.hw[1] - crop[1] + 1)
            f = f[:, y:y + crop[0], x:x + crop[1]]
        v = f.permute(3, 0, 1, 2).float() / 127.5 - 1
        return v.flip(-1) if flip else v


class Photos:
    """All crops of the training photos on the device (uint8 [N, H, W, 3]) with their caption keys."""

    def __init__(self, photos, device, hw: tuple[int, int]):
        imgs, keys = [], []
        for p in photos:
            for im in p.images:
                imgs.append(torch.from_numpy(np.ascontiguousarray(im)))
                keys.append(p.caption_key)
        self.keys = keys
        self.hw = hw
        self.images = torch.stack(imgs).to(device) if imgs else torch.zeros(0, *hw, 3, dtype=torch.uint8)
        if imgs and tuple(self.images.shape[1:3]) != tuple(hw):
            x = F.interpolate(self.images.permute(0, 3, 1, 2).float(), size=hw, mode="area")
            self.images = x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()

    def __len__(self):
        return self.images.shape[0]

    def video(self, i: int, frames: int = 1, flip: bool = False) -> torch.Tensor:
        """Crop i as a still video [3, frames, H, W] in [-1, 1]."""
        v = self.images[i].permute(2, 0, 1).float() / 127.5 - 1
        v = v.flip(-1) if flip else v
        return v[:, None].expand(-1, frames, -1, -1)

    def batch(self, n: int, rng: random.Random, crop=None, device=None) -> torch.Tensor:
        """n random crops as one-frame videos [n, 3, 1, h, w] (random flips; random ``crop`` windows if given)."""
        out = []
        for _ in range(n):
            v = self.video(rng.randrange(len(self)), 1, flip=rng.random() < 0.5)
            if crop is not None and tuple(crop) != tuple(self.hw):
                y = rng.randrange(0, self.hw[0] - crop[0] + 1)
                x = rng.randrange(0, self.hw[1] - crop[1] + 1)
                v = v[:, :, y:y + crop[0], x:x + crop[1]]
            out.append(v)
        return torch.stack(out)


class Ticker:
    """What both training loops do after every step: advance the time-based progress bar, and checkpoint (then
    flush the log) every ``every_s`` seconds."""

    def __init__(self, pb, budget, save, log, every_s: float):
        self.pb, self.budget, self.save, self.log, self.every_s = pb, budget, save, log, every_s
        self.last_t, self.last_save = 0, time.time()

    def __call__(self) -> None:
        now = int(self.budget.elapsed)
        if now > self.last_t:
            self.pb.update(min(now, self.pb.total) - self.pb.n)
            self.last_t = now
        if time.time() - self.last_save > self.every_s:
            self.save()
            self.log.flush()
            self.last_save = time.time()


# ------------------------------------------------------------------------------------------------------------------
# VAE with gradients (the engine's encode/decode are inference-only; these run the same modules on whole windows)

def vae_posterior(vae: VideoVAE, video_BCTHW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and clamped log-variance [B, 64, T', h, w] of a whole window (one encoder pass)."""
    vae.reset_caches()
    try:
        enc = vae.encoder(video_BCTHW, first_chunk=True)
    finally:
        vae.reset_caches()
    return vae.posterior_from_features(enc)


def vae_latent(vae: VideoVAE, mean: torch.Tensor, logvar: torch.Tensor | None = None) -> torch.Tensor:
    """z = proj_down(mean, or a posterior sample when logvar is given) * scale."""
    lat = mean if logvar is None else mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
    return vae._channel_linear(lat, vae.proj_down) * vae.scale_learnable_parameters[0]


def vae_decode(vae: VideoVAE, z_BCThw: torch.Tensor) -> torch.Tensor:
    """Pixels of a latent in one decoder pass (same result as the chunked ``VideoVAE.decode``)."""
    s = vae.decoder_input(z_BCThw)
    vae.reset_caches()
    try:
        return vae.decoder(s, first_chunk=True)
    finally:
        vae.reset_caches()


@torch.no_grad()
def quantize_batch(z_BCTHW: torch.Tensor, schedule) -> torch.Tensor:
    """Summed codes of the multi-scale BSQ of each latent of a batch (what generation decodes)."""
    return torch.cat([multiscale_quantize(z_BCTHW[i:i + 1].float(), schedule)[1] for i in range(z_BCTHW.shape[0])])


@torch.no_grad()
def calibrate_scale(vae: VideoVAE, frames: Frames, schedule, length: int, n: int = 8, seed: int = 0) -> dict:
    """Pick the latent scale that minimises the relative multi-scale quantization error; rescale the VAE
    (encode multiplies and decode divides by ``scale_learnable_parameters[0]``, so reconstructions do not change)."""
    rng = random.Random(seed)
    wins = frames.windows(length, 2)
    pick = [wins[rng.randrange(len(wins))] for _ in range(n)]
    dev = vae.proj_down.weight.device
    zs = [vae.encode(frames.video(ci, s, length)[None].to(dev)).float() for ci, s in pick]
    grid = [2 ** (k / 4) for k in range(-16, 17)]
    errs = []
    for g in grid:
        e = 0.0
        for z in zs:
            q = multiscale_quantize(z * g, schedule)[1] / g
            e += ((q - z).pow(2).sum() / z.pow(2).sum()).item()
        errs.append(e / len(zs))
    best = int(np.argmin(errs))
    old = float(vae.scale_learnable_parameters[0])
    vae.scale_learnable_parameters.data[0] *= grid[best]
    z_rms = float(torch.stack([z.pow(2).mean() for z in zs]).mean().sqrt())
    return dict(factor=grid[best], rel_err=errs[best], rel_err_before=errs[grid.index(1.0)], scale_before=old,
                scale_after=float(vae.scale_learnable_parameters[0]), latent_rms_before=z_rms,
                latent_rms_after=z_rms * grid[best])


@torch.no_grad()
def photo_psnr(vae, images, schedule) -> dict:
    """Reconstruction PSNR of photo crops (uint8 [N, H, W, 3], at the model's size) as one-frame videos: plain and
    through the multi-scale quantizer of the schedule's first clip (what image-to-video teacher-forces)."""
    dev = vae.proj_down.weight.device
    sub = schedule.first_clips(1)
    rows = []
    for im in images:
        im = torch.as_tensor(im)
        x = (im.permute(2, 0, 1).float() / 127.5 - 1)[None, :, None].to(dev)
        z = vae.encode(x)
        rows.append(dict(psnr=psnr(vae.decode(z), x), psnr_quantized=psnr(vae.decode(quantize_batch(z, sub)), x)))
    return dict(photos=len(rows), psnr=float(np.mean([r["psnr"] for r in rows])) if rows else None,
                psnr_quantized=float(np.mean([r["psnr_quantized"] for r in rows])) if rows else None,
                per_photo=rows)


@torch.no_grad()
def vae_val_psnr(vae: VideoVAE, frames: Frames, schedule, length: int, n: int = 4) -> dict:
    """Reconstruction PSNR (plain and through the multi-scale quantizer) of up to n windows, with the engine's
    chunked inference encode/decode."""
    vae.eval()
    dev = vae.proj_down.weight.device
    wins = frames.windows(length, length)
    wins = [wins[int(i)] for i in np.linspace(0, len(wins) - 1, min(n, len(wins)))] if wins else []
    p_plain, p_q = [], []
    for ci, s in wins:
        x = frames.video(ci, s, length)[None].to(dev)
        z = vae.encode(x)
        p_plain.append(psnr(vae.decode(z), x))
        p_q.append(psnr(vae.decode(quantize_batch(z, schedule)), x))
    return dict(windows=len(wins), psnr=float(np.mean(p_plain)) if wins else None,
                psnr_quantized=float(np.mean(p_q)) if wins else None)


def init_vae_from(path: str, vae: VideoVAE, log: Log):
    """Take the VAE of an exported model folder (or its vae.safetensors) instead of training one."""
    from ..checkpoint import load_checkpoint
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    load_checkpoint(vae, folder / "vae.safetensors" if path.is_dir() else path)
    cfg = json.loads((folder / "config.json").read_text()) if (folder / "config.json").exists() else {}
    train = cfg.get("training", {})
    state = dict(step=train.get("vae_steps", 0), phase=2, calibration=train.get("calibration"), seconds=0.0,
                 phase2_step=0, init_from=str(path))
    if (folder / "train_log.json").exists():
        merge_vae_history(log.data, json.loads((folder / "train_log.json").read_text()))
    log.event(f"VAE taken from {path} (trained {state['step']} steps there); VAE training skipped")
    return vae.eval(), state


def merge_vae_history(data: dict, prior: dict) -> dict:
    """Put the VAE part of an earlier run's log (its runs, events, VAE loss rows and held-out PSNR) in front of
    ``data``, so that a model trained in two commands keeps one log. Runs already present are not repeated."""
    seen = {r.get("start") for r in data.get("runs", [])}
    data["runs"] = [r for r in prior.get("runs", []) if r.get("start") not in seen] + data.get("runs", [])
    data["events"] = [e for e in prior.get("events", []) if e not in data.get("events", [])] + data.get("events", [])
    for key in ("vae", "vae_val"):
        if prior.get(key) and not data.get(key):
            data[key] = prior[key]
    return data


def train_vae(args, spec: TrainSpec, frames: Frames, val: Frames | None, device, log: Log, out: Path,
              photos: "Photos | None" = None, val_photos: "Photos | None" = None):
    schedule = spec.build_schedule()
    length = spec.pixel_frames
    vae = VideoVAE(spec.vae_config()).to(device)
    if args.init_vae:
        return init_vae_from(args.init_vae, vae, log)
    vae.scale_learnable_parameters.requires_grad_(False)
    params = [p for p in vae.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr_vae, betas=(0.9, 0.99), weight_decay=1e-4)
    state = dict(step=0, phase=1, calibration=None, seconds=0.0, phase2_step=0, rewarm_from=0)
    ck = out / "vae.pt"
    budget_s = args.minutes_vae * 60
    rng = random.Random(args.seed)
    full, portable = find_checkpoint(args, out, "vae")
    if full is None and portable is None and budget_s <= 0 and ck.exists():
        full = ck
    rng_saved = None
    if full is not None:
        sd = torch.load(full, map_location=device, weights_only=True)
        vae.load_state_dict(sd["model"])
        opt.load_state_dict(sd["opt"])
        state.update(sd["state"])
        rng_saved = state.pop("rng", None)
        log.event(f"VAE loaded from {full} at step {state['step']} (phase {state['phase']})")
    elif portable is not None:
        state.update(load_portable(portable, "vae", vae))
        state["rewarm_from"] = state["step"]          # fresh AdamW moments: warm up again
        rng = random.Random(args.seed + state["step"])
        log.event(f"VAE loaded from the portable checkpoint {portable} at step {state['step']} (phase "
                  f"{state['phase']}; optimizer restarted with a {args.warmup_vae}-step warm-up)")
    if budget_s <= 0:
        if full is None and portable is None:
            raise FileNotFoundError(f"--minutes-vae 0 needs a trained VAE checkpoint at {ck}")
        log.event("VAE training skipped (--minutes-vae 0)")
        return vae.eval(), state
    target = args.vae_steps                            # None: the phases and the LR follow the time budget
    if target is not None and state["step"] >= target:
        log.event(f"VAE already at its {target} steps")
        return _vae_val(vae.eval(), val, val_photos, schedule, length, args, log), state
    # phase split: --vae-phase1-frac reconstruction, the rest quantized decoding (all once phase 2 has started)
    p1_s = 0.0 if state["phase"] == 2 else budget_s * args.vae_phase1_frac
    p1_steps = None if target is None else int(round(target * args.vae_phase1_frac))
    # clip-balanced sampling: a clip with n windows is drawn with weight sqrt(n) (vtest alone has 60 % of the frames)
    per_clip = [[(ci, st) for st in c.window_starts(length)] for ci, c in enumerate(frames.clips)]
    per_clip = [w for w in per_clip if w]
    clip_w = [math.sqrt(len(w)) for w in per_clip]
    crop = tuple(spec.vae_crop_hw) if spec.vae_crop_hw else None
    photo_frac = args.photo_frac if photos is not None and len(photos) else 0.0

    def draw():
        w = rng.choices(per_clip, weights=clip_w)[0]
        return w[rng.randrange(len(w))]

    def save():
        state["rng"] = rng_state(rng)
        atomic_save(dict(model=vae.state_dict(), opt=opt.state_dict(), state=state, spec=spec.to_dict()), ck)
        state.pop("rng")
        if args.portable:
            save_portable(Path(args.portable), "vae", vae, state)

    if rng_saved is not None:
        set_rng_state(rng_saved, rng)

    def lr_now(phase: int, step: int, budget) -> float:
        progress = budget.progress if target is None else step / target
        warm = args.warmup_vae
        if state["rewarm_from"]:
            w = min(1.0, (step - state["rewarm_from"] + 1) / max(1, warm))
            return w * lr_at(args.lr_vae if phase == 1 else 0.5 * args.lr_vae, warm, warm, progress)
        if phase == 1:
            return lr_at(args.lr_vae, step, warm, progress)
        return lr_at(0.5 * args.lr_vae, warm, warm, progress)    # a new objective: half the rate, no warm-up

    def run_phase(phase: int, seconds: float, batch: int, until: int | None):
        vae.train()
        budget = Budget(seconds, args.deadline)
        pb = bar(budget.seconds, f"vae phase {phase}")
        tick = Ticker(pb, budget, save, log, args.ckpt_minutes * 60)
        losses = []
        while not budget.done() and (args.max_vae_steps is None or state["step"] < args.max_vae_steps) \
                and (until is None or state["step"] < until):
            step = state["step"]
            if photo_frac and rng.random() < photo_frac:
                # a batch of photos as one-frame videos (the image the first latent frame codes)
                x = photos.batch(batch * args.photo_batch_mult, rng, crop=crop if phase == 1 else None,
                                 device=device)
            else:
                pick = [draw() for _ in range(batch)]
                x = torch.stack([frames.video(ci, s, length, flip=rng.random() < 0.5,
                                              crop=crop if phase == 1 else None, rng=rng) for ci, s in pick])
            set_lr(opt, lr_now(phase, step, budget))
            with autocast(device):
                mean, logvar = vae_posterior(vae, x)
                if phase == 1:
                    z = vae_latent(vae, mean.float(), logvar.float())
                    kl = 0.5 * (mean.float().pow(2) + logvar.float().exp() - 1 - logvar.float()).mean()
                    zin, commit = z, torch.zeros((), device=device)
                else:
                    z = vae_latent(vae, mean.float())
                    zq = quantize_batch(z.detach(), schedule if x.shape[2] > 1 else schedule.first_clips(1))
                    zin = z + (zq - z).detach()
                    commit = (z - zq).pow(2).mean()
                    kl = torch.zeros((), device=device)
                y = vae_decode(vae, zin).float()
            rec = reconstruction_loss(y, x)
            loss = rec + args.kl_weight * kl + args.commit_weight * commit
            lv, gn = optimizer_step(opt, loss, params, "VAE", step)
            state["step"] += 1
            if phase == 2:
                state["phase2_step"] += 1
            losses.append(lv)
            if state["step"] % args.log_every == 0 or state["step"] == 1:
                with torch.no_grad():
                    p = psnr(y.detach(), x)
                log.add("vae", step=state["step"], phase=phase, time=round(budget.elapsed, 2), loss=lv,
                        rec=rec.item(), kl=kl.item(), commit=commit.item(), psnr=round(p, 3),
                        grad_norm=float(gn), lr=opt.param_groups[0]["lr"], photo=int(x.shape[2] == 1))
                pb.set_postfix_str(f"step {state['step']} loss {lv:.4f} psnr {p:.2f}", refresh=False)
            tick()
        pb.close()
        state["seconds"] += budget.elapsed
        return losses

    t_all = time.time()
    if state["phase"] == 1 and (p1_s > 0 or p1_steps):
        l1 = run_phase(1, p1_s if target is None else budget_s, args.batch_vae, p1_steps)
        log.event(f"VAE phase 1: {len(l1)} steps, loss {np.mean(l1[:5]) if l1 else float('nan'):.4f} -> "
                  f"{np.mean(l1[-5:]) if l1 else float('nan'):.4f}")
    if state["calibration"] is None and (p1_steps is None or state["step"] >= p1_steps):
        vae.eval()
        cal = calibrate_scale(vae, frames, schedule, length, n=args.calib_windows, seed=args.seed)
        state["calibration"] = cal
        state["phase"] = 2
        log.event(f"latent scale calibrated: x{cal['factor']:.3f}, relative quantization error "
                  f"{cal['rel_err_before']:.4f} -> {cal['rel_err']:.4f}", **cal)
    remaining = budget_s - (time.time() - t_all)
    if state["phase"] == 2 and remaining > 0:
        l2 = run_phase(2, remaining, args.batch_vae_q, target)
        log.event(f"VAE phase 2 (quantized): {len(l2)} steps, loss "
                  f"{np.mean(l2[:5]) if l2 else float('nan'):.4f} -> {np.mean(l2[-5:]) if l2 else float('nan'):.4f}")
    save()
    vae.eval()
    if target is not None and state["step"] < target:
        log.event(f"VAE at step {state['step']} of {target}: checkpoint saved, continue with --resume")
        return vae, state
    return _vae_val(vae, val, val_photos, schedule, length, args, log), state


def _vae_val(vae, val, val_photos, schedule, length, args, log: Log):
    if val is not None:
        v = vae_val_psnr(vae, val, schedule, length, n=args.val_windows)
        log.data["vae_val"] = v
        log.event(f"VAE held-out PSNR {v['psnr']:.2f} dB, through the quantizer {v['psnr_quantized']:.2f} dB", **v)
    if val_photos is not None and len(val_photos):
        v = photo_psnr(vae, val_photos.images, schedule)
        log.data["vae_val_photos"] = v
        log.event(f"VAE held-out photo PSNR {v['psnr']:.2f} dB, through the quantizer {v['psnr_quantized']:.2f} dB",
                  **v)
    return vae


# ------------------------------------------------------------------------------------------------------------------
# transformer

def init_transformer_(model: STARTransformer, text_std: float = 0.5):
    """Small-std init (0.02; residual outputs scaled by 1/sqrt(2 depth)), zero biases, unit norms, cfg_uncond
    drawn at the spread of the caption embeddings."""
    depth = model.cfg.depth
    for name, p in model.named_parameters():
        if name.endswith("q_norm.weight") or name.endswith("k_norm.weight") or "layernorm" in name \
                or name.startswith("norm_hidden"):
            torch.nn.init.ones_(p)
        elif name.endswith(".bias"):
            torch.nn.init.zeros_(p)
        elif name == "cfg_uncond":
            torch.nn.init.normal_(p, std=text_std)
        elif name == "sos_token":
            torch.nn.init.zeros_(p)
        elif name.endswith("o_proj.weight") or name.endswith("down_proj.weight"):
            torch.nn.init.normal_(p, std=0.02 / math.sqrt(2 * depth))
        elif name in ("word_embed.weight", "text_proj.weight"):
            torch.nn.init.normal_(p, std=1.0 / math.sqrt(p.shape[1]))
        else:
            torch.nn.init.normal_(p, std=0.02)


class GPTData:
    """Step inputs, bit labels and caption choices of every training window, on the device."""

    def __init__(self, inp, bits, seg_key, clip_key, emb, emb_len, names, image_only=None):
        self.inp, self.bits = inp, bits                      # [W, n_vis, 64], [W, n_vis, 64] uint8
        self.seg_key, self.clip_key = seg_key, clip_key      # [W] long indices into emb
        self.emb, self.emb_len = emb, emb_len                # [K, text_pad, C], [K]
        self.names = names                                   # caption key names
        # [W] bool: a photo (a still video) whose loss counts on the first clip's (image) scales only
        self.image_only = image_only if image_only is not None else torch.zeros(
            inp.shape[0], dtype=torch.bool, device=inp.device)

    def __len__(self):
        return self.inp.shape[0]


def caption_table(embs: dict, text_pad: int, device):
    names = sorted(embs)
    C = next(iter(embs.values())).shape[-1]
    emb = torch.zeros(len(names), text_pad, C)
    lens = torch.zeros(len(names), dtype=torch.long)
    for i, k in enumerate(names):
        L = min(embs[k].shape[0], text_pad)
        emb[i, :L] = embs[k][:L]
        lens[i] = L
    return names, emb.to(device), lens.to(device)


@torch.no_grad()
def build_gpt_data(vae: VideoVAE, frames: Frames, schedule, spec: TrainSpec, embs: dict, device, *, stride: int,
                   cap: int | None, flips: bool, store_dtype, log: Log | None = None, batch: int = 4,
                   photos: Photos | None = None) -> GPTData:
    """Teacher data of the clips' windows, plus each photo crop as a still video whose loss counts on the first
    clip's (image) scales only."""
    length = spec.pixel_frames
    names, emb, lens = caption_table(embs, spec.text_pad, device)
    index = {k: i for i, k in enumerate(names)}
    wins = frames.windows(length, stride, cap)
    items = [("clip", ci, s, f) for ci, s in wins for f in ((False, True) if flips else (False,))]
    if photos is not None:
        items += [("photo", i, 0, f) for i in range(len(photos)) for f in ((False, True) if flips else (False,))]
    inps, labs, seg, clip, img = [], [], [], [], []
    t0 = time.time()
    vae.eval()
    for i in range(0, len(items), batch):
        chunk = items[i:i + batch]
        x = torch.stack([frames.video(ci, s, length, flip=f) if kind == "clip" else photos.video(ci, length, flip=f)
                         for kind, ci, s, f in chunk]).to(device)
        z = vae.encode(x).float()
        for j, (kind, ci, s, f) in enumerate(chunk):
            inp, lab = packing.teacher_data(z[j:j + 1], schedule)
            inps.append(inp.to(store_dtype))
            labs.append(lab)
            if kind == "clip":
                c = frames.clips[ci]
                seg.append(index[c.window_caption_key(s, length)])
                clip.append(index[c.clip_key])
            else:
                seg.append(index[photos.keys[ci]])
                clip.append(index[photos.keys[ci]])
            img.append(kind == "photo")
    data = GPTData(torch.stack(inps), torch.stack(labs), torch.tensor(seg, device=device),
                   torch.tensor(clip, device=device), emb, lens, names,
                   image_only=torch.tensor(img, dtype=torch.bool, device=device))
    if log is not None:
        log.event(f"encoded {len(data)} windows ({len(wins)} x {'2 flips' if flips else '1'}) in "
                  f"{time.time() - t0:.1f} s; {data.inp.numel() * data.inp.element_size() / 2**20:.0f} MiB inputs")
    return data


def sample_batch(model, data: GPTData, layout, idx: torch.Tensor, gen: torch.Generator, *, p_clip_caption: float,
                 p_drop: float, train: bool = True):
    """Text slots [B, text_pad, C], step inputs, labels and caption lengths of windows ``idx``."""
    B = idx.shape[0]
    dev = data.inp.device
    if train:
        use_clip = torch.rand(B, generator=gen, device=dev) < p_clip_caption
        drop = torch.rand(B, generator=gen, device=dev) < p_drop
    else:
        use_clip = torch.zeros(B, dtype=torch.bool, device=dev)
        drop = torch.zeros(B, dtype=torch.bool, device=dev)
    key = torch.where(use_clip, data.clip_key[idx], data.seg_key[idx])
    text = data.emb[key]
    lens = data.emb_len[key]
    Lp = layout.text_pad
    unc = model.cfg_uncond[:Lp]
    if unc.shape[0] < Lp:
        unc = F.pad(unc, (0, 0, 0, Lp - unc.shape[0]))
    text = torch.where(drop[:, None, None], unc[None].to(text.dtype), text)
    return text, data.inp[idx], data.bits[idx], lens


def token_weight(layout, image_only: torch.Tensor, first_clip_scales: int) -> torch.Tensor | None:
    """[B, n_vis] loss weights: the layout's, zero on the video clips' tokens of photo windows (None: no photo)."""
    if not bool(image_only.any()):
        return None
    video_tok = layout.scale_of >= first_clip_scales                            # [n_vis]
    return layout.weight[None] * ~(image_only[:, None] & video_tok[None])


def gpt_forward(model, layout, vis, text, inp, bits, lens, mode: str, compiled: bool, weight=None):
    x = packing.embed_inputs(model, text, inp, layout)
    dm = packing.dense_mask(layout, lens, vis)
    mask = dm if mode == "mask" else packing.flex_block_mask(dm)
    h = packing.packed_hidden(model, x, layout, mask, mode, compiled=compiled)
    return packing.bit_loss(model, h, bits, layout, token_weight=weight)


@torch.no_grad()
def teacher_forced_accuracy(model, data: GPTData, layout, mode: str, compiled: bool, device, batch: int = 2,
                            limit: int | None = None) -> dict:
    """Per-scale bit accuracy and loss of the given windows with their segment captions (no dropout)."""
    model.eval()
    vis = packing.visual_mask(layout)
    n = len(data) if limit is None else min(limit, len(data))
    order = torch.linspace(0, len(data) - 1, n).round().long().to(data.inp.device)     # spread over the clips
    accs, losses, tl = [], [], []
    for i in range(0, n, batch):
        idx = order[i:i + batch]
        text, inp, bits, lens = sample_batch(model, data, layout, idx, None, p_clip_caption=0, p_drop=0,
                                             train=False)
        with autocast(device):
            loss, tok_loss, tok_acc = gpt_forward(model, layout, vis, text, inp, bits, lens, mode, compiled)
        accs.append(packing.per_scale(tok_acc, layout) * len(idx))
        tl.append(packing.per_scale(tok_loss, layout) * len(idx))
        losses.append(loss.item() * len(idx))
    model.train()
    return dict(windows=n, loss=sum(losses) / n, acc_per_scale=[round(float(a), 4) for a in sum(accs) / n],
                loss_per_scale=[round(float(a), 4) for a in sum(tl) / n])


def pick_attention(args, model, layout, data: GPTData, device, log: Log, batch: int) -> tuple[str, bool]:
    """flex (compiled) on CUDA when a training step runs with it and its loss agrees with the dense-mask reference
    (FlexAttention has no backward on the CPU); otherwise the dense mask."""
    if args.attn == "mask" or (args.attn == "auto" and device.type != "cuda"):
        return "mask", False
    compiled = True
    try:
        t0 = time.time()
        idx = torch.arange(batch, device=data.inp.device) % len(data)
        text, inp, bits, lens = sample_batch(model, data, layout, idx, None, p_clip_caption=0, p_drop=0,
                                             train=False)
        vis = packing.visual_mask(layout)
        with autocast(device):      # one full training step's worth of work (forward + backward), then undone
            la, tl_f, _ = gpt_forward(model, layout, vis, text, inp, bits, lens, "flex", compiled)
        la.backward()
        bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
        model.zero_grad(set_to_none=True)
        if bad:
            raise FloatingPointError(f"non-finite gradients with flex attention in {bad[:3]}")
        k = min(2, batch)
        with torch.no_grad(), autocast(device):
            _, tl_m, _ = gpt_forward(model, layout, vis, text[:k], inp[:k], bits[:k], lens[:k], "mask", False)
        lf = (tl_f[:k] * layout.weight).sum(-1)
        lm = (tl_m * layout.weight).sum(-1)
        diff = float((lf - lm).abs().max())
        if not diff < 1e-2 * max(1.0, float(lm.abs().max())):
            raise RuntimeError(f"flex and dense-mask losses differ: {lf.tolist()} vs {lm.tolist()}")
        log.event(f"attention: flex (compiled), batch {batch}; loss agrees with the dense mask to {diff:.2e}; "
                  f"compile + check {time.time() - t0:.1f} s")
        return "flex", compiled
    except Exception as e:   # noqa: BLE001 - any failure of the fast path falls back to the reference path
        model.zero_grad(set_to_none=True)
        if args.attn == "flex":
            raise
        log.event(f"attention: dense mask (flex unavailable: {type(e).__name__}: {str(e)[:300]})")
        return "mask", False


def train_gpt(args, spec: TrainSpec, data: GPTData, val: GPTData | None, device, log: Log, out: Path):
    cfg = spec.transformer_config()
    schedule = spec.build_schedule()
    layout = packing.build_layout(schedule, cfg, spec.text_pad, multiple=packing.FLEX_BLOCK, device=device)
    model = STARTransformer(cfg).to(device)
    init_transformer_(model, text_std=float(data.emb[0, :int(data.emb_len[0])].std()))
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and n != "cfg_uncond"]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2 or n == "cfg_uncond"]
    opt = torch.optim.AdamW([dict(params=decay, weight_decay=args.wd_gpt), dict(params=no_decay, weight_decay=0.0)],
                            lr=args.lr_gpt, betas=(0.9, 0.95))
    state = dict(step=0, seconds=0.0, rewarm_from=0)
    ck = out / "gpt.pt"
    gen = torch.Generator(device=data.inp.device)
    gen.manual_seed(args.seed)
    full, portable = find_checkpoint(args, out, "gpt")
    if full is not None:
        sd = torch.load(full, map_location=device, weights_only=True)
        model.load_state_dict(sd["model"])
        opt.load_state_dict(sd["opt"])
        state.update(sd["state"])
        set_rng_state(state.pop("rng", None), gen=gen)
        log.event(f"transformer resumed from {full} at step {state['step']}")
    elif portable is not None:
        state.update(load_portable(portable, "gpt", model))
        state["rewarm_from"] = state["step"]
        gen.manual_seed(args.seed + state["step"])
        log.event(f"transformer resumed from the portable checkpoint {portable} at step {state['step']} (optimizer "
                  f"restarted with a {args.warmup_gpt}-step warm-up)")

    def save():
        state["rng"] = rng_state(gen=gen)
        atomic_save(dict(model=model.state_dict(), opt=opt.state_dict(), state=state, spec=spec.to_dict()), ck)
        state.pop("rng")
        if args.portable:
            save_portable(Path(args.portable), "gpt", model, state)

    if args.minutes_gpt <= 0:
        log.event("transformer training skipped (--minutes-gpt 0)")
        return model.eval(), state
    target = args.gpt_steps
    mode, compiled = pick_attention(args, model, layout, data, device, log, args.batch_gpt)
    batch = args.batch_gpt if mode == "flex" else args.batch_gpt_mask
    vis = packing.visual_mask(layout)
    n_img_scales = len(schedule.clip_scales(0))
    budget = Budget(args.minutes_gpt * 60, args.deadline)
    pb = bar(budget.seconds, "transformer")
    model.train()
    tick = Ticker(pb, budget, save, log, args.ckpt_minutes * 60)
    losses = []
    acc_ema = None
    while not budget.done() and (args.max_gpt_steps is None or state["step"] < args.max_gpt_steps) \
            and (target is None or state["step"] < target):
        step = state["step"]
        idx = torch.randint(len(data), (batch,), generator=gen, device=data.inp.device)
        text, inp, bits, lens = sample_batch(model, data, layout, idx, gen, p_clip_caption=args.p_clip_caption,
                                             p_drop=args.p_drop)
        progress = budget.progress if target is None else step / target
        lr = lr_at(args.lr_gpt, step, args.warmup_gpt, progress)
        if state["rewarm_from"]:
            lr *= min(1.0, (step - state["rewarm_from"] + 1) / max(1, args.warmup_gpt))
        set_lr(opt, lr)
        with autocast(device):
            loss, tok_loss, tok_acc = gpt_forward(model, layout, vis, text, inp, bits, lens, mode, compiled,
                                                  weight=token_weight(layout, data.image_only[idx], n_img_scales))
        lv, gn = optimizer_step(opt, loss, model.parameters(), "transformer", step)
        state["step"] += 1
        losses.append(lv)
        if state["step"] % args.log_every == 0 or state["step"] == 1:
            acc = packing.per_scale(tok_acc, layout)
            acc_ema = acc if acc_ema is None else 0.8 * acc_ema + 0.2 * acc
            row = dict(step=state["step"], time=round(budget.elapsed, 2), loss=lv, grad_norm=float(gn),
                       lr=opt.param_groups[0]["lr"], bit_acc=round(float(tok_acc.mean()), 4))
            if state["step"] % (args.log_every * 5) == 0 or state["step"] == 1:
                row["acc_per_scale"] = [round(float(a), 4) for a in acc]
            log.add("gpt", **row)
            pb.set_postfix_str(f"step {state['step']} loss {lv:.4f} bit-acc {float(tok_acc.mean()):.3f}", refresh=False)
        tick()
    pb.close()
    state["seconds"] += budget.elapsed
    save()
    n = len(losses)
    log.event(f"transformer: {n} steps of batch {batch} ({mode}), loss "
              f"{np.mean(losses[:5]) if losses else float('nan'):.4f} -> "
              f"{np.mean(losses[-5:]) if losses else float('nan'):.4f}, {n * batch / max(budget.elapsed, 1e-9):.1f} "
              f"samples/s")
    log.data["gpt_attention"] = dict(mode=mode, compiled=compiled, batch=batch)
    if val is not None and len(val):
        v = teacher_forced_accuracy(model, val, layout, mode, compiled, device, batch=batch, limit=args.val_windows)
        log.data["gpt_val"] = v
        log.event(f"held-out teacher-forced bit accuracy per scale: {v['acc_per_scale']}", loss=v["loss"])
    tr = teacher_forced_accuracy(model, data, layout, mode, compiled, device, batch=batch, limit=args.val_windows)
    log.data["gpt_train_eval"] = tr
    return model.eval(), state


# ------------------------------------------------------------------------------------------------------------------
# export

def _fp16_state(module) -> dict:
    out = {}
    for k, v in module.state_dict().items():
        v = v.detach().cpu()
        if v.is_floating_point():
            if v.abs().max() > 6e4:
                raise OverflowError(f"{k} has values beyond the fp16 range")
            v = v.to(torch.float16)
        out[k] = v.contiguous().clone()
    return out


def save_sharded(tensors: dict, folder: Path, max_bytes: int = MAX_FILE_BYTES) -> list[Path]:
    """safetensors shards of at most ``max_bytes`` + ``model.safetensors.index.json`` (the release's layout)."""
    from safetensors.torch import save_file
    from ..checkpoint import INDEX_NAME
    folder.mkdir(parents=True, exist_ok=True)
    for old in list(folder.glob("model-*.safetensors")) + [folder / INDEX_NAME]:
        old.unlink(missing_ok=True)
    shards, cur, size = [], {}, 0
    for k, v in tensors.items():
        nb = v.numel() * v.element_size()
        if cur and size + nb > max_bytes - 65536:
            shards.append(cur)
            cur, size = {}, 0
        cur[k] = v
        size += nb
    if cur:
        shards.append(cur)
    n = len(shards)
    weight_map, paths, total = {}, [], 0
    for i, sh in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        save_file(sh, str(folder / name), metadata={"format": "pt"})
        paths.append(folder / name)
        for k, v in sh.items():
            weight_map[k] = name
            total += v.numel() * v.element_size()
    (folder / INDEX_NAME).write_text(json.dumps(dict(metadata=dict(total_size=total), weight_map=weight_map),
                                                indent=1))
    return paths


def export_weights(folder: Path, vae: VideoVAE, model: STARTransformer, spec: TrainSpec, log: Log | None = None,
                   extra: dict | None = None) -> dict:
    """Write a faststar testbed model folder: transformer/ (shards), vae.safetensors, config.json."""
    from safetensors.torch import save_file
    from ..pipeline import config_to_dict
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    single = folder / "transformer.safetensors"
    single.unlink(missing_ok=True)
    save_sharded(_fp16_state(model), folder / "transformer")
    save_file(_fp16_state(vae), str(folder / "vae.safetensors"), metadata={"format": "pt"})
    cfg = dict(kind="faststar-testbed", name=spec.name, fps=args_fps(spec),
               resolution=f"{spec.pixel_hw[0]}x{spec.pixel_hw[1]}", duration=1,
               transformer=model.cfg.to_dict(), vae=config_to_dict(vae.cfg), schedule=spec.schedule,
               text_encoder=TEXT_ENCODER, guidance=dict(GUIDANCE), pixel_hw=list(spec.pixel_hw),
               pixel_frames=spec.pixel_frames)
    cfg.update(extra or {})
    (folder / "config.json").write_text(json.dumps(cfg, indent=1))
    sizes = {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}
    big = {k: v for k, v in sizes.items() if v > 16 * 2 ** 20}
    if big:
        raise RuntimeError(f"exported files over 16 MiB: {big}")
    if log is not None:
        log.event(f"exported to {folder}: {len(sizes)} files, {sum(sizes.values()) / 2**20:.1f} MiB", files=sizes)
    return sizes


def args_fps(spec: TrainSpec) -> int:
    """Frame rate to write generated clips at: the training clips run at 10-15 fps (median 12.5)."""
    return 12 if spec.name.startswith(NAME) else FPS


@torch.no_grad()
def render_samples(model: STARTransformer, vae: VideoVAE, spec: TrainSpec, data: GPTData, val: Frames | None,
                   path: Path, seed: int = 0) -> dict:
    """A contact sheet (PNG): generated clips for a few captions (the engine's ``generate`` with the default
    guidance), then a held-out window and its reconstruction through the multi-scale quantizer. Frames 0, 4, ...
    of each clip, half size."""
    from ..generate import generate
    from ..sampling import GuidanceConfig
    schedule = spec.build_schedule()
    length = spec.pixel_frames
    model.eval()
    vae.eval()
    names = data.names
    want = [k for k in ("box.1", "vtest.0", "bigbuckbunny.1", "cup") if k in names] or names[:2]
    rows, labels = [], []
    for key in want[:4]:
        i = names.index(key)
        text = data.emb[i, :int(data.emb_len[i])].float()
        out = generate(model, schedule, text, seed=seed, guidance=GuidanceConfig(**GUIDANCE))
        rows.append(vae.decode(out.latent.to(vae.proj_down.weight.device)).clamp(-1, 1)[0])
        labels.append(f"generated: {key}")
    if val is not None and val.windows(length, length):
        ci, s0 = val.windows(length, length)[0]
        x = val.video(ci, s0, length)[None]
        rows.append(x[0])
        rows.append(vae.decode(quantize_batch(vae.encode(x), schedule)).clamp(-1, 1)[0])
        labels += ["held-out", "held-out through VAE + quantizer"]
    picks = list(range(0, length, 4))
    grid = torch.cat([torch.cat([r[:, t] for t in picks], dim=-1) for r in rows], dim=-2)   # [3, H*, W*]
    grid = F.interpolate(grid[None], scale_factor=0.5, mode="area")[0]
    img = ((grid.permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        from PIL import Image
        Image.fromarray(img).save(path)
    except ImportError:
        import cv2
        cv2.imwrite(str(path), img[..., ::-1])
    return dict(path=str(path), rows=labels, frames=picks)


# ------------------------------------------------------------------------------------------------------------------
# main

def parse_args(argv=None):
    p = argparse.ArgumentParser(description="train the faststar testbed (VAE, then transformer) and export it")
    p.add_argument("--data", default=str(REPO / ".carry" / "testbed_data"), help="prepare_data output folder")
    p.add_argument("--out", default=str(REPO / "out" / "testbed_run"), help="checkpoints and logs")
    p.add_argument("--export", default=str(DEFAULT_EXPORT), help="where the model folder is written")
    p.add_argument("--spec", default="testbed", choices=sorted(SPECS))
    p.add_argument("--minutes-vae", type=float, default=8.4)
    p.add_argument("--minutes-gpt", type=float, default=4.5)
    p.add_argument("--max-minutes", type=float, default=None,
                   help="hard wall-clock limit for the whole run (training phases stop early to fit; export included)")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="PATH",
                   help="continue from the checkpoints of --out (vae.pt / gpt.pt: exact), or of PATH (a run folder, "
                        "or a --portable folder: weights and step, the optimizer restarts with a warm-up)")
    p.add_argument("--portable", default=None, metavar="DIR",
                   help="also write a compact checkpoint (fp16 weights sharded under 16 MiB + loop state) to DIR at "
                        "every checkpoint: what a device call can send back ($OUT) and the next one resume from")
    p.add_argument("--vae-steps", type=int, default=None,
                   help="the VAE's length in steps: phase split and LR by step, so that calls of any length add up "
                        "to the same training (default: by --minutes-vae)")
    p.add_argument("--gpt-steps", type=int, default=None, help="the transformer's length in steps (as --vae-steps)")
    p.add_argument("--photo-frac", type=float, default=0.25,
                   help="share of VAE steps that train on photos (one-frame videos) when the data has photos")
    p.add_argument("--photo-batch-mult", type=int, default=4, help="a photo step's batch = this x the clip batch")
    p.add_argument("--no-photos", action="store_true", help="train on the clips only")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--attn", default="auto", choices=["auto", "flex", "mask"])
    # VAE
    p.add_argument("--batch-vae", type=int, default=None, help="phase 1 batch (default 8 on GPU, 1 on CPU)")
    p.add_argument("--batch-vae-q", type=int, default=None, help="phase 2 batch (default 2 on GPU, 1 on CPU)")
    p.add_argument("--init-vae", default=None,
                   help="use the VAE of an exported model folder (or a vae.safetensors); no VAE training then")
    p.add_argument("--lr-vae", type=float, default=1e-3)
    p.add_argument("--warmup-vae", type=int, default=100)
    p.add_argument("--vae-phase1-frac", type=float, default=0.75)
    p.add_argument("--kl-weight", type=float, default=1e-4)
    p.add_argument("--commit-weight", type=float, default=0.1)
    p.add_argument("--calib-windows", type=int, default=8)
    p.add_argument("--max-vae-steps", type=int, default=None)
    # transformer
    p.add_argument("--batch-gpt", type=int, default=None, help="batch with flex attention (default 8 GPU, 1 CPU)")
    p.add_argument("--batch-gpt-mask", type=int, default=None, help="batch with the dense mask (default 2 GPU)")
    p.add_argument("--lr-gpt", type=float, default=8e-4)
    p.add_argument("--wd-gpt", type=float, default=0.05)
    p.add_argument("--warmup-gpt", type=int, default=100)
    p.add_argument("--p-drop", type=float, default=0.1, help="caption dropout (trains cfg_uncond)")
    p.add_argument("--p-clip-caption", type=float, default=0.3, help="use the clip caption instead of the segment's")
    p.add_argument("--window-stride", type=int, default=2)
    p.add_argument("--windows-per-clip", type=int, default=160)
    p.add_argument("--no-flips", action="store_true")
    p.add_argument("--max-gpt-steps", type=int, default=None)
    # misc
    p.add_argument("--max-frames", type=int, default=None, help="use only the first frames of each clip (tests)")
    p.add_argument("--val-windows", type=int, default=8)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--ckpt-minutes", type=float, default=2.0)
    p.add_argument("--samples", default=None, help="write a PNG contact sheet of generated and reconstructed clips")
    return p.parse_args(argv)


def _portable_log(args, log: Log) -> None:
    """The JSON log beside the portable checkpoint, so that a resume on a fresh machine keeps the history."""
    if args.portable:
        Path(args.portable).mkdir(parents=True, exist_ok=True)
        (Path(args.portable) / "train_log.json").write_text(json.dumps(log.data, indent=1))



def main(argv=None) -> dict:
    args = parse_args(argv)
    t_start = time.time()
    # training loops stop 45 s before the limit: evaluation, export and the sample sheet follow them
    args.deadline = None if args.max_minutes is None else t_start + args.max_minutes * 60 - 45
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    cuda = device.type == "cuda"
    args.batch_vae = args.batch_vae or (8 if cuda else 1)
    args.batch_vae_q = args.batch_vae_q or (2 if cuda else 1)
    args.batch_gpt = args.batch_gpt or (8 if cuda else 1)
    args.batch_gpt_mask = args.batch_gpt_mask or (2 if cuda else 1)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    spec: TrainSpec = SPECS[args.spec]()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = Log(out / "train_log.json", args.resume)
    if isinstance(args.resume, str) and not (out / "train_log.json").exists() \
            and (Path(args.resume) / "train_log.json").exists():
        log.data = json.loads((Path(args.resume) / "train_log.json").read_text())    # a fresh machine: the history
    log.data.setdefault("runs", []).append(dict(argv=sys.argv[1:] if argv is None else list(argv), start=t_start,
                                                device=str(device), torch=torch.__version__,
                                                gpu=torch.cuda.get_device_name(0) if cuda else None))
    log.data["spec"] = spec.to_dict()
    log.event(f"device {device}, spec {spec.name}, data {args.data}")
    train_clips = load_clips(args.data, "train", max_frames=args.max_frames)
    val_clips = load_clips(args.data, "val", max_frames=args.max_frames)
    frames = Frames(train_clips, device, spec.pixel_hw)
    val = Frames(val_clips, device, spec.pixel_hw) if val_clips else None
    photos = val_photos = None
    if not args.no_photos:
        from .data import load_photos
        tp, vp = load_photos(args.data, "train"), load_photos(args.data, "val")
        photos = Photos(tp, device, spec.pixel_hw) if tp else None
        val_photos = Photos(vp, device, spec.pixel_hw) if vp else None
    log.event(f"loaded {sum(f.shape[0] for f in frames.frames)} training frames from {len(train_clips)} clips, "
              f"{sum(f.shape[0] for f in val.frames) if val else 0} held-out frames, "
              f"{len(photos) if photos else 0} training and {len(val_photos) if val_photos else 0} held-out photo "
              f"crops ({time.time() - t_start:.1f} s)")
    schedule = spec.build_schedule()

    vae, vae_state = train_vae(args, spec, frames, val, device, log, out, photos, val_photos)
    if args.vae_steps is not None and vae_state.get("step", 0) < args.vae_steps and not args.init_vae:
        log.data["summary"] = dict(vae_steps=vae_state.get("step", 0), vae_target=args.vae_steps, unfinished="vae",
                                   wall_minutes=round((time.time() - t_start) / 60, 2))
        log.event(f"done in {(time.time() - t_start) / 60:.2f} min (VAE unfinished: no transformer, no export)")
        _portable_log(args, log)
        return log.data
    embs = load_embeddings(args.data)
    store = torch.bfloat16 if cuda else torch.float32
    data = build_gpt_data(vae, frames, schedule, spec, embs, device, stride=args.window_stride,
                          cap=args.windows_per_clip, flips=not args.no_flips, store_dtype=store, log=log,
                          photos=photos)
    vdata = build_gpt_data(vae, val, schedule, spec, embs, device, stride=spec.pixel_frames, cap=args.val_windows,
                           flips=False, store_dtype=store) if val is not None else None
    failure = None
    try:
        model, gpt_state = train_gpt(args, spec, data, vdata, device, log, out)
    except Exception as e:  # noqa: BLE001 - export what exists (the VAE, the last transformer checkpoint) first
        import traceback
        failure = e
        log.event(f"transformer training failed: {type(e).__name__}: {e}", traceback=traceback.format_exc())
        model, gpt_state = STARTransformer(spec.transformer_config()), {}
        if (out / "gpt.pt").exists():
            sd = torch.load(out / "gpt.pt", map_location="cpu", weights_only=True)
            model.load_state_dict(sd["model"])
            gpt_state = sd["state"]
        model = model.to(device).eval()

    summary = dict(vae_steps=vae_state.get("step", 0), gpt_steps=gpt_state.get("step", 0),
                   vae_val=log.data.get("vae_val"), vae_val_photos=log.data.get("vae_val_photos"),
                   gpt_val=log.data.get("gpt_val"),
                   calibration=vae_state.get("calibration"), wall_minutes=round((time.time() - t_start) / 60, 2))
    log.data["summary"] = summary
    if args.export:
        export_weights(Path(args.export), vae, model, spec, log, extra=dict(training=summary))
        log.flush()
        (Path(args.export) / "train_log.json").write_text(json.dumps(log.data, indent=1))
    if args.samples and failure is None:
        try:
            info = render_samples(model, vae, spec, data, val, Path(args.samples), seed=args.seed)
            log.event(f"samples written to {info['path']}: rows {info['rows']}")
        except Exception as e:  # noqa: BLE001 - a preview must not lose the trained weights
            log.event(f"samples failed: {type(e).__name__}: {e}")
    log.event(f"done in {(time.time() - t_start) / 60:.2f} min")
    _portable_log(args, log)
    if args.export:
        (Path(args.export) / "train_log.json").write_text(json.dumps(log.data, indent=1))
    if failure is not None:
        raise failure
    return log.data


if __name__ == "__main__":
    main()
