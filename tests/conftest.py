import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

SHARED = Path(__file__).resolve().parents[2] / "shared"
GOLDEN = SHARED / "golden"
CLIPS = SHARED / "data" / "clips"


@pytest.fixture
def golden():
    if not GOLDEN.is_dir():
        pytest.skip(f"reference data not found at {GOLDEN}")
    return GOLDEN


@pytest.fixture
def clips():
    if not CLIPS.is_dir():
        pytest.skip(f"footage not found at {CLIPS}")
    return CLIPS
