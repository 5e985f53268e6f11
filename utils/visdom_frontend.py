"""Offline front-end for the visdom 0.2.4 server, and the documented way to start it.

visdom's wheel ships only ``index.html``, ``main.js`` and a few CSS files; at start-up its server
(``visdom/server/build.py``) downloads jQuery, React, Plotly, MathJax, ... from CDNs and crashes
without internet. This module installs exactly those files from pinned npm packages (checked
against pinned sha512 digests) under visdom's ``static/`` with the names ``build.py`` expects,
then writes ``static/version.built`` so the server skips its downloads.

Usage, from the repository root::

    python -m utils.visdom_frontend install              # npm pack -> cache -> visdom/static
    python -m utils.visdom_frontend status               # what is missing (exit 1 if anything)
    python -m utils.visdom_frontend serve --port 8097 --env-path runs/visdom

For a machine without internet: run ``fetch --cache DIR`` where npm can reach a registry, copy
DIR over, then ``install --cache DIR --offline`` (no npm needed).

tornado >= 6.6 makes the page itself fail (``GET /`` answers 403: ``../user/style.css is not in
root static directory``), so ``serve`` refuses to start with it; requirements.txt pins < 6.6.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import logging
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
VISDOM_VERSION = "0.2.4"  # the build.py this file list was read from
MATHJAX_DIR = "js/mathjax/2.7.5"


class FrontendError(RuntimeError):
    """The front-end could not be fetched, installed or served; the message says what to do."""


@dataclass(frozen=True)
class NpmPackage:
    """One pinned npm tarball and the files visdom needs from it.

    ``files`` maps a path inside the package (below its top folder) to a path under visdom's
    ``static/``; ``tree`` instead copies a whole folder (MathJax loads its parts lazily).
    """

    spec: str
    integrity: str  # npm's sha512 "integrity" of the tarball
    files: tuple[tuple[str, str], ...] = ()
    tree: str | None = None

    @property
    def tarball(self) -> str:
        name, version = self.spec.rsplit("@", 1)
        return f"{name.lstrip('@').replace('/', '-')}-{version}.tgz"


_BS = "dist/fonts/glyphicons-halflings-regular"
PACKAGES: tuple[NpmPackage, ...] = (
    NpmPackage(
        "jquery@3.1.1",
        "sha512-zuiWRmx65Kd1oFGdWLvAjbsumdOBFvs3r1vuqCyKFF79R7exBHNbiNEJ8LR+xkzgfxqBznMD/4Cv6PHXS6mvEw==",
        (("dist/jquery.min.js", "js/jquery.min.js"),),
    ),
    NpmPackage(
        "bootstrap@3.3.7",
        "sha512-qcFaisBrcBhTFkz1IUnGDYnX6ZWfFzH8zOixUDtHW9Ip+r+7MfMFav2rzy7cIHc7rgIg7xjhWBoo1mS/U26j4g==",
        (
            ("dist/js/bootstrap.min.js", "js/bootstrap.min.js"),
            ("dist/css/bootstrap.min.css", "css/bootstrap.min.css"),
            (f"{_BS}.eot", "fonts/glyphicons-halflings-regular.eot"),
            (f"{_BS}.woff2", "fonts/glyphicons-halflings-regular.woff2"),
            (f"{_BS}.woff", "fonts/glyphicons-halflings-regular.woff"),
            (f"{_BS}.ttf", "fonts/glyphicons-halflings-regular.ttf"),
            (f"{_BS}.svg", "fonts/glyphicons-halflings-regular.svg"),
            # build.py checks for this literal name (URL fragment included) before downloading.
            (f"{_BS}.svg", "fonts/glyphicons-halflings-regular.svg#glyphicons_halflingsregular"),
        ),
    ),
    NpmPackage(
        "react@16.2.0",
        "sha512-ZmIomM7EE1DvPEnSFAHZn9Vs9zJl5A9H7el0EGTE6ZbW9FKe/14IYAlPbC8iH25YarEQxZL+E8VW7Mi7kfQrDQ==",
        (("umd/react.production.min.js", "js/react-react.min.js"),),
    ),
    NpmPackage(
        "react-dom@16.2.0",
        "sha512-zpGAdwHVn9K0091d+hr+R0qrjoJ84cIBFL2uU60KvWBPfZ7LPSrfqviTxGHWN0sjPZb2hxWzMexwrvJdKePvjg==",
        (("umd/react-dom.production.min.js", "js/react-dom.min.js"),),
    ),
    NpmPackage(
        "react-modal@3.1.10",
        "sha512-7b77AGWCkdg0YOf/qcYIGCpuwbxRwOA8P3UrUovk4grUNv+idOmHovJAx/Dcd3fuwHtgixxVjpcjVG60985MSA==",
        (("dist/react-modal.min.js", "js/react-modal.min.js"),),
    ),
    NpmPackage(
        "plotly.js-dist-min@2.11.1",
        "sha512-F9WWNht0D3yBLZGHbLoJNfvplXvy+GUPSsA/lCbMuYd/UwzSu6Vmyprxlps9Einw1LDS1hYBrJeioK0lE3ieXA==",
        (("plotly.min.js", "js/plotly-plotly.min.js"),),
    ),
    NpmPackage(
        "sjcl@1.0.7",
        "sha512-xQbiwKfiAj6vyk44ANJ5RRymALRdRZOuRoKNYkWUU404p/RFXmMaay1Z5vRn30GJjkD+psox4Jd38jZojSuNYA==",
        (("sjcl.js", "js/sjcl.js"),),
    ),
    NpmPackage(
        "layout-bin-packer@1.4.0",
        "sha512-dQOZnajbOBGIcS9YlzKrkRtMCGa2oEpyf1zGRn93suphSvPclJe54Sbgtb053GJ21DUk84IBzaeQvjn+Gb10fA==",
        (
            ("dist/layout-bin-packer.js", "js/layout_bin_packer.js"),
            ("dist/layout-bin-packer.js.map", "js/layout-bin-packer.js.map"),
        ),
    ),
    NpmPackage(
        "d3@3.5.17",
        "sha512-yFk/2idb8OHPKkbAL8QaOaqENNoMhIaSHZerk3oQsECwkObkCpJyjYwCe+OHiq6UEdhe1m8ZGARRRO3ljFjlKg==",
        (("d3.min.js", "js/d3.v3.min.js"),),
    ),
    NpmPackage(
        "d3-selection-multi@1.0.1",
        "sha512-mEnRkJ6A+Otd1LuRPV3az+s/RLDmIEhuz/MnT21O2nPcWNH7wZotdIlRjMA4Wpr+n7AESQ5fD8v1J3nL2Mnw9g==",
        (("build/d3-selection-multi.js", "js/d3-selection-multi.v1.js"),),
    ),
    NpmPackage(
        "save-svg-as-png@1.4.17",
        "sha512-7QDaqJsVhdFPwviCxkgHiGm9omeaMBe1VKbHySWU6oFB2LtnGCcYS13eVoslUgq6VZC6Tjq/HddBd1K6p2PGpA==",
        (("lib/saveSvgAsPng.js", "js/saveSvgAsPng.js"),),
    ),
    NpmPackage(
        "react-resizable@1.4.6",
        "sha512-4zLORO51u0/mlDsrVCAA4p266d+3mb2ZMNdiWOotAh/PdnfrRzZhgePmKE08PSQatXVIfMjmyD+Sapay8tmxdQ==",
        (("css/styles.css", "css/react-resizable-styles.css"),),
    ),
    NpmPackage(
        "react-grid-layout@0.16.3",
        "sha512-ytP92EqUjqcFhGzvdeKrK610dQ04GdFwRCWtD6PoeL5wR3liETcFISO7k8RBqnosV86JtXf/DwIfrL0COLs0gg==",
        (("css/styles.css", "css/react-grid-layout-styles.css"),),
    ),
    NpmPackage(
        # Not loaded by the page, but build.py downloads it (as fonts/classnames) when absent.
        "classnames@2.2.5",
        "sha512-DTt3GhOUDKhh4ONwIJW4lmhyotQmV2LjNlGK/J2hkwUcqcbKkCLAdJPtxQnxnlc7SR3f1CEXCyMmc7WLUsWbNA==",
        (("index.js", "fonts/classnames"),),
    ),
    NpmPackage(
        "mathjax@2.7.5",
        "sha512-OzsJNitEHAJB3y4IIlPCAvS0yoXwYjlo2Y4kmm9KQzyIBZt2d8yKRalby3uTRNN4fZQiGL2iMXjpdP1u2Rq2DQ==",
        tree=MATHJAX_DIR,
    ),
)

# The MathJax files build.py checks for (it fetches any that are missing with requests, which
# hangs or crashes offline); all of them come with the mathjax package.
MATHJAX_REQUIRED = (
    "MathJax.js",
    "config/Safe.js",
    "config/TeX-AMS-MML_HTMLorMML.js",
    "extensions/Safe.js",
    "jax/output/SVG/fonts/TeX/fontdata.js",
    "jax/output/SVG/jax.js",
    "jax/output/SVG/fonts/TeX/Size1/Regular/Main.js",
    "jax/output/SVG/config.js",
)
# MathJax ships 60 MB, mostly alternative web fonts and unminified sources; visdom uses its
# default TeX fonts only.
_MATHJAX_SKIP_TOP = {"unpacked", "test", "docs"}
_MATHJAX_FONTS_KEPT = {"TeX", "STIX"}


def required_files() -> list[str]:
    """Every path under visdom's ``static/`` that the offline server needs (POSIX, relative)."""
    out = [dest for pkg in PACKAGES for _, dest in pkg.files]
    out += [f"{MATHJAX_DIR}/{p}" for p in MATHJAX_REQUIRED]
    return out


