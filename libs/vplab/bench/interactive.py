"""``interactive``: one click on a cached embedding, three ways.

(a) in-process: ``PromptSegmenter.decode`` on the cached ``ImageEmbedding`` (the bf16
    blob decoded once, as a replica's LRU holds it);
(b) gRPC: ``SegmentPrompt`` through the Ray Serve gRPC proxy (one channel, reused);
(c) REST: ``POST /v1/images/{id}/segment`` through the gateway (one keep-alive connection).

The stack is the real one (``start_serve`` + ``create_app``) with ``VPLAB_SAM_MODEL`` set
to the model and ``VPLAB_RANDOM_WEIGHTS=1``: the real architecture, seeded random weights
(no checkpoint exists here). The embedding is computed once in this process and written
to the tenant's cache key ``tenants/{t}/cache/{encoder_id}/{image}.safetensors`` (the
encoder id of the seeded weights is the one every replica computes), so no replica ever
runs the encoder; a features ``Embed`` call checks it is a hit before timing starts.
The three paths are timed in interleaved rounds so background load hits them alike.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import tempfile
import time
from pathlib import Path

from vplab.bench._common import BenchResult, Target, demo_images, log, percentile, time_ms

NAME = "interactive"
HELP = "click latency on a cached embedding: decoder in-process vs gRPC (Serve) vs REST (gateway)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--quick", action="store_true", help="sam_tiny, 256 px image, few iterations (for tests)"
    )
    p.add_argument(
        "--model", default="vit_b", help="SAM architecture (random weights), default vit_b"
    )
    p.add_argument("--iters", type=int, default=40, help="timed calls per path")
    p.add_argument("--image-size", type=int, default=1024, help="side of the synthetic image")
    p.add_argument(
        "--single-mask", action="store_true", help="multimask_output off (default: 3 masks)"
    )
    p.add_argument(
        "--random-embedding",
        action="store_true",
        help="cache a random embedding instead of running the encoder once (~17 s on ViT-B/CPU)",
    )
    p.add_argument(
        "--no-stack", action="store_true", help="in-process only (grpc/rest figures null)"
    )
    p.add_argument(
        "--replica-threads",
        type=int,
        default=None,
        help="VPLAB_TORCH_THREADS for the Serve replicas (default: this process's torch threads, so "
        "both sides decode with the same thread count; 0: every core)",
    )
    p.add_argument(
        "--profile",
        metavar="DIR",
        default=None,
        help="py-spy the segmentation replica and this process during the timed rounds (raw stacks)",
    )


def run(args: argparse.Namespace) -> BenchResult:
    import grpc
    import httpx
    import numpy as np
    import torch

    from vplab.bench._stack import bench_settings, local_stack
    from vplab.datasets import DatasetStore
    from vplab.images import encode_png
    from vplab.inference.runtime import ModelRuntime
    from vplab.rpc.v1 import (
        common_pb2,
        features_pb2,
        features_pb2_grpc,
        segmentation_pb2,
        segmentation_pb2_grpc,
    )
    from vplab.segmentation import PromptSegmenter
    from vplab.segmentation.embedding import ImageEmbedding
    from vplab.storage import keys, open_store
    from vplab.tenancy import create_tenant

    model = "sam_tiny" if args.quick else args.model
    iters = min(args.iters, 5) if args.quick else args.iters
    size = 256 if args.quick else args.image_size
    multimask = not args.single_mask
    work = Path(tempfile.mkdtemp(prefix="vplab-bench-"))
    try:
        settings = bench_settings(work, model)
        store = open_store(settings)
        tenant, api_key = create_tenant(store, "bench", settings.api_key_pepper)
        datasets = DatasetStore(store, settings)
        ds = datasets.create_dataset(tenant.id, "bench")
        image, mask = demo_images(1, size, seed=11)[0]
        image_id = datasets.add_image(tenant.id, ds.id, encode_png(image), "bench.png")
        ys, xs = np.nonzero(mask)
        x, y = (
            (float(xs[len(xs) // 2]), float(ys[len(ys) // 2])) if len(xs) else (size / 2, size / 2)
        )

        rt = ModelRuntime(settings, store)
        segmenter = PromptSegmenter(rt.sam, rt.device)
        t0 = time.perf_counter()
        if args.random_embedding:
            g = torch.Generator().manual_seed(0)
            feats = torch.randn((1, *segmenter.embedding_shape), generator=g) * 0.5
            emb = ImageEmbedding(feats, (size, size), (segmenter.img_size, segmenter.img_size))
        else:
            emb = segmenter.embed(image)
        encode_s = time.perf_counter() - t0
        blob = emb.to_bytes()
        cache_key = keys.embedding(tenant.id, rt.sam_encoder_id, image_id)
        store.put_bytes(cache_key, blob)
        cached = ImageEmbedding.from_bytes(blob)
        log(
            f"embedding ({'random' if args.random_embedding else 'encoder'}, {encode_s:.1f}s) "
            f"cached at {cache_key} ({len(blob)} bytes)"
        )
        coords, labels = np.array([[x, y]]), np.array([1])

        def inproc():
            r = segmenter.decode(cached, coords, labels, multimask_output=multimask)
            assert r.masks.shape[1] == (3 if multimask else 1)

        threads = torch.get_num_threads()
        stack_note = "no stack"
        replica_threads = None
        times: dict[str, list[float]] = {"inproc": [], "grpc": [], "rest": []}
        if args.no_stack:
            inproc()
            times["inproc"] = [time_ms(inproc) for _ in range(iters)]
        else:
            replica_threads = threads if args.replica_threads is None else args.replica_threads
            settings = settings.model_copy(update={"torch_threads": replica_threads})
            stack_note = (
                f"replica torch threads (VPLAB_TORCH_THREADS)={replica_threads or 'every core'}"
            )
            with local_stack(settings) as st:
                channel = grpc.insecure_channel(st.grpc_target)
                seg = segmentation_pb2_grpc.SegmentationStub(channel)
                auth = f"Bearer {api_key}"
                # The replica must serve the embedding we cached (same encoder id): check first.
                hit = features_pb2_grpc.FeaturesStub(channel).Embed(
                    features_pb2.EmbedRequest(image_id=image_id),
                    metadata=[("application", "features"), ("authorization", auth)],
                    timeout=900,
                )
                if not hit.cache_hit or hit.cache_key != cache_key:
                    raise RuntimeError(
                        f"the features service did not hit the cached embedding: {hit}"
                    )
                request = segmentation_pb2.SegmentPromptRequest(
                    image_id=image_id,
                    points=[common_pb2.Point(x=x, y=y, label=1)],
                    multimask_output=multimask,
                )
                md = [("application", "segmentation"), ("authorization", auth)]

                def via_grpc():
                    r = seg.SegmentPrompt(request, metadata=md, timeout=900)
                    assert len(r.masks) == (3 if multimask else 1)

                http = httpx.Client(base_url=st.url, headers={"Authorization": auth}, timeout=900)
                body = {"points": [[x, y]], "labels": [1], "multimask": multimask}

                def via_rest():
                    r = http.post(f"/v1/images/{image_id}/segment", json=body)
                    r.raise_for_status()
                    assert len(r.json()["masks"]) == (3 if multimask else 1)

                t0 = time.perf_counter()
                via_grpc()  # the replica builds its model and reads the cached embedding
                log(
                    f"first SegmentPrompt (replica loads the model + embedding): {time.perf_counter() - t0:.1f}s"
                )
                for fn in (
                    inproc,
                    via_grpc,
                    via_rest,
                    inproc,
                    via_grpc,
                    via_rest,
                ):  # warm every path
                    fn()
                paths = [("inproc", inproc), ("grpc", via_grpc), ("rest", via_rest)]
                with _profiling(args.profile):
                    for i in range(iters):
                        for k in range(3):  # rotate the order each round
                            name, fn = paths[(i + k) % 3]
                            times[name].append(time_ms(fn))
                http.close()
                channel.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    fig: dict[str, float | None] = {}
    for name, values in times.items():
        fig[f"{name}_p50_ms"] = percentile(values, 50) if values else None
        fig[f"{name}_p95_ms"] = percentile(values, 95) if values else None
    inproc_p50, grpc_p50, rest_p50 = (fig[f"{k}_p50_ms"] for k in ("inproc", "grpc", "rest"))
    # All three are measured together (stack) or only inproc (--no-stack).
    if inproc_p50 is not None and grpc_p50 is not None and rest_p50 is not None:
        fig["rest_over_inproc"] = rest_p50 / inproc_p50
        fig["rest_minus_inproc_ms"] = rest_p50 - inproc_p50
        fig["grpc_minus_inproc_ms"] = grpc_p50 - inproc_p50
    else:
        fig["rest_over_inproc"] = fig["rest_minus_inproc_ms"] = fig["grpc_minus_inproc_ms"] = None
    fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
    summary = [
        f"{name:7s} p50 {fmt(fig[f'{name}_p50_ms'])} ms   p95 {fmt(fig[f'{name}_p95_ms'])} ms"
        for name in times
    ]
    summary.append(f"in-process torch threads: {threads}; {stack_note}")
    return BenchResult(
        NAME,
        fig,
        summary,
        targets=[Target("rest_over_inproc", "<=", 1.3), Target("rest_minus_inproc_ms", "<=", 25.0)],
        config={
            "model": model,
            "image": f"{size}x{size}",
            "iters": iters,
            "multimask": multimask,
            "embedding": "random" if args.random_embedding else "encoder",
            "stack": not args.no_stack,
            "inproc_threads": threads,
            "replica_threads": replica_threads,
            "quick": bool(args.quick),
        },
    )


@contextlib.contextmanager
def _profiling(out_dir: str | None):
    """py-spy (raw collapsed stacks) on the segmentation replica and on this process."""
    if not out_dir:
        yield
        return
    import os
    import subprocess
    import sys

    from vplab.bench._stack import own_processes

    Path(out_dir).mkdir(parents=True, exist_ok=True)
    py_spy = Path(sys.executable).with_name("py-spy")
    targets = {"replica": own_processes("SegmentationDeployment"), "driver": [os.getpid()]}
    procs = []
    for label, pids in targets.items():
        for pid in pids:
            cmd = [
                str(py_spy),
                "record",
                "-p",
                str(pid),
                "-r",
                "100",
                "-f",
                "raw",
                "--nonblocking",
                "-o",
                str(Path(out_dir) / f"{label}-{pid}.txt"),
            ]
            procs.append(
                subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
    log(f"profiling {targets} into {out_dir}")
    try:
        yield
    finally:
        for p in procs:
            p.send_signal(2)  # SIGINT: py-spy writes its output and exits
        for p in procs:
            p.wait(30)
