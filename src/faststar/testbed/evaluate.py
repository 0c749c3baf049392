"""Evaluate an exported testbed model on the held-out clip and write its model card (runs on the CPU).

    python -m faststar.testbed.evaluate [--weights src/faststar/testbed/weights] [--data .carry/testbed_data]

Measures, on windows of the held-out clip (cup.mp4, never seen in training):

* VAE reconstruction PSNR with the engine's chunked inference encode/decode, directly and through the multi-scale
  quantizer of the schedule (what generation decodes: a sum of codes);
* teacher-forced bit accuracy and bit cross-entropy per scale: the transformer sees the true canvas of every step
  (the packed training forward, identical to what ``generate`` feeds it) and predicts the next bits.

Writes ``eval.json`` and ``MODEL_CARD.md`` into the weights folder (``--card`` to put the card elsewhere).

``--heldout OUT.json`` measures what issue 24 asks of a sharper testbed instead (no card), on the held-out split of a
pack (``python -m faststar.testbed.sources``):

* VAE reconstruction PSNR on held-out clips (windows) and held-out photos (crops as one-frame videos), plain and
  through the quantizer (``photo_psnr``);
* teacher-forced bit accuracy per scale on held-out clips (as above);
* the image-to-video SSIM decay curve (``ssim_decay``): SSIM (RGB, ``faststar.metrics.ssim``) between frame k and
  frame 0, k = 0 .. 16, of videos generated from held-out photos (their captions as prompts), against the same curve
  of the held-out real clips' own windows. A generated video that keeps its subject decays no faster than real
  footage.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import load_checkpoint
from ..config import TransformerConfig
from ..model.transformer import STARTransformer
from ..pipeline import config_from_dict, load_vae
from ..vae.model import VAEConfig
from . import packing
from .config import TrainSpec
from .data import CAPTIONS_FILE, load_clips, load_embeddings
from .train import DEFAULT_EXPORT, REPO, Frames, photo_psnr, psnr, quantize_batch


def spec_from_config(cfg: dict) -> TrainSpec:
    return TrainSpec(name=cfg["name"], pixel_hw=tuple(cfg["pixel_hw"]), schedule=cfg["schedule"], vae=cfg["vae"],
                     transformer=cfg["transformer"], text_pad=cfg.get("text_pad", 64))


def load_models(folder: Path, device="cpu"):
    cfg = json.loads((folder / "config.json").read_text())
    tcfg = TransformerConfig.from_dict(cfg["transformer"])
    model = STARTransformer(tcfg)
    load_checkpoint(model, folder / "transformer" if (folder / "transformer").is_dir()
                    else folder / "transformer.safetensors", what="transformer")
    vae = load_vae(folder / "vae.safetensors", config_from_dict(VAEConfig, cfg["vae"]), device)
    return cfg, model.to(device).eval(), vae


@torch.no_grad()
def evaluate(folder: Path, data_dir: Path, windows: int = 3, split: str = "val", log_every=print) -> dict:
    cfg, model, vae = load_models(folder)
    spec = spec_from_config(cfg)
    schedule = spec.build_schedule()
    length = spec.pixel_frames
    text_pad = max(spec.text_pad, 1)
    layout = packing.build_layout(schedule, model.cfg, text_pad)
    vis = packing.visual_mask(layout)
    embs = load_embeddings(data_dir)
    clips = load_clips(data_dir, split)
    if not clips:
        raise ValueError(f"no {split!r} clips in {data_dir}")
    rows = []
    fr = Frames(clips, torch.device("cpu"), spec.pixel_hw)      # resized when the model is smaller (tests)
    for ci, clip in enumerate(clips):
        starts = clip.window_starts(length, length)
        starts = [starts[int(i)] for i in np.linspace(0, len(starts) - 1, min(windows, len(starts)))]
        for s in starts:
            t0 = time.time()
            x = fr.video(ci, s, length)[None]
            z = vae.encode(x)
            p_plain = psnr(vae.decode(z), x)
            zq = quantize_batch(z, schedule)
            p_q = psnr(vae.decode(zq), x)
            rel = float(((zq - z).pow(2).sum() / z.pow(2).sum()).item())
            inp, bits = packing.teacher_data(z, schedule)
            key = clip.window_caption_key(s, length)
            e = embs[key][:text_pad]
            text = torch.zeros(1, text_pad, e.shape[-1])
            text[0, :e.shape[0]] = e
            xin = packing.embed_inputs(model, text, inp[None], layout)
            mask = packing.dense_mask(layout, torch.tensor([e.shape[0]]), vis)
            h = packing.packed_hidden(model, xin, layout, mask, "mask")
            loss, tok_loss, tok_acc = packing.bit_loss(model, h, bits[None], layout)
            row = dict(clip=clip.name, start=s, caption=clip.captions[key], psnr=p_plain, psnr_quantized=p_q,
                       quant_rel_err=rel, loss=loss.item(),
                       acc_per_scale=[float(a) for a in packing.per_scale(tok_acc, layout)],
                       loss_per_scale=[float(a) for a in packing.per_scale(tok_loss, layout)],
                       bit_acc=float(tok_acc.mean()), seconds=time.time() - t0)
            rows.append(row)
            log_every(f"{clip.name}@{s}: PSNR {p_plain:.2f} dB (quantized {p_q:.2f}), loss {row['loss']:.4f}, "
                      f"bit acc {row['bit_acc']:.4f} ({row['seconds']:.0f} s)")
    scales = [dict(scale=s.index, clip=s.clip, thw=list(s.thw), bits=s.bits, reps=s.reps) for s in schedule.scales]
    acc = np.mean([r["acc_per_scale"] for r in rows], axis=0)
    lps = np.mean([r["loss_per_scale"] for r in rows], axis=0)
    for sc, a, lo in zip(scales, acc, lps):
        sc["bit_acc"] = round(float(a), 4)
        sc["bit_ce"] = round(float(lo), 4)
    return dict(split=split, windows=len(rows), psnr=float(np.mean([r["psnr"] for r in rows])),
                psnr_quantized=float(np.mean([r["psnr_quantized"] for r in rows])),
                quant_rel_err=float(np.mean([r["quant_rel_err"] for r in rows])),
                loss=float(np.mean([r["loss"] for r in rows])), bit_acc=float(np.mean([r["bit_acc"] for r in rows])),
                per_scale=scales, rows=rows)


def frame_ssim_curve(frames: np.ndarray, n: int = 17) -> list[float]:
    """SSIM (RGB) between frame k and frame 0 of a uint8 video [T, H, W, 3], k = 0 .. n - 1."""
    from ..metrics import ssim
    if frames.shape[0] < n:
        raise ValueError(f"need {n} frames, the video has {frames.shape[0]}")
    return [ssim(frames[k], frames[0]) for k in range(n)]


@torch.no_grad()
def ssim_decay(weights: Path, data_dir: Path, n_frames: int = 17, max_photos: int | None = None,
               max_windows: int = 3, seed: int = 0, device: str = "cpu", log=print) -> dict:
    """The image-to-video SSIM decay curve on held-out photos (generated) against held-out real clips (their own
    frames). Returns the mean curves and each video's."""
    from ..pipeline import FastStarPipeline
    from .data import load_photos
    photos = load_photos(data_dir, "val")
    if max_photos is not None:
        photos = photos[:max_photos]
    pipe = FastStarPipeline.from_pretrained(weights, device=device)
    H, W = pipe.spec.schedule(None, None).pixel_size()
    gen = []
    for p in photos:
        t0 = time.time()
        out = pipe(p.caption, image=np.ascontiguousarray(p.images[0]), seed=seed, progress=False)
        c = frame_ssim_curve(out.frames, n_frames)
        gen.append(dict(photo=p.name, caption=p.caption, curve=c))
        log(f"i2v {p.name}: SSIM(frame {n_frames - 1}, frame 0) {c[-1]:.3f} ({time.time() - t0:.0f} s)")
    real = []
    for clip in load_clips(data_dir, "val"):
        fr = Frames([clip], torch.device("cpu"), (H, W))
        starts = clip.window_starts(n_frames, n_frames)
        starts = [starts[int(i)] for i in np.linspace(0, len(starts) - 1, min(max_windows, len(starts)))] \
            if starts else []
        for s in starts:
            v = fr.frames[0][s:s + n_frames].cpu().numpy()
            real.append(dict(clip=clip.name, start=s, curve=frame_ssim_curve(v, n_frames)))
    mean = (lambda rows: [float(x) for x in np.mean([r["curve"] for r in rows], axis=0)] if rows else None)
    return dict(frames=list(range(n_frames)), generated_from_photos=mean(gen), real_clips=mean(real),
                photos=gen, clips=real, seed=seed)


