"""Two-stage search: embed a gallery once with the unimodal path, find each query's top-k candidates, then re-rank
those k pairs with the fused or ITM score (`BridgeModel.interact` on (query, candidate) index pairs).

Stage 1 is an exact top-k over the embedding matrix, or, for galleries written to disk (`cache_dir`), a FAISS
inner-product index over a memory-mapped `datasets.Dataset` of the embeddings (`faiss-cpu`, the `[search]` extra).
With k = the gallery's size the result is exact fused scoring (tested). Text-to-image: the gallery holds images and
the queries are texts; image-to-text: the reverse.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from datasets.fingerprint import Hasher
from PIL import Image

from ..command_line import check_int
from ..configuration_bridge import PAIR_SCORE_MODES
from ..fingerprint import tokenizer_fingerprint, weights_fingerprint
from ..modeling_bridge import pair_score


GALLERY_INFO_FILE = "bridge_gallery.json"
GALLERY_EMBEDDINGS_FILE = "gallery_embeddings.arrow"
MODALITIES = ("image", "text")


def unimodal_fingerprint(bridge, modality: str) -> str:
    """Fingerprint of what produces a modality's unimodal embeddings: its tower and projection, and the pooling."""
    if modality == "image":
        weights = weights_fingerprint(tower=bridge.vision_model, projection=bridge.vision_unimodal_projection)
    else:
        weights = weights_fingerprint(tower=bridge.text_model, projection=bridge.text_unimodal_projection)
    return Hasher.hash((weights, bridge.config.pooling))


def _check_max_length(max_length, processor) -> None:
    """None, or room for the tokenizer's special tokens and at least one word."""
    if max_length is None:
        return
    check_int(max_length, "max_length")
    special = processor.tokenizer.num_special_tokens_to_add()
    if max_length <= special:
        raise ValueError(
            f"max_length={max_length} leaves no room for a word: the tokenizer adds {special} special tokens to each "
            f"text. Pass max_length > {special} (None: the model's max_text_positions)."
        )


def _check_items(items, modality: str, what: str, single_allowed: bool):
    """`items` as a sequence of images or texts. A single text or PIL image is one item where `single_allowed`
    (queries), else an error; arrays, tensors and dicts are refused (iterating them would search rows, channels or
    keys as if they were items)."""
    if isinstance(items, GalleryItems):
        return items
    if isinstance(items, (str, os.PathLike, Image.Image)):
        if single_allowed:
            return _check_items([items], modality, what, single_allowed)
        raise TypeError(
            f"The {what} must be a list of {modality}s, got a single {type(items).__name__}: wrap it in a list."
        )
    if isinstance(items, (bytes, dict, torch.Tensor, np.ndarray)) or not isinstance(items, Sequence):
        raise TypeError(
            f"The {what} must be a list (or tuple) of {modality}s, or GalleryItems of a dataset column; got "
            f"{type(items).__name__}."
        )
    if len(items) == 0:
        raise ValueError(f"The {what} is empty: give at least one {modality}.")
    if modality == "text":
        for i, item in enumerate(items):
            if not isinstance(item, str):
                raise TypeError(f"The {what} must hold strings; item {i} is {type(item).__name__}, not str.")
            if not item.strip():
                raise ValueError(f"The {what} holds an empty text (item {i}): it has no words to match; remove it.")
    return items


def _items_fingerprint(items, modality: str) -> str:
    """What a gallery's embeddings depend on besides the weights and the processor: its items, in order (a dataset
    column by the dataset's own fingerprint; an image file by its path, size and modification time)."""
    hasher = Hasher()
    hasher.update(modality)
    if isinstance(items, GalleryItems):
        hasher.update((items.dataset._fingerprint, items.column, len(items)))
        return hasher.hexdigest()
    hasher.update(len(items))
    for item in items:
        if modality == "image" and isinstance(item, (str, os.PathLike)) and os.path.isfile(item):
            stat = os.stat(item)
            item = (os.path.abspath(item), stat.st_size, stat.st_mtime_ns)
        hasher.update(item)
    return hasher.hexdigest()


