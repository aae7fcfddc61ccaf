import os

# Two CPU cores on CI: keep torch from oversubscribing when tests run next to Ray.
os.environ.setdefault("OMP_NUM_THREADS", "2")

import torch

torch.set_num_threads(2)


# --- S3 for tests: moto's server driven through the real minio client --------------------

import uuid  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import pytest  # noqa: E402


@dataclass(frozen=True)
class S3Server:
    endpoint: str  # "127.0.0.1:PORT", what Minio() and Settings.s3_endpoint take
    access_key: str
    secret_key: str
    region: str = "us-east-1"

    def settings(self, bucket: str) -> dict[str, str]:
        """``Settings`` fields for this server and a fresh bucket named ``bucket-<random>``."""
        return dict(
            s3_endpoint=self.endpoint,
            s3_access_key=self.access_key,
            s3_secret_key=self.secret_key,
            s3_bucket=f"{bucket}-{uuid.uuid4().hex[:10]}",
        )


def _atomic_conditional_puts() -> None:
    """moto's PutObject checks If-None-Match / If-Match, then stores: two steps, and its
    server answers requests on threads, so two creators of one key could both win (a run
    of the 32-writer label test got 31 versions). S3 decides a conditional write
    atomically; one lock around moto's PutObject keeps the fake to that contract."""
    import threading

    from moto.s3.responses import S3Response

    if getattr(S3Response.put_object, "vplab_atomic", False):
        return
    original, lock = S3Response.put_object, threading.Lock()

    def put_object(self):
        with lock:
            return original(self)

    put_object.vplab_atomic = True  # type: ignore[attr-defined]
    S3Response.put_object = put_object


@pytest.fixture(scope="session")
def s3_server():
    """One moto S3 server per session. moto ignores credentials: never test auth with it."""
    from moto.server import ThreadedMotoServer

    _atomic_conditional_puts()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield S3Server(endpoint=f"{host}:{port}", access_key="testing", secret_key="testing")
    finally:
        server.stop()


@pytest.fixture
def s3_store(s3_server):
    """An S3Store on a fresh bucket (DNS-style name), so tests never see each other's objects."""
    from vplab.storage import S3Store

    return S3Store(
        endpoint=s3_server.endpoint,
        access_key=s3_server.access_key,
        secret_key=s3_server.secret_key,
        bucket=f"test-{uuid.uuid4().hex[:12]}",
        secure=False,
        region=s3_server.region,
    )
