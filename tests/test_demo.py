"""The interactive page's logic without a browser: strokes -> trimap, photo and checkpoint
checks, the full-resolution matting behind the Matte button."""

from __future__ import annotations

import numpy as np
import pytest

import demo
from data import compose
from utils import serving
from utils.image_io import write_png


def rgba_layer(shape, boxes: dict[str, tuple[int, int, int, int]]) -> np.ndarray:
    """A stroke layer: each brush's colour painted (opaque) in its (y0, y1, x0, x1) box."""
    layer = np.zeros((*shape, 4), np.uint8)
    for brush, (y0, y1, x0, x1) in boxes.items():
        layer[y0:y1, x0:x1, :3] = demo.BRUSHES[brush]
        layer[y0:y1, x0:x1, 3] = 255
    return layer


def test_outline_is_filled_and_gets_the_band():
    painted = np.zeros((80, 100), bool)
    painted[20:60, 30:70] = True
    painted[25:55, 35:65] = False  # an outline only
    t = compose.trimap_from_strokes(painted, band=3)
    assert t[40, 50] == 255, "the outline's inside is object"
    assert t[5, 5] == 0 and t[20, 50] == 128 and t[16, 50] == 0
    # band: 3 px on each side of the edge (the object's edge is between rows 19 and 20)
    column = t[:, 50]
    assert set(np.unique(t)) == {0, 128, 255}
    assert (column == 128).sum() == 2 * 3 * 2  # top and bottom edges, 6 px each


def test_fixing_strokes_win_in_order():
    painted = np.zeros((60, 60), bool)
    painted[10:50, 10:50] = True
    fg = np.zeros_like(painted)
    fg[28:32, 5:12] = True  # across the edge: sure foreground there
    bg = np.zeros_like(painted)
    bg[20:24, 20:24] = True  # a hole in the object
    unk = np.zeros_like(painted)
    unk[40:44, 40:44] = True
    unk[20:22, 20:22] = True  # unknown over background strokes: unknown wins
    t = compose.trimap_from_strokes(painted, 2, foreground=fg, background=bg, unknown=unk)
    assert (t[28:32, 5:12] == 255).all()
    assert (t[22:24, 20:24] == 0).all() and (t[20:22, 20:22] == 128).all()
    assert (t[40:44, 40:44] == 128).all()
    assert not compose.trimap_from_strokes(np.zeros((8, 8), bool), 2).any()


def test_stroke_layers_split_by_nearest_brush_colour():
    shape = (40, 50)
    layer = rgba_layer(shape, {"object": (5, 15, 5, 15), "background": (20, 30, 5, 15)})
    layer[5:15, 20:30, :3] = (200, 200, 210)  # antialiased white-ish: foreground
    layer[5:15, 20:30, 3] = 200
    layer[30:35, 30:35, :3] = (230, 40, 40)
    layer[30:35, 30:35, 3] = 50  # barely painted: ignored
    masks = demo.stroke_masks([layer, None], shape)
    assert masks["object"].sum() == 100 and masks["background"].sum() == 100
    assert masks["foreground"].sum() == 100 and not masks["unknown"].any()
    # a preview-sized layer is scaled to the photo
    full = demo.upscale_mask(masks["object"], (80, 100))
    assert full.shape == (80, 100) and full.sum() == 400


def test_editor_strokes_that_cannot_be_matted_say_what_to_paint():
    shape = (60, 80)
    with pytest.raises(demo.DemoError, match="nothing painted"):
        demo.trimap_from_editor([], shape, shape, "2")
    whole = rgba_layer(shape, {"object": (0, 60, 0, 80)})
    with pytest.raises(demo.DemoError, match="no sure background"):
        demo.trimap_from_editor([whole], shape, shape, "2")
    thin = rgba_layer(shape, {"object": (28, 31, 10, 70)})
    with pytest.raises(demo.DemoError, match="no sure foreground"):
        demo.trimap_from_editor([thin], shape, shape, "5")
    sure = rgba_layer(shape, {"foreground": (0, 30, 0, 80), "background": (30, 60, 0, 80)})
    with pytest.raises(demo.DemoError, match="no unknown pixels"):
        demo.trimap_from_editor([sure], shape, shape, "1")  # fixing strokes cover the band


def test_colour_backgrounds():
    assert demo.solid_background("#ff8000", (2, 3))[1, 2].tolist() == [255, 128, 0]
    assert demo.solid_background("rgba(10, 20.4, 30, 1)", (1, 1))[0, 0].tolist() == [10, 20, 30]
    with pytest.raises(demo.DemoError, match="colour"):
        demo.solid_background("teal", (1, 1))


def test_bad_photos_and_checkpoints_are_messages(tmp_path):
    matter = demo.Matter(max_pixels=10_000)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(demo.DemoError, match=r"notes\.png"):
        matter.read_photo(str(text))
    big = write_png(tmp_path / "big.png", np.zeros((200, 100), np.uint8))
    with pytest.raises(demo.DemoError, match="megapixels"):
        matter.read_photo(str(big))
    with pytest.raises(demo.DemoError, match="upload"):
        matter.read_photo(None)
    foreign = tmp_path / "other.pt"
    import torch

    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(demo.DemoError, match=r"other\.pt"):
        demo.method_from_checkpoint(str(foreign))
    assert matter.method.model is None and "closed-form" in matter.label


