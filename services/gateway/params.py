"""What the routes share: declared path parameters, the common error responses, and
small response helpers."""

from __future__ import annotations

from dataclasses import asdict, is_dataclass
from typing import Annotated, Any

from fastapi import Header, Path, Query, Request
from fastapi.responses import Response

from services.gateway import schemas as S
from services.gateway.errors import ApiError
from vplab.errors import InvalidInput
from vplab.images import sniff_format
from vplab.masks import rle_area
from vplab.storage.keys import ID_PATTERN, SHA256_PATTERN
from vplab.tenancy import RequestLimits

V1 = "/v1"  # every resource router's prefix: route templates are the public paths

# Path ids with the patterns the server enforces (declared in OpenAPI).
DatasetIdPath = Annotated[str, Path(pattern=ID_PATTERN, description="A dataset id")]
ImageIdPath = Annotated[
    str, Path(pattern=SHA256_PATTERN, description="sha256 of the image bytes (lowercase hex)")
]
JobIdPath = Annotated[str, Path(pattern=ID_PATTERN, description="A training job id")]
RunIdPath = Annotated[str, Path(pattern=ID_PATTERN, description="A prediction run id")]
DataJobIdPath = Annotated[str, Path(pattern=ID_PATTERN, description="A data job id")]
ModelIdPath = Annotated[str, Path(pattern=ID_PATTERN, description="A tuned model id")]

# An event stream's resume point: ``after_seq``, or what EventSource sends on reconnect.
AfterSeqQuery = Annotated[int, Query(ge=0, le=2**62, description="only events after this seq")]
LastEventIdHeader = Annotated[
    str,
    Header(
        alias="last-event-id",
        pattern=r"^([0-9]{1,18})?$",
        description="resume after this event seq (what EventSource sends on reconnect)",
    ),
]


def resume_after(after_seq: int, last_event_id: str) -> int:
    return int(last_event_id) if last_event_id else after_seq


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    s: {"model": S.ErrorResponse, "description": d}
    for s, d in (
        (400, "Invalid input"),
        (401, "Missing or invalid API key"),
        (404, "Unknown id (or another tenant's)"),
        (413, "Request over a size limit"),
        (429, "Tenant quota exceeded"),
    )
}


def plain(obj: Any) -> Any:
    """Library records (dataclasses, pydantic models, dicts) -> JSON-able values."""
    if is_dataclass(obj) and not isinstance(obj, type):
        return asdict(obj)
    if hasattr(obj, "model_dump"):
        return obj.model_dump()
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj


def checked_rle(rle: S.Rle, what: str) -> dict[str, Any]:
    """The wire dict of ``rle`` after checking its runs cover exactly H*W pixels."""
    wire = rle.wire()
    try:
        rle_area(wire)
    except InvalidInput as e:
        raise InvalidInput(f"{what}: {e.message}") from None
    return wire


def image_media_type(data: bytes) -> str:
    found = sniff_format(data)
    return found.media_type if found is not None else "application/octet-stream"


def png_response(data: bytes, filename: str | None = None) -> Response:
    headers = {"Content-Disposition": f'inline; filename="{filename}"'} if filename else None
    return Response(content=data, media_type="image/png", headers=headers)


PNG_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                    "additionalProperties": False,
                }
            },
        },
    }
}


async def png_body(request: Request, limits: RequestLimits) -> bytes:
    """The PNG of a label upload: a raw ``image/png`` body or a multipart ``file`` part."""
    data = await optional_png_body(request, limits)
    if data is None:
        raise InvalidInput("the request has no mask PNG")
    return data


async def optional_png_body(request: Request, limits: RequestLimits) -> bytes | None:
    """``png_body``, or None for an empty body."""
    ctype = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=4)
        extra = sorted(set(form.keys()) - {"file"})
        if extra:
            raise InvalidInput(f"multipart body has unknown parts {extra}; send only 'file'")
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise InvalidInput("multipart body needs a 'file' part with the PNG mask")
        data = await upload.read(limits.max_image_bytes + 1)
    elif ctype in ("image/png", "application/octet-stream", ""):
        data = await request.body()
    else:
        raise ApiError(415, f"send the mask as image/png or multipart/form-data, not {ctype!r}")
    if not data:
        return None
    limits.check_image_bytes(len(data), "mask")
    return data
