"""A SAM image embedding plus the sizes needed to map prompts and masks, and its cache
format (safetensors bytes, sizes in the metadata)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from vplab.blobs import safetensors_metadata
from vplab.errors import InvalidInput

FORMAT = "vplab.sam-embedding/1"
_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass
class ImageEmbedding:
    """``features``: (1, C, h, w) image-encoder output (256x64x64 for the official SAMs).
    ``original_size``: (H, W) of the image. ``input_size``: (h', w') after resizing the
    longest side to the encoder's img_size, before padding."""

    features: torch.Tensor
    original_size: tuple[int, int]
    input_size: tuple[int, int]

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> ImageEmbedding:
        features = self.features.to(device=device, dtype=dtype)
        return ImageEmbedding(features, self.original_size, self.input_size)

    def to_bytes(self, dtype: torch.dtype = torch.bfloat16) -> bytes:
        """Serialise for the embedding cache. bf16 halves the size (256x64x64: 4 MiB in
        fp32, 2 MiB in bf16) at ~3 significant digits, far below what changes a mask."""
        if dtype not in _DTYPES.values():
            raise InvalidInput(f"embedding dtype must be one of {list(_DTYPES)}, got {dtype}")
        features = self.features.detach().to(device="cpu", dtype=dtype).contiguous()
        meta = {
            "format": FORMAT,
            "original_size": json.dumps(list(self.original_size)),
            "input_size": json.dumps(list(self.input_size)),
        }
        return st_save({"features": features}, metadata=meta)

    @classmethod
    def from_bytes(cls, data: bytes, dtype: torch.dtype = torch.float32) -> ImageEmbedding:
        """Inverse of ``to_bytes``; features come back as ``dtype`` on the CPU."""
        try:
            tensors = st_load(bytes(data))
            meta = safetensors_metadata(data)
            if meta.get("format") != FORMAT:
                raise ValueError(f"format is {meta.get('format')!r}, expected {FORMAT!r}")
            original = tuple(int(v) for v in json.loads(meta["original_size"]))
            input_size = tuple(int(v) for v in json.loads(meta["input_size"]))
            features = tensors["features"]
            if (
                features.ndim != 4
                or features.shape[0] != 1
                or len(original) != 2
                or len(input_size) != 2
            ):
                raise ValueError(
                    f"features {tuple(features.shape)}, original_size {original}, input_size {input_size}"
                )
        except (SafetensorError, ValueError, KeyError, TypeError, json.JSONDecodeError) as e:
            raise InvalidInput(f"embedding bytes are not a valid {FORMAT} blob: {e}") from e
        return cls(features.to(dtype), original, input_size)
