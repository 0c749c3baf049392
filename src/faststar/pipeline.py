"""The user-facing pipeline: text / image / video in, frames out.

    pipe = FastStarPipeline.from_pretrained("path/to/InfinityStar")      # or from_pretrained() for the testbed
    pipe = FastStarPipeline.from_pretrained("FoundationVision/InfinityStar", resolution="480p")   # Hub + HF cache
    out = pipe("a cat walks on the beach", seed=1)                        # VideoOutput: frames uint8 [T,H,W,3]
    faststar.apply(pipe, "faststar", "balanced")                          # accelerate; faststar.remove(pipe)

``__call__`` runs numbered phases: 1 check inputs and pick the schedule, 2 encode the prompt, 3 encode the
conditioning image/video into teacher-forced bit labels, 4 the generation loop, 5 decode, 6 output.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .checkpoint import CheckpointError, TensorSource, load_checkpoint, load_transformer
from .generate import GenerationOutput, generate
from .sampling import GuidanceConfig, check_seed
from .schedule import SUPPORTED_DURATIONS, Schedule, build_schedule, official_schedule
from .vae.quant import area_down, multiscale_quantize

TESTBED_DIR = Path(__file__).resolve().parent / "testbed" / "weights"
from .config import OFFICIAL_T5, OFFICIAL_TRANSFORMER_DIRS, OFFICIAL_VAE  # noqa: F401  (the release layout)


@dataclass
class VideoOutput:
    frames: np.ndarray | None               # uint8 [T, H, W, 3] RGB (None when decode=False)
    latent: torch.Tensor                    # summed codes [1, 64, T', h, w]
    fps: int
    seed: int
    schedule: str
    timings: dict = field(default_factory=dict)
    stats: list = field(default_factory=list)
    masks: list = field(default_factory=list)
    accelerator: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    stopped_at: int | None = None           # the step after which callback_on_step_end stopped generation


def stop_description(schedule: Schedule, step: int | None) -> str | None:
    """Where an early stop happened, in words: 'after step 20 of 43 (clip 2 of 2, scale 3 of 8)'."""
    if step is None:
        return None
    st = schedule.steps[step]
    c = st.scale.clip
    return (f"after step {step + 1} of {schedule.num_steps} (clip {c + 1} of {schedule.num_clips}, scale "
            f"{st.scale.index_in_clip + 1} of {len(schedule.clip_scales(c))})")


@dataclass
class ModelSpec:
    """What a model folder holds and how its schedules are made."""
    kind: str                               # "official" or "testbed"
    fps: int = 16
    default_resolution: str = "720p"
    default_duration: int = 5
    official_prompt_format: bool = True
    smooth_first_frame: bool = True         # the release overwrites frame 0 with frame 1
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    schedule_kwargs: dict | None = None      # testbed: build_schedule(**kwargs)
    name: str = "model"

    def schedule(self, resolution: str | None, duration: int | None) -> Schedule:
        if self.kind == "official":
            res = resolution or self.default_resolution
            dur = duration or self.default_duration
            if dur not in SUPPORTED_DURATIONS:
                raise ValueError(f"unsupported duration {dur} s: the official schedules exist for "
                                 f"{list(SUPPORTED_DURATIONS)} s")
            return official_schedule(res, dur)
        if resolution not in (None, "auto", self.default_resolution):
            raise ValueError(f"model {self.name!r} generates one size only ({self.default_resolution}); "
                             f"got resolution={resolution!r}")
        if duration not in (None, self.default_duration):
            raise ValueError(f"model {self.name!r} generates {self.default_duration} s clips only; "
                             f"got duration={duration!r}")
        kw = dict(self.schedule_kwargs)
        kw["pyramid"] = [tuple(x) for x in kw["pyramid"]]
        return build_schedule(name=self.name, **kw)


def _auto_device(device):
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _parse_dtype(dtype, device) -> torch.dtype:
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp32": torch.float32, "float32": torch.float32,
             "fp16": torch.float16, "float16": torch.float16}
    if dtype not in table:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(table)}")
    return table[dtype]


def load_vae(path, config, device, key: str | None = None):
    from .vae.model import VideoVAE
    with torch.device("meta"):
        vae = VideoVAE(config)
    src = TensorSource(path, key=key)
    load_checkpoint(vae, src, what="VAE")
    return vae.to(device).eval().requires_grad_(False)


def inspect_model_dir(model_dir: str | Path, resolution: str = "720p") -> dict:
    """Check a model folder without loading weights: what is there, what is missing or mismatched."""
    model_dir = Path(model_dir)
    report: dict = {"folder": str(model_dir), "problems": [], "found": {}}
    if not model_dir.is_dir():
        report["problems"].append(f"not a folder: {model_dir}")
        return report
    cfg_file = model_dir / "config.json"
    if cfg_file.exists() and json.loads(cfg_file.read_text()).get("kind") == "faststar-testbed":
        report["kind"] = "testbed"
        cfg = json.loads(cfg_file.read_text())
        from .model.transformer import STARTransformer
        from .config import TransformerConfig
        tf = _find_testbed_file(model_dir, "transformer")
        checks = [("transformer", tf, STARTransformer, TransformerConfig.from_dict(cfg["transformer"]), None)]
        vf = _find_testbed_file(model_dir, "vae")
        from .vae.model import VideoVAE, VAEConfig
        checks.append(("vae", vf, VideoVAE, config_from_dict(VAEConfig, cfg["vae"]), None))
    else:
        report["kind"] = "official"
        from .config import transformer_config
        from .model.transformer import STARTransformer
        from .vae.model import VideoVAE, vae_config
        tdir = model_dir / OFFICIAL_TRANSFORMER_DIRS.get(resolution, "")
        checks = [("transformer", tdir, STARTransformer, transformer_config("infinitystar-8b"), None),
                  ("vae", model_dir / OFFICIAL_VAE, VideoVAE, vae_config("infinitystar"), "vae")]
        t5 = model_dir / OFFICIAL_T5
        if not t5.is_dir():
            report["problems"].append(f"text encoder folder missing: {t5}")
        else:
            need = ["config.json"]
            miss = [n for n in need if not (t5 / n).exists()]
            if not any(t5.glob("*.safetensors")) and not any(t5.glob("*.bin")):
                miss.append("weights (*.safetensors)")
            if not any((t5 / n).exists() for n in ("spiece.model", "tokenizer.json")):
                miss.append("tokenizer (spiece.model or tokenizer.json)")
            if miss:
                report["problems"].append(f"text encoder {t5} lacks {miss}")
            else:
                report["found"]["text_encoder"] = str(t5)
    from .checkpoint import compare_keys, format_key_report
    for what, path, cls, cfg, key in checks:
        if path is None or not Path(path).exists():
            report["problems"].append(f"{what} checkpoint missing: {path}")
            continue
        try:
            src = TensorSource(path, key=key)
            with torch.device("meta"):
                m = cls(cfg)
            expected = {k: tuple(v.shape) for k, v in m.state_dict().items()}
            miss, unexp, mism = compare_keys(expected, src.shapes())
            if miss or unexp or mism:
                report["problems"].append(f"{what} checkpoint {path} does not match:\n"
                                          + format_key_report(miss, unexp, mism))
            else:
                report["found"][what] = f"{path} ({len(expected)} tensors, all keys and shapes match)"
        except CheckpointError as e:
            report["problems"].append(str(e))
    return report


def config_to_dict(cfg) -> dict:
    """Constructor fields of a config dataclass (derived fields left out), JSON-ready."""
    from dataclasses import fields
    out = {}
    for f in fields(cfg):
        if f.init:
            v = getattr(cfg, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


def config_from_dict(cls, d: dict):
    from dataclasses import fields
    known = {f.name for f in fields(cls) if f.init}
    unknown = sorted(set(d) - known - {f.name for f in fields(cls)})
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {unknown}")
    return cls(**{k: v for k, v in d.items() if k in known})


def _find_testbed_file(folder: Path, stem: str) -> Path | None:
    for cand in (folder / stem, folder / f"{stem}.safetensors"):
        if cand.exists():
            return cand
    return None


class FastStarPipeline:
    def __init__(self, transformer, vae, text_encoder, spec: ModelSpec, device=None, dtype=None,
                 text_encoder_spec: str | None = None):
        device = _auto_device(device) if device is None or isinstance(device, str) else device
        self.transformer = transformer
        self.vae = vae
        self.text_encoder = text_encoder
        self.spec = spec
        self.device = device
        self.dtype = dtype or transformer.block_dtype
        self.text_encoder_spec = text_encoder_spec
        self.accelerator = None           # set by faststar.apply / faststar.remove
        self._fingerprint: str | None = None

    def fingerprint(self) -> str:
        """A short hash that tells these weights from others of the same architecture (a retrained model, another
        checkpoint): every tensor's name and shape plus 256 of its values at a fixed stride, of the transformer and
        the VAE, and the text encoder's identity. Cheap at 8B (no full pass over the weights); computed once."""
        if self._fingerprint is None:
            h = hashlib.sha1()
            for part in (self.transformer, self.vae):
                for name, t in part.state_dict().items():
                    flat = t.detach().reshape(-1)
                    sample = flat[::max(1, flat.numel() // 256)][:256].to("cpu", torch.float64)
                    h.update(f"{name}{tuple(t.shape)}".encode())
                    h.update(sample.numpy().tobytes())
            h.update(f"{self.text_encoder_spec or type(self.text_encoder).__name__}".encode())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def save_pretrained(self, folder: str | Path, *, dtype: torch.dtype | None = None, extra: dict | None = None
                        ) -> Path:
        """Write a faststar model folder (config.json + transformer/vae safetensors) that ``from_pretrained``
        loads back. For models with a custom schedule (the testbed and small models)."""
        from safetensors.torch import save_file
        if self.spec.kind == "official":
            raise ValueError("official models are loaded from the release's files; save_pretrained writes "
                             "faststar model folders (custom schedules) only")
        if not self.text_encoder_spec:
            raise ValueError("the text encoder has no spec string (e.g. 'minilm' or 'tiny:32'); set "
                             "pipe.text_encoder_spec before saving")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)

        def tensors(module):
            # .clone(): the VAE registers its quantizer twice (quantizer. / quantize.), sharing the mask buffers
            return {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu().clone()
                    for k, v in module.state_dict().items()}
        save_file(tensors(self.transformer), str(folder / "transformer.safetensors"))
        save_file(tensors(self.vae), str(folder / "vae.safetensors"))
        g = self.spec.guidance
        cfg = dict(kind="faststar-testbed", name=self.spec.name, fps=self.spec.fps,
                   resolution=self.spec.default_resolution, duration=self.spec.default_duration,
                   transformer=self.transformer.cfg.to_dict(), vae=config_to_dict(self.vae.cfg),
                   schedule=self.spec.schedule_kwargs, text_encoder=self.text_encoder_spec,
                   guidance=dict(mode=g.mode, scale=g.scale, norm_threshold=g.norm_threshold, eta=g.eta))
        cfg.update(extra or {})
        (folder / "config.json").write_text(json.dumps(cfg, indent=1))
        return folder

    # -- loading ------------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, model_dir: str | Path | None = None, *, resolution: str = "720p",
                        transformer_path=None, vae_path=None, text_encoder=None, device="auto", dtype=None,
                        attention: str = "auto", fuse: bool = True, compile: bool | None = None,
                        revision: str | None = None, cache_dir=None, precision: str = "bf16", max_memory=None,
                        fp8_mode: str = "dynamic") -> "FastStarPipeline":
        """Load a model folder: the release's layout (``infinitystar_8b_{720p,480p}_weights/``,
        ``infinitystar_videovae.pth``, ``text_encoder/flan-t5-xl-official/``) or a faststar testbed folder
        (``config.json`` with kind ``faststar-testbed``). With no folder, the embedded testbed model.
        ``text_encoder``: an object with ``encode(prompts)``, or a spec string for ``faststar.text.load_text_encoder``.
        ``compile``: fuse the blocks' elementwise kernels with torch.compile (default: on for CUDA).
        A Hub repository id (``"FoundationVision/InfinityStar"``) that is no local folder is fetched with
        huggingface_hub (only ``resolution``'s files, the VAE and T5) into its cache (``cache_dir``, else HF_HOME),
        at ``revision``; with ``HF_HUB_OFFLINE=1`` or no network, from the cache alone (faststar.hub).
        ``precision``: ``"bf16"``, ``"fp8"`` (the blocks' linear layers quantized to float8 at load time from the
        bf16 weights, ``fp8_mode`` "dynamic" or "weight_only"; a clear error where FP8 cannot run) or ``"auto"``
        (FP8 where it runs, bf16 with a message elsewhere; with ``max_memory`` FP8 only if bf16 does not fit).
        ``attention="fp8"``: FP8 attention through fa3 where available, the automatic backend elsewhere.
        ``max_memory`` (e.g. ``"24GB"``): every call plans chunk sizes and placement so that the run fits (the text
        encoder and the VAE then live on the CPU and visit the GPU only to encode / decode); a call that cannot
        fit fails before generation with the budget it would need.
        """
        from .model.transformer import compile_kernels
        device = _auto_device(device)
        dtype = _parse_dtype(dtype, device)
        from .hub import looks_like_repo_id, resolve
        if looks_like_repo_id(model_dir):
            model_dir = resolve(str(model_dir), resolution=resolution, revision=revision, cache_dir_=cache_dir)
        folder = Path(model_dir) if model_dir is not None else TESTBED_DIR
        if not folder.is_dir():
            raise FileNotFoundError(f"model folder not found: {folder}")
        cfg_file = folder / "config.json"
        cfg = json.loads(cfg_file.read_text()) if cfg_file.exists() else {}
        compile_kernels(device.type == "cuda" if compile is None else compile)
        from .precision import resolve_precision
        budget = None
        if max_memory is not None:
            from .memory import device_budget_check
            budget = device_budget_check(device, max_memory)
        prec = "bf16" if precision == "auto" and budget is not None else resolve_precision(precision, device)
        fp8_attention = attention == "fp8"
        attention = "auto" if fp8_attention else attention
        fuse_now = fuse and prec != "fp8" and precision != "auto"
        if cfg.get("kind") == "faststar-testbed":
            pipe = cls._load_testbed(folder, cfg, device, dtype, attention, fuse_now, text_encoder)
        else:
            pipe = cls._load_official(folder, resolution, transformer_path, vae_path, text_encoder, device, dtype,
                                      attention, fuse_now)
        return pipe._setup_memory(precision, prec, budget, fp8_mode, fp8_attention, fuse and not fuse_now)

    @classmethod
    def _load_official(cls, folder, resolution, transformer_path, vae_path, text_encoder, device, dtype,
                       attention, fuse):
        from .text import load_text_encoder
        from .vae.model import vae_config
        if resolution not in OFFICIAL_TRANSFORMER_DIRS:
            raise ValueError(f"unsupported resolution {resolution!r}; supported: {sorted(OFFICIAL_TRANSFORMER_DIRS)}")
        tpath = Path(transformer_path) if transformer_path else folder / OFFICIAL_TRANSFORMER_DIRS[resolution]
        vpath = Path(vae_path) if vae_path else folder / OFFICIAL_VAE
        missing = [str(p) for p in (tpath, vpath) if not p.exists()]
        if text_encoder is None and not (folder / OFFICIAL_T5).is_dir():
            missing.append(str(folder / OFFICIAL_T5))
        if missing:
            raise FileNotFoundError("the model folder lacks: " + ", ".join(missing)
                                    + f"\n(run `faststar inspect {folder}` for a full check)")
        transformer = load_transformer(tpath, device=device, dtype=dtype, name=f"infinitystar-8b-{resolution}")
        vae = load_vae(vpath, vae_config("infinitystar"), device, key="vae" if vpath.suffix != ".safetensors" else None)
        te = text_encoder if text_encoder is not None and not isinstance(text_encoder, str) else \
            load_text_encoder(text_encoder or f"t5:{folder / OFFICIAL_T5}", device=device)
        spec = ModelSpec(kind="official", default_resolution=resolution, name=f"infinitystar-8b-{resolution}")
        pipe = cls(transformer, vae, te, spec, device, dtype)
        pipe._finish(attention, fuse)
        return pipe

    @classmethod
    def _load_testbed(cls, folder, cfg, device, dtype, attention, fuse, text_encoder):
        from .config import TransformerConfig
        from .model.transformer import STARTransformer
        from .text import load_text_encoder
        from .vae.model import VAEConfig
        tcfg = TransformerConfig.from_dict(cfg["transformer"])
        tfile = _find_testbed_file(folder, "transformer")
        vfile = _find_testbed_file(folder, "vae")
        missing = [n for n, f in (("transformer", tfile), ("vae", vfile)) if f is None]
        if missing:
            raise FileNotFoundError(f"testbed folder {folder} lacks {missing} weights")
        with torch.device("meta"):
            transformer = STARTransformer(tcfg)
        transformer.cast_blocks_(dtype)
        transformer.to_empty(device=device)
        load_checkpoint(transformer, tfile, what="transformer")
        transformer.eval().requires_grad_(False)
        vae = load_vae(vfile, config_from_dict(VAEConfig, cfg["vae"]), device)
        te_spec = text_encoder if isinstance(text_encoder, str) else cfg.get("text_encoder", "minilm")
        te = text_encoder if text_encoder is not None and not isinstance(text_encoder, str) else \
            load_text_encoder(te_spec, device=device)
        te_spec_saved = te_spec
        g = cfg.get("guidance", {})
        spec = ModelSpec(kind="testbed", fps=cfg.get("fps", 16), default_resolution=cfg.get("resolution", "testbed"),
                         default_duration=cfg.get("duration", 1), official_prompt_format=False,
                         smooth_first_frame=False, guidance=GuidanceConfig(**g) if g else GuidanceConfig(),
                         schedule_kwargs=cfg["schedule"], name=cfg.get("name", "faststar-testbed"))
        pipe = cls(transformer, vae, te, spec, device, dtype, text_encoder_spec=te_spec_saved)
        pipe._finish(attention, fuse)
        return pipe

    def _finish(self, attention, fuse):
        self.transformer.set_attention_backend(attention)
        if self.device.type == "cuda":
            self.vae.half_decoder_()
        if fuse and self.device.type == "cuda":
            self.transformer.fuse_projections_()
            from .model.graphs import enable_cuda_graphs
            enable_cuda_graphs(self.transformer)

    # -- precision and memory (issue 26 / 29) -----------------------------------------------------------------
    def _setup_memory(self, asked: str, precision: str, budget: int | None, fp8_mode: str, fp8_attention: bool,
                      fuse_later: bool) -> "FastStarPipeline":
        """FP8 weights, FP8 attention and the memory budget, after loading (quantize before fusing)."""
        import warnings
        from .memory import plan_memory
        from .precision import fp8_unavailable, quantize_fp8_, use_fp8_attention
        self.max_memory = budget
        self.memory_plan = None
        if asked == "auto" and budget is not None:     # FP8 only if bf16 does not fit the default run
            sch = self.spec.schedule(None, None)
            why = fp8_unavailable(self.device)
            plan = plan_memory(budget, self.transformer.cfg, sch, allow_fp8=why is None,
                               text_len=self.transformer.cfg.text_maxlen, decode=True) if why is None else None
            precision = plan.precision if plan is not None else "bf16"
            if why is not None:
                warnings.warn(f"precision='auto': using bf16 ({why})", stacklevel=3)
        if precision == "fp8":
            quantize_fp8_(self.transformer, mode=fp8_mode)
        self.precision = precision
        if fuse_later and self.device.type == "cuda":
            if precision != "fp8":
                self.transformer.fuse_projections_()
            from .model.graphs import enable_cuda_graphs
            enable_cuda_graphs(self.transformer)
        if fp8_attention:
            use_fp8_attention(self.transformer)
        if budget is not None:           # the text encoder and the VAE wait on the CPU
            self._place(self.text_encoder, "cpu")
            self._place(self.vae, "cpu")
        return self

    @staticmethod
    def _place(module, device):
        if isinstance(module, torch.nn.Module):
            module.to(device)

    def plan_memory(self, schedule: Schedule, text_len: int | None = None, decode: bool = True):
        """The memory plan of a run of ``schedule`` under this pipeline's budget (BudgetError if it cannot fit)."""
        from .memory import plan_memory
        te_bytes = sum(p.numel() * p.element_size() for p in self.text_encoder.parameters()) \
            if isinstance(self.text_encoder, torch.nn.Module) else 0
        vae_bytes = sum(p.numel() * p.element_size() for p in self.vae.parameters())
        prec = "fp8" if str(getattr(self, "precision", "bf16")).startswith("fp8") else "bf16"
        return plan_memory(self.max_memory, self.transformer.cfg, schedule, precision=prec,
                           text_len=text_len or self.transformer.cfg.text_maxlen, text_encoder_bytes=te_bytes,
                           vae_bytes=vae_bytes, decode=decode)

    def _set_transformer_device(self, device):
        """Move the transformer's weights (its KV cache is dropped); CUDA graphs are rebuilt once back on the GPU
        (the captured ones point at the old addresses)."""
        from .model.graphs import GraphedBlocks, disable_cuda_graphs, enable_cuda_graphs
        graphs = isinstance(self.transformer.__dict__.get("forward_blocks"), GraphedBlocks) or \
            getattr(self, "_graphs_parked", False)
        disable_cuda_graphs(self.transformer)
        self.transformer.release_cache()
        self.transformer.to(device)
        on_gpu = torch.device(device).type == "cuda"
        if graphs and on_gpu:
            enable_cuda_graphs(self.transformer)
        self._graphs_parked = graphs and not on_gpu

    # -- generation ---------------------------------------------------------------------------------------------
    def encode_prompt(self, prompt: str, duration: int | None) -> torch.Tensor:
        from .text import format_prompt
        text = format_prompt(prompt, duration or self.spec.default_duration) if self.spec.official_prompt_format \
            else prompt
        return self.text_encoder.encode([text])[0].float()

    def _encode_condition(self, schedule: Schedule, image, video, progress) -> dict[int, torch.Tensor]:
        """Teacher-forced labels for the clips covered by the given image or frames."""
        from .io import read_image, read_video
        H, W = schedule.pixel_size()
        if image is not None:
            x = read_image(image, size=(H, W))[None, :, None]             # [1, 3, 1, H, W]
            n_clips = 1
        else:
            frames_needed = 1 + 4 * sum(t for t, _, _ in schedule.clip_thw[1:-1])
            if schedule.num_clips < 2:
                raise ValueError("video continuation needs a schedule with at least two clips")
            arr = read_video(video, num_frames=frames_needed, size=(H, W)) if not isinstance(video, np.ndarray) \
                else video[:frames_needed]
            if arr.shape[0] < frames_needed:
                raise ValueError(f"video continuation needs {frames_needed} frames at {H}x{W}; got {arr.shape[0]}")
            x = torch.from_numpy(np.ascontiguousarray(arr)).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
            n_clips = schedule.num_clips - 1
        sub = schedule.first_clips(n_clips)
        with torch.no_grad():
            z = self.vae.encode(x.to(self.device))
        bits, _ = multiscale_quantize(z.float(), sub)
        return {st.index: b for st, b in zip(sub.steps, bits)}

    @torch.no_grad()
    def __call__(self, prompt: str, *, image=None, video=None, duration: int | None = None,
                 resolution: str | None = None, seed: int = 0, guidance: GuidanceConfig | None = None,
                 negative_prompt: str | None = None, decode: bool = True, progress: bool = True,
                 accelerator="pipe", callback_on_step_end=None, parallel=None) -> VideoOutput:
        """Generate one video. ``callback_on_step_end``: callable(faststar.generate.StepInfo) after every step of
        the loop (clip, scale, the canvas so far, timing); returning True stops generation there, and the video so
        far (coarser, or fewer clips) is decoded and returned with ``stopped_at`` set. ``parallel``: None, or
        ``"cfg"`` under ``torchrun --nproc-per-node 2`` (the guidance branches on two ranks, ``faststar.parallel``;
        every rank returns the same video)."""
        t_all = time.perf_counter()
        # 1. inputs and schedule
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("prompt must be a non-empty string")
        seed = check_seed(seed)             # an int 0..SEED_MAX: never a float, never silently reduced
        if image is not None and video is not None:
            raise ValueError("give an image (image-to-video) or a video (continuation), not both")
        if video is not None and self.spec.kind == "official" and (duration or 5) != 10:
            raise ValueError("video continuation generates 10 s from the first 5 s: pass duration=10")
        schedule = self.spec.schedule(resolution, duration)
        guidance = guidance or self.spec.guidance
        acc = self.accelerator if accelerator == "pipe" else accelerator
        timings = {}
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        plan = None
        if getattr(self, "max_memory", None) is not None:        # fits, or fails here, before any work
            from .memory import apply_plan
            plan = self.plan_memory(schedule, decode=decode)
            if next(self.transformer.parameters()).device != self.device:
                self._set_transformer_device(self.device)         # back from a decode-time offload
            apply_plan(self.transformer, plan)
        # 2. prompt (with a budget the encoder visits the GPU only if the plan has room for it)
        t = time.perf_counter()
        if plan is not None and plan.text_on_gpu:
            self._place(self.text_encoder, self.device)
        text = self.encode_prompt(prompt, duration)
        uncond = None
        if negative_prompt:
            uncond = self.encode_prompt(negative_prompt, duration)
            L = min(text.shape[0], uncond.shape[0])
            text, uncond = text[:L], uncond[:L]
        if plan is not None:
            self._place(self.text_encoder, "cpu")
        timings["text_encoder_s"] = time.perf_counter() - t
        # 3. conditioning
        teacher = None
        t = time.perf_counter()
        if image is not None or video is not None:
            teacher = self._encode_condition(schedule, image, video, progress)
        timings["condition_encode_s"] = time.perf_counter() - t
        # 4. the loop (the progress bar is a step callback too)
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=schedule.num_steps, desc="generate", unit="step", leave=False)

        callback_time = [0.0]

        def on_step(info) -> bool:
            if bar is not None:
                bar.set_postfix_str(f"clip {info.clip + 1}/{info.num_clips} scale {info.scale + 1}/{info.num_scales}")
                bar.update(1)
            if callback_on_step_end is None:
                return False
            tc = time.perf_counter()
            try:
                return bool(callback_on_step_end(info))
            finally:
                callback_time[0] += time.perf_counter() - tc
        try:
            out: GenerationOutput = generate(self.transformer, schedule, text, seed=seed, guidance=guidance,
                                             uncond_LC=uncond, teacher_bits=teacher, accelerator=acc,
                                             callback=on_step, parallel=parallel)
        except torch.cuda.OutOfMemoryError as e:
            raise RuntimeError("CUDA out of memory during generation. Try resolution='480p', close other GPU "
                               "programs, or enable an accelerator (faststar.apply(pipe, 'faststar', 'fast')) "
                               f"which also shrinks activations. ({e})") from e
        finally:
            if bar is not None:
                bar.close()
        timings["transformer_s"] = out.total_time_s - callback_time[0]       # the caller's callback not counted
        if callback_on_step_end is not None:
            timings["callback_s"] = callback_time[0]
        # 5. decode
        frames = None
        if decode:
            t = time.perf_counter()
            if plan is not None and plan.offload_for_decode:
                self._set_transformer_device("cpu")
            frames = self.decode(out.latent, progress=progress, chunk=plan.decode_chunk if plan is not None else None,
                                 lean=plan is not None and plan.decode_lean)
            timings["vae_decode_s"] = time.perf_counter() - t
        timings["total_s"] = time.perf_counter() - t_all
        summary = out.summary()
        summary["stopped_at"] = out.stopped_at
        summary["stopped"] = stop_description(schedule, out.stopped_at)
        if cuda:        # the whole run: text encoding, transformer, decode
            summary["peak_gpu_gib"] = torch.cuda.max_memory_allocated(self.device) / 2 ** 30
        summary["precision"] = getattr(self, "precision", "bf16")
        if plan is not None:
            summary["memory_plan"] = plan.describe()
        return VideoOutput(frames=frames, latent=out.latent.cpu(), fps=self.spec.fps, seed=seed,
                           schedule=schedule.name, timings=timings, stats=out.stats,
                           masks=[None if m is None else m.cpu() for m in out.masks],
                           accelerator=acc.describe() if acc is not None else {"method": "dense"},
                           summary=summary, stopped_at=out.stopped_at)

    @torch.no_grad()
    def preview(self, canvas: torch.Tensor, frame: int = 0, downscale: int = 1) -> np.ndarray:
        """A cheap look at a canvas during generation: one latent frame (default the first) decoded alone,
        uint8 [H / downscale, W / downscale, 3]; about 1 / (T' downscale^2) of a full decode."""
        from .io import to_uint8
        from .vae.model import inference_decode
        z = canvas[:, :, frame:frame + 1].to(self.device).float()
        if downscale > 1:
            h, w = z.shape[-2:]
            z = area_down(z, (1, max(1, h // downscale), max(1, w // downscale)))
        video = inference_decode(self.vae, z)
        return to_uint8(video[:, :, :1].float().cpu())[0]

    @torch.no_grad()
    def decode(self, latent: torch.Tensor, progress: bool = False, chunk: int | None = None,
               lean: bool = False) -> np.ndarray:
        """Latent -> uint8 frames; ``chunk``: latent frames per decoder chunk on a GPU (default 4), ``lean``: the
        image frame alone first (same video, less memory). With a memory budget the VAE comes to the GPU for the
        decode only."""
        from .io import to_uint8
        from .vae.model import inference_decode
        dev = self.device
        visiting = getattr(self, "max_memory", None) is not None
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=latent.shape[2], desc="decode", unit="latent frame", leave=False)

        def on_chunk(done, total):
            bar.update(done - bar.n)
        try:
            if visiting:
                self._place(self.vae, dev)
            video = inference_decode(self.vae, latent.to(dev).float(), chunk=chunk, lean=lean,
                                     on_chunk=on_chunk if bar else None)
        except torch.cuda.OutOfMemoryError as e:
            raise RuntimeError(f"CUDA out of memory in the VAE decode ({e}); free GPU memory and retry") from e
        finally:
            if bar is not None:
                bar.close()
            if visiting:
                self._place(self.vae, "cpu")
        frames = to_uint8(video.float().cpu())
        if self.spec.smooth_first_frame and frames.shape[0] > 1:
            frames[0] = frames[1]
        return frames
