"""The web app in real Chromium and Firefox, on the gateway with fake services (the real
stack's end-to-end run is tests/integration/test_webapp_e2e.py).

- Served as it should be: `/` -> `/ui/`, a Content-Security-Policy without inline scripts on
  every file, vendored libraries with their licences, no inline script or style attribute.
- The page's pure modules run in the browser against Python references: RLE against
  pycocotools, flood fill and hole filling against PIL, polygon fill against a per-pixel
  even-odd test, undo history, the SSE parser, the overlay, and the label PNG round trip
  through the real server.
- Firefox (Debian's firefox-esr over WebDriver BiDi, `_firefox.py`): every pure-module
  test runs in both browsers; two tests go through the key screen, the workbench (click,
  brush, save), the dataset form, the file picker, the grid and the training form.
- Security: names render as text, the key is never in the URL or localStorage, a 401 returns
  to the key screen. A conflicting save is shown and overwrites nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw
from playwright.sync_api import expect
from pycocotools import mask as cocomask

from vplab.peft import method_names
from vplab.peft.describe import describe
from vplab.storage import LocalStore

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _browser import (
    OVERLAY_PIXELS,
    SCREENSHOTS,
    chromium,
    download,
    open_page,
    overlay_pixels,
    screenshot,
    sign_in,
)
from _firefox import firefox
from _gateway_harness import png_bytes, running_stack

UI = Path(__file__).resolve().parents[1] / "services" / "gateway" / "ui"


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


@pytest.fixture
def stack(tmp_path):
    with running_stack(LocalStore(tmp_path / "store"), tmp_path) as st:
        st.key = next(iter(st.keys.values()))
        yield st


@pytest.fixture
def page(browser, stack):
    """A signed-in page on the app; fails the test on any console error."""
    page, watch = open_page(browser, stack.url + "/")
    sign_in(page, stack.key)
    page.watch = watch
    yield page
    page.context.close()


@pytest.fixture(scope="module")
def firefox_browser():
    with firefox() as b:
        yield b


def _firefox_sign_in(page, key: str) -> None:
    page.fill("[data-testid=api-key-input]", key)
    page.click("[data-testid=api-key-submit]")
    page.wait_for("[data-testid=dataset-list]")


@pytest.fixture
def firefox_page(firefox_browser, stack):
    """A signed-in Firefox tab on the app; ``page.watch`` collects its problems."""
    firefox_browser.watch.problems.clear()
    page = firefox_browser.new_page()
    page.goto(stack.url + "/")
    assert "Firefox/" in page.evaluate("() => navigator.userAgent")
    _firefox_sign_in(page, stack.key)
    yield page
    page.close()


@pytest.fixture(params=["chromium", "firefox"])
def any_page(request):
    """A signed-in page in each browser, for the tests that only call ``page.evaluate``."""
    return request.getfixturevalue("page" if request.param == "chromium" else "firefox_page")


def _dataset_with_image(c: httpx.Client, h: int, w: int, **dataset) -> tuple[str, str]:
    """A new dataset (``dataset``: the POST body) holding one ``h`` x ``w`` image."""
    ds = c.post("/v1/datasets", json=dataset).json()["id"]
    files = {"file": ("a.png", png_bytes(h, w), "image/png")}
    image = c.post(f"/v1/datasets/{ds}/images", files=files).json()["image_id"]
    return ds, image


def _module(page, name: str, body: str, arg=None):
    """Run ``body`` (an async function of (m, arg), m = the module) in the page."""
    return page.evaluate(
        f"async (arg) => {{ const m = await import('/ui/js/{name}.js'); return ({body})(m, arg); }}",
        arg,
    )


# --- serving -------------------------------------------------------------------------------


def test_root_redirects_to_the_app_and_every_file_has_the_policy(stack):
    with httpx.Client(base_url=stack.url, timeout=30) as c:
        r = c.get("/", follow_redirects=False)
        assert r.status_code == 307 and r.headers["location"] == "/ui/"
        files = ["/ui/", "/ui/js/main.js", "/ui/app.css", "/ui/vendor/preact.module.js"]
        for path in files + ["/ui/nope.js"]:
            r = c.get(path)
            csp = r.headers["content-security-policy"]
            assert "script-src 'self'" in csp and "unsafe" not in csp, path
            assert r.headers["x-content-type-options"] == "nosniff"
            assert r.status_code == (404 if path.endswith("nope.js") else 200), path
        assert c.get("/ui/js/main.js").headers["content-type"].startswith("text/javascript")
        assert c.get("/ui/../pyproject.toml").status_code == 404


def test_no_inline_script_or_style_and_vendored_libraries_keep_their_licences():
    html = (UI / "index.html").read_text()
    for tag in re.findall(r"<script\b[^>]*>", html):
        assert "src=" in tag, tag
    assert not re.search(r"<script\b[^>]*>\s*[^<\s]", html)  # no inline code
    assert "style=" not in html and "<style" not in html
    for f in UI.rglob("*.js"):
        text = f.read_text()
        assert "eval(" not in text and "new Function" not in text, f
        # Imports are relative (no CDN; the CSP would refuse one anyway).
        for spec in re.findall(r"""(?:from|import)\s*\(?\s*["']([^"']+)["']""", text):
            assert spec.startswith("./") or spec.startswith("../"), (f, spec)
    for lic in ("LICENSE-preact", "LICENSE-htm"):
        assert (
            "Permission" in (UI / "vendor" / lic).read_text()
            or "Apache" in (UI / "vendor" / lic).read_text()
        )


# --- pure modules, in the browser, against references ---------------------------------------


def _random_masks(rng):
    yield np.zeros((5, 7), np.uint8)
    yield np.ones((6, 3), np.uint8)
    yield np.eye(9, 4, dtype=np.uint8)
    yield np.ones((1, 1), np.uint8)
    for h, w, p in [(13, 17, 0.5), (40, 31, 0.1), (64, 64, 0.9), (3, 200, 0.5), (257, 5, 0.3)]:
        yield (rng.random((h, w)) < p).astype(np.uint8)
    big = np.zeros((300, 400), np.uint8)
    big[20:280, 30:390] = 1  # long runs: multi-character counts
    yield big


def test_rle_matches_pycocotools_both_ways(any_page):
    page = any_page
    rng = np.random.default_rng(0)
    for mask in _random_masks(rng):
        h, w = mask.shape
        ref = cocomask.encode(np.asfortranarray(mask))
        ref_counts = ref["counts"].decode()
        got = _module(
            page,
            "rle",
            "(m, a) => m.encodeRle(Uint8Array.from(a.mask), a.h, a.w).counts",
            {"mask": mask.ravel().tolist(), "h": h, "w": w},
        )
        assert got == ref_counts, (h, w)
        back = _module(
            page,
            "rle",
            "(m, a) => Array.from(m.decodeRle({size: [a.h, a.w], counts: a.counts}))",
            {"counts": ref_counts, "h": h, "w": w},
        )
        assert np.array_equal(np.array(back, np.uint8).reshape(h, w), mask), (h, w)
    err = _module(
        page,
        "rle",
        "(m) => { try { m.decodeRle({size: [4, 4], counts: '3'}); return ''; } catch (e) { return e.message; } }",
    )
    assert "covers 3 pixels" in err


def test_flood_fill_and_fill_holes_match_pil(any_page):
    page = any_page
    rng = np.random.default_rng(1)
    for trial in range(6):
        h, w = int(rng.integers(8, 40)), int(rng.integers(8, 40))
        grid = (rng.random((h, w)) < 0.45).astype(np.uint8)
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        img = Image.fromarray(grid * 100).copy()  # fromarray may share a read-only buffer
        ImageDraw.floodfill(img, (x, y), 7, thresh=0)  # PIL: 4-connected
        ref = np.where(np.asarray(img) == 7, 7, grid)
        got = _module(
            page,
            "mask",
            "(m, a) => { const map = Uint8Array.from(a.map); m.floodFill(map, a.w, a.h, a.x, a.y, 7); return Array.from(map); }",
            {"map": grid.ravel().tolist(), "w": w, "h": h, "x": x, "y": y},
        )
        assert np.array_equal(np.array(got).reshape(h, w), ref), trial

        # Holes of class 1: background that cannot reach the border without crossing 1.
        padded = Image.fromarray(np.pad(np.where(grid == 1, 255, 0).astype(np.uint8), 1)).copy()
        ImageDraw.floodfill(padded, (0, 0), 128, thresh=0)
        outside = np.asarray(padded)[1:-1, 1:-1] == 128
        ref = np.where((grid == 0) & ~outside, 1, grid)
        got = _module(
            page,
            "mask",
            "(m, a) => { const map = Uint8Array.from(a.map); m.fillHoles(map, a.w, a.h, 1); return Array.from(map); }",
            {"map": grid.ravel().tolist(), "w": w, "h": h},
        )
        assert np.array_equal(np.array(got).reshape(h, w), ref), trial


def _even_odd(points, x: float, y: float) -> bool:
    inside = False
    for (xi, yi), (xj, yj) in zip(points, points[-1:] + points[:-1]):
        if (yi > y) != (yj > y) and x < xi + (y - yi) * (xj - xi) / (yj - yi):
            inside = not inside
    return inside


def test_polygon_fill_matches_an_even_odd_test_at_pixel_centres(any_page):
    page = any_page
    h, w = 30, 40
    for points in (
        [[3, 2], [35, 5], [20, 27]],
        [[5, 5], [35, 5], [35, 25], [5, 25], [20, 15]],  # concave
        [[2, 2], [38, 28], [38, 2], [2, 28]],  # self-intersecting (bow tie)
    ):
        ref = np.array(
            [[_even_odd(points, x + 0.5, y + 0.5) for x in range(w)] for y in range(h)], np.uint8
        )
        got = _module(
            page,
            "mask",
            "(m, a) => { const map = new Uint8Array(a.w * a.h); m.fillPolygon(map, a.w, a.h, a.p, 1); return Array.from(map); }",
            {"w": w, "h": h, "p": points},
        )
        assert np.array_equal(np.array(got, np.uint8).reshape(h, w), ref), points


def test_undo_history_is_per_stroke_and_exact(any_page):
    page = any_page
    out = _module(
        page,
        "history",
        """(m) => {
          const w = 50, h = 40, map = new Uint8Array(w * h), states = [map.slice()];
          const hist = new m.History();
          for (let s = 0; s < 12; s++) {
            hist.begin(map);
            for (let k = 0; k < 30; k++) map[(s * 97 + k * 13) % map.length] = (s % 3) + 1;
            hist.commit(map);
            states.push(map.slice());
          }
          hist.begin(map); hist.commit(map);  // a stroke that changed nothing is not recorded
          const same = (a, b) => a.every((v, i) => v === b[i]);
          const undone = [];
          while (hist.undo(map)) undone.push(same(map, states[states.length - 2 - undone.length]));
          const atStart = same(map, states[0]);
          let redone = 0;
          while (hist.redo(map)) redone++;
          return {undone, atStart, redone, atEnd: same(map, states[states.length - 1])};
        }""",
    )
    assert out["undone"] == [True] * 12 and out["atStart"]
    assert out["redone"] == 12 and out["atEnd"]


def test_sse_parser_handles_any_chunking_and_line_ending(any_page):
    page = any_page
    stream = 'id: 1\nevent: progress\ndata: {"a": 1}\n\n: keepalive\n\nid: 2\r\ndata: x\r\ndata: y\r\n\r\nevent: end\rdata: {}\r\r\n'
    expected = [
        {"event": "progress", "data": '{"a": 1}', "id": "1"},
        {"event": "message", "data": "x\ny", "id": "2"},
        {"event": "end", "data": "{}", "id": "2"},
    ]
    for size in (1, 2, 3, 7, len(stream)):
        got = _module(
            page,
            "sse",
            "(m, a) => { const p = new m.SseParser(), out = []; for (let i = 0; i < a.s.length; i += a.n) out.push(...p.push(a.s.slice(i, i + a.n))); return out; }",
            {"s": stream, "n": size},
        )
        assert got == expected, size


def test_overlay_pixels_are_exactly_the_labelled_ones(any_page):
    page = any_page
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, size=(23, 31)).astype(np.uint8)
    alpha = _module(
        page,
        "mask",
        """(m, a) => { const rgba = new Uint8ClampedArray(a.w * a.h * 4).fill(9);
           m.paintOverlay(rgba, Uint8Array.from(a.map), a.w, a.h, {1: [255,0,0], 2: [0,255,0], 3: [0,0,255]}, 0.3);
           const out = []; for (let i = 3; i < rgba.length; i += 4) out.push(rgba[i]); return out; }""",
        {"map": labels.ravel().tolist(), "w": 31, "h": 23},
    )
    assert np.array_equal(np.array(alpha).reshape(23, 31) > 0, labels > 0)


def test_label_png_round_trip_through_the_server_is_exact(any_page, stack):
    """The page's PNG encoder -> PUT -> the server's reader -> GET -> the page's decoder."""
    page = any_page
    headers = {"Authorization": f"Bearer {stack.key}"}
    with httpx.Client(base_url=stack.url, headers=headers, timeout=30) as c:
        ds, image = _dataset_with_image(c, 24, 32, name="rt", classes=[{"name": n} for n in "abc"])
        labels = np.random.default_rng(4).integers(0, 4, size=(24, 32)).astype(np.uint8)
        got = page.evaluate(
            """async (a) => {
              const lm = await import('/ui/js/labelmap.js'), api = await import('/ui/js/api.js');
              const png = await lm.encodeLabelPng(Uint8Array.from(a.map), a.w, a.h);
              const saved = await api.api.putLabel(a.ds, a.image, png, null);
              const {blob, etag} = await api.api.label(a.ds, a.image);
              const back = await lm.decodeLabelPng(blob);
              return {version: saved.version, same: etag === saved.etag, map: Array.from(back.map)};
            }""",
            {"map": labels.ravel().tolist(), "w": 32, "h": 24, "ds": ds, "image": image},
        )
        assert got["version"] == 1 and got["same"]
        assert np.array_equal(np.array(got["map"]).reshape(24, 32), labels)
        stored = c.get(f"/v1/datasets/{ds}/labels/{image}").content
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(stored))), labels)  # server side
    assert page.watch.clean() == []


