"""Reading the metadata of a safetensors blob held in memory.

``safetensors.torch.load`` returns only the tensors; our cache and checkpoint formats keep
their sizes and state in the header's ``__metadata__`` (8-byte little-endian header length,
then the JSON header).
"""

from __future__ import annotations

import json


def safetensors_metadata(data: bytes) -> dict[str, str]:
    n = int.from_bytes(data[:8], "little")
    if n <= 0 or 8 + n > len(data):
        raise ValueError("truncated safetensors header")
    header = json.loads(data[8 : 8 + n])
    return header.get("__metadata__") or {}
