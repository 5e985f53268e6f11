"""utils/visualization.py and utils/visdom_frontend.py against a real visdom server.

A module fixture installs visdom's front-end from the npm registry (cached under .cache/) and
starts ``python -m visdom.server`` on a free loopback port; tests post a run through
:class:`Visualizer` and read it back with the visdom client. Without npm or network the server
tests skip, except under CI=true where they fail: CI must prove them.
"""

from __future__ import annotations

import base64
import http.server
import json
import logging
import math
import threading
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from data import layout
from tests.helpers import unavailable
from utils import visdom_frontend, visualization
from utils.visdom_frontend import FrontendError, free_port, running_server
from utils.visualization import (
    CAPTION_H,
    HEADER_H,
    PAD,
    PALETTE,
    PLACEHOLDER,
    RECOMP_BG,
    Visualizer,
    build_panel,
    render_curves,
)

H = W = 64
TILE = 128  # 2x the crop: tiles are exact nearest-neighbour enlargements


def make_batch(n: int = 3, seed: int = 0):
    """n samples in the data/layout.py layout plus predictions; returns numpy arrays and parts."""
    rng = np.random.default_rng(seed)
    xx = np.mgrid[0:H, 0:W][1]
    alpha = np.clip((xx - 16) / 32.0, 0, 1).astype(np.float32)  # a horizontal ramp
    trimap = np.where(alpha <= 0, 0, np.where(alpha >= 1, 255, 128)).astype(np.uint8)
    datas, labels, rgbs, fgs = [], [], [], []
    for _ in range(n):
        fg = rng.integers(0, 256, (H, W, 3)).astype(np.uint8)
        bg = rng.integers(0, 256, (H, W, 3)).astype(np.uint8)
        merged = np.rint(alpha[..., None] * fg + (1 - alpha[..., None]) * bg).astype(np.uint8)
        datas.append(layout.make_data(merged, trimap))
        labels.append(layout.make_label(bg, fg, merged, alpha, trimap))
        rgbs.append(merged)
        fgs.append(fg)
    data, label = np.stack(datas), np.stack(labels)
    raw = np.clip(label[:, 9:10] + 0.2 * rng.standard_normal((n, 1, H, W)), 0, 1)
    refined = np.repeat(alpha[None, None], n, axis=0).copy()
    refined[:, :, 40:56, 8:24] = 1.0 - refined[:, :, 40:56, 8:24]  # a known error patch
    parts = SimpleNamespace(alpha=alpha, trimap=trimap, rgb=rgbs, fg=fgs)
    return data, label, raw.astype(np.float32), refined.astype(np.float32), parts