# --- security ------------------------------------------------------------------------------

XSS = "<img src=x onerror=alert(1)>"


def test_names_render_as_text_never_as_markup(page, stack):
    headers = {"Authorization": f"Bearer {stack.key}"}
    with httpx.Client(base_url=stack.url, headers=headers, timeout=30) as c:
        ds = c.post("/v1/datasets", json={"name": XSS, "classes": [{"name": XSS}]}).json()["id"]
    page.reload()
    listed = page.get_by_test_id("dataset-list").get_by_text(XSS, exact=True)
    listed.first.wait_for()
    assert listed.count() == 2  # the dataset's name and its class's name, both as text
    assert page.locator("img[src=x]").count() == 0
    page.goto(f"{stack.url}/ui/#/d/{ds}/images")
    page.get_by_test_id("upload-input").set_input_files(
        [{"name": f"{XSS}.png", "mimeType": "image/png", "buffer": png_bytes(16, 16)}]
    )
    page.get_by_test_id("image-tile").wait_for()
    page.get_by_text(f"{XSS}.png", exact=True).wait_for()  # the upload list shows the name
    assert page.locator("img[src=x]").count() == 0
    screenshot(page, "xss-names-as-text")
    assert page.watch.clean() == []  # no alert dialog, no error


def test_the_key_stays_out_of_the_url_and_local_storage_and_a_401_returns_to_the_key_screen(
    page, stack
):
    state = page.evaluate(
        "() => ({url: location.href, local: JSON.stringify(localStorage), session: sessionStorage.getItem('vplab.apiKey')})"
    )
    assert stack.key not in state["url"] and stack.key not in state["local"]
    assert state["session"] == stack.key
    page.evaluate("() => sessionStorage.setItem('vplab.apiKey', 'vpl_' + 'B'.repeat(43))")
    page.goto(f"{stack.url}/ui/#/models")
    page.get_by_test_id("api-key-input").wait_for()  # back on the key screen
    assert page.evaluate("() => sessionStorage.getItem('vplab.apiKey')") is None
    page.get_by_test_id("api-key-input").fill("vpl_wrong")
    page.get_by_test_id("api-key-submit").click()
    page.get_by_text("This key is not valid.").wait_for()
    assert page.watch.clean(allow=(r"status of 401",)) == []


