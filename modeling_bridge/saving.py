"""Crash-safe saving that never deletes what the user owns.

A save is written completely under a temporary sibling name, then renamed into place. Before anything is written,
`check_output_dir` decides whether the destination may be replaced:

- a missing folder, or an empty one: yes;
- a folder that is recognisably a previous save, i.e. it holds only regular files whose names a `save_pretrained`
  of models, adapters, processors or tokenizers writes (`SAVE_FILE_PATTERNS`: config / weights / adapter /
  processor / tokenizer files, Hub code files, `README.md`): yes. A subfolder, a hidden file, a link or any other
  file makes it something else;
- anything else (e.g. a folder of the user's data): only with `overwrite=True`;
- never a file or a link, never a folder that is (or contains) a `protect`ed path, such as an input folder of the
  run, nor the current working folder or one of its parents.

Folders are created with the permissions `os.makedirs` would give (the umask applies), not the 0700 of
`tempfile.mkdtemp`, and the saved files get the mode a plain `open()` gives (safetensors 0.8 writes its files 0600,
safetensors issue #782), so a saved model is as readable as any other folder the user writes.
"""

from __future__ import annotations

import fnmatch
import json
import os
import secrets
import shutil
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path


# Names (glob patterns) of the files `save_pretrained` writes for the objects this package saves: transformers
# models (single file or shards, safetensors or legacy .bin), PEFT adapters (and their model card), processors,
# image processors, tokenizers (fast, WordPiece/BPE vocabularies, sentencepiece models, chat templates), and the
# Hub code files that `auto_map` models copy next to their weights.
SAVE_FILE_PATTERNS = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model-*-of-*.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model-*-of-*.bin",
    "pytorch_model.bin.index.json",
    "adapter_config.json",
    "adapter_model.safetensors",
    "adapter_model.bin",
    "processor_config.json",
    "preprocessor_config.json",
    "video_preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "*.model",
    "chat_template.jinja",
    "chat_template.json",
    "configuration_*.py",
    "modeling_*.py",
    "processing_*.py",
    "loss_*.py",
    "image_processing_*.py",
    "tokenization_*.py",
    "pipelines.py",  # the custom VQA pipeline of a BridgeForQuestionAnswering save
    "README.md",
    # the tower-state cache (modeling_bridge.training.tower_cache)
    "tower_states.arrow",
    "bridge_tower_cache.json",
)


def foreign_entries(folder: str | os.PathLike) -> list[str]:
    """Entries of `folder` that no save writes (see `SAVE_FILE_PATTERNS`); subfolders end with `/`. An empty list
    means the folder is empty or a previous save."""
    foreign = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                foreign.append(entry.name + "/")
            elif (
                entry.is_symlink()
                or not entry.is_file(follow_symlinks=False)
                or entry.name.startswith(".")
                or not any(fnmatch.fnmatchcase(entry.name, p) for p in SAVE_FILE_PATTERNS)
            ):
                foreign.append(entry.name)
    return sorted(foreign)


def _absolute(path: str | os.PathLike) -> Path:
    return Path(os.path.abspath(os.path.expanduser(os.fspath(path))))


def check_output_dir(
    output_dir: str | os.PathLike,
    overwrite: bool = False,
    protect: Iterable[str | os.PathLike | None] | Mapping[str | os.PathLike | None, str] = (),
    replace_previous_save: bool = True,
) -> Path:
    """Raise unless a save may create or replace `output_dir` (rules in the module docstring); return its absolute
    path. `protect`: paths the save must not delete, or a `{path: label}` mapping whose labels ("the model folder")
    name them in the error; None entries are skipped; compared after resolving links. `replace_previous_save=False`
    asks for `overwrite=True` before replacing any non-empty folder."""
    target = _absolute(output_dir)
    real = target.resolve()
    labelled = protect.items() if isinstance(protect, Mapping) else ((path, None) for path in protect)
    named = [
        (path, f"{label} {os.fspath(path)}" if label else f"{os.fspath(path)}, which this run reads or writes")
        for path, label in labelled
        if path is not None
    ]
    for path, what in (*named, (os.getcwd(), "the current folder")):
        protected = _absolute(path).resolve()
        if real == protected or real in protected.parents:
            relation = "is the same folder as" if real == protected else "is a parent folder of"
            raise ValueError(
                f"{output_dir} {relation} {what}; saving there would delete it. Choose another output folder."
            )
    for ancestor in target.parents:  # the first existing ancestor must be a folder to create the target in
        if os.path.lexists(ancestor):
            if not ancestor.is_dir():
                raise NotADirectoryError(
                    f"{ancestor} is a file, so {output_dir} cannot be created there. Choose another output folder."
                )
            break
    if os.path.islink(target):
        raise FileExistsError(
            f"{output_dir} is a symbolic link; it is not replaced. Give the folder it points to, "
            "or another output folder."
        )
    if not os.path.lexists(target):
        return target
    if not target.is_dir():
        raise FileExistsError(
            f"{output_dir} exists and is a file, not a folder; it is not replaced. Remove it or "
            "choose another output folder."
        )
    if overwrite:
        return target
    foreign = foreign_entries(target) if replace_previous_save else sorted(os.listdir(target))
    if foreign:
        shown = ", ".join(repr(name) for name in foreign[:5]) + (
            f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        )
        if replace_previous_save:
            reason = f"holds files that no model or processor save writes ({shown}), so it is not replaced"
        else:
            reason = "is not empty"
        raise FileExistsError(
            f"{output_dir} {reason}; pass overwrite=True (--overwrite on the command line) to "
            f"replace it, or choose another output folder."
        )
    return target