def up(x: np.ndarray) -> np.ndarray:
    return np.repeat(np.repeat(x, TILE // H, 0), TILE // W, 1)


def tile(img: np.ndarray, box) -> np.ndarray:
    y0, x0, y1, x1 = box
    return img[y0:y1, x0:x1].astype(np.int32)


def read_rgb(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img is not None, f"unreadable PNG {path}"
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def panel_shape(rows: int) -> tuple[int, int, int]:
    return (HEADER_H + rows * (CAPTION_H + TILE + PAD), PAD + 7 * (TILE + PAD), 3)


def vis_warnings(caplog) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == visualization.__name__ and r.levelno >= logging.WARNING
    ]


# --- pure functions ---------------------------------------------------------------------------
def test_panel_tiles_show_the_batch():
    data, label, raw, refined, p = make_batch(3)
    img, lay = build_panel(data, label, raw, refined, max_items=2, tile=TILE, title="t")
    assert lay.rows == 2 and len(lay.boxes) == 2 and all(len(r) == 7 for r in lay.boxes)
    assert img.shape == panel_shape(2) and img.dtype == np.uint8
    col = {name: i for i, name in enumerate(lay.columns)}
    for i in range(2):
        b = lay.boxes[i]
        # composite: ImageNet normalisation undone to within rounding
        assert np.abs(tile(img, b[col["image"]]) - up(p.rgb[i])).max() <= 1
        assert (tile(img, b[col["trimap"]]) == up(p.trimap)[..., None]).all()
        assert np.abs(tile(img, b[col["gt alpha"]])[..., 0] - up(p.alpha) * 255).max() <= 0.5
        assert np.abs(tile(img, b[col["raw alpha"]])[..., 0] - up(raw[i, 0]) * 255).max() <= 0.5
        ref_tile = tile(img, b[col["refined alpha"]])[..., 0]
        assert np.abs(ref_tile - up(refined[i, 0]) * 255).max() <= 0.5
        # error map: dark where refined == gt, bright on the flipped patch
        err = tile(img, b[col["error"]]).sum(axis=2)
        wrong = up(np.abs(refined[i, 0] - p.alpha)) > 0.5
        assert err[~up(np.abs(refined[i, 0] - p.alpha) > 0)].max() <= 20
        assert err[wrong].min() >= 300
        # re-composite: refined alpha over true fg and the green background
        a = refined[i, 0][..., None]
        want = a * p.fg[i] + (1 - a) * np.asarray(RECOMP_BG, np.float32)
        assert np.abs(tile(img, b[col["recomp"]]) - up(want)).max() <= 1
        # captions: drawn above each tile, SAD over the unknown region (/1000)
        unknown = p.trimap == 128
        sad = np.abs(raw[i, 0] - p.alpha)[unknown].sum() / 1000
        assert lay.captions[i][col["raw alpha"]] == f"raw SAD {sad:.3g}"
        for y0, x0, _, x1 in b:
            strip = img[y0 - CAPTION_H : y0, x0:x1]
            assert (strip < 128).any(), "caption text missing"


def test_panel_without_label_or_refine_head():
    data, _, raw, _, p = make_batch(1)
    img, lay = build_panel(data, None, raw, None, tile=TILE)
    assert lay.rows == 1 and img.shape == panel_shape(1)
    caps = dict(zip(lay.columns, lay.captions[0], strict=True))
    assert caps["gt alpha"] == "no gt" and caps["refined alpha"] == "no refine"
    for name in ("gt alpha", "refined alpha", "error"):
        t = tile(img, lay.boxes[0][lay.columns.index(name)])
        assert (t == PLACEHOLDER).all(axis=2).mean() > 0.95  # grey, apart from "n/a"
    # no true foreground: the image itself is re-composited
    a = raw[0, 0][..., None]
    want = a * p.rgb[0] + (1 - a) * np.asarray(RECOMP_BG, np.float32)
    assert np.abs(tile(img, lay.boxes[0][6]) - up(want)).max() <= 2


def test_panel_rejects_wrong_shapes():
    data, label, raw, _, _ = make_batch(2)
    with pytest.raises(ValueError, match="label must be"):
        build_panel(data, label[:, :9], raw)
    with pytest.raises(ValueError, match="raw must be"):
        build_panel(data, label, raw[:, :, :32])
    with pytest.raises(ValueError, match="data must be"):
        build_panel(data[:, :3], label, raw)


def test_render_curves_draws_each_group():
    hist = {
        "loss": {"total": [(0, 1.0), (100, 0.6), (200, 0.2)], "alpha": [(0, 0.5), (200, 0.1)]},
        "lr": {"lr": [(0, 1e-3), (100, 1e-4), (200, 1e-5)]},  # spans decades: log axis
    }
    img = render_curves(hist, title="run", width=900, plot_height=240)
    assert img.shape == (HEADER_H + 2 * 240, 900, 3)

    def trace(plot: np.ndarray, color) -> tuple[np.ndarray, np.ndarray]:
        ys, xs = np.nonzero(np.abs(plot.astype(int) - color).sum(axis=2) < 40)
        inside = xs < 900 - 150  # leave out the legend swatch
        return xs[inside], ys[inside]

    loss = img[HEADER_H : HEADER_H + 240]
    xs, ys = trace(loss, PALETTE[0])
    assert len(xs) > 200
    assert ys[xs == xs.min()].mean() < ys[xs == xs.max()].mean() - 100  # falls to the right
    lr = img[HEADER_H + 240 :]
    xs, ys = trace(lr, PALETTE[0])
    left, right = ys[xs == xs.min()].mean(), ys[xs == xs.max()].mean()
    mid = ys[np.abs(xs - (xs.min() + xs.max()) / 2) <= 1].mean()
    assert abs(mid - (left + right) / 2) < 6  # a straight line: the y axis is logarithmic


def test_curves_file_is_a_png_of_the_expected_size_drawn_by_matplotlib(tmp_path):
    """curves.png is a real PNG (signature, header size) drawn by matplotlib offline."""
    import sys

    from utils.image_io import image_size

    vis = Visualizer(tmp_path, "curves", enabled=False, curve_every=0)
    for step in range(0, 300, 10):
        vis.scalars(step, {"total": 1.0 / (1 + step), "alpha": 0.5 / (1 + step)}, "loss")
    for step in (100, 200, 300):
        vis.scalars(step, {"sad": 20.0 - step / 50}, "val")
    path = vis.write_curves()
    assert path == tmp_path / "curves.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert image_size(path) == (HEADER_H + 2 * 240, 900)  # (H, W): header + 2 groups
    assert "matplotlib.backends.backend_agg" in sys.modules
    pixels = read_rgb(path)
    assert (pixels != 255).any(axis=2).mean() > 0.02, "nothing drawn"
    vis.close()


# --- files only -------------------------------------------------------------------------------
def test_fallback_without_server_writes_everything(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    port = free_port()  # nothing listens there
    data, label, raw, refined, _ = make_batch(3)
    t0 = time.monotonic()
    vis = Visualizer(
        tmp_path,
        "fallback-stage1",
        f"127.0.0.1:{port}",
        port=1,
        panel_every=10,
        curve_every=3,
        tile=TILE,
    )  # a port in the URL wins over port=
    assert time.monotonic() - t0 < 3.0
    assert not vis.connected
    sent = []
    for step in range(5):
        values = {"alpha": 1.0 / (step + 1), "comp": 0.5, "total": 0.75 / (step + 1)}
        if step == 3:
            values["comp"] = float("nan")
        vis.scalars(step, values, "loss")
        sent.append((step, values))
        if step == 2:
            assert (tmp_path / "curves.png").is_file()  # every curve_every=3 calls
    vis.scalars(4, {"lr": 1e-5}, "lr")
    assert vis.matting_panel(0, "train", data, label, raw, refined, max_items=2) is not None
    assert vis.matting_panel(5, "train", data, label, raw, refined) is None  # not due yet
    vis.matting_panel(10, "train", data, label, raw, None, max_items=2)
    vis.matting_panel(5, "val", data, label, raw, refined, max_items=3)
    vis.text("config", "lr: 1e-5")
    vis.text("epochs", "epoch 1: SAD 12.3")
    vis.close()
    vis.close()  # idempotent

    warnings = vis_warnings(caplog)
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    message = warnings[0].getMessage()
    assert f"127.0.0.1:{port}" in message and "ConnectionError" in message

    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    recs = [json.loads(x) for x in lines]
    assert len(recs) == 6
    for rec, (step, values) in zip(recs, sent, strict=False):
        assert rec["env"] == "fallback-stage1" and rec["group"] == "loss"
        assert rec["step"] == step
        for k, v in values.items():
            assert rec["values"][k] == (None if math.isnan(v) else pytest.approx(v))
    assert recs[-1]["group"] == "lr" and recs[-1]["values"] == {"lr": 1e-5}

    panels = sorted(p.name for p in (tmp_path / "panels").iterdir())
    assert panels == ["train_0000000.png", "train_0000010.png", "val_0000005.png"]
    want, _ = build_panel(data, label, raw, refined, 2, TILE, "fallback-stage1 | train | step 0")
    got = read_rgb(tmp_path / "panels" / "train_0000000.png")
    assert got.shape == want.shape and (got == want).all()
    assert read_rgb(tmp_path / "panels" / "val_0000005.png").shape[0] > got.shape[0]

    curves = read_rgb(tmp_path / "curves.png")
    assert curves.shape == (HEADER_H + 2 * 240, 900, 3)  # groups "loss" and "lr"
    log_text = (tmp_path / "text.log").read_text()
    assert "=== config" in log_text and "epoch 1: SAD 12.3" in log_text


def test_a_server_that_is_not_visdom_counts_as_none(tmp_path, caplog):
    """Visdom's client ignores HTTP errors; ours must notice them (here 501 from http.server)."""
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        vis = Visualizer(tmp_path, "x", "http://127.0.0.1", server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
    assert not vis.connected
    (warning,) = vis_warnings(caplog)
    assert "HTTP 501" in warning.getMessage()
    vis.scalars(0, {"total": 1.0}, "loss")
    vis.close()
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 1


def test_disabled_makes_no_network_attempt(tmp_path, monkeypatch, caplog):
    def no_client(*a, **k):
        raise AssertionError("enabled=False must not create a visdom client")

    monkeypatch.setattr(visualization, "_make_client", no_client)
    data, label, raw, refined, _ = make_batch(1)
    with Visualizer(tmp_path, "off", enabled=False, panel_every=1) as vis:
        assert not vis.connected
        vis.scalars(0, {"total": 1.0}, "loss")
        vis.matting_panel(0, "train", data, label, raw, refined)
        vis.text("config", "x")
    assert not vis_warnings(caplog)
    assert (tmp_path / "panels" / "train_0000000.png").is_file()
    assert (tmp_path / "curves.png").is_file()


def test_resume_keeps_earlier_points_of_the_same_env(tmp_path):
    with Visualizer(tmp_path, "run-stage1", enabled=False) as vis:
        for step in range(3):
            vis.scalars(step, {"total": 1.0 - 0.1 * step}, "loss")
    with Visualizer(tmp_path, "run-stage2", enabled=False) as vis:
        vis.scalars(0, {"total": 9.0}, "loss")
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"env": "run-stage1", "group": "loss", "st')  # torn by a crash
    with Visualizer(tmp_path, "run-stage1", enabled=False) as vis:
        vis.scalars(3, {"total": 0.6}, "loss")
        hist = vis.history()
    assert hist["loss"]["total"] == [(0, 1.0), (1, 0.9), (2, 0.8), (3, 0.6)]


# --- the offline front-end ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def frontend() -> Path:
    """visdom's front-end installed (npm pack into .cache/, verified, copied into static/)."""
    try:
        return visdom_frontend.install()
    except FrontendError as e:
        unavailable(f"visdom front-end cannot be installed here: {e}")


@pytest.fixture(scope="module")
def visdom_server(frontend, tmp_path_factory):
    """A real visdom server on a free loopback port, envs stored in a temp folder."""
    env_path = tmp_path_factory.mktemp("visdom_envs")
    port = free_port()
    with running_server(port, env_path) as url:
        yield SimpleNamespace(url=url, port=port, env_path=env_path)


def test_frontend_installed_as_build_py_expects(frontend):
    import visdom

    assert visdom_frontend.missing_files() == []
    assert (frontend / "version.built").read_text().strip() == visdom.__version__
    for rel in visdom_frontend.required_files():
        assert (frontend / rel).stat().st_size > 0, rel


def test_offline_install_from_cache_into_a_fresh_folder(tmp_path):
    try:
        visdom_frontend.fetch()  # a no-op when the verified tarballs are cached
    except FrontendError as e:
        unavailable(f"npm tarballs not available: {e}")
    static = tmp_path / "static"
    visdom_frontend.install(static=static, offline=True)
    assert visdom_frontend.missing_files(static) == []
    mathjax = static / visdom_frontend.MATHJAX_DIR
    assert not (mathjax / "unpacked").exists()  # 17 MB of sources left out
    assert (mathjax / "jax/output/HTML-CSS/fonts/TeX").is_dir()
    assert not (mathjax / "fonts/HTML-CSS/Gyre-Pagella").exists()


def test_frontend_errors_say_what_to_do(tmp_path, monkeypatch):
    with pytest.raises(FrontendError, match="fetch --cache"):
        visdom_frontend.fetch(tmp_path, offline=True)
    monkeypatch.setattr(visdom_frontend.shutil, "which", lambda name: None)
    with pytest.raises(FrontendError, match="npm not found"):
        visdom_frontend.fetch(tmp_path)
    bad = tmp_path / visdom_frontend.PACKAGES[0].tarball
    bad.write_bytes(b"not a tarball")
    with pytest.raises(FrontendError, match="missing or corrupt"):
        visdom_frontend.fetch(tmp_path, offline=True)


def test_tornado_66_is_refused(monkeypatch):
    import tornado

    visdom_frontend.check_tornado()  # the pinned one works
    monkeypatch.setattr(tornado, "version", "6.6.0")
    with pytest.raises(FrontendError, match="403"):
        visdom_frontend.check_tornado()


# --- against the real server ------------------------------------------------------------------
def client(port: int, env: str):
    """A plain visdom client, as a user would open one."""
    import visdom

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # visdom's own logger.warn()
        return visdom.Visdom(
            server="http://127.0.0.1",
            port=port,
            env=env,
            use_incoming_socket=False,
            raise_exceptions=True,
        )


def window_data(port: int, env: str) -> dict:
    return json.loads(client(port, env).get_window_data(env=env))


def traces(win: dict) -> dict[str, tuple[list, list]]:
    return {t["name"]: (t["x"], t["y"]) for t in win["content"]["data"]}


def decode_image(win: dict) -> np.ndarray:
    src = win["content"]["src"]
    assert src.startswith("data:image/png;base64,")
    buf = np.frombuffer(base64.b64decode(src.split(",", 1)[1]), np.uint8)
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def test_run_posted_to_real_server_reads_back(visdom_server, tmp_path, caplog):
    import torch

    env = "unit-run-stage1"
    data, label, raw, refined, _ = make_batch(3)
    raw_t = torch.from_numpy(raw).requires_grad_()  # as the trainer passes it
    vis = Visualizer(
        tmp_path, env, "http://127.0.0.1", visdom_server.port, panel_every=1, tile=TILE
    )
    assert vis.connected
    loss = {0: (0.9, 0.8), 10: (0.5, 0.45), 20: (0.3, 0.2)}
    for step, (a, c) in loss.items():
        vis.scalars(step, {"alpha": a, "comp": c, "total": 0.5 * (a + c)}, "loss")
    vis.scalars(30, {"alpha": 0.2, "comp": float("nan"), "refined": 0.25}, "loss")
    vis.scalars(20, {"lr": 1e-5}, "lr")
    vis.scalars(20, {"sad": 40.5, "mse": 0.012, "grad": 30.1, "conn": 39.0}, "val")
    vis.matting_panel(20, "train", torch.from_numpy(data), torch.from_numpy(label), raw_t,
                      torch.from_numpy(refined), max_items=2)  # fmt: skip
    vis.text("config", "lr: 1e-5\nname: <run>")
    vis.text("config", "epoch 1: SAD 40.5")
    assert vis.connected, "a request failed"
    assert not vis_warnings(caplog)

    wins = window_data(visdom_server.port, env)
    assert set(wins) == {"line_loss", "line_lr", "line_val", "panel_train", "text_config"}
    tr = traces(wins["line_loss"])
    assert tr["alpha"] == ([0, 10, 20, 30], pytest.approx([0.9, 0.5, 0.3, 0.2]))
    assert tr["comp"] == ([0, 10, 20], pytest.approx([0.8, 0.45, 0.2]))  # NaN not sent
    assert tr["total"][1] == pytest.approx([0.85, 0.475, 0.25])
    assert tr["refined"] == ([30], pytest.approx([0.25]))  # a new trace joins the window
    assert traces(wins["line_lr"]) == {"lr": ([20], pytest.approx([1e-5]))}
    assert set(traces(wins["line_val"])) == {"sad", "mse", "grad", "conn"}
    # sparse validation points get markers (a line through one point is invisible)
    assert {t["mode"] for t in wins["line_val"]["content"]["data"]} == {"lines+markers"}
    assert {t["mode"] for t in wins["line_loss"]["content"]["data"]} == {"lines"}

    panel = wins["panel_train"]
    assert panel["type"] == "image" and panel["title"] == "train (step 20)"
    shown = decode_image(panel)
    want, lay = build_panel(data, label, raw, refined, 2, TILE, f"{env} | train | step 20")
    assert lay.rows * len(lay.columns) == 2 * 7  # two samples, seven pictures each
    assert shown.shape == panel_shape(2) and (shown == want).all()
    assert (read_rgb(tmp_path / "panels" / "train_0000020.png") == shown).all()

    text = wins["text_config"]["content"]
    assert "name: &lt;run&gt;" in text and "epoch 1: SAD 40.5" in text
    # someone closes the pane in the browser: the next text opens it again
    assert client(visdom_server.port, env).close(win="text_config", env=env) == ""
    vis.text("config", "epoch 2: SAD 38.0")
    assert vis.connected
    text = window_data(visdom_server.port, env)["text_config"]["content"]
    assert "epoch 2" in text and "epoch 1" not in text

    saved = visdom_server.env_path / f"{env}.json"
    assert not saved.exists()
    vis.close()  # asks the server to save the env into its -env_path
    assert set(json.loads(saved.read_text())["jsons"]) == set(wins)


@pytest.mark.slow
def test_server_dying_mid_run_falls_back_with_one_warning(frontend, tmp_path, caplog):
    data, label, raw, refined, _ = make_batch(2)
    port = free_port()
    with running_server(port, tmp_path / "envs"):
        vis = Visualizer(tmp_path / "run", "dies", "http://127.0.0.1", port, panel_every=1)
        assert vis.connected
        vis.scalars(0, {"total": 1.0}, "loss")
        vis.matting_panel(0, "train", data, label, raw, refined)
        assert vis.connected and not vis_warnings(caplog)
    for step in range(1, 4):  # the server is gone now
        vis.scalars(step, {"total": 1.0 / (step + 1)}, "loss")
        vis.matting_panel(step, "train", data, label, raw, refined)
        vis.text("epochs", f"epoch {step}")
    vis.close()
    assert not vis.connected
    assert len(vis_warnings(caplog)) == 1
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 4
    assert len(list((tmp_path / "run" / "panels").glob("train_*.png"))) == 4
    assert (tmp_path / "run" / "curves.png").is_file()


def test_panel_with_only_a_refined_alpha(tmp_path):
    """Validation of a stage-2/3 model yields only the refined alpha: the raw column says so."""
    from utils.visualization import panel_tiles

    d = np.zeros((1, 4, 32, 32), np.float32)
    pred = np.full((1, 1, 32, 32), 0.5, np.float32)
    row = panel_tiles(d, None, None, pred)[0]
    captions = [c for _, c in row]
    assert "raw n/a" in captions and any(c.startswith("refined") for c in captions)
    with pytest.raises(ValueError, match="raw or refined"):
        panel_tiles(d, None, None, None)
