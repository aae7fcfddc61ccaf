"""``ui``: the web app in headless Chromium on the real local stack (embedded mini models).

(a) click -> overlay painted: the page's own User Timing measure ``vplab:click-to-overlay``
    (from the pointer-down of a point prompt to the overlay canvas repainted with the
    answer), against (b) the REST call alone - the same ``POST /v1/images/{id}/segment``
    body sent with ``fetch`` from the same page, reading its JSON - in interleaved rounds.
    UI overhead = p50(a) - p50(b): decoding the RLE, composing the label map, painting.
(c) a grid of many images: how many thumbnails are fetched when it opens and after
    scrolling to the end (lazy thumbnails: only the visible ones are fetched).

Needs the dev extras (Playwright) and Debian's chromium (``make browser``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from vplab.bench._common import BenchResult, Target, log, percentile

NAME = "ui"
HELP = "web app: click -> overlay painted (Chromium) vs the REST call alone; a large grid's lazy thumbnails"

_MEASURES = "() => performance.getEntriesByName('vplab:click-to-overlay').map(e => e.duration)"
_REST = """async (a) => {
  const key = sessionStorage.getItem('vplab.apiKey');
  const t0 = performance.now();
  const r = await fetch(`/v1/images/${a.image}/segment`, {method: 'POST',
    headers: {'Authorization': `Bearer ${key}`, 'Content-Type': 'application/json'},
    body: JSON.stringify({points: [[a.x, a.y]], labels: [1], multimask: true})});
  await r.json();
  return performance.now() - t0;
}"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="few clicks, a 200-image grid (tests)")
    p.add_argument("--iters", type=int, default=40, help="timed clicks (and REST calls)")
    p.add_argument("--grid", type=int, default=2000, help="images in the grid")
    p.add_argument("--chromium", default=os.environ.get("CHROMIUM", "/usr/lib/chromium/chromium"))


