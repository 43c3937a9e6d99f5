"""The configured data sources read as rows: local files or hub data sets, renamed and normalised, and checked
before any work."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

from tasks.lib.config import DataConfig
from tasks.lib.dataset.chat_rows import check_template_columns, detect_format, row_to_messages, template_columns
from tasks.lib.dataset.data_formats import (
    DataError,
    HubOptions,
    TableOptions,
    is_dataset_source,
    is_hub_id,
    load_located_rows,
    location_word,
    raise_collected,
)


class SourceRow(NamedTuple):
    id: str
    split_key: str  # the raw row, canonical: templates and value maps do not move a row between splits
    messages: list[dict[str, str]]
    prompt: str  # the raw prompt-side text, normalised: what decontamination compares


def normalise_text(text: str) -> str:
    """Case- and whitespace-insensitive form used to find the same item in two splits."""
    return " ".join(text.casefold().split())


def prompt_text(row: dict[str, Any], messages: list[dict[str, str]], fmt: str, data: DataConfig) -> str:
    """The item's input as the data set gives it: template columns raw, otherwise the user turns."""
    if fmt == "template":
        columns = sorted(template_columns(data.prompt_template or ""))
        return normalise_text("\n".join(str(row.get(column, "")) for column in columns))
    return normalise_text("\n".join(m["content"] for m in messages if m["role"] == "user"))


def hub_options(data: DataConfig) -> HubOptions:
    return HubOptions(name=data.hub_config, revision=data.hub_revision)


def replay_config(data: DataConfig) -> DataConfig:
    """The replay source as a data section of its own (its format and hub settings; the task's table options)."""
    replay = data.replay
    return DataConfig(
        path=replay.path,
        format=replay.format,
        hub_split=replay.hub_split,
        hub_config=replay.hub_config,
        hub_revision=replay.hub_revision,
        table=data.table,
    )


def table_options(data: DataConfig) -> TableOptions:
    table = data.table
    columns = tuple(table.columns) if table.columns else None
    return TableOptions(header=table.header, columns=columns, delimiter=table.delimiter, quoting=table.quoting)


def _renamed(row: dict[str, Any], renames: dict[str, str]) -> dict[str, Any]:
    return {renames.get(key, key): value for key, value in row.items()} if isinstance(row, dict) else row


def _load_source(
    path: str, hub_split: str, data: DataConfig, fmt: str | None
) -> tuple[list[tuple[int, dict[str, Any]]], DataConfig]:
    """A source's located rows with columns renamed, and `data` with its format resolved (`fmt`, else
    detected from the first row); template sources are checked for the columns they name."""
    located = load_located_rows(path, hub_split, table_options(data), hub_options(data))
    if data.rename_columns:
        located = [(number, _renamed(row, data.rename_columns)) for number, row in located]
    if fmt is None:
        first_where = f"{path} {location_word(path)} {located[0][0]}"
        fmt = detect_format(located[0][1], first_where) if data.format == "auto" else data.format
    if fmt == "template":
        check_template_columns(list(located[0][1]), data, path)
    return located, data.model_copy(update={"format": fmt})


def normalise_source(
    path: str, hub_split: str, data: DataConfig, fmt: str | None = None, rejects: list[dict] | None = None
) -> tuple[list[SourceRow], str]:
    """Load and normalise every row of one source; returns the rows and the format.

    Invalid rows: with `data.on_invalid: error` all of them are raised at once; with `drop` they are appended
    to `rejects` (source, location, reason), unless more than `data.max_invalid_fraction` of the rows are
    invalid, which is an error anyway (a wrong template or format, not a few bad rows).
    """
    located, resolved = _load_source(path, hub_split, data, fmt)
    fmt, word = resolved.format, location_word(path)
    stem = Path(path).stem if not is_dataset_source(path) else f"{path.strip('/').replace('/', '--')}-{hub_split}"
    rows, errors, dropped = [], [], []
    for number, row in located:
        where = f"{path} {word} {number}"
        try:
            messages = row_to_messages(row, resolved, where)
        except DataError as error:
            errors.append(str(error))
            dropped.append({"source": path, word: number, "reason": str(error).removeprefix(f"{where}: ")})
            continue
        raw = json.dumps(row, sort_keys=True, ensure_ascii=False, default=str)
        rows.append(SourceRow(f"{stem}-{number}", raw, messages, prompt_text(row, messages, fmt, resolved)))
    if data.on_invalid == "error" or len(errors) > data.max_invalid_fraction * len(located):
        limit = (
            "" if data.on_invalid == "error" else f" (more than data.max_invalid_fraction={data.max_invalid_fraction})"
        )
        raise_collected(errors, f"{path}: invalid rows{limit}")
    if rejects is not None:
        rejects.extend(dropped)
    return rows, fmt


def check_sources(data: DataConfig, sample: int = 100) -> list[str]:
    """Read every local source and check its shape against the config (format, template columns, value maps,
    the first `sample` rows normalised) without tokenising: what `qlora validate` runs, in seconds.

    Raises DataError naming the file and line; returns notes on what was not checked (hub sets: need network).
    """
    notes, fmt = [], None
    for key, split in (
        ("path", "hub_split"),
        ("validation_path", "validation_hub_split"),
        ("test_path", "test_hub_split"),
    ):
        path = getattr(data, key)
        if path is None:
            continue
        if is_hub_id(path):
            notes.append(f"data.{key} {path} is a hub data set: its columns are checked when it is prepared")
            continue
        located, resolved = _load_source(path, getattr(data, split), data, fmt)
        fmt, word = resolved.format, location_word(path)
        for number, row in located[:sample]:
            row_to_messages(row, resolved, f"{path} {word} {number}")
    return notes
