"""Crash-safe saving: write a folder completely under a temporary name, then rename it into place."""

import os
import shutil
import tempfile


def replace_directory(staging_dir: str | os.PathLike, final_dir: str | os.PathLike) -> None:
    """Move a fully written `staging_dir` to `final_dir`. An existing `final_dir` is moved aside first (and moved back
    if the rename fails), then deleted once the new one is in place: an interruption leaves either the old folder or
    the new one under `final_dir`, never a mix."""
    final_dir = os.path.abspath(final_dir)
    if not os.path.exists(final_dir):
        os.replace(staging_dir, final_dir)
        return
    backup = tempfile.mkdtemp(prefix=f".{os.path.basename(final_dir)}.old-", dir=os.path.dirname(final_dir))
    os.rmdir(backup)
    os.replace(final_dir, backup)
    try:
        os.replace(staging_dir, final_dir)
    except BaseException:
        os.replace(backup, final_dir)
        raise
    shutil.rmtree(backup, ignore_errors=True)


def save_pretrained_atomically(output_dir: str | os.PathLike, *objects) -> None:
    """`save_pretrained` every object (model, processor, ...) into a temporary sibling of `output_dir`, then rename
    it into place: an interrupted save leaves the previous `output_dir` (or nothing), never a half-written one."""
    output_dir = os.path.abspath(output_dir)
    parent = os.path.dirname(output_dir)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(output_dir)}.tmp-", dir=parent)
    try:
        for obj in objects:
            obj.save_pretrained(staging)
        replace_directory(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


__all__ = ["replace_directory", "save_pretrained_atomically"]