@pytest.mark.slow
def test_matte_button_full_resolution_from_preview_strokes(tmp_path):
    """Strokes painted on a half-size preview matte the full-size photo; the downloads are
    full resolution and the alpha equals the trimap where it is sure."""

    rng = np.random.default_rng(0)
    h, w = 120, 160
    yy, xx = np.mgrid[:h, :w]
    disc = ((yy - 60) ** 2 + (xx - 80) ** 2) < 35**2
    image = np.where(disc[..., None], [200, 60, 40], [30, 90, 160]).astype(np.float32)
    image = np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)
    matter = demo.Matter(preview_side=80)
    preview = demo.shrink(image, 80)
    assert preview.shape[:2] == (60, 80)
    layer = np.zeros((60, 80, 4), np.uint8)
    pyy, pxx = np.mgrid[:60, :80]
    layer[((pyy - 30) ** 2 + (pxx - 40) ** 2) < 17**2] = (*demo.BRUSHES["object"], 255)
    r = matter.matte(image, [layer], preview.shape[:2], "3", None, "#00ff00")
    assert r["alpha"].shape == (h, w) and r["rgba"].shape == (h, w, 4)
    assert r["composite"].shape == (h, w, 3) and "closed-form" in r["method"]
    known = r["trimap"] != 128
    assert (r["alpha"][known] == r["trimap"][known]).all()
    assert [p.name for p in r["files"]] == ["alpha.png", "cutout.png", "trimap.png"]
    assert all(p.is_file() for p in r["files"])
    # the closed-form alpha finds the disc's edge: close to the true disc, unlike 0.5 everywhere
    truth = disc.astype(np.float32)
    unknown = ~known
    err = np.abs(r["alpha"][unknown] / 255.0 - truth[unknown]).mean()
    assert err < 0.2, err


def test_matte_with_a_dim_checkpoint_names_it(tmp_path):
    """With a checkpoint the page mattes through the shared inference code (padding to a
    multiple of 32 for an odd size) and says which model made the result."""
    from tests.helpers import random_checkpoint

    ckpt = random_checkpoint(tmp_path / "stage2.pt", stage=2)
    matter = demo.Matter(demo.method_from_checkpoint(str(ckpt)))
    assert "Deep Image Matting" in matter.label
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (70, 90, 3), dtype=np.uint8)
    layer = np.zeros((70, 90, 4), np.uint8)
    layer[20:50, 25:65] = (*demo.BRUSHES["object"], 255)
    r = matter.matte(image, [layer], (70, 90), "4", None, "#00ff00")
    assert "Deep Image Matting" in r["method"] and "stage 2" in r["method"]
    assert r["alpha"].shape == (70, 90)
    known = r["trimap"] != 128
    assert (r["alpha"][known] == r["trimap"][known]).all()
    assert (~known).sum() > 0


@pytest.mark.parametrize(
    ("argv", "says"),
    [(["--port", "0"], "--port"), (["--preview-side", "10"], "--preview-side"),
     (["--checkpoint", "nowhere.pt"], "nowhere.pt")],
)  # fmt: skip
def test_bad_command_lines_are_one_line_errors(argv, says, capsys):
    with pytest.raises(SystemExit) as e:  # refused where the flags are parsed
        demo.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err


# --- limits --------------------------------------------------------------------------------------
def test_sessions_are_folders_capped_expired_and_closed(tmp_path, monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(serving.time, "monotonic", lambda: clock[0])
    sessions = serving.Sessions(tmp_path / "s", limit=2, ttl=60)
    photo = tmp_path / "p.png"
    write_png(photo, np.zeros((4, 4, 3), np.uint8))
    kept = sessions.keep_photo("../../etc", str(photo))  # a client-chosen id is never a path
    assert kept.parent.parent == tmp_path / "s" and sessions.photo("../../etc") == kept
    sessions.folder("b", create=True)
    with pytest.raises(demo.DemoError, match="--max-sessions"):
        sessions.folder("c", create=True)
    with pytest.raises(demo.DemoError, match="upload one first"):
        sessions.photo("b")
    sessions.close("b")
    assert sessions.folder("c", create=True).is_dir()
    clock[0] += 61  # both idle past the time to live: removed with their files
    sessions.folder("d", create=True)
    assert not kept.exists() and sorted(p.name for p in (tmp_path / "s").iterdir()) == [
        serving.Sessions.key("d")
    ]


def test_uploaded_checkpoints_are_per_session_and_capped(tmp_path):
    sessions = serving.Sessions(tmp_path)
    for i in range(serving.MAX_UPLOADED_MODELS):
        sessions.set_method(f"s{i}", demo.Method(label=f"model {i}"))
    assert sessions.method("s0").label == "model 0" and sessions.method("other") is None
    with pytest.raises(demo.DemoError, match="uploaded checkpoints"):
        sessions.set_method("late", demo.Method())
    sessions.close("s0")
    sessions.set_method("late", demo.Method(label="late"))


@pytest.mark.parametrize("band", ["nan", float("nan"), "inf", None, "x", 0.1, 5.5, "1%"])
def test_band_values_the_slider_cannot_send_are_messages(band):
    with pytest.raises(demo.DemoError, match=r"band width must be a number from 0\.2 to 5"):
        demo.check_band(band)
    assert demo.check_band("2.5") == "2.5%"


def test_pixel_limit_follows_the_budget():
    gib = 2**30
    for cost in ("closed-form", "network"):
        limit = serving.pixel_limit(4 * gib, 1 * gib, cost)
        room = 3 * gib - serving.SERVER_BYTES - serving.WORK_BYTES[cost]
        assert limit == int(room // serving.BYTES_PER_PIXEL[cost]) > 10_000_000
        assert serving.pixel_limit(1 * gib, 1 * gib, cost) == 0


def test_unsized_formats_are_refused_before_decoding(tmp_path):
    ppm = tmp_path / "big.ppm"
    ppm.write_bytes(b"P6\n30000 30000\n255\n" + bytes(64))
    with pytest.raises(demo.DemoError, match=r"big\.ppm: not a readable image whose header"):
        demo.Matter().read_photo(str(ppm))