# --- locations -------------------------------------------------------------------------------
def static_dir() -> Path:
    """visdom's installed ``static/`` folder (what its server serves)."""
    try:
        import visdom
    except ImportError as e:
        raise FrontendError(
            "visdom is not installed in this Python: pip install -r requirements.txt"
        ) from e
    return Path(visdom.__file__).resolve().parent / "static"


def default_cache() -> Path:
    """Tarball cache: $DIM_CACHE_DIR/visdom-frontend, else <repo>/.cache/visdom-frontend."""
    base = os.environ.get("DIM_CACHE_DIR")
    return (Path(base) if base else ROOT / ".cache") / "visdom-frontend"


def _visdom_version() -> str:
    import visdom

    return str(getattr(visdom, "__version__", "unknown"))


def missing_files(static: Path | None = None) -> list[str]:
    """Required front-end files absent from ``static`` (plus ``version.built`` if stale)."""
    static = Path(static) if static else static_dir()
    missing = [p for p in required_files() if not (static / p).is_file()]
    built = static / "version.built"
    if not built.is_file() or built.read_text().strip() != _visdom_version():
        missing.append("version.built")
    return missing


def is_installed(static: Path | None = None) -> bool:
    """True when the visdom server can start without downloading anything."""
    return not missing_files(static)