def make_staging_dir(final_dir: str | os.PathLike) -> Path:
    """Create an empty sibling of `final_dir` (hidden name, same file system, so the final rename is atomic) with
    the permissions `os.makedirs` gives, creating the parent folders if needed."""
    final_dir = _absolute(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    while True:
        staging = final_dir.parent / f".{final_dir.name}.tmp-{secrets.token_hex(4)}"
        try:
            os.mkdir(staging)  # mode 0o777 minus the umask, unlike tempfile.mkdtemp's 0o700
            return staging
        except FileExistsError:
            continue


def apply_default_permissions(folder: str | os.PathLike) -> None:
    """Give every file under `folder` (written by this process) the mode a newly `open()`ed file gets here, i.e.
    0o666 minus the umask; read from a probe file rather than `os.umask()`, which would change it for every
    thread for a moment."""
    probe = os.path.join(folder, f".mode-probe-{secrets.token_hex(4)}")
    open(probe, "w").close()
    mode = stat.S_IMODE(os.stat(probe).st_mode)
    os.remove(probe)
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path) and stat.S_IMODE(os.stat(path).st_mode) != mode:
                os.chmod(path, mode)


def replace_directory(staging_dir: str | os.PathLike, final_dir: str | os.PathLike) -> None:
    """Move a fully written `staging_dir` to `final_dir`. An existing `final_dir` is moved aside first (and moved back
    if the rename fails), then deleted once the new one is in place: an interruption leaves either the old folder or
    the new one under `final_dir`, never a mix. Callers decide beforehand whether `final_dir` may be replaced
    (`check_output_dir`); `staging_dir` keeps its permissions, so create it with `make_staging_dir` (or
    `os.makedirs`) and pass it through `apply_default_permissions`."""
    final_dir = os.path.abspath(final_dir)
    if not os.path.lexists(final_dir):
        os.replace(staging_dir, final_dir)
        return
    while True:
        backup = os.path.join(os.path.dirname(final_dir), f".{os.path.basename(final_dir)}.old-{secrets.token_hex(4)}")
        if not os.path.lexists(backup):
            break
    os.replace(final_dir, backup)
    try:
        os.replace(staging_dir, final_dir)
    except BaseException:
        os.replace(backup, final_dir)
        raise
    shutil.rmtree(backup, ignore_errors=True)


def save_pretrained_atomically(
    output_dir: str | os.PathLike,
    *objects,
    overwrite: bool = False,
    protect: Iterable[str | os.PathLike | None] | Mapping[str | os.PathLike | None, str] = (),
) -> Path:
    """`save_pretrained` every object (model, adapter, processor, ...) into a temporary sibling of `output_dir`, then
    rename it into place: an interrupted save leaves the previous `output_dir` (or nothing), never a half-written
    one. An existing `output_dir` is replaced only if it is empty or a previous save, or with `overwrite=True`; it is
    never a file, nor a folder holding a `protect`ed path (see `check_output_dir`). Returns the absolute path."""
    target = check_output_dir(output_dir, overwrite=overwrite, protect=protect)
    staging = make_staging_dir(target)
    try:
        for obj in objects:
            obj.save_pretrained(staging)
        apply_default_permissions(staging)
        check_output_dir(output_dir, overwrite=overwrite, protect=protect)  # again: the save may have taken long
        replace_directory(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def write_file_atomically(path: str | os.PathLike, write) -> None:
    """`write(temporary_path)` writes the file, which is then renamed to `path`: a reader never sees half a file,
    and an interrupted write leaves the previous file in place. The temporary name keeps the extension (for writers
    that choose the format by it, e.g. matplotlib's savefig)."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{secrets.token_hex(4)}{path.suffix}")
    try:
        write(str(tmp))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomically(path: str | os.PathLike, payload) -> None:
    """`payload` as indented JSON at `path`, through `write_file_atomically`."""

    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=2)

    write_file_atomically(path, write)


__all__ = [
    "SAVE_FILE_PATTERNS",
    "apply_default_permissions",
    "check_output_dir",
    "foreign_entries",
    "make_staging_dir",
    "replace_directory",
    "save_pretrained_atomically",
    "write_file_atomically",
    "write_json_atomically",
]
