"""Check our VideoVAE and multi-scale quantizer against a golden VAE case folder (../shared/golden/vae_tiny).

The folder holds ``weights.safetensors`` (official keys), ``config.json`` (constructor namespace, key list),
``index.json`` (quantization schedule and steps) and ``data.safetensors`` (reference tensors). Every stage is fed
with the stored input of that stage (teacher forcing), so errors do not compound: decode runs on the stored z, the
quantizer on the stored z, ``decoded_from_bits_clamped`` on the stored ``summed_codes_from_bits``.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..schedule import Schedule, build_schedule
from .model import VAEConfig, VideoVAE
from .quant import multiscale_quantize, summed_codes_from_bits

# golden README section 7 (fp32 implementation)
ATOL_VAE = 1e-4
ATOL_QUANT_INPUT = 1e-5     # scale_input, residual
ATOL_QUANT_CODES = 1e-6     # codes, canvas, summed codes


def vae_config_from_case(cfg_json: dict) -> VAEConfig:
    """VAEConfig from a golden case's config.json (the official constructor namespace)."""
    ns = cfg_json["vae_ctor_namespace"]
    return VAEConfig(block_out_channels=tuple(ns["block_out_channels"]), layers_per_block=ns["layers_per_block"],
                     latent_channels=ns["latent_channels"],
                     spatial_compression_list=tuple(ns["spatial_compression_list"]),
                     temporal_compression_list=tuple(ns["temporal_compression_list"]),
                     semantic_dim=ns["semantic_scale_dim"], detail_dim=ns["detail_scale_dim"],
                     name="golden-case")


def load_case_vae(case_dir: str | Path) -> VideoVAE:
    """Build the case's VAE and load its weights with a strict key, order and shape check."""
    case = Path(case_dir)
    cfg_json = json.loads((case / "config.json").read_text())
    vae = VideoVAE(vae_config_from_case(cfg_json)).eval()
    sd = load_file(str(case / "weights.safetensors"))
    ours = list(vae.state_dict().keys())
    listed = [k for k, _, _ in cfg_json["state_dict_keys_in_order"]]
    missing, unexpected = sorted(set(listed) - set(ours)), sorted(set(ours) - set(listed))
    if missing or unexpected or ours != listed:
        raise ValueError(f"state-dict keys differ from {case / 'config.json'}: missing in ours {missing}, "
                         f"extra in ours {unexpected}, same order: {ours == listed}")
    vae.load_state_dict(sd, strict=True)
    for k, shape, _ in cfg_json["state_dict_keys_in_order"]:
        if list(sd[k].shape) != list(shape):
            raise ValueError(f"{k}: weights file has shape {list(sd[k].shape)}, config lists {shape}")
    return vae


def schedule_from_index(index: dict) -> Schedule:
    """The quantization schedule of a golden VAE case (index.json), cross-checked against its step list."""
    sch = index["schedule"]
    pyramid = [tuple(hw) for hw in sch["pyramid_hw"]]
    n = len(pyramid)
    thw = [tuple(x) for x in sch["scale_schedule_thw"]]
    if len(thw) % n:
        raise ValueError(f"{len(thw)} scales do not split into clips of {n} pyramid scales")
    clip_frames = [thw[c * n][0] for c in range(len(thw) // n)]
    min_tokens = sch["detail_scale_min_tokens"]
    semantic = sum(1 for h, w in pyramid if h * w < min_tokens)
    schedule = build_schedule(pyramid, clip_frames, image_reps=list(sch["image_scale_repetition"]),
                              video_reps=list(sch["video_scale_repetition"]), semantic_scales=semantic,
                              name="golden-vae")
    steps = index["steps"]
    if len(steps) != schedule.num_steps:
        raise ValueError(f"index.json has {len(steps)} steps, our schedule {schedule.num_steps}")
    for st, ref in zip(schedule.steps, steps):
        ours = (st.index, st.scale.index, st.rep, st.scale.clip, list(st.scale.thw), st.scale.bits)
        theirs = (ref["step"], ref["scale_index"], ref["repetition"], ref["clip"], ref["thw"], ref["bits_per_token"])
        if ours != theirs:
            raise ValueError(f"schedule step mismatch: ours {ours}, index.json {theirs}")
    return schedule


def _entry(name: str, ours: torch.Tensor, ref: torch.Tensor, atol: float) -> dict:
    if tuple(ours.shape) != tuple(ref.shape):
        return dict(name=name, max_abs_err=float("inf"), atol=atol, ok=False,
                    note=f"shape {tuple(ours.shape)} vs reference {tuple(ref.shape)}")
    err = (ours.double() - ref.double()).abs().max().item() if ref.numel() else 0.0
    return dict(name=name, max_abs_err=err, atol=atol, ok=bool(err <= atol))


def check_vae_case(case_dir: str | Path) -> list[dict]:
    """Run encode / decode / chunked encode+decode / multi-scale quantization on a golden case.

    Returns one dict per compared tensor: ``name``, ``max_abs_err``, ``atol``, ``ok`` (bits use atol 0).
    """
    case = Path(case_dir)
    index = json.loads((case / "index.json").read_text())
    data = load_file(str(case / "data.safetensors"))
    vae = load_case_vae(case)
    results = []

    with torch.no_grad():
        raw = vae.encode_raw(data["video"])
        results.append(_entry("encoder_out", raw.encoder_out, data["encoder_out"], ATOL_VAE))
        results.append(_entry("posterior_mean", raw.posterior_mean, data["posterior_mean"], ATOL_VAE))
        results.append(_entry("posterior_logvar_clamped", raw.posterior_logvar_clamped,
                              data["posterior_logvar_clamped"], ATOL_VAE))
        results.append(_entry("z", vae.latent_from_posterior(raw), data["z"], ATOL_VAE))
        results.append(_entry("decoded", vae.decode(data["z"]), data["decoded"], ATOL_VAE))

        results.append(_entry("chunked.z", vae.encode(data["chunked.video"]), data["chunked.z"], ATOL_VAE))
        results.append(_entry("chunked.decoded", vae.decode(data["chunked.z"]), data["chunked.decoded"], ATOL_VAE))

        schedule = schedule_from_index(index)
        record: dict[str, torch.Tensor] = {}
        bits_list, summed = multiscale_quantize(data["z"], schedule, record)
        for st in schedule.steps:
            k = st.index
            for part in ("scale_input", "residual", "bits", "codes", "canvas"):
                name = f"q.step{k:02d}.{part}"
                atol = {"scale_input": ATOL_QUANT_INPUT, "residual": ATOL_QUANT_INPUT, "bits": 0.0}.get(
                    part, ATOL_QUANT_CODES)
                results.append(_entry(name, record[name], data[name], atol))
        results.append(_entry("q.summed_codes", summed, data["q.summed_codes"], ATOL_QUANT_CODES))

        ref_bits = [data[f"q.step{st.index:02d}.bits"][0] for st in schedule.steps]
        from_bits = summed_codes_from_bits(ref_bits, schedule)
        results.append(_entry("summed_codes_from_bits", from_bits, data["summed_codes_from_bits"],
                              ATOL_QUANT_CODES))
        dec = vae.decode(data["summed_codes_from_bits"]).clamp(-1, 1)
        results.append(_entry("decoded_from_bits_clamped", dec, data["decoded_from_bits_clamped"], ATOL_VAE))
    return results
