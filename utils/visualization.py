"""Training/evaluation dashboards: live visdom windows, and the same content as files.

The trainer, the evaluation and the self-tests send everything through :class:`Visualizer`:

* ``scalars(step, {"alpha": .., "comp": .., "total": ..}, group="loss")`` -> one visdom line
  window per group (traces appended), and one line in ``metrics.jsonl``;
* ``matting_panel(step, "train", data, label, raw, refined)`` -> a picture per sample:
  composite | trimap | gt alpha | raw alpha | refined alpha | error | re-composite, with
  captions; one visdom image window per tag (updated in place) and ``panels/{tag}_{step}.png``;
* ``text(title, text)`` -> a visdom text pane (appended) and ``text.log``.

Files are ALWAYS written to the run folder, server or not, so a run without visdom loses
nothing; ``curves.png`` (all scalar groups, drawn with OpenCV) is refreshed every
``curve_every`` scalar calls and on :meth:`Visualizer.close`. When no visdom server answers,
or one stops answering mid-run, a single warning is logged and the run carries on with files
only. Start a server that works without internet with
``python -m utils.visdom_frontend serve --port 8097 --env-path runs/visdom``.

Run folder contents::

    metrics.jsonl   one JSON object per scalars() call:
                    {"time": unix s, "env": str, "group": str, "step": int,
                     "values": {name: float or null (non-finite)}}
    panels/         {tag}_{step:07d}.png, RGB, see build_panel for the geometry
    curves.png      one plot per scalar group
    text.log        every text() call, with a time stamp
"""

from __future__ import annotations

import contextlib
import html
import io
import json
import logging
import math
import re
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import cv2
import numpy as np

from data import layout

log = logging.getLogger(__name__)

PANEL_COLUMNS = ("image", "trimap", "gt alpha", "raw alpha", "refined alpha", "error", "recomp")
RECOMP_BG = (0, 177, 64)  # RGB "green screen": matting errors stand out against it
PAD, CAPTION_H, HEADER_H = 4, 18, 24
FONT = cv2.FONT_HERSHEY_SIMPLEX
INK, PLACEHOLDER = (30, 30, 30), (200, 200, 200)
# tab10: distinguishable trace colours (RGB)
PALETTE = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
)


# --- small helpers ---------------------------------------------------------------------------
def _np(x: Any, name: str) -> np.ndarray:
    """Tensor (any device, with grad) or array -> float32 numpy."""
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    try:
        return np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name}: expected a tensor or array, got {type(x).__name__}") from e


