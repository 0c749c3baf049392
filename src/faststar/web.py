"""`faststar serve`: a Gradio studio on a pipeline held in memory.

Next-scale prediction holds the whole video at every scale, coarse to fine, so the page shows it sharpen: the
pipeline's step callback (``callback_on_step_end``) feeds a progress line and, every few scales, a preview of the
current clip's canvas (its first latent frame decoded alone, ``FastStarPipeline.preview``); a Stop button ends the
generation there and the video so far is decoded. Out: the video and its timing summary; on request the same-seed
dense video beside it with PSNR and the pruning-mask video. One generation runs at a time (Gradio's queue shows the
others their place). Bad input is shown as a message in the page, never a traceback.

``Studio.stream`` is the whole logic as a plain generator of event dicts (no Gradio needed); ``build_app`` wires it
to the page.
"""

import dataclasses
import os
import queue
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

DENSE = "dense"


def preset_choices() -> list[str]:
    """``dense`` and the library's public FastSTAR presets, slowest first."""
    from .accel import PRESETS, PUBLIC_PRESETS
    return [DENSE] + [p for p in PUBLIC_PRESETS if p in PRESETS["faststar"]]


def _resolution_choices(pipe) -> list[str]:
    if pipe.spec.kind == "official":
        return [pipe.spec.default_resolution]          # one transformer (one resolution) is in memory
    return [pipe.spec.default_resolution]


def _duration_choices(pipe) -> list[int]:
    from .schedule import SUPPORTED_DURATIONS
    if pipe.spec.kind == "official":
        return list(SUPPORTED_DURATIONS)
    return [pipe.spec.default_duration]


def _summary_markdown(out, preset: str, frames_shape) -> str:
    t, s = out.timings, out.summary
    lines = [f"**{preset}** ({out.accelerator.get('method', 'dense')}) · seed {out.seed} · schedule `{out.schedule}`"
             f" · {frames_shape[0]} frames {frames_shape[2]}x{frames_shape[1]} @ {out.fps} fps"]
    if out.stopped_at is not None:
        lines.append(f"stopped early {s['stopped']}")
    names = {"callback_s": "live previews"}
    lines.append("time: " + ", ".join(f"{names.get(k, k[:-2].replace('_', ' '))} {v:.2f} s" for k, v in t.items()))
    lines.append(f"tokens run {s['tokens_run']:,} of {s['tokens_dense']:,}; FLOP-model speedup "
                 f"{s['flop_speedup']:.2f}x")
    return "\n\n".join(lines)


