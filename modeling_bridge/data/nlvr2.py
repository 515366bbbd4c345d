"""Visual reasoning data (NLVR2-style: a statement about a left and a right image, true or false): statements about
pairs of bridge-shapes scenes (offline, with held-out bindings), and a loader for the NLVR2 format, in one `datasets`
schema.

Schema: `left_image`, `right_image` (`datasets.Image`), `sentence`, `label` (`ClassLabel` "False" / "True", -1 where a
file has no label), `identifier`, `statement_type`, and `group`: the examples of one sentence, for NLVR2's
consistency (the fraction of groups whose examples are all answered correctly).

bridge-shapes statements, per split of `load_bridge_shapes` (the test split's scenes are the held-out families):

- binding: a scene and its colour-swapped twin side by side, "the left image shows a red circle left of a blue
  square" (true with that scene on the left, false with its twin there), and the twin's caption for the right
  image: the two images differ only in which colour goes with which shape, so the statement is decided by that
  binding alone; in test, bindings never trained;
- count: "the left image has more circles than the right one" (or the mirrored wording with the images swapped) for
  a scene and another scene of the split: true when the named image shows the shape and the other does not.

Both orders of each pair are in the data and form one `group`; the labels are balanced by construction for binding
statements and close to balanced for count statements.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value

from ._json_files import field, is_integer, is_nonempty_string, read_json_lines
from .shapes import load_bridge_shapes


NLVR2_FEATURES = Features(
    {
        "left_image": Image(),
        "right_image": Image(),
        "sentence": Value("string"),
        "label": ClassLabel(names=["False", "True"]),
        "identifier": Value("string"),
        "statement_type": Value("string"),
        "group": Value("string"),
    }
)


def _statements(scenes: Dataset, split: str, rng: np.random.Generator) -> dict[str, list]:
    columns = {name: [] for name in NLVR2_FEATURES}
    images = scenes.cast_column("image", Image(decode=False))["image"]  # the PNG bytes, not decoded and re-encoded
    captions, shapes, twins = scenes["caption"], scenes["shapes"], scenes["twin"]

    def add(left, right, sentence, label, kind, group):
        columns["left_image"].append(images[left])
        columns["right_image"].append(images[right])
        columns["sentence"].append(sentence)
        columns["label"].append(int(label))
        columns["identifier"].append(f"{split}-{group}-{left}-{right}")
        columns["statement_type"].append(kind)
        columns["group"].append(f"{split}-{group}")

    statement = 0
    for scene, twin in enumerate(twins):
        if twin > scene:  # each twin pair once: each twin's caption, named on one side
            for side, described in (("left", scene), ("right", twin)):
                sentence = f"the {side} image shows {captions[described]}"
                other = twin if described == scene else scene
                on_named_side = (described, other) if side == "left" else (other, described)
                add(*on_named_side, sentence, True, "binding", statement)
                add(*reversed(on_named_side), sentence, False, "binding", statement)
                statement += 1
        if len(shapes[scene]) == 2:
            other = int(rng.integers(len(twins) - 1))
            other += other >= scene  # any other scene of the split
            shape = shapes[scene][int(rng.integers(2))]
            label = shape not in shapes[other]  # the scene shows one of each of its shapes
            add(scene, other, f"the left image has more {shape}s than the right one", label, "count", statement)
            add(other, scene, f"the right image has more {shape}s than the left one", label, "count", statement)
            statement += 1
    return columns


def load_bridge_shapes_nlvr2(
    num_train: int = 2000, image_size: int = 64, seed: int = 0, split_seed: int = 0
) -> DatasetDict:
    """Statements about pairs of bridge-shapes scenes (module docstring) as a `DatasetDict` with "train" and "test"
    (the held-out families: 72 twin pairs, 576 statements)."""
    scenes = load_bridge_shapes(num_train=num_train, image_size=image_size, seed=seed, split_seed=split_seed)
    return DatasetDict(
        {
            split: Dataset.from_dict(
                _statements(
                    scenes[split], split, np.random.default_rng([seed if split == "train" else split_seed, 3])
                ),
                features=NLVR2_FEATURES,
            )
            for split in ("train", "test")
        }
    )


def _nlvr2_image(image_root: str, record: dict, index: int) -> str:
    """Where NLVR2 keeps image `index` (0 left, 1 right) of a record: `<prefix>-img<index>.png`, prefix = the
    identifier without its last part, under `<image_root>/<directory>/` (train) or `<image_root>/`."""
    prefix = record["identifier"].rsplit("-", 1)[0]
    name = f"{prefix}-img{index}.png"
    candidates = [os.path.join(image_root, str(record["directory"]), name)] if "directory" in record else []
    candidates.append(os.path.join(image_root, name))
    for path in candidates:
        if os.path.isfile(path):
            return path
    side = "left" if index == 0 else "right"
    raise FileNotFoundError(
        f"NLVR2 record {record['identifier']!r}: its {side} image {name} is missing (looked for "
        f"{' and '.join(candidates)}). Download the split's images, or drop the record."
    )


_NLVR2_RECORD = (
    'an NLVR2 record {"identifier": "train-10171-0-0", "sentence": "...", "label": "True" or "False"} (label absent '
    "in unlabelled files)"
)


def load_nlvr2(jsonl_file: str | os.PathLike, image_root: str) -> Dataset:
    """NLVR2 (`train.json` / `dev.json` / `test1.json`: one JSON record per line, and the split's image folder) in
    the schema above. A record whose left or right image is missing is an error naming it; `group` is the
    identifier without its pair number (split-set-sentence), as in NLVR2's consistency.

    Each record is checked: an empty file, a file that is one JSON list, invalid JSON, a line that is not an object,
    a missing or mistyped field (identifier and sentence non-empty strings, label the string "True" or "False",
    directory a number or string), a repeated identifier, or a file with labelled and unlabelled records mixed is a
    ValueError naming the file, the line and the field. A file without labels (all records) gets label -1."""
    columns = {name: [] for name in NLVR2_FEATURES}
    seen: dict[str, int] = {}
    labelled: dict[bool, int] = {}  # has a label -> first line
    for number, record in read_json_lines(jsonl_file, _NLVR2_RECORD):
        where = f"{jsonl_file}, line {number}"
        identifier = field(
            record, "identifier", where, "a non-empty string such as 'train-10171-0-0'", is_nonempty_string
        )
        sentence = field(record, "sentence", where, "the statement, a non-empty string", is_nonempty_string)
        label = field(
            record,
            "label",
            where,
            'the string "True" or "False" (or no label field in an unlabelled file)',
            lambda value: isinstance(value, str) and value.strip().lower() in ("true", "false", ""),
            optional=True,
            default="",
        )
        field(
            record,
            "directory",
            where,
            "the image sub-folder, a number or a non-empty string",
            lambda value: is_integer(value) or is_nonempty_string(value),
            optional=True,
        )
        if identifier in seen:
            raise ValueError(
                f"{where}: identifier {identifier!r} is also that of line {seen[identifier]}; NLVR2 identifiers are "
                "unique (a file concatenated twice?)."
            )
        seen[identifier] = number
        label = label.strip().lower()
        labelled.setdefault(bool(label), number)
        if len(labelled) == 2:
            unlabelled_line = labelled[False]
            labelled_line = labelled[True]
            raise ValueError(
                f"{jsonl_file}: line {unlabelled_line} has no label but line {labelled_line} has one; the records of "
                'a file are all labelled ("True" / "False") or all unlabelled.'
            )
        parts = identifier.split("-")
        columns["left_image"].append(_nlvr2_image(image_root, record, 0))
        columns["right_image"].append(_nlvr2_image(image_root, record, 1))
        columns["sentence"].append(sentence)
        columns["label"].append({"true": 1, "false": 0, "": -1}[label])
        columns["identifier"].append(identifier)
        columns["statement_type"].append("")
        columns["group"].append("-".join(parts[:2] + parts[3:]) if len(parts) == 4 else identifier)
    return Dataset.from_dict(columns, features=NLVR2_FEATURES)


class Nlvr2DataCollator:
    """Batches of NLVR2 rows for `BridgeForVisualReasoning`: both images of each statement through the processor
    ((batch, 2, C, H, W) pixel values), the statements tokenized (truncated to `max_length`), the truth values as
    `labels`."""

    def __init__(self, processor, max_length: int):
        self.processor, self.max_length = processor, max_length

    def __call__(self, rows):
        images = [image for row in rows for image in (row["left_image"], row["right_image"])]
        batch = self.processor(
            images=images,
            text=[row["sentence"] for row in rows],
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=self.max_length,
        )
        batch["pixel_values"] = batch["pixel_values"].unflatten(0, (len(rows), 2))
        batch["labels"] = torch.tensor([row["label"] for row in rows])
        return dict(batch)


__all__ = ["NLVR2_FEATURES", "Nlvr2DataCollator", "load_bridge_shapes_nlvr2", "load_nlvr2"]