def test_a_conflicting_save_is_shown_and_overwrites_nothing(page, stack):
    headers = {"Authorization": f"Bearer {stack.key}"}
    with httpx.Client(base_url=stack.url, headers=headers, timeout=30) as c:
        ds, image = _dataset_with_image(c, 40, 60, name="conflict")
        page.goto(f"{stack.url}/ui/#/d/{ds}/edit/{image}")
        canvas = page.get_by_test_id("image-canvas")
        canvas.wait_for()
        page.get_by_test_id("tool-brush").click()
        box = canvas.bounding_box()
        page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.5)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * 0.7, box["y"] + box["height"] * 0.5, steps=4)
        page.mouse.up()
        assert overlay_pixels(page) > 0
        assert page.get_by_test_id("unsaved").inner_text().startswith("●")
        # Someone else saves a label meanwhile.
        theirs = np.zeros((40, 60), np.uint8)
        theirs[:5] = 255
        buf = io.BytesIO()
        Image.fromarray(theirs).save(buf, format="PNG")
        r = c.put(
            f"/v1/datasets/{ds}/labels/{image}",
            content=buf.getvalue(),
            headers={"Content-Type": "image/png"},
        )
        assert r.json()["version"] == 1
        page.get_by_test_id("save-label").click()
        page.get_by_test_id("save-conflict").wait_for()
        assert c.get(f"/v1/datasets/{ds}/labels").json() == {image: 1}  # nothing overwritten
        screenshot(page, "save-conflict")
        # "Save mine on top" is an explicit choice: a new version on top of theirs.
        page.get_by_role("button", name="Save mine on top").click()
        expect(page.get_by_test_id("unsaved")).to_have_text("saved")
        assert c.get(f"/v1/datasets/{ds}/labels").json() == {image: 2}
    assert page.watch.clean(allow=(r"status of 412",)) == []


