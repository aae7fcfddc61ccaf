"""Prompt segmentation with SAM: pre/post-processing, image embeddings, decoding."""

from vplab.segmentation.embedding import ImageEmbedding
from vplab.segmentation.predictor import DecodeResult, PromptSegmenter, decode_torch

__all__ = ["DecodeResult", "ImageEmbedding", "PromptSegmenter", "decode_torch"]
