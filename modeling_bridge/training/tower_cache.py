"""Embed once, train the interaction layers many times: a `datasets`-backed cache of frozen towers' final states.

With frozen towers (stage A), every epoch would run the same images and captions through the same towers again.
`cache_tower_states` runs them once and writes the states to disk as one Arrow file (in batches, with a progress
bar), read back as a memory-mapped `datasets.Dataset`; `TowerStateCollator` batches its rows for
`BridgeForPreTraining`, which takes them as `vision_hidden_state` / `text_hidden_state`. The folder records a
fingerprint of the towers' weights, the rows and the preprocessing, and the Arrow file's size and sha256; a later
call with the same fingerprint verifies the file and loads it instead of recomputing (a damaged file is an error
naming the folder), and one with another fingerprint recomputes it (a folder this package did not write, or one
changed since, is never replaced without `overwrite`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np
import torch
from datasets import Array2D, Dataset, Features, List, Value
from huggingface_hub.utils import tqdm

from ..arrow_cache import open_fingerprinted_arrow_folder, write_fingerprinted_arrow_folder
from ..fingerprint import tokenizer_fingerprint, weights_fingerprint
from .stages import find_bridge_model


CACHE_INFO_FILE = "bridge_tower_cache.json"
CACHE_STATES_FILE = "tower_states.arrow"
CACHE_KIND = "tower-state cache"
CACHE_COLUMNS = ("input_ids", "attention_mask", "vision_hidden_state", "text_hidden_state")


def towers_fingerprint(bridge) -> str:
    """sha256 of both towers' parameters and buffers (names, dtypes, shapes, bytes)."""
    return weights_fingerprint(vision=bridge.vision_model, text=bridge.text_model)


def _cache_fingerprint(bridge, dataset, processor, length, image_column, text_column) -> dict:
    return {
        "towers": towers_fingerprint(bridge),
        "rows": dataset._fingerprint,
        "num_rows": len(dataset),
        "columns": [image_column, text_column],
        "text_length": length,
        "image_processor": json.loads(processor.image_processor.to_json_string()),
        "tokenizer": tokenizer_fingerprint(processor.tokenizer),
    }


def cache_tower_states(
    model,
    dataset: Dataset,
    processor,
    cache_dir: str | os.PathLike,
    batch_size: int = 64,
    max_length: int | None = None,
    image_column: str = "image",
    text_column: str = "caption",
    overwrite: bool = False,
    progress: bool = True,
) -> Dataset:
    """The towers' final states of every (image, caption) row of `dataset`, cached in `cache_dir`.

    Returns a torch-formatted `Dataset` with `input_ids` and `attention_mask` (captions padded to the longest one,
    at most `max_length`, default the model's `max_text_positions`), `vision_hidden_state`
    (num_vision_positions x vision width) and `text_hidden_state` (length x text width), row i from row i of
    `dataset`. Batch it with `TowerStateCollator`. The towers run in eval mode without autograd; reuse the cache
    only while they stay frozen (`BridgeForPreTraining` refuses cached states for a trainable tower).
    """
    bridge = find_bridge_model(model)
    config = bridge.config
    for column in (image_column, text_column):
        if column not in dataset.column_names:
            raise ValueError(
                f"cache_tower_states: the dataset has no {column!r} column; its columns are {dataset.column_names}."
            )
    if len(dataset) == 0:
        raise ValueError("cache_tower_states got an empty dataset: nothing to embed.")
    limit = config.max_text_positions if max_length is None else min(max_length, config.max_text_positions)
    longest = max(len(ids) for ids in processor.tokenizer(list(dataset[text_column]))["input_ids"])
    length = min(longest, limit)
    info = _cache_fingerprint(bridge, dataset, processor, length, image_column, text_column)
    cached = open_fingerprinted_arrow_folder(
        cache_dir, CACHE_STATES_FILE, CACHE_INFO_FILE, info, CACHE_KIND, overwrite=overwrite
    )
    if cached is not None:
        return cached.with_format("torch")

    vision_width, text_width = bridge.vision_unimodal_projection.in_features, config.text_config.hidden_size
    features = Features(
        {
            "input_ids": List(Value("int32"), length=length),
            "attention_mask": List(Value("int8"), length=length),
            "vision_hidden_state": Array2D((config.num_vision_positions, vision_width), "float32"),
            "text_hidden_state": Array2D((length, text_width), "float32"),
        }
    )

    def batches():
        was_training = bridge.training
        bridge.eval()
        try:
            with torch.inference_mode():
                starts = range(0, len(dataset), batch_size)
                for start in tqdm(starts, desc="caching tower states", disable=not progress, unit="batch"):
                    rows = dataset[start : start + batch_size]
                    inputs = processor(
                        images=rows[image_column],
                        text=rows[text_column],
                        padding="max_length",
                        truncation=True,
                        max_length=length,
                        return_tensors="pt",
                    )
                    vision = bridge.get_image_features(inputs["pixel_values"]).last_hidden_state
                    text_inputs = {k: v for k, v in inputs.items() if k in ("attention_mask", "token_type_ids")}
                    text = bridge.get_text_features(inputs["input_ids"], **text_inputs).last_hidden_state
                    yield {
                        "input_ids": inputs["input_ids"].numpy().astype(np.int32).tolist(),
                        "attention_mask": inputs["attention_mask"].numpy().astype(np.int8).tolist(),
                        "vision_hidden_state": list(vision.float().numpy()),
                        "text_hidden_state": list(text.float().numpy()),
                    }
        finally:
            bridge.train(was_training)

    written = write_fingerprinted_arrow_folder(
        cache_dir, CACHE_STATES_FILE, features, batches(), CACHE_INFO_FILE, info, CACHE_KIND, overwrite=overwrite
    )
    return written.with_format("torch")


@dataclass
class TowerStateCollator:
    """Stack rows of a `cache_tower_states` dataset into a `BridgeForPreTraining` batch, cutting the texts to the
    longest real caption of the batch (padded positions are masked, so this changes no result and saves compute)."""

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        if not rows:
            raise ValueError("TowerStateCollator got an empty list of rows.")
        missing = [c for c in CACHE_COLUMNS if c not in rows[0]]
        if missing:
            raise ValueError(
                f"TowerStateCollator needs the columns {list(CACHE_COLUMNS)} of a cache_tower_states dataset; "
                f"the rows lack {missing}. Set remove_unused_columns=False in TrainingArguments."
            )
        batch = {c: torch.stack([torch.as_tensor(row[c]) for row in rows]) for c in CACHE_COLUMNS}
        length = int(batch["attention_mask"].sum(1).max())
        batch["input_ids"] = batch["input_ids"][:, :length].long()
        batch["attention_mask"] = batch["attention_mask"][:, :length].long()
        batch["text_hidden_state"] = batch["text_hidden_state"][:, :length]
        return batch


__all__ = ["CACHE_INFO_FILE", "CACHE_STATES_FILE", "TowerStateCollator", "cache_tower_states", "towers_fingerprint"]