def test_methods_route_lists_the_registry_with_counts(stack):
    headers = {"Authorization": f"Bearer {stack.key}"}
    r = httpx.get(f"{stack.url}/v1/methods", headers=headers, timeout=60)
    assert r.status_code == 200, r.text
    methods = {m["name"]: m for m in r.json()["methods"]}
    assert set(methods) == set(method_names())
    for name in ("epeft", "ptsam", "lora"):
        m = methods[name]
        assert m["base"] == "vit_b"  # not a demo stack: the configured architecture
        assert m["trainable_parameters"] == describe(name, m["base"])[1]
    assert all(m["description"] for m in methods.values())
    assert methods["lora"]["recipes"] == ["vplab", "micro-sam"]
    assert methods["epeft"]["recipes"] == ["vplab"]


def test_import_an_archive_and_export_coco_from_the_images_page(page, stack, tmp_path):
    headers = {"Authorization": f"Bearer {stack.key}"}
    with httpx.Client(base_url=stack.url, headers=headers, timeout=30) as c:
        ds = c.post("/v1/datasets", json={"name": "io", "classes": [{"name": "polyp"}]}).json()
    mask = np.zeros((24, 32), np.uint8)
    mask[4:12, 6:20] = 255
    archive = tmp_path / "in.zip"
    import zipfile

    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("images/a.png", png_bytes(24, 32))
        z.writestr("images/b.png", png_bytes(24, 32, seed=1))
        buf = io.BytesIO()
        Image.fromarray(mask).save(buf, format="PNG")
        z.writestr("masks/a.png", buf.getvalue())
    page.goto(f"{stack.url}/ui/#/d/{ds['id']}/images")
    page.get_by_test_id("import-input").set_input_files(str(archive))
    expect(page.get_by_test_id("import-status")).to_contain_text("2 images added")
    expect(page.get_by_test_id("image-tile")).to_have_count(2)
    expect(page.locator("[data-testid=image-tile][data-status=labelled]")).to_have_count(1)
    out = download(page, "export-coco", tmp_path / "out.zip")
    with zipfile.ZipFile(out) as z:
        coco = json.loads(z.read("annotations.json"))
    assert len(coco["images"]) == 2 and len(coco["annotations"]) == 1
    assert coco["categories"][0]["name"] == "polyp"
    assert page.watch.clean() == []


