"""Single-branch late guidance, one policy beside any method (StageVAR's observation: the late scales hardly need
classifier-free guidance). On the last ``last`` scales of each clip only the conditional branch runs, no CFG/APG:
half the compute there. ``clip0`` sets clip 0 (the first frame) apart: -1 = as ``last``, 0 = guided everywhere."""
from __future__ import annotations

from dataclasses import dataclass

from ..schedule import Scale, Schedule


def position_from_end(schedule: Schedule, scale: Scale) -> int:
    """0 for the last scale of its clip, 1 for the one before, ..."""
    return len(schedule.clip_scales(scale.clip)) - 1 - scale.index_in_clip


@dataclass(frozen=True)
class LateSingleBranch:
    last: int = 0          # single_branch_last in a method string
    clip0: int = -1        # single_branch_clip0

    def __post_init__(self):
        if self.last < 0:
            raise ValueError(f"single_branch_last must be >= 0, got {self.last}")
        if self.clip0 < -1:
            raise ValueError(f"single_branch_clip0 must be >= 0, or -1 (= single_branch_last), got {self.clip0}")

    def branches(self, schedule: Schedule, scale: Scale) -> int:
        """1 (conditional branch only) or 2 (guided) for a step of ``scale``."""
        n = self.clip0 if (scale.clip == 0 and self.clip0 >= 0) else self.last
        return 1 if n > 0 and position_from_end(schedule, scale) < n else 2

    def knobs(self) -> dict:
        return dict(single_branch_last=self.last, single_branch_clip0=self.clip0)


TWO_BRANCHES = LateSingleBranch()
