"""``load``: closed-loop clients against the local stack, REST and gRPC, 1 to 128 clients.

Each client sends ``POST /v1/images/{id}/segment`` (REST, through the gateway) or
``SegmentPrompt`` (gRPC, through Serve's proxy) and sends the next request as soon as
the answer arrives, for ``--seconds`` per level. Every answer is classified: ok, shed
(429 / 503 / RESOURCE_EXHAUSTED / UNAVAILABLE: the service said "not now"), or another
error. The stack is the demo one (tiny models) with the embedding cached, so a request
is one decoder call: what is measured is the serving path under concurrency.

Figures: peak requests/s; requests/s at 64 clients over the peak (a collapse shows as a
small ratio); p99 at N clients against N / peak (the closed-loop queueing bound: N
requests in flight drain at the peak rate); the shed fraction; other errors; the RSS of
the stack's processes at the end.

Levels are measured in ``--rounds`` passes, ascending then descending then ascending, and
each level's figure is the median over its passes. One pass per level compares the 64-client
rate with the maximum of eight single draws, which is biased upwards by the draws' own
spread (10-15 % between two runs of one level on this machine, BENCHMARKS section 8); the
median over alternating passes removes that bias and the drift of a long run.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from vplab.bench._common import BenchResult, Target, demo_images, log, percentile

NAME = "load"
HELP = (
    "closed-loop load on the local stack (REST and gRPC, 1..128 clients): throughput, p99, shedding"
)
LEVELS = (1, 2, 4, 8, 16, 32, 64, 128)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="levels 1, 4; 2 s each (for tests)")
    # 30 s: at 8 s the passes of one level still spread by a quarter on this machine, and
    # the 64-client ratio moved 0.82-1.00 between runs; at 30 s they agree (BENCHMARKS §8).
    p.add_argument("--seconds", type=float, default=30.0, help="measured duration of each level")
    p.add_argument(
        "--warmup",
        type=float,
        default=2.0,
        help="seconds each level runs before its answers count",
    )
    p.add_argument(
        "--levels", default=",".join(map(str, LEVELS)), help="client counts, comma-separated"
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="passes over the levels, alternating direction; a level's figure is its median",
    )
    p.add_argument("--transports", default="rest,grpc", help="rest, grpc or both")
    p.add_argument(
        "--max-ongoing",
        type=int,
        default=None,
        help="VPLAB_SERVE_MAX_ONGOING_REQUESTS for the run (Serve's own default is 5)",
    )
    p.add_argument(
        "--max-queued",
        type=int,
        default=None,
        help="VPLAB_SERVE_MAX_QUEUED_REQUESTS for the run (-1: unbounded, Serve's default)",
    )


async def _level(send, clients: int, seconds: float, warmup: float) -> dict[str, Any]:
    """Run ``clients`` closed loops for ``warmup + seconds``; count the answers that arrive in
    the last ``seconds`` (the first ones of a level pay for opening its connections and for
    the previous level's queue draining)."""
    begin = time.perf_counter()
    start, stop = begin + warmup, begin + warmup + seconds
    ok: list[float] = []
    counts = {"ok": 0, "shed": 0, "error": 0}
    errors: dict[str, int] = {}

    async def loop() -> None:
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            outcome, detail = await send()
            t1 = time.perf_counter()
            if not start <= t1 <= stop:
                continue
            counts[outcome] += 1
            if outcome == "ok":
                ok.append((t1 - t0) * 1000)
            elif outcome == "error":
                errors[detail] = errors.get(detail, 0) + 1

    await asyncio.gather(*[loop() for _ in range(clients)])
    total = sum(counts.values())
    return {
        "clients": clients,
        "rps": counts["ok"] / seconds,
        "p50_ms": percentile(ok, 50) if ok else None,
        "p99_ms": percentile(ok, 99) if ok else None,
        "shed_fraction": counts["shed"] / total if total else 0.0,
        "errors": dict(errors),
        "requests": total,
    }


def pass_order(levels: tuple[int, ...], rounds: int) -> list[int]:
    """The levels of ``rounds`` passes: ascending, descending, ascending, ..."""
    order: list[int] = []
    for r in range(rounds):
        order += list(levels) if r % 2 == 0 else list(reversed(levels))
    return order


def per_level(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median over passes of each level's rps, p50 and p99 (``rps_min``/``rps_max``: the
    spread of its passes), in ascending client order."""
    out = []
    for n in sorted({r["clients"] for r in rows}):
        mine = [r for r in rows if r["clients"] == n]
        p50 = [r["p50_ms"] for r in mine if r["p50_ms"] is not None]
        p99 = [r["p99_ms"] for r in mine if r["p99_ms"] is not None]
        rps = [r["rps"] for r in mine]
        errors: dict[str, int] = {}
        for r in mine:
            for k, v in r["errors"].items():
                errors[k] = errors.get(k, 0) + v
        out.append(
            {
                "clients": n,
                "passes": len(mine),
                "rps": percentile(rps, 50),
                "rps_min": min(rps),
                "rps_max": max(rps),
                "p50_ms": percentile(p50, 50) if p50 else None,
                "p99_ms": percentile(p99, 50) if p99 else None,
                "shed_fraction": max(r["shed_fraction"] for r in mine),
                "errors": errors,
            }
        )
    return out


def _rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def run(args: argparse.Namespace) -> BenchResult:
    import grpc
    import httpx
    import numpy as np

    from vplab.bench._stack import bench_settings, local_stack, own_processes
    from vplab.datasets import DatasetStore
    from vplab.images import encode_png
    from vplab.rpc import convert
    from vplab.rpc.v1 import features_pb2, segmentation_pb2_grpc
    from vplab.storage import open_store
    from vplab.tenancy import create_tenant

    levels = (1, 4) if args.quick else tuple(int(x) for x in args.levels.split(","))
    rounds = 1 if args.quick else args.rounds
    if rounds < 1:
        raise SystemExit("--rounds must be at least 1")
    order = pass_order(levels, rounds)
    seconds = 2.0 if args.quick else args.seconds
    warmup = 0.5 if args.quick else args.warmup
    transports = [t.strip() for t in args.transports.split(",") if t.strip()]
    work = Path(tempfile.mkdtemp(prefix="vplab-bench-load-"))
    results: dict[str, list[dict[str, Any]]] = {t: [] for t in transports}
    rss = None
    try:
        admission = {
            k: v
            for k, v in (
                ("serve_max_ongoing_requests", args.max_ongoing),
                ("serve_max_queued_requests", args.max_queued),
            )
            if v is not None
        }
        settings = bench_settings(work, "sam_tiny", demo=True, random_weights=False, **admission)
        store = open_store(settings)
        tenant, api_key = create_tenant(store, "load", settings.api_key_pepper)
        datasets = DatasetStore(store, settings)
        ds = datasets.create_dataset(tenant.id, "load")
        image, mask = demo_images(1, 256, seed=3)[0]
        image_id = datasets.add_image(tenant.id, ds.id, encode_png(image))
        ys, xs = np.nonzero(mask)
        x, y = (float(xs[len(xs) // 2]), float(ys[len(ys) // 2])) if len(xs) else (128.0, 128.0)
        auth = convert.bearer(api_key)
        with local_stack(settings) as st:
            channel = grpc.insecure_channel(st.grpc_target, options=convert.CHANNEL_OPTIONS)
            from vplab.rpc.v1 import features_pb2_grpc

            features_pb2_grpc.FeaturesStub(channel).Embed(  # warm the embedding cache
                features_pb2.EmbedRequest(image_id=image_id),
                metadata=convert.call_metadata(convert.FEATURES, auth),
                timeout=600,
            )
            channel.close()
            body = {"points": [[x, y]], "labels": [1], "multimask": True}
            request = convert.segment_request_to_pb(image_id, [(x, y, 1)], multimask=True)
            md = convert.call_metadata(convert.SEGMENTATION, auth)

            async def sweep(transport: str) -> None:
                if transport == "rest":
                    limits = httpx.Limits(max_connections=max(levels) + 8)
                    client = httpx.AsyncClient(
                        base_url=st.url, headers={"Authorization": auth}, timeout=120, limits=limits
                    )

                    async def send() -> tuple[str, str]:
                        try:
                            r = await client.post(f"/v1/images/{image_id}/segment", json=body)
                        except httpx.HTTPError as e:
                            return "error", type(e).__name__
                        if r.status_code == 200:
                            return "ok", ""
                        if r.status_code in (429, 503):
                            return "shed", ""
                        return "error", str(r.status_code)

                    try:
                        await send()  # warm
                        for n in order:
                            results["rest"].append(await _level(send, n, seconds, warmup))
                            log(f"rest {results['rest'][-1]}")
                    finally:
                        await client.aclose()
                else:
                    aio = grpc.aio.insecure_channel(st.grpc_target, options=convert.CHANNEL_OPTIONS)
                    stub = segmentation_pb2_grpc.SegmentationStub(aio)

                    async def send() -> tuple[str, str]:
                        try:
                            await stub.SegmentPrompt(request, metadata=md, timeout=120)
                        except grpc.RpcError as e:
                            code = e.code().name if e.code() else "UNKNOWN"
                            if code in ("RESOURCE_EXHAUSTED", "UNAVAILABLE"):
                                return "shed", ""
                            return "error", code
                        return "ok", ""

                    try:
                        await send()
                        for n in order:
                            results["grpc"].append(await _level(send, n, seconds, warmup))
                            log(f"grpc {results['grpc'][-1]}")
                    finally:
                        await aio.close(None)

            for transport in transports:
                asyncio.run(sweep(transport))
            pids = own_processes("ray::") + own_processes("vplab.cli gateway")
            rss = _rss_mb(pids)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    fig: dict[str, Any] = {"rss_mb": rss}
    summary = []
    for transport, passes in results.items():
        if not passes:
            continue
        rows = per_level(passes)
        peak = max(r["rps"] for r in rows)
        fig[f"{transport}_peak_rps"] = peak
        at64 = next((r for r in rows if r["clients"] == 64), None)
        fig[f"{transport}_rps64_over_peak"] = at64["rps"] / peak if at64 and peak else None
        if at64 and at64["p99_ms"] is not None and peak:
            bound_ms = 1000 * 64 / peak
            fig[f"{transport}_p99_64_over_bound"] = at64["p99_ms"] / bound_ms
        fig[f"{transport}_shed_fraction_max"] = max(r["shed_fraction"] for r in rows)
        fig[f"{transport}_other_errors"] = sum(sum(r["errors"].values()) for r in rows)
        summary.append(
            f"{transport} (median of {rounds} pass(es)): clients  req/s  (min-max)  p50 ms  p99 ms  shed"
        )
        for r in rows:
            p50 = "-" if r["p50_ms"] is None else f"{r['p50_ms']:.0f}"
            p99 = "-" if r["p99_ms"] is None else f"{r['p99_ms']:.0f}"
            summary.append(
                f"  {r['clients']:>7d} {r['rps']:6.1f} ({r['rps_min']:.1f}-{r['rps_max']:.1f})"
                f" {p50:>7s} {p99:>7s}  {r['shed_fraction']:.2f}"
                + (f"  errors {r['errors']}" if r["errors"] else "")
            )
        fig.setdefault("levels", {})[transport] = rows
    fig["passes"] = results
    targets = []
    for transport in results:
        targets += [
            Target(f"{transport}_rps64_over_peak", ">=", 0.9),
            Target(f"{transport}_p99_64_over_bound", "<=", 1.5),
            Target(f"{transport}_other_errors", "<=", 0),
        ]
    return BenchResult(
        NAME,
        fig,
        summary,
        targets=targets,
        config={
            "levels": list(levels),
            "rounds": rounds,
            "seconds": seconds,
            "warmup": warmup,
            "transports": transports,
            "max_ongoing": settings.serve_max_ongoing_requests,
            "max_queued": settings.serve_max_queued_requests,
            "segment_batch_max": settings.segment_batch_max,  # 0: automatic (off on CPU)
            "quick": bool(args.quick),
        },
    )