def test_a_16bit_microscopy_tiff_is_shown_through_the_servers_rendition(page, stack):
    """Browsers cannot decode TIFF: the page falls back to ?format=png, the pixels the
    models see (vplab.microscopy's rule)."""
    import tifffile

    from vplab.images import decode_image

    rng = np.random.default_rng(5)
    buf = io.BytesIO()
    tifffile.imwrite(buf, rng.integers(100, 4000, (48, 64)).astype(np.uint16))
    tiff = buf.getvalue()
    headers = {"Authorization": f"Bearer {stack.key}"}
    with httpx.Client(base_url=stack.url, headers=headers, timeout=30) as c:
        ds = c.post("/v1/datasets", json={"name": "tiff"}).json()["id"]
        files = {"file": ("cells.tif", tiff, "image/tiff")}
        image_id = c.post(f"/v1/datasets/{ds}/images", files=files).json()["image_id"]
        png = c.get(f"/v1/images/{image_id}", params={"format": "png"})
        assert png.headers["content-type"] == "image/png"
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(png.content))), decode_image(tiff))
        assert c.get(f"/v1/images/{image_id}").content == tiff  # the original, untouched
    page.goto(f"{stack.url}/ui/#/d/{ds}/edit/{image_id}")
    canvas = page.get_by_test_id("image-canvas")
    canvas.wait_for()
    assert (canvas.get_attribute("width"), canvas.get_attribute("height")) == ("64", "48")
    drawn = canvas.evaluate(
        "c => c.getContext('2d').getImageData(0, 0, c.width, c.height).data.some(v => v > 0 && v < 255)"
    )
    assert drawn
    page.goto(f"{stack.url}/ui/#/d/{ds}/images")
    page.get_by_test_id("image-tile").wait_for()
    assert page.watch.clean() == []