def _processor_fingerprint(processor, modality: str, max_length: int | None) -> str:
    """The preprocessing settings an embedding depends on."""
    if modality == "image":
        return Hasher.hash(processor.image_processor.to_json_string())
    return Hasher.hash((tokenizer_fingerprint(processor.tokenizer), max_length))


def _bridge_model(model):
    bridge = getattr(model, "bridge", model)
    if not hasattr(bridge, "interaction_layers"):
        raise TypeError(f"Expected a BRIDGE model (BridgeModel or a model holding one), got {type(model).__name__}.")
    return bridge


def _batches(items, batch_size: int, progress: bool, desc: str):
    from huggingface_hub.utils import tqdm

    starts = range(0, len(items), batch_size)
    for start in tqdm(starts, desc=desc, disable=not progress, unit="batch"):
        yield _take(items, range(start, min(start + batch_size, len(items))))


def _take(items, indices) -> list:
    """Items at `indices` of a list, a tuple, or a one-column view of a `datasets.Dataset` (`GalleryItems`)."""
    indices = [int(i) for i in indices]
    if isinstance(items, GalleryItems):
        return list(items.dataset.select(indices)[items.column])
    return [items[i] for i in indices]


@dataclass
class GalleryItems:
    """One column of a `datasets.Dataset` as gallery items, read row by row (never all at once)."""

    dataset: Any
    column: str

    def __len__(self) -> int:
        return len(self.dataset)


def _encode(bridge, processor, modality: str, items: list, max_length: int | None):
    """Tower states, unimodal embeddings and (texts) the attention mask of a list of images or texts."""
    if modality == "image":
        inputs = processor(images=items, return_tensors="pt")
        out = bridge.get_image_features(inputs["pixel_values"].to(bridge.device))
        return out.last_hidden_state, out.pooler_output, None
    length = max_length or bridge.config.max_text_positions
    inputs = processor(text=items, return_tensors="pt", padding=True, truncation=True, max_length=length)
    inputs = {
        k: v.to(bridge.device) for k, v in inputs.items() if k in ("input_ids", "attention_mask", "token_type_ids")
    }
    out = bridge.get_text_features(**inputs)
    return out.last_hidden_state, out.pooler_output, inputs["attention_mask"]