# --- fetch -----------------------------------------------------------------------------------
def _sri_sha512(path: Path) -> str:
    digest = hashlib.sha512(path.read_bytes()).digest()
    return "sha512-" + base64.b64encode(digest).decode()


def _verified(path: Path, pkg: NpmPackage) -> bool:
    return path.is_file() and _sri_sha512(path) == pkg.integrity


def fetch(cache: Path | None = None, offline: bool = False) -> dict[str, Path]:
    """Make sure every pinned tarball is in ``cache`` and matches its pinned sha512.

    Missing ones are fetched with ``npm pack`` (which honours the user's npm registry/proxy
    configuration). Returns {spec: tarball path}. Raises FrontendError naming what to do.
    """
    cache = Path(cache) if cache else default_cache()
    cache.mkdir(parents=True, exist_ok=True)
    todo = [p for p in PACKAGES if not _verified(cache / p.tarball, p)]
    if todo and offline:
        names = ", ".join(p.spec for p in todo)
        raise FrontendError(
            f"--offline: tarballs missing or corrupt in {cache}: {names}. Run "
            f"`python -m utils.visdom_frontend fetch --cache DIR` on a machine with npm and "
            f"internet, and copy DIR here."
        )
    if todo:
        npm = shutil.which("npm")
        if npm is None:
            raise FrontendError(
                "npm not found on PATH: it fetches visdom's front-end from the npm registry. "
                "Install Node.js/npm (e.g. apt-get install npm), or run `python -m "
                "utils.visdom_frontend fetch --cache DIR` on another machine and then "
                f"`install --cache DIR --offline` here (cache now: {cache})."
            )
        cmd = [npm, "pack", "--json", "--ignore-scripts", "--pack-destination", str(cache)]
        cmd += [p.spec for p in todo]
        log.info("fetching %d npm packages into %s", len(todo), cache)
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired as e:
            raise FrontendError(f"`npm pack` took over 10 minutes: {' '.join(cmd)}") from e
        if res.returncode != 0:
            raise FrontendError(
                f"`npm pack` failed (exit {res.returncode}); is the npm registry reachable?\n"
                f"command: {' '.join(cmd)}\n{res.stderr.strip()[-2000:]}"
            )
    for p in PACKAGES:
        path = cache / p.tarball
        if not path.is_file():
            raise FrontendError(f"npm pack did not produce {path} for {p.spec}")
        if not _verified(path, p):
            raise FrontendError(
                f"{path} does not match the pinned sha512 of {p.spec}; delete it and run "
                f"`python -m utils.visdom_frontend fetch` again"
            )
    return {p.spec: cache / p.tarball for p in PACKAGES}


