"""Batch composition for contrastive training: keep attribute-swapped twins in the same batch."""

from __future__ import annotations

import numpy as np
from datasets import Dataset


def twin_adjacent_order(
    dataset: Dataset,
    num_rows: int,
    seed: int = 0,
    twin_column: str = "twin",
    group_columns: tuple[str, ...] | list[str] = (),
    group_rows: int | None = None,
) -> Dataset:
    """`num_rows` rows of `dataset` in an order where every scene is directly followed by its twin.

    Units (a twin pair, or a scene without a twin) are shuffled afresh for every pass over the data, and passes are
    concatenated until `num_rows` rows exist. Read in order (Trainer's `train_sampling_strategy="sequential"`),
    consecutive rows form the batches, so nearly every batch holds both members of its twin pairs: the twin is the
    hardest negative there is (same words, different binding), for any model trained on those batches.

    With `group_columns` (e.g. `("family", "relation")` of bridge-shapes), units that share those columns' values
    also come together, in runs of at most `group_rows` rows (default: the whole group): a batch then also holds the
    other same-word scenes of a twin pair, e.g. "a red square left of a blue circle" next to "a red circle left of a
    blue square" (shapes swapped, not colours), which a twin-only batch almost never does. Runs are shuffled.
    """
    for column in (twin_column, *group_columns):
        if column not in dataset.column_names:
            raise ValueError(
                f"twin_adjacent_order needs a {column!r} column (the twin column holds the row index of each row's "
                f"twin, -1 for none); the dataset has {dataset.column_names}."
            )
    if group_rows is not None and group_rows < 1:
        raise ValueError(f"group_rows must be a positive number of rows, got {group_rows}.")
    # Plain Python values whatever the dataset's format: a torch-formatted column would give 0-d tensors, which hash
    # by identity and would make every unit a group of its own.
    plain = dataset.with_format(None)
    twins = np.asarray(plain[twin_column])
    units = [[i] if t < 0 else [i, int(t)] for i, t in enumerate(twins) if t < 0 or i < t]
    if not units:
        raise ValueError("twin_adjacent_order got an empty dataset.")
    keys = list(zip(*(plain[c] for c in group_columns))) if group_columns else None
    rng = np.random.default_rng(seed)
    order: list[int] = []
    while len(order) < num_rows:
        if keys is None:
            for unit in rng.permutation(len(units)):
                order.extend(units[unit])
            continue
        groups: dict = {}
        for unit in rng.permutation(len(units)):
            groups.setdefault(keys[units[unit][0]], []).append(units[unit])
        runs = []
        for members in groups.values():
            run: list[int] = []
            for unit in members:
                if run and group_rows is not None and len(run) + len(unit) > group_rows:
                    runs.append(run)
                    run = []
                run.extend(unit)
            runs.append(run)
        for run in rng.permutation(len(runs)):
            order.extend(runs[run])
    return dataset.select(order[:num_rows])


__all__ = ["twin_adjacent_order"]