def test_a_dataset_created_with_a_tiff_channel_keeps_the_setting(page, stack):
    page.get_by_test_id("dataset-name-input").fill("gfp only")
    page.get_by_test_id("dataset-channels").fill("1")
    page.get_by_test_id("dataset-create").click()
    expect(page.get_by_test_id("upload-input")).to_be_attached()
    ds = re.search(r"#/d/([^/]+)/", page.url).group(1)
    headers = {"Authorization": f"Bearer {stack.key}"}
    with httpx.Client(base_url=stack.url, headers=headers, timeout=30) as c:
        assert c.get(f"/v1/datasets/{ds}").json()["channels"] == [1]
    page.goto(f"{stack.url}/ui/#/")
    expect(page.get_by_test_id("dataset-channels-shown")).to_have_text("channels 1")
    # A setting the server refuses is shown, and nothing is created.
    page.get_by_test_id("dataset-name-input").fill("bad")
    page.get_by_test_id("dataset-channels").fill("1, 1")
    page.get_by_test_id("dataset-create").click()
    expect(page.get_by_test_id("error-banner")).to_contain_text("channels")
    with httpx.Client(base_url=stack.url, headers=headers, timeout=30) as c:
        assert "bad" not in [d["name"] for d in c.get("/v1/datasets").json()["datasets"]]
    assert page.watch.clean(allow=(r"status of 400",)) == []


def test_a_method_with_several_recipes_offers_them_and_the_job_records_the_choice(page, stack):
    headers = {"Authorization": f"Bearer {stack.key}"}
    with httpx.Client(base_url=stack.url, headers=headers, timeout=30) as c:
        ds = c.post("/v1/datasets", json={"name": "recipes"}).json()["id"]
    page.goto(f"{stack.url}/ui/#/d/{ds}/train")
    page.get_by_test_id("method-select").select_option("epeft")
    expect(page.get_by_test_id("recipe-select")).to_have_count(0)  # E-PEFT has one recipe
    page.get_by_test_id("method-select").select_option("lora")
    recipes = page.get_by_test_id("recipe-select")
    expect(recipes.locator("option")).to_have_text(["vplab", "micro-sam"])
    recipes.select_option("micro-sam")
    page.get_by_test_id("train-start").click()
    expect(page.get_by_test_id("train-progress")).to_contain_text("lora (micro-sam)")
    # With fewer than 10 labels validation ran on the training images: the page says so.
    expect(page.get_by_test_id("val-on-train")).to_have_text("(on training images)")
    with httpx.Client(base_url=stack.url, headers=headers, timeout=30) as c:
        jobs = c.get("/v1/trainings").json()["jobs"]
    assert [(j["method"], j["recipe"]) for j in jobs if j["dataset_id"] == ds] == [
        ("lora", "micro-sam")
    ]
    assert page.watch.clean() == []


# --- Firefox -------------------------------------------------------------------------------


