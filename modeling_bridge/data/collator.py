"""Batch image-caption rows for BRIDGE: the processor, plus the MLM and MIM masks of the pretraining objectives."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DataCollatorForLanguageModeling

from ..towers_bridge import TowerGeometry


# Tokenizers without a real limit report this huge sentinel as model_max_length.
_NO_LIMIT = 1_000_000


def num_patch_tokens(config) -> int:
    """Patch tokens of the vision tower for an image of its configured size, without CLS or register tokens: the
    `num_patches` that `mim_mask` needs. `config` is a BridgeConfig or a vision tower config; `image_size` and
    `patch_size` may be ints or (height, width) pairs. For a convolutional tower, the BridgeConfig's
    `num_vision_positions` (the cells of its feature map)."""
    vision = getattr(config, "vision_config", config)
    geometry = TowerGeometry(vision)
    if geometry.convolutional and getattr(config, "num_vision_positions", None):
        return config.num_vision_positions  # a feature map has no CLS token: every token is a cell
    if geometry.convolutional or getattr(vision, "image_size", None) is None or not hasattr(vision, "patch_size"):
        raise ValueError(
            f"cannot count the patches of a {getattr(vision, 'model_type', '?')!r} vision tower: its "
            "config has no image_size/patch_size; pass num_patches= to BridgeDataCollator."
        )
    rows, columns = geometry.patch_grid()
    return rows * columns


@dataclass
class BridgeDataCollator:
    """Turn a list of dataset rows (dicts with an image and a caption) into a BRIDGE batch.

    Returns `pixel_values`, `input_ids`, `attention_mask` (and `token_type_ids` if the tokenizer makes them),
    texts padded to the longest in the batch, and:

    - if `mlm_probability > 0`: `mlm_input_ids`, a copy of `input_ids` masked BERT-style by transformers'
      `DataCollatorForLanguageModeling` (80% [MASK], 10% random token, 10% unchanged; special tokens and padding
      never chosen; at least one chosen token per row), and `mlm_labels` (the original id where chosen, -100
      elsewhere);
    - if `mim_probability > 0`: `mim_mask`, bool (batch, num_patches), exactly
      `round(mim_probability * num_patches)` (at least 1) randomly placed True per row. `num_patches` counts the
      vision tower's patch tokens, without CLS or register tokens.

    Randomness comes from torch's global generator, so `torch.manual_seed` (or the Trainer's `seed`) makes
    batches reproducible. With `max_length`, captions are truncated to it (use `config.max_text_positions`);
    without, a caption longer than the tokenizer's `model_max_length` is an error. Trainer users: set
    `remove_unused_columns=False`, since the rows hold raw images and captions.
    """

    processor: Any
    mlm_probability: float = 0.0
    mim_probability: float = 0.0
    num_patches: int | None = None
    image_column: str = "image"
    text_column: str = "caption"
    max_length: int | None = None
    _mlm: DataCollatorForLanguageModeling | None = field(default=None, init=False, repr=False)
    _mlm_one: DataCollatorForLanguageModeling | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        for name in ("mlm_probability", "mim_probability"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}.")
        if self.mim_probability > 0 and (self.num_patches is None or self.num_patches < 1):
            raise ValueError(
                f"mim_probability={self.mim_probability} needs num_patches, the number of patch tokens of the vision "
                f"tower (num_patch_tokens(config), or use BridgeDataCollator.for_model), got {self.num_patches!r}."
            )
        if self.max_length is not None and self.max_length < 2:
            raise ValueError(f"max_length must be at least 2 (room for the special tokens), got {self.max_length}.")
        if self.mlm_probability > 0:
            tokenizer = self.processor.tokenizer
            if tokenizer.mask_token is None:
                raise ValueError(
                    f"mlm_probability={self.mlm_probability} needs a tokenizer with a mask token; "
                    f"{type(tokenizer).__name__} has none. Set mlm_probability=0 for this text tower."
                )
            self._mlm = DataCollatorForLanguageModeling(tokenizer, mlm_probability=self.mlm_probability)
            # Same 80/10/10 replacement, applied to one forced position in rows where sampling chose none.
            self._mlm_one = DataCollatorForLanguageModeling(tokenizer, mlm_probability=1.0)

    @classmethod
    def for_model(cls, processor, config, mlm_probability: float = 0.15, mim_probability: float = 0.4, **kwargs):
        """The collator that training a model with BridgeConfig `config` needs: MLM / MIM masks only for the
        objectives whose loss weight is > 0 (at the given rates), `num_patches` from the vision config, captions
        truncated to `config.max_text_positions`. `kwargs` go to the constructor (e.g. the column names)."""
        mim_probability = mim_probability if config.mim_loss_weight > 0 else 0.0
        kwargs.setdefault("max_length", config.max_text_positions)
        return cls(
            processor,
            mlm_probability=mlm_probability if config.mlm_loss_weight > 0 else 0.0,
            mim_probability=mim_probability,
            num_patches=num_patch_tokens(config) if mim_probability > 0 else None,
            **kwargs,
        )

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        if len(rows) == 0:
            raise ValueError("BridgeDataCollator got an empty list of rows.")
        images, captions = [], []
        for i, row in enumerate(rows):
            for column in (self.image_column, self.text_column):
                if column not in row:
                    raise ValueError(
                        f"Row {i} of the batch has no {column!r} column; its columns are {sorted(row)}. Pass "
                        f"image_column=/text_column= to BridgeDataCollator, and set remove_unused_columns=False in "
                        f"TrainingArguments so the Trainer keeps the raw columns."
                    )
            caption = row[self.text_column]
            if not isinstance(caption, str) or not caption.strip():
                where = f" (image_id {row['image_id']})" if "image_id" in row else ""
                raise ValueError(
                    f"Row {i} of the batch{where} has an empty or non-string caption {caption!r} in column "
                    f"{self.text_column!r}. Clean the dataset, e.g. load_image_text_dataset(..., skip_invalid=True)."
                )
            images.append(row[self.image_column])
            captions.append(caption)

        truncate = self.max_length is not None
        # Both passed even when off: a tokenizer loaded with truncation settings (tokenizer.json) has a saved
        # `max_length` that, with truncation left unset, would be merged in and warned about on every batch.
        batch = self.processor(
            images=images,
            text=captions,
            return_tensors="pt",
            padding=True,
            truncation=truncate,
            max_length=self.max_length,
        )
        batch = dict(batch)
        limit = self.processor.tokenizer.model_max_length
        if not truncate and limit is not None and limit < _NO_LIMIT and batch["input_ids"].shape[1] > limit:
            lengths = batch["attention_mask"].sum(1)
            row = int(torch.argmax(lengths))
            raise ValueError(
                f"Row {row} of the batch has a caption of {int(lengths[row])} tokens, more than the tokenizer's "
                f"model_max_length {limit}: {captions[row][:80]!r}. Pass max_length= (e.g. "
                f"config.max_text_positions) to BridgeDataCollator to truncate."
            )

        if self._mlm is not None:
            batch["mlm_input_ids"], batch["mlm_labels"] = self._mask_tokens(
                batch["input_ids"], batch["attention_mask"]
            )
        if self.mim_probability > 0:
            batch["mim_mask"] = self._mask_patches(len(rows))
        return batch

    def _mask_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        tokenizer = self.processor.tokenizer
        special = torch.tensor(
            [tokenizer.get_special_tokens_mask(ids, already_has_special_tokens=True) for ids in input_ids.tolist()],
            dtype=torch.bool,
        ) | (attention_mask == 0)
        masked_ids, labels = self._mlm.torch_mask_tokens(input_ids.clone(), special_tokens_mask=special)

        # Rows where Bernoulli sampling chose nothing (short captions) get one random maskable position, so that
        # every row contributes to the MLM loss. Cheap: only those rows are touched.
        empty = (labels == -100).all(1) & (~special).any(1)
        if empty.any():
            scores = torch.rand(input_ids.shape).masked_fill(special, -1.0)[empty]
            only = torch.ones_like(scores, dtype=torch.bool).scatter_(1, scores.argmax(1, keepdim=True), False)
            masked_ids[empty], labels[empty] = self._mlm_one.torch_mask_tokens(
                input_ids[empty].clone(), special_tokens_mask=only
            )
        return masked_ids, labels

    def _mask_patches(self, batch_size: int) -> torch.Tensor:
        count = max(1, round(self.mim_probability * self.num_patches))
        chosen = torch.rand(batch_size, self.num_patches).argsort(dim=1)[:, :count]
        return torch.zeros(batch_size, self.num_patches, dtype=torch.bool).scatter_(1, chosen, True)


__all__ = ["BridgeDataCollator", "num_patch_tokens"]