class Studio:
    """The studio's logic on one pipeline: one generation at a time (a lock), previews every ``preview_every``
    scales (and at each clip's last), decoded at 1/``preview_downscale`` of the size; videos written under
    ``out_dir``."""

    def __init__(self, pipe, *, preview_every: int = 2, preview_downscale: int = 2, out_dir=None):
        self.pipe = pipe
        self.preview_every = max(1, int(preview_every))
        self.preview_downscale = max(1, int(preview_downscale))
        self.out_dir = Path(out_dir or tempfile.mkdtemp(prefix="faststar-serve-"))
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._stop: set[str] = set()

    def request_stop(self, session: str = "") -> None:
        self._stop.add(session)

    def _write(self, frames, tag: str) -> str:
        from .io import write_video
        return str(write_video(self.out_dir / f"{tag}-{uuid.uuid4().hex[:8]}.mp4", frames, fps=self.pipe.spec.fps))

    def _check(self, prompt, preset, seed, guidance_scale, resolution, duration):
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("enter a prompt: it is empty")
        if preset not in preset_choices():
            raise ValueError(f"unknown preset {preset!r}; choose one of {preset_choices()}")
        try:
            seed = int(seed)
        except (TypeError, ValueError):
            raise ValueError(f"the seed must be a whole number, got {seed!r}") from None
        if seed < 0:
            raise ValueError(f"the seed must be 0 or more, got {seed}")
        if guidance_scale is not None:
            g = float(guidance_scale)
            if not np.isfinite(g) or g < 0:
                raise ValueError(f"the guidance strength must be a finite number >= 0, got {guidance_scale!r}")
        if resolution not in (None, "") and str(resolution) not in _resolution_choices(self.pipe):
            raise ValueError(f"resolution {resolution!r} is not one this model generates: "
                             f"{_resolution_choices(self.pipe)}")
        if duration not in (None, "") and int(duration) not in _duration_choices(self.pipe):
            raise ValueError(f"duration {duration!r} s is not one this model generates: {_duration_choices(self.pipe)}")
        return seed

    def stream(self, prompt: str, *, image=None, seed=0, preset: str = "fast", guidance_scale=None,
               negative_prompt: str | None = None, resolution=None, duration=None, compare: bool = False,
               session: str = ""):
        """Run one generation; yield event dicts as it goes:
        {"kind": "step", "info": StepInfo-like dict, "preview": uint8 [H, W, 3] or None}, then
        {"kind": "done", "video": path, "summary": markdown, "out": VideoOutput, ...compare fields} or
        {"kind": "error", "message": one line}."""
        from . import accel
        try:
            seed = self._check(prompt, preset, seed, guidance_scale, resolution, duration)
        except ValueError as e:
            yield {"kind": "error", "message": str(e)}
            return
        pipe = self.pipe
        guidance = pipe.spec.guidance
        if guidance_scale is not None and float(guidance_scale) != guidance.scale:
            guidance = dataclasses.replace(guidance, scale=float(guidance_scale))
        acc = None if preset == DENSE else accel.make_accelerator("faststar", preset)
        kw = dict(image=image or None, seed=seed, guidance=guidance, negative_prompt=negative_prompt or None,
                  resolution=resolution or None, duration=int(duration) if duration not in (None, "") else None,
                  progress=False)
        try:
            sched = pipe.spec.schedule(kw["resolution"], kw["duration"])
        except ValueError as e:
            yield {"kind": "error", "message": str(e)}
            return
        events: queue.Queue = queue.Queue()
        self._stop.discard(session)

        def on_step(info):
            prev = None
            if sched.steps[info.step].last_rep and ((info.scale + 1) % self.preview_every == 0 or info.scale + 1 == info.num_scales):
                prev = pipe.preview(info.canvas, downscale=self.preview_downscale)
                if self.preview_downscale > 1:                 # shown at the video's size
                    from PIL import Image
                    H, W = sched.pixel_size()
                    prev = np.asarray(Image.fromarray(prev).resize((W, H), Image.BILINEAR))
            events.put({"kind": "step", "preview": prev,
                        "info": dict(step=info.step, num_steps=info.num_steps, clip=info.clip,
                                     num_clips=info.num_clips, scale=info.scale, num_scales=info.num_scales,
                                     rep=info.rep, elapsed_s=info.elapsed_s)})
            return session in self._stop

        result: dict = {}

        def work():
            try:
                with self._lock:
                    result["out"] = pipe(prompt, accelerator=acc, callback_on_step_end=on_step, **kw)
                    if compare and preset != DENSE:
                        events.put({"kind": "status", "message": "same seed, dense: generating for the comparison"})
                        result["dense"] = pipe(prompt, accelerator=None, **kw)
            except (ValueError, FileNotFoundError, RuntimeError, FloatingPointError, OSError) as e:
                result["error"] = str(e).splitlines()[0] if str(e) else type(e).__name__
            except Exception as e:              # never a traceback in the page
                result["error"] = f"internal error ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
            finally:
                events.put(None)

        threading.Thread(target=work, daemon=True, name="faststar-generate").start()
        while True:
            ev = events.get()
            if ev is None:
                break
            yield ev
        self._stop.discard(session)
        if "error" in result:
            yield {"kind": "error", "message": result["error"]}
            return
        out = result["out"]
        done = {"kind": "done", "out": out, "video": self._write(out.frames, preset),
                "summary": _summary_markdown(out, preset, out.frames.shape)}
        if "dense" in result:
            from .metrics import psnr
            dense = result["dense"]
            done["dense_video"] = self._write(dense.frames, "dense")
            if dense.frames.shape == out.frames.shape:
                done["psnr_db"] = psnr(out.frames, dense.frames)
                done["summary"] += (f"\n\nPSNR against the same-seed dense video: **{done['psnr_db']:.2f} dB** "
                                    f"(dense {dense.timings['total_s']:.2f} s, {preset} "
                                    f"{out.timings['total_s']:.2f} s)")
            if out.stopped_at is None:
                from .accel.viz import mask_video
                done["mask_video"] = self._write(mask_video(out.masks, sched, out.frames), "masks")
        yield done