def test_in_firefox_a_click_paints_a_mask_the_brush_edits_it_and_save_stores_exactly_it(
    firefox_page, stack
):
    page = firefox_page
    headers = {"Authorization": f"Bearer {stack.key}"}
    with httpx.Client(base_url=stack.url, headers=headers, timeout=30) as c:
        ds, image = _dataset_with_image(c, 40, 60, name="firefox")
        page.goto(f"{stack.url}/ui/#/d/{ds}/edit/{image}")
        page.wait_for("[data-testid=mask-overlay][data-paints]")
        assert page.evaluate(OVERLAY_PIXELS) == 0
        box = page.box("[data-testid=image-canvas]")

        def at(x: float, y: float) -> tuple[float, float]:  # image pixel -> viewport point
            return box["x"] + (x + 0.5) / 60 * box["width"], box["y"] + (y + 0.5) / 40 * box[
                "height"
            ]

        # The point tool: the fake service answers a click with a 5x5 square around it.
        page.click("[data-testid=tool-point]")
        page.mouse_path([at(30, 20)])
        page.wait_until(f"() => ({OVERLAY_PIXELS})() === 25", None, 30, "the mask of the click")
        page.type("\ue007")  # WebDriver's Enter: commit the prompt's mask
        # The brush adds a stroke along row 8.
        page.click("[data-testid=tool-brush]")
        page.mouse_path([at(5, 8), at(20, 8), at(35, 8)])
        painted = page.wait_until(
            f"() => {{ const n = ({OVERLAY_PIXELS})(); return n > 25 ? n : 0; }}",
            None,
            30,
            "the brush stroke",
        )
        page.click("[data-testid=save-label]")
        page.wait_until(
            "() => document.querySelector('[data-testid=unsaved]').textContent === 'saved'",
            None,
            30,
            "the save",
        )
        assert c.get(f"/v1/datasets/{ds}/labels").json() == {image: 1}
        stored = np.asarray(
            Image.open(io.BytesIO(c.get(f"/v1/datasets/{ds}/labels/{image}").content))
        )
    assert stored.shape == (40, 60)
    assert stored[18:23, 28:33].all() and stored[8, 5:36].all()  # the click's square, the stroke
    assert int((stored > 0).sum()) == painted  # what was painted is exactly what was stored
    page.screenshot(SCREENSHOTS / "firefox-workbench.png")
    assert page.watch.clean() == []


def test_in_firefox_create_a_dataset_upload_by_the_picker_see_the_grid_and_train(
    firefox_page, stack, tmp_path
):
    page = firefox_page
    files = []
    for i in range(3):
        files.append(tmp_path / f"img_{i}.png")
        files[-1].write_bytes(png_bytes(24, 32, seed=i))
    page.fill("[data-testid=dataset-name-input]", "firefox upload")
    page.click("[data-testid=dataset-create]")
    page.wait_until("() => /#\\/d\\/[^/]+\\/images/.test(location.hash)", None, 30, "images page")
    page.set_files("[data-testid=upload-input]", files)
    thumbs = page.wait_until(
        """() => { const t = [...document.querySelectorAll('[data-testid=image-tile] canvas')];
                   const drawn = (c) => c.getContext('2d').getImageData(0, 0, c.width, c.height)
                     .data.some((v, i) => i % 4 === 3 && v);
                   return t.length === 3 && t.every(drawn) ? t.length : 0; }""",
        None,
        30,
        "three tiles with their thumbnails",
    )
    assert thumbs == 3
    page.evaluate("() => document.querySelector('[data-testid=image-tile]').focus()")
    page.type("\ue014")  # WebDriver's ArrowRight: the focus moves to the next tile
    focused = "() => [...document.querySelectorAll('[data-testid=image-tile]')].indexOf(document.activeElement)"
    assert page.evaluate(focused) == 1
    ds = page.evaluate("() => location.hash.split('/')[2]")
    headers = {"Authorization": f"Bearer {stack.key}"}
    with httpx.Client(base_url=stack.url, headers=headers, timeout=30) as c:
        listed = c.get(f"/v1/datasets/{ds}/images").json()["images"]  # content ids
        assert sorted(listed) == sorted(hashlib.sha256(f.read_bytes()).hexdigest() for f in files)
        page.screenshot(SCREENSHOTS / "firefox-images.png")
        # Training: the method list comes from the registry; a job starts and is shown.
        page.goto(f"{stack.url}/ui/#/d/{ds}/train")
        page.select("[data-testid=method-select]", "lora")
        page.select("[data-testid=recipe-select]", "micro-sam")
        page.click("[data-testid=train-start]")
        page.wait_until(
            "() => (document.querySelector('[data-testid=train-progress]') || {}).textContent"
            "?.includes('lora (micro-sam)')",
            None,
            30,
            "the job's progress panel",
        )
        jobs = c.get("/v1/trainings").json()["jobs"]
    assert [(j["method"], j["recipe"]) for j in jobs if j["dataset_id"] == ds] == [
        ("lora", "micro-sam")
    ]
    assert page.watch.clean() == []
