"""Server-sent events: framing, and a keep-alive wrapper for slow async streams."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

KEEPALIVE = b": keep-alive\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse_event(data: Any, event: str | None = None, event_id: int | str | None = None) -> bytes:
    lines = []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    if event is not None:
        lines.append(f"event: {event}")
    text = json.dumps(data, separators=(",", ":"))
    lines.extend(f"data: {line}" for line in text.splitlines() or [""])
    return ("\n".join(lines) + "\n\n").encode()


def wants_event_stream(accept: str | None) -> bool:
    return bool(accept) and "text/event-stream" in accept.lower()


_END = object()


async def with_keepalive(source: AsyncIterator[Any], interval_s: float) -> AsyncIterator[Any]:
    """Yield ``source``'s items; yield ``None`` whenever ``interval_s`` passes without one.

    The pending read is never cancelled by the timeout (that would abort a gRPC stream):
    the same read task is awaited again after each keep-alive.
    """
    iterator = source.__aiter__()

    async def next_item():
        try:
            return await iterator.__anext__()
        except StopAsyncIteration:
            return _END

    task: asyncio.Task | None = None
    try:
        while True:
            if task is None:
                task = asyncio.ensure_future(next_item())
            done, _ = await asyncio.wait({task}, timeout=interval_s)
            if not done:
                yield None
                continue
            item, task = task.result(), None
            if item is _END:
                return
            yield item
    finally:
        if task is not None and not task.done():
            task.cancel()
