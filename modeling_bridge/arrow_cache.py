"""Caches written as one Arrow file plus a JSON fingerprint (the tower-state cache, search galleries on disk).

A cache folder records what its content depends on (`info`: weights, rows, preprocessing, chosen by the caller)
and the Arrow file's size and sha256. Opening one verifies both before a byte is used: a cache for other inputs is
recomputed (its folder is replaced only as `check_output_dir` allows, i.e. if this package wrote it and nobody
changed it, or with `overwrite`), and a damaged one is refused with one line naming the folder and what to do.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil

from datasets import Dataset
from datasets.arrow_writer import ArrowWriter

from .saving import check_output_dir, make_staging_dir, read_json_object, replace_directory


INTEGRITY_KEY = "integrity"


def file_sha256(path: str | os.PathLike, chunk_size: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def open_fingerprinted_arrow_folder(
    folder: str | os.PathLike, arrow_file: str, info_file: str, info: dict, what: str, overwrite: bool = False
) -> Dataset | None:
    """The cached `Dataset` (memory-mapped) if `folder` holds a cache written for exactly `info` and its Arrow file is
    intact; None if there is no such cache (the caller computes it). A cache for `info` whose file is missing,
    truncated or altered raises `ValueError` naming `folder`, unless `overwrite` (then None: recompute)."""
    recorded = read_json_object(os.path.join(folder, info_file))
    if recorded is None or {k: v for k, v in recorded.items() if k != INTEGRITY_KEY} != info:
        return None  # no cache, or one written for other inputs
    expected = recorded.get(INTEGRITY_KEY)
    path = os.path.join(folder, arrow_file)
    if not isinstance(expected, dict) or not {"size", "sha256"} <= expected.keys():
        problem = f"its record {info_file} has no checksum of {arrow_file} (written by an older version)"
    elif not os.path.isfile(path):
        problem = f"{arrow_file} is missing"
    elif os.path.getsize(path) != expected["size"]:
        problem = f"{arrow_file} has {os.path.getsize(path)} bytes where {expected['size']} were written (truncated?)"
    elif file_sha256(path) != expected["sha256"]:
        problem = f"the bytes of {arrow_file} differ from those written (sha256 mismatch)"
    else:
        try:
            return Dataset.from_file(path)
        except Exception as error:  # pyarrow's own messages name neither the folder nor the fix
            problem = f"{arrow_file} cannot be read ({type(error).__name__}: {str(error).splitlines()[0]})"
    if overwrite:
        return None
    raise ValueError(
        f"The {what} in {folder} is damaged: {problem}. Delete the folder, or pass overwrite=True "
        "(--overwrite on the command line) to compute it again."
    )


def write_fingerprinted_arrow_folder(
    folder: str | os.PathLike,
    arrow_file: str,
    features,
    batches,
    info_file: str,
    info: dict,
    kind: str,
    overwrite: bool = False,
) -> Dataset:
    """Write `batches` (dicts of column lists) as one Arrow file, batch by batch (memory stays at one batch), plus
    `info` and the file's size and sha256 as JSON, into a staging folder renamed into place; `folder` is replaced
    only as `check_output_dir` allows (a previous cache of this `kind`, e.g. "gallery", never a saved model). Returns
    the written file as a memory-mapped `Dataset`."""
    check_output_dir(folder, overwrite=overwrite, kind=kind)
    staging = make_staging_dir(folder)
    try:
        with ArrowWriter(features=features, path=os.fspath(staging / arrow_file)) as writer:
            for batch in batches:
                writer.write_batch(batch)
            writer.finalize()
        written = staging / arrow_file
        record = {**info, INTEGRITY_KEY: {"size": written.stat().st_size, "sha256": file_sha256(written)}}
        with open(staging / info_file, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=1)
        replace_directory(
            staging, folder, check=lambda: check_output_dir(folder, overwrite=overwrite, kind=kind), kind=kind
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Dataset.from_file(os.path.join(folder, arrow_file))


__all__ = [
    "file_sha256",
    "open_fingerprinted_arrow_folder",
    "write_fingerprinted_arrow_folder",
]
