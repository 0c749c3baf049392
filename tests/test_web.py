"""The web studio (`faststar serve`): its logic on a tiny pipeline, and the real page in a headless Chromium
against `faststar serve` on the embedded testbed (CPU)."""
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from faststar.io import read_video
from faststar.web import Studio, preset_choices

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_pipeline import tiny_pipe  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    return Studio(tiny_pipe(), preview_every=1, preview_downscale=1, out_dir=tmp_path_factory.mktemp("studio"))


def test_presets_come_from_the_library():
    from faststar.accel import PRESETS, PUBLIC_PRESETS
    choices = preset_choices()
    assert choices[0] == "dense"
    assert choices[1:] == [p for p in PUBLIC_PRESETS if p in PRESETS["faststar"]]
    assert {"quality", "balanced", "fast-hq", "fast"} <= set(choices)


def test_stream_previews_video_and_dense_comparison(studio):
    events = list(studio.stream("a red ball rolls across a table", seed=3, preset="fast", compare=True))
    steps = [e for e in events if e["kind"] == "step"]
    sched = studio.pipe.spec.schedule(None, None)
    assert [e["info"]["step"] for e in steps] == list(range(sched.num_steps))
    previews = [e["preview"] for e in steps if e["preview"] is not None]
    # preview_every=1: one preview per scale (at its last repetition)
    assert len(previews) == len(sched.scales)
    assert all(p.dtype == np.uint8 and p.shape == (64, 96, 3) for p in previews)
    assert not np.array_equal(previews[0], previews[2])           # the canvas sharpens: the preview changes
    done = events[-1]
    assert done["kind"] == "done"
    frames = read_video(done["video"])
    assert frames.shape == done["out"].frames.shape
    # the last preview of clip 0 is the first frame of the final video (clip 0 is the first frame)
    assert np.abs(previews[len(sched.clip_scales(0)) - 1].astype(int) - done["out"].frames[0].astype(int)).max() <= 1
    # same seed dense beside it, PSNR of the two, the pruning-mask video
    dense = studio.pipe("a red ball rolls across a table", seed=3, progress=False, accelerator=None)
    from faststar.metrics import psnr
    assert done["psnr_db"] == pytest.approx(psnr(done["out"].frames, dense.frames), abs=1e-6)
    assert np.isfinite(done["psnr_db"]) and done["psnr_db"] > 5
    assert read_video(done["dense_video"]).shape == dense.frames.shape
    assert read_video(done["mask_video"]).shape == frames.shape
    assert "PSNR" in done["summary"] and "fast" in done["summary"]


def test_stream_stop_returns_the_video_so_far(studio):
    events = []
    for ev in studio.stream("a cat", seed=1, preset="dense", session="s1"):
        events.append(ev)
        if ev["kind"] == "step" and ev["info"]["step"] == 2:
            studio.request_stop("s1")
    done = events[-1]
    assert done["kind"] == "done"
    stopped = done["out"].stopped_at
    assert stopped is not None and stopped >= 2
    assert f"stopped early after step {stopped + 1} of" in done["summary"]
    assert stopped + 1 < studio.pipe.spec.schedule(None, None).num_steps or stopped == 2
    assert read_video(done["video"]).shape == done["out"].frames.shape


@pytest.mark.parametrize("kw, words", [
    (dict(prompt="   "), "prompt"),
    (dict(prompt="x", seed=-3), "seed"),
    (dict(prompt="x", seed="abc"), "seed"),
    (dict(prompt="x", preset="turbo"), "preset"),
    (dict(prompt="x", guidance_scale=float("nan")), "guidance"),
    (dict(prompt="x", image="/no/such/image.png"), "image"),
])
def test_stream_bad_input_is_one_message(studio, kw, words, tmp_path):
    prompt = kw.pop("prompt")
    events = list(studio.stream(prompt, **kw))
    assert [e["kind"] for e in events][-1] == "error"
    msg = events[-1]["message"]
    assert words in msg and "\n" not in msg and "Traceback" not in msg


