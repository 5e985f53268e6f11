"""The interactive page under hostile use and load: a real ``demo.py`` server on loopback,
driven by ``gradio_client`` as a script (or many browsers) would drive it.

    python -m benchmarks.bench_page --json benchmarks/results/page-xeon.json
    python -m benchmarks.bench_page --checkpoint runs/NAME --scenarios sizes --sizes 4,16

Scenarios (each against the same server, its memory high-water mark reset before each):

    hostile     files and values a person or a script can send: corrupt, empty and unsized
                files, headers declaring 30000x30000 (PNG, TIFF), a 13000x13000 canvas
                background, NaN / out-of-range band, steps and colour, a 1x10000 background
                photo, a Matte before any photo, a checkpoint upload where it is off
    concurrent  N sessions upload an 800x600 photo and press Matte at the same moment
    sessions    N sessions each upload an all-black photo of M megapixels (a ~100 KB PNG)
    sizes       one Matte of a photo of each size (megapixels): the server's added memory,
                fitted as work area + bytes per pixel (the constants in demo.py)

Every request must end in a result, a message (the page's own refusal) or "retry" (the
queue is full); after each scenario the server must still answer. Reported: per request
outcome, latency (min / median / max) and the server's peak RSS (VmHWM of its process);
the JSON records the machine (benchmarks.common.machine_info).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2
import numpy as np

from benchmarks import common
from utils.cli import OneLineParser, existing, name_list, number, number_list, output
from utils.visdom_frontend import free_port

SCENARIOS = ("hostile", "concurrent", "sessions", "sizes")
SIZES = number_list(float, 0, strict=True, name="megapixel-list", bad=("x", "0", "2,-1", "nan"))
BRUSH = (230, 40, 40, 255)  # demo.BRUSHES["object"], opaque


# --- the server --------------------------------------------------------------------------------
class PageServer:
    """``demo.py`` with ``args`` on a free loopback port, as a subprocess; its log in ``log``."""

    def __init__(self, args: list[str], folder: Path, timeout_s: float = 180.0):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = Path(folder) / "demo.log"
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, str(common.ROOT / "demo.py"), "--port", str(self.port), *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=common.ROOT,
            )
        deadline = time.monotonic() + timeout_s
        while not self.answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"demo.py did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.5)
        self.start_rss = self.rss()

    def answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.url, timeout=5) as r:
                return r.status == 200
        except OSError:
            return False

    def _status(self, key: str) -> int:
        kb = common.status_kb(key, self.proc.pid)
        if kb is None:
            raise RuntimeError(f"no {key} for the server process (Linux /proc needed)")
        return kb * 1024

    def rss(self) -> int:
        return self._status("VmRSS")

    def peak(self) -> int:
        """The server's resident high-water mark, bytes (since start or :meth:`reset_peak`)."""
        return self._status("VmHWM")

    def reset_peak(self) -> None:
        if not common.reset_peak_rss(self.proc.pid):
            raise RuntimeError("cannot reset the server's peak RSS (Linux >= 4.0 needed)")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@contextlib.contextmanager
def page_server(args: list[str], folder: Path) -> Iterator[PageServer]:
    server = PageServer(args, folder)
    try:
        yield server
    finally:
        server.stop()


# --- files a client sends ----------------------------------------------------------------------
def png_header(path: Path, w: int, h: int) -> Path:
    """A PNG signature and an IHDR declaring w x h, nothing else: what a hostile upload or a
    corrupt file can look like (a real 30000x30000 PNG of zeros is ~1 MB, and 900 MB to make)."""
    ihdr = b"IHDR" + struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    crc = struct.pack(">I", zlib.crc32(ihdr))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + ihdr + crc)
    return path


def tiff_header(path: Path, w: int, h: int) -> Path:
    """A little-endian TIFF whose first IFD declares w x h (width/length tags only)."""
    entries = [(256, 4, 1, w), (257, 4, 1, h)]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries)
    path.write_bytes(b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0))
    return path