def build_app(pipe, *, preview_every: int = 2, out_dir=None, title: str = "faststar studio"):
    """The Gradio Blocks app on ``pipe`` (call ``.queue(...).launch(...)``, or use ``serve``)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    studio = Studio(pipe, preview_every=preview_every, out_dir=out_dir)
    presets = preset_choices()
    res_choices, dur_choices = _resolution_choices(pipe), _duration_choices(pipe)
    g0 = pipe.spec.guidance.scale
    with gr.Blocks(title=title, analytics_enabled=False) as app:
        app.studio = studio
        gr.Markdown(f"## faststar studio · `{pipe.spec.name}`\nNext-scale prediction: the whole video exists at "
                    "every scale; watch it sharpen coarse to fine, or stop it early.")
        with gr.Row():
            with gr.Column(scale=1):
                prompt = gr.Textbox(label="Prompt", lines=2, elem_id="prompt",
                                    placeholder="a red ball rolls across a wooden table")
                negative = gr.Textbox(label="Negative prompt (optional)", lines=1, elem_id="negative")
                image = gr.Image(label="First frame (optional: image-to-video)", type="filepath", elem_id="image",
                                 height=160)
                preset = gr.Radio(presets, value="fast" if "fast" in presets else presets[0], label="Accelerator",
                                  elem_id="preset", info="dense, or a FastSTAR preset (slowest, best first)")
                with gr.Row():
                    seed = gr.Number(value=0, precision=0, label="Seed", elem_id="seed")
                    guidance = gr.Slider(0.0, 10.0, value=g0, step=0.5, label="Guidance strength",
                                         elem_id="guidance")
                resolution = gr.Dropdown(res_choices, value=res_choices[0], label="Resolution",
                                         visible=len(res_choices) > 1, elem_id="resolution")
                duration = gr.Dropdown(dur_choices, value=dur_choices[0], label="Duration (s)",
                                       visible=len(dur_choices) > 1, elem_id="duration")
                compare = gr.Checkbox(False, label="also the same seed dense, with PSNR and the pruning masks",
                                      elem_id="compare")
                with gr.Row():
                    go = gr.Button("Generate", variant="primary", elem_id="generate")
                    stop = gr.Button("Stop (keep the video so far)", elem_id="stop")
            with gr.Column(scale=1):
                status = gr.Markdown("ready", elem_id="status")
                preview = gr.Image(label="Live preview (current clip, coarse to fine)", interactive=False,
                                   elem_id="preview", format="png", height=240)
                video = gr.Video(label="Video", interactive=False, elem_id="video", autoplay=False, loop=True)
                summary = gr.Markdown("", elem_id="summary")
        with gr.Row(visible=False) as compare_row:
            dense_video = gr.Video(label="Same seed, dense", interactive=False, elem_id="dense_video")
            mask_vid = gr.Video(label="Pruning masks (pruned regions tinted)", interactive=False, elem_id="mask_video")

        outputs = [status, preview, video, summary, dense_video, mask_vid]

        def run(prompt_v, neg_v, image_v, preset_v, seed_v, guidance_v, res_v, dur_v, compare_v,
                request: gr.Request, progress=gr.Progress()):
            session = getattr(request, "session_hash", "") or ""
            yield "starting ...", None, None, "", None, None
            last_preview = None
            for ev in studio.stream(prompt_v, image=image_v, seed=seed_v, preset=preset_v,
                                    guidance_scale=guidance_v, negative_prompt=neg_v, resolution=res_v,
                                    duration=dur_v, compare=compare_v, session=session):
                if ev["kind"] == "error":
                    yield f"**Error:** {ev['message']}", last_preview, None, "", None, None
                    return
                if ev["kind"] == "status":
                    yield ev["message"], last_preview, gr.skip(), gr.skip(), None, None
                    continue
                if ev["kind"] == "step":
                    i = ev["info"]
                    progress((i["step"] + 1, i["num_steps"]), desc=f"clip {i['clip'] + 1}/{i['num_clips']} "
                             f"scale {i['scale'] + 1}/{i['num_scales']}", unit="steps")
                    msg = (f"clip {i['clip'] + 1}/{i['num_clips']} · scale {i['scale'] + 1}/{i['num_scales']} · "
                           f"step {i['step'] + 1}/{i['num_steps']} · {i['elapsed_s']:.1f} s")
                    if ev["preview"] is not None:
                        last_preview = ev["preview"]
                        yield msg, last_preview, None, "", None, None
                    continue
                yield ("done" if ev["out"].stopped_at is None else f"stopped {ev['out'].summary['stopped']}"), \
                    last_preview, ev["video"], ev["summary"], ev.get("dense_video"), ev.get("mask_video")

        def do_stop(request: gr.Request):
            studio.request_stop(getattr(request, "session_hash", "") or "")

        # the progress bar and the place in the queue show on the status line, not over the live preview
        go.click(run, [prompt, negative, image, preset, seed, guidance, resolution, duration, compare], outputs,
                 concurrency_limit=1, concurrency_id="generate", show_progress_on=[status])
        stop.click(do_stop, None, None, queue=False)
        compare.change(lambda c: gr.Row(visible=bool(c)), compare, compare_row, queue=False)
    return app


def serve(pipe, *, host: str = "127.0.0.1", port: int = 7860, preview_every: int = 2, max_queue: int = 16,
          block: bool = True):
    """Build the app on ``pipe`` and serve it (one generation at a time, ``max_queue`` waiting)."""
    app = build_app(pipe, preview_every=preview_every)
    app.queue(max_size=max_queue, default_concurrency_limit=1)
    import gradio as gr
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])
    app.launch(server_name=host, server_port=port, prevent_thread_lock=not block, show_error=False, quiet=False,
               theme=theme, footer_links=[], allowed_paths=[str(app.studio.out_dir)])
    return app
