"""``dataio``: import and export throughput (images/s) and peak memory for an archive of
many images (#16 point 6).

A zip of ``--images`` miniworld images (256 px PNG) with a ``masks/`` folder is imported
into a fresh dataset of a local store the way the service does it - the archive checked
and stored with a queued data job, then the job run (every image decoded and checked,
every label written, an event per file) - then exported as COCO and as label maps. Peak memory is the largest Python heap
(tracemalloc: numpy's buffers included) during each step: it must not grow with the
archive (one image in memory at a time).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import tracemalloc
import zipfile
from pathlib import Path

from vplab.bench._common import BenchResult, Target, log

NAME = "dataio"
HELP = "dataset import / export throughput and peak memory for a many-image archive"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="50 images (tests)")
    p.add_argument("--images", type=int, default=2000)


def _measure(fn):
    """(result, seconds, peak MiB): timed on a first run, the peak taken on a second run
    under tracemalloc (which slows Python's allocations about twofold: timing a traced run
    would halve the throughput)."""
    t0 = time.perf_counter()
    out = fn()
    elapsed = time.perf_counter() - t0
    tracemalloc.start()
    try:
        fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return out, elapsed, peak / 2**20


def run(args: argparse.Namespace) -> BenchResult:
    import numpy as np

    from vplab.dataio import export_dataset, parse_source
    from vplab.datajobs import SUCCEEDED, data_jobs, run_data_job, submit_import
    from vplab.datasets import DatasetStore
    from vplab.demo import DEMO_DOMAIN, miniworld_sample
    from vplab.images import encode_png
    from vplab.settings import Settings
    from vplab.storage import LocalStore
    from vplab.tenancy import create_tenant

    n = min(args.images, 50) if args.quick else args.images
    work = Path(tempfile.mkdtemp(prefix="vplab-bench-"))
    try:
        archive = work / "in.zip"
        t0 = time.perf_counter()
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as z:  # PNGs do not deflate
            for i in range(n):
                # 40 distinct scenes, made distinct images by a 1-pixel stamp of i.
                image, mask = miniworld_sample(DEMO_DOMAIN, 0, i % 40)
                image = image.copy()
                image[0, 0] = (i % 256, (i // 256) % 256, 7)
                z.writestr(f"images/im{i:05d}.png", encode_png(image))
                z.writestr(f"masks/im{i:05d}.png", encode_png(mask.astype(np.uint8) * 255))
        size_mb = archive.stat().st_size / 2**20
        log(f"archive of {n} images: {size_mb:.1f} MB in {time.perf_counter() - t0:.1f}s")
        settings = Settings(data_dir=work / "data")
        datasets = DatasetStore(LocalStore(work / "store"), settings)
        tenant, _ = create_tenant(datasets.store, "bench", "bench-pepper")
        jobs = data_jobs(datasets.store)
        targets: list[str] = []

        def import_job():  # into a new dataset each run (into the same one it adds nothing)
            targets.append(
                datasets.create_dataset(tenant.id, "bench", classes=[{"name": "polyp"}]).id
            )
            job = submit_import(datasets, jobs, tenant.id, targets[-1], archive)
            assert run_data_job(datasets.store, datasets, tenant.id, job.id) == SUCCEEDED
            return jobs.get(tenant.id, job.id).report

        report, import_s, import_mb = _measure(import_job)
        ds = datasets.get_dataset(tenant.id, targets[0])
        assert report["images_added"] == n and report["labels_written"] == n, report
        log(f"import: {import_s:.1f}s, peak {import_mb:.1f} MiB")
        figures: dict[str, float] = {
            "images": n,
            "archive_mb": size_mb,
            "import_s": import_s,
            "import_images_per_s": n / import_s,
            "import_peak_mib": import_mb,
        }
        for fmt in ("coco", "masks"):

            def export(fmt: str = fmt) -> int:
                with export_dataset(datasets, tenant.id, ds.id, fmt, parse_source("labels")) as f:
                    f.seek(0, 2)
                    return f.tell()

            nbytes, s, mb = _measure(export)
            log(f"export {fmt}: {s:.1f}s, {nbytes / 2**20:.1f} MB, peak {mb:.1f} MiB")
            figures.update(
                {
                    f"export_{fmt}_s": s,
                    f"export_{fmt}_images_per_s": n / s,
                    f"export_{fmt}_peak_mib": mb,
                    f"export_{fmt}_mb": nbytes / 2**20,
                }
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return BenchResult(
        name=NAME,
        figures=figures,
        summary=[
            f"{n} images ({size_mb:.0f} MB zip, 256 px PNG + mask): import "
            f"{figures['import_images_per_s']:.0f} img/s (peak {import_mb:.0f} MiB); export COCO "
            f"{figures['export_coco_images_per_s']:.0f} img/s (peak "
            f"{figures['export_coco_peak_mib']:.0f} MiB), masks "
            f"{figures['export_masks_images_per_s']:.0f} img/s (peak "
            f"{figures['export_masks_peak_mib']:.0f} MiB)",
        ],
        targets=[
            # Bounded memory: far below the archive's size whatever the image count.
            Target("import_peak_mib", "<=", 256.0),
            Target("export_coco_peak_mib", "<=", 256.0),
        ],
        config={"quick": args.quick, "images": n, "image": "256 px miniworld PNG"},
    )
