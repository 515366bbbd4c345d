"""Batch composition for contrastive training: keep attribute-swapped twins in the same batch."""

from __future__ import annotations

import numpy as np
from datasets import Dataset


def twin_adjacent_order(dataset: Dataset, num_rows: int, seed: int = 0, twin_column: str = "twin") -> Dataset:
    """`num_rows` rows of `dataset` in an order where every scene is directly followed by its twin.

    Units (a twin pair, or a scene without a twin) are shuffled afresh for every pass over the data, and passes are
    concatenated until `num_rows` rows exist. Read in order (Trainer's `train_sampling_strategy="sequential"`),
    consecutive rows form the batches, so nearly every batch holds both members of its twin pairs: the twin is the
    hardest negative there is (same words, different binding), for any model trained on those batches.
    """
    if twin_column not in dataset.column_names:
        raise ValueError(
            f"twin_adjacent_order needs a {twin_column!r} column (row index of each row's twin, -1 for "
            f"none); the dataset has {dataset.column_names}."
        )
    twins = np.asarray(dataset[twin_column])
    units = [[i] if t < 0 else [i, int(t)] for i, t in enumerate(twins) if t < 0 or i < t]
    if not units:
        raise ValueError("twin_adjacent_order got an empty dataset.")
    rng = np.random.default_rng(seed)
    order: list[int] = []
    while len(order) < num_rows:
        for unit in rng.permutation(len(units)):
            order.extend(units[unit])
    return dataset.select(order[:num_rows])


__all__ = ["twin_adjacent_order"]
