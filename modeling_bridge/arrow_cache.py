"""Caches written as one Arrow file plus a JSON fingerprint (the tower-state cache, search galleries on disk)."""

from __future__ import annotations

import json
import os
import shutil

from datasets.arrow_writer import ArrowWriter

from .saving import check_output_dir, make_staging_dir, replace_directory


def fingerprinted_folder_matches(folder: str | os.PathLike, info_file: str, info: dict) -> bool:
    """Whether `folder` holds `info_file` with exactly `info`: a cache written for the same inputs."""
    path = os.path.join(folder, info_file)
    if not os.path.isfile(path):
        return False
    with open(path, encoding="utf-8") as f:
        return json.load(f) == info


def write_fingerprinted_arrow_folder(
    folder: str | os.PathLike, arrow_file: str, features, batches, info_file: str, info: dict, overwrite: bool = False
) -> None:
    """Write `batches` (dicts of column lists) as one Arrow file, batch by batch (memory stays at one batch), plus
    `info` as JSON, into a staging folder renamed into place; `folder` is replaced only as `check_output_dir` allows.
    Read it back memory-mapped with `datasets.Dataset.from_file`."""
    check_output_dir(folder, overwrite=overwrite)
    staging = make_staging_dir(folder)
    try:
        with ArrowWriter(features=features, path=os.fspath(staging / arrow_file)) as writer:
            for batch in batches:
                writer.write_batch(batch)
            writer.finalize()
        with open(staging / info_file, "w", encoding="utf-8") as f:
            json.dump(info, f, indent=1)
        replace_directory(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


__all__ = ["fingerprinted_folder_matches", "write_fingerprinted_arrow_folder"]
