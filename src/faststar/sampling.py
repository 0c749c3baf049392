"""Guidance and bitwise sampling: pure tensor functions.

Logits of a step are [N, 2d]; pair (2k, 2k+1) holds the logits of bit k taking 0 and 1.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GuidanceConfig:
    mode: str = "apg"            # "apg" (release), "cfg" (classic), or "none" (conditional branch only)
    scale: float = 34.0          # the release's APG scale
    norm_threshold: float = 0.05  # APG: the difference is scaled down to this RMS over the whole step
    eta: float = 0.0             # APG: weight of the component parallel to the conditional logits

    def __post_init__(self):
        if self.mode not in ("apg", "cfg", "none"):
            raise ValueError(f"guidance mode must be 'apg', 'cfg' or 'none', got {self.mode!r}")

    @property
    def needs_uncond(self) -> bool:
        return self.mode != "none" and self.scale != 1.0


def apg(cond: torch.Tensor, uncond: torch.Tensor, scale: float, norm_threshold: float = 0.05,
        eta: float = 0.0) -> torch.Tensor:
    """Adaptive projected guidance over one step (all tokens, all logits).

    diff = cond - uncond, scaled so that its RMS is at most ``norm_threshold``; its projection on the normalized
    cond (computed in float64) is split off; guided = cond + (scale - 1) * (perp + eta * parallel).
    """
    diff = cond - uncond
    if norm_threshold > 0:
        rms = diff.norm() * (1.0 / diff.numel() ** 0.5)
        diff = diff * torch.clamp(norm_threshold / rms, max=1.0)
    c64, d64 = cond.double(), diff.double()
    unit = c64 / c64.norm().clamp_min(1e-12)
    par64 = (d64 * unit).sum() * unit
    par, perp = par64.to(cond.dtype), (d64 - par64).to(cond.dtype)
    return cond + (scale - 1) * (perp + eta * par)


def guide(cond: torch.Tensor, uncond: torch.Tensor | None, tau: float, g: GuidanceConfig) -> torch.Tensor:
    """Temperature, then guidance. ``uncond`` None means single-branch (no guidance)."""
    c = cond * (1.0 / tau)
    if uncond is None or not g.needs_uncond:
        return c
    u = uncond * (1.0 / tau)
    if g.mode == "apg":
        return apg(c, u, g.scale, g.norm_threshold, g.eta)
    return g.scale * c + (1 - g.scale) * u


# Seeds are integers 0 .. SEED_MAX. A step's stream is seeded with (seed * 1_000_003 + 7919 (step + 1)) mod
# (2^63 - 1); 1_000_003 is a prime that does not divide 2^63 - 1, so distinct seeds in this range never share a
# stream, while a larger or negative seed would silently alias a smaller one: those are refused instead.
SEED_MAX = 2 ** 63 - 2


def check_seed(seed) -> int:
    """``seed`` as an int, or a ValueError naming the problem: not an integer (``1.7``, ``"abc"``, ``True``),
    negative, or above SEED_MAX. Integral numpy scalars and strings of digits are accepted."""
    import operator
    if isinstance(seed, bool):
        raise ValueError(f"seed must be an integer 0..{SEED_MAX}, got {seed!r}")
    if isinstance(seed, str):
        text = seed.strip().replace("_", "")
        if not text.lstrip("+-").isdigit() or not text.isascii():
            raise ValueError(f"seed must be an integer 0..{SEED_MAX}, got {seed!r}")
        value = int(text)
    else:
        try:
            value = operator.index(seed)
        except TypeError:
            raise ValueError(f"seed must be an integer 0..{SEED_MAX}, got {seed!r} "
                             f"({type(seed).__name__})") from None
    if value < 0 or value > SEED_MAX:
        raise ValueError(f"seed {value} is out of range: seeds are integers 0..{SEED_MAX} (2**63 - 2); a larger or "
                         f"negative seed would repeat the stream of another seed")
    return value


def step_generator(seed: int, step: int, device) -> torch.Generator:
    """The random stream of one step, independent of what earlier steps drew. ``seed``: see ``check_seed``."""
    gen = torch.Generator(device=device)
    gen.manual_seed((check_seed(seed) * 1_000_003 + 7919 * (int(step) + 1)) % (2 ** 63 - 1))
    return gen


def step_uniforms(seed: int, step: int, num_tokens: int, bits: int, device) -> torch.Tensor:
    """Uniform numbers for the whole (tokens x bits) grid of a step: a kept token uses its own row."""
    return torch.rand(num_tokens, bits, generator=step_generator(seed, step, device), device=device)


def sample_bits(logits_N2d: torch.Tensor, u_Nd: torch.Tensor, check_nan: bool = True) -> torch.Tensor:
    """Per-bit sampling from the 2-way softmax: bit = 1 where u < p(1). Returns uint8 [N, d]."""
    N = logits_N2d.shape[0]
    pair = logits_N2d.float().view(N, -1, 2)
    p1 = torch.sigmoid(pair[..., 1] - pair[..., 0])
    if check_nan and torch.isnan(p1).any():
        raise FloatingPointError("NaN in the logits of this step (check the weights and the dtype)")
    return (u_Nd < p1).to(torch.uint8)


def expected_codes(logits_N2d: torch.Tensor) -> torch.Tensor:
    """The mean code under the per-bit distributions: (2 p(1) - 1) / sqrt(d) per bit, float32 [N, d].

    Per bit (in units of 1/sqrt(d)), with m = 2p - 1 and b a +-1 sample of the same distribution: E[(b - m)^2] =
    1 - m^2, the least of any fixed value; an independent second sample b' misses by E[(b - b')^2] = 2 (1 - m^2),
    a zero code (Partial Update, skipping) by E[b^2] = 1.
    """
    m = bit_means(logits_N2d)
    return m / (m.shape[-1] ** 0.5)


def bit_means(logits_N2d: torch.Tensor) -> torch.Tensor:
    """Per bit, the mean of its +-1 value under the 2-way softmax: m = 2 p(1) - 1, float32 [N, d]."""
    N = logits_N2d.shape[0]
    pair = logits_N2d.float().view(N, -1, 2)
    return torch.tanh(0.5 * (pair[..., 1] - pair[..., 0]))          # 2 sigmoid(x) - 1


def nonfinite(x: torch.Tensor) -> torch.Tensor:
    """A 0-dim bool tensor: does ``x`` hold a NaN or an Inf? Stays on the device (no sync), so a loop can collect
    one flag per step and check them all at its end."""
    return ~torch.isfinite(x).all()