def photo(path: Path, w: int, h: int, black: bool = False) -> Path:
    """An RGB PNG of w x h: all black, or a smooth photo-like gradient with a disc."""
    if black:
        cv2.imwrite(str(path), np.zeros((h, w, 3), np.uint8))
        return path
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([xx / w * 200, yy / h * 200, np.full_like(xx, 90)], -1)
    disc = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (min(h, w) / 3) ** 2
    img[disc] = (40, 160, 230)
    cv2.imwrite(str(path), img.astype(np.uint8))
    return path


def strokes(preview: str | Path, path: Path) -> Path:
    """A stroke layer the size of the page's preview: an object disc at its centre."""
    import PIL.Image

    with PIL.Image.open(preview) as im:  # the preview as the client downloaded it (WebP)
        w, h = im.size
    layer = np.zeros((h, w, 4), np.uint8)
    cv2.circle(layer, (w // 2, h // 2), min(h, w) // 3, BRUSH, -1)
    cv2.imwrite(str(path), cv2.cvtColor(layer, cv2.COLOR_RGBA2BGRA))
    return path


# --- one request ----------------------------------------------------------------------------------
def outcome(call: Callable[[], Any]) -> dict[str, Any]:
    """{"outcome": "ok" | "message" | "retry" | "failed", "text", "s", "value"} of one request:
    "message" is the page's own refusal, "retry" a full queue, "failed" anything else."""
    t0 = time.perf_counter()
    try:
        value = call()
        kind, text = "ok", ""
    except Exception as e:  # classified below: a benchmark records every outcome, never stops
        value, text = None, " ".join(str(e).split())[:300]
        name = type(e).__name__
        if "queue is full" in text.lower():
            kind = "retry"
        elif "Cannot find a function with `api_name`" in text:
            kind = "message"  # the server offers no such endpoint
        elif name == "AppError" and text and "Traceback" not in text:
            kind = "message"
        else:
            kind, text = "failed", f"{name}: {text}"
    return {"outcome": kind, "text": text, "s": round(time.perf_counter() - t0, 3), "value": value}


class Session:
    """One browser session: a gradio_client Client of its own (its own session id)."""

    def __init__(self, url: str, folder: Path):
        from gradio_client import Client

        self.client = Client(url, verbose=False, download_files=str(folder))
        self.folder = folder
        self.preview: str | None = None

    def upload(self, path: Path) -> dict[str, Any]:
        from gradio_client import handle_file

        r = outcome(lambda: self.client.predict(handle_file(str(path)), api_name="/load_photo"))
        if r["outcome"] == "ok":
            self.preview = r["value"][0]["background"]
        return r

    def matte(self, band: Any = 1.0, colour: str = "#00b140", steps: Any = 0, **kw) -> dict:
        from gradio_client import handle_file

        background = kw.get("background") or self.preview
        try:
            layer = kw.get("layer") or (
                strokes(self.preview, self.folder / "strokes.png") if self.preview else None
            )
        except OSError as e:
            return {
                "outcome": "failed",
                "text": f"preview unreadable: {e}",
                "s": 0.0,
                "value": None,
            }
        editor = {
            "background": handle_file(str(background)) if background else None,
            "layers": [handle_file(str(layer))] if layer else [],
            "composite": None,
            "id": None,
        }
        bg = handle_file(str(kw["bg_photo"])) if kw.get("bg_photo") else None
        return outcome(
            lambda: self.client.predict(editor, band, colour, bg, steps, api_name="/run")
        )

    def upload_checkpoint(self, path: Path) -> dict[str, Any]:
        from gradio_client import handle_file

        return outcome(
            lambda: self.client.predict(handle_file(str(path)), api_name="/load_checkpoint")
        )


def summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    counts = {
        k: sum(r["outcome"] == k for r in results) for k in ("ok", "message", "retry", "failed")
    }
    s = sorted(r["s"] for r in results) or [0.0]
    return {**counts, "latency_s": {"min": s[0], "median": common.median(s), "max": s[-1]}}


# --- scenarios ------------------------------------------------------------------------------------
def hostile_uploads(server: PageServer, folder: Path) -> list[dict[str, Any]]:
    """Each hostile case in its own session: [{case, outcome, text, s}]."""
    files = folder / "hostile"
    files.mkdir(exist_ok=True)
    junk = files / "junk.png"
    junk.write_text("this is not an image")
    empty = files / "empty.png"
    empty.write_bytes(b"")
    ppm = files / "big.ppm"
    ppm.write_bytes(b"P6\n30000 30000\n255\n" + bytes(64))
    good = photo(files / "good.png", 320, 240)
    canvas = files / "canvas.png"  # a real one (~170 KB): its header is read before decoding
    cv2.imwrite(str(canvas), np.zeros((13000, 13000), np.uint8))
    strip = photo(files / "strip.png", 10000, 1)
    cases: list[tuple[str, Callable[[Session], dict]]] = [
        ("corrupt file", lambda s: s.upload(junk)),
        ("empty file", lambda s: s.upload(empty)),
        (
            "PNG header 30000x30000",
            lambda s: s.upload(png_header(files / "huge.png", 30000, 30000)),
        ),
        (
            "TIFF header 30000x30000",
            lambda s: s.upload(tiff_header(files / "huge.tif", 30000, 30000)),
        ),
        ("PPM 30000x30000 (size not in a parsed header)", lambda s: s.upload(ppm)),
        ("Matte before any photo", lambda s: s.matte(background=good, layer=good)),
        (
            "canvas background 13000x13000",
            lambda s: (s.upload(good), s.matte(background=canvas))[1],
        ),
        ("band 'nan'", lambda s: (s.upload(good), s.matte(band="nan"))[1]),
        ("band 1e9", lambda s: (s.upload(good), s.matte(band=1e9))[1]),
        ("steps -5", lambda s: (s.upload(good), s.matte(steps=-5))[1]),
        (
            "colour 'rgb(nan, 0, 0)'",
            lambda s: (s.upload(good), s.matte(colour="rgb(nan, 0, 0)"))[1],
        ),
        ("background photo 10000x1", lambda s: (s.upload(good), s.matte(bg_photo=strip))[1]),
        ("checkpoint upload (off)", lambda s: s.upload_checkpoint(junk)),
    ]
    out = []
    for i, (case, run) in enumerate(cases):
        sub = folder / f"h{i}"
        sub.mkdir(exist_ok=True)
        r = run(Session(server.url, sub))
        out.append({"case": case, **{k: r[k] for k in ("outcome", "text", "s")}})
    return out


def concurrent_mattes(server: PageServer, folder: Path, n: int) -> list[dict[str, Any]]:
    """``n`` sessions upload an 800x600 photo and press Matte, all at once."""
    picture = photo(folder / "concurrent.png", 800, 600)

    def one(i: int) -> dict[str, Any]:
        sub = folder / f"c{i}"
        sub.mkdir(exist_ok=True)
        s = Session(server.url, sub)
        t0 = time.perf_counter()
        up = s.upload(picture)
        r = s.matte() if up["outcome"] == "ok" else up
        return {**{k: r[k] for k in ("outcome", "text")}, "s": round(time.perf_counter() - t0, 3)}

    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def large_sessions(
    server: PageServer, folder: Path, n: int, megapixels: float
) -> list[dict[str, Any]]:
    """``n`` sessions each upload an all-black photo of ``megapixels``, all at once."""
    side = round((megapixels * 1e6) ** 0.5)
    picture = photo(folder / f"black-{side}.png", side, side, black=True)

    def one(i: int) -> dict[str, Any]:
        sub = folder / f"s{i}"
        sub.mkdir(exist_ok=True)
        r = Session(server.url, sub).upload(picture)
        return {k: r[k] for k in ("outcome", "text", "s")}

    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def photo_sizes(server: PageServer, folder: Path, megapixels: tuple[float, ...]) -> dict[str, Any]:
    """One Matte per photo size (4:3, ascending): the server's peak RSS during each, and the
    straight line ``peak = start + work + bytes_per_pixel * pixels`` through the smallest and
    largest size (``start``: the server's RSS when it began serving)."""
    rows = []
    for mp in sorted(megapixels):
        w = round((mp * 1e6 * 4 / 3) ** 0.5)
        h = round(w * 3 / 4)
        sub = folder / f"size{mp:g}"
        sub.mkdir(exist_ok=True)
        s = Session(server.url, sub)
        up = s.upload(photo(sub / "photo.png", w, h))
        server.reset_peak()
        r = s.matte() if up["outcome"] == "ok" else up
        rows.append({"megapixels": w * h / 1e6, "outcome": r["outcome"], "text": r["text"],
                     "s": r["s"], "peak_gib": server.peak() / 2**30})  # fmt: skip
    fit: dict[str, float] = {}
    done = [r for r in rows if r["outcome"] == "ok"]
    if len(done) >= 2 and done[-1]["megapixels"] > done[0]["megapixels"]:
        a, b = done[0], done[-1]
        per_px = (
            (b["peak_gib"] - a["peak_gib"]) * 2**30 / ((b["megapixels"] - a["megapixels"]) * 1e6)
        )
        fixed = a["peak_gib"] - per_px * a["megapixels"] * 1e6 / 2**30 - server.start_rss / 2**30
        fit = {"bytes_per_pixel": per_px, "work_gib": fixed}
    return {"rows": rows, "fit": fit}


def run(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"machine": common.machine_info(), "server_args": args.server_args}
    with tempfile.TemporaryDirectory(prefix="bench-page-") as tmp:
        folder = Path(tmp)
        server_args = list(args.server_args)
        if args.checkpoint:
            server_args += ["--checkpoint", str(args.checkpoint)]
        with page_server(server_args, folder) as server:
            result["rss_at_start_gib"] = server.start_rss / 2**30
            limit = [ln for ln in server.log.read_text().splitlines() if "megapixels" in ln]
            result["start_line"] = limit[-1] if limit else ""
            for name in args.scenarios:
                server.reset_peak()
                t0 = time.perf_counter()
                if name == "hostile":
                    rows = hostile_uploads(server, folder)
                    entry = {"requests": rows, **summary(rows)}
                elif name == "concurrent":
                    rows = concurrent_mattes(server, folder, args.concurrent)
                    entry = {"requests": rows, **summary(rows)}
                elif name == "sessions":
                    rows = large_sessions(server, folder, args.sessions, args.session_mp)
                    entry = {"requests": rows, **summary(rows), "megapixels": args.session_mp}
                else:
                    entry = photo_sizes(server, folder, args.sizes)
                entry.update(
                    seconds=round(time.perf_counter() - t0, 1),
                    peak_rss_gib=server.peak() / 2**30,
                    server_up=server.answers() and server.proc.poll() is None,
                )
                result[name] = entry
                print(f"{name}: {common_line(entry)}", flush=True)
    return result


def common_line(entry: dict[str, Any]) -> str:
    keys = ("ok", "message", "retry", "failed", "latency_s", "peak_rss_gib", "server_up", "fit")
    return ", ".join(f"{k}={entry[k]}" for k in keys if k in entry)


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m benchmarks.bench_page", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--scenarios",
        type=name_list(SCENARIOS),
        default=SCENARIOS[:3],
        help=f"comma-separated, of {','.join(SCENARIOS)} (default: the first three)",
    )
    p.add_argument(
        "--checkpoint",
        type=existing("any"),
        help="serve this DIM checkpoint (default: closed-form)",
    )
    p.add_argument("--concurrent", type=number(int, 1), default=20, help="simultaneous Mattes (20)")
    p.add_argument(
        "--sessions", type=number(int, 1), default=40, help="sessions uploading at once (40)"
    )
    p.add_argument(
        "--session-mp",
        type=number(float, 0.01),
        default=100.0,
        help="their photos' megapixels (100)",
    )
    p.add_argument("--sizes", type=SIZES, default=(2.0, 12.0), help="megapixels for 'sizes' (2,12)")
    p.add_argument("--server-args", default="", help="more demo.py flags, one string")
    p.add_argument("--json", type=output("file"), help="write the results here")
    return p  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.server_args = args.server_args.split()
    import demo

    demo.build_parser().parse_args(args.server_args)  # a bad flag: demo.py's one line, exit 2
    result = run(args)
    if args.json:
        common.write_json(args.json, result)
    bad = [n for n in args.scenarios if result[n].get("failed") or not result[n]["server_up"]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