@dataclass
class Gallery:
    """Unimodal embeddings of a gallery (images or texts) and what re-ranking needs: the items themselves (a list,
    or `GalleryItems` of a dataset), and the fingerprint of the model path that embedded them."""

    embeddings: torch.Tensor | None  # (N, dim) in memory; None for a gallery on disk (`index`)
    modality: str
    fingerprint: str
    items: Sequence | GalleryItems
    index: Any = field(default=None, repr=False)  # a datasets.Dataset with a FAISS index on "embedding"

    def __len__(self) -> int:
        return len(self.index) if self.embeddings is None else self.embeddings.shape[0]

    @property
    def dim(self) -> int:
        return self.index.features["embedding"].length if self.embeddings is None else self.embeddings.shape[1]

    def top_k(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage 1: (scores, indices) of the k most similar gallery items per query embedding (cosine)."""
        if self.embeddings is not None:
            scores, indices = (queries.float() @ self.embeddings.to(queries.device).float().t()).topk(k, dim=1)
            return scores, indices
        result = self.index.search_batch("embedding", queries.detach().float().cpu().numpy(), k=k)
        return torch.as_tensor(result.total_scores).to(queries.device), torch.as_tensor(result.total_indices).long()


@torch.no_grad()
def build_gallery(
    model,
    processor,
    images: Sequence | GalleryItems | None = None,
    texts: Sequence[str] | GalleryItems | None = None,
    batch_size: int = 64,
    cache_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    max_length: int | None = None,
    progress: bool = True,
) -> Gallery:
    """Embed a gallery of `images` or `texts` once with the unimodal path.

    With `cache_dir`, the embeddings are written to disk batch by batch (an Arrow file, memory-mapped as a
    `datasets.Dataset`) with the model's fingerprint, and stage 1 searches them through a FAISS inner-product index
    (`pip install faiss-cpu`); a later call with the same model and items loads the file instead of embedding again.
    """
    if (images is None) == (texts is None):
        raise ValueError("build_gallery takes images or texts (one gallery per modality), not both or neither.")
    modality, items = ("image", images) if images is not None else ("text", texts)
    items = _check_items(items, modality, f"{modality} gallery", single_allowed=False)
    if len(items) == 0:
        raise ValueError(f"The {modality} gallery is empty: give at least one {modality}.")
    check_int(batch_size, "batch_size")
    _check_max_length(max_length, processor)
    bridge = _bridge_model(model)
    bridge.eval()
    fingerprint = unimodal_fingerprint(bridge, modality)
    if cache_dir is not None:
        return _disk_gallery(
            bridge, processor, modality, items, fingerprint, batch_size, cache_dir, overwrite, max_length, progress
        )
    parts = [
        _encode(bridge, processor, modality, batch, max_length)[1]
        for batch in _batches(items, batch_size, progress, f"embedding the {modality} gallery")
    ]
    return Gallery(torch.cat(parts), modality, fingerprint, items)


def _faiss_index(dataset):
    try:
        import faiss
    except ImportError as error:
        raise ImportError(
            "Searching a gallery on disk uses a FAISS index: pip install faiss-cpu (or modeling-bridge[search]); "
            "or build the gallery in memory (cache_dir=None) for an exact matrix search."
        ) from error
    dataset.add_faiss_index(column="embedding", metric_type=faiss.METRIC_INNER_PRODUCT)
    return dataset


def _disk_gallery(
    bridge, processor, modality, items, fingerprint, batch_size, cache_dir, overwrite, max_length, progress
) -> Gallery:
    from datasets import Features, List, Value

    from ..arrow_cache import open_fingerprinted_arrow_folder, write_fingerprinted_arrow_folder

    info = {
        "modality": modality,
        "fingerprint": fingerprint,
        "size": len(items),
        "dim": bridge.config.projection_dim,
        "items": _items_fingerprint(items, modality),
        "processor": _processor_fingerprint(processor, modality, max_length),
    }
    dataset = open_fingerprinted_arrow_folder(
        cache_dir, GALLERY_EMBEDDINGS_FILE, GALLERY_INFO_FILE, info, "gallery", overwrite=overwrite
    )
    if dataset is None:
        features = Features({"embedding": List(Value("float32"), length=bridge.config.projection_dim)})
        batches = (
            {"embedding": _encode(bridge, processor, modality, batch, max_length)[1].float().cpu().tolist()}
            for batch in _batches(items, batch_size, progress, f"embedding the {modality} gallery")
        )
        dataset = write_fingerprinted_arrow_folder(
            cache_dir,
            GALLERY_EMBEDDINGS_FILE,
            features,
            batches,
            GALLERY_INFO_FILE,
            info,
            "gallery",
            overwrite=overwrite,
        )
    # Memory-mapped: the embeddings stay on disk; FAISS holds its own copy for the search.
    return Gallery(None, modality, fingerprint, items, index=_faiss_index(dataset))


@dataclass
class SearchOutput:
    """Per query, the k gallery indices best first, their final scores and their stage-1 (unimodal) scores."""

    indices: torch.Tensor  # (num_queries, k)
    scores: torch.Tensor  # (num_queries, k)
    unimodal_scores: torch.Tensor  # (num_queries, k), in the order of `indices`


@torch.no_grad()
def search(
    model,
    processor,
    gallery: Gallery,
    queries: Sequence,
    k: int = 32,
    rerank: str | None = "default",
    batch_size: int = 32,
    max_length: int | None = None,
    progress: bool = False,
) -> SearchOutput:
    """Two-stage search of `queries` (texts for an image gallery, images for a text gallery): the k nearest gallery
    items by unimodal cosine, re-ranked by the pairs' `"fused"` or `"itm"` score (`rerank=None`: stage 1 only;
    `"default"`: the model's `search_rerank`, i.e. `"itm"` for `BridgeForImageTextRetrieval`, whose ITM head is what
    it trains, `"fused"` for the others). `k` larger than the gallery is clamped to its size (with a warning)."""
    if rerank == "default":
        rerank = getattr(model, "search_rerank", "fused")
    if gallery.modality not in MODALITIES:
        raise ValueError(f"gallery.modality must be one of {MODALITIES}, got {gallery.modality!r}.")
    if len(gallery) == 0:
        raise ValueError("The gallery is empty: nothing to search.")
    if rerank is not None and rerank not in PAIR_SCORE_MODES:
        raise ValueError(f"rerank must be None, 'fused' or 'itm', got {rerank!r}.")
    check_int(k, "k")
    check_int(batch_size, "batch_size")
    k, batch_size = int(k), int(batch_size)  # NumPy / torch integers as Python ints
    _check_max_length(max_length, processor)
    query_modality = "text" if gallery.modality == "image" else "image"
    queries = _check_items(queries, query_modality, "query list", single_allowed=True)
    if query_modality == "image" and not isinstance(queries, GalleryItems):
        for i, query in enumerate(queries):
            if (
                isinstance(query, str)
                and not query.startswith(("http://", "https://", "data:"))
                and not os.path.isfile(query)
            ):
                raise ValueError(
                    f"The gallery holds texts, so the queries must be images (image-to-text search); query {i}, "
                    f"{query!r}, is no image file. For text-to-image search, build the gallery from images."
                )
    bridge = _bridge_model(model)
    bridge.eval()
    if gallery.dim != bridge.config.projection_dim:
        raise ValueError(
            f"The gallery's embeddings have {gallery.dim} dimensions but the model embeds into "
            f"{bridge.config.projection_dim}: the gallery was built with another model. Rebuild it with this one."
        )
    if unimodal_fingerprint(bridge, gallery.modality) != gallery.fingerprint:
        raise ValueError(
            f"The {gallery.modality} gallery was embedded by another model (other weights or pooling) than this one: "
            "its stage-1 scores would not match this model's. Rebuild it with build_gallery(model, ...)."
        )
    if k > len(gallery):
        warnings.warn(
            f"k={k} is larger than the gallery ({len(gallery)} items); using k={len(gallery)}.", stacklevel=2
        )
    k = min(k, len(gallery))
    outputs = []
    for batch in _batches(queries, batch_size, progress, "searching"):
        states, embeddings, mask = _encode(bridge, processor, query_modality, batch, max_length)
        first_scores, indices = gallery.top_k(embeddings, k)
        if rerank is None:
            outputs.append((indices, first_scores, first_scores))
            continue
        candidates, position = indices.unique(return_inverse=True)  # each candidate encoded once per batch
        cand_states, _, cand_mask = _encode(
            bridge, processor, gallery.modality, _take(gallery.items, candidates), max_length
        )
        query_index = torch.arange(len(batch), device=indices.device).repeat_interleave(k)
        # states of the model's own towers on checked inputs: `_interact` skips `interact`'s value checks
        if gallery.modality == "image":  # text queries against candidate images
            out = bridge._interact(cand_states, states, mask, position.flatten(), query_index)
        else:  # image queries against candidate texts
            out = bridge._interact(states, cand_states, cand_mask, query_index, position.flatten())
        scores = pair_score(out, rerank).view(len(batch), k)
        order = scores.argsort(dim=1, descending=True, stable=True)
        outputs.append((indices.gather(1, order), scores.gather(1, order), first_scores.gather(1, order)))
    return SearchOutput(*(torch.cat(parts) for parts in zip(*outputs)))


__all__ = [
    "Gallery",
    "GalleryItems",
    "SearchOutput",
    "build_gallery",
    "search",
    "unimodal_fingerprint",
    "weights_fingerprint",
]
