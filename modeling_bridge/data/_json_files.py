"""Reading the JSON and JSON Lines files of the data loaders, with one clear `ValueError` per malformed input: the
file, the record (line number or index), the field, and what was expected. Nothing here raises a raw `KeyError`,
`TypeError` or `json.JSONDecodeError`."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any


_MISSING = object()


def json_type(value: Any) -> str:
    """`value`'s JSON type in words: "a string", "an integer", "a list", ..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string" if value.strip() else "an empty string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def describe(value: Any, limit: int = 60) -> str:
    """`value`'s JSON type and a short excerpt of it, for messages: `an integer (1)`, `a list (["a", "b"])`."""
    if value is None:
        return "null"
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{json_type(value)} ({text})"


def is_string(value: Any) -> bool:
    return isinstance(value, str)


def is_nonempty_string(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _read_text(path: str | os.PathLike, expected: str) -> str:
    try:
        with open(path, encoding="utf-8-sig") as f:  # -sig: a leading byte-order mark is not an error
            return f.read()
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{path} is not UTF-8 text ({error.reason} at byte {error.start}); expected {expected}."
        ) from None


def _parses_as_one_document(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return _MISSING


def read_json(path: str | os.PathLike, expected: str) -> Any:
    """The JSON document in `path`. An empty file, invalid JSON, or JSON Lines (one value per line) is a ValueError
    naming the file; `expected` describes the document for the messages ("a JSON list of ... objects")."""
    text = _read_text(path, expected)
    if not text.strip():
        raise ValueError(f"{path} is empty; expected {expected}.")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        if error.msg == "Extra data":
            first = next(line for line in text.splitlines() if line.strip())
            if _parses_as_one_document(first) is not _MISSING:
                raise ValueError(
                    f"{path} holds one JSON value per line (JSON Lines), not one JSON document; expected {expected}."
                ) from None
        where = f"line {error.lineno}, column {error.colno}"
        raise ValueError(f"{path} is not valid JSON ({error.msg} at {where}); expected {expected}.") from None


def read_json_lines(path: str | os.PathLike, expected: str) -> list[tuple[int, dict]]:
    """The records of a JSON Lines file as (line number, object), blank lines skipped. An empty file, a file that is
    one JSON document (a list of records, or one record over several lines), invalid JSON on a line or a line that is
    not an object is a ValueError naming the file (and the line); `expected` describes one record."""
    what = f"JSON Lines: one JSON object per line, {expected}"
    text = _read_text(path, what)
    lines = [(number, line) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if not lines:
        raise ValueError(f"{path} is empty (no records); expected {what}.")
    records = []
    for number, line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            whole = _parses_as_one_document(text) if len(lines) > 1 else _MISSING
            if whole is not _MISSING:
                raise ValueError(
                    f"{path} is one JSON document ({json_type(whole)} over {len(lines)} lines), not JSON Lines; "
                    f"expected {what}."
                ) from None
            raise ValueError(
                f"{path}, line {number}: invalid JSON ({error.msg} at column {error.colno}); expected {what}."
            ) from None
        if not isinstance(record, dict):
            if isinstance(record, list) and len(lines) == 1:
                raise ValueError(f"{path} is one JSON list, not JSON Lines; expected {what}.")
            raise ValueError(f"{path}, line {number}: the line is {describe(record)}; expected {what}.")
        records.append((number, record))
    return records


def field(
    record: dict,
    key: str,
    where: str,
    expected: str,
    check: Callable[[Any], bool] | None = None,
    optional: bool = False,
    default: Any = None,
) -> Any:
    """`record[key]`, checked: a missing key (unless `optional`: then `default`) or a value that fails `check` is a
    ValueError saying `where` (file and record), which field, what it holds and what was `expected`."""
    if key not in record:
        if optional:
            return default
        raise ValueError(f"{where}: no {key!r} field (the fields are {sorted(record)}); expected {key!r}: {expected}.")
    value = record[key]
    if check is not None and not check(value):
        raise ValueError(f"{where}: {key!r} is {describe(value)}; expected {expected}.")
    return value