def _u8(x01: np.ndarray) -> np.ndarray:
    return (np.clip(x01, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text) or "_"


def _text(img: np.ndarray, text: str, org: tuple[int, int], max_w: int, scale=0.4, color=INK):
    """Draw ``text`` (ASCII) at ``org`` (x, baseline y), shrunk or cut to fit ``max_w`` px."""
    text = text.encode("ascii", "replace").decode()
    while scale > 0.3 and cv2.getTextSize(text, FONT, scale, 1)[0][0] > max_w:
        scale -= 0.05
    while len(text) > 1 and cv2.getTextSize(text, FONT, scale, 1)[0][0] > max_w:
        text = text[:-1]
    cv2.putText(img, text, org, FONT, scale, color, 1, cv2.LINE_AA)


def _fmt(v: float) -> str:
    return f"{v:.3g}"


# --- the matting panel -----------------------------------------------------------------------
@dataclass(frozen=True)
class PanelLayout:
    """Where :func:`build_panel` put things: ``boxes[row][col] = (y0, x0, y1, x1)`` of a tile."""

    rows: int
    columns: tuple[str, ...]
    tile_hw: tuple[int, int]
    boxes: tuple[tuple[tuple[int, int, int, int], ...], ...]
    captions: tuple[tuple[str, ...], ...]


def tile_size(h: int, w: int, tile: int) -> tuple[int, int]:
    """(th, tw) of an (h, w) picture scaled so its longer side is ``tile`` pixels."""
    s = tile / max(h, w)
    return max(1, round(h * s)), max(1, round(w * s))


def _fit(img: np.ndarray, th: int, tw: int) -> np.ndarray:
    if img.shape[:2] == (th, tw):
        return img
    # nearest when enlarging keeps pixels honest (no blur invented); area when shrinking
    interp = cv2.INTER_NEAREST if th >= img.shape[0] else cv2.INTER_AREA
    out = cv2.resize(img, (tw, th), interpolation=interp)
    return out if out.ndim == 3 else out[..., None]


def _rgb(gray01: np.ndarray) -> np.ndarray:
    g = _u8(gray01)
    return np.repeat(g[..., None], 3, axis=2)


def _check_batch(data, label, raw, refined, max_items: int | None = None):
    """Validate shapes and convert to float32 numpy, keeping the first ``max_items`` samples.

    A single sample (C, H, W) is treated as a batch of one.
    """
    items = {"data": data, "label": label, "raw": raw, "refined": refined}
    if getattr(data, "ndim", None) == 3:
        items = {k: None if v is None else v[None] for k, v in items.items()}
    if max_items is not None:  # slice before converting: a GPU batch is copied only in part
        items = {k: None if v is None else v[:max_items] for k, v in items.items()}
    d, lab, r, ref = (None if v is None else _np(v, k) for k, v in items.items())
    if d.ndim != 4 or d.shape[1] != layout.DATA_CHANNELS:
        raise ValueError(f"data must be (N, {layout.DATA_CHANNELS}, H, W), got {d.shape}")
    n, _, h, w = d.shape
    if r is None and ref is None:
        raise ValueError("a panel needs raw or refined alpha (or both)")
    if r is not None and r.shape != (n, 1, h, w):
        raise ValueError(f"raw must be (N, 1, H, W) = {(n, 1, h, w)} like data, got {r.shape}")
    if ref is not None and ref.shape != (n, 1, h, w):
        raise ValueError(f"refined must be (N, 1, H, W) = {(n, 1, h, w)}, got {ref.shape}")
    if lab is not None and lab.shape != (n, layout.LABEL_CHANNELS, h, w):
        raise ValueError(
            f"label must be (N, {layout.LABEL_CHANNELS}, H, W) = "
            f"{(n, layout.LABEL_CHANNELS, h, w)}, got {lab.shape}"
        )
    return d, lab, r, ref


def panel_tiles(
    data, label, raw, refined=None, max_items: int = 4
) -> list[list[tuple[np.ndarray | None, str]]]:
    """Per sample, the 7 pictures of a panel as (RGB uint8 (H, W, 3) or None, caption).

    ``data`` (N, 4, H, W) and ``label`` (N, 11, H, W) follow data/layout.py (label may be None:
    no ground truth); ``raw``/``refined`` (N, 1, H, W) are alphas in [0, 1]. The error map is
    |prediction - gt| (prediction = refined if given, else raw) through the INFERNO colour map
    (black = exact); SAD in captions is over the trimap's unknown region, divided by 1000 like
    the official metric. The re-composite puts the prediction over a plain green background,
    using the true foreground colours from ``label`` when present, else the image.
    """
    d, lab, r, ref = _check_batch(data, label, raw, refined, max_items)
    rows = []
    for i in range(d.shape[0]):
        rgb = np.clip(layout.denormalize_image(layout.image(d[i])), 0, 1).transpose(1, 2, 0)
        scaled_tri = layout.trimap(d[i])[0]
        tri = np.clip(np.rint(layout.unscale_trimap(scaled_tri)), 0, 255).astype(np.uint8)
        unknown = layout.unknown_from_scaled(scaled_tri)
        pred = np.clip(ref[i, 0] if ref is not None else r[i, 0], 0, 1)
        gt = None if lab is None else np.clip(layout.alpha(lab[i])[0], 0, 1)

        def sad(a: np.ndarray, gt=gt, unknown=unknown) -> str:
            return "" if gt is None else f" SAD {_fmt(np.abs(a - gt)[unknown].sum() / 1000)}"

        raw_i = None if r is None else np.clip(r[i, 0], 0, 1)
        if gt is not None:
            err = cv2.applyColorMap(_u8(np.abs(pred - gt)), cv2.COLORMAP_INFERNO)
            err = (
                cv2.cvtColor(err, cv2.COLOR_BGR2RGB),
                f"|{'ref' if ref is not None else 'raw'}-gt|",
            )
        else:
            err = (None, "error: no gt")
        fg = None if lab is None else layout.fg(lab[i]).transpose(1, 2, 0) / 255.0
        if fg is None or not fg.any():  # no true foreground: fall back to the image
            fg = rgb
        a3 = pred[..., None]
        recomp = a3 * fg + (1 - a3) * (np.asarray(RECOMP_BG, np.float32) / 255.0)
        rows.append(
            [
                (_u8(rgb), f"#{i} image"),
                (np.repeat(tri[..., None], 3, axis=2), "trimap"),
                (None if gt is None else _rgb(gt), "gt alpha" if gt is not None else "no gt"),
                (None, "raw n/a") if raw_i is None else (_rgb(raw_i), "raw" + sad(raw_i)),
                (
                    None if ref is None else _rgb(ref[i, 0]),
                    "refined" + sad(pred) if ref is not None else "no refine",
                ),
                err,
                (_u8(recomp), "recomp on green"),
            ]
        )
    return rows


def build_panel(
    data, label, raw, refined=None, max_items: int = 4, tile: int = 160, title: str = ""
) -> tuple[np.ndarray, PanelLayout]:
    """Compose a matting panel: RGB uint8 (H, W, 3) and where each tile went.

    One row per sample (at most ``max_items``), columns :data:`PANEL_COLUMNS`; every tile is
    resized so its longer side is ``tile`` px (nearest-neighbour when enlarging) and has its
    caption in a strip of CAPTION_H px above it; the panel starts with a HEADER_H px ``title``
    strip. Missing pictures (no label, no refine head) are grey "n/a" tiles.
    """
    d, lab, r, ref = _check_batch(data, label, raw, refined, max_items)
    rows = panel_tiles(d, lab, r, ref)
    h, w = d.shape[-2:]
    th, tw = tile_size(h, w, tile)
    ncol = len(PANEL_COLUMNS)
    cell_h, cell_w = CAPTION_H + th + PAD, tw + PAD
    canvas = np.full((HEADER_H + len(rows) * cell_h, PAD + ncol * cell_w, 3), 255, np.uint8)
    _text(canvas, title, (PAD, HEADER_H - 8), canvas.shape[1] - 2 * PAD, scale=0.5)
    boxes, captions = [], []
    for ri, row in enumerate(rows):
        row_boxes = []
        for ci, (img, caption) in enumerate(row):
            y0 = HEADER_H + ri * cell_h + CAPTION_H
            x0 = PAD + ci * cell_w
            if img is None:
                canvas[y0 : y0 + th, x0 : x0 + tw] = PLACEHOLDER
                _text(canvas, "n/a", (x0 + tw // 2 - 10, y0 + th // 2 + 4), tw)
            else:
                canvas[y0 : y0 + th, x0 : x0 + tw] = _fit(img, th, tw)
            _text(canvas, caption, (x0 + 1, y0 - 5), tw - 2)
            row_boxes.append((y0, x0, y0 + th, x0 + tw))
        boxes.append(tuple(row_boxes))
        captions.append(tuple(c for _, c in row))
    return canvas, PanelLayout(len(rows), PANEL_COLUMNS, (th, tw), tuple(boxes), tuple(captions))


# --- loss curves -----------------------------------------------------------------------------
def render_curves(
    history: Mapping[str, Mapping[str, Sequence[tuple[int, float]]]],
    title: str = "",
    width: int = 900,
    plot_height: int = 240,
    marker_groups: Sequence[str] = (),
) -> np.ndarray:
    """All scalar groups stacked vertically, drawn by matplotlib (Agg, offline, its bundled
    font): RGB uint8 (HEADER_H + G * plot_height, width, 3).

    ``history[group][name]`` is a sequence of (step, value) pairs; non-finite values must
    already be dropped. A group whose positive values span 50x or more gets a log y axis;
    ``marker_groups`` (sparse series such as validation) get a dot on every point. Each legend
    entry ends with the series' last value.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    dpi, height = 100, HEADER_H + len(history) * plot_height
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi, facecolor="white")
    FigureCanvasAgg(fig)
    fig.text(PAD / width, 1 - (HEADER_H - 6) / height, title, fontsize=9)
    left, right = 62 / width, (width - 150) / width  # room for tick labels and the legend
    for i, (group, traces) in enumerate(history.items()):
        top, bottom = HEADER_H + i * plot_height + 24, HEADER_H + (i + 1) * plot_height - 34
        ax = fig.add_axes((left, 1 - bottom / height, right - left, (bottom - top) / height))
        ax.set_title(group, loc="left", fontsize=9)
        ax.grid(color="0.9")
        ax.tick_params(labelsize=7)
        ax.set_xlabel("iteration", fontsize=7, loc="right")
        ax.xaxis.get_major_locator().set_params(integer=True)  # iterations are integers
        series = {k: np.asarray(v, np.float64).reshape(-1, 2) for k, v in traces.items() if len(v)}
        if not series:
            continue
        ys = np.concatenate([v[:, 1] for v in series.values()])
        if (ys > 0).all() and ys.max() / ys.min() >= 50:  # lr schedules, early losses
            ax.set_yscale("log")
        for k, (name, v) in enumerate(series.items()):
            order = np.argsort(v[:, 0], kind="stable")
            marker = "o" if group in marker_groups or len(v) == 1 else None
            color = np.array(PALETTE[k % len(PALETTE)]) / 255
            label = f"{name} {_fmt(v[-1, 1])}"
            ax.plot(v[order, 0], v[order, 1], color=color, lw=2, marker=marker, ms=4, label=label)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


# --- the visdom client -----------------------------------------------------------------------
class VisdomFailure(RuntimeError):
    """The visdom server did not accept a request."""


class _DropVisdomChatter(logging.Filter):
    # The client warns on every construction that without the incoming socket it cannot
    # receive events; that is the point of use_incoming_socket=False.
    def filter(self, record: logging.LogRecord) -> bool:
        return "Without the incoming socket" not in str(record.msg)


_client_cls = None


def _make_client(server: str, port: int, env: str, timeout_s: float):
    """A visdom.Visdom that times out, raises on HTTP errors and bypasses proxies on loopback.

    Raises ConnectionError (from visdom, with the requests error as ``__context__``) when the
    server does not answer.
    """
    global _client_cls
    if _client_cls is None:
        import requests
        import visdom

        logging.getLogger("visdom").addFilter(_DropVisdomChatter())

        class _Client(visdom.Visdom):
            def __init__(self, *args, timeout_s: float = 5.0, **kwargs):
                self.timeout_s = timeout_s
                super().__init__(*args, **kwargs)

            @property
            def session(self):
                if self._session is None:
                    s = requests.Session()
                    host = self.server_base_name.split(":")[0].strip("[]")
                    # an http_proxy meant for the internet must not swallow a local server
                    s.trust_env = host not in ("localhost", "127.0.0.1", "::1")
                    self._session = s
                return self._session

            def _handle_post(self, url, data=None):
                r = self.session.post(url, data=data or {}, timeout=self.timeout_s)
                if r.status_code != 200:
                    raise requests.HTTPError(f"HTTP {r.status_code} from {url}: {r.text[:200]}")
                return r.text

        _client_cls = _Client
    with warnings.catch_warnings():
        # visdom 0.2.4 calls the deprecated logger.warn() in its constructor
        warnings.filterwarnings("ignore", "The 'warn' method is deprecated", DeprecationWarning)
        return _client_cls(
            server=server,
            port=port,
            env=env,
            use_incoming_socket=False,
            raise_exceptions=True,
            timeout_s=timeout_s,
        )


# --- the Visualizer --------------------------------------------------------------------------
class Visualizer:
    """Send scalars, matting panels and text to visdom (when reachable) and to ``run_dir``.

    Args:
        run_dir: folder for metrics.jsonl, panels/, curves.png, text.log (created).
        env: visdom environment, one per run and stage, e.g. ``"<run>-stage1"``.
        server, port: visdom server (``http://localhost:8097`` by default).
        enabled: False -> files only, no network attempt at all.
        panel_every: minimum iterations between two panels of the same tag; the trainer may
            call :meth:`matting_panel` every iteration and only every ``panel_every``-th is drawn.
        curve_every: rewrite curves.png (and ask the server to save the env) every this many
            :meth:`scalars` calls; always on :meth:`close`.
        tile: panel tile size in px (longer side).
        timeout_s: per-request timeout; a server that does not answer in time counts as gone.
        marker_groups: scalar groups drawn with point markers, for sparse series such as
            per-epoch validation (a line through one point is invisible).
    """

    def __init__(
        self,
        run_dir: str | Path,
        env: str,
        server: str = "http://localhost",
        port: int = 8097,
        enabled: bool = True,
        panel_every: int = 500,
        curve_every: int = 50,
        tile: int = 160,
        timeout_s: float = 5.0,
        marker_groups: Sequence[str] = ("val", "real"),
    ):
        self.run_dir = Path(run_dir)
        (self.run_dir / "panels").mkdir(parents=True, exist_ok=True)
        self.env = env
        url = urlparse(server if "://" in server else f"http://{server}")
        # "http://host:8097" names the port itself; visdom would append ":port" again
        host = url.hostname or "localhost"
        self.server = f"{url.scheme}://[{host}]" if ":" in host else f"{url.scheme}://{host}"
        self.port = int(url.port or port)
        self.panel_every, self.curve_every = int(panel_every), int(curve_every)
        self.tile, self.timeout_s = int(tile), float(timeout_s)
        self.marker_groups = frozenset(marker_groups)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.curves_path = self.run_dir / "curves.png"
        self.text_path = self.run_dir / "text.log"
        self._history: dict[str, dict[str, list[tuple[int, float]]]] = {}
        self._load_history()
        self._metrics = open(self.metrics_path, "a", encoding="utf-8")
        self._last_panel: dict[str, int] = {}
        self._windows: set[str] = set()
        self._n_scalars = 0
        self._warned = False
        self._closed = False
        self._vis = None
        if enabled:
            self._connect()
        else:
            log.info("visdom disabled: plots and panels go to %s only", self.run_dir)

    # -- connection ---------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        """True while visdom accepts what is sent (False after any failure, and when disabled)."""
        return self._vis is not None

    def _connect(self) -> None:
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # visdom prints "waiting" dots
                vis = _make_client(self.server, self.port, self.env, self.timeout_s)
                ok = vis.check_connection(timeout_seconds=self.timeout_s)
            if not ok:
                raise VisdomFailure("check_connection() failed")
            self._vis = vis
            log.info("visdom: env %r at %s:%d", self.env, self.server, self.port)
        except Exception as e:
            self._offline(e, f"no visdom server answers at {self.server}:{self.port}")

    def _offline(self, err: BaseException, what: str = "the visdom server stopped answering"):
        self._vis = None
        if self._warned:
            return
        self._warned = True
        cause = err.__context__ or err  # visdom re-raises requests errors without detail
        detail = f"{type(cause).__name__}: {cause}"[:300]
        log.warning(
            "%s (%s); carrying on without visdom: plots and panels are written to %s "
            "(start one offline with `python -m utils.visdom_frontend serve`)",
            what,
            detail,
            self.run_dir,
        )
        log.debug("visdom failure", exc_info=err)

    def _call(self, fn, *args, expect: str | None = None, **kwargs) -> bool:
        """Run one visdom client call; on any failure go offline. Returns success."""
        if self._vis is None:
            return False
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                out = fn(*args, **kwargs)
            if expect is not None and out != expect:
                raise VisdomFailure(f"server answered {str(out)[:200]!r}, expected {expect!r}")
            return True
        except Exception as e:
            self._offline(e)
            return False

    def _exists(self, win: str) -> bool:
        if win in self._windows:
            return True
        if self._vis is None:
            return False
        with contextlib.redirect_stdout(io.StringIO()):
            found = self._vis.win_exists(win)
        if found is None:
            raise VisdomFailure(f"win_exists({win!r}) failed")
        return found

    # -- scalars ------------------------------------------------------------------------------
    def _load_history(self) -> None:
        """Resume: earlier records of this env feed curves.png (a torn last line is skipped)."""
        if not self.metrics_path.is_file():
            return
        for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and rec.get("env") == self.env:
                self._remember(rec["group"], int(rec["step"]), rec.get("values", {}))

    def _remember(self, group: str, step: int, values: Mapping[str, float | None]) -> None:
        traces = self._history.setdefault(group, {})
        for k, v in values.items():
            if v is not None:
                traces.setdefault(k, []).append((step, v))

    def scalars(self, step: int, values: Mapping[str, float], group: str) -> None:
        """Record scalars (floats, numpy or 0-d tensors) of one ``group`` at ``step``.

        Non-finite values are stored as null in metrics.jsonl and not plotted (a NaN in the
        visdom JSON would break the page).
        """
        step = int(step)
        clean: dict[str, float | None] = {}
        for k, v in values.items():
            f = float(v.detach() if hasattr(v, "detach") else v)  # a loss tensor is fine
            clean[str(k)] = f if math.isfinite(f) else None
        rec = {"time": round(time.time(), 3), "env": self.env, "group": group, "step": step}
        rec["values"] = clean
        self._metrics.write(json.dumps(rec) + "\n")
        self._metrics.flush()
        self._remember(group, step, clean)
        self._send_scalars(step, clean, group)
        self._n_scalars += 1
        if self.curve_every > 0 and self._n_scalars % self.curve_every == 0:
            self.write_curves()
            self._save_env()

    def _send_scalars(self, step: int, values: Mapping[str, float | None], group: str) -> None:
        finite = {k: v for k, v in values.items() if v is not None}
        if self._vis is None or not finite:
            return
        win = f"line_{_safe_name(group)}"
        try:
            exists = self._exists(win)
        except Exception as e:
            self._offline(e)
            return
        if not exists:
            names = list(finite)
            y = np.array([[finite[k] for k in names]], np.float64)
            opts = dict(title=group, legend=names, xlabel="iteration", ylabel=group)
            if group == "lr":  # learning rates span decades and sit near 0 on a linear axis
                opts.update(ytype="log")
            opts.update(showlegend=True, width=440, height=300)
            if group in self.marker_groups:
                opts.update(markers=True, markersize=7)
            ok = self._call(
                self._vis.line, Y=y, X=np.full_like(y, step), win=win, opts=opts, expect=win
            )
        else:
            # one request per trace: appending by name also creates traces that are new
            ok = all(
                self._call(
                    self._vis.line,
                    Y=np.array([v]),
                    X=np.array([step]),
                    win=win,
                    name=k,
                    update="append",
                    expect=win,
                )
                for k, v in finite.items()
            )
        if ok:
            self._windows.add(win)

    def history(self) -> dict[str, dict[str, list[tuple[int, float]]]]:
        """Every finite scalar so far (including earlier runs of this env in metrics.jsonl)."""
        return {g: {k: list(v) for k, v in t.items()} for g, t in self._history.items()}

    def write_curves(self) -> Path | None:
        """Render curves.png from the scalar history; returns its path (None if no scalars)."""
        if not self._history:
            return None
        img = render_curves(
            self._history,
            title=f"{self.env} | {time.strftime('%F %T')}",
            marker_groups=self.marker_groups,
        )
        _write_png(self.curves_path, img)
        return self.curves_path

    # -- panels -------------------------------------------------------------------------------
    def panel_due(self, step: int, tag: str) -> bool:
        """Whether :meth:`matting_panel` would draw a ``tag`` panel at ``step``."""
        last = self._last_panel.get(tag)
        return last is None or step < last or step - last >= max(self.panel_every, 1)

    def matting_panel(
        self,
        step: int,
        tag: str,
        data,
        label,
        raw,
        refined=None,
        max_items: int = 4,
        force: bool = False,
    ) -> Path | None:
        """Draw a panel of up to ``max_items`` samples of a batch (see :func:`panel_tiles`).

        Shapes follow data/layout.py: data (N, 4, H, W), label (N, 11, H, W) or None,
        raw/refined (N, 1, H, W) in [0, 1]; tensors may live on any device. Throttled per tag
        by ``panel_every`` unless ``force``; returns the PNG path, or None when not due.
        """
        step = int(step)
        if not force and not self.panel_due(step, tag):
            return None
        self._last_panel[tag] = step
        title = f"{self.env} | {tag} | step {step}"
        img, _ = build_panel(data, label, raw, refined, max_items, self.tile, title)
        return self.image(step, tag, img)

    def example_panel(
        self, step: int, tag: str, example, alpha_u8: np.ndarray, refined: bool = False
    ) -> Path | None:
        """Show one scored test image (a ``MattingExample`` and its predicted 8-bit alpha)
        as a matting panel, always (not throttled).

        ``refined``: the prediction is a refine head's output (shown in that column; the raw
        alpha is not available here). Test sets carry no fg/bg, so the re-composite uses the
        image itself.
        """
        from data import layout

        data = layout.make_data(example.image, example.trimap)
        zeros = np.zeros_like(example.image)
        label = layout.make_label(zeros, zeros, example.image, example.alpha, example.trimap)
        pred = (alpha_u8.astype(np.float32) / 255.0)[None, None]
        raw, ref = (None, pred) if refined else (pred, None)
        return self.matting_panel(step, tag, data[None], label[None], raw, ref, force=True)

    def image(self, step: int, tag: str, rgb: np.ndarray) -> Path:
        """Show an RGB uint8 picture (H, W, 3) in the ``tag`` window (replaced in place) and
        write it to ``panels/{tag}_{step}.png``; returns the PNG path."""
        path = self.run_dir / "panels" / f"{_safe_name(tag)}_{int(step):07d}.png"
        _write_png(path, rgb)
        if self._vis is not None:
            win = f"panel_{_safe_name(tag)}"
            # no visdom caption: panels label their columns in the picture, and visdom's
            # layout does not reserve room for a caption under a tall image
            opts = dict(title=f"{tag} (step {step})", width=rgb.shape[1], height=rgb.shape[0])
            if self._call(self._vis.image, rgb.transpose(2, 0, 1), win=win, opts=opts, expect=win):
                self._windows.add(win)
        return path

    # -- text ---------------------------------------------------------------------------------
    def text(self, title: str, text: str) -> None:
        """Append ``text`` to the pane called ``title`` (e.g. "config", "epochs") and text.log."""
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with open(self.text_path, "a", encoding="utf-8") as f:
            f.write(f"=== {title} | {stamp}\n{text.rstrip()}\n")
        if self._vis is None:
            return
        win = f"text_{_safe_name(title)}"
        body = f"<pre style='margin:0'>{html.escape(text.rstrip())}</pre>"
        try:
            append = self._exists(win)
        except Exception as e:
            self._offline(e)
            return
        opts = dict(title=title, width=440, height=300)
        vis = self._vis

        def send() -> str:
            out = vis.text(body, win=win, opts=opts, append=append)
            if append and out == "win does not exist":  # closed in the browser: open it again
                out = vis.text(body, win=win, opts=opts)
            return out

        if self._call(send, expect=win):
            self._windows.add(win)

    # -- end ----------------------------------------------------------------------------------
    def _save_env(self) -> None:
        # the server keeps envs in memory; saving writes <env_path>/<env>.json so they survive
        # a server restart
        if self._vis is not None:
            self._call(self._vis.save, [self.env], expect=json.dumps([self.env.replace("/", "_")]))

    def close(self) -> None:
        """Write curves.png, save the visdom env on the server, close files. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.write_curves()
        self._save_env()
        self._metrics.close()

    def __enter__(self) -> Visualizer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def run_visualizer(stage_dir: Path, cfg: Mapping[str, Any]) -> Visualizer:
    """The dashboard of one training stage (visdom env ``<run>-stage<N>``, files in the stage
    folder), starting with the run's whole configuration."""
    viz = Visualizer(
        stage_dir,
        env=f"{cfg['run_name']}-stage{cfg['stage']}",
        server=cfg["visdom_server"],
        port=cfg["visdom_port"],
        enabled=not cfg["no_visdom"],
        panel_every=cfg["panel_every"],
    )
    viz.text("config", json.dumps(dict(cfg), indent=1, sort_keys=True))
    return viz


def training_callbacks(viz: Visualizer) -> dict[str, Callable]:
    """The trainer's events (``train_encoder_decoder.Trainer``) drawn on ``viz``: loss, lr and
    speed curves at logging points, training panels every ``panel_every`` iterations, the
    first two validation images, validation and real-photo curves, throughput."""

    def step_end(trainer, data, label, raw, refined) -> None:
        if viz.panel_due(trainer.iteration, "train"):
            # device tensors: only the samples shown are copied
            viz.matting_panel(trainer.iteration, "train", data, label, raw, refined)

    def log(trainer, losses, lr, samples_per_s) -> None:
        viz.scalars(trainer.iteration, losses, "loss")
        viz.scalars(trainer.iteration, {"lr": lr}, "lr")
        viz.scalars(trainer.iteration, {"samples_per_s": samples_per_s}, "speed")

    def example(trainer, tag, index, example, alpha_u8) -> None:
        if index < 2:
            refined = trainer.stage.refine_head
            viz.example_panel(trainer.iteration, f"{tag} {index}", example, alpha_u8, refined)

    def epoch_end(trainer, record, line, val, real) -> None:
        metrics = ("sad", "mse", "grad", "conn")
        viz.scalars(trainer.iteration, {k: val[k] for k in metrics}, "val")
        if real is not None:
            viz.scalars(trainer.iteration, {k: real[k] for k in metrics}, "real")
        viz.text("epochs", line)

    def throughput(trainer, figures) -> None:
        viz.scalars(trainer.iteration, figures, "throughput")

    return {"step_end": step_end, "log": log, "example": example, "epoch_end": epoch_end,
            "throughput": throughput}  # fmt: skip


def _write_png(path: Path, rgb: np.ndarray) -> None:
    """Write an RGB uint8 image atomically (readers never see half a file)."""
    tmp = path.with_name(path.name + ".tmp.png")
    if not cv2.imwrite(str(tmp), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {tmp}")
    tmp.replace(path)
