"""The web app end to end, as a new user goes through it: `vplab up --demo` (what `make run`
runs), the printed address and key, then prompt -> visual prompting -> review and correct ->
tune -> compare -> export, all in real Chromium, with a screenshot of each step
(build/screenshots/, linked from docs/WEBAPP.md) and no console error anywhere.
"""

from __future__ import annotations

import hashlib
import re
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import expect

from vplab.demo import write_demo_dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _browser import chromium, download, open_page, overlay_pixels, screenshot, sign_in
from _up import Stack

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N_IMAGES = 8


def _until(check, timeout_s: float, what: str, every_s: float = 0.2):
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout_s}s waiting for {what}"
        time.sleep(every_s)


def _inside_point(mask: np.ndarray) -> tuple[int, int]:
    """A pixel well inside the mask: the mask pixel nearest its centroid."""
    ys, xs = np.nonzero(mask)
    cy, cx = ys.mean(), xs.mean()
    i = int(np.argmin((ys - cy) ** 2 + (xs - cx) ** 2))
    return int(xs[i]), int(ys[i])


def _click_image(page, x: float, y: float, button: str = "left") -> None:
    """Click image pixel (x, y) of the workbench, wherever zoom and pan put it."""
    canvas = page.get_by_test_id("image-canvas")
    box = canvas.bounding_box()
    w = int(canvas.get_attribute("width"))
    h = int(canvas.get_attribute("height"))
    page.mouse.click(
        box["x"] + (x + 0.5) / w * box["width"],
        box["y"] + (y + 0.5) / h * box["height"],
        button=button,
    )


def _brush_stroke(page, points: list[tuple[float, float]]) -> None:
    canvas = page.get_by_test_id("image-canvas")
    box = canvas.bounding_box()
    w = int(canvas.get_attribute("width"))
    h = int(canvas.get_attribute("height"))
    at = [(box["x"] + x / w * box["width"], box["y"] + y / h * box["height"]) for x, y in points]
    page.mouse.move(*at[0])
    page.mouse.down()
    for p in at[1:]:
        page.mouse.move(*p, steps=4)
    page.mouse.up()


def _workbench_ready(page) -> None:
    """The workbench of the image now shown has painted its overlay once."""
    page.locator("[data-testid=mask-overlay][data-paints]").wait_for()


def _label_by_clicking(page, mask: np.ndarray) -> None:
    """Point tool, one positive click inside the object, Enter commits, then save."""
    _workbench_ready(page)
    page.get_by_test_id("tool-point").click()
    before = overlay_pixels(page)
    _click_image(page, *_inside_point(mask))
    _until(lambda: overlay_pixels(page) != before, 60, "the mask after a click")
    page.keyboard.press("Enter")
    page.get_by_test_id("save-label").click()
    expect(page.get_by_test_id("unsaved")).to_have_text("saved", timeout=30_000)


@pytest.fixture
def stack(tmp_path):
    s = Stack(tmp_path)
    try:
        s.start()
        yield s
    finally:
        s.cleanup()


