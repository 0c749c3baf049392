"""Same videos before and after a refactor: every public preset, every baseline preset and the historical plans
produce the bits recorded in tests/data/same_videos.json (recorded at commit 0a37c29, before issue 25's split of
the accelerators; see tests/same_videos.py)."""
import json

import pytest

import same_videos as sv


@pytest.fixture(scope="module")
def pipe():
    return sv.load()


def test_the_recorded_set_is_the_current_set():
    recorded = json.loads(sv.DATA.read_text())
    assert sorted(recorded) == sorted(sv.key(*r) for r in sv.all_runs())
    assert len({v["bits"] for v in recorded.values()}) > 40        # methods differ: the hash sees them


@pytest.mark.parametrize("method", sorted({m for m, _, _ in sv.all_runs()}))
def test_same_videos_as_recorded(pipe, method):
    recorded = json.loads(sv.DATA.read_text())
    for m, prompt, seed in sv.all_runs():
        if m != method:
            continue
        want = recorded[sv.key(m, prompt, seed)]
        got = sv.run(pipe, m, prompt, seed)
        assert got["tokens_run"] == want["tokens_run"], (m, prompt, seed)
        assert got["bits"] == want["bits"], (m, prompt, seed)
        assert got["latent_abs_sum"] == pytest.approx(want["latent_abs_sum"], rel=1e-6)