def heldout_report(weights: Path, data_dir: Path, windows: int = 2, max_photos: int | None = None,
                   max_i2v: int | None = 4, log=print) -> dict:
    """Every held-out measure of issue 24 for one model folder: VAE PSNR on held-out clips and photos, teacher-forced
    bit accuracy per scale on held-out clips, the image-to-video SSIM decay curves."""
    from .data import load_photos
    t0 = time.time()
    ev = evaluate(weights, data_dir, windows=windows, log_every=log)
    cfg, _, vae = load_models(weights)
    hw = tuple(spec_from_config(cfg).pixel_hw)
    imgs = [im for p in load_photos(data_dir, "val") for im in p.images[:1]][:max_photos]
    imgs = [im if im.shape[:2] == hw else _resize_image(im, hw) for im in imgs]
    ph = photo_psnr(vae, imgs, spec_from_config(cfg).build_schedule())
    log(f"held-out photos: PSNR {ph['psnr']:.2f} dB, quantized {ph['psnr_quantized']:.2f} dB ({ph['photos']} photos)")
    dec = ssim_decay(weights, data_dir, max_photos=max_i2v, log=log)
    return dict(weights=str(weights), data=str(data_dir), date=time.strftime("%Y-%m-%d %H:%M"),
                clips=dict(windows=ev["windows"], clips=sorted({r["clip"] for r in ev["rows"]}), psnr=ev["psnr"],
                           psnr_quantized=ev["psnr_quantized"], bit_acc=ev["bit_acc"], loss=ev["loss"],
                           per_scale=ev["per_scale"]),
                photos={k: v for k, v in ph.items()}, ssim_decay=dec, seconds=round(time.time() - t0, 1))


