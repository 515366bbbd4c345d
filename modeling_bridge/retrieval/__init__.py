"""Search with BRIDGE: unimodal embeddings find candidates, the interaction layers re-rank them."""

from .search import (
    Gallery,
    GalleryItems,
    SearchOutput,
    build_gallery,
    search,
    unimodal_fingerprint,
    weights_fingerprint,
)


__all__ = [
    "Gallery",
    "GalleryItems",
    "SearchOutput",
    "build_gallery",
    "search",
    "unimodal_fingerprint",
    "weights_fingerprint",
]
