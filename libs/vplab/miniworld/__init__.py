"""Miniworld: a procedural source domain, six target domains and a dev domain (QUALITY.md).

A world we build ourselves, so quality is measurable without downloadable weights:
``render(domain, seed, index)`` is a pure function returning an image with instance and
class masks. ``sam_mini`` and ``dinov2_mini`` are pretrained on the source domain
(``vplab miniworld pretrain``); the target domains stand in for the papers' datasets.
"""

from vplab.miniworld.domains import (
    DEV_DOMAIN,
    DOMAINS,
    SOURCE_DOMAIN,
    TARGET_DOMAINS,
    Sample,
    render,
    render_many,
)

__all__ = [
    "DEV_DOMAIN",
    "DOMAINS",
    "SOURCE_DOMAIN",
    "TARGET_DOMAINS",
    "Sample",
    "render",
    "render_many",
]
