"""Checks of the commands' arguments (examples/, benchmarks/, conversion/), made before any model is built or any
data is read, and of the library's public arguments (`retrieval.search`'s `k`, ...): each raises an error whose message
names the option, the value given and what to give instead, and `hub_utils.run_command` prints it as one
`error: ...` line with exit code 1.

    check_ints(args, "num_train", "batch_size")                # each a positive integer: --num_train 0 is refused
    check_int(args.num_figures, "--num_figures", minimum=0)
    check_number(args.learning_rate, "--learning_rate", above=0)
    ks = parse_int_list(args.k, "--k")                           # "1,8,32" -> [1, 8, 32]
    check_model_path(args.model_name_or_path)                    # modeling_bridge.hub_utils: a missing local folder
    check_results_folder(args.output_dir, inputs={args.model_name_or_path: "the model folder (--model_name_or_path)"})

Library code for the commands, not Hub code: imports only the standard library.
"""

from __future__ import annotations

import math
import operator
import os
from collections.abc import Mapping
from pathlib import Path

from .saving import check_creatable, check_output_dir


def _as_int(value) -> int | None:
    """`value` as an int when it is an integer (Python, NumPy or torch; not a bool), else None."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def check_int(
    value,
    flag: str,
    minimum: int = 1,
    maximum: int | None = None,
    optional: bool = False,
    maximum_is: str | None = None,
) -> None:
    """ValueError unless `value` is an integer in [minimum, maximum] (None too, with `optional=True`); `maximum_is`
    says where the maximum comes from (e.g. "--batch_size")."""
    if value is None and optional:
        return
    number = _as_int(value)
    if number is not None and number >= minimum and (maximum is None or number <= maximum):
        return
    if maximum is not None:
        wanted = f"an integer from {minimum} to {maximum}{f' ({maximum_is})' if maximum_is else ''}"
    elif minimum == 1:
        wanted = "a positive integer"
    else:
        wanted = f"an integer >= {minimum}"
    raise ValueError(f"{flag} must be {wanted}, got {value!r}.")


def check_ints(args, *names: str, minimum: int = 1, optional: bool = False) -> None:
    """`check_int` on each attribute `names` of `args` (argparse namespace or dataclass), as `--name`."""
    for name in names:
        check_int(getattr(args, name), f"--{name}", minimum=minimum, optional=optional)


def check_number(
    value,
    flag: str,
    minimum: float | None = None,
    maximum: float | None = None,
    above: float | None = None,
    below: float | None = None,
) -> None:
    """ValueError unless `value` is a finite number with minimum <= value <= maximum and above < value < below
    (each bound optional)."""
    bounds = [
        (minimum, ">=", lambda v, b: v >= b),
        (above, ">", lambda v, b: v > b),
        (maximum, "<=", lambda v, b: v <= b),
        (below, "<", lambda v, b: v < b),
    ]
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and all(bound is None or holds(value, bound) for bound, _, holds in bounds)
    if not ok:
        wanted = " and ".join(f"{sign} {bound:g}" for bound, sign, _ in bounds if bound is not None)
        raise ValueError(f"{flag} must be a number{' ' + wanted if wanted else ''}, got {value}.")


def parse_int_list(text, flag: str, minimum: int = 1) -> list[int]:
    """Comma-separated integers (or a list of them), each >= `minimum`, in the given order, without repeats;
    ValueError naming `flag` otherwise."""
    items = text.split(",") if isinstance(text, str) else list(text)
    values = [_as_int(item) if not isinstance(item, str) else _parse_int(item) for item in items]
    if not values or any(v is None or v < minimum for v in values):
        wanted = "positive integers" if minimum == 1 else f"integers >= {minimum}"
        shown = text if isinstance(text, str) else ",".join(map(str, items))
        raise ValueError(f"{flag} must be comma-separated {wanted}, e.g. 1,8,32; got {shown!r}.")
    return list(dict.fromkeys(values))


def _parse_int(text: str) -> int | None:
    try:
        return int(text.strip())
    except ValueError:
        return None


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _check_not_in_inputs(path: str, flag: str, inputs: Mapping | None) -> None:
    """ValueError when `path` is, or lies inside, one of the existing `inputs` folders ({folder: label})."""
    real = Path(os.path.abspath(os.path.expanduser(path))).resolve()
    for folder, label in (inputs or {}).items():
        if not isinstance(folder, (str, os.PathLike)) or not os.path.isdir(os.path.expanduser(folder)):
            continue
        protected = Path(os.path.abspath(os.path.expanduser(folder))).resolve()
        if _inside(real, protected):
            where = f"is {label} itself" if real == protected else f"lies inside {label} {os.fspath(folder)}"
            raise ValueError(
                f"{flag} {path} {where}; results are never written into an input folder. Choose another {flag}."
            )


def check_results_folder(path, flag: str = "--output_dir", inputs: Mapping | None = None) -> None:
    """Before a run: the folder its results (JSON, figures) go to can be created or written into. Refuses a `path`
    that is an existing file (or below one), and one that is or lies inside one of the `inputs` folders
    ({folder: label, e.g. "the model folder (--model_name_or_path)"}; paths that are no existing folder are
    skipped): results never go into an input model folder."""
    path = os.fspath(path)
    if os.path.exists(os.path.expanduser(path)) and not os.path.isdir(os.path.expanduser(path)):
        raise FileExistsError(f"{flag} {path} is a file, not a folder; remove it or choose another {flag}.")
    check_creatable(path, f"{flag} {path}", flag)
    _check_not_in_inputs(path, flag, inputs)


def check_results_file(path, flag: str = "--output", inputs: Mapping | None = None) -> None:
    """Before a run: the file its results go to (e.g. a JSON) can be written. Refuses a `path` that is an existing
    folder (or below a file), and one inside one of the `inputs` folders (as `check_results_folder`)."""
    path = os.fspath(path)
    if os.path.isdir(os.path.expanduser(path)):
        raise IsADirectoryError(f"{flag} {path} is a folder; give the path of the file to write (e.g. results.json).")
    check_creatable(path, f"{flag} {path}", flag)
    _check_not_in_inputs(path, flag, inputs)


def check_hub_output_dir(args) -> None:
    """Before a conversion command builds anything: the Hub folder that `hub_utils.publish` writes at the end may go
    to `args.output_dir` (the rules it applies then: never a file, nor a folder that is or holds an input of the
    command; a non-empty folder only with --overwrite), and it does not lie inside an input folder either."""
    inputs = {
        value: f"--{name}"
        for name, value in vars(args).items()
        if name != "output_dir" and isinstance(value, str) and value and os.path.exists(value)
    }
    check_output_dir(args.output_dir, overwrite=args.overwrite, protect=inputs, replace_previous_save=False)
    check_results_folder(args.output_dir, inputs=inputs)


def check_training_arguments(training_args) -> None:
    """The `TrainingArguments` ranges that transformers accepts and fails on later (a batch size of 0, a negative
    learning rate, ...)."""
    check_ints(training_args, "per_device_train_batch_size", "per_device_eval_batch_size")
    check_ints(training_args, "gradient_accumulation_steps")
    check_number(training_args.learning_rate, "--learning_rate", minimum=0)
    if training_args.max_steps == 0 or training_args.max_steps < -1:
        raise ValueError(
            f"--max_steps must be a positive integer (or -1: train --num_train_epochs epochs), got "
            f"{training_args.max_steps}."
        )
    if training_args.max_steps == -1:
        check_number(training_args.num_train_epochs, "--num_train_epochs", above=0)


__all__ = [
    "check_hub_output_dir",
    "check_int",
    "check_ints",
    "check_number",
    "check_results_file",
    "check_results_folder",
    "check_training_arguments",
    "parse_int_list",
]
