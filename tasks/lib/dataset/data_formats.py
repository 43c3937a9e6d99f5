"""Reading raw data sets into rows: JSONL, JSON, CSV, TSV, Parquet files, a hub data set id, or a local data set
folder in the hub's layout (read by the same `datasets.load_dataset` call as a hub id).

Every problem a user can cause is a `DataError` naming the file and the 1-based line (or item / row),
and a file's row errors are collected and raised together.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.lib.core.errors import UserError

EXTENSIONS = (".jsonl", ".json", ".csv", ".tsv", ".parquet")
# Not hub ids either, though they look like `org/name`: other files a config can name.
OTHER_FILE_EXTENSIONS = (".txt", ".gguf", ".safetensors")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
MAX_REPORTED_ERRORS = 20
_QUOTING = {"minimal": csv.QUOTE_MINIMAL, "none": csv.QUOTE_NONE}
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class TableOptions:
    """How to read a CSV/TSV file (`data.table` in the config)."""

    header: bool = True  # line 1 names the columns
    columns: tuple[str, ...] | None = None  # column names: needed without a header, else they replace it
    delimiter: str | None = None  # default: "," for .csv, tab for .tsv
    quoting: str = "auto"  # minimal (pandas, spreadsheets) | none (GLUE-style TSV) | auto: csv minimal, tsv none


@dataclass(frozen=True)
class HubOptions:
    """Which version of a hub data set to read (`data.hub_config`, `data.hub_revision`)."""

    name: str | None = None  # the configuration, e.g. "sst2" of nyu-mll/glue
    revision: str | None = None  # branch, tag or commit; None: the default branch


class DataError(UserError, ValueError):
    """A user-caused data problem; the message names the file and the line, item or column."""


def raise_collected(errors: list[str], header: str) -> None:
    """Raise one DataError listing the first MAX_REPORTED_ERRORS problems and the total count."""
    if not errors:
        return
    shown = "\n  ".join(errors[:MAX_REPORTED_ERRORS])
    more = f"\n  ... and {len(errors) - MAX_REPORTED_ERRORS} more" if len(errors) > MAX_REPORTED_ERRORS else ""
    raise DataError(f"{header}: {len(errors)} problem(s):\n  {shown}{more}")


def is_hub_id(path: str) -> bool:
    """`org/name` (a data set or a model on the hub) that is not a local path and has no known file extension."""
    return (
        not Path(path).exists()
        and _HUB_ID.match(path) is not None
        and not path.lower().endswith(EXTENSIONS + OTHER_FILE_EXTENSIONS)
    )


def is_dataset_source(path: str) -> bool:
    """Read through `datasets.load_dataset`: a hub id, or a local folder laid out like a hub data set."""
    return is_hub_id(path) or Path(path).is_dir()


def load_located_rows(
    path: str, hub_split: str = "train", table: TableOptions | None = None, hub: HubOptions | None = None
) -> list[tuple[int, dict[str, Any]]]:
    """Rows with their 1-based position: the line for JSONL/CSV/TSV, the item / row index otherwise."""
    if is_dataset_source(path):
        rows = list(enumerate(_load_hub(path, hub_split, hub or HubOptions()), start=1))
    else:
        file = Path(path)
        if not file.is_file():
            raise DataError(f"data file not found: {path}")
        suffix = file.suffix.lower()
        readers = {
            ".jsonl": read_jsonl,
            ".json": _read_json,
            ".csv": lambda file: _read_delimited(file, table or TableOptions()),
            ".tsv": lambda file: _read_delimited(file, table or TableOptions()),
            ".parquet": _read_parquet,
        }
        if suffix not in readers:
            raise DataError(f"{path}: unknown extension {suffix!r}; use one of {', '.join(EXTENSIONS)}")
        rows = readers[suffix](file)
    if not rows:
        raise DataError(f"{path}: no rows (the data set is empty)")
    return rows


def load_rows(
    path: str, hub_split: str = "train", table: TableOptions | None = None, hub: HubOptions | None = None
) -> list[dict[str, Any]]:
    """The rows of a local file or hub data set, as dicts."""
    return [row for _, row in load_located_rows(path, hub_split, table, hub)]


def location_word(path: str) -> str:
    """How positions of this source are called in messages: line, item or row."""
    if is_dataset_source(path):
        return "row"
    return {".jsonl": "line", ".csv": "line", ".tsv": "line", ".json": "item"}.get(Path(path).suffix.lower(), "row")


def _decode(file: Path) -> str:
    raw = file.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise DataError(f"{file} line {line}: not valid UTF-8 (byte {raw[error.start]:#04x})") from None


def read_jsonl(file: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) per non-blank line; every malformed line is named with its file and line.

    Lines end at "\n" (or "\r\n") only: str.splitlines would also break at U+2028 and the other Unicode line
    separators that JSON strings may hold raw (GSM8K's train.jsonl has one)."""
    text = _decode(file)
    rows, errors = [], []
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as error:
            errors.append(f"{file} line {number}: malformed JSON ({error.msg} at column {error.colno})")
            continue
        if not isinstance(value, dict):
            errors.append(f"{file} line {number}: expected a JSON object, got {type(value).__name__}")
            continue
        rows.append((number, value))
    raise_collected(errors, f"{file}: bad JSONL")
    return rows


