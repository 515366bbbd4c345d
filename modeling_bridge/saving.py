"""Crash-safe saving that never deletes what the user owns.

A save is written completely under a temporary sibling name, then renamed into place. Before anything is written,
`check_output_dir` decides whether the destination may be replaced:

- a missing folder, or an empty one: yes;
- a folder this package wrote, as it wrote it: yes. Every folder the package renames into place (model saves,
  Hub folders, caches, checkpoints, a command's outputs) carries an ownership record, `OWNERSHIP_FILE`, listing
  each file and subfolder it wrote with the file's size and modification time. The folder counts as the package's
  only while it holds nothing else and no listed file changed; file names prove nothing (a user's folder of
  `config.json` and `README.md` is the user's);
- anything else (a folder of the user's data, a save made by plain `save_pretrained` or by a version of this
  package before the record existed, a save the user edited): only with `overwrite=True`;
- never a file or a link, never a folder that is (or contains) a `protect`ed path, such as an input folder of the
  run, nor the current working folder or one of its parents.

Concurrent saves into one destination (threads or processes) each succeed: the final check and rename hold an
exclusive lock on the destination's parent folder, so the folder always holds one complete save (the last).

Folders are created with the permissions `os.makedirs` would give (the umask applies), not the 0700 of
`tempfile.mkdtemp`, and the saved files get the mode a plain `open()` gives (safetensors 0.8 writes its files 0600,
safetensors issue #782), so a saved model is as readable as any other folder the user writes.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import stat
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path


# The ownership record: hidden, so transformers' loaders never read it; `publish` leaves it out of uploads.
OWNERSHIP_FILE = ".modeling_bridge_folder.json"
_OWNER = "modeling_bridge"
MODEL_SAVE = "model save"  # the default kind: save_pretrained_atomically's folders


def _walk_entries(folder: str) -> tuple[dict[str, os.stat_result], list[str], list[str]]:
    """(files with their stat, subfolders, other entries: links, sockets ...) under `folder`, as relative paths."""
    files, folders, others = {}, [], []
    stack = [""]
    while stack:
        relative = stack.pop()
        with os.scandir(os.path.join(folder, relative)) as entries:
            for entry in entries:
                name = os.path.join(relative, entry.name)
                if entry.is_symlink():
                    others.append(name)
                elif entry.is_dir(follow_symlinks=False):
                    folders.append(name)
                    stack.append(name)
                elif entry.is_file(follow_symlinks=False):
                    files[name] = entry.stat(follow_symlinks=False)
                else:
                    others.append(name)
    return files, folders, others


def write_ownership_record(folder: str | os.PathLike, kind: str = MODEL_SAVE) -> None:
    """Record, in `folder`, every file and subfolder now under it (size and modification time of each file) and what
    the folder is (`kind`: a model save, a cache, ...): the proof `foreign_entries` asks for before the folder may be
    replaced, by a folder of the same kind only. Call it on a fully written folder, last."""
    folder = os.fspath(folder)
    record = os.path.join(folder, OWNERSHIP_FILE)
    files, folders, others = _walk_entries(folder)
    files.pop(OWNERSHIP_FILE, None)
    payload = {
        "written_by": _OWNER,
        "kind": kind,
        "files": {name: [st.st_size, st.st_mtime_ns] for name, st in sorted(files.items())},
        "folders": sorted(folders),
        "links": sorted(others),  # written by a save itself (rare); listed so that they do not look foreign
    }
    with open(record, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=1)


def read_json_object(path: str | os.PathLike) -> dict | None:
    """The JSON object in the regular file `path`; None if there is none, or it is unreadable or not an object."""
    if os.path.islink(path) or not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _read_ownership_record(folder: str) -> dict | None:
    record = read_json_object(os.path.join(folder, OWNERSHIP_FILE))
    if (
        record is None
        or record.get("written_by") != _OWNER
        or not isinstance(record.get("files"), dict)
        or not isinstance(record.get("folders", []), list)
        or not isinstance(record.get("links", []), list)
    ):
        return None
    return record


def read_ownership_kind(folder: str | os.PathLike) -> str | None:
    """The kind of folder this package recorded writing at `folder` (whatever was added since), or None."""
    record = _read_ownership_record(os.fspath(folder)) if os.path.isdir(folder) else None
    return None if record is None else record.get("kind", MODEL_SAVE)


def foreign_entries(folder: str | os.PathLike) -> list[str]:
    """Entries under `folder` that this package cannot prove it wrote (see the module docstring): everything, if the
    folder has no valid ownership record; else the files, folders and links it does not list, and listed files
    whose size or modification time changed (shown as `name (changed)`). Subfolders end with `/`. An empty list
    means the folder is empty, or a folder the package wrote and nobody changed."""
    folder = os.fspath(folder)
    files, folders, others = _walk_entries(folder)
    record = _read_ownership_record(folder) or {"files": {}}
    files.pop(OWNERSHIP_FILE, None)  # the record itself (or an unreadable one: not the user's data worth naming)
    listed_folders, listed_links = set(record.get("folders", [])), set(record.get("links", []))
    foreign = [f + "/" for f in folders if f not in listed_folders]
    foreign += [name for name in others if name not in listed_links]
    for name, st in files.items():
        written = record["files"].get(name)
        if written is None:
            foreign.append(name)
        elif list(written) != [st.st_size, st.st_mtime_ns]:
            foreign.append(f"{name} (changed)")
    # inside a foreign folder everything is foreign: name the folder only
    unlisted = tuple(f for f in foreign if f.endswith("/"))
    return sorted(f for f in foreign if not any(f != d and f.startswith(d) for d in unlisted))


def package_wrote(folder: str | os.PathLike, kind: str | None = None) -> bool:
    """Whether `folder` is a folder this package wrote (as a `kind`, if given) and nobody changed since (its
    ownership record holds)."""
    if not os.path.isdir(folder) or os.path.islink(folder):
        return False
    record = _read_ownership_record(os.fspath(folder))
    if record is None or (kind is not None and record.get("kind", MODEL_SAVE) != kind):
        return False
    return not foreign_entries(folder)


def _absolute(path: str | os.PathLike) -> Path:
    return Path(os.path.abspath(os.path.expanduser(os.fspath(path))))


def check_creatable(path: str | os.PathLike, name: str | None = None, choose: str = "output folder") -> None:
    """NotADirectoryError when the first existing ancestor of `path` is a file, so nothing can be created there;
    the message names `path` as `name` and asks for another `choose`."""
    for ancestor in _absolute(path).parents:
        if os.path.lexists(ancestor):
            if not ancestor.is_dir():
                raise NotADirectoryError(
                    f"{ancestor} is a file, so {name or os.fspath(path)} cannot be created there. Choose another "
                    f"{choose}."
                )
            return


def check_output_dir(
    output_dir: str | os.PathLike,
    overwrite: bool = False,
    protect: Iterable[str | os.PathLike | None] | Mapping[str | os.PathLike | None, str] = (),
    replace_previous_save: bool = True,
    kind: str = MODEL_SAVE,
) -> Path:
    """Raise unless a save may create or replace `output_dir` (rules in the module docstring); return its absolute
    path. `protect`: paths the save must not delete, or a `{path: label}` mapping whose labels ("the model folder")
    name them in the error; None entries are skipped; compared after resolving links. `replace_previous_save=False`
    asks for `overwrite=True` before replacing any non-empty folder. `kind`: what the save writes; a folder the
    package wrote as another kind (a model save, where a cache is to go) is not replaced without `overwrite`."""
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
    check_creatable(output_dir)
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
            reason = (
                f"holds files that this package did not write, or that changed since it wrote them ({shown}), "
                "so it is not replaced"
            )
        else:
            reason = "is not empty"
        raise FileExistsError(
            f"{output_dir} {reason}; pass overwrite=True (--overwrite on the command line) to "
            f"replace it, or choose another output folder."
        )
    record = _read_ownership_record(os.fspath(target))
    written = (record or {}).get("kind", MODEL_SAVE)
    if record is not None and written != kind:
        raise FileExistsError(
            f"{output_dir} holds a {written} that this package wrote, not a {kind}; it is not replaced by one (a "
            "mistyped folder must not cost a trained model or a cache). Choose another output folder, or pass "
            "overwrite=True (--overwrite on the command line) to replace it."
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


_THREAD_LOCK = threading.Lock()  # where file locks are unavailable (no fcntl): one process at least is safe


@contextlib.contextmanager
def _destination_lock(final_dir: str):
    """Exclusive lock for replacing `final_dir`: a `flock` on its parent folder, which also excludes other threads of
    this process (each call opens its own descriptor) and is released by the kernel if the process dies."""
    try:
        import fcntl
    except ImportError:
        with _THREAD_LOCK:
            yield
        return
    descriptor = os.open(os.path.dirname(final_dir), os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # releases the lock


def replace_directory(
    staging_dir: str | os.PathLike, final_dir: str | os.PathLike, check=None, kind: str = MODEL_SAVE
) -> None:
    """Move a fully written `staging_dir` to `final_dir`, first recording in it what it holds (the ownership record,
    `write_ownership_record`). An existing `final_dir` is moved aside first (and moved back if the rename fails),
    then deleted once the new one is in place: an interruption leaves either the old folder or the new one under
    `final_dir`, never a mix. Callers decide beforehand whether `final_dir` may be replaced (`check_output_dir`);
    `check()`, if given, runs again under the lock, right before the rename, so that concurrent saves cannot race
    past it. `staging_dir` keeps its permissions, so create it with `make_staging_dir` (or `os.makedirs`) and pass
    it through `apply_default_permissions`. `kind`: what the folder is, recorded (see `check_output_dir`)."""
    final_dir = os.path.abspath(final_dir)
    write_ownership_record(staging_dir, kind)
    with _destination_lock(final_dir):
        if check is not None:
            check()
        if not os.path.lexists(final_dir):
            os.replace(staging_dir, final_dir)
            return
        while True:
            name = f".{os.path.basename(final_dir)}.old-{secrets.token_hex(4)}"
            backup = os.path.join(os.path.dirname(final_dir), name)
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
        # checked again under the lock: the save may have taken long, and another may have finished meanwhile
        replace_directory(staging, target, check=lambda: check_output_dir(output_dir, overwrite, protect))
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
    "MODEL_SAVE",
    "OWNERSHIP_FILE",
    "apply_default_permissions",
    "check_creatable",
    "check_output_dir",
    "foreign_entries",
    "make_staging_dir",
    "package_wrote",
    "read_json_object",
    "read_ownership_kind",
    "replace_directory",
    "save_pretrained_atomically",
    "write_file_atomically",
    "write_json_atomically",
    "write_ownership_record",
]
