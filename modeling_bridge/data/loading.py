"""Load any image-caption data into one schema: `image` (`datasets.Image`, RGB), `caption` (str), `image_id` (int).

Sources:

- a `datasets.Dataset` / `DatasetDict`, or a local path that `datasets.load_from_disk` (a saved dataset) or
  `datasets.load_dataset` (e.g. an imagefolder with a metadata.jsonl) reads, with named image and text columns;
- a COCO / Flickr30k Karpathy-split JSON as shipped with ALBEF and BLIP (`coco_karpathy_train.json`,
  `flickr30k_test.json`, ...): a list of `{"image": path relative to image_root, "caption": str or [str, ...]}`,
  or a `{split: json_path}` mapping for several splits.

A list of captions gives one row per caption; `image_id` numbers the distinct images of a split, so rows with the
same `image_id` show the same image (what retrieval evaluation needs to count a hit). Images stay lazy (paths or
bytes decoded on access), but each one is decoded once up front (`verify_images=True`, with a progress bar: on
COCO this takes minutes), so an unreadable file fails here, by name, rather than hours into training. Bad rows
(missing or unreadable image, empty caption) raise a ValueError naming the file or row, or with
`skip_invalid=True` are dropped and counted in one warning.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pyarrow.compute as pc
from datasets import Dataset, DatasetDict, Features, Image, List, Value, load_dataset, load_from_disk
from datasets.utils import disable_progress_bars, enable_progress_bars, is_progress_bar_enabled
from datasets.utils import tqdm as progress_bar  # tqdm that datasets.disable_progress_bars() also silences

from ._json_files import describe, field, is_string, json_type, read_json


_OUTPUT_FEATURES = Features({"image": Image(mode="RGB"), "caption": Value("string"), "image_id": Value("int64")})


def load_image_text_dataset(
    source,
    image_column: str = "image",
    text_column: str = "caption",
    image_root: str | os.PathLike | None = None,
    split: str | None = None,
    skip_invalid: bool = False,
    verify_images: bool = True,
    num_workers: int | None = None,
    show_progress: bool = True,
) -> Dataset | DatasetDict:
    """Load image-caption data as columns `image`, `caption`, `image_id` (see the module docstring).

    Args:
        source: a `Dataset`, a `DatasetDict`, a path to a saved dataset or a folder `load_dataset` reads, a
            Karpathy-style `.json` file, or a `{split: json_path}` mapping.
        image_column, text_column: names of the image and caption columns (or JSON keys) in the source.
        image_root: folder that relative image paths (Karpathy JSON, or a string image column) are relative to;
            defaults to the JSON file's folder.
        split: return only this split of a `DatasetDict` source.
        skip_invalid: drop rows with a missing/unreadable image or an empty caption, with one warning giving the
            count, instead of raising.
        verify_images: decode every distinct image once now; without it, a bad image only fails when read.
        num_workers: threads for verifying images (default: up to 8).
        show_progress: show progress bars (image verification, and datasets' own loading and casting bars);
            False hides them, as `datasets.disable_progress_bars()` does.

    Returns:
        a `Dataset` for a `Dataset` or single-JSON source or when `split` is given, else a `DatasetDict`.
    """
    if not show_progress:  # also datasets' own bars (loading, casting), through its global switch
        with _datasets_progress_bars_off():
            return load_image_text_dataset(
                source,
                image_column,
                text_column,
                image_root,
                split,
                skip_invalid,
                verify_images,
                num_workers,
                show_progress=True,
            )
    options = dict(
        image_column=image_column,
        text_column=text_column,
        image_root=image_root,
        skip_invalid=skip_invalid,
        verify_images=verify_images,
        num_workers=num_workers,
    )
    if isinstance(source, Mapping) and not isinstance(source, DatasetDict):
        if split is not None:
            if split not in source:
                raise ValueError(f"split {split!r} not found; the mapping has splits {list(source)}.")
            return load_image_text_dataset(source[split], **options)
        return DatasetDict({name: load_image_text_dataset(path, **options) for name, path in source.items()})
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.suffix == ".json" and path.is_file():
            rows = _read_karpathy(path, image_column, text_column)
            is_list = any(isinstance(c, list) for c in rows[text_column])
            if is_list:  # val/test files: lists of captions; a lone string in such a file is a list of one
                rows[text_column] = [c if isinstance(c, list) else [c] for c in rows[text_column]]
            features = Features(
                {image_column: Value("string"), text_column: List(Value("string")) if is_list else Value("string")}
            )
            options["image_root"] = image_root if image_root is not None else path.parent
            return _standardise(Dataset.from_dict(rows, features=features), **options, source_name=str(path))
        if not path.exists():
            raise FileNotFoundError(
                f"{source}: no such file or folder (expected a saved dataset, a folder that "
                f"datasets.load_dataset reads, or a Karpathy-style .json file)."
            )
        source = _load_path(path)
    if isinstance(source, DatasetDict):
        if split is not None:
            if split not in source:
                raise ValueError(f"split {split!r} not found; the dataset has splits {list(source)}.")
            return _standardise(source[split], **options, source_name=f"split {split!r}")
        return DatasetDict(
            {name: _standardise(ds, **options, source_name=f"split {name!r}") for name, ds in source.items()}
        )
    if isinstance(source, Dataset):
        return _standardise(source, **options, source_name="dataset")
    raise TypeError(
        f"Cannot load image-caption data from {type(source).__name__}; pass a datasets.Dataset or "
        f"DatasetDict, a path, or a Karpathy-style .json file."
    )


def _load_path(path: Path) -> Dataset | DatasetDict:
    is_saved = path.is_dir() and any((path / f).is_file() for f in ("dataset_dict.json", "state.json"))
    return load_from_disk(str(path)) if is_saved else load_dataset(str(path))


def _read_karpathy(path: Path, image_key: str, text_key: str) -> dict[str, list]:
    """The image paths and captions of a Karpathy-style JSON list, each entry checked: an empty file, invalid JSON,
    JSON Lines, an empty list, an entry that is not an object, a missing key, or an image that is not a path
    (string) or a caption that is not a string or a list of strings is a ValueError naming the file, the entry and
    the key. A null image or caption, or an empty caption, is an invalid row (`skip_invalid`), as elsewhere."""
    expected = (
        f"a JSON list of {{{image_key!r}: image path, {text_key!r}: caption or list of captions}} entries "
        "(Karpathy format)"
    )
    entries = read_json(path, expected)
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected {expected}, got {json_type(entries)}.")
    if not entries:
        raise ValueError(f"{path} has no entries (an empty list); expected {expected}.")
    images, captions = [], []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: entry {i} is {describe(entry)}, expected an object.")
        for key in (image_key, text_key):
            if key not in entry:
                raise ValueError(
                    f"{path}: entry {i} has no {key!r} key; its keys are {sorted(entry)}. Pass "
                    f"image_column=/text_column= to name the image path and caption keys."
                )
        where = f"{path}: entry {i}"
        images.append(
            field(entry, image_key, where, "the image's path (a string)", lambda v: v is None or is_string(v))
        )
        caption = field(
            entry,
            text_key,
            where,
            "a caption (a string) or a list of captions (strings)",
            lambda v: v is None or is_string(v) or isinstance(v, list),
        )
        if isinstance(caption, list):
            for k, text in enumerate(caption):
                if not (text is None or is_string(text)):
                    raise ValueError(f"{where}: {text_key!r}[{k}] is {describe(text)}; expected a caption (a string).")
        captions.append(caption)
    return {image_key: images, text_key: captions}


def _standardise(
    dataset: Dataset, image_column, text_column, image_root, skip_invalid, verify_images, num_workers, source_name
) -> Dataset:
    for kind, column in (("image", image_column), ("text", text_column)):
        if column not in dataset.column_names:
            raise ValueError(
                f"The {source_name} has no {kind} column {column!r}; its columns are "
                f"{dataset.column_names}. Pass {kind}_column= with the right name."
            )

    # Images: any Image feature or string path column becomes undecoded {"bytes", "path"} for validation.
    feature = dataset.features[image_column]
    if isinstance(feature, Value) and feature.dtype in ("string", "large_string"):
        if image_root is not None:
            paths = [None if p is None else os.path.join(image_root, p) for p in dataset[image_column]]
            dataset = dataset.remove_columns(image_column).add_column(image_column, paths)
    elif not isinstance(feature, Image):
        raise ValueError(
            f"The {source_name}'s image column {image_column!r} has feature {feature}; expected an "
            f"Image feature or file paths (strings)."
        )
    dataset = dataset.cast_column(image_column, Image(decode=False))

    # Captions: one row per caption; image_id = the source row, i.e. the image.
    text_feature = dataset.features[text_column]
    captions = dataset[text_column]
    if isinstance(text_feature, List):
        owners = [i for i, caps in enumerate(captions) for _ in (caps or [None])]
        captions = [c for caps in captions for c in (caps or [None])]
    elif isinstance(text_feature, Value) and text_feature.dtype in ("string", "large_string"):
        owners = list(range(len(captions)))
    else:
        raise ValueError(
            f"The {source_name}'s text column {text_column!r} has feature {text_feature}; expected "
            f"strings or lists of strings."
        )
    images = dataset.select_columns([image_column])
    if image_column != "image":
        images = images.rename_column(image_column, "image")
    if owners != list(range(len(images))):
        images = images.select(owners)
    image_ids = _image_ids(images, owners)

    problems = _find_problems(
        images,
        captions,
        owners,
        image_ids,
        verify_images,
        num_workers,
        progress=f"Verifying the images of the {source_name}",
    )
    if problems:
        summary = _summarise(problems)
        if not skip_invalid:
            raise ValueError(
                f"The {source_name} has {len(problems)} invalid row(s): {summary}. Fix or remove them, "
                f"or pass skip_invalid=True to drop them."
            )
        keep = [i for i in range(len(captions)) if i not in problems]
        warnings.warn(
            f"load_image_text_dataset: skipped {len(problems)} of {len(captions)} rows of the "
            f"{source_name}: {summary}.",
            UserWarning,
            stacklevel=3,
        )
        images, captions = images.select(keep), [captions[i] for i in keep]
        renumber = {}  # keep image_id contiguous (0..n-1) after dropping every caption of an image
        image_ids = [renumber.setdefault(image_ids[i], len(renumber)) for i in keep]

    result = images.add_column("caption", captions).add_column("image_id", image_ids)
    return result.cast(_OUTPUT_FEATURES)


@contextmanager
def _datasets_progress_bars_off():
    enabled = is_progress_bar_enabled()
    disable_progress_bars()
    try:
        yield
    finally:
        if enabled:
            enable_progress_bars()


def _image_ids(images: Dataset, owners: list[int]) -> list[int]:
    """Number distinct images in order of first appearance: by path when rows carry only a path (Karpathy files
    repeat an image once per caption), else by source row."""
    column = images.with_format("arrow")["image"]  # arrow struct {bytes, path}: nothing is read or decoded
    paths = pc.struct_field(column, "path").to_pylist()
    has_bytes = pc.is_valid(pc.struct_field(column, "bytes")).to_pylist()
    ids, seen = [], {}
    for owner, path, embedded in zip(owners, paths, has_bytes):
        key = ("path", path) if path is not None and not embedded else ("row", owner)
        ids.append(seen.setdefault(key, len(seen)))
    return ids


def _find_problems(
    images: Dataset,
    captions: list,
    owners: list[int],
    image_ids: list[int],
    verify_images: bool,
    num_workers: int | None,
    progress: str | None = None,
) -> dict[int, str]:
    """Row -> problem. Each distinct image is decoded once; `progress` is the label of a progress bar (None: none)."""
    problems = {}
    for i, caption in enumerate(captions):
        if not isinstance(caption, str) or not caption.strip():
            where = f"row {i}" if owners[i] == i else f"row {i} (source entry {owners[i]})"
            problems[i] = f"{where}: empty caption {caption!r}"
    if not verify_images or images.num_rows == 0:
        return problems

    first_row = {}
    for i, image_id in enumerate(image_ids):
        first_row.setdefault(image_id, i)
    decoder = Image()

    def check(row: int) -> str | None:
        value = images[row]["image"]
        name = value["path"] if value["path"] is not None else f"row {row}"
        if value["path"] is None and value["bytes"] is None:
            return f"row {row}: no image"
        try:
            decoder.decode_example(value)
        except FileNotFoundError:
            return f"{name}: file not found"
        except Exception as error:  # PIL raises several types for corrupt or non-image files
            return f"{name}: unreadable image ({type(error).__name__}: {error})"
        return None

    workers = num_workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        checked = progress_bar(
            pool.map(check, first_row.values()),
            total=len(first_row),
            desc=progress,
            unit="image",
            disable=progress is None,
        )
        results = dict(zip(first_row, list(checked)))  # list(): runs the bar to its end, which closes it
    for i, image_id in enumerate(image_ids):
        if results[image_id] is not None and i not in problems:
            problems[i] = results[image_id]  # one message per image, however many captions it has
    return problems


def _summarise(problems: dict[int, str], shown: int = 5) -> str:
    messages = list(dict.fromkeys(problems.values()))
    more = f"; and {len(messages) - shown} more" if len(messages) > shown else ""
    return "; ".join(messages[:shown]) + more


__all__ = ["load_image_text_dataset"]