# --- install ---------------------------------------------------------------------------------
def _members(tgz: tarfile.TarFile) -> Iterator[tuple[str, tarfile.TarInfo]]:
    """Regular files of an npm tarball as (path below the top folder, member)."""
    for m in tgz.getmembers():
        if not m.isfile():
            continue
        parts = PurePosixPath(m.name).parts[1:]  # npm tarballs wrap everything in package/
        if not parts or any(p in ("..", "") or p.startswith("/") for p in parts):
            continue
        yield "/".join(parts), m


def _keep_mathjax(rel: str) -> bool:
    parts = rel.split("/")
    if parts[0] in _MATHJAX_SKIP_TOP:
        return False
    if parts[:2] == ["fonts", "HTML-CSS"] and len(parts) > 3:
        return parts[2] in _MATHJAX_FONTS_KEPT
    if parts[0] == "jax" and len(parts) > 4 and parts[1] == "output" and parts[3] == "fonts":
        return parts[4] in _MATHJAX_FONTS_KEPT
    return True


def _write(dest: Path, data: bytes) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    tmp.write_bytes(data)
    os.replace(tmp, dest)


def _install_package(pkg: NpmPackage, tarball: Path, static: Path) -> int:
    n = 0
    with tarfile.open(tarball, "r:gz") as tgz:
        members = dict(_members(tgz))
        if pkg.tree is not None:
            for rel, m in members.items():
                if _keep_mathjax(rel):
                    _write(static / pkg.tree / rel, tgz.extractfile(m).read())
                    n += 1
        for src, dest in pkg.files:
            if src not in members:
                raise FrontendError(f"{tarball} has no {src} (needed as static/{dest})")
            _write(static / dest, tgz.extractfile(members[src]).read())
            n += 1
    return n


def install(
    cache: Path | None = None,
    static: Path | None = None,
    force: bool = False,
    offline: bool = False,
) -> Path:
    """Install the front-end under visdom's ``static/`` (idempotent). Returns that folder."""
    static = Path(static) if static else static_dir()
    if not force and is_installed(static):
        log.info("visdom front-end already installed in %s", static)
        return static
    version = _visdom_version()
    if version != VISDOM_VERSION:
        log.warning(
            "visdom %s is installed; this file list was made for visdom %s's build.py, so the "
            "server may still try to download files it needs",
            version,
            VISDOM_VERSION,
        )
    if not os.access(static if static.exists() else static.parent, os.W_OK):
        raise FrontendError(
            f"cannot write to visdom's static folder {static}: use a virtual environment you "
            f"own, or run the install as the user who installed visdom"
        )
    tarballs = fetch(cache, offline=offline)
    built = static / "version.built"
    built.unlink(missing_ok=True)  # an interrupted install must not look complete
    n = sum(_install_package(p, tarballs[p.spec], static) for p in PACKAGES)
    missing = [p for p in missing_files(static) if p != "version.built"]
    if missing:
        raise FrontendError(f"install incomplete, still missing under {static}: {missing}")
    _write(built, version.encode())
    log.info("installed %d visdom front-end files into %s", n, static)
    return static


# --- server ----------------------------------------------------------------------------------
def check_tornado() -> None:
    """Raise FrontendError when tornado is too new for visdom 0.2.4's page."""
    import tornado

    major, minor = (int(x) for x in tornado.version.split(".")[:2])
    if (major, minor) >= (6, 6):
        raise FrontendError(
            f"tornado {tornado.version} is installed, but visdom {VISDOM_VERSION}'s page then "
            f"answers 403 ('../user/style.css is not in root static directory'): "
            f"pip install 'tornado<6.6'"
        )


