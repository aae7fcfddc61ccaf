"""No lost label writes across gateway processes: 32 concurrent PUTs of one image's label,
spread over two `vplab gateway` processes sharing one store (local directory, and S3 through
moto), give 32 distinct versions whose payloads are all retrievable; If-Match gives 412."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from vplab.datasets import DatasetStore
from vplab.images import encode_png
from vplab.masks import encode_binary_mask, read_binary_mask
from vplab.procs import free_port
from vplab.settings import Settings
from vplab.stack import start_gateway_process
from vplab.storage import open_store
from vplab.tenancy import create_tenant

pytestmark = [pytest.mark.integration, pytest.mark.slow]
H, W = 24, 32


def _wait_up(url: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/openapi.json", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"gateway {url} did not start")


@pytest.fixture(params=["local", "s3"])
def settings(request, tmp_path):
    base = dict(data_dir=tmp_path / "data", api_key_pepper="pepper-labels")
    if request.param == "local":
        return Settings(**base, s3_endpoint=None)
    s3 = request.getfixturevalue("s3_server")
    return Settings(
        **base,
        s3_endpoint=s3.endpoint,
        s3_access_key=s3.access_key,
        s3_secret_key=s3.secret_key,
        s3_bucket=f"labels-{uuid.uuid4().hex[:10]}",
    )


def test_32_writers_on_two_gateway_processes(settings):
    store = open_store(settings)
    tenant, key = create_tenant(store, "editors", settings.api_key_pepper)
    datasets = DatasetStore(store, settings)
    d = datasets.create_dataset(tenant.id, "d").id
    rng = np.random.default_rng(0)
    image = datasets.add_image(tenant.id, d, encode_png(rng.integers(0, 255, (H, W, 3), np.uint8)))
    ports = [free_port(), free_port()]
    procs = [start_gateway_process(settings, p, "127.0.0.1:1", quiet=True) for p in ports]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    try:
        for url in urls:
            _wait_up(url)
        masks = [encode_binary_mask(rng.random((H, W)) > 0.5) for _ in range(32)]
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "image/png"}
        path = f"/v1/datasets/{d}/labels/{image}"

        def put(k: int) -> tuple[int, int]:
            r = httpx.put(urls[k % 2] + path, content=masks[k], headers=headers, timeout=60)
            assert r.status_code == 200, r.text
            return k, r.json()["version"]

        with ThreadPoolExecutor(32) as pool:
            told = dict(pool.map(put, range(32)))
        assert sorted(told.values()) == list(range(1, 33))  # 32 distinct versions
        for k, version in told.items():  # every accepted write is retrievable, as told
            r = httpx.get(urls[version % 2] + path, params={"version": version}, headers=headers)
            assert r.status_code == 200
            stored = DatasetStore(store, settings).get_label(tenant.id, d, image, version)
            assert r.content == stored.png
            assert np.array_equal(
                stored.mask(), datasets.get_label(tenant.id, d, image, version).mask()
            )
            assert np.array_equal(read_binary_mask(r.content), read_binary_mask(masks[k]))

        # Optimistic concurrency: two editors load the latest label; the second save is 412.
        etag = httpx.get(urls[0] + path, headers=headers).headers["etag"]
        first = httpx.put(urls[0] + path, content=masks[0], headers={**headers, "If-Match": etag})
        assert first.status_code == 200 and first.json()["version"] == 33
        assert first.headers["etag"] != etag
        stale = httpx.put(urls[1] + path, content=masks[1], headers={**headers, "If-Match": etag})
        assert stale.status_code == 412, stale.text
        assert stale.json()["error"]["code"] == "precondition_failed"
        assert datasets.list_labels(tenant.id, d) == {image: 33}  # the 412 wrote nothing
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=15)
            except Exception:  # noqa: BLE001 - a stuck gateway must not hide the result
                p.kill()
