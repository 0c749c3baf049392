"""faststar: fast spacetime autoregressive video generation (InfinityStar family) with FastSTAR token pruning."""
from .config import TransformerConfig, transformer_config
from .model.transformer import STARTransformer, build_transformer
from .schedule import Schedule, build_schedule, official_schedule, schedule_flops

__version__ = "0.1.0"


def __getattr__(name):
    # heavy or optional pieces are imported on first use
    if name in ("FastStarPipeline", "Pipeline", "VideoOutput"):
        from . import pipeline
        return pipeline.FastStarPipeline if name in ("FastStarPipeline", "Pipeline") else pipeline.VideoOutput
    if name in ("apply", "remove", "make_accelerator"):
        from . import accel
        return getattr(accel, name)
    if name == "generate":
        from .generate import generate
        return generate
    if name == "StepInfo":
        from .generate import StepInfo
        return StepInfo
    raise AttributeError(f"module 'faststar' has no attribute {name!r}")


__all__ = ["TransformerConfig", "transformer_config", "STARTransformer", "build_transformer", "Schedule",
           "build_schedule", "official_schedule", "schedule_flops", "FastStarPipeline", "Pipeline", "VideoOutput",
           "apply", "remove", "make_accelerator", "generate", "StepInfo"]
