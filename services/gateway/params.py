"""What the routes share: declared path parameters, the common error responses, and
small response helpers."""

from __future__ import annotations

from dataclasses import asdict, is_dataclass
from typing import Annotated, Any

from fastapi import Path
from fastapi.responses import Response

from services.gateway import schemas as S
from vplab.errors import InvalidInput
from vplab.masks import rle_area
from vplab.storage.keys import ID_PATTERN, SHA256_PATTERN

V1 = "/v1"  # every resource router's prefix: route templates are the public paths

# Path ids with the patterns the server enforces (declared in OpenAPI).
DatasetIdPath = Annotated[str, Path(pattern=ID_PATTERN, description="A dataset id")]
ImageIdPath = Annotated[
    str, Path(pattern=SHA256_PATTERN, description="sha256 of the image bytes (lowercase hex)")
]
JobIdPath = Annotated[str, Path(pattern=ID_PATTERN, description="A training job id")]
ModelIdPath = Annotated[str, Path(pattern=ID_PATTERN, description="A tuned model id")]

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


_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF8", "image/gif"),
    (b"BM", "image/bmp"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
)


def image_media_type(data: bytes) -> str:
    for magic, media in _MAGIC:
        if data.startswith(magic):
            return media
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


def png_response(data: bytes, filename: str | None = None) -> Response:
    headers = {"Content-Disposition": f'inline; filename="{filename}"'} if filename else None
    return Response(content=data, media_type="image/png", headers=headers)
