"""One settings object for the whole system, read from ``VPLAB_*`` environment variables.

``get_settings()`` is the configured singleton; tests build their own ``Settings(...)``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VPLAB_", extra="ignore")

    # Object store. With no S3 endpoint the embedded LocalStore under data_dir is used.
    data_dir: Path = Path(".vplab/data")
    s3_endpoint: str | None = None  # host:port, e.g. "minio:9000"
    s3_access_key: str | None = None
    s3_secret_key: str | None = None
    s3_bucket: str = "vplab"
    s3_secure: bool = False
    s3_region: str = "us-east-1"

    # Models. A checkpoint is a local path or an object-store key ("base-models/...").
    sam_model: str = "vit_b"
    sam_checkpoint: str | None = None
    sam_sha256: str | None = None
    dino_model: str = "vit_small_patch14_dinov2"
    dino_checkpoint: str | None = None
    dino_sha256: str | None = None
    demo: bool = False  # embedded sam_mini / dinov2_mini instead of checkpoints
    random_weights: bool = (
        False  # real-size architectures, seeded random weights, no checkpoint (benchmarks)
    )
    device: str = "auto"  # auto | cpu | cuda
    torch_threads: int = (
        0  # torch intra-op threads per replica/training task; 0 = every available core
    )
    malloc_trim_mb: int = (
        256  # free heap memory kept per process (vplab.allocator); 0 = glibc defaults
    )

    # Request limits (per request) - checked before any decoding.
    max_image_bytes: int = 50 * 1024 * 1024
    max_image_pixels: int = 64 * 1024 * 1024
    max_import_bytes: int = 2 * 1024**3  # an uploaded archive (POST .../import)
    # Images larger than the SAM encoder's input are embedded as tiles with a halo
    # (vplab.segmentation.tiling); off: shrunk to fit, as SAM does. 0 = an eighth of the input.
    tile_large_images: bool = True
    tile_halo: int = 0
    max_points_per_request: int = 64
    max_targets_per_call: int = 256

    # Tenant quotas.
    quota_images: int = 10_000
    quota_bytes: int = 20 * 1024**3
    quota_concurrent_jobs: int = 2

    # Training jobs.
    train_checkpoint_every: int = 20
    train_eval_every: int = 10
    train_views: int = 8  # dihedral views per image in the augmentation bank
    train_max_retries: int = 3  # worker deaths survived (the job resumes from its checkpoint)
    # Prediction runs: targets in flight at once (spread over the segmentation replicas), and
    # how long one target may take before it is tried again elsewhere.
    prediction_concurrency: int = 4
    prediction_target_timeout_s: float = 600.0
    train_num_gpus: float = 0.0

    # Services.
    grpc_target: str = "127.0.0.1:9000"  # where the gateway reaches the Serve gRPC proxy
    embedding_lru_bytes: int = 512 * 1024**2
    max_models_per_replica: int = 4
    # Serve admission (features and segmentation): requests a replica accepts at once (they
    # wait in its FIFO for a model thread), requests a caller's router may queue beyond that
    # (then RESOURCE_EXHAUSTED: REST 429 + Retry-After), model calls a replica runs at once
    # (each uses torch_threads), and an optional Serve autoscaling_config per app for the
    # local stack (JSON, e.g. VPLAB_SEGMENTATION_AUTOSCALING='{"min_replicas":1,
    # "max_replicas":2,"target_ongoing_requests":4}'; the Helm chart sets its own).
    # Requests in the router's queue are not FIFO: each retries with back-off (25 ms doubling
    # to 0.5 s) and the replica idles between them - throughput fell 3x whenever clients
    # outnumbered max_ongoing (BENCHMARKS.md section 8). So the replica takes the queue
    # (cheap: a waiting request is a coroutine) and the router's is a short burst buffer.
    serve_max_ongoing_requests: int = 256
    serve_max_queued_requests: int = 64
    serve_model_threads: int = 1
    # Decoder batching across concurrent SegmentPrompt calls (Serve's @serve.batch): point
    # prompts on one embedding go through the decoder together, at most this many. 0 = by
    # measurement (``vplab.inference.segmentation.decoder_batch_size``: 16 on a GPU, off on
    # CPU where it did not pay end to end, BENCHMARKS.md section 8); 1 = off.
    segment_batch_max: int = 0
    segment_batch_wait_s: float = 0.002
    # A Ray cluster to join instead of starting a local instance (``ray start --head``'s
    # address, e.g. "127.0.0.1:6379"; KubeRay's head service), and whether Serve replicas and
    # training tasks ask for their role's custom resource ``vplab_<role>`` so that they land
    # on the worker nodes that advertise it (the chart's worker groups; docs/MULTI-NODE.md).
    ray_address: str | None = None
    ray_pin_roles: bool = False
    features_autoscaling: dict[str, Any] | None = None
    segmentation_autoscaling: dict[str, Any] | None = None

    # Secret mixed into API-key hashes (set it in production).
    api_key_pepper: str = "vplab-dev-pepper"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
