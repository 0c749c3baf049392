"""Pruning masks drawn over the decoded video (accel/viz.py)."""
import numpy as np
import torch

from faststar.accel import make_accelerator
from faststar.accel.viz import mask_video, pruned_maps
from tiny_accel import plain, run, tiny  # noqa: F401


def test_mask_video_overlay(tiny):
    _, sched, _, _ = tiny
    out = run(tiny, plain(keep_ratios=(0.2, 0.5), update="restore"))
    T = sched.pixel_frames
    frames = np.full((T, 12, 16, 3), 128, dtype=np.uint8)
    vid = mask_video(out.masks, sched, frames)
    assert vid.shape == frames.shape and vid.dtype == np.uint8
    assert np.array_equal(vid[0], frames[0])                     # clip 0 was not pruned
    kept = out.masks[11][0].float()                              # clip 1's last step, its first latent frame
    kept_px = torch.nn.functional.interpolate(kept[None, None], size=(12, 16), mode="nearest")[0, 0].bool().numpy()
    p = 1                                                        # pixel frame 1 shows latent frame 1
    assert np.array_equal(vid[p][kept_px], frames[p][kept_px])
    assert (vid[p][~kept_px] != 128).any(axis=-1).all()
    assert np.array_equal(mask_video([None] * sched.num_steps, sched, frames), frames)


def test_mask_video_shows_the_last_scale_that_ran(tiny):
    """balanced does not run the last scale: the overlay shows the selection of the scale before it."""
    _, sched, _, _ = tiny
    out = run(tiny, make_accelerator("faststar", "balanced"))
    clip2 = [st.index for st in sched.steps if st.scale.clip == 2 and out.masks[st.index] is not None]
    skipped, partial = clip2[-1], clip2[-2]                       # clip 2 is the last clip: its last scale skips
    assert not out.masks[skipped].any() and out.masks[partial].any() and not out.masks[partial].all()
    maps = pruned_maps(out.masks, sched, (12, 16))
    kept = out.masks[partial][0].float()
    want = 1.0 - torch.nn.functional.interpolate(kept[None, None], size=(12, 16), mode="nearest")[0, 0].numpy()
    assert np.array_equal(maps[4], want)                          # latent frame 4 = clip 2's first frame