def test_bad_image_file_is_one_message(studio, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png at all")
    events = list(studio.stream("x", image=str(bad)))
    assert events[-1]["kind"] == "error" and "image" in events[-1]["message"]


# ---------------------------------------------------------------------------------------------------------------
# the real page in a real browser

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
               GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="2")
    fh = open(log, "w")
    proc = subprocess.Popen([sys.executable, "-m", "faststar.cli", "serve", "--port", str(port), "--host",
                             "127.0.0.1", "--device", "cpu", "--preview-every", "2"],
                            stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}/"
    t0 = time.time()
    while True:
        if proc.poll() is not None:
            fh.close()
            pytest.fail(f"faststar serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if time.time() - t0 > 180:
            proc.kill()
            pytest.fail(f"faststar serve did not answer within 180 s:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    fh.close()


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None or CHROMEDRIVER is None:
        if os.environ.get("FASTSTAR_REQUIRE_BROWSER"):
            pytest.fail("FASTSTAR_REQUIRE_BROWSER is set but chromium / chromedriver are missing (make browser)")
        pytest.skip("Debian's chromium and chromium-driver are not installed (apt-get install chromium "
                    "chromium-driver; .ci/run does this)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the web extra)")
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              "--window-size=1400,1500", "--autoplay-policy=no-user-gesture-required"):
        opts.add_argument(a)
    drv = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    yield drv
    drv.quit()


def _shots_dir(tmp_path) -> Path:
    d = os.environ.get("FASTSTAR_SCREENSHOTS")
    return Path(d) if d else tmp_path


def _text(drv, elem_id):
    return drv.execute_script(f"const e = document.getElementById('{elem_id}'); return e ? e.innerText : '';")


def _preview_src(drv):
    return drv.execute_script("const i = document.querySelector('#preview img'); return i ? i.src : null;")


def _video_src(drv):
    return drv.execute_script("const v = document.querySelector('#video video'); return v ? v.src : null;")


def test_page_in_headless_chromium(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait
    shots = _shots_dir(tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    drv = browser
    drv.get(server)
    wait = WebDriverWait(drv, 60)
    box = wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, "#prompt textarea")))

    # bad input: an empty prompt -> a message in the page, no traceback
    drv.find_element(By.CSS_SELECTOR, "#generate").click()
    WebDriverWait(drv, 60).until(lambda d: "Error" in _text(d, "status"))
    msg = _text(drv, "status")
    assert "prompt" in msg and "Traceback" not in drv.page_source
    drv.save_screenshot(str(shots / "web-bad-input.png"))

    # a prompt, the fastest preset, generate
    box.clear()
    box.send_keys("a red ball rolls across a wooden table")
    radio = drv.find_element(By.XPATH, "//*[@id='preset']//label[.//span[normalize-space()='fast']]")
    radio.click()
    assert drv.find_element(By.XPATH, "//*[@id='preset']//input[@value='fast']").is_selected()
    drv.find_element(By.CSS_SELECTOR, "#generate").click()
    WebDriverWait(drv, 60).until(lambda d: "Error" not in _text(d, "status"))     # the old message is gone

    previews, shot_taken = [], False
    t0 = time.time()
    while _video_src(drv) is None:
        src = _preview_src(drv)
        if src and (not previews or previews[-1] != src):
            previews.append(src)
            if len(previews) == 3 and not shot_taken:
                drv.save_screenshot(str(shots / "web-preview.png"))
                shot_taken = True
        assert "Error" not in _text(drv, "status"), _text(drv, "status")
        assert time.time() - t0 < 300, f"no video after 300 s; status {_text(drv, 'status')!r}"
        time.sleep(0.1)
    # the preview changed at least twice before the final video appeared
    assert len(previews) >= 3, previews
    # the video element plays
    drv.execute_script("document.querySelector('#video video').scrollIntoView();")
    duration = drv.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const v = document.querySelector('#video video');
        const t0 = Date.now();
        (function poll() {
            if (v.readyState >= 1 && isFinite(v.duration) && v.duration > 0) {
                v.muted = true;
                v.play().then(() => setTimeout(() => done([v.duration, v.currentTime, v.error && v.error.code]), 600),
                              (e) => done([v.duration, -1, String(e)]));
            } else if (Date.now() - t0 > 20000) { done([v.duration, -2, v.error && v.error.code]); }
            else setTimeout(poll, 100);
        })();""")
    assert duration[0] > 0, duration
    assert duration[1] > 0, f"the video did not play: {duration}"
    WebDriverWait(drv, 30).until(lambda d: "tokens run" in _text(d, "summary"))
    summary = _text(drv, "summary")
    assert "fast" in summary and "FLOP-model speedup" in summary
    drv.save_screenshot(str(shots / "web-result.png"))

    if os.environ.get("FASTSTAR_SCREENSHOTS"):
        # for docs/ only (slow on a CPU): the same seed dense beside it, PSNR and the pruning masks
        drv.find_element(By.CSS_SELECTOR, "#compare input").click()
        drv.find_element(By.CSS_SELECTOR, "#generate").click()
        WebDriverWait(drv, 600).until(lambda d: "PSNR" in _text(d, "summary"))
        WebDriverWait(drv, 60).until(lambda d: d.execute_script(
            "const v = document.querySelector('#mask_video video'); return v && v.readyState >= 2;"))
        drv.execute_script("document.querySelectorAll('video').forEach(v => { v.currentTime = 0.7; });")
        time.sleep(1.0)
        drv.save_screenshot(str(shots / "web-compare.png"))


def test_one_generation_at_a_time(studio):
    """Two requests at once (two sessions): the second's steps start only after the first's video is done."""
    import threading
    log = []

    def run(tag):
        for ev in studio.stream("a cat", seed=2, preset="fast", session=tag):
            log.append((tag, ev["kind"], time.perf_counter()))
    threads = [threading.Thread(target=run, args=(t,)) for t in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    order = [tag for tag, kind, _ in log if kind == "step"]
    first = order[0]
    n = order.count(first)
    assert order[:n] == [first] * n and set(order[n:]) == {"b" if first == "a" else "a"}
    assert [k for tag, k, _ in log if tag == first][-1] == "done"


def test_cheap_previews_are_shown_at_the_video_size(studio, tmp_path):
    cheap = Studio(studio.pipe, preview_every=3, preview_downscale=2, out_dir=tmp_path)
    events = list(cheap.stream("a cat", seed=2, preset="dense"))
    previews = [e["preview"] for e in events if e["kind"] == "step" and e["preview"] is not None]
    assert len(previews) == 2 and all(p.shape == (64, 96, 3) for p in previews)   # each clip's last scale
    small = studio.pipe.preview(events[-1]["out"].latent, downscale=2)
    assert small.shape == (32, 48, 3)