def server_command(
    port: int, env_path: Path | str, bind_local: bool = True, logging_level: str = "INFO"
) -> list[str]:
    """argv that starts the visdom server on ``port``, storing envs in ``env_path``."""
    cmd = [sys.executable, "-m", "visdom.server", "-port", str(port)]
    cmd += ["-env_path", str(env_path), "-logging_level", logging_level]
    if bind_local:
        cmd.append("-bind_local")  # loopback only: reach it through an SSH tunnel
    return cmd


def free_port() -> int:
    """An unused TCP port on 127.0.0.1 (free at the time of the call)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_server(url: str, proc: subprocess.Popen | None = None, timeout_s: float = 30.0):
    """Poll ``url`` until it answers 200; raise FrontendError on timeout or if ``proc`` dies."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise FrontendError(f"visdom server exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
                last = f"HTTP {r.status}"
        except urllib.error.HTTPError as e:
            last = f"HTTP {e.code}"
        except (urllib.error.URLError, OSError) as e:
            last = str(e)
        time.sleep(0.2)
    raise FrontendError(f"visdom server at {url} did not answer within {timeout_s:.0f} s: {last}")


@contextlib.contextmanager
def running_server(
    port: int, env_path: Path | str, log_file: Path | str | None = None, timeout_s: float = 30.0
) -> Iterator[str]:
    """Start a loopback visdom server, yield its base URL, stop it on exit.

    Requires the front-end to be installed (else the server would go to the internet).
    Server output goes to ``log_file`` (default: ``env_path``/server.log).
    """
    missing = missing_files()
    if missing:
        raise FrontendError(
            f"visdom front-end not installed (missing {missing[:3]}...): "
            f"python -m utils.visdom_frontend install"
        )
    check_tornado()
    env_path = Path(env_path)
    env_path.mkdir(parents=True, exist_ok=True)
    log_path = Path(log_file) if log_file else env_path / "server.log"
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            server_command(port, env_path, logging_level="WARNING"),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=env_path,
        )
    try:
        try:
            wait_for_server(url + "/", proc, timeout_s)
        except FrontendError as e:
            tail = log_path.read_text(errors="replace")[-3000:]
            raise FrontendError(f"{e}\n--- {log_path} ---\n{tail}") from e
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- command line ----------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from utils.cli import OneLineParser, output, port_arg

    folder = output("dir", Path)
    ap = OneLineParser(
        prog="python -m utils.visdom_frontend",
        description="Install visdom's front-end for offline use and start the server.",
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name, text in [
        ("install", "fetch (npm pack) and install the front-end under visdom's static/"),
        ("fetch", "only download the pinned npm tarballs into the cache"),
    ]:
        p = sub.add_parser(name, help=text)
        p.add_argument("--cache", type=folder, default=None, help="tarball folder")
        if name == "install":
            p.add_argument("--static-dir", type=folder, default=None, help="default: visdom's")
            p.add_argument("--force", action="store_true", help="reinstall even if complete")
            p.add_argument("--offline", action="store_true", help="use --cache only, no npm")
    sub.add_parser("status", help="list missing front-end files (exit 1 if any)")
    p = sub.add_parser("serve", help="start the visdom server offline (loopback only)")
    p.add_argument("--port", type=port_arg, default=8097)
    p.add_argument("--env-path", type=folder, default=Path("runs/visdom"), help="saved envs")
    p.add_argument("--public", action="store_true", help="listen on all interfaces")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    try:
        if args.cmd == "fetch":
            paths = fetch(args.cache)
            print(f"{len(paths)} tarballs in {next(iter(paths.values())).parent}")
        elif args.cmd == "install":
            static = install(args.cache, args.static_dir, args.force, args.offline)
            print(f"visdom front-end installed in {static}")
        elif args.cmd == "status":
            missing = missing_files()
            for m in missing:
                print(f"missing: {static_dir() / m}")
            print("complete" if not missing else "incomplete: run `install`")
            return 1 if missing else 0
        elif args.cmd == "serve":
            missing = missing_files()
            if missing:
                raise FrontendError(
                    f"visdom front-end not installed ({len(missing)} files missing, e.g. "
                    f"{missing[0]}): run `python -m utils.visdom_frontend install` first"
                )
            check_tornado()
            args.env_path.mkdir(parents=True, exist_ok=True)
            cmd = server_command(args.port, args.env_path, bind_local=not args.public)
            print(" ".join(cmd), flush=True)
            os.execv(cmd[0], cmd)
    except FrontendError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
