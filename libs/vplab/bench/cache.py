"""``cache``: SAM encoder on a cache miss vs fetching the cached embedding (hit).

``--via engine`` (default): the features service's engine in-process (``FeatureEngine``,
what the Serve replica runs, on the same object store). miss = ``embed`` of an image not
yet cached: read + decode the image, the encoder, bf16 serialisation, the store write.
hit = the same call once cached, from a fresh engine (empty in-replica LRU: a read from
the object store + deserialisation; what another replica sees); ``lru_hit_ms`` = from the
replica's LRU.
``--via serve``: the ``Embed`` RPC through the Serve gRPC proxy on a local stack (the
response carries the cache key, not the tensor: RPCs carry references).
A warm-up miss on another image runs first (untimed), so the timed miss is a warm replica's.
"""

from __future__ import annotations

import argparse
import functools
import shutil
import tempfile
import time
from pathlib import Path

from vplab.bench._common import BenchResult, Target, demo_images, log, percentile, time_ms

NAME = "cache"
HELP = "embedding cache: SAM encoder on a miss vs a cached-embedding hit (features service)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--quick", action="store_true", help="sam_tiny, 256 px, few iterations (for tests)"
    )
    p.add_argument(
        "--model", default="vit_b", help="SAM architecture (random weights), default vit_b"
    )
    p.add_argument(
        "--via",
        choices=("engine", "serve"),
        default="engine",
        help="engine: FeatureEngine in-process; serve: Embed RPC through the Serve gRPC proxy",
    )
    p.add_argument("--image-size", type=int, default=1024)
    p.add_argument("--hits", type=int, default=20, help="timed hits")


def run(args: argparse.Namespace) -> BenchResult:
    from vplab.bench._stack import bench_settings
    from vplab.datasets import DatasetStore
    from vplab.images import encode_png
    from vplab.storage import open_store
    from vplab.tenancy import create_tenant

    model = "sam_tiny" if args.quick else args.model
    size = 256 if args.quick else args.image_size
    n_hits = min(args.hits, 5) if args.quick else args.hits
    work = Path(tempfile.mkdtemp(prefix="vplab-bench-"))
    try:
        settings = bench_settings(work, model)
        store = open_store(settings)
        tenant, api_key = create_tenant(store, "bench", settings.api_key_pepper)
        datasets = DatasetStore(store, settings)
        ds = datasets.create_dataset(tenant.id, "bench")
        (warm_img, _), (img, _) = demo_images(2, size, seed=21)
        warm_id = datasets.add_image(tenant.id, ds.id, encode_png(warm_img), "warm.png")
        image_id = datasets.add_image(tenant.id, ds.id, encode_png(img), "bench.png")
        if args.via == "engine":
            fig, notes = _engine(settings, store, tenant.id, warm_id, image_id, n_hits)
        else:
            fig, notes = _serve(settings, api_key, warm_id, image_id, n_hits)
        fig["embedding_bytes"] = len(store.get_bytes(fig.pop("_key")))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    fig["hit_over_miss"] = fig["hit_ms"] / fig["miss_ms"]
    summary = [
        f"miss {fig['miss_ms']:.0f} ms, hit p50 {fig['hit_ms']:.2f} ms (p95 {fig['hit_p95_ms']:.2f}), "
        f"hit/miss {fig['hit_over_miss']:.2e}, embedding {fig['embedding_bytes']} bytes",
        *notes,
    ]
    return BenchResult(
        NAME,
        fig,
        summary,
        targets=[Target("hit_over_miss", "<=", 0.01), Target("embedding_bytes", "<=", 2.2e6)],
        config={
            "model": model,
            "via": args.via,
            "image": f"{size}x{size}",
            "hits": n_hits,
            "quick": bool(args.quick),
        },
    )


def _engine(settings, store, tenant: str, warm_id: str, image_id: str, n_hits: int):
    from vplab.inference.features import FeatureEngine
    from vplab.inference.runtime import ModelRuntime

    rt = ModelRuntime(settings, store)
    t0 = time.perf_counter()
    rt.sam  # noqa: B018
    log(f"model built in {time.perf_counter() - t0:.1f}s")
    engine = FeatureEngine(rt, settings.embedding_lru_bytes)
    warm = time_ms(lambda: engine.embed(tenant, warm_id))
    log(f"warm-up miss (untimed): {warm:.0f} ms")
    info = None

    def miss():
        nonlocal info
        info = engine.embed(tenant, image_id)

    miss_ms = time_ms(miss)
    assert info is not None and not info.cache_hit
    log(f"miss: {miss_ms:.0f} ms")
    store_hits, lru_hits = [], []
    for _ in range(n_hits):
        fresh = FeatureEngine(rt, settings.embedding_lru_bytes)  # empty LRU: read from the store
        store_hits.append(time_ms(functools.partial(fresh.embed, tenant, image_id)))
        assert fresh.hits == 1
    lru_hits = [time_ms(lambda: engine.embed(tenant, image_id)) for _ in range(n_hits)]
    fig = {
        "miss_ms": miss_ms,
        "hit_ms": percentile(store_hits, 50),
        "hit_p95_ms": percentile(store_hits, 95),
        "lru_hit_ms": percentile(lru_hits, 50),
        "_key": info.cache_key,
    }
    return fig, [
        "via: FeatureEngine in-process (LocalStore); hit_ms = store read + deserialise "
        f"(empty LRU); LRU hit p50 {fig['lru_hit_ms']:.3f} ms"
    ]


def _serve(settings, api_key: str, warm_id: str, image_id: str, n_hits: int):
    import grpc

    from vplab.bench._stack import local_stack
    from vplab.rpc.v1 import features_pb2, features_pb2_grpc

    with local_stack(settings, gateway=False) as st:
        channel = grpc.insecure_channel(st.grpc_target)
        stub = features_pb2_grpc.FeaturesStub(channel)
        md = [("application", "features"), ("authorization", f"Bearer {api_key}")]
        t0 = time.perf_counter()
        stub.Embed(features_pb2.EmbedRequest(image_id=warm_id), metadata=md, timeout=900)
        log(f"warm-up miss incl. model build (untimed): {time.perf_counter() - t0:.1f}s")
        out = {}

        def call():
            out["r"] = stub.Embed(
                features_pb2.EmbedRequest(image_id=image_id), metadata=md, timeout=900
            )

        miss_ms = time_ms(call)
        assert not out["r"].cache_hit
        hits = []
        for _ in range(n_hits):
            hits.append(time_ms(call))
            assert out["r"].cache_hit
        key = out["r"].cache_key
        channel.close()
    fig = {
        "miss_ms": miss_ms,
        "hit_ms": percentile(hits, 50),
        "hit_p95_ms": percentile(hits, 95),
        "_key": key,
    }
    return fig, [
        "via: Embed RPC through the Serve gRPC proxy (hits are served from the replica's LRU)"
    ]
