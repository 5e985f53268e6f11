"""The interactive page driven by a real browser, as a person uses it.

``python demo.py`` is started on a loopback port; headless Debian chromium (installed by
.ci/system-deps.sh), driven by Playwright, uploads a photo, paints the object's outline with
the mouse, presses Matte and downloads the alpha and the trimap. Every request the page makes
outside this machine is refused and recorded: the page must work with the network unplugged.
The photo is a real one from the alphamatting.com development set when it is present, a
built-in synthetic test image otherwise. Skips locally without chromium or Playwright, fails
under CI=true.

``DIM_DEMO_SCREENSHOT=path`` keeps a screenshot of the page after matting (docs/demo.png).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import cv2
import numpy as np
import pytest

from tests.conftest import ALPHAMATTING_DEV
from tests.helpers import TINY_SYNTHETIC, unavailable
from utils.visdom_frontend import free_port

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
LOCAL = {"127.0.0.1", "localhost", ""}


@pytest.fixture(scope="module")
def browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        unavailable("chromium not installed (bash .ci/system-deps.sh installs it)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("playwright not installed (requirements-dev.txt)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("demo") / "demo.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "demo.py"), "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).read(16)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"demo.py did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
    assert f"open {url}".rstrip("/") in log.read_text(), "demo.py prints its local address"
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> tuple[Path, np.ndarray, str, float]:
    """(image file, ground-truth alpha in [0, 1], what it is, the SAD ratio to trimap-only it
    must beat)."""
    real = ALPHAMATTING_DEV / "input_training_lowres" / "GT04.png"
    if real.is_file():
        gt = cv2.imread(str(ALPHAMATTING_DEV / "gt_training_lowres" / "GT04.png"), 0)
        return real, gt.astype(np.float32) / 255.0, "real photograph GT04", 0.8
    from data.synthetic import ensure_synthetic

    # Photo-sized rather than the tiny set's 128x96 (a traced outline is a few pixels off),
    # and the composite with the fewest soft pixels: a rough outline cannot capture a veil.
    sizes = {**TINY_SYNTHETIC, "test_size": (320, 240)}
    root = ensure_synthetic(tmp_path_factory.mktemp("syn") / "set", seed=0, progress=False, **sizes)

    def soft_share(path: Path) -> float:
        a = cv2.imread(str(root / "test" / "alpha_copy" / path.name), 0)
        return float(((a > 12) & (a < 243)).mean())

    image = min(sorted((root / "test" / "merged").glob("*.png")), key=soft_share)
    gt = cv2.imread(str(root / "test" / "alpha_copy" / image.name), 0)
    return image, gt.astype(np.float32) / 255.0, f"synthetic test image {image.name}", 1.0


def outline(alpha: np.ndarray) -> np.ndarray:
    """The object's outline as a polygon (N, 2) of (x, y): what a person traces roughly."""
    mask = (alpha > 0.5).astype(np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    return cv2.approxPolyDP(max(contours, key=cv2.contourArea), 3, True)[:, 0, :]


def open_page(browser, url: str, blocked: list[str]):
    page = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)

    def route(r):
        if urlparse(r.request.url).hostname in LOCAL or r.request.url.startswith(
            ("data:", "blob:")
        ):
            r.continue_()
        else:  # the network is unplugged
            blocked.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    page.goto(url)
    page.wait_for_selector("#matte")
    return page


def upload(page, path: Path) -> None:
    page.set_input_files("#photo input[type=file]", str(path))


def download(page, name: str, folder: Path) -> np.ndarray:
    with page.expect_download() as d:
        page.click(f'#downloads a[download="{name}"]')
    d.value.save_as(folder / name)
    return cv2.imread(str(folder / name), cv2.IMREAD_UNCHANGED)


def test_paint_matte_and_download_offline(browser, server, photo, tmp_path):
    path, gt, what, ratio = photo
    blocked: list[str] = []
    page = open_page(browser, server, blocked)
    upload(page, path)
    page.wait_for_function("document.querySelector('#status').innerText.includes('Photo')")
    page.wait_for_timeout(500)  # the canvas lays the photo out
    zoom = page.locator("#editor").get_by_text(re.compile(r"^\d+%$")).inner_text()
    scale = int(zoom[:-1]) / 100
    box = page.locator("#editor canvas").first.bounding_box()
    h, w = gt.shape
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2

    def screen(x, y):
        return cx + (x - w / 2) * scale, cy + (y - h / 2) * scale

    poly = outline(gt)
    page.mouse.move(*screen(*poly[0]))
    page.mouse.down()
    for x, y in [*poly[1:], poly[0]]:
        page.mouse.move(*screen(x, y))
    page.mouse.up()
    page.click("#matte")
    page.wait_for_selector('#downloads a[download="alpha.png"]', timeout=180_000)
    status = page.inner_text("#status")
    assert "closed-form" in status and f"{w}x{h}" in status, status
    if os.environ.get("DIM_DEMO_SCREENSHOT"):
        page.screenshot(path=os.environ["DIM_DEMO_SCREENSHOT"], full_page=True)
    alpha = download(page, "alpha.png", tmp_path)
    trimap = download(page, "trimap.png", tmp_path)
    cut = download(page, "cutout.png", tmp_path)
    page.close()

    assert not blocked, f"the page reached outside this machine: {blocked[:5]}"
    assert alpha.shape == (h, w) and trimap.shape == (h, w) and cut.shape == (h, w, 4)
    assert set(np.unique(trimap)) == {0, 128, 255}
    known = trimap != 128
    assert (alpha[known] == trimap[known]).all(), "sure regions are exactly the trimap"
    assert (cut[..., 3] == alpha).all()
    unknown = ~known
    assert unknown.sum() > 0.01 * h * w, "the traced outline got an unknown band"
    # Not trivial: better than the trimap-only baseline (0.5 in the unknown band) on the same
    # trimap, against the ground truth.
    a = alpha.astype(np.float32) / 255.0
    sad = np.abs(a - gt)[unknown].sum()
    baseline = np.abs(0.5 - gt)[unknown].sum()
    assert sad < ratio * baseline, f"{what}: SAD {sad:.0f} vs trimap-only {baseline:.0f}"
    assert np.abs(a - 0.5)[unknown].mean() > 0.2, "the unknown band was matted, not left grey"


def test_bad_files_get_a_message_on_the_page(browser, server, tmp_path):
    blocked: list[str] = []
    page = open_page(browser, server, blocked)
    junk = tmp_path / "holiday.png"
    junk.write_text("this is not an image")
    upload(page, junk)
    page.get_by_text(re.compile("holiday.png: not a readable image")).first.wait_for()
    page.click("#matte")  # nothing loaded yet
    page.get_by_text("no photo: upload one first").first.wait_for()
    assert "Traceback" not in page.content()
    page.close()
    assert not blocked
