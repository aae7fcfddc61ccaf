"""Server-sent events: framing, keep-alives, and the one helper that turns a streaming
RPC into an SSE response (visual prompting and every durable job's events use it)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import grpc
from fastapi.responses import StreamingResponse

from services.gateway.errors import rpc_error_body

if TYPE_CHECKING:
    from services.gateway.upstream import Upstream

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
    return accept is not None and "text/event-stream" in accept.lower()


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


# (event name, data, event id) of one streamed message and its 1-based ordinal
EventOf = Callable[[Any, int], tuple[str, Any, int | str | None]]


async def rpc_to_sse(
    call: Any,
    count: Callable[[grpc.RpcError | None], None],
    event_of: EventOf,
    keepalive_s: float,
    *,
    wait_first: bool = False,
    last: Callable[[Any], bool] = lambda _msg: False,
    closing: Callable[[int], tuple[str, Any]] | None = None,
) -> StreamingResponse:
    """An SSE response that relays a server-streaming call.

    ``wait_first``: read the first message before answering, so an error before it keeps
    its HTTP status (the RpcError propagates to the error handlers). Later errors become
    an ``error`` event (the status is already sent). ``last(msg)`` ends the stream after
    ``msg``; ``closing(n)`` adds one final event after ``n`` relayed messages. The call is
    cancelled when the client goes away. ``count`` records the outcome once.
    """
    iterator = call.__aiter__()
    first: list[Any] = []
    if wait_first:
        try:
            first.append(await iterator.__anext__())
        except StopAsyncIteration:
            pass
        except grpc.RpcError as e:
            count(e)
            raise

    async def rest() -> AsyncIterator[Any]:
        async for msg in iterator:
            yield msg

    async def events() -> AsyncIterator[bytes]:
        n = 0
        try:
            if wait_first and not first:
                pass  # the stream ended before its first message
            else:
                for msg in first:
                    n += 1
                    name, data, event_id = event_of(msg, n)
                    yield sse_event(data, event=name, event_id=event_id)
                    if last(msg):
                        break
                else:
                    async for msg in with_keepalive(rest(), keepalive_s):
                        if msg is None:
                            yield KEEPALIVE
                            continue
                        n += 1
                        name, data, event_id = event_of(msg, n)
                        yield sse_event(data, event=name, event_id=event_id)
                        if last(msg):
                            break
            count(None)
            if closing is not None:
                name, data = closing(n)
                yield sse_event(data, event=name)
        except grpc.RpcError as e:
            count(e)
            yield sse_event(rpc_error_body(e), event="error")
        finally:
            call.cancel()

    return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)


async def job_event_stream(
    up: Upstream,
    authorization: str | None,
    keepalive_s: float,
    get: tuple[str, Any],
    watch: tuple[str, Any],
    event_from_pb: Callable[[Any], dict[str, Any]],
    item: tuple[str, str] | None = None,
) -> StreamingResponse:
    """A durable job's events (the training app's ``Watch*`` call) as SSE.

    ``get``/``watch``: (method, request). The ``get`` call first, so an unknown or foreign
    job is a 404 before the stream starts. Each event is named ``end`` when its state is
    terminal (the stream ends after it), ``item[1]`` when its phase is ``item[0]``, else
    ``progress``; its id is its ``seq`` (what ``Last-Event-ID`` resumes from).
    """
    from vplab.rpc import convert

    await up.unary(convert.TRAINING, get[0], get[1], authorization)
    call = up.stream(convert.TRAINING, watch[0], watch[1], authorization, deadline=False)

    def ended(e: Any) -> bool:
        state = convert.job_state_from_pb(e.state)
        return state is not None and state.terminal

    def event_of(e: Any, _n: int) -> tuple[str, Any, int]:
        name = "progress" if item is None or e.phase != item[0] else item[1]
        return ("end" if ended(e) else name), event_from_pb(e), e.seq

    def count(error: grpc.RpcError | None) -> None:
        up.count(convert.TRAINING, watch[0], error)

    return await rpc_to_sse(call, count, event_of, keepalive_s, last=ended)