def test_prompt_predict_correct_tune_compare_export_in_the_browser(stack, tmp_path):
    log = stack.log()
    url = re.search(r"Web app\s*:\s*(http://\S+)", log).group(1)
    key = re.search(r"API key\s*:\s*(vpl_\S+)", log).group(1)
    demo = tmp_path / "demo"
    write_demo_dataset(demo, n=N_IMAGES, size=256, seed=5)
    files = sorted((demo / "images").glob("*.png"))
    ids = [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]
    masks = {i: np.asarray(Image.open(demo / "masks" / f.name)) > 0 for i, f in zip(ids, files)}

    with chromium() as browser:
        page, watch = open_page(browser, url)
        assert page.url.endswith("/ui/")  # / redirects to the app
        sign_in(page, key)
        expect(page.get_by_test_id("dataset-list")).to_contain_text("miniworld polyps (demo)")

        # 1. A dataset, and images by the file picker.
        page.get_by_test_id("dataset-name-input").fill("polyps e2e")
        page.get_by_test_id("dataset-create").click()
        page.get_by_test_id("upload-input").set_input_files([str(f) for f in files])
        expect(page.get_by_test_id("image-tile")).to_have_count(N_IMAGES, timeout=60_000)
        dataset = re.search(r"#/d/([^/]+)/", page.url).group(1)
        screenshot(page, "01-images")
        # Precompute the embeddings (a data job on the features app): clicks come from the cache.
        page.get_by_test_id("precompute-embeddings").click()
        expect(page.get_by_test_id("embed-status")).to_contain_text(
            f"embeddings ready: {2 * N_IMAGES} computed", timeout=300_000
        )

        # 2. Prompt: a click on the first image, the mask appears; save it as the reference.
        page.locator(f"[data-testid=image-tile][data-image-id='{ids[0]}']").click()
        _workbench_ready(page)
        assert overlay_pixels(page) == 0
        page.get_by_test_id("tool-point").click()
        _click_image(page, *_inside_point(masks[ids[0]]))
        first = _until(lambda: overlay_pixels(page), 60, "the mask after the first click")
        _click_image(page, 2, 2, button="right")  # a negative point far from the object
        _until(lambda: overlay_pixels(page) != first, 60, "the mask after a negative click")
        page.keyboard.press("Control+z")  # removes the last point: back to the first mask
        _until(lambda: overlay_pixels(page) == first, 60, "the mask after Ctrl+Z")
        screenshot(page, "02-prompt")
        page.keyboard.press("Enter")
        page.get_by_test_id("save-label").click()
        expect(page.get_by_test_id("unsaved")).to_have_text("saved", timeout=30_000)

        # 3. Visual prompting over the dataset from that reference.
        page.goto(f"{url}ui/#/d/{dataset}/images")
        expect(page.locator("[data-testid=image-tile][data-status=labelled]")).to_have_count(1)
        page.get_by_test_id("visual-prompt-run").click()
        progress = page.get_by_test_id("prediction-progress")
        expect(progress).to_have_attribute("data-state", "SUCCEEDED", timeout=300_000)
        predicted = page.locator("[data-testid=image-tile][data-status=predicted]")
        expect(predicted).to_have_count(N_IMAGES - 1, timeout=30_000)
        screenshot(page, "03-predicted")

        # 4. Review, most uncertain first: accept, edit with the brush (undo / redo), reject.
        page.get_by_role("link", name="Review").last.click()
        position = page.get_by_test_id("review-position")
        expect(position).to_have_text(f"1/{N_IMAGES - 1}", timeout=30_000)
        _workbench_ready(page)
        page.keyboard.press("a")
        expect(position).to_have_text(f"2/{N_IMAGES - 1}")
        _workbench_ready(page)
        page.keyboard.press("e")  # edit: the brush
        expect(page.get_by_test_id("tool-brush")).to_have_attribute("aria-pressed", "true")
        page.keyboard.press("]")
        before = overlay_pixels(page)
        _brush_stroke(page, [(10, 10), (60, 30), (120, 40)])
        painted = _until(lambda: (n := overlay_pixels(page)) > before and n, 10, "the brush stroke")
        page.keyboard.press("Control+z")  # the overlay repaints on the next frame
        _until(lambda: overlay_pixels(page) == before, 10, "the stroke undone")
        page.keyboard.press("Control+Shift+z")
        _until(lambda: overlay_pixels(page) == painted, 10, "the stroke redone")
        screenshot(page, "04-review-edit")
        page.get_by_test_id("review-accept").click()
        expect(position).to_have_text(f"3/{N_IMAGES - 1}")
        page.get_by_test_id("review-reject").click()
        expect(position).to_have_text(f"4/{N_IMAGES - 1}")
        _workbench_ready(page)
        page.keyboard.press("a")
        expect(position).to_have_text(f"5/{N_IMAGES - 1}")
        page.keyboard.press("ArrowLeft")
        expect(page.get_by_test_id("review-verdict")).to_have_text("accepted")

        # 5. Train a few steps: progress over SSE, the chart, the state.
        page.goto(f"{url}ui/#/d/{dataset}/train")
        page.get_by_test_id("method-select").select_option("epeft")
        page.get_by_test_id("train-steps").fill("6")
        page.get_by_test_id("train-start").click()
        expect(page.get_by_test_id("train-start")).to_be_disabled()  # while the job runs
        progress = page.get_by_test_id("train-progress")
        expect(progress).to_have_attribute("data-state", "SUCCEEDED", timeout=400_000)
        expect(progress).to_have_attribute("data-step", "6")
        assert page.get_by_test_id("train-chart").evaluate(
            "c => c.getContext('2d').getImageData(0, 0, c.width, c.height).data.some(v => v)"
        )
        screenshot(page, "05-training")

        # Two more labels by hand, on images the model did not train on: the comparison's.
        tiles = page.locator("[data-testid=image-tile][data-status=predicted]")
        page.goto(f"{url}ui/#/d/{dataset}/images")
        expect(tiles.first).to_be_visible(timeout=30_000)
        held_out = [tiles.nth(i).get_attribute("data-image-id") for i in range(2)]
        for image_id in held_out:
            page.goto(f"{url}ui/#/d/{dataset}/edit/{image_id}")
            _label_by_clicking(page, masks[image_id])

        # 6. Compare: re-run with the tuned model, evaluate 0-shot vs tuned, before / after.
        page.goto(f"{url}ui/#/d/{dataset}/compare")
        page.get_by_test_id("rerun-tuned").click()
        expect(page.get_by_test_id("prediction-progress")).to_have_attribute(
            "data-state", "SUCCEEDED", timeout=300_000
        )
        page.goto(f"{url}ui/#/d/{dataset}/compare")
        page.get_by_test_id("evaluate").click()
        table = page.get_by_test_id("evaluation-table")
        expect(table).to_be_visible(timeout=300_000)
        expect(table.locator(".image-row")).to_have_count(2)
        page.get_by_test_id("sort-by-change").click()
        page.get_by_test_id("compare-canvas").wait_for()
        page.get_by_test_id("before-after-toggle").click()
        screenshot(page, "06-compare")

        # 7. Models: export the adapter.
        page.goto(f"{url}ui/#/models")
        rows = page.get_by_test_id("model-list").locator(".model-row")
        expect(rows).to_have_count(1)
        # E-PEFT adds adapters and prompts: no merged checkpoint is offered for it.
        expect(page.get_by_test_id("export-merged")).to_have_count(0)
        archive = download(page, "export-model", tmp_path / "adapter.zip")
        with zipfile.ZipFile(archive) as z:
            assert {"adapter.safetensors", "config.json"} <= set(z.namelist())
        screenshot(page, "07-models")

        # 8. Import an archive of images and masks into a new dataset (a data job).
        page.goto(f"{url}ui/#/")
        page.get_by_test_id("dataset-name-input").fill("imported")
        page.get_by_test_id("dataset-create").click()
        expect(page.get_by_test_id("import-input")).to_be_attached()
        upload = tmp_path / "demo.zip"
        with zipfile.ZipFile(upload, "w") as z:
            for f in files[:3]:
                z.write(f, f"images/{f.name}")
                z.write(demo / "masks" / f.name, f"masks/{f.name}")
        page.get_by_test_id("import-input").set_input_files(str(upload))
        expect(page.get_by_test_id("import-status")).to_contain_text(
            "3 images added", timeout=120_000
        )
        expect(page.locator("[data-testid=image-tile][data-status=labelled]")).to_have_count(3)
        assert watch.clean() == []
