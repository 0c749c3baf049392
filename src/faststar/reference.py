"""Run a reference case folder (the golden format of ../shared/golden) through our engine and compare.

A transformer case holds ``config.json`` (architecture, schedule, inference settings), ``weights.safetensors``
(or ``config.json:weights_file``), ``inputs.safetensors`` (text embedding, optional teacher-forced labels),
``steps.safetensors`` (every recorded tensor) and ``index.json``. We build the model from the checkpoint's shapes,
teacher-force every step with the recorded bits, record our tensors under the same names and report the largest
absolute error of each quantity against its tolerance. VAE cases are delegated to ``faststar.vae.golden``.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file

from .checkpoint import load_transformer
from .generate import generate
from .sampling import GuidanceConfig
from .schedule import build_schedule

# tolerances of ../shared/golden/README.md section 7 (fp32 implementation)
TRANSFORMER_TOL = {
    "text.prefix_tokens": 1e-5,
    "input_embeds": 1e-5,
    "layer_out": 1e-4,
    "logits_cond": 1e-4,
    "logits_uncond": 1e-4,
    "logits_guided": 5e-3,
    "canvas": 1e-5,
    "final_summed_codes": 1e-5,
    "rope_pos": 0.0,
    "bits": 0.0,
}


def _quantity(name: str) -> str:
    if name.startswith("text."):
        return "text.prefix_tokens" if name.endswith("prefix_tokens") else (
            "rope_pos" if name.endswith("rope_pos") else "layer_out")
    last = name.split(".")[-1]
    if re.match(r"layer\d+", name.split(".")[-2] if "." in name else ""):
        return "layer_out"
    return last


def schedule_from_case(cfg: dict):
    sch = cfg["schedule"]
    thw = [tuple(x) for x in sch["scale_schedule_thw"]]
    per = sch["scales_per_clip"]
    pyramid = [(h, w) for _, h, w in thw[:per]]
    clips = [thw[c * per][0] for c in range(sch["clips"])]
    taus = sch["tau_per_scale"]
    return build_schedule(pyramid, clips, image_reps=sch["image_scale_repetition"],
                          video_reps=sch["video_scale_repetition"], semantic_scales=sch["semantic_scales"],
                          tau_image=float(taus[0]), tau_video=float(taus[per]) if len(taus) > per else 0.4,
                          name="reference-case")


def check_transformer_case(case: str | Path, device="cpu", attention: str = "sdpa") -> list[dict]:
    case = Path(case)
    cfg = json.loads((case / "config.json").read_text())
    weights = (case / cfg.get("weights_file", "weights.safetensors")).resolve()
    model = load_transformer(weights, device=device, dtype=torch.float32, name=cfg.get("create_model_name"))
    model.set_attention_backend(attention)
    model.cfg.text_maxlen = cfg["architecture"].get("text_maxlen", 512)
    schedule = schedule_from_case(cfg)
    inp = load_file(str(case / "inputs.safetensors"))
    ref = load_file(str(case / "steps.safetensors"))
    inf = cfg["inference_settings"]
    guidance = GuidanceConfig(mode="apg" if inf.get("use_apg", 1) else "cfg", scale=float(inf["cfg"]),
                              norm_threshold=float(inf.get("apg_norm_threshold", 0.05)))
    teacher = {st.index: ref[f"step{st.index:03d}.bits"] for st in schedule.steps}
    layer_steps = {int(m.group(1)) for k in ref for m in [re.match(r"step(\d+)\.layer\d+\.out", k)] if m}
    rec: dict = {}
    if device != "cpu" and torch.device(device).type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    out = generate(model, schedule, inp["text_embedding"], guidance=guidance, teacher_bits=teacher,
                   record=rec, record_layers=layer_steps, skip_unread_forwards=False)
    rec["final_summed_codes"] = out.latent[0].cpu()
    results = []
    for name, want in ref.items():
        if name.endswith(".bits"):
            continue        # the bits are our input (teacher forcing)
        q = _quantity(name)
        tol = TRANSFORMER_TOL.get(q)
        if tol is None:
            continue
        if name not in rec:
            results.append(dict(name=name, quantity=q, max_abs_err=float("inf"), atol=tol, ok=False,
                                error="not produced"))
            continue
        got = rec[name]
        if tuple(got.shape) != tuple(want.shape):
            results.append(dict(name=name, quantity=q, max_abs_err=float("inf"), atol=tol, ok=False,
                                error=f"shape {tuple(got.shape)} != {tuple(want.shape)}"))
            continue
        err = (got.double() - want.double()).abs().max().item() if want.numel() else 0.0
        results.append(dict(name=name, quantity=q, max_abs_err=err, atol=tol, ok=err <= tol))
    return results


def check_apg_cases(case: str | Path) -> list[dict]:
    from .sampling import apg
    case = Path(case)
    meta = json.loads((case / "apg_cases.json").read_text())
    data = load_file(str(case / "apg_cases.safetensors"))
    results = []
    for c in meta["cases"]:
        i = c["case"]
        got = apg(data[f"apg{i}.cond"], data[f"apg{i}.uncond"], c["guidance_scale"], c["norm_threshold"], c["eta"])
        err = (got - data[f"apg{i}.guided"]).abs().max().item()
        results.append(dict(name=f"apg{i}.guided", quantity="apg", max_abs_err=err, atol=1e-5, ok=err <= 1e-5))
    return results


def check_case(case: str | Path) -> list[dict]:
    """Dispatch on the folder's content: a transformer case, a VAE case, or both APG and transformer."""
    case = Path(case)
    if not (case / "config.json").exists():
        raise FileNotFoundError(f"{case} is not a reference case folder (no config.json)")
    cfg = json.loads((case / "config.json").read_text())
    if "architecture" in cfg and (case / "steps.safetensors").exists():
        res = check_transformer_case(case)
        if (case / "apg_cases.json").exists():
            res += check_apg_cases(case)
        return res
    if (case / "data.safetensors").exists():
        from .vae.golden import check_vae_case
        return check_vae_case(case)
    raise ValueError(f"{case}: cannot tell the case type (expected steps.safetensors or data.safetensors)")


def summarize(results: list[dict]) -> list[dict]:
    """Largest error per quantity."""
    by: dict[str, dict] = {}
    for r in results:
        q = r.get("quantity") or re.sub(r"step\d+\.", "", r["name"])
        cur = by.setdefault(q, dict(quantity=q, worst=r["name"], max_abs_err=-1.0, atol=r["atol"], ok=True,
                                    count=0))
        cur["count"] += 1
        cur["ok"] = cur["ok"] and r["ok"]
        if r["max_abs_err"] > cur["max_abs_err"]:
            cur.update(worst=r["name"], max_abs_err=r["max_abs_err"], atol=r["atol"])
    return list(by.values())
