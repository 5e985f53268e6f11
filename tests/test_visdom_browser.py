"""A real browser loads the run's visdom page: the loss plot and the matting panel must render.

Headless Debian chromium (installed by .ci/system-deps.sh) opens http://127.0.0.1:P/env/<env>
served by a real, offline visdom server; the test reads the DOM after the page's JavaScript
ran (plotly's SVG traces, the panel's <img>, the websocket's "online" badge) and looks at a
screenshot. Skips locally without chromium/npm, fails under CI=true.

``DIM_VISDOM_SCREENSHOT=path`` keeps the screenshot (how docs/visdom.png can be refreshed).
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from data import layout
from tests.helpers import unavailable
from utils import visdom_frontend
from utils.visdom_frontend import FrontendError, free_port, running_server
from utils.visualization import PALETTE, RECOMP_BG, Visualizer

pytestmark = pytest.mark.slow

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",  # CI runs as root in a container
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--window-size=1400,1000",
    # virtual time runs the page's timers fast and waits for its network requests
    "--virtual-time-budget=8000",
]


@pytest.fixture(scope="module")
def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        unavailable("chromium not installed (bash .ci/system-deps.sh installs it)")
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    try:
        visdom_frontend.install()
    except FrontendError as e:
        unavailable(f"visdom front-end cannot be installed here: {e}")
    port = free_port()
    with running_server(port, tmp_path_factory.mktemp("visdom_envs")) as url:
        yield port, url


def run_chromium(chromium: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile{len(list(tmp_path.glob('profile*')))}"
    cmd = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    except subprocess.TimeoutExpired:
        pytest.fail(f"chromium did not finish in 90 s: {' '.join(cmd)}")
    assert res.returncode == 0, f"chromium failed ({res.returncode}):\n{res.stderr[-3000:]}"
    return res


def make_batch(n: int, size: int = 64, seed: int = 1):
    """n samples (data/layout.py layout): a soft disc over noise, with noisy predictions."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    r = np.hypot(yy - size / 2, xx - size / 2)
    alpha = np.clip((size * 0.35 - r) / 6, 0, 1).astype(np.float32)
    trimap = np.where(alpha <= 0, 0, np.where(alpha >= 1, 255, 128)).astype(np.uint8)
    data, label = [], []
    for _ in range(n):
        fg = np.broadcast_to(rng.integers(0, 256, 3), (size, size, 3)).astype(np.uint8)
        bg = rng.integers(0, 256, (size, size, 3)).astype(np.uint8)
        merged = np.rint(alpha[..., None] * fg + (1 - alpha[..., None]) * bg).astype(np.uint8)
        data.append(layout.make_data(merged, trimap))
        label.append(layout.make_label(bg, fg, merged, alpha, trimap))
    data, label = np.stack(data), np.stack(label)
    raw = np.clip(label[:, 9:10] + 0.15 * rng.standard_normal((n, 1, size, size)), 0, 1)
    refined = np.clip(label[:, 9:10] + 0.05 * rng.standard_normal((n, 1, size, size)), 0, 1)
    return data, label, raw.astype(np.float32), refined.astype(np.float32)


def post_run(port: int, run_dir: Path, env: str) -> Path:
    """A small run: loss (3 traces) and lr curves, a 2-sample panel, a config pane."""
    data, label, raw, refined = make_batch(2)
    vis = Visualizer(run_dir, env, "http://127.0.0.1", port, panel_every=1, tile=128)
    assert vis.connected
    for step in range(0, 60, 10):
        total = 1.0 / (1 + 0.1 * step)
        vis.scalars(step, {"alpha": total * 0.8, "comp": total * 1.2, "total": total}, "loss")
        vis.scalars(step, {"lr": 1e-5 * 0.95**step}, "lr")
    panel = vis.matting_panel(50, "train", data, label, raw, refined, max_items=2)
    vis.text("config", "batch: 2\nloss: <alpha+comp>")
    assert vis.connected
    vis.close()
    return panel


def test_env_page_renders_plots_and_panel(chromium, server, tmp_path):
    port, url = server
    env = "browser-run-stage1"
    panel_png = post_run(port, tmp_path / "run", env)
    page = f"{url}/env/{env}"

    dom = run_chromium(chromium, tmp_path, "--dump-dom", page).stdout
    assert '<div id="app">' in dom, dom[:2000]
    # the front-end reached the server over its websocket and drew the env's windows
    assert 'class="btn btn-success">online<' in dom, "websocket never connected"
    assert dom.count("js-plotly-plot") == 2, "expected the loss and lr plots"
    strokes = re.findall(r'class="js-line" d="M[^"]+" style="[^"]*stroke: rgb\(([\d, ]+)\)', dom)
    colors = {tuple(int(c) for c in s.split(",")) for s in strokes}
    assert len(strokes) >= 4 and set(PALETTE[:3]) <= colors, strokes  # 3 loss traces + lr
    for title in ("loss", "lr", "train (step 50)", "config"):
        assert f'<div class="pull-right">{title}</div>' in dom, f"no window titled {title!r}"
    assert "loss: &lt;alpha+comp&gt;" in dom
    # the panel <img> shows exactly the panel written to the run folder
    srcs = re.findall(r'<img class="content-image[^>]*src="data:image/png;base64,([^"]+)"', dom)
    assert len(srcs) == 1
    shown = cv2.imdecode(np.frombuffer(base64.b64decode(srcs[0]), np.uint8), cv2.IMREAD_COLOR)
    assert (shown == cv2.imread(str(panel_png), cv2.IMREAD_COLOR)).all()

    shot = tmp_path / "page.png"
    run_chromium(chromium, tmp_path, f"--screenshot={shot}", page)
    img = cv2.cvtColor(cv2.imread(str(shot), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert img.shape[:2] == (1000, 1400)

    def pixels(color) -> int:
        return int((np.abs(img.astype(int) - color).sum(axis=2) < 30).sum())

    assert pixels(PALETTE[0]) > 150, "no plotted loss line on screen"
    assert pixels(PALETTE[1]) > 150, "no second trace on screen"
    assert pixels(RECOMP_BG) > 2000, "the panel's re-composite is not on screen"
    if os.environ.get("DIM_VISDOM_SCREENSHOT"):
        shutil.copy(shot, os.environ["DIM_VISDOM_SCREENSHOT"])