def run(args: argparse.Namespace) -> BenchResult:
    import httpx
    import numpy as np
    from playwright.sync_api import sync_playwright

    from vplab.bench._stack import bench_settings, local_stack
    from vplab.datasets import DatasetStore
    from vplab.demo import DEMO_DOMAIN, miniworld_sample
    from vplab.images import encode_png
    from vplab.storage import open_store
    from vplab.tenancy import create_tenant

    iters = min(args.iters, 6) if args.quick else args.iters
    grid = min(args.grid, 200) if args.quick else args.grid
    work = Path(tempfile.mkdtemp(prefix="vplab-bench-"))
    try:
        settings = bench_settings(work, "sam_mini", demo=True, random_weights=False)
        store = open_store(settings)
        tenant, key = create_tenant(store, "bench", settings.api_key_pepper)
        datasets = DatasetStore(store, settings)
        ds = datasets.create_dataset(tenant.id, "click")
        image, mask = miniworld_sample(DEMO_DOMAIN, 0, 0)
        image_id = datasets.add_image(tenant.id, ds.id, encode_png(image))
        ys, xs = np.nonzero(mask)
        point = (float(xs.mean()), float(ys.mean()))
        big = datasets.create_dataset(tenant.id, "grid")
        rng = np.random.default_rng(0)
        t0 = time.perf_counter()
        grid_ids = {  # distinct small images, straight into the store
            datasets.add_image(
                tenant.id, big.id, encode_png(rng.integers(0, 255, (64, 64, 3), np.uint8))
            )
            for _ in range(grid)
        }
        log(f"{grid} grid images stored in {time.perf_counter() - t0:.1f}s")
        with local_stack(settings) as st, sync_playwright() as p:
            headers = {"Authorization": f"Bearer {key}"}
            body = {"points": [list(point)], "labels": [1], "multimask": True}
            r = httpx.post(
                f"{st.url}/v1/images/{image_id}/segment", json=body, headers=headers, timeout=300
            )
            r.raise_for_status()  # the embedding is computed (and cached) before timing
            browser = p.chromium.launch(
                executable_path=args.chromium,
                args=[
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--no-first-run",
                ],
            )
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"{st.url}/ui/")
            page.get_by_test_id("api-key-input").fill(key)
            page.get_by_test_id("api-key-submit").click()
            page.get_by_test_id("dataset-list").wait_for()
            page.goto(f"{st.url}/ui/#/d/{ds.id}/edit/{image_id}")
            canvas = page.get_by_test_id("image-canvas")
            canvas.wait_for()
            page.get_by_test_id("tool-point").click()
            box = canvas.bounding_box()
            assert box is not None  # visible: it was waited for
            w, h = image.shape[1], image.shape[0]
            at = (
                box["x"] + (point[0] + 0.5) / w * box["width"],
                box["y"] + (point[1] + 0.5) / h * box["height"],
            )
            ui_ms, rest_ms = [], []
            for i in range(iters + 2):  # the first two rounds warm up
                page.keyboard.press("Escape")  # a fresh prompt: one point, like the REST call
                page.evaluate("() => performance.clearMeasures('vplab:click-to-overlay')")
                page.mouse.click(*at)
                deadline = time.monotonic() + 60
                while not page.evaluate(_MEASURES):
                    if time.monotonic() > deadline:
                        raise TimeoutError("the overlay was not repainted within 60 s")
                    time.sleep(0.005)
                rest = page.evaluate(_REST, {"image": image_id, "x": point[0], "y": point[1]})
                if i >= 2:
                    ui_ms.append(float(page.evaluate(_MEASURES)[0]))
                    rest_ms.append(float(rest))
            log(
                f"clicks: ui p50 {percentile(ui_ms, 50):.1f} ms, rest p50 {percentile(rest_ms, 50):.1f} ms"
            )

            fetched: list[str] = []

            def on_request(request) -> None:
                if request.url.rsplit("/", 1)[-1] in grid_ids:  # GET /v1/images/{id}
                    fetched.append(request.url)

            page.on("request", on_request)
            t0 = time.perf_counter()
            page.goto(f"{st.url}/ui/#/d/{big.id}/images")
            tiles = page.get_by_test_id("image-tile")
            tiles.nth(grid - 1).wait_for(state="attached", timeout=120_000)
            grid_render_s = time.perf_counter() - t0
            page.wait_for_timeout(1500)  # the visible thumbnails load
            initial = len(set(fetched))
            steps = 0
            while steps < 400 and not page.evaluate(
                "() => innerHeight + scrollY >= document.body.scrollHeight - 2"
            ):
                page.mouse.wheel(0, 900)
                page.wait_for_timeout(60)
                steps += 1
            page.wait_for_timeout(1500)
            after_scroll = len(set(fetched))
            browser.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ui50, rest50 = percentile(ui_ms, 50), percentile(rest_ms, 50)
    figures = {
        "ui_click_p50_ms": ui50,
        "ui_click_p90_ms": percentile(ui_ms, 90),
        "rest_p50_ms": rest50,
        "rest_p90_ms": percentile(rest_ms, 90),
        "ui_overhead_p50_ms": ui50 - rest50,
        "grid_images": grid,
        "grid_render_s": grid_render_s,
        "grid_thumbs_fetched_on_open": initial,
        "grid_thumbs_fetched_after_scrolling_to_the_end": after_scroll,
        "grid_fraction_fetched_on_open": initial / grid,
    }
    return BenchResult(
        name=NAME,
        figures=figures,
        summary=[
            f"click -> overlay painted p50 {ui50:.1f} ms (p90 {figures['ui_click_p90_ms']:.1f}); "
            f"REST alone p50 {rest50:.1f} ms (p90 {figures['rest_p90_ms']:.1f}); "
            f"UI overhead p50 {ui50 - rest50:+.1f} ms  [{iters} clicks, sam_mini 256 px]",
            f"grid of {grid}: tiles in {grid_render_s:.1f}s; thumbnails fetched on open {initial}, "
            f"after scrolling to the end {after_scroll} (lazy: only what came into view)",
        ],
        targets=[
            Target("ui_overhead_p50_ms", "<=", 20.0),
            Target("grid_fraction_fetched_on_open", "<=", 0.1),
        ],
        config={
            "quick": args.quick,
            "iters": iters,
            "grid": grid,
            "model": "sam_mini",
            "image": "256 px miniworld",
        },
    )