def _resize_image(im: np.ndarray, hw) -> np.ndarray:
    from PIL import Image
    return np.asarray(Image.fromarray(im).resize((hw[1], hw[0]), Image.LANCZOS))


def _fmt(v, nd=2):
    return "n/a" if v is None else f"{v:.{nd}f}"


def model_card(folder: Path, data_dir: Path, ev: dict) -> str:
    cfg = json.loads((folder / "config.json").read_text())
    log = json.loads((folder / "train_log.json").read_text()) if (folder / "train_log.json").exists() else {}
    meta = json.loads((data_dir / CAPTIONS_FILE).read_text())
    tr = cfg.get("training", {}) or {}
    runs = log.get("runs", [])
    t, v = cfg["transformer"], cfg["vae"]
    sched = spec_from_config(cfg).build_schedule()
    lines = [f"# {cfg['name']}: a small InfinityStar-architecture model trained on a few real clips", ""]
    lines += ["A testbed for the faststar engine: the InfinityStar architecture (STAR transformer with bitwise heads, "
              "the video VAE with DC blocks, multi-scale BSQ, 2 clips with KV-cache conditioning) at a size that "
              "trains in minutes on one GPU. It reproduces the footage it was trained on in a rough way; it is "
              "not a general text-to-video model.", ""]
    lines += ["## Model", "",
              f"* Output: {cfg['pixel_frames']} frames of {cfg['pixel_hw'][0]}x{cfg['pixel_hw'][1]} "
              f"(latent {sched.latent_frames}x{sched.final_hw[0]}x{sched.final_hw[1]}), written at {cfg['fps']} fps.",
              f"* Transformer: depth {t['depth']}, width {t['width']}, {t['num_heads']} heads, {t['num_kv_heads']} "
              f"KV heads, text {t['text_channels']}-d ({cfg['text_encoder']}: all-MiniLM-L6-v2 token states), "
              f"cfg_uncond {t['cfg_uncond_len']} rows. Weights fp16, official key names, sharded in transformer/.",
              f"* VAE: the engine VideoVAE with block_out_channels {v['block_out_channels']}, layers_per_block "
              f"{v['layers_per_block']} (16x spatial, 4x temporal, 64 latent channels); fp16, official key names.",
              f"* Schedule: {len(sched.scales)} scales, {sched.num_steps} steps, clips {list(sched.clip_thw)}; "
              f"pyramid {cfg['schedule']['pyramid']}; semantic scales {cfg['schedule']['semantic_scales']} "
              f"(16 bits), detail 64 bits; reps image {cfg['schedule']['image_reps']}, video "
              f"{cfg['schedule']['video_reps']}; tau {cfg['schedule']['tau_image']} / {cfg['schedule']['tau_video']}.",
              f"* Guidance default: {cfg.get('guidance')}.", ""]
    lines += ["## Data", "", "| clip | split | files | frames | fps | source | license |",
              "|---|---|---|---|---|---|---|"]
    by_key: dict = {}
    for c in meta["clips"]:                      # a clip cut into windows is one row
        by_key.setdefault(c["key"], []).append(c)
    for key, cs in by_key.items():
        c = cs[0]
        src = c["source"] if "package" not in c else f"{c['package']}: {c['source']}"
        lines.append(f"| {key} | {c['split']} | {len(cs)} | {sum(x['frames'] for x in cs)} | {c['fps']} | {src} "
                     f"(sha256 {c['source_sha256'][:12]}...) | {c['license']} |")
    if meta.get("photos"):
        lines += ["", "| photo | split | crops | source | license |", "|---|---|---|---|---|"]
        for ph in meta["photos"]:
            lines.append(f"| {ph['name']} | {ph['split']} | {len(ph['files'])} | {ph['package']}: {ph['source']} "
                         f"(sha256 {ph['source_sha256'][:12]}...) | {ph['license']} |")
        if meta.get("photos_left_out"):
            lines += ["", f"Photos left out as too small for 256x448 (over 1.6x upscaling): "
                      f"{', '.join(meta['photos_left_out'])}."]
    held_c = sorted({c["key"] for c in meta["clips"] if c["split"] == "val"})
    held_p = [ph["name"] for ph in meta.get("photos", []) if ph["split"] == "val"]
    lines += ["", f"**Held-out split** (never read by training): clips {', '.join(held_c)}"
              + (f"; photos {', '.join(held_p)}" if held_p else "") + "."]
    lines += ["", "Every frame is cover-resized and centre-cropped to 256x448 and subsampled by an integer stride to "
              "10-15 fps. Training windows are 17 frames that do not cross a shot cut; horizontal flips double them.",
              "", "Captions (written by hand from frames of each clip; a window uses the caption of the segment that "
              "holds its middle frame, or 30 % of the time the clip caption; 10 % of the time no caption, which "
              "trains cfg_uncond):", ""]
    for c in meta["clips"]:
        lines.append(f"* **{c['name']}**: {c['caption']}")
        for s in c["segments"]:
            lines.append(f"  * frames {s['start']}-{s['end']}: {s['caption']}")
    lines += ["", "## Training", ""]
    for i, run in enumerate(runs):
        what = "" if len(runs) == 1 else f" ({i + 1} of {len(runs)})"
        lines.append(f"* Command{what}: `python -m faststar.testbed.train {' '.join(run.get('argv', []))}` on "
                     f"{run.get('gpu') or run.get('device')} (torch {run.get('torch')}).")
    cal = tr.get("calibration") or {}
    vae_rows = log.get("vae", [])
    gpt_rows = log.get("gpt", [])
    v0 = _fmt(vae_rows[0]["loss"], 4) if vae_rows else "n/a"
    v1 = _fmt(vae_rows[-1]["loss"], 4) if vae_rows else "n/a"
    lines.append(f"* VAE: {tr.get('vae_steps', 'n/a')} steps (L1 + MSE + small KL on random crops; then decoding "
                 f"the multi-scale-quantized latent, straight-through). Loss {v0} -> {v1}. Latent scale calibrated x"
                 f"{_fmt(cal.get('factor'), 3)} (relative quantization error {_fmt(cal.get('rel_err_before'), 3)} -> "
                 f"{_fmt(cal.get('rel_err'), 3)}).")
    att = log.get("gpt_attention", {})
    lines.append(f"* Transformer: {tr.get('gpt_steps', 'n/a')} steps of batch {att.get('batch', 'n/a')} "
                 f"({att.get('mode', 'n/a')} attention), teacher-forced packed sequences, bitwise cross-entropy. "
                 f"Loss {_fmt(gpt_rows[0]['loss'], 4) if gpt_rows else 'n/a'} -> "
                 f"{_fmt(gpt_rows[-1]['loss'], 4) if gpt_rows else 'n/a'}.")
    lines.append(f"* Wall time of the {'last ' if len(runs) > 1 else ''}run: {tr.get('wall_minutes', 'n/a')} min.")
    if tr.get("selection"):
        lines.append(f"* Selection: {tr['selection']}")
    lines += ["", f"## Evaluation on held-out {', '.join(sorted({r['clip'] for r in ev['rows']}))} "
              f"({ev['windows']} windows, CPU)", "",
              f"* VAE reconstruction PSNR: **{ev['psnr']:.2f} dB**; through the multi-scale quantizer (what "
              f"generation decodes): **{ev['psnr_quantized']:.2f} dB** (relative latent error "
              f"{ev['quant_rel_err']:.3f}).",
              f"* Teacher-forced bit accuracy {ev['bit_acc']:.4f}, loss {ev['loss']:.4f} (chance: 0.5, 0.6931).", "",
              "| scale | clip | t x h x w | bits | reps | bit acc | bit CE |", "|---|---|---|---|---|---|---|"]
    for s in ev["per_scale"]:
        lines.append(f"| {s['scale']} | {s['clip']} | {'x'.join(map(str, s['thw']))} | {s['bits']} | {s['reps']} | "
                     f"{s['bit_acc']:.4f} | {s['bit_ce']:.4f} |")
    sizes = {p.name: p.stat().st_size for p in folder.rglob("*.safetensors")}
    lines += ["", f"Weights: {sum(sizes.values()) / 2**20:.1f} MiB in {len(sizes)} safetensors files."]
    lines += ["", "Reproduce: `python -m faststar.testbed.data` (clips, captions, MiniLM embeddings), then the "
              "training command above, then `python -m faststar.testbed.evaluate`.", ""]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description="evaluate the exported testbed and write MODEL_CARD.md")
    p.add_argument("--weights", default=str(DEFAULT_EXPORT))
    p.add_argument("--data", default=str(REPO / ".carry" / "testbed_data"))
    p.add_argument("--windows", type=int, default=3, help="held-out windows to evaluate (CPU: ~1 min each)")
    p.add_argument("--card", default=None, help="where to write MODEL_CARD.md (default: the weights folder)")
    p.add_argument("--heldout", default=None, metavar="OUT_JSON",
                   help="measure the held-out split of a pack (clips and photos: VAE PSNR, bit accuracy per scale, "
                        "image-to-video SSIM decay) into OUT_JSON; no card")
    p.add_argument("--max-photos", type=int, default=None, help="--heldout: held-out photos for the VAE PSNR")
    p.add_argument("--max-i2v", type=int, default=4, help="--heldout: held-out photos to generate from (CPU: "
                                                          "~15-40 s each)")
    a = p.parse_args(argv)
    folder, data = Path(a.weights), Path(a.data)
    torch.set_grad_enabled(False)
    if a.heldout:
        rep = heldout_report(folder, data, windows=a.windows, max_photos=a.max_photos, max_i2v=a.max_i2v)
        Path(a.heldout).parent.mkdir(parents=True, exist_ok=True)
        Path(a.heldout).write_text(json.dumps(rep, indent=1))
        d = rep["ssim_decay"]
        print(f"held-out clips {rep['clips']['clips']}: VAE PSNR {rep['clips']['psnr']:.2f} dB (quantized "
              f"{rep['clips']['psnr_quantized']:.2f}), bit acc {rep['clips']['bit_acc']:.4f}; photos: VAE PSNR "
              f"{rep['photos']['psnr']:.2f} dB (quantized {rep['photos']['psnr_quantized']:.2f})")
        for name in ("generated_from_photos", "real_clips"):
            if d[name]:
                print(f"SSIM(frame k, frame 0) {name}: " + " ".join(f"{v:.3f}" for v in d[name]))
        print(f"wrote {a.heldout}")
        return rep
    ev = evaluate(folder, data, windows=a.windows)
    (folder / "eval.json").write_text(json.dumps(ev, indent=1))
    card = Path(a.card) if a.card else folder / "MODEL_CARD.md"
    card.write_text(model_card(folder, data, ev))
    print(f"wrote {folder / 'eval.json'} and {card}")
    return ev


if __name__ == "__main__":
    main()