def _read_json(file: Path) -> list[tuple[int, dict[str, Any]]]:
    try:
        value = json.loads(_decode(file)) if file.stat().st_size else []
    except json.JSONDecodeError as error:
        raise DataError(f"{file} line {error.lineno}: malformed JSON ({error.msg} at column {error.colno})") from None
    if isinstance(value, dict) and isinstance(value.get("data"), list):
        value = value["data"]
    if not isinstance(value, list):
        raise DataError(f'{file}: expected a JSON list of objects or {{"data": [...]}}')
    errors = [
        f"{file} item {number}: expected a JSON object, got {type(item).__name__}"
        for number, item in enumerate(value, start=1)
        if not isinstance(item, dict)
    ]
    raise_collected(errors, f"{file}: bad JSON")
    return list(enumerate(value, start=1))


def _read_delimited(file: Path, table: TableOptions = TableOptions()) -> list[tuple[int, dict[str, Any]]]:
    """CSV or TSV as `table` says. By default CSV uses standard quoting and TSV none (SST-2 sentences contain
    bare quote characters); `quoting: minimal` reads a pandas-written TSV."""
    tsv = file.suffix.lower() == ".tsv"
    delimiter = table.delimiter or ("\t" if tsv else ",")
    quoting = _QUOTING[table.quoting] if table.quoting != "auto" else (csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL)
    text = _decode(file)
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # long documents: the module's default is 128 KiB a field
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)
    rows, errors = [], []
    try:
        header = next(reader, None) if table.header else None
        if table.header and (not header or not any(name.strip() for name in header)):
            return []
        names = list(table.columns) if table.columns else [name.strip() for name in header or []]
        if not names:
            raise DataError(f"{file}: data.table.header is false, so data.table.columns must name the columns")
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates or "" in names:
            raise DataError(f"{file} line 1: duplicate or empty column names {duplicates or ['']}")
        if table.header and table.columns and len(header) != len(names):
            raise DataError(f"{file} line 1: the header has {len(header)} columns, data.table.columns {len(names)}")
        for fields in reader:
            if not fields:
                continue
            if len(fields) != len(names):
                expected = "the header has" if header and not table.columns else "data.table.columns names"
                errors.append(f"{file} line {reader.line_num}: {len(fields)} fields, {expected} {len(names)}")
                continue
            rows.append((reader.line_num, dict(zip(names, fields, strict=True))))
    except csv.Error as error:
        raise DataError(f"{file} line {reader.line_num}: {error}") from None
    raise_collected(errors, f"{file}: bad {file.suffix[1:].upper()}")
    return rows


def _read_parquet(file: Path) -> list[tuple[int, dict[str, Any]]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(file)
    except Exception as error:  # pyarrow raises several unrelated types for unreadable files
        raise DataError(f"{file}: not a readable Parquet file ({error})") from None
    return list(enumerate(table.to_pylist(), start=1))


def _load_hub(dataset_id: str, split: str, hub: HubOptions) -> list[dict[str, Any]]:
    import datasets

    try:
        dataset = datasets.load_dataset(dataset_id, hub.name, split=split, revision=hub.revision)
    except Exception as error:  # offline, not found, gated, bad config or split: all surface the same way
        raise DataError(
            f"could not load data set {dataset_id!r} (config {hub.name!r}, split {split!r}, revision "
            f"{hub.revision or 'default'}): {type(error).__name__}: {error}. Check data.hub_config, the split and "
            "data.hub_revision, network access (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE) and HF_TOKEN, or point "
            "data.path at a local file."
        ) from None
    return dataset.to_list()


def resolved_hub_revision(dataset_id: str, revision: str | None) -> str:
    """The commit a hub data set's revision points at now: its data version. A pinned commit is its own
    answer (offline too); a branch or tag is resolved on the hub, so a changed upstream set is a new version."""
    if revision and _COMMIT.match(revision):
        return revision
    try:
        from huggingface_hub import HfApi

        # The token is read here and passed on only: never logged or stored.
        return HfApi(token=os.environ.get("HF_TOKEN")).dataset_info(dataset_id, revision=revision).sha
    except Exception as error:  # offline, not found, gated
        raise DataError(
            f"could not resolve which commit of hub data set {dataset_id!r} revision {revision or 'main'} is "
            f"({type(error).__name__}); set data.hub_revision to a 40-character commit to run offline"
        ) from None
